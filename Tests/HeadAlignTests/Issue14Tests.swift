// Issue14Tests.swift: regressions of issue 14 (bad model directories, unbounded labels, the BPE
// tokenizer's cost, outputs that overwrite inputs, flags that silently do nothing, stale
// temporaries, lost stdout lines, the progress line, the empty command line).

import XCTest
import Foundation
import HeadAlign
import HeadAlignLab

/// The built binary's URL (skips when it was not built).
func headalignBinary() throws -> URL {
    let binary = Bundle.main.bundleURL.appendingPathComponent("headalign")
    guard FileManager.default.isExecutableFile(atPath: binary.path) else { throw XCTSkip("headalign binary not found at \(binary.path)") }
    return binary
}

final class Issue14CLITests: XCTestCase {
    /// `headalign` alone is a usage error: the overview on stderr, status 2.
    func testNoArgumentsIsUsageError() throws {
        let r = try runHeadalign([])
        XCTAssertEqual(r.status, 2)
        XCTAssertEqual(r.out, "")
        XCTAssertTrue(r.err.contains("usage: headalign <command>"), r.err)
        XCTAssertEqual(try runHeadalign(["--help"]).status, 0)
    }

    /// stdout is line-buffered: a line printed before a kill is in the redirected file.
    func testStdoutLinesSurviveAKill() throws {
        let dir = temporaryDirectory(self)
        let outPath = dir + "/stdout.txt"
        _ = FileManager.default.createFile(atPath: outPath, contents: nil)
        let p = Process()
        p.executableURL = try headalignBinary()
        p.arguments = ["train", "--preset", "bert-tiny", "--corpus", "sentiment", "--epochs", "10000", "--out", dir + "/m"]
        p.standardOutput = try FileHandle(forWritingTo: URL(fileURLWithPath: outPath))
        p.standardError = FileHandle.nullDevice
        try p.run()
        // wait (bounded) until training is under way: the settings line precedes the first step
        var text = ""
        for _ in 0..<600 where p.isRunning {
            text = (try? String(contentsOfFile: outPath, encoding: .utf8)) ?? ""
            if text.contains("epochs 10000") { break }
            usleep(100_000)
        }
        kill(p.processIdentifier, SIGKILL)
        p.waitUntilExit()
        text = (try? String(contentsOfFile: outPath, encoding: .utf8)) ?? ""
        XCTAssertTrue(text.contains("headalign train: 2000 examples"), "stdout file: '\(text)'")
        XCTAssertTrue(text.contains("epochs 10000"), "stdout file: '\(text)'")
    }
}

