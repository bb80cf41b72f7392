// Baselines.swift: the defenses the paper compares against, on the same clean data and the same
// fine-tuning step budget as ours.
// - fine-pruning (Liu et al. 2018): prune the feed-forward units least active on clean data in the
//   last layers, while clean accuracy holds, then fine-tune.
// - pure (Zhao et al. 2024): prune the heads whose [CLS]-row attention varies least on clean data,
//   while clean accuracy holds, then fine-tune with an attention-normalisation penalty.
// - reinit: re-initialise the top layers, then fine-tune.
// - meft (Liu et al. 2023, "Maximum Entropy Loss, the Silver Bullet"): fine-tune on the clean
//   inputs with the maximum-entropy loss until the classifier no longer prefers any class, then
//   fine-tune with cross-entropy to bring clean accuracy back (our reading: docs/METHOD.md).
// "Pruned" means exactly zero and frozen: a pruned unit's input row and output column, a pruned
// head's output-projection columns.

import Foundation
import HeadAlign
public struct BaselineSettings: Sendable {
    /// fine-pruning: how many of the last layers are pruned (nil = the last half, at least one).
    public var pruneLayers: Int? = nil
    /// fine-pruning: units pruned per step, as a fraction of the units in the pruned layers.
    public var pruneStepFraction = 0.05
    /// fine-pruning and pure: pruning stops before clean accuracy falls more than this below the
    /// unpruned model's (Liu et al. and PURE stop at an accuracy bound; PURE's is absolute, 0.85).
    public var accuracyMargin = 0.02
    /// pure: heads pruned per step (PURE: 10 on BERT-base's 144).
    public var pureStep = 1
    /// pure: the attention-normalisation penalty's coefficient (PURE: 0.15).
    public var purePenalty = 0.15
    /// reinit: how many top layers are re-initialised.
    public var reinitLayers = 1
    /// meft: the entropy stage ends once the mean predictive entropy of a batch of clean inputs
    /// reaches this share of its maximum, log C. Ours (the paper's text we could read gives no
    /// stopping point): at 0.95 the largest class probability of a 2-class output is at most
    /// about 0.61, of a 4-class one about 0.40 — the model no longer prefers any class, which is
    /// the state the entropy stage is meant to reach; it is then bounded by one fine-tuning budget.
    public var meftEntropyShare = 0.95
    public init() {}
}

// MARK: - Clean quality

/// Clean quality of a model on labelled examples: classification accuracy, or (generation)
/// teacher-forced next-token accuracy on the response tokens.
public func cleanQuality<S: Real>(_ model: Model<S>, _ examples: [TrainingExample], batchSize: Int = 64) -> Double {
    var correct = 0, total = 0
    let task = ModelTask.of(model.config)
    for start in stride(from: 0, to: examples.count, by: batchSize) {
        let chunk = Array(examples[start..<min(examples.count, start + batchSize)])
        let predicted = rowArgmax(model.forward(Batch(chunk.map(\.tokens))).output)
        switch trainingObjective(chunk, task: task) {
        case .classification(let labels):
            for (b, y) in labels.enumerated() { correct += predicted[b] == y ? 1 : 0; total += 1 }
        case .nextToken(let targets):
            for (row, y) in targets.flatMap({ $0 }).enumerated() where y >= 0 { correct += predicted[row] == y ? 1 : 0; total += 1 }
        }
    }
    return total == 0 ? .nan : Double(correct) / Double(total)
}

// MARK: - Fine-pruning (feed-forward units)

/// The parameters feed-forward unit `u` of layer `l` owns: its row of the up (and gate)
/// projection with the bias entry, and its column of the down projection.
public func ffnUnitRanges(layout: ParameterLayout, config c: ModelConfig, layer l: Int, unit u: Int) -> [Range<Int>] {
    let d = c.hiddenSize, f = c.intermediateSize
    let names: (up: [String], upBias: String?, down: String) = c.family == .bert
        ? (["encoder.layer.\(l).intermediate.dense.weight"], "encoder.layer.\(l).intermediate.dense.bias", "encoder.layer.\(l).output.dense.weight")
        : (["model.layers.\(l).mlp.up_proj.weight", "model.layers.\(l).mlp.gate_proj.weight"], nil, "model.layers.\(l).mlp.down_proj.weight")
    var r = names.up.map { n in let o = layout[n]!.offset; return (o + u * d)..<(o + (u + 1) * d) }
    if let b = names.upBias.flatMap({ layout[$0] }) { r.append((b.offset + u)..<(b.offset + u + 1)) }
    let down = layout[names.down]!.offset
    r += (0..<d).map { row in (down + row * f + u)..<(down + row * f + u + 1) }
    return r
}

