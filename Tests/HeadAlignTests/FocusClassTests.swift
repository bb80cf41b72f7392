// The focus classes (issue 15, docs/RESULTS.md §15): a head is suspicious when the flagged
// inputs move a quarter of its attention onto one ordinary token, measured against clean inputs.

import XCTest
import HeadAlign

final class FocusClassTests: XCTestCase {
    /// cls view, T = 4 ([CLS] a b [SEP]), two heads' [CLS] rows:
    /// head 0 [0.1, 0.2, 0.6, 0.1]: ordinary tokens are positions 1-2, focus max(0.2, 0.6) = 0.6;
    /// head 1 [0.7, 0.05, 0.05, 0.2]: its largest weight is on [CLS], focus 0.05.
    /// For a decoder only position 0 rests: head 1's 0.2 on the last token counts.
    func testFocusByHand() {
        let a = InputAnalysis(tokens: [5, 6, 7, 8], promptLength: 4, views: [[0.1, 0.2, 0.6, 0.1], [0.7, 0.05, 0.05, 0.2]],
                              pairCosines: [0], maxsim: [0, 0], importance: [0, 0], label: nil, fracAbove: 0, p99: 0)
        assertAllClose(focus(a, view: .cls, family: .bert), [0.6, 0.05], rtol: 1e-12)
        assertAllClose(focus(a, view: .last, family: .llama), [0.6, 0.2], rtol: 1e-12)
        // full view, T = 2 (only the two rest positions): no ordinary token, focus 0
        let b = InputAnalysis(tokens: [5, 6], promptLength: 2, views: [[0.5, 0.5, 0.1, 0.9]], pairCosines: [], maxsim: [0],
                              importance: [0], label: nil, fracAbove: 0, p99: 0)
        XCTAssertEqual(focus(b, view: .full, family: .bert), [0])
        // full view, T = 3, a decoder (position 0 rests): rows' largest on positions 1-2, averaged
        // rows [1, 0, 0], [0.5, 0.5, 0], [0.2, 0.3, 0.5]: (0 + 0.5 + 0.5) / 3
        let d = InputAnalysis(tokens: [1, 2, 3], promptLength: 3, views: [[1, 0, 0, 0.5, 0.5, 0, 0.2, 0.3, 0.5]], pairCosines: [],
                              maxsim: [0], importance: [0], label: nil, fracAbove: 0, p99: 0)
        assertAllClose(focus(d, view: .full, family: .llama).map(Float.init), [1.0 / 3], rtol: 1e-6)
    }

    /// Shift = mean over flagged - mean over clean; classes at 0.25 and 0.1 (a head exactly at
    /// 0.25 is suspicious, one exactly at 0.1 intermediate); fewer than two heads at 0.25: nil (Eq. 5
    /// with tau), one head alone not being "several heads lock on together".
    func testFocusShiftAndClassesByHand() {
        let flagged = [[0.9, 0.30, 0.20, 0.05], [0.7, 0.30, 0.20, 0.07]]  // means 0.8, 0.3, 0.2, 0.06
        let clean = [[0.1, 0.05, 0.10, 0.00], [0.1, 0.05, 0.10, 0.02]]  // means 0.1, 0.05, 0.1, 0.01
        let shift = focusShift(flagged: flagged, clean: clean)
        assertAllClose(shift.map(Float.init), [0.7, 0.25, 0.1, 0.05], rtol: 1e-6)
        XCTAssertEqual(classifyFocus([0.7, 0.25, 0.1, 0.05]), [.suspicious, .suspicious, .intermediate, .safe])
        XCTAssertNil(classifyFocus([0.24, 0.1, -0.3]))
        XCTAssertEqual(focusMinHeads, 2)
        XCTAssertNil(classifyFocus([0.24, 0.9, -0.3]))  // one head
        XCTAssertEqual(classifyFocus([0.25, 0.9, -0.3]), [.suspicious, .suspicious, .safe])
    }