final class Issue14DataTests: XCTestCase {
    /// Labels are bounded: at most 1000 classes for a new head, the model's classes for an old one;
    /// errors name the file and the line.
    func testLabelsAreBounded() throws {
        let dir = temporaryDirectory(self)
        try "0\tgood film\n999999999\tbad film\n".write(toFile: dir + "/huge.txt", atomically: true, encoding: .utf8)
        XCTAssertThrowsError(try readLabeledTexts(path: dir + "/huge.txt")) { e in
            XCTAssertTrue("\(e)".contains("huge.txt:2") && "\(e)".contains("1000"), "\(e)")
        }
        try "label,text\n0,good\n100000,bad\n".write(toFile: dir + "/big.csv", atomically: true, encoding: .utf8)
        XCTAssertThrowsError(try readLabeledTexts(path: dir + "/big.csv")) { e in XCTAssertTrue("\(e)".contains("big.csv:3"), "\(e)") }
        try "0\tgood\n7\tbad\n".write(toFile: dir + "/seven.txt", atomically: true, encoding: .utf8)
        XCTAssertEqual(try readLabeledTexts(path: dir + "/seven.txt").count, 2)  // a new head: 8 classes is allowed
        XCTAssertThrowsError(try readLabeledTexts(path: dir + "/seven.txt", numLabels: 2)) { e in
            XCTAssertTrue("\(e)".contains("seven.txt:2") && "\(e)".contains("outside 0..<2"), "\(e)")
        }
        XCTAssertThrowsError(try readPlainExamples(path: dir + "/huge.txt")) { e in XCTAssertTrue("\(e)".contains("huge.txt:2"), "\(e)") }
        // the command: one line, status 2, no model written (before: a 32 GB allocation)
        try assertUsageError(["train", "--preset", "bert-tiny", "--train", dir + "/huge.txt", "--out", dir + "/m"], mentions: "huge.txt:2")
        XCTAssertFalse(FileManager.default.fileExists(atPath: dir + "/m"))
        try assertUsageError(["poison", "--train", dir + "/seven.txt", "--out-train", dir + "/p.txt", "--target", "5000"], mentions: "0...999")
        try assertUsageError(["experiment", "--preset", "bert-tiny", "--train", dir + "/huge.txt", "--clean-test", dir + "/seven.txt",
                              "--defense-clean", dir + "/seven.txt", "--seeds", "1"], mentions: "huge.txt:2")
        // a model with a head: its classes bound every file's labels (before: a label 7 reached the loss)
        try makeTinyModel(dir + "/two")
        try assertUsageError(["experiment", "--backdoored", dir + "/two", "--clean-test", dir + "/seven.txt",
                              "--defense-clean", dir + "/seven.txt", "--seeds", "1"], mentions: "seven.txt:2: label 7 is outside 0..<2")
    }

    /// A config value that is not a whole number, or overflows, names its key.
    func testConfigNumbersNameTheKey() throws {
        let dir = temporaryDirectory(self)
        let encoder = JSONEncoder()
        encoder.outputFormatting = [.sortedKeys]
        let good = String(decoding: try encoder.encode(try ModelConfig.preset("bert-tiny")), as: UTF8.self)
        for (key, bad) in [("num_hidden_layers", "2.5"), ("num_hidden_layers", "1e999"), ("hidden_size", "123456789012345678901234567890"),
                           ("vocab_size", "\"many\""), ("layer_norm_eps", "1e999")] {
            let re = try NSRegularExpression(pattern: "\"\(key)\":[^,}]+")
            let text = re.stringByReplacingMatches(in: good, range: NSRange(good.startIndex..., in: good), withTemplate: "\"\(key)\":\(bad)")
            XCTAssertNotEqual(text, good)
            try text.write(toFile: dir + "/config.json", atomically: true, encoding: .utf8)
            XCTAssertThrowsError(try ModelConfig.load(contentsOf: URL(fileURLWithPath: dir + "/config.json"))) { e in
                XCTAssertTrue("\(e)".contains("'\(key)'"), "\(key) = \(bad): \(e)")
            }
        }
        try good.write(toFile: dir + "/config.json", atomically: true, encoding: .utf8)
        XCTAssertEqual(try ModelConfig.load(contentsOf: URL(fileURLWithPath: dir + "/config.json")), try ModelConfig.preset("bert-tiny"))
        // dimensions that do not divide name their keys
        var odd = try ModelConfig.preset("bert-tiny")
        odd.hiddenSize = 66
        try String(decoding: try encoder.encode(odd), as: UTF8.self).write(toFile: dir + "/config.json", atomically: true, encoding: .utf8)
        XCTAssertThrowsError(try ModelConfig.load(contentsOf: URL(fileURLWithPath: dir + "/config.json"))) { e in
            XCTAssertTrue("\(e)".contains("hidden_size") && "\(e)".contains("num_attention_heads"), "\(e)")
        }
    }
}

