// OracleTests.swift: the oracle dump's schema and `headalign compare` (exit 0 when two dumps
// agree, 1 naming the field and where when one does not, 2 on a file that is not a dump), the
// near-zero rules, and the conformance cases re-created by the binary.

import XCTest
import Foundation
import HeadAlign
import HeadAlignLab

final class OracleTests: XCTestCase {
    /// A small dump made by the binary: bert-micro, two inputs of different lengths, an explicit split.
    func makeDump(_ dir: String, extra: [String] = []) throws -> String {
        let path = dir + "/dump-\(UUID().uuidString).json"
        let r = try runHeadalign(["inspect", "--preset", "bert-micro", "--ids", "2 5 7 3", "--ids", "2 9 3", "--label", "1",
                                  "--precision", "f64", "--dump-attention", "--suspicious", "0:1,1:0", "--safe", "0:0,1:1",
                                  "--out", path] + extra)
        XCTAssertEqual(r.status, 0, r.err)
        return path
    }

    func testDumpDeclaresItsSchemaAndCounts() throws {
        let dir = temporaryDirectory(self)
        let doc = try readOracleDump(path: try makeDump(dir, extra: ["--dump-alignment-gradient", "--dump-hidden"]))
        XCTAssertEqual(doc["schema"]!.stringValue, oracleSchema)
        XCTAssertEqual(doc["config"]!["pair_count"]!.int, 4 * 3 / 2)
        let d = doc["documents"]!.array
        XCTAssertEqual(d.count, 2)
        XCTAssertEqual(d[1]["token_count"]!.int, 3)
        XCTAssertEqual(d[0]["align_suspicious"]!.array.map { $0.array.map(\.int) }, [[0, 1], [1, 0]])
        XCTAssertEqual(doc["aggregate"]!["documents"]!.int, 2)
        // Eq. 7's gradient reproduces align_loss; the key bias gradient is zero up to rounding
        let g = d[0]["alignment_gradient"]!
        XCTAssertEqual(g["loss"]!.double, d[0]["align_loss"]!.double, accuracy: 1e-15)
        for h in g["heads"]!.array {
            XCTAssertEqual(h["query_weight"]!.array.count, 4)  // head size 4 rows of d = 8
            XCTAssertEqual(h["query_weight"]!.array[0].array.count, 8)
            for b in h["key_bias"]!.array { XCTAssertLessThan(abs(b.double), 1e-15) }
        }
        // Eq. 4 from the dumped factors: |<H, dL/dH>| = importance
        let hid = d[0]["hidden"]!.array[1].array[0].array, dh = d[0]["hidden_gradient"]!.array[1].array[0].array
        let inner = zip(hid, dh).map { zip($0.array, $1.array).map { $0.double * $1.double }.reduce(0, +) }.reduce(0, +)
        XCTAssertEqual(abs(inner), d[0]["importance"]!.array[1].array[0].double, accuracy: 1e-12)
    }

    func testIdenticalDumpsAgree() throws {
        let dir = temporaryDirectory(self)
        let a = try makeDump(dir), b = try makeDump(dir)
        let r = try runHeadalign(["compare", a, b])
        XCTAssertEqual(r.status, 0, r.out + r.err)
        XCTAssertTrue(r.out.contains("0 outside tolerance"), r.out)
    }

    func testPerturbedValueFailsNamingFieldAndPath() throws {
        let dir = temporaryDirectory(self)
        let a = try makeDump(dir)
        var text = try String(contentsOfFile: a, encoding: .utf8)
        // perturb document 1's maxsim[0][1] by 1e-6 relative
        let doc = try JSONValue.parse(text)
        let v = doc["documents"]!.array[1]["maxsim"]!.array[0].array[1].double
        let old = String(format: "%.17g", v), new = String(format: "%.17g", v * (1 + 1e-6))
        let range = text.range(of: "\"maxsim\": [", options: [], range: text.range(of: "\"document\": 1")!.upperBound..<text.endIndex)!
        let at = text.range(of: old, range: range.upperBound..<text.endIndex)!
        text.replaceSubrange(at, with: new)
        let b = dir + "/perturbed.json"
        try text.write(toFile: b, atomically: true, encoding: .utf8)
        let r = try runHeadalign(["compare", a, b])
        XCTAssertEqual(r.status, 1, r.out + r.err)
        let fail = r.out.split(separator: "\n").filter { $0.hasPrefix("FAIL") }
        XCTAssertEqual(fail.count, 1, r.out)
        XCTAssertTrue(fail[0].contains("documents.maxsim") && fail[0].contains("document 1 [0][1]"), String(fail[0]))
        // a looser tolerance accepts it; --fields can leave it out
        XCTAssertEqual(try runHeadalign(["compare", a, b, "--rtol", "1e-5"]).status, 0)
        XCTAssertEqual(try runHeadalign(["compare", a, b, "--fields", "aggregate,safety"]).status, 0)
    }

