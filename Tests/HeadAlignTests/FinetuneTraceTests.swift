// FinetuneTraceTests.swift: the fine-tuning trace reproduces `ours` exactly (its last point is
// ours' CA/ASR, its first align-only's); trainSteps' stopAfter; the fine-tuning guard's flags.

import XCTest
import HeadAlign
import HeadAlignLab

final class FinetuneTraceTests: XCTestCase {
    /// A random bert-tiny (f64) with 24 labelled sequences the model itself labelled, a split
    /// whose triggered set is the same sequences labelled 0 (target 1).
    func setup() -> (Model<Double>, ExperimentSplit, DefenseSettings) {
        let (m, clean) = selfLabelledBertTiny()
        let seqs = clean.map(\.tokens)
        let triggered = seqs.map { TrainingExample(tokens: $0, label: 0) }
        let split = ExperimentSplit(defenderClean: clean, cleanTest: clean, triggeredTest: triggered,
                                    monitorClean: seqs.prefix(12).map { AnalysisInput(tokens: $0) },
                                    monitorTriggered: seqs.suffix(12).map { AnalysisInput(tokens: $0) }, target: 1)
        var s = DefenseSettings(task: .classification, family: .bert)
        s.quantile = 0  // flag (almost) everything: the defense must reach its fine-tuning
        s.alpha = 0.2  // a random model's heads are all alike: leave Eq. 5 a safe class
        s.classRule = .tau  // and the paper's fixed bounds, so that both classes exist
        s.finetuneBudget = nil  // a fixed 12 steps (the held-out budget has its own test below)
        s.alignSteps = 5
        s.finetuneSteps = 12
        s.batchSize = 4
        s.rates.other = 1e-3
        s.rates.safe = 1e-3
        return (m, split, s)
    }

    func testTraceReproducesOursAndAlignOnly() throws {
        let (m, split, s) = setup()
        let before = m.params.array
        let outcomes = try runMethods(m, split, methods: [.ours, .alignOnly], settings: s)
        let (points, why) = try traceHeadwiseFinetune(m, clean: split.defenderClean, inputs: split.monitorClean + split.monitorTriggered,
                                                      settings: s, every: 5, evaluate: { caAndASR($0, split) })
        XCTAssertNil(why)
        XCTAssertEqual(m.params.array, before, "the trace works on a copy")
        XCTAssertEqual(points.map(\.step), [0, 5, 10, 12])
        let ours = outcomes.first { $0.method == "ours" }!, alignOnly = outcomes.first { $0.method == "align-only" }!
        XCTAssertTrue(ours.ran && alignOnly.ran)
        XCTAssertEqual(points.first!.ca, alignOnly.ca)
        XCTAssertEqual(points.first!.asr, alignOnly.asr)
        XCTAssertEqual(points.last!.ca, ours.ca)
        XCTAssertEqual(points.last!.asr, ours.asr)
        let m0 = points.first!.moved
        XCTAssertEqual([m0.suspicious, m0.safe, m0.intermediate, m0.other], [0, 0, 0, 0])
        // the heads and the rest move once fine-tuning starts; the table has a row per point
        XCTAssertGreaterThan(points.last!.moved.other, 0)
        XCTAssertEqual(traceTable(points).split(separator: "\n").count, 2 + points.count)
    }

    /// The round's self-check counts the flagged inputs whose predicted label is still the
    /// backdoored model's, computed here from the two models' labels; the trace's last point (which
    /// is `ours`) shows the same share.
    func testFlaggedAsBeforeCountsTheBackdooredAnswersKept() throws {
        let (m, selfLabelled, s0) = setup()
        var s = s0
        (s.rates.safe, s.rates.other) = (5e-2, 5e-2)
        // the defender's labels the opposite of the model's own, so that fine-tuning moves its answers
        var split = selfLabelled
        split.defenderClean = selfLabelled.defenderClean.map { TrainingExample(tokens: $0.tokens, label: 1 - $0.label!) }
        let inputs = split.monitorClean + split.monitorTriggered
        let repaired = m.copy()
        let report = try defend(repaired, clean: split.defenderClean, inputs: inputs, settings: s)
        let flagged = report.flagged.map { inputs[$0] }
        XCTAssertFalse(flagged.isEmpty)
        func labels(_ model: Model<Double>) -> [Int] { flagged.map { behaviour(model, [$0], generate: 0)[0][0] } }
        let kept = zip(labels(m), labels(repaired)).filter { $0 == $1 }.count
        XCTAssertEqual(report.rounds.first?.flaggedAsBefore, kept)
        XCTAssertLessThan(kept, flagged.count, "the defense changed some answers (else the check is vacuous)")
        let (points, _) = try traceHeadwiseFinetune(m, clean: split.defenderClean, inputs: inputs, settings: s, every: 5,
                                                    evaluate: { caAndASR($0, split) })
        XCTAssertEqual(points.last!.flaggedAgreement, Double(kept) / Double(flagged.count))
    }