/// A bert-tiny classifier directory with `vocab` as vocab.txt and `vocabSize` rows of embedding;
/// `poison` sets one weight before saving.
func makeTinyModel(_ dir: String, vocab: [String] = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "good", "bad", "film"],
                   vocabSize: Int = 7, poison: Double? = nil) throws {
    var config = try ModelConfig.preset("bert-tiny")
    config.vocabSize = vocabSize
    let m = Model<Float>(config: config)
    m.initialize(seed: 2)
    if let poison { m.params.data[m.layout["encoder.layer.1.attention.self.query.weight"]!.offset + 5] = Float(poison) }
    try saveModel(m, to: dir, extraFiles: ["vocab.txt": Data((vocab.joined(separator: "\n") + "\n").utf8)])
}

final class Issue14ModelDirectoryTests: XCTestCase {
    func makeModel(_ dir: String, vocab: [String], vocabSize: Int, poison: Double? = nil) throws {
        try makeTinyModel(dir, vocab: vocab, vocabSize: vocabSize, poison: poison)
    }

    let vocab = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "good", "bad", "film"]

    /// More vocab.txt entries than vocab_size, a repeated entry, a NaN or infinite weight: one line,
    /// status 2, from every command that loads the directory (before: a trap in embeddingForward).
    func testModelDirectoryIsValidatedWhenLoaded() throws {
        let dir = temporaryDirectory(self)
        try makeModel(dir + "/long", vocab: vocab + ["extra", "words"], vocabSize: vocab.count)
        for command in [["forward", "--text", "extra words"], ["classify", "--text", "extra words"]] {
            try assertUsageError(command + ["--model", dir + "/long"], mentions: "vocab_size")
        }
        try "1\textra film\n0\twords film\n".write(toFile: dir + "/train.txt", atomically: true, encoding: .utf8)
        try assertUsageError(["train", "--model", dir + "/long", "--train", dir + "/train.txt", "--out", dir + "/out"], mentions: "vocab_size")
        XCTAssertFalse(FileManager.default.fileExists(atPath: dir + "/out"))

        try makeModel(dir + "/dup", vocab: vocab + ["good"], vocabSize: 16)
        try assertUsageError(["forward", "--model", dir + "/dup", "--text", "good film"], mentions: "vocab.txt:8")

        // fewer entries than vocab_size: padded embeddings are fine
        try makeModel(dir + "/short", vocab: vocab, vocabSize: 16)
        let ok = try runHeadalign(["forward", "--model", dir + "/short", "--text", "good film"])
        XCTAssertEqual(ok.status, 0, ok.err)

        for (name, bad) in [("nan", Double.nan), ("inf", Double.infinity)] {
            try makeModel(dir + "/" + name, vocab: vocab, vocabSize: vocab.count, poison: bad)
            try assertUsageError(["forward", "--model", dir + "/" + name, "--text", "good film"], mentions: "encoder.layer.1.attention.self.query.weight")
            XCTAssertThrowsError(try AnyModel.load(.directory(dir + "/" + name), precision: .f64, backend: .naive)) { e in
                XCTAssertTrue("\(e)".contains("element 5"), "\(e)")
            }
        }
    }
}