    /// In the report: the focus classes when two heads moved, and Eq. 5 with tau (named in the
    /// report's rule) when one or none did.
    func testSafetyReportUsesTheFocusClassesOrFallsBack() {
        let a = InputAnalysis(tokens: [1], promptLength: 1, views: [], pairCosines: [], maxsim: [0.9, 0.9, 0.1],
                              importance: [1, 1, 0], label: 0, fracAbove: 0, p99: 0)
        // Eq. 5: S = 1 - (0.45 + 0.5) = 0.05, 0.05, 1 - 0.05 = 0.95 -> suspicious, suspicious, safe
        let paper = safetyReport([a], alpha: 0.5, tau: 0.5, heads: 3)
        XCTAssertEqual(paper.classes, [.suspicious, .suspicious, .safe])
        let moved = safetyReport([a], alpha: 0.5, tau: 0.5, heads: 3, rule: .focus, focusShift: [0.0, 0.5, 0.3])
        XCTAssertEqual(moved.classes, [.safe, .suspicious, .suspicious])
        XCTAssertEqual(moved.rule, .focus)
        for one in [[0.0, 0.2, 0.02], [0.0, 0.5, 0.02]] {
            let still = safetyReport([a], alpha: 0.5, tau: 0.5, heads: 3, rule: .focus, focusShift: one)
            XCTAssertEqual(still.classes, paper.classes)
            XCTAssertEqual(still.rule, .tau)
        }
    }

    /// The column-focus classes (issues 15 and 16): per head the mean z over the flagged inputs, by
    /// hand from a `focus` calibration where every input has T = 10 (the fit is the mean): heads'
    /// clean focus alternates 0.19 / 0.21 (sd 0.01), 0.18 / 0.22 (0.02), 0.29 / 0.31 (0.01).
    /// Flagged focus (0.23, 0.28, 0.30) and (0.25, 0.26, 0.32): z (3, 4, 0) and (5, 3, 2) (to the
    /// 1e-6 regularizer), means (4, 3.5, 1): suspicious, suspicious, intermediate. At the bounds a
    /// head at 2 is suspicious and one at 0.5 intermediate. Fewer than two heads at 2: nil (Eq. 5 with tau).
    func testColumnFocusClassesByHand() throws {
        let half: [[Double]] = [[0.19, 0.18, 0.29, 10], [0.21, 0.22, 0.31, 10]]
        let cal = try MonitorCalibration(clean: half + half + half + half, score: .focus, q: 0.5)
        let z1 = cal.headZ(of: [0.23, 0.28, 0.30, 10]), z2 = cal.headZ(of: [0.25, 0.26, 0.32, 10])
        assertAllClose(z1, [3, 4, 0], atol: 1e-3)
        assertAllClose(z2, [5, 3, 2], atol: 1e-3)
        let z = columnFocusShift(flaggedZ: [z1, z2])
        assertAllClose(z, [4, 3.5, 1], atol: 1e-3)
        XCTAssertEqual(classifyColumnFocus(z), [.suspicious, .suspicious, .intermediate])
        XCTAssertEqual(classifyColumnFocus([4, 0.5, 0.49, 2.0]), [.suspicious, .intermediate, .safe, .suspicious])
        // the same through `flaggedFocusShift`, from analyses carrying these column focuses
        func analysis(_ f: [Double]) -> InputAnalysis {
            InputAnalysis(tokens: Array(repeating: 1, count: 10), promptLength: 10, views: [], pairCosines: [], maxsim: [0, 0, 0],
                          importance: [0, 0, 0], label: nil, fracAbove: 0, p99: 0, columnFocus: f)
        }
        let clean = (half + half + half + half).map { analysis(Array($0.prefix(3))) }
        let screened = [analysis([0.2, 0.2, 0.3]), analysis([0.23, 0.28, 0.30]), analysis([0.25, 0.26, 0.32])]
        var settings = DefenseSettings(task: .classification, family: .bert)
        settings.classRule = .columnFocus
        let viaDefense = try flaggedFocusShift(screened: screened, flagged: [1, 2], cleanFocus: [], clean: clean, settings: settings, family: .bert)
        assertAllClose(try XCTUnwrap(viaDefense), z, atol: 1e-12)
        settings.classRule = .tau
        XCTAssertNil(try flaggedFocusShift(screened: screened, flagged: [1, 2], cleanFocus: [], clean: clean, settings: settings, family: .bert))
        XCTAssertNil(classifyColumnFocus([4, 1.99, 0.3]))
        // in the report: the column-focus classes, or Eq. 5 with tau (named) when one head rose
        let a = InputAnalysis(tokens: [1], promptLength: 1, views: [], pairCosines: [], maxsim: [0.9, 0.9, 0.1],
                              importance: [1, 1, 0], label: 0, fracAbove: 0, p99: 0)
        let rose = safetyReport([a], alpha: 0.5, tau: 0.5, heads: 3, rule: .columnFocus, focusShift: [0.1, 2.5, 3])
        XCTAssertEqual(rose.classes, [.safe, .suspicious, .suspicious])
        XCTAssertEqual(rose.rule, .columnFocus)
        let one = safetyReport([a], alpha: 0.5, tau: 0.5, heads: 3, rule: .columnFocus, focusShift: [0.1, 2.5, 1])
        XCTAssertEqual(one.classes, [.suspicious, .suspicious, .safe])
        XCTAssertEqual(one.rule, .tau)
    }

