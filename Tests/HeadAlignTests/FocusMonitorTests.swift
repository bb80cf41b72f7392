// The focus monitor score (ours, issue 16; docs/RESULTS.md §17): heads whose rows lock onto one
// ordinary token, against clean inputs of the same length.

import XCTest
import HeadAlign

final class FocusMonitorTests: XCTestCase {
    /// BERT, T = 4 ([CLS] a b [SEP]); rows [0.1 0.2 0.6 0.1], [0.4 0.4 0.1 0.1], [0.1 0.7 0.1 0.1],
    /// [0.5 0.3 0.1 0.1]: column means over the 4 rows are 0.275, 0.4, 0.225, 0.1; the ordinary keys
    /// are 1 and 2, so the column focus is 0.4 (each row's own largest would give (0.6+0.4+0.7+0.3)/4
    /// = 0.5: the rows do not agree on one token). A decoder rests only at 0: key 3 counts there.
    func testColumnFocusByHand() {
        let map: [Double] = [0.1, 0.2, 0.6, 0.1, 0.4, 0.4, 0.1, 0.1, 0.1, 0.7, 0.1, 0.1, 0.5, 0.3, 0.1, 0.1]
        map.withUnsafeBufferPointer { p in
            XCTAssertEqual(columnFocus(p.baseAddress!, tokens: 4, family: .bert), 0.4, accuracy: 1e-12)
            XCTAssertEqual(columnFocus(p.baseAddress!, tokens: 4, family: .llama), 0.4, accuracy: 1e-12)
        }
        let last: [Double] = [0, 0, 0, 1, 0, 0, 0, 1, 0, 0, 0, 1, 0, 0, 0, 1]  // every row on the last key
        last.withUnsafeBufferPointer { p in
            XCTAssertEqual(columnFocus(p.baseAddress!, tokens: 4, family: .bert), 0)  // [SEP] is a rest position
            XCTAssertEqual(columnFocus(p.baseAddress!, tokens: 4, family: .llama), 1)
        }
        [1.0, 0, 0, 1].withUnsafeBufferPointer { p in  // T = 2, BERT: no ordinary key
            XCTAssertEqual(columnFocus(p.baseAddress!, tokens: 2, family: .bert), 0)
        }
    }

    /// `analyze` measures the column focus on the whole map whatever the view: the same numbers
    /// from a cls-view analysis as recomputed from the full view's maps.
    func testAnalyzeReadsTheWholeMap() throws {
        let model = Model<Double>(config: try ModelConfig.preset("bert-tiny"))
        model.initialize(seed: 5)
        let inputs = [AnalysisInput(tokens: [2, 17, 42, 8, 99, 3]), AnalysisInput(tokens: [2, 5, 3])]
        var cls = AnalysisSettings(view: .cls)
        cls.importance = false
        var full = cls
        full.view = .full
        let a = try analyze(model, inputs, settings: cls), b = try analyze(model, inputs, settings: full)
        for (x, y) in zip(a, b) {
            let t = y.tokens.count
            let expected = y.views.map { v in v.withUnsafeBufferPointer { columnFocus($0.baseAddress!, tokens: t, family: .bert) } }
            XCTAssertEqual(x.columnFocus.count, 8)  // 2 layers x 4 heads
            assertAllClose(x.columnFocus, expected, rtol: 1e-12)
            XCTAssertEqual(monitorReading(x, score: .focus), x.columnFocus + [Double(t)])
            XCTAssertEqual(monitorReading(x, score: .contrastAbsZ), x.pairCosines)
        }
    }

    /// y = 2 + 3T + 4/T exactly: the fit recovers (2, 3, 4); with every T equal only the mean is
    /// left; with two distinct lengths, the line through them.
    func testLengthFitByHand() {
        let t = [2.0, 4, 5, 10, 8]
        let fit = lengthFit(t.map { 2 + 3 * $0 + 4 / $0 }, lengths: t)
        assertAllClose(fit, [2, 3, 4], rtol: 1e-9)
        XCTAssertEqual(lengthFit([1, 2, 6], lengths: [7, 7, 7]), [3, 0, 0])
        let line = lengthFit([1, 3, 1, 3], lengths: [1, 2, 1, 2])  // y = -1 + 2T
        assertAllClose(line, [-1, 2, 0], rtol: 1e-9)
    }