    /// Relative error with a floor: values near zero pass on atol; fields zero in exact arithmetic on zero-atol.
    func testNearZeroValues() throws {
        func dump(_ x: Double, keyBias: Double) -> JSONValue {
            .object([("schema", .string(oracleSchema)), ("documents", .array([.object([("p99", .float(x)),
                       ("alignment_gradient", .object([("heads", .array([.object([("key_bias", .array([.float(keyBias)]))])]))]))])]))])
        }
        var t = OracleTolerance()
        t.rtol = 1e-9; t.atol = 1e-12; t.zeroAtol = 1e-9
        // 1e-20 and 3e-20 differ by 200% relative, but by far less than atol
        XCTAssertTrue(compareOracleDumps(dump(1e-20, keyBias: 0), dump(3e-20, keyBias: 0), tolerance: t).allSatisfy(\.passed))
        // 1e-3 and 1.001e-3: beyond rtol, beyond atol
        let r = compareOracleDumps(dump(1e-3, keyBias: 0), dump(1.001e-3, keyBias: 0), tolerance: t)
        XCTAssertEqual(r.filter { !$0.passed }.map(\.field), ["documents.p99"])
        // the key bias: rounding noise of opposite signs passes on the absolute rule, a real value does not
        let kb = compareOracleDumps(dump(0.5, keyBias: 3e-17), dump(0.5, keyBias: -2e-16), tolerance: t)
        XCTAssertTrue(kb.allSatisfy(\.passed))
        XCTAssertEqual(kb.first { $0.field.hasSuffix("key_bias") }?.rule, .zero)
        XCTAssertFalse(compareOracleDumps(dump(0.5, keyBias: 0), dump(0.5, keyBias: 1e-6), tolerance: t).allSatisfy(\.passed))
    }

    func testBadFileExitsTwo() throws {
        let dir = temporaryDirectory(self)
        let a = try makeDump(dir)
        try "not json".write(toFile: dir + "/bad.json", atomically: true, encoding: .utf8)
        try "{\"config\": {}}".write(toFile: dir + "/old.json", atomically: true, encoding: .utf8)
        try assertUsageError(["compare", a, dir + "/bad.json"], mentions: "bad.json")
        try assertUsageError(["compare", a, dir + "/old.json"], mentions: "schema")
        try assertUsageError(["compare", a, dir + "/missing.json"], mentions: "missing.json")
        try assertUsageError(["compare", a], mentions: "two dumps")
    }
}

/// A bert-micro checkpoint (make-model, f32, seed 1) with a 24-word vocab.txt, in `dir`.
func makeMicroBert(_ dir: String) throws {
    let r = try runHeadalign(["make-model", "--preset", "bert-micro", "--dtype", "f32", "--out", dir])
    XCTAssertEqual(r.status, 0, r.err)
    let vocab = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"] + "abcdefghijklmnopqrs".map { String($0) }
    try (vocab.joined(separator: "\n") + "\n").write(toFile: dir + "/vocab.txt", atomically: true, encoding: .utf8)
}