final class Issue14TokenizerTests: XCTestCase {
    /// A 10 MB line is cut to a context's worth of bytes before the BPE merge (before: the merge
    /// was quadratic in the line, > 150 s for 1 MB); the cut is reported and lands on a character.
    func testLlama2cLongLineIsBounded() throws {
        let tok = try Llama2cTokenizer(path: try sharedData("llama2c-stories260K/tok512.bin"), vocabSize: 512, contextLength: 512)
        var rng = SeededGenerator(seed: 14)
        let alphabet = Array("abcdefghijklmnopqrstuvwxyz ,.!?ABCDEFG0123456789".unicodeScalars) + ["é", "中", "\u{1F600}"]
        var view = String.UnicodeScalarView()
        var bytes = 0
        while bytes < 10_000_000 {
            let u = alphabet[Int(rng.next() % UInt64(alphabet.count))]
            view.append(u)
            bytes += String(u).utf8.count
        }
        let text = String(view)
        let (ids, cut) = tok.encodeBounded(text)
        XCTAssertEqual(tok.maxTextBytes, 512 * Llama2cTokenizer.maxBytesPerToken + 1024)
        XCTAssertGreaterThanOrEqual(cut, bytes - tok.maxTextBytes)
        XCTAssertLessThanOrEqual(cut, bytes - tok.maxTextBytes + 3)  // moved past at most a character's continuation bytes
        XCTAssertLessThanOrEqual(ids.count, tok.maxTextBytes + 2)  // BOS, the leading space, at most a token a byte
        XCTAssertGreaterThan(ids.count, 2)
        // the kept part is the text's end, tokenized as itself
        let kept = String(decoding: Array(text.utf8).suffix(bytes - cut), as: UTF8.self)
        XCTAssertEqual(ids, tok.encode(kept))
        let start = tok.encodeBounded(text, bos: false, keepEnd: false)
        XCTAssertEqual(start.cutBytes, cut > 0 ? start.cutBytes : 0)
        XCTAssertLessThanOrEqual(bytes - start.cutBytes, tok.maxTextBytes)
        // through AnyTokenizer: truncated to the context, and the cut reported
        let r = try AnyTokenizer.llama2c(tok).encodeReporting(text, maxLength: 512)
        XCTAssertEqual(r.ids.count, 512)
        XCTAssertTrue(r.truncated)
        XCTAssertEqual(r.cutBytes, cut)
    }
}

final class Issue14OutputTests: XCTestCase {
    /// An output that is an input (the same path, `./x` for `x`, a symlink to it) is refused in one
    /// line with status 2 and the input is left as it was (before: overwritten with exit 0).
    func testOutputThatIsAnInputIsRefused() throws {
        let dir = temporaryDirectory(self)
        let cwd = FileManager.default.currentDirectoryPath
        let model = dir + "/m"
        try makeTinyModel(model)
        let train = dir + "/train.txt"
        let original = (0..<40).map { "\($0 % 2)\tgood film number \($0)" }.joined(separator: "\n") + "\n"
        try original.write(toFile: train, atomically: true, encoding: .utf8)
        try FileManager.default.createSymbolicLink(atPath: dir + "/link.txt", withDestinationPath: train)
        let json = dir + "/doc.json"
        try "{}".write(toFile: json, atomically: true, encoding: .utf8)
        _ = FileManager.default.changeCurrentDirectoryPath(dir)
        defer { _ = FileManager.default.changeCurrentDirectoryPath(cwd) }
        let cases: [([String], String)] = [
            (["poison", "--train", train, "--out-train", train], "--out-train"),
            (["poison", "--train", "train.txt", "--out-train", "./train.txt"], "--out-train"),
            (["poison", "--train", train, "--out-train", dir + "/link.txt"], "--out-train"),
            (["poison", "--train", train, "--out-train", dir + "/p.txt", "--test", train, "--out-test", dir + "/p.txt"], "--out-test"),
            (["inspect", "--model", model, "--inputs", train, "--out", train], "--out"),
            (["inspect", "--model", model, "--inputs", train, "--out", model + "/config.json"], "--out"),
            (["eval", "--model", model, "--clean", train, "--json", "link.txt"], "--json"),
            (["defend", "--model", model, "--clean", train, "--inputs", train, "--no-write", "--report", train], "--report"),
            (["plot", "heads", "--from", json, "--out", json], "--out"),
        ]
        for (args, flag) in cases {
            try assertUsageError(args, mentions: flag)
            XCTAssertEqual(try String(contentsOfFile: train, encoding: .utf8), original, "\(args)")
            XCTAssertEqual(try String(contentsOfFile: json, encoding: .utf8), "{}", "\(args)")
        }
        XCTAssertFalse(FileManager.default.fileExists(atPath: dir + "/p.txt"))
    }