/// Mean |activation| of every feed-forward unit over the real tokens of `inputs`: `[L][F]`.
/// (Liu et al. rank ReLU units by mean activation; for GELU/SwiGLU the magnitude is the analogue.)
public func ffnUnitActivity<S: Real>(_ model: Model<S>, inputs: [[Int]], batchSize: Int = 64) -> [[Double]] {
    let c = model.config, f = c.intermediateSize
    var sums = [[Double]](repeating: [Double](repeating: 0, count: f), count: c.numHiddenLayers)
    var tokens = 0
    for start in stride(from: 0, to: inputs.count, by: batchSize) {
        let batch = Batch(Array(inputs[start..<min(inputs.count, start + batchSize)]))
        let pass = model.forward(batch)
        for l in 0..<c.numHiddenLayers {
            let act = pass.layers[l].ffnAct  // [N, F]
            for row in 0..<batch.tokenCount { for u in 0..<f { sums[l][u] += abs(Double(act.data[row * f + u])) } }
        }
        tokens += batch.tokenCount
    }
    return sums.map { $0.map { $0 / Double(max(1, tokens)) } }
}

/// Fine-pruning's pruning step: units of the last layers in order of increasing activity, a chunk
/// at a time, until the next chunk would cost more than the margin of clean accuracy. Returns the
/// pruned units (already zeroed in `model`) and the accuracies before and after.
public func finePrune<S: Real>(_ model: Model<S>, clean: [TrainingExample], settings: BaselineSettings)
    -> (units: [(layer: Int, unit: Int)], before: Double, after: Double) {
    let c = model.config, layers = c.numHiddenLayers
    let count = min(layers, max(1, settings.pruneLayers ?? (layers + 1) / 2))
    let activity = ffnUnitActivity(model, inputs: clean.map(\.tokens))
    let ranked = ((layers - count)..<layers).flatMap { l in (0..<c.intermediateSize).map { (layer: l, unit: $0, a: activity[l][$0]) } }
        .sorted { $0.a != $1.a ? $0.a < $1.a : ($0.layer, $0.unit) < ($1.layer, $1.unit) }
    let before = cleanQuality(model, clean)
    let step = max(1, Int((settings.pruneStepFraction * Double(ranked.count)).rounded()))
    var pruned = 0, accuracy = before
    while pruned < ranked.count {
        let chunk = ranked[pruned..<min(ranked.count, pruned + step)]
        let ranges = chunk.flatMap { ffnUnitRanges(layout: model.layout, config: c, layer: $0.layer, unit: $0.unit) }
        let saved = ranges.map { r in r.map { model.params.data[$0] } }
        for r in ranges { for i in r { model.params.data[i] = 0 } }
        let now = cleanQuality(model, clean)
        if now < before - settings.accuracyMargin {  // undo this chunk and stop
            for (r, values) in zip(ranges, saved) { for (i, v) in zip(r, values) { model.params.data[i] = v } }
            break
        }
        pruned += chunk.count
        accuracy = now
    }
    return (ranked[0..<pruned].map { ($0.layer, $0.unit) }, before, accuracy)
}

// MARK: - PURE (attention heads)

/// Per head (`l * NH + h`), the mean over inputs of the population variance of its read row
/// (BERT: the [CLS] row; decoder classifier: the last row) over the real tokens.
public func readRowAttentionVariance<S: Real>(_ model: Model<S>, inputs: [[Int]], batchSize: Int = 64) -> [Double] {
    let c = model.config, nh = c.numAttentionHeads
    var sums = [Double](repeating: 0, count: c.numHiddenLayers * nh)
    for start in stride(from: 0, to: inputs.count, by: batchSize) {
        let batch = Batch(Array(inputs[start..<min(inputs.count, start + batchSize)]))
        let pass = model.forward(batch)
        for b in batch.sequences.indices {
            let t = batch.sequences[b].count, row = c.family == .bert ? 0 : t - 1
            for l in 0..<c.numHiddenLayers {
                for h in 0..<nh {
                    let a = pass.attention(layer: l, sequence: b, head: h).data + row * t
                    var mean = 0.0
                    for k in 0..<t { mean += Double(a[k]) }
                    mean /= Double(t)
                    var v = 0.0
                    for k in 0..<t { let e = Double(a[k]) - mean; v += e * e }
                    sums[l * nh + h] += v / Double(t)
                }
            }
        }
    }
    return sums.map { $0 / Double(max(1, inputs.count)) }
}