final class ExplicitSplitCLITests: XCTestCase {
    /// defend --suspicious/--safe skips Eq. 4-5: every round aligns and fine-tunes with the given split.
    func testDefendUsesTheExplicitSplit() throws {
        let dir = temporaryDirectory(self)
        try makeMicroBert(dir + "/m")
        try "0\ta b\n1\tc d\n0\te\n1\tf g h\n0\tb a\n1\td c e\n".write(toFile: dir + "/clean.txt", atomically: true, encoding: .utf8)
        try "a b\nc\ns s s s s s s r\nq\nh i j k\n".write(toFile: dir + "/inputs.txt", atomically: true, encoding: .utf8)
        let r = try runHeadalign(["defend", "--model", dir + "/m", "--clean", dir + "/clean.txt", "--inputs", dir + "/inputs.txt",
                                  "--no-write", "--report", dir + "/report.json", "--suspicious", "0:1", "--safe", "0:0,1:1",
                                  "--align-steps", "2", "--ft-steps", "2", "--batch", "2", "--quantile", "0"])
        XCTAssertEqual(r.status, 0, r.err)
        XCTAssertTrue(r.out.contains("1 suspicious, 2 safe, 1 intermediate heads (explicit split) (suspicious: 0:1; safe: 0:0 1:1)"), r.out)
        let report = try JSONValue.parse(try String(contentsOfFile: dir + "/report.json", encoding: .utf8))
        XCTAssertEqual(report["head_split"]!.stringValue, "explicit")
        // the report says how the monitor's threshold was set: SPEC's quantile rule at q 0 over the
        // second half (3 of 6) of the clean scores
        XCTAssertEqual(report["monitor_threshold_rule"]!.stringValue, "q 0.0 of 3 clean scores")
        XCTAssertTrue(report["monitor"]!.stringValue.hasSuffix(" view"), report["monitor"]!.stringValue)
        XCTAssertEqual(report["rounds"]!.array[0]["suspicious"]!.array.map(\.stringValue), ["0:1"])
        XCTAssertEqual(report["rounds"]!.array[0]["align_loss"]!.array.count, 2)
        try assertUsageError(["defend", "--model", dir + "/m", "--clean", dir + "/clean.txt", "--inputs", dir + "/inputs.txt",
                              "--no-write", "--suspicious", "0:1"], mentions: "--safe")
        // --seed seeds --preset weights: with --model it would be ignored, so it is refused
        try assertUsageError(["defend", "--model", dir + "/m", "--clean", dir + "/clean.txt", "--inputs", dir + "/inputs.txt",
                              "--no-write", "--seed", "2"], mentions: "--defense-seed")
    }

    /// experiment --suspicious/--safe: every defense of the table uses the given split (the control
    /// for Eq. 5); the per-seed JSON records it, and the flags are checked before any work.
    func testExperimentUsesTheExplicitSplit() throws {
        let dir = temporaryDirectory(self)
        try makeMicroBert(dir + "/m")
        try "0\ta b\n1\tc d\n0\te\n1\tf g h\n0\tb a\n1\td c e\n".write(toFile: dir + "/clean.txt", atomically: true, encoding: .utf8)
        try "0\ts a b\n0\ts e\n0\tb s a\n".write(toFile: dir + "/triggered.txt", atomically: true, encoding: .utf8)
        let common = ["experiment", "--backdoored", dir + "/m", "--attack", "file", "--target", "1", "--clean-test", dir + "/clean.txt",
                      "--triggered-test", dir + "/triggered.txt", "--defense-clean", dir + "/clean.txt", "--seeds", "1"]
        let r = try runHeadalign(common + ["--methods", "align-only,ours", "--suspicious", "0:1", "--safe", "0:0,1:1",
                                           "--align-steps", "2", "--ft-steps", "2", "--batch", "2", "--quantile", "0",
                                           "--json", dir + "/out.json"])
        XCTAssertEqual(r.status, 0, r.err)
        XCTAssertTrue(r.err.contains("(explicit split) (suspicious: 0:1; safe: 0:0 1:1)"), r.err)
        let json = try JSONValue.parse(try String(contentsOfFile: dir + "/out.json", encoding: .utf8))
        let methods = json["seeds"]!.array[0]["methods"]!.array
        XCTAssertEqual(methods.map { $0["method"]!.stringValue }, ["vanilla", "align-only", "ours"])
        for m in methods.dropFirst() {
            XCTAssertEqual(m["suspicious"]!.array.map(\.stringValue), ["0:1"])
            XCTAssertEqual(m["safe"]!.array.map(\.stringValue), ["0:0", "1:1"])
        }
        XCTAssertTrue(json["settings"]!.stringValue.contains("explicit split (suspicious 0:1; safe 0:0 1:1)"))
        // refused before the work: nothing printed to stdout but the one-line error
        for (extra, needle) in [(["--suspicious", "0:1"], "--safe"), (["--suspicious", "0:1", "--safe", "0:1"], "both"),
                                (["--suspicious", "9:0", "--safe", "0:0"], "--suspicious")] {
            let bad = try runHeadalign(common + ["--methods", "align-only"] + extra)
            XCTAssertEqual(bad.status, 2)
            XCTAssertTrue(bad.err.contains(needle), bad.err)
            XCTAssertFalse(bad.err.contains("seed 1"), bad.err)
        }
    }