    /// --out is checked before any work: a missing parent, an existing directory (before: train and
    /// defend found out after training or defending).
    func testOutIsCheckedBeforeWork() throws {
        let dir = temporaryDirectory(self)
        try makeTinyModel(dir + "/m")
        try "1\tgood film\n0\tbad film\n".write(toFile: dir + "/clean.txt", atomically: true, encoding: .utf8)
        try assertUsageError(["train", "--preset", "bert-tiny", "--corpus", "sentiment", "--out", dir + "/no/such/m"], mentions: "does not exist")
        try assertUsageError(["defend", "--model", dir + "/m", "--clean", dir + "/clean.txt", "--inputs", dir + "/clean.txt",
                              "--out", dir + "/no/such/m"], mentions: "does not exist")
        try assertUsageError(["defend", "--model", dir + "/m", "--clean", dir + "/clean.txt", "--inputs", dir + "/clean.txt",
                              "--out", dir], mentions: "exists")
        try assertUsageError(["make-model", "--preset", "bert-tiny", "--out", dir + "/no/m"], mentions: "does not exist")
        try assertUsageError(["corpus", "--corpus", "sentiment", "--out", dir], mentions: "is a directory")
    }
}

final class Issue14FlagTests: XCTestCase {
    /// Finite values whose products overflow are refused like nan (before: inf and -nan printed, exit 0).
    func testAttentionOverflowIsRefused() throws {
        try assertUsageError(["attention", "--q", "1e308 1e308", "--k", "1e308 1e308"], mentions: "overflows")
        try assertUsageError(["attention", "--q", "1e200; -1e200", "--k", "1e200; 1e200", "--causal"], mentions: "--q, --k")
        try assertUsageError(["attention", "--q", "nan", "--k", "1"], mentions: "--q")
        let ok = try runHeadalign(["attention", "--q", "1e150 0; 0 1", "--k", "1e150 0; 0 1", "--v", "1e300 1; 1e300 1"])
        XCTAssertEqual(ok.status, 0, ok.err)
        XCTAssertFalse(ok.out.contains("nan") || ok.out.contains("inf"), ok.out)
    }

    /// train's attack settings without --attack are refused (before: a clean model, exit 0);
    /// experiment --seeds with an empty item is refused (before: the item was skipped).
    func testFlagsThatWouldDoNothingAreRefused() throws {
        let dir = temporaryDirectory(self)
        for extra in [["--poison-rate", "1.5"], ["--target", "5"], ["--poison-seed", "3"], ["--triggers", "cf"]] {
            try assertUsageError(["train", "--preset", "bert-tiny", "--corpus", "sentiment", "--out", dir + "/m"] + extra, mentions: extra[0])
            try assertUsageError(["train", "--preset", "llama-tiny", "--corpus", "instructions", "--out", dir + "/m"] + extra, mentions: "--attack")
        }
        XCTAssertFalse(FileManager.default.fileExists(atPath: dir + "/m"))
        for seeds in ["1,,2", ",1", "1,", "1, ,2", "1,1"] {
            try assertUsageError(["experiment", "--preset", "bert-tiny", "--corpus", "sentiment", "--seeds", seeds], mentions: "--seeds")
        }
    }
}

