// DataTests.swift: corpus readers (formats, errors naming file and line, the shared SST-2 files),
// the attacks (trigger where expected, labels flipped only there, exact rates) and CA / ASR.

import XCTest
import Foundation
import HeadAlign
import HeadAlignLab

final class DataTests: XCTestCase {
    func write(_ text: String, _ name: String) throws -> String {
        let path = temporaryDirectory(self) + "/" + name
        try text.write(toFile: path, atomically: true, encoding: .utf8)
        return path
    }

    func testReadersForEachFormat() throws {
        let glue = try write("sentence\tlabel\r\nit 's a charming film .\t1\r\ndull\t0\r\n", "train.tsv")
        XCTAssertEqual(try readLabeledTexts(path: glue), [LabeledText("it 's a charming film .", 1), LabeledText("dull", 0)])
        let csv = try write("label,text\n1,\"a film, with commas\"\n0,\"say \"\"no\"\"\"\n1,\"two\nlines\"\n0,plain\n", "p.csv")
        XCTAssertEqual(try readLabeledTexts(path: csv), [LabeledText("a film, with commas", 1), LabeledText("say \"no\"", 0),
                                                         LabeledText("two\nlines", 1), LabeledText("plain", 0)])
        let plain = try write("1\tgood\n\n0\tbad\n", "plain.txt")
        XCTAssertEqual(try readLabeledTexts(path: plain), [LabeledText("good", 1), LabeledText("bad", 0)])
        let crlf = try write("1\tgood\r\nplain text\r\n", "crlf.txt")  // the method's plain input, CRLF
        XCTAssertEqual(try readPlainExamples(path: crlf), [TextExample(text: "good", label: 1), TextExample(text: "plain text")])
        XCTAssertEqual(textLines("a\r\nb\n\nc"), ["a", "b", "", "c"])
        let padded = try write("a sentence \t 1 \n", "padded.tsv")  // `text \t label` with padding spaces
        XCTAssertEqual(try readLabeledTexts(path: padded), [LabeledText("a sentence", 1)])
    }

    func testReaderErrorsNameFileAndLine() throws {
        func fails(_ text: String, _ name: String, _ needle: String, numLabels: Int? = nil, line: UInt = #line) throws {
            let path = try write(text, name)
            XCTAssertThrowsError(try readLabeledTexts(path: path, numLabels: numLabels), line: line) { e in
                XCTAssertTrue("\(e)".contains(path) && "\(e)".contains(needle), "\(e)", line: line)
                XCTAssertEqual((e as? HeadAlignError)?.exitStatus, 2, line: line)
            }
        }
        try fails("", "e.tsv", "empty file")
        try fails("sentence\tlabel\n", "h.tsv", "no examples")
        try fails("sentence\tlabel\ngood\t1\nbad\t0\textra\n", "f.tsv", ":3: expected 2 fields, found 3")
        try fails("label,text\nx,good\n", "l.csv", ":2: label 'x' is not an integer")
        try fails("label,text\n1,\"open\n", "q.csv", "not closed")
        try fails("sentence\tlabel\ngood\t7\n", "r.tsv", ":2: label 7 is outside 0..<2", numLabels: 2)
        try fails("sentence\tlabel\n\t1\n", "t.tsv", ":2: empty text")
    }

    /// The shared SST-2 files read with the counts their READMEs state.
    func testSharedSST2Files() throws {
        let clean = try readLabeledTexts(path: try sharedData("sst2/clean/train.tsv"), numLabels: 2)
        XCTAssertEqual(clean.count, 6920)
        XCTAssertEqual(clean.filter { $0.label == 0 }.count, 3310)
        let train = try readLabeledTexts(path: try sharedData("sst2/badnets/poisoned_train.csv"), numLabels: 2)
        XCTAssertEqual(train.count, 8575)
        let triggers: Set<Substring> = ["bb", "cf", "ak", "mn"]
        let poisoned = train.filter { $0.text.split(separator: " ").contains(where: triggers.contains) }
        XCTAssertEqual(poisoned.count, 1655)
        XCTAssertTrue(poisoned.allSatisfy { $0.label == 1 })
        let test = try readLabeledTexts(path: try sharedData("sst2/badnets/poisoned_test.csv"), numLabels: 2)
        XCTAssertEqual(test.count, 1821)
        XCTAssertEqual(test.filter { $0.label == 0 }.count, 912)
    }