    /// monitor --calibration-draws: each score's AUROC over seeded draws of the clean inputs; the
    /// uncalibrated scores (frac-above, p99) do not move with the draw; the flags are checked.
    func testMonitorCalibrationDraws() throws {
        let dir = temporaryDirectory(self)
        try makeMicroBert(dir + "/m")
        try "a b\nc d\ne\nf g h\nb a\nd c e\nh g\na c\n".write(toFile: dir + "/clean.txt", atomically: true, encoding: .utf8)
        try "s a b\ns e\nb s a\nr s\n".write(toFile: dir + "/triggered.txt", atomically: true, encoding: .utf8)
        let common = ["monitor", "--model", dir + "/m", "--clean", dir + "/clean.txt", "--clean-test", dir + "/clean.txt",
                      "--triggered", dir + "/triggered.txt"]
        let r = try runHeadalign(common + ["--calibration-draws", "6", "--calibration-size", "4"])
        XCTAssertEqual(r.status, 0, r.err)
        XCTAssertTrue(r.out.contains("AUROC over 6 draws of 4 of the 8 clean inputs (seed 1)"), r.out)
        let rows = r.out.components(separatedBy: "AUROC over")[1].split(separator: "\n").filter { $0.hasPrefix("| ") && !$0.hasPrefix("| score") }
        XCTAssertEqual(rows.count, MonitorScore.allCases.count)
        for row in rows {
            let cells = row.split(separator: "|").map { $0.trimmingCharacters(in: .whitespaces) }
            let (median, low, high) = (Double(cells[1])!, Double(cells[2])!, Double(cells[3])!)
            XCTAssertTrue(low <= median && median <= high, String(row))
            if cells[0] == "frac-above" || cells[0] == "p99" { XCTAssertEqual(low, high, String(row)) }
        }
        XCTAssertEqual(try runHeadalign(common + ["--calibration-draws", "6", "--calibration-size", "4"]).out, r.out)
        try assertUsageError(["monitor", "--model", dir + "/m", "--clean", dir + "/clean.txt", "--inputs", dir + "/clean.txt",
                              "--calibration-draws", "3"], mentions: "--triggered")
        try assertUsageError(common + ["--calibration-size", "4"], mentions: "--calibration-draws")
        try assertUsageError(common + ["--calibration-draws", "3", "--calibration-size", "9"], mentions: "--calibration-size")
    }

    /// attention --precision f64 prints 17 significant digits (an f64 value round-trips).
    func testAttentionPrintsSeventeenDigits() throws {
        let r = try runHeadalign(["attention", "--q", "1 0; 0 1", "--k", "1 2; 3 1", "--causal", "--precision", "f64"])
        XCTAssertEqual(r.status, 0, r.err)
        // row 1 of A: softmax(2/sqrt 2, 1/sqrt 2) = (1/(1 + e^{-1/sqrt 2}), ...), printed with 17 significant digits
        let a10 = 1 / (1 + exp(-1 / 2.0.squareRoot()))
        let printed = r.out.split(whereSeparator: { $0 == " " || $0 == "\n" }).compactMap { Double($0) }
        XCTAssertTrue(printed.contains { abs($0 - a10) <= 2e-16 }, r.out)
        XCTAssertTrue(r.out.contains("0.669761549326656"), r.out)
        XCTAssertTrue(try runHeadalign(["attention", "--q", "1 0; 0 1", "--k", "1 2; 3 1"]).out.contains("0.669762"))
    }
}