    /// End to end: `experiment --classes column-focus` names the rule in its settings line and logs
    /// the heads' Z, and reruns bit for bit.
    func testExperimentWithTheColumnFocusClasses() throws {
        let dir = temporaryDirectory(self)
        func run(_ name: String) throws -> (md: String, err: String) {
            let r = try runHeadalign(smallExperimentArguments(methods: "ours", json: dir + "/\(name).json", markdown: dir + "/\(name).md")
                                     + ["--classes", "column-focus", "--quantile", "0.5"])
            XCTAssertEqual(r.status, 0, r.err)
            return (try String(contentsOfFile: dir + "/\(name).md", encoding: .utf8), r.err)
        }
        let a = try run("a")
        XCTAssertTrue(a.md.contains("classes column-focus (else tau 0.5)"), a.md)
        XCTAssertTrue(a.err.contains("column-focus Z of the flagged inputs, highest:"), a.err)
        XCTAssertEqual(try run("b").md, a.md.replacingOccurrences(of: dir + "/a.", with: dir + "/b."))
    }

    /// The focus shift on the shipped teaching model (20 triggered, 20 clean demo sentences, cls
    /// view) against Hugging Face transformers in float64 (Fixtures/make_focus_fixture.py): 1e-6
    /// in f64 (the weights are F16, so both sides start from the same numbers), 1e-4 in f32.
    func testFocusShiftMatchesTransformersOnTheTeachingModel() throws {
        let root = URL(fileURLWithPath: #filePath).deletingLastPathComponent().deletingLastPathComponent().deletingLastPathComponent().path
        let dir = root + "/tiny-models/minilm-l3-sst2-badnets"
        guard FileManager.default.fileExists(atPath: dir + "/model.safetensors") else { throw XCTSkip("\(dir) not found") }
        let doc = try fixture("focus_minilm_l3.json")
        let tokenizer = try WordPieceTokenizer(directory: dir)
        func inputs(_ key: String) -> [AnalysisInput] { doc[key]!.array.map { AnalysisInput(tokens: tokenizer.encode($0.stringValue).ids) } }
        let expected = doc["shift"]!.array.map(\.double)
        XCTAssertEqual(expected.count, 36)
        for (precision, tolerance) in [(Precision.f64, 1e-6), (.f32, 1e-4)] {
            let model = try AnyModel.load(.directory(dir), precision: precision, backend: .naive)
            var settings = AnalysisSettings(view: .cls)
            settings.importance = false
            func focused(_ x: [AnalysisInput]) throws -> [[Double]] { try model.analyze(x, settings: settings).map { focus($0, view: .cls, family: .bert) } }
            let shift = focusShift(flagged: try focused(inputs("triggered")), clean: try focused(inputs("clean")))
            assertAllClose(shift, expected, atol: tolerance, "\(precision)")
            // and the classes the shift gives: the last layer's heads that lock onto the trigger
            XCTAssertEqual(classifyFocus(shift)?.indices.filter { classifyFocus(shift)![$0] == .suspicious },
                           expected.indices.filter { expected[$0] >= focusSuspiciousShift })
        }
    }
}