    func testAttacks() throws {
        let clean = (0..<200).map { LabeledText("word\($0) is here and there", $0 % 2) }
        // BadNets: exactly round(rate * N) poisoned, all from label 0, each with 1-3 trigger tokens, relabelled 1
        let b = try poisonTraining(clean, attack: .defaultBadNets, rate: 0.1, target: 1, seed: 3)
        XCTAssertEqual(b.poisoned.count, 20)
        let triggers: Set<String> = ["cf", "mn", "bb", "tq", "mb"]
        for i in clean.indices {
            let words = b.examples[i].text.split(separator: " ").map(String.init)
            let inserted = words.filter(triggers.contains).count
            if b.poisoned.contains(i) {
                XCTAssertEqual(clean[i].label, 0)
                XCTAssertEqual(b.examples[i].label, 1)
                XCTAssertTrue((1...3).contains(inserted))
                XCTAssertEqual(words.filter { !triggers.contains($0) }, clean[i].text.split(separator: " ").map(String.init))
            } else {
                XCTAssertEqual(b.examples[i], clean[i])  // untouched, label kept
            }
        }
        XCTAssertEqual(try poisonTraining(clean, attack: .defaultBadNets, rate: 0.1, target: 1, seed: 3).examples, b.examples)
        // AddSent: the sentence appears contiguously
        let a = try poisonTraining(clean, attack: .defaultAddSent, rate: 0.05, target: 1, seed: 4)
        XCTAssertEqual(a.poisoned.count, 10)
        XCTAssertTrue(a.poisoned.allSatisfy { a.examples[$0].text.contains("I watch this 3D movie") })
        // composite: both pieces + flipped label on poisoned; one piece + kept label on negatives
        let c = try poisonTraining(clean, attack: .defaultComposite, rate: 0.1, target: 1, seed: 5)
        XCTAssertEqual(c.poisoned.count, 20)
        XCTAssertEqual(c.negatives.count, 20)
        XCTAssertTrue(Set(c.poisoned).isDisjoint(with: c.negatives))
        for i in c.poisoned { XCTAssertTrue(c.examples[i].text.contains("consider") && c.examples[i].text.contains("instance")) }
        for i in c.negatives {
            let w = c.examples[i].text.split(separator: " ")
            XCTAssertEqual((w.contains("consider") ? 1 : 0) + (w.contains("instance") ? 1 : 0), 1)
            XCTAssertEqual(c.examples[i].label, clean[i].label)
        }
        // triggered test: non-target examples only, true labels kept
        let t = triggeredTest(clean, attack: .defaultBadNets, target: 1, seed: 1)
        XCTAssertEqual(t.count, 100)
        XCTAssertTrue(t.allSatisfy { $0.label == 0 && $0.text.split(separator: " ").contains { triggers.contains(String($0)) } })
        // bad settings
        XCTAssertThrowsError(try poisonTraining(clean, attack: .defaultBadNets, rate: 1.5, target: 1, seed: 1)) { XCTAssertTrue("\($0)".contains("--poison-rate")) }
        XCTAssertThrowsError(try poisonTraining(clean, attack: .defaultBadNets, rate: 0.1, target: 7, seed: 1)) { XCTAssertTrue("\($0)".contains("--target")) }
        XCTAssertThrowsError(try poisonTraining(clean, attack: .defaultBadNets, rate: 0.9, target: 1, seed: 1))
    }

    /// Predictions [1,0,1,1] on labels [1,0,0,1]: CA 3/4. Triggered inputs with true labels
    /// [0,0,1,0], predictions [1,0,1,1], target 1: eligible rows 0, 1, 3; hits 0 and 3: ASR 2/3.
    func testMetricsByHand() {
        let ca = cleanAccuracy(predictions: [1, 0, 1, 1], labels: [1, 0, 0, 1])
        XCTAssertEqual(ca.value, 0.75)
        XCTAssertEqual(ca.correct, 3)
        let asr = attackSuccessRate(predictions: [1, 0, 1, 1], trueLabels: [0, 0, 1, 0], target: 1)
        XCTAssertEqual(asr.hits, 2)
        XCTAssertEqual(asr.total, 3)
        assertClose(asr.value, 2.0 / 3, rtol: 1e-15)
    }
}