final class Issue14TemporaryTests: XCTestCase {
    /// A write removes the `NAME.tmp-PID` temporaries that killed runs left beside its output, and
    /// only those: a live process's temporary and unrelated names stay.
    func testStaleTemporariesAreRemoved() throws {
        let dir = temporaryDirectory(self)
        let fm = FileManager.default
        let p = Process()
        p.executableURL = URL(fileURLWithPath: "/bin/true")
        try p.run()
        p.waitUntilExit()
        let dead = p.processIdentifier, live = getpid()
        try fm.createDirectory(atPath: dir + "/old.tmp-\(dead)", withIntermediateDirectories: false)
        try "x".write(toFile: dir + "/old.tmp-\(dead)/config.json", atomically: false, encoding: .utf8)
        try "x".write(toFile: dir + "/.p.txt.tmp-\(dead)", atomically: false, encoding: .utf8)
        try "x".write(toFile: dir + "/.p.txt.tmp-\(live)", atomically: false, encoding: .utf8)
        try "x".write(toFile: dir + "/notes.tmp-draft", atomically: false, encoding: .utf8)
        try (0..<20).map { "\($0 % 2)\tsentence \($0)" }.joined(separator: "\n").write(toFile: dir + "/train.txt", atomically: true, encoding: .utf8)
        let r = try runHeadalign(["poison", "--train", dir + "/train.txt", "--out-train", dir + "/p.txt"])
        XCTAssertEqual(r.status, 0, r.err)
        XCTAssertFalse(fm.fileExists(atPath: dir + "/old.tmp-\(dead)"))
        XCTAssertFalse(fm.fileExists(atPath: dir + "/.p.txt.tmp-\(dead)"))
        XCTAssertTrue(fm.fileExists(atPath: dir + "/.p.txt.tmp-\(live)"))
        XCTAssertTrue(fm.fileExists(atPath: dir + "/notes.tmp-draft"))
        // the directory writers too
        try fm.createDirectory(atPath: dir + "/m.tmp-\(dead)", withIntermediateDirectories: false)
        let m = try runHeadalign(["make-model", "--preset", "bert-tiny", "--out", dir + "/m"])
        XCTAssertEqual(m.status, 0, m.err)
        XCTAssertFalse(fm.fileExists(atPath: dir + "/m.tmp-\(dead)"))
        XCTAssertTrue(fm.fileExists(atPath: dir + "/m/config.json"))
    }
}

final class Issue14ProgressTests: XCTestCase {
    /// The progress line fits the terminal's width, shortening fields in a fixed order (before:
    /// always ~110 columns, wrapping and scrolling on a narrow terminal).
    func testProgressLineFitsTheWidth() {
        let p = TrainProgress(step: 120, steps: 375, loss: 0.4321, accuracy: 0.875, tokensPerSecond: 12345, elapsed: 12.5)
        let full = progressLine(label: "headalign train:", p, width: 400)
        for field in ["headalign train:", "[", "step 120/375", "loss 0.4321", "acc 0.875", "12345 tok/s", "12.5 s", "ETA"] {
            XCTAssertTrue(full.contains(field), full)
        }
        var previous = full
        for width in stride(from: 120, through: 2, by: -1) {
            let line = progressLine(label: "headalign train:", p, width: width)
            XCTAssertLessThanOrEqual(line.count, width - 1, "\(width): \(line)")
            XCTAssertFalse(line.isEmpty)
            XCTAssertLessThanOrEqual(line.count, previous.count, "\(width)")
            previous = line
        }
        // the order: tokens per second go first, the step count stays longest
        let mid = progressLine(label: "headalign train:", p, width: full.count - 2)
        XCTAssertFalse(mid.contains("tok/s"), mid)
        XCTAssertTrue(mid.contains("ETA"), mid)
        XCTAssertEqual(progressLine(label: "headalign train:", p, width: 20), "step 120/375")
        // a log line: no bar, every field
        let log = progressLine(label: "x", p, width: nil)
        XCTAssertTrue(log.hasPrefix("x step 120/375  loss 0.4321  acc 0.875"), log)
        XCTAssertFalse(log.contains("["))
    }

    /// When stderr is not a terminal, one line per tenth of the run.
    func testProgressIsOneLinePerTenthOffTerminal() throws {
        let dir = temporaryDirectory(self)
        let r = try runHeadalign(["train", "--preset", "bert-tiny", "--corpus", "sentiment", "--corpus-size", "10", "--epochs", "40",
                                  "--vocab-size", "50", "--out", dir + "/m"])
        XCTAssertEqual(r.status, 0, r.err)
        let lines = r.err.split(separator: "\n").filter { $0.hasPrefix("headalign train: step") }
        XCTAssertFalse(r.err.contains("\r"))
        XCTAssertGreaterThanOrEqual(lines.count, 10, r.err)
        XCTAssertLessThanOrEqual(lines.count, 11, r.err)
    }
}