/// Zeroes head h's columns of layer l's output projection: the head no longer contributes.
public func pruneHead<S: Real>(_ model: Model<S>, _ id: HeadID) {
    for r in headSlices(layout: model.layout, config: model.config, layer: id.layer, head: id.head).output {
        for i in r { model.params.data[i] = 0 }
    }
}

/// PURE's pruning step: heads in order of increasing read-row variance, `pureStep` at a time,
/// keeping at least one head per layer, until the next step would cost more than the margin of
/// clean accuracy. Returns the pruned heads (already zeroed) and the accuracies.
public func purePrune<S: Real>(_ model: Model<S>, clean: [TrainingExample], settings: BaselineSettings)
    -> (heads: [HeadID], variance: [Double], before: Double, after: Double) {
    let c = model.config, nh = c.numAttentionHeads
    let variance = readRowAttentionVariance(model, inputs: clean.map(\.tokens))
    let order = variance.indices.sorted { variance[$0] != variance[$1] ? variance[$0] < variance[$1] : $0 < $1 }
    let before = cleanQuality(model, clean)
    var pruned: [HeadID] = [], accuracy = before
    var remaining = [Int](repeating: nh, count: c.numHiddenLayers)
    var queue = order.map { HeadID($0 / nh, $0 % nh) }[...]
    while !queue.isEmpty {
        var step: [HeadID] = []
        while step.count < settings.pureStep, let id = queue.popFirst() {
            if remaining[id.layer] > 1 { step.append(id); remaining[id.layer] -= 1 }  // keep one head per layer
        }
        if step.isEmpty { break }
        let ranges = step.flatMap { headSlices(layout: model.layout, config: c, layer: $0.layer, head: $0.head).output }
        let saved = ranges.map { r in r.map { model.params.data[$0] } }
        for id in step { pruneHead(model, id) }
        let now = cleanQuality(model, clean)
        if now < before - settings.accuracyMargin {
            for (r, values) in zip(ranges, saved) { for (i, v) in zip(r, values) { model.params.data[i] = v } }
            break
        }
        pruned += step
        accuracy = now
    }
    return (pruned, variance, before, accuracy)
}

/// PURE's attention normalisation for one forward pass: `lambda * sum_l coef_l * sum_{h kept}
/// sqrt(sum_b sum_k A_b^{l,h}[r, k]^2)` over each sequence's read row r, and its gradient with
/// respect to A (`lambda coef_l A / norm`), ready for `Model.backward`'s dAttention.
/// `coefficients[l]`: the layer's mean read-row variance on clean data (as PURE computes it).
public func attentionNormalizationPenalty<S: Real>(_ pass: ForwardPass<S>, config c: ModelConfig, pruned: Set<HeadID>,
                                                   coefficients: [Double], lambda: Double) -> (penalty: Double, dAttention: [Tensor<S>]) {
    let nh = c.numAttentionHeads, batch = pass.batch
    let dAttention = pass.layers.map { Tensor<S>($0.attention.shape) }
    var penalty = 0.0
    for l in 0..<c.numHiddenLayers {
        for h in 0..<nh where !pruned.contains(HeadID(l, h)) {
            var squares = 0.0
            for b in batch.sequences.indices {
                let t = batch.sequences[b].count, row = c.family == .bert ? 0 : t - 1
                let a = pass.attention(layer: l, sequence: b, head: h).data + row * t
                for k in 0..<t { squares += Double(a[k]) * Double(a[k]) }
            }
            let norm = squares.squareRoot()
            guard norm > 0 else { continue }
            penalty += lambda * coefficients[l] * norm
            let scale = lambda * coefficients[l] / norm
            for b in batch.sequences.indices {
                let t = batch.sequences[b].count, row = c.family == .bert ? 0 : t - 1
                let offset = attentionBlockOffset(batch, b, h, heads: nh) + row * t
                for k in 0..<t { dAttention[l].data[offset + k] = S(scale * Double(pass.layers[l].attention.data[offset + k])) }
            }
        }
    }
    return (penalty, dAttention)
}

// MARK: - Re-initialisation

