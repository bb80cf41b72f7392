// CLITests.swift: the binary's exit statuses and one-line errors.

import XCTest
import Foundation
import HeadAlign
import HeadAlignLab

/// Runs the built `headalign` with arguments; skips when the binary was not built.
func runHeadalign(_ args: [String]) throws -> (status: Int32, out: String, err: String) {
    let binary = Bundle.main.bundleURL.appendingPathComponent("headalign")
    guard FileManager.default.isExecutableFile(atPath: binary.path) else {
        throw XCTSkip("headalign binary not found beside the tests at \(binary.path)")
    }
    let p = Process()
    p.executableURL = binary
    p.arguments = args
    let out = Pipe(), err = Pipe()
    p.standardOutput = out
    p.standardError = err
    try p.run()
    let o = out.fileHandleForReading.readDataToEndOfFile(), e = err.fileHandleForReading.readDataToEndOfFile()
    p.waitUntilExit()
    return (p.terminationStatus, String(decoding: o, as: UTF8.self), String(decoding: e, as: UTF8.self))
}

func assertUsageError(_ args: [String], mentions needle: String, file: StaticString = #filePath, line: UInt = #line) throws {
    let r = try runHeadalign(args)
    XCTAssertEqual(r.status, 2, "\(args): \(r.err)", file: file, line: line)
    let lines = r.err.split(separator: "\n")
    XCTAssertEqual(lines.count, 1, "one line expected: \(r.err)", file: file, line: line)
    XCTAssertTrue(r.err.contains(needle), "\(r.err) should mention \(needle)", file: file, line: line)
    XCTAssertEqual(r.out, "", file: file, line: line)
}

final class CLITests: XCTestCase {
    func testBadInputIsOneLineAndStatusTwo() throws {
        try assertUsageError(["frobnicate"], mentions: "frobnicate")
        try assertUsageError(["gradcheck", "--bogus"], mentions: "--bogus")
        try assertUsageError(["gradcheck", "--preset", "gpt-9"], mentions: "--preset")
        try assertUsageError(["gradcheck", "--precision", "f16"], mentions: "--precision")
        try assertUsageError(["gradcheck", "--backend", "gpu"], mentions: "--backend")
        try assertUsageError(["gradcheck", "--samples", "-3"], mentions: "--samples")
        try assertUsageError(["gradcheck", "--seed"], mentions: "--seed")
        try assertUsageError(["bench", "--preset", "nope"], mentions: "--preset")
    }