final class Issue14PropertyTests: XCTestCase {
    /// Generated bad values (NaN, ±Inf, overflowing, huge, negative, empty), a repeated flag and an
    /// unknown flag, through several commands' parsers: status 2, exactly one stderr line, nothing
    /// on stdout, no file written.
    func testParsersRejectGeneratedBadValues() throws {
        let dir = temporaryDirectory(self)
        let fm = FileManager.default
        try (0..<20).map { "\($0 % 2)\tsentence \($0)" }.joined(separator: "\n").write(toFile: dir + "/train.txt", atomically: true, encoding: .utf8)
        let before = try fm.contentsOfDirectory(atPath: dir).sorted()
        let numbers = ["nan", "NaN", "inf", "-inf", "+Infinity", "1e999", "-1e999", "", " "]
        let huge = ["99999999999999999999999", "1e300"]
        let negative = ["-1", "-0.5"]
        // (command prefix, flag, the flag's bad values)
        let cases: [([String], String, [String])] = [
            (["gradcheck", "--preset", "bert-tiny"], "--samples", numbers + huge + negative),
            (["inspect", "--preset", "bert-tiny", "--ids", "1 2 3", "--out", dir + "/i.json"], "--alpha", numbers + huge + negative),
            (["inspect", "--preset", "bert-tiny", "--ids", "1 2 3", "--out", dir + "/i.json"], "--tau", numbers + huge + negative),
            (["inspect", "--preset", "bert-tiny", "--ids", "1 2 3", "--out", dir + "/i.json"], "--threshold", numbers + huge + negative),
            (["poison", "--train", dir + "/train.txt", "--out-train", dir + "/p.txt"], "--poison-rate", numbers + huge + negative),
            (["poison", "--train", dir + "/train.txt", "--out-train", dir + "/p.txt"], "--target", numbers + huge + negative),
            (["poison", "--train", dir + "/train.txt", "--out-train", dir + "/p.txt"], "--seed", numbers + ["99999999999999999999999"] + negative),
            (["train", "--preset", "bert-tiny", "--corpus", "sentiment", "--out", dir + "/m"], "--epochs", numbers + huge + negative),
            (["train", "--preset", "bert-tiny", "--corpus", "sentiment", "--out", dir + "/m"], "--lr", numbers + huge + negative),
            (["train", "--preset", "bert-tiny", "--corpus", "sentiment", "--out", dir + "/m"], "--batch", numbers + huge + negative),
            (["corpus", "--corpus", "sentiment", "--out", dir + "/c.txt"], "--first", numbers + huge + negative),
            (["attention", "--k", "1 1"], "--q", numbers + ["1e308 1e308", "1 1 1"]),
            (["experiment", "--preset", "bert-tiny", "--corpus", "sentiment"], "--seeds", numbers + huge + negative + [",", "1,,2"]),
        ]
        var runs = 0
        for (prefix, flag, values) in cases {
            for v in values {
                try assertUsageError(prefix + [flag, v], mentions: flag)
                runs += 1
            }
            // a repeated flag and an unknown one
            try assertUsageError(prefix + [flag, "1", flag, "1"], mentions: flag)
            try assertUsageError(prefix + ["--no-such-flag", "1"], mentions: "--no-such-flag")
            try assertUsageError(prefix + [flag], mentions: flag)  // a value missing
            runs += 3
        }
        XCTAssertGreaterThan(runs, 150)
        XCTAssertEqual(try fm.contentsOfDirectory(atPath: dir).sorted(), before, "a rejected command wrote a file")
    }
}