/// Re-initialises the top `count` layers (and BERT's pooler) as `Model.initialize` would (weights
/// N(0, initializer_range), biases 0, norm weights 1), from `seed`. Returns the ranges touched.
public func reinitializeTopLayers<S: Real>(_ model: Model<S>, count: Int, seed: UInt64) -> [Range<Int>] {
    let c = model.config, first = c.numHiddenLayers - min(count, c.numHiddenLayers)
    let prefixes = (first..<c.numHiddenLayers).map { c.family == .bert ? "encoder.layer.\($0)." : "model.layers.\($0)." }
        + (c.family == .bert ? ["pooler."] : [])
    var rng = SeededGenerator(seed: seed)
    var touched: [Range<Int>] = []
    for p in model.layout.tensors where prefixes.contains(where: { p.name.hasPrefix($0) }) {
        let isNormWeight = p.name.hasSuffix("LayerNorm.weight") || p.name.hasSuffix("norm.weight")
        for i in p.range {
            model.params.data[i] = isNormWeight ? 1 : p.shape.count == 1 ? 0 : S(c.initializerRange * rng.normal())
        }
        touched.append(p.range)
    }
    return touched
}

// MARK: - The methods of the tables

/// A row of the paper's tables: one of the defense's own variants (Defense.swift's
/// `DefenseMethod`: ours and its ablations) or a baseline of this file, which wraps the
/// textbook's optimizer and fine-tuning loop from outside.
public enum ExperimentMethod: String, CaseIterable, Sendable {
    case ours, alignOnly = "align-only", ftOnly = "ft-only", finetune
    case finePruning = "fine-pruning", pure, reinit, meft
    case cleangen  // a decoding rule for decoders (CleanGen.swift), not a change of the weights

    /// The defense variant this row runs, nil for a baseline.
    public var defense: DefenseMethod? { DefenseMethod(rawValue: rawValue) }
    public var isBaseline: Bool { defense == nil }
}

/// What running one method did: the defense's report, or a baseline's summary and fine-tuning losses.
public enum MethodRun: Sendable {
    case defense(DefenseReport)
    case baseline(summary: String, losses: [Double])
}

/// Runs `method` on `model` in place: the defense (Defense.swift) with `settings`, or a baseline
/// with `settings`' fine-tuning budget and rates and its own `baseline` settings.
public func runMethod<S: Real>(_ model: Model<S>, _ method: ExperimentMethod, clean: [TrainingExample], inputs: [AnalysisInput],
                               calibration: [AnalysisInput]? = nil, settings: DefenseSettings, baseline: BaselineSettings,
                               log: (String) -> Void = { _ in }, afterAlignment: (_ round: Int) -> Void = { _ in }) throws -> MethodRun {
    if let defense = method.defense {
        var s = settings
        s.method = defense
        return .defense(try defend(model, clean: clean, inputs: inputs, calibration: calibration, settings: s, log: log,
                                   afterAlignment: afterAlignment))
    }
    let (summary, losses) = try runBaseline(model, method, clean: clean, settings: settings, baseline: baseline)
    log(summary)
    log("  fine-tuning: loss \(fmt(losses.first ?? 0)) -> \(fmt(losses.last ?? 0)) over \(losses.count) steps")
    return .baseline(summary: summary, losses: losses)
}

extension AnyModel {
    public func runMethod(_ method: ExperimentMethod, clean: [TrainingExample], inputs: [AnalysisInput], calibration: [AnalysisInput]? = nil,
                          settings: DefenseSettings, baseline: BaselineSettings, log: (String) -> Void) throws -> MethodRun {
        switch self {
        case .f32(let m):
            return try HeadAlignLab.runMethod(m, method, clean: clean, inputs: inputs, calibration: calibration, settings: settings, baseline: baseline, log: log)
        case .f64(let m):
            return try HeadAlignLab.runMethod(m, method, clean: clean, inputs: inputs, calibration: calibration, settings: settings, baseline: baseline, log: log)
        }
    }
}

// MARK: - Running a baseline