final class ConformanceTests: XCTestCase {
    /// Every case in conformance/cases: the binary re-creates the dump from args.txt, and compare
    /// passes (exit 0) against the committed expected.json.
    func testConformanceCasesReproduce() throws {
        let cases = packageRoot + "/conformance/cases"
        let names = try FileManager.default.contentsOfDirectory(atPath: cases).sorted()
        XCTAssertGreaterThanOrEqual(names.count, 6)
        let dir = temporaryDirectory(self)
        for name in names {
            let args = try String(contentsOfFile: "\(cases)/\(name)/args.txt", encoding: .utf8).split(separator: "\n").map {
                $0.hasPrefix("conformance/") ? packageRoot + "/" + $0 : String($0)
            }
            let out = "\(dir)/\(name).json"
            let made = try runHeadalign(args + ["--out", out])
            XCTAssertEqual(made.status, 0, "\(name): \(made.err)")
            let c = try runHeadalign(["compare", "\(cases)/\(name)/expected.json", out, "--quiet"])
            XCTAssertEqual(c.status, 0, "\(name): \(c.out)\(c.err)")
            XCTAssertTrue(c.out.contains(" 0 outside tolerance"), "\(name): \(c.out)")
        }
    }

    /// The fine-tuning block by hand: rates by class (a shared key/value head at its query heads'
    /// lowest), and step 1's change is AdamW's first step, -lr wd p - lr g / (|g| + eps).
    func testFinetuneStepByHand() throws {
        let root = packageRoot + "/conformance"
        let llama = try readOracleDump(path: root + "/cases/llama-gqa-align/expected.json")["finetune"]!
        // layer 1: query heads 0 (safe) and 1 (intermediate) share kv head 0
        XCTAssertEqual(llama["head_rates"]!.array[1].array[0]["query"]!.double, 2e-4)
        XCTAssertEqual(llama["head_rates"]!.array[1].array[0]["key"]!.double, 5e-5)
        let ft = try readOracleDump(path: root + "/cases/bert-finetune/expected.json")["finetune"]!
        guard case .f64(let model) = try AnyModel.load(.directory(root + "/models/bert-micro"), precision: .f64, backend: .naive) else {
            return XCTFail("f64 expected")
        }
        let wd = ft["optimizer"]!["weight_decay"]!.double, eps = ft["optimizer"]!["eps"]!.double
        let step1 = ft["trace"]!.array[0]
        var checked = 0
        for name in ["encoder.layer.0.attention.self.query.weight", "encoder.layer.1.attention.output.dense.weight", "classifier.weight"] {
            let p = model.layout[name]!
            let lr = ft["learning_rate"]![name]!.array.map(\.double)
            let g = step1["gradient"]![name]!.array.map(\.double), change = step1["change"]![name]!.array.map(\.double)
            for i in stride(from: 0, to: p.count, by: 7) {
                let w = model.params.data[p.offset + i]
                let expected = -lr[i] * wd * w - lr[i] * g[i] / (abs(g[i]) + eps)
                XCTAssertEqual(change[i], expected, accuracy: 1e-15 + 1e-9 * abs(expected), "\(name)[\(i)]")
                checked += 1
            }
        }
        XCTAssertGreaterThan(checked, 20)
        // the suspicious head 0:1's W_q rows at eta_low, the safe head 0:0's at eta_high
        let q = ft["learning_rate"]!["encoder.layer.0.attention.self.query.weight"]!.array.map(\.double)
        XCTAssertEqual(q[0], 2e-4)
        XCTAssertEqual(q[4 * 8], 5e-6)
    }

