// FinetuneTrace.swift: what happens during the head-wise fine-tuning stage of `ours` (issue 15's
// "find out why"). It reruns `ours` exactly — the defense with alignment only, then the same
// head-wise AdamW steps `defend` takes (same classes, rates, batches and seed) — and every `every`
// steps records CA and ASR (the evaluator's, on data the defender does not see), the Eq. 7
// alignment loss of the suspicious heads on the inputs the defense analysed, and how far each
// parameter group has moved from the aligned model, and what the defender can see without labels:
// the share of the flagged inputs on which the model still does what the backdoored model did.

import HeadAlign

/// One point of the trace (step 0 = the aligned model, before any fine-tuning).
public struct TracePoint: Sendable {
    public let step: Int
    public let trainLoss: Double  // the step's batch loss (NaN at step 0)
    public let ca: Double, asr: Double
    public let alignLoss: Double  // Eq. 7, mean over the analysed inputs
    public let heldOutLoss: Double  // the budget's held-out loss (NaN without a budget)
    public let heldOutSE: Double  // its standard error over the held-out examples (the band of `--ft-keep`)
    /// The share of the flagged inputs on which the model's behaviour (a classifier's label, a
    /// decoder's first T_g greedy tokens) equals the backdoored model's (NaN when none was flagged).
    /// The defender sees it; when the flagged inputs are mostly triggered it follows ASR.
    public let flaggedAgreement: Double
    /// L2 distance from the aligned model's parameters, per group: suspicious, safe, intermediate
    /// heads' slices, and everything no head owns.
    public let moved: (suspicious: Double, safe: Double, intermediate: Double, other: Double)
}