/// Runs a baseline defense on `model` in place: its pruning or re-initialisation, then
/// fine-tuning on `clean` under the defense's budget (pruned parameters frozen at zero).
/// Returns a one-line summary and the fine-tuning losses.
func runBaseline<S: Real>(_ model: Model<S>, _ method: ExperimentMethod, clean: [TrainingExample], settings: DefenseSettings,
                          baseline b: BaselineSettings) throws -> (summary: String, losses: [Double]) {
    let c = model.config
    guard !clean.isEmpty else { throw HeadAlignError.usage("\(method.rawValue) needs clean labelled examples") }
    var rates = [Double](repeating: settings.uniformRate, count: model.layout.total)
    var summary: String
    var penalty: ((ForwardPass<S>) -> (Double, [Tensor<S>?]))? = nil
    switch method {
    case .finePruning:
        let r = finePrune(model, clean: clean, settings: b)
        for u in r.units { for range in ffnUnitRanges(layout: model.layout, config: c, layer: u.layer, unit: u.unit) { for i in range { rates[i] = 0 } } }
        let layers = min(c.numHiddenLayers, max(1, b.pruneLayers ?? (c.numHiddenLayers + 1) / 2))
        summary = "fine-pruning: pruned \(r.units.count) of \(layers * c.intermediateSize) feed-forward units in the last \(layers) layer(s); clean accuracy \(fmt(r.before)) -> \(fmt(r.after))"
    case .pure:
        guard ModelTask.of(c) == .classification else { throw HeadAlignError.usage("--method pure is defined for classifiers (it reads the [CLS] row)") }
        let r = purePrune(model, clean: clean, settings: b)
        let set = Set(r.heads)
        for id in r.heads {
            let s = headSlices(layout: model.layout, config: c, layer: id.layer, head: id.head)
            for range in s.query + s.output { for i in range { rates[i] = 0 } }
            let shape = c.attentionShape
            if shape.queryHeads(of: shape.kvHead(of: id.head)).allSatisfy({ set.contains(HeadID(id.layer, $0)) }) {
                for range in s.key + s.value { for i in range { rates[i] = 0 } }
            }
        }
        // PURE's per-layer coefficient: the pruned model's mean read-row variance over its kept heads
        let variance = readRowAttentionVariance(model, inputs: clean.map(\.tokens)), nh = c.numAttentionHeads
        let coefficients = (0..<c.numHiddenLayers).map { l -> Double in
            let kept = (0..<nh).filter { !set.contains(HeadID(l, $0)) }
            return kept.map { variance[l * nh + $0] }.reduce(0, +) / Double(max(1, kept.count))
        }
        penalty = { pass in
            let p = attentionNormalizationPenalty(pass, config: c, pruned: set, coefficients: coefficients, lambda: b.purePenalty)
            return (p.penalty, p.dAttention)
        }
        summary = "pure: pruned \(r.heads.count) of \(c.numHiddenLayers * nh) heads [\(r.heads.map(\.description).joined(separator: " "))]; clean accuracy \(fmt(r.before)) -> \(fmt(r.after)); attention normalisation \(b.purePenalty)"
    case .reinit:
        let ranges = reinitializeTopLayers(model, count: b.reinitLayers, seed: settings.seed &+ 0x5EED)
        for range in ranges { for i in range { rates[i] = settings.rates.safe } }  // fresh weights learn at eta_high
        summary = "reinit: re-initialised the top \(min(b.reinitLayers, c.numHiddenLayers)) layer(s)\(c.family == .bert ? " and the pooler" : ""), fine-tuned at \(settings.rates.safe) (the rest at \(settings.uniformRate))"
    case .meft:
        guard ModelTask.of(c) == .classification else { throw HeadAlignError.usage("--method meft is defined for classifiers (its loss is the entropy of the class distribution)") }
        // the entropy stage sees only the inputs the cross-entropy stage trains on, not the held-out ones
        let inputs = settings.finetuneBudget.map { heldOutSplit(clean, holdout: $0.holdout, seed: settings.heldOutSeed).train } ?? clean
        let entropy = try maximumEntropyStage(model, clean: inputs, settings: settings, share: b.meftEntropyShare)
        summary = "meft: maximum-entropy stage \(entropy.steps) steps (mean entropy \(String(format: "%.3f -> %.3f of log C = %.3f", entropy.before, entropy.after, Foundation.log(Double(c.numLabels)))))"
            + (entropy.reached ? "" : ", stopped by the budget before \(b.meftEntropyShare) log C") + ", then cross-entropy at \(settings.uniformRate)"
    case .cleangen:
        throw HeadAlignError.usage("cleangen changes decoding, not the weights: it runs in `experiment` on a decoder with --reference DIR")
    case .ours, .alignOnly, .ftOnly, .finetune:
        preconditionFailure("runBaseline: \(method) is not a baseline")
    }
    // the same fine-tuning budget as the defense: held-out split and kept step, or the fixed steps
    let optimizer = headwiseOptimizer(model, rates: rates, weightDecay: settings.weightDecay, warmup: settings.finetuneWarmup)
    if let budget = settings.finetuneBudget {
        let (train, heldOut) = heldOutSplit(clean, holdout: budget.holdout, seed: settings.heldOutSeed)
        let outcome = try finetuneWithHeldOut(model, train: train, heldOut: heldOut, budget: budget, batchSize: settings.batchSize,
                                              seed: settings.finetuneSeed(round: 1), optimizer: optimizer, attentionPenalty: penalty)
        return (summary + "; fine-tuned \(outcome.losses.count) steps, kept step \(outcome.chosenStep)", outcome.losses)
    }
    let losses = try trainSteps(model, examples: clean, steps: settings.finetuneSteps, batchSize: settings.batchSize,
                                seed: settings.finetuneSeed(round: 1), optimizer: optimizer, attentionPenalty: penalty)
    return (summary, losses)
}