    /// Every expected dump (and one with every optional block) validates against the JSON Schema,
    /// where Python's jsonschema is installed.
    func testDumpsValidateAgainstTheSchema() throws {
        let probe = Process()
        probe.executableURL = URL(fileURLWithPath: "/usr/bin/env")
        probe.arguments = ["python3", "-c", "import jsonschema"]
        probe.standardError = FileHandle.nullDevice
        guard (try? probe.run()) != nil else { throw XCTSkip("no python3") }
        probe.waitUntilExit()
        guard probe.terminationStatus == 0 else { throw XCTSkip("Python's jsonschema is not installed") }
        let root = packageRoot + "/conformance"
        var files = try FileManager.default.contentsOfDirectory(atPath: root + "/cases").sorted().map { "\(root)/cases/\($0)/expected.json" }
        let dir = temporaryDirectory(self)
        let r = try runHeadalign(["inspect", "--preset", "llama-micro", "--ids", "1 5 9", "--ids", "1 4", "--generate", "2", "--precision", "f64",
                                  "--dump-attention", "--dump-hidden", "--dump-alignment-gradient", "--dump-finetune-step", "1",
                                  "--out", dir + "/all.json"])
        XCTAssertEqual(r.status, 0, r.err)
        files.append(dir + "/all.json")
        let script = "import json,sys,jsonschema\ns=json.load(open(sys.argv[1]))\njsonschema.Draft202012Validator.check_schema(s)\n"
            + "for f in sys.argv[2:]: jsonschema.validate(json.load(open(f)), s)\nprint('valid', len(sys.argv) - 2)\n"
        let p = Process(), out = Pipe(), err = Pipe()
        p.executableURL = URL(fileURLWithPath: "/usr/bin/env")
        p.arguments = ["python3", "-c", script, root + "/headalign-oracle-1.schema.json"] + files
        p.standardOutput = out
        p.standardError = err
        try p.run()
        let o = String(decoding: out.fileHandleForReading.readDataToEndOfFile(), as: UTF8.self)
        let e = String(decoding: err.fileHandleForReading.readDataToEndOfFile(), as: UTF8.self)
        p.waitUntilExit()
        XCTAssertEqual(p.terminationStatus, 0, e)
        XCTAssertEqual(o, "valid \(files.count)\n", e)
    }

    /// The dumped Eq. 6-7 gradient is the full-backprop derivative of align_loss with Eq. 6's
    /// reference held constant: central differences at W_q entries of each suspicious head (a layer-0 head also feels the loss of later heads) and
    /// at W_k entries, on the committed llama-micro case (grouped-query attention, gen2prompt).
    func testAlignmentGradientMatchesFiniteDifferences() throws {
        let root = packageRoot + "/conformance"
        guard case .f64(let model) = try AnyModel.load(.directory(root + "/models/llama-micro"), precision: .f64, backend: .naive) else {
            return XCTFail("f64 expected")
        }
        let doc = try readOracleDump(path: root + "/cases/llama-gqa-align/expected.json")
        let d0 = doc["documents"]!.array[0]
        let tokens = d0["tokens"]!.array.map(\.int), tp = d0["prompt_length"]!.int
        let c = model.config, nh = c.numAttentionHeads
        let susp = [HeadID(0, 0), HeadID(0, 1), HeadID(1, 2)], safe = [HeadID(0, 2), HeadID(0, 3), HeadID(1, 0)]
        func views() -> [[Double]] {
            let pass = model.forward(Batch([tokens]))
            var v: [[Double]] = []
            for l in 0..<c.numHiddenLayers {
                for h in 0..<nh {
                    v.append(flattenedView(pass.attention(layer: l, sequence: 0, head: h).data, tokens: tokens.count, view: .gen2prompt, promptLength: tp))
                }
            }
            return v
        }
        // Eq. 6's reference is a constant: held at the unperturbed model's value
        let reference = safeReference(views(), safe: safe.map { $0.layer * nh + $0.head })
        func loss() -> Double {
            let v = views()
            var total = 0.0
            for id in susp {
                let a = v[id.layer * nh + id.head]
                for k in 0..<a.count { total += (a[k] - reference[k]) * (a[k] - reference[k]) }
            }
            return total
        }
        XCTAssertEqual(loss(), d0["align_loss"]!.double, accuracy: 1e-13)
        let heads = d0["alignment_gradient"]!["heads"]!.array
        for (k, id) in susp.enumerated() {
            let s = headSlices(layout: model.layout, config: c, layer: id.layer, head: id.head)
            for (range, key) in [(s.query[0], "query_weight"), (s.key[0], "key_weight")] {
                let rows = heads[k][key]!.array
                for i in [0, 5, 9, 15] {  // d_head 2 rows of d 8
                    let idx = range.lowerBound + i, old = model.params.data[idx], eps = 1e-5
                    model.params.data[idx] = old + eps; let up = loss()
                    model.params.data[idx] = old - eps; let down = loss()
                    model.params.data[idx] = old
                    let numeric = (up - down) / (2 * eps), dumped = rows[i / c.hiddenSize].array[i % c.hiddenSize].double
                    XCTAssertEqual(dumped, numeric, accuracy: 1e-7 + 1e-5 * abs(numeric), "\(id) \(key)[\(i)]")
                }
            }
        }
    }
}