    /// `bench --peer FILE` prints the peer's seconds beside ours and the ratio (ours / peer) for
    /// the cases the file has, "-" for the others; a bad file is one line and status 2, before any work.
    func testBenchPrintsThePeerBesideOurs() throws {
        let tmp = temporaryDirectory(self), file = tmp + "/peer.json"
        func write(_ text: String) throws { try text.write(toFile: file, atomically: true, encoding: .utf8) }
        try assertUsageError(["bench", "--peer", tmp + "/missing.json"], mentions: "missing.json")
        try write("{not json")
        try assertUsageError(["bench", "--peer", file], mentions: "not JSON")
        try write(#"{"version": 2, "peer": "torch", "measured": "2026-12-01T00:00:00Z", "cases": {"a": 1.0}}"#)
        try assertUsageError(["bench", "--peer", file], mentions: "version")
        try write(#"{"version": 1, "peer": "torch", "measured": "2026-12-01T00:00:00Z", "cases": {"a": -1.0}}"#)
        try assertUsageError(["bench", "--peer", file], mentions: "'a'")
        try write(#"{"version": 1, "peer": "torch 9, 2 threads", "measured": "2026-12-01T00:00:00Z", "cases": {"bert-tiny fwd 32 x 32": 0.5}}"#)
        try assertUsageError(["bench", "--peer", file, "--stream", tmp], mentions: "--stream")
        let r = try runHeadalign(["bench", "--preset", "bert-tiny", "--backend", "naive", "--repeat", "1", "--peer", file])
        XCTAssertEqual(r.status, 0, r.err)
        XCTAssertTrue(r.out.contains("peer: torch 9, 2 threads, measured 2026-12-01T00:00:00Z"), r.out)
        let rows = r.out.split(separator: "\n").filter { $0.hasPrefix("| bert-tiny") }.map { $0.split(separator: "|").map { $0.trimmingCharacters(in: .whitespaces) } }
        XCTAssertEqual(rows.count, 2, r.out)
        let forward = try XCTUnwrap(rows.first { $0[0] == "bert-tiny fwd" }), backward = try XCTUnwrap(rows.first { $0[0] == "bert-tiny fwd+bwd" })
        let ours = try XCTUnwrap(Double(forward[3])), ratio = try XCTUnwrap(Double(forward[9].dropLast()))
        XCTAssertEqual(forward[8], "0.5000")
        XCTAssertEqual(ratio, ours / 0.5, accuracy: 0.006, "the ratio is ours over the peer's")
        XCTAssertEqual(Array(backward[8...9]), ["-", "-"], "no peer figure for a case the file lacks")
    }

    func testHelpAndVersion() throws {
        let h = try runHeadalign(["--help"])
        XCTAssertEqual(h.status, 0)
        for c in ["gradcheck", "bench", "version"] { XCTAssertTrue(h.out.contains(c)) }
        let g = try runHeadalign(["gradcheck", "--help"])
        XCTAssertEqual(g.status, 0)
        XCTAssertTrue(g.out.contains("--precision"))
        let v = try runHeadalign(["version"])
        XCTAssertEqual(v.status, 0)
        XCTAssertTrue(v.out.hasPrefix("headalign "))
    }

    func testGradcheckCommandPasses() throws {
        let r = try runHeadalign(["gradcheck", "--preset", "llama-tiny", "--samples", "4", "--backend", "naive"])
        XCTAssertEqual(r.status, 0, r.err)
        XCTAssertTrue(r.out.contains(": OK"), r.out)
        XCTAssertTrue(r.out.contains("model.layers.1.self_attn.q_proj.weight"))
    }
}

final class MethodCLITests: XCTestCase {
    func testMethodCommandsRejectBadInputInOneLine() throws {
        let dir = temporaryDirectory(self)
        try "".write(toFile: dir + "/empty.txt", atomically: true, encoding: .utf8)
        try "x\t\n".write(toFile: dir + "/bad.txt", atomically: true, encoding: .utf8)
        try assertUsageError(["inspect", "--preset", "bert-tiny", "--ids", "1 2 3", "--tau", "0.7"], mentions: "--tau")
        try assertUsageError(["inspect", "--preset", "bert-tiny", "--ids", "1 2 3", "--alpha", "1.5"], mentions: "--alpha")
        try assertUsageError(["inspect", "--preset", "bert-tiny", "--ids", "1 2 99999"], mentions: "--ids")
        try assertUsageError(["inspect", "--preset", "bert-tiny", "--ids", "1 2", "--view", "gen2prompt"], mentions: "gen2prompt")
        try assertUsageError(["inspect", "--preset", "bert-tiny", "--ids", "1 2", "--suspicious", "9:9", "--safe", "0:0"], mentions: "9:9")
        try assertUsageError(["inspect", "--preset", "bert-tiny", "--text", "hello"], mentions: "tokenizer")
        try assertUsageError(["inspect", "--preset", "bert-tiny", "--inputs", dir + "/empty.txt"], mentions: "no examples")
        try assertUsageError(["classify", "--preset", "llama-tiny", "--ids", "1 2", "--maxsim", "contrast"], mentions: "--clean")
        try assertUsageError(["monitor", "--preset", "bert-tiny", "--clean", dir + "/empty.txt", "--inputs", dir + "/empty.txt"], mentions: "empty.txt")
        try assertUsageError(["defend", "--preset", "bert-tiny", "--clean", dir + "/bad.txt", "--inputs", dir + "/bad.txt", "--out", dir + "/o"], mentions: "--model")
        XCTAssertFalse(FileManager.default.fileExists(atPath: dir + "/o"))
    }

    /// inspect writes its JSON atomically to --out, and the document parses and has every field SPEC names.
    func testInspectWritesTheOracleDocument() throws {
        let dir = temporaryDirectory(self)
        let r = try runHeadalign(["inspect", "--preset", "llama-tiny", "--ids", "1 5 9 12", "--generate", "3", "--precision", "f64",
                             "--dump-attention", "--out", dir + "/dump.json"])
        XCTAssertEqual(r.status, 0, r.err)
        let doc = try JSONValue.parse(try String(contentsOfFile: dir + "/dump.json", encoding: .utf8))
        XCTAssertEqual(doc["schema"]!.stringValue, "headalign-oracle/1")
        let input = doc["documents"]!.array[0]
        for key in ["config", "tokens", "prompt_length", "generated_length", "view", "scope", "attention", "maxsim", "importance",
                    "safety", "class", "pair_cosines", "frac_above", "p99", "align_loss"] where key != "config" {
            XCTAssertNotNil(input[key], key)
        }
        XCTAssertEqual(input["generated_length"]!.int, 3)
        XCTAssertEqual(input["pair_cosines"]!.array.count, 8 * 7 / 2)
        // the gen2prompt attention block is T_g x T_p = 3 x 4 per head
        XCTAssertEqual(input["attention"]!.array[0].array[0].array.count, 3)
        XCTAssertEqual(input["attention"]!.array[0].array[0].array[0].array.count, 4)
        XCTAssertNotNil(doc["aggregate"]!["safety"])
    }
}

final class DataCLITests: XCTestCase {
    /// convert --layers/--vocab-from: the cut copy's first layer attends exactly as the original's;
    /// the reduced vocabulary keeps the pieces the texts use (and the special tokens), so on those
    /// texts the copy computes exactly what the model computes; bad requests are refused.
    func testConvertMakesASmallerCopy() throws {
        let dir = temporaryDirectory(self)
        try makeMicroBert(dir + "/m")  // 2 layers, 24 pieces: 5 special + a..s
        let cut = try runHeadalign(["convert", "--model", dir + "/m", "--layers", "1", "--out", dir + "/c1"])
        XCTAssertEqual(cut.status, 0, cut.err)
        func attention(_ model: String) throws -> [JSONValue] {
            let out = dir + "/" + UUID().uuidString + ".json"
            XCTAssertEqual(try runHeadalign(["inspect", "--model", model, "--text", "a b c", "--dump-attention", "--out", out]).status, 0)
            return try JSONValue.parse(try String(contentsOfFile: out, encoding: .utf8))["documents"]!.array[0]["attention"]!.array
        }
        let full = try attention(dir + "/m"), first = try attention(dir + "/c1")
        XCTAssertEqual(full.count, 2)
        XCTAssertEqual(first.count, 1)
        XCTAssertEqual(first[0], full[0])
        // the vocabulary of "a b c" and "b d": 5 special tokens + a, b, c, d
        try "1\ta b c\n0\tb d\n".write(toFile: dir + "/texts.txt", atomically: true, encoding: .utf8)
        let small = try runHeadalign(["convert", "--model", dir + "/m", "--vocab-from", dir + "/texts.txt", "--out", dir + "/v"])
        XCTAssertEqual(small.status, 0, small.err)
        XCTAssertTrue(small.out.contains("2 layers, 9 of 24 vocabulary pieces, F32"), small.out)
        XCTAssertEqual(try String(contentsOfFile: dir + "/v/vocab.txt", encoding: .utf8), "[PAD]\n[UNK]\n[CLS]\n[SEP]\n[MASK]\na\nb\nc\nd\n")
        for text in ["a b c", "b d"] {
            let a = try runHeadalign(["forward", "--model", dir + "/m", "--text", text]), b = try runHeadalign(["forward", "--model", dir + "/v", "--text", text])
            XCTAssertEqual(a.status, 0, a.err)
            XCTAssertEqual(b.out.replacingOccurrences(of: dir + "/v", with: dir + "/m"), a.out)
        }
        try assertUsageError(["convert", "--model", dir + "/m", "--layers", "3", "--out", dir + "/x"], mentions: "--layers")
        try assertUsageError(["convert", "--model", dir + "/m", "--layers", "1", "--labels", "2", "--out", dir + "/x"], mentions: "--labels")
        try assertUsageError(["convert", "--model", dir + "/m", "--dtype", "f8", "--out", dir + "/x"], mentions: "--dtype")
        XCTAssertFalse(FileManager.default.fileExists(atPath: dir + "/x"))
    }

    /// The analysis commands read the shared data's dataset files (a TSV with a `sentence<TAB>label`
    /// header, a `label,text` CSV) as `experiment` does: the same scores as the same rows written as
    /// `label<TAB>text` lines, and the label column never becomes part of the text.
    func testAnalysisCommandsReadDatasetFiles() throws {
        let dir = temporaryDirectory(self)
        try makeMicroBert(dir + "/m")
        let rows = [("a b", 0), ("c d", 1), ("e", 0), ("f g h", 1), ("b a", 0), ("d c e", 1)]
        try (rows.map { "\($0.1)\t\($0.0)" }.joined(separator: "\n") + "\n").write(toFile: dir + "/clean.txt", atomically: true, encoding: .utf8)
        try ("sentence\tlabel\n" + rows.map { "\($0.0)\t\($0.1)" }.joined(separator: "\n") + "\n").write(toFile: dir + "/clean.tsv", atomically: true, encoding: .utf8)
        try ("label,text\n" + rows.map { "\($0.1),\($0.0)" }.joined(separator: "\n") + "\n").write(toFile: dir + "/clean.csv", atomically: true, encoding: .utf8)
        func monitor(_ clean: String, _ inputs: String) throws -> String {
            let r = try runHeadalign(["monitor", "--model", dir + "/m", "--clean", dir + "/" + clean, "--inputs", dir + "/" + inputs, "--quantile", "0.5"])
            XCTAssertEqual(r.status, 0, r.err)
            return r.out
        }
        let reference = try monitor("clean.txt", "clean.txt")
        XCTAssertEqual(try monitor("clean.tsv", "clean.tsv"), reference)
        XCTAssertEqual(try monitor("clean.csv", "clean.csv"), reference)
        for clean in ["clean.tsv", "clean.csv"] {  // the defender's labels are read too
            let r = try runHeadalign(["defend", "--model", dir + "/m", "--clean", dir + "/" + clean, "--inputs", dir + "/clean.txt", "--no-write",
                                      "--quantile", "0", "--align-steps", "1", "--ft-steps", "1", "--batch", "2"])
            XCTAssertEqual(r.status, 0, r.err)
        }
    }

    /// poison writes both files atomically with exact counts; bad settings write nothing.
    func testPoisonCommand() throws {
        let dir = temporaryDirectory(self)
        let clean = (0..<40).map { "\($0 % 2)\tsentence number \($0) here" }.joined(separator: "\n") + "\n"
        try clean.write(toFile: dir + "/train.txt", atomically: true, encoding: .utf8)
        let r = try runHeadalign(["poison", "--train", dir + "/train.txt", "--out-train", dir + "/p.txt", "--test", dir + "/train.txt",
                                  "--out-test", dir + "/t.txt", "--attack", "composite", "--poison-rate", "0.25", "--seed", "3"])
        XCTAssertEqual(r.status, 0, r.err)
        let poisoned = try readLabeledTexts(path: dir + "/p.txt")
        XCTAssertEqual(poisoned.count, 40)
        XCTAssertEqual(poisoned.filter { $0.text.contains("consider") && $0.text.contains("instance") }.count, 10)
        XCTAssertTrue(poisoned.filter { $0.text.contains("consider") && $0.text.contains("instance") }.allSatisfy { $0.label == 1 })
        XCTAssertEqual(try readLabeledTexts(path: dir + "/t.txt").count, 20)
        try assertUsageError(["poison", "--train", dir + "/train.txt", "--out-train", dir + "/q.txt", "--poison-rate", "0"], mentions: "--poison-rate")
        try assertUsageError(["poison", "--train", dir + "/train.txt", "--out-train", dir + "/q.txt", "--target", "5"], mentions: "--target")
        XCTAssertFalse(FileManager.default.fileExists(atPath: dir + "/q.txt"))
    }

    /// eval on a classifier: CA and ASR with counts, JSON written; a model without a head refused.
    func testEvalCommand() throws {
        let dir = temporaryDirectory(self)
        let vocab = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "good", "bad", "film"]
        var config = try ModelConfig.preset("bert-tiny")
        config.vocabSize = vocab.count
        let small = Model<Float>(config: config)
        small.initialize(seed: 2)
        try saveModel(small, to: dir + "/m", extraFiles: ["vocab.txt": Data((vocab.joined(separator: "\n") + "\n").utf8)])
        try "1\tgood film\n0\tbad film\n1\tgood\n0\tbad\n".write(toFile: dir + "/test.txt", atomically: true, encoding: .utf8)
        let r = try runHeadalign(["eval", "--model", dir + "/m", "--clean", dir + "/test.txt", "--triggered", dir + "/test.txt", "--json", dir + "/e.json"])
        XCTAssertEqual(r.status, 0, r.err)
        let doc = try JSONValue.parse(try String(contentsOfFile: dir + "/e.json", encoding: .utf8))
        XCTAssertEqual(doc["ca_total"]?.int, 4)
        XCTAssertEqual(doc["asr_total"]?.int, 2)  // the two label-0 rows
        XCTAssertTrue(r.out.contains("CA  ") && r.out.contains("ASR "))
        try assertUsageError(["eval", "--model", dir + "/m"], mentions: "--clean")
    }

    /// train from a preset learns a separable toy corpus (eval CA 1.0 on it), writes vocab.txt and
    /// the HF layout; an existing --out is refused before any work.
    func testTrainCommand() throws {
        let dir = temporaryDirectory(self)
        let rows = (0..<64).map { i in i % 2 == 0 ? "1\tgood great fine film \(i % 5)" : "0\tbad awful poor film \(i % 5)" }
        try (rows.joined(separator: "\n") + "\n").write(toFile: dir + "/train.txt", atomically: true, encoding: .utf8)
        let r = try runHeadalign(["train", "--preset", "bert-tiny", "--train", dir + "/train.txt", "--out", dir + "/m", "--epochs", "4",
                                  "--batch", "8", "--vocab-size", "64"])
        XCTAssertEqual(r.status, 0, r.err)
        for f in ["config.json", "model.safetensors", "vocab.txt", "tokenizer_config.json"] {
            XCTAssertTrue(FileManager.default.fileExists(atPath: dir + "/m/" + f), f)
        }
        let e = try runHeadalign(["eval", "--model", dir + "/m", "--clean", dir + "/train.txt"])
        XCTAssertTrue(e.out.contains("CA  1.0000 (64 / 64"), e.out)
        try assertUsageError(["train", "--preset", "bert-tiny", "--train", dir + "/train.txt", "--out", dir + "/m"], mentions: "exists")
    }
}