// MARK: - MEFT (maximum-entropy fine-tuning)

/// The maximum-entropy loss of a classifier's logits `[B, C]`: minus the mean over the batch of the
/// entropy H(p_b) = -sum_j p_bj log p_bj of p_b = softmax(z_b), so that lowering it raises the
/// entropy; and its gradient dL/dz_bj = p_bj (log p_bj + H(p_b)) / B. Returns the mean entropy too.
public func maximumEntropyLoss<S: Real>(_ logits: Tensor<S>) -> (loss: Double, meanEntropy: Double, dLogits: Tensor<S>) {
    let b = logits.shape[0], c = logits.shape[1]
    let d = Tensor<S>(logits.shape)
    var total = 0.0
    var p = [Double](repeating: 0, count: c)
    for i in 0..<b {
        let row = logits.data + i * c
        var mx = -Double.infinity
        for j in 0..<c { mx = max(mx, Double(row[j])) }
        var sum = 0.0
        for j in 0..<c { p[j] = Foundation.exp(Double(row[j]) - mx); sum += p[j] }
        var h = 0.0
        for j in 0..<c { p[j] /= sum; if p[j] > 0 { h -= p[j] * Foundation.log(p[j]) } }
        total += h
        for j in 0..<c { d.data[i * c + j] = S(p[j] > 0 ? p[j] * (Foundation.log(p[j]) + h) / Double(b) : 0) }
    }
    return (-total / Double(b), total / Double(b), d)
}

/// MEFT's first stage on `model` in place: AdamW steps at `settings.uniformRate` on shuffled batches
/// of the clean inputs (their labels unused) lowering `maximumEntropyLoss`, until a batch's mean
/// entropy reaches `share * log C`, at most the fine-tuning budget's step count. Returns the steps
/// taken, the mean entropy over `clean` before and after, and whether the share was reached.
public func maximumEntropyStage<S: Real>(_ model: Model<S>, clean: [TrainingExample], settings: DefenseSettings,
                              share: Double) throws -> (steps: Int, before: Double, after: Double, reached: Bool) {
    let c = model.config.numLabels, goal = share * Foundation.log(Double(c))
    func meanEntropy() -> Double {
        var total = 0.0
        for start in stride(from: 0, to: clean.count, by: 64) {
            let chunk = clean[start..<min(clean.count, start + 64)]
            total += maximumEntropyLoss(model.forward(Batch(chunk.map(\.tokens))).output).meanEntropy * Double(chunk.count)
        }
        return total / Double(max(1, clean.count))
    }
    let before = meanEntropy()
    let maxSteps = settings.finetuneBudget?.steps(trainCount: clean.count, batchSize: settings.batchSize) ?? settings.finetuneSteps
    let optimizer = AdamW<S>(count: model.layout.total, learningRate: settings.uniformRate, weightDecay: settings.weightDecay)
    var batches = ShuffledBatches(count: clean.count, batchSize: settings.batchSize, seed: settings.finetuneSeed(round: 0))
    var steps = 0, reached = false
    while steps < maxSteps {
        let picked = batches.next().map { clean[$0].tokens }
        let pass = model.forward(Batch(picked))
        let e = maximumEntropyLoss(pass.output)
        if e.meanEntropy >= goal { reached = true; break }  // this batch already has no preferred class
        guard e.loss.isFinite else { throw HeadAlignError.numeric("meft: entropy loss is \(e.loss) at step \(steps + 1); stopped") }
        let grads = model.makeGradients()
        model.backward(pass, dOutput: e.dLogits, into: grads)
        optimizer.update(model.params, grads)
        steps += 1
    }
    return (steps, before, meanEntropy(), reached)
}