    /// `align-only`'s row from `ours`' aligned model (runMethods, one round) is that of its own run,
    /// in whichever order they are asked for. The "CA" here is a fingerprint of every parameter, so
    /// equal rows mean bit-identical models, and it differs from `ours`' (the fine-tuned model).
    func testAlignOnlyRowFromOursEqualsItsOwnRun() throws {
        let (m, split, s) = setup()
        let inputs = split.monitorClean + split.monitorTriggered
        func fingerprint(_ model: Model<Double>) -> (ca: Double, asr: Double) {
            (model.params.array.enumerated().reduce(0.0) { $0 + Double($1.offset % 97 + 1) * $1.element }, 0)
        }
        func rows(_ methods: [ExperimentMethod]) throws -> [String: Double] {
            let out = try runMethods(m, defenderClean: split.defenderClean, inputs: inputs, methods: methods, settings: s, vanilla: false,
                                     evaluate: fingerprint)
            XCTAssertEqual(out.map(\.method), methods.map(\.rawValue), "rows in the asked order")
            return Dictionary(uniqueKeysWithValues: out.map { ($0.method, $0.ca) })
        }
        let alone = try rows([.alignOnly]), ours = try rows([.ours]), shared = try rows([.alignOnly, .ours]), sharedToo = try rows([.ours, .alignOnly])
        XCTAssertEqual(shared["align-only"], alone["align-only"])
        XCTAssertEqual(sharedToo["align-only"], alone["align-only"])
        XCTAssertEqual(shared["ours"], ours["ours"])
        XCTAssertNotEqual(shared["align-only"], shared["ours"], "the aligned model, not the fine-tuned one")
        XCTAssertNotEqual(alone["align-only"], fingerprint(m).ca, "the alignment moved the model")
    }

    /// Under the held-out budget the trace runs the whole budget; its point at the step `defend`
    /// kept is `ours`.
    func testTraceUnderTheBudgetPassesThroughOurs() throws {
        let (m, split, fixed) = setup()
        var s = fixed, budget = FinetuneBudget()
        budget.every = 1; budget.passes = 2; budget.patience = 100; budget.rule = .lowest
        s.finetuneBudget = budget
        let model = m.copy()
        let report = try defend(model, clean: split.defenderClean, inputs: split.monitorClean + split.monitorTriggered, settings: s)
        let kept = report.rounds[0].finetuneKeptStep
        let ours = caAndASR(model, split)
        let (points, why) = try traceHeadwiseFinetune(m, clean: split.defenderClean, inputs: split.monitorClean + split.monitorTriggered,
                                                      settings: s, every: 1, evaluate: { caAndASR($0, split) })
        XCTAssertNil(why)
        XCTAssertEqual(points.last!.step, 10)  // 2 passes over the 19 not held out (of 24), batches of 4
        let point = points.first { $0.step == kept }!
        XCTAssertEqual(point.ca, ours.ca)
        XCTAssertEqual(point.asr, ours.asr)
        // the kept step has the lowest held-out loss of the trace
        XCTAssertEqual(point.heldOutLoss, points.map(\.heldOutLoss).min()!)
    }

    func testTrainStepsStopsWhereAsked() throws {
        let (m, split, _) = setup()
        let opt = AdamW<Double>(count: m.layout.total, learningRate: 1e-3, weightDecay: 0)
        var seen: [Int] = []
        let losses = try trainSteps(m, examples: split.defenderClean, steps: 10, batchSize: 4, seed: 1, optimizer: opt,
                                    onStep: { seen.append($0.step) }, stopAfter: { $0.step == 3 })
        XCTAssertEqual(losses.count, 3)
        XCTAssertEqual(seen, [1, 2, 3])
    }

    /// With the guard at tolerance 0 checked every step, the fine-tuning stops at the first step
    /// that brings the backdoored behaviour back on any flagged input, and that step is undone:
    /// the flagged inputs' predictions then agree with the backdoored model no more than after
    /// the alignment alone.
    func testGuardNeverEndsAboveTheAlignmentsAgreement() throws {
        let (m, split, base) = setup()
        let inputs = split.monitorClean + split.monitorTriggered
        var s = base
        s.method = .alignOnly
        let aligned = m.copy()
        let report = try defend(aligned, clean: split.defenderClean, inputs: inputs, settings: s)
        XCTAssertFalse(report.flagged.isEmpty)
        let flagged = report.flagged.map { inputs[$0] }
        func predictions(_ model: Model<Double>) -> [Int] { rowArgmax(model.forward(Batch(flagged.map(\.tokens))).output) }
        let vanilla = predictions(m)
        func agreement(_ model: Model<Double>) -> Int { zip(predictions(model), vanilla).filter { $0 == $1 }.count }
        s.method = .ours
        s.rates.safe = 5e-2  // rates high enough to move predictions
        s.rates.other = 5e-2
        var g = FinetuneGuard()
        (g.tolerance, g.every) = (0, 1)
        s.finetuneGuard = g
        let guarded = m.copy(), unguarded = m.copy()
        var log: [String] = []
        let guardedReport = try defend(guarded, clean: split.defenderClean, inputs: inputs, settings: s, log: { log.append($0) })
        XCTAssertTrue(log.contains { $0.contains("guard: the alignment changed") })
        // the kept step is the one the guard restored (its previous check), or the last step
        let round = guardedReport.rounds[0], stopped = log.contains { $0.contains("restored step") }
        XCTAssertEqual(round.finetuneKeptStep, round.finetuneLoss.count - (stopped ? 1 : 0))
        XCTAssertLessThanOrEqual(agreement(guarded), agreement(aligned))
        s.finetuneGuard = nil
        _ = try defend(unguarded, clean: split.defenderClean, inputs: inputs, settings: s)
        if log.contains(where: { $0.contains("restored step") }) {
            XCTAssertNotEqual(guarded.params.array, unguarded.params.array, "the guard stopped, so the runs differ")
        }
    }
}
