// TokenizerTests.swift: WordPiece by hand and against Hugging Face's tokenizer on the real
// vocabulary; llama2.c BPE encoding and decoding; whole-word vocabularies.

import XCTest
import Foundation
import HeadAlign
import HeadAlignLab

final class TokenizerTests: XCTestCase {
    let toyVocab = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "the", "un", "##aff", "##able", "cafe", ",", "!", "runn", "##ing", "中"]

    /// "unaffable" -> un ##aff ##able (the BERT paper's example); accents stripped after
    /// lower-casing; punctuation split off; a word with no cover becomes [UNK]; CJK characters split.
    func testWordPieceByHand() throws {
        let t = try WordPieceTokenizer(vocab: toyVocab)
        XCTAssertEqual(t.basicTokens("The  Café,running!中文"), ["the", "cafe", ",", "running", "!", "中", "文"])
        XCTAssertEqual(t.encode("unaffable").ids, [2, 5, 6, 7, 3])
        XCTAssertEqual(t.encode("The Café, running!").ids, [2, 4, 8, 9, 11, 12, 10, 3])
        XCTAssertEqual(t.encode("unknownword 中").ids, [2, 1, 13, 3])
        let (ids, truncated) = t.encode("the the the the the", maxLength: 4)
        XCTAssertEqual(ids, [2, 4, 4, 3])
        XCTAssertTrue(truncated)
        let cased = try WordPieceTokenizer(vocab: toyVocab + ["Café"], lowercase: false)
        XCTAssertEqual(cased.basicTokens("Café"), ["Café"])
        XCTAssertThrowsError(try WordPieceTokenizer(vocab: ["a"])) { XCTAssertTrue("\($0)".contains("[UNK]")) }
    }

    /// Ids for 14 sentences (accents, punctuation, CJK, emoji, scripts, control whitespace, an
    /// over-long word, the empty string) equal those of Hugging Face's BertTokenizer.
    func testWordPieceMatchesTransformersOnMiniLMVocabulary() throws {
        let tokenizer = try WordPieceTokenizer(directory: try sharedData("all-MiniLM-L6-v2"))
        let cases = try fixture("minilm_tokens.json")["cases"]!.array
        XCTAssertEqual(cases.count, 14)
        for c in cases {
            XCTAssertEqual(tokenizer.encode(c["text"]!.stringValue).ids, c["ids"]!.array.map(\.int), c["text"]!.stringValue)
        }
    }

    func testLlama2cTokenizer() throws {
        let tok = try Llama2cTokenizer(path: try sharedData("llama2c-stories260K/tok512.bin"), vocabSize: 512)
        XCTAssertEqual(tok.pieces[1], Array("\n<s>\n".utf8))
        XCTAssertEqual(tok.pieces[3], Array("<0x00>".utf8))
        // the pieces the reference continuation starts with
        XCTAssertEqual(tok.encode("Once upon a time"), [1, 403, 407, 261, 378])
        XCTAssertEqual(tok.decode([403, 407, 261, 378], after: 1), "Once upon a time")  // space dropped after BOS
        // a character outside the vocabulary falls back to its UTF-8 bytes, <0xHH> = 3 + byte
        let ids = tok.encode("\u{1F600}", bos: false)  // 😀 = F0 9F 98 80
        XCTAssertEqual(ids, [410, 3 + 0xF0, 3 + 0x9F, 3 + 0x98, 3 + 0x80])  // 410 = " "
        XCTAssertEqual(tok.decode(ids, after: 0), " \u{1F600}")
        XCTAssertThrowsError(try Llama2cTokenizer(path: try sharedData("llama2c-stories260K/tok512.bin"), vocabSize: 600)) {
            XCTAssertTrue("\($0)".contains("tok512.bin"))
        }
    }

    /// The merge loop with cached pair ids gives llama2.c's tokens: compared with the plain loop
    /// (rescan every pair after each merge), written here from the pieces and scores, on long
    /// texts of words, punctuation and characters outside the vocabulary.
    func testLlama2cMergesEqualThePlainLoop() throws {
        let tok = try Llama2cTokenizer(path: try sharedData("llama2c-stories260K/tok512.bin"), vocabSize: 512)
        var index: [[UInt8]: Int] = [:]
        for (i, p) in tok.pieces.enumerated() where index[p] == nil { index[p] = i }
        func plain(_ text: String) -> [Int] {
            var t: [Int] = [1, index[[0x20]]!]
            var rest = Array(text.utf8)[...]
            while let b = rest.first {  // one UTF-8 character, or its bytes as <0xHH>
                let n = b < 0x80 ? 1 : b >= 0xF0 ? 4 : b >= 0xE0 ? 3 : 2
                let ch = Array(rest.prefix(n))
                if let id = index[ch] { t.append(id) } else { t += ch.map { Int($0) + 3 } }
                rest = rest.dropFirst(n)
            }
            while true {
                var best = -Float.infinity, at = -1, id = -1
                for k in 0..<max(0, t.count - 1) {
                    if let m = index[tok.pieces[t[k]] + tok.pieces[t[k + 1]]], tok.scores[m] > best { best = tok.scores[m]; at = k; id = m }
                }
                if at < 0 { return t }
                t[at] = id
                t.remove(at: at + 1)
            }
        }
        var rng = SeededGenerator(seed: 9)
        let words = ["Once", "upon", "a", "time", "there", "was", "little", "girl", "named", "Lily", "BadMagic", "2024", "OpenAI",
                     "photosynthesis", "café", "naïve", "日本", "😀", "\n", ",", ".", "!", "  ", "Discussing", "year:", "I'm"]
        for _ in 0..<20 {
            let text = (0..<Int.random(in: 20...120, using: &rng)).map { _ in words.randomElement(using: &rng)! }.joined(separator: " ")
            XCTAssertEqual(tok.encode(text), plain(text), text)
        }
    }

    func testWordVocabulary() throws {
        let v = try buildWordVocabulary(["A good film.", "a bad film!", "good good"], size: 8)
        XCTAssertEqual(v, ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", "good", "a", "film"])  // by count, then alphabetical
        let t = try WordPieceTokenizer(vocab: v)
        XCTAssertEqual(t.encode("Good film, bad").ids, [2, 5, 7, 1, 1, 3])
    }
}