    /// Calibration (first half: the fit per head and the residual sd; second half: the threshold)
    /// and the score mean_h max(z_h, 0) by hand. Every input has T = 10, so the fit is the mean:
    /// head 0's focus alternates 0.19 / 0.21 (mean 0.2, sd 0.01), head 1's 0.18 / 0.22 (0.2, 0.02).
    /// Focus (0.25, 0.2): z = 0.05 / (0.01 + 1e-6) and 0, score z / 2 = 2.49975; focus below the fit
    /// scores 0, not less (a head looking away is not a head locking on).
    func testFocusScoreByHand() throws {
        let half: [[Double]] = [[0.19, 0.18, 10], [0.21, 0.22, 10], [0.19, 0.18, 10], [0.21, 0.22, 10]]
        let cal = try MonitorCalibration(clean: half + half, score: .focus, q: 0.5)
        assertAllClose(cal.lengthFits[0], [0.2, 0, 0], rtol: 1e-12)
        assertAllClose(cal.sd, [0.01, 0.02], rtol: 1e-9)
        XCTAssertEqual(cal.score(of: [0.25, 0.2, 10]), 0.05 / (0.01 + 1e-6) / 2, accuracy: 1e-9)
        XCTAssertEqual(cal.score(of: [0.0, 0.0, 10]), 0)
        XCTAssertTrue(cal.flags(cal.score(of: [0.25, 0.2, 10])))
        XCTAssertFalse(cal.flags(cal.score(of: [0.0, 0.0, 10])))
    }

    /// Why the length term: clean focus falls with T (short inputs concentrate attention by
    /// themselves). Calibrated on focus = 0.05 + 1/T (+-0.002), a short clean-like input (T = 4,
    /// focus 0.3) scores near 0, while a long input at the same focus (T = 40, fit 0.075) scores far
    /// above the threshold.
    func testTheLengthFitKeepsShortInputsFromLookingFocused() throws {
        var rows: [[Double]] = []
        for (i, t) in [4.0, 5, 6, 8, 10, 12, 16, 20, 25, 30, 35, 40].enumerated() {
            rows.append([0.05 + 1 / t + (i % 2 == 0 ? 0.002 : -0.002), t])
        }
        let cal = try MonitorCalibration(clean: rows + rows, score: .focus, q: 0.9)
        XCTAssertLessThan(cal.score(of: [0.3, 4]), 1.5)
        XCTAssertFalse(cal.flags(cal.score(of: [0.3, 4])))
        XCTAssertGreaterThan(cal.score(of: [0.3, 40]), 50)
        XCTAssertTrue(cal.flags(cal.score(of: [0.3, 40])))
    }

    /// End to end: `experiment --score focus` flags with it (the settings line and the JSON say so),
    /// marks it "(flagging)" in the detection table, and reruns bit for bit.
    func testExperimentFlagsWithTheFocusScore() throws {
        let dir = temporaryDirectory(self)
        func run(_ name: String) throws -> String {
            let r = try runHeadalign(smallExperimentArguments(methods: "ours", json: dir + "/\(name).json", markdown: dir + "/\(name).md")
                                     + ["--score", "focus", "--quantile", "0.5"])
            XCTAssertEqual(r.status, 0, r.err)
            return try String(contentsOfFile: dir + "/\(name).md", encoding: .utf8)
        }
        let md = try run("a")
        XCTAssertTrue(md.contains("| focus (flagging) |") && md.contains("| contrast-absz |"), md)
        XCTAssertFalse(md.contains("(default)"), md)
        XCTAssertTrue(md.contains("At the calibrated threshold (focus)") && md.contains("score focus"), md)
        XCTAssertEqual(try run("b"), md.replacingOccurrences(of: dir + "/a.", with: dir + "/b."))
    }
}