/// The trace of `ours` on a copy of `backdoored` (left unchanged). `settings.rounds` must be 1.
/// Returns nil, with the reason, when the defense does not reach the fine-tuning stage.
public func traceHeadwiseFinetune<S: Real>(_ backdoored: Model<S>, clean: [TrainingExample], inputs: [AnalysisInput],
                                           calibration: [AnalysisInput]? = nil, settings: DefenseSettings, every: Int,
                                           evaluate: (Model<S>) -> (ca: Double, asr: Double)) throws -> (points: [TracePoint], why: String?) {
    precondition(settings.rounds == 1 && every >= 1, "traceHeadwiseFinetune: one round, every >= 1")
    let model = backdoored.copy(), c = model.config, nh = c.numAttentionHeads
    var s = settings
    s.method = .alignOnly
    let report: DefenseReport
    do { report = try defend(model, clean: clean, inputs: inputs, calibration: calibration, settings: s) } catch HeadAlignError.usage(let why) { return ([], why) }
    guard let round = report.rounds.first else { return ([], report.stoppedBecause) }
    // the classes of that round, as `defend` gave them to the fine-tuning of `ours`
    let suspicious = Set(round.suspicious), safe = Set(round.safe)
    let classes = (0..<(c.numHiddenLayers * nh)).map { i -> HeadClass in
        let id = HeadID(i / nh, i % nh)
        return suspicious.contains(id) ? .suspicious : safe.contains(id) ? .safe : .intermediate
    }
    var group = HeadwiseRates()  // rates used as labels: 1 suspicious, 2 safe, 3 intermediate, 4 other
    (group.suspicious, group.safe, group.intermediate, group.other) = (1, 2, 3, 4)
    let groupOf = headwiseLearningRates(layout: model.layout, config: c, classes: classes, rates: group).map { Int($0) }
    let aligned = model.params.array
    // the inputs Eq. 5-7 ran on: the flagged ones (the clean prompts when none was flagged)
    let flaggedInputs = report.flagged.map { inputs[$0] }
    let analysed = flaggedInputs.isEmpty
        ? clean.map { AnalysisInput(tokens: Array($0.tokens.prefix($0.responseStart ?? $0.tokens.count))) }
        : flaggedInputs
    let before = behaviour(backdoored, flaggedInputs, generate: settings.generate)
    let susIdx = round.suspicious.map { $0.layer * nh + $0.head }, safeIdx = round.safe.map { $0.layer * nh + $0.head }
    // the fine-tuning of `defend`'s round 1 for `ours`: the same split, batches and rates, run to
    // the end of its budget (no patience) so that the whole curve shows
    let (train, heldOut) = settings.finetuneBudget.map { heldOutSplit(clean, holdout: $0.holdout, seed: settings.heldOutSeed) } ?? (clean, [])
    let steps = settings.finetuneBudget?.steps(trainCount: train.count, batchSize: settings.batchSize) ?? settings.finetuneSteps
    func point(_ step: Int, _ loss: Double) throws -> TracePoint {
        let (ca, asr) = evaluate(model)
        let views = try analyze(model, analysed, settings: s.analysis(s.defenseView, importance: false)).map(\.views)
        let align = views.map { alignmentLoss($0, suspicious: susIdx, safe: safeIdx) }.reduce(0, +) / Double(max(1, views.count))
        var sq = [0.0, 0.0, 0.0, 0.0, 0.0]
        for i in 0..<aligned.count {
            let d = Double(model.params.data[i]) - Double(aligned[i])
            sq[groupOf[i]] += d * d
        }
        let held = heldOut.isEmpty ? (mean: Double.nan, standardError: Double.nan) : HeadAlign.heldOutLoss(model, heldOut)
        return TracePoint(step: step, trainLoss: loss, ca: ca, asr: asr, alignLoss: align,
                          heldOutLoss: held.mean, heldOutSE: held.standardError,
                          flaggedAgreement: flaggedInputs.isEmpty ? .nan
                              : Double(behavioursKept(model, flaggedInputs, before: before, generate: settings.generate)) / Double(flaggedInputs.count),
                          moved: (sq[1].squareRoot(), sq[2].squareRoot(), sq[3].squareRoot(), sq[4].squareRoot()))
    }
    var points = [try point(0, .nan)]
    var headRates = settings.rates  // the safe heads' rate as `defend` picks it after the alignment
    headRates.safe = settings.safeRate(afterAlignment: flaggedInputs.isEmpty ? nil : points[0].flaggedAgreement)
    let rates = headwiseLearningRates(layout: model.layout, config: c, classes: classes, rates: headRates)
    let optimizer = headwiseOptimizer(model, rates: rates, weightDecay: settings.weightDecay, warmup: settings.finetuneWarmup)
    // the alignment penalty on the sequences `defend` aligned (analysed on the backdoored model, as
    // `defend`'s round 1 analysed them: a decoder's generated tokens come from that model)
    let penalty = settings.alignPenalty > 0
        ? alignmentPenalty(model, sequences: try analyze(backdoored, analysed, settings: s.analysis(s.defenseView, importance: false))
                               .map { (tokens: $0.tokens, promptLength: $0.promptLength) },
                           suspicious: round.suspicious, safe: round.safe, settings: settings, round: 1)
        : nil
    var failure: Error? = nil
    _ = try trainSteps(model, examples: train, steps: steps, batchSize: settings.batchSize,
                       seed: settings.finetuneSeed(round: 1), optimizer: optimizer, extraObjective: penalty, onStep: { stats in
        guard failure == nil, stats.step % every == 0 || stats.step == steps else { return }
        do { points.append(try point(stats.step, stats.loss)) } catch { failure = error }
    })
    if let failure { throw failure }
    return (points, nil)
}

/// The trace as a markdown table.
public func traceTable(_ points: [TracePoint]) -> String {
    var out = "| step | batch loss | held-out loss | ± se | CA (%) | ASR (%) | flagged as before (%) | Eq. 7 loss | moved: suspicious | safe | intermediate | other |\n"
    out += "|---|---|---|---|---|---|---|---|---|---|---|---|\n"
    for p in points {
        let loss = p.trainLoss.isNaN ? "" : fmt(p.trainLoss)
        let held = p.heldOutLoss.isNaN ? "" : fmt(p.heldOutLoss), se = p.heldOutSE.isNaN ? "" : fmt(p.heldOutSE)
        out += "| \(p.step) | \(loss) | \(held) | \(se) | \(String(format: "%.1f", 100 * p.ca)) | \(String(format: "%.1f", 100 * p.asr)) | \(p.flaggedAgreement.isNaN ? "" : String(format: "%.1f", 100 * p.flaggedAgreement)) | \(fmt(p.alignLoss)) | "
            + [p.moved.suspicious, p.moved.safe, p.moved.intermediate, p.moved.other].map { String(format: "%.4g", $0) }.joined(separator: " | ") + " |\n"
    }
    return out
}
