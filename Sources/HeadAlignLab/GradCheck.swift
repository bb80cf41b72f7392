// GradCheck.swift: central finite differences against the hand-written backward, for every
// parameter tensor, for the head outputs H (Eq. 4 reads dL/dH), for head gates, and for the path
// that Eq. 7 uses (an extra gradient injected at the attention probabilities A).

/// One checked quantity.
import HeadAlign
public struct GradCheckRow: Sendable {
    public let section: String  // "loss", "loss+<C,A>", "dL/dH", "dL/dgate"
    public let name: String
    public let checked: Int
    public let maxRelativeError: Double
    public let maxAbsGradient: Double
}

public struct GradCheckReport: Sendable {
    public let preset: String
    public let precision: Precision
    public let backend: String
    public let step: Double
    public let tolerance: Double
    public let floor: Double
    public let rows: [GradCheckRow]
    public var maxRelativeError: Double { rows.map(\.maxRelativeError).max() ?? 0 }
    public var passed: Bool { maxRelativeError <= tolerance }
}

/// Relative error with a floor on the denominator: `|a - n| / max(|a|, |n|, floor)`, so that
/// entries whose true gradient is ~0 (unused embedding rows, the key bias) are compared
/// absolutely instead of dividing rounding noise by nothing.
@inline(__always)
public func relativeError(_ a: Double, _ n: Double, floor: Double) -> Double {
    abs(a - n) / max(abs(a), abs(n), floor)
}

/// Settings by precision: step, tolerance, denominator floor.
public func gradCheckSettings(_ p: Precision) -> (step: Double, tolerance: Double, floor: Double) {
    switch p {
    case .f64: return (1e-5, 1e-6, 1e-3)
    case .f32: return (1e-2, 5e-2, 1e-2)
    }
}

/// Moves every parameter to a generic point for checking: matrices N(0, 1/fan_in), norm weights
/// 1 + N(0, 0.01), other vectors N(0, 0.01). At the Hugging Face initialisation (std 0.02) the
/// attention is nearly uniform and GELU nearly linear, which would hide mistakes.
public func jitterForGradCheck<S: Real>(_ model: Model<S>, seed: UInt64) {
    var rng = SeededGenerator(seed: seed ^ 0x6A09_E667_F3BC_C908)
    for p in model.layout.tensors {
        let isNormWeight = p.name.hasSuffix("LayerNorm.weight") || p.name.hasSuffix("norm.weight")
        let std = p.shape.count == 2 ? 1 / Double(p.shape[1]).squareRoot() : 0.1
        for i in p.range {
            model.params.data[i] = S((isNormWeight ? 1 : 0) + std * rng.normal())
        }
    }
}

/// A small mixed batch for a configuration: two sequences of different lengths, the second
/// right-padded (mask) and, for BERT, with token types; and a loss for it.
public func gradCheckBatch(_ config: ModelConfig, seed: UInt64) -> (Batch, Objective) {
    var rng = SeededGenerator(seed: seed)
    func ids(_ n: Int) -> [Int] { (0..<n).map { _ in rng.int(below: config.vocabSize) } }
    let first = TokenSequence(ids(6))
    let secondTokens = ids(5)
    let second = TokenSequence(secondTokens, mask: [true, true, true, true, false],
                               tokenTypes: config.family == .bert ? [0, 0, 1, 1, 0] : nil)
    let batch = Batch([first, second])
    if config.numLabels > 0 {
        return (batch, .classification(labels: [0, config.numLabels - 1]))
    }
    if config.family == .llama { return (batch, .languageModeling(batch)) }
    // BERT without a head outputs hidden states [N, D]; any smooth scalar of them checks the
    // backward, so treat each row as logits over its D units with target unit t mod D.
    return (batch, .nextToken(targets: batch.sequences.map { s in (0..<s.count).map { $0 % config.hiddenSize } }))
}

/// Checks the model's backward at its current parameters on `batch`. `samples` entries per
/// large tensor (half where the analytic gradient is non-zero, half anywhere), every entry of
/// tensors with at most `samples` entries.
public func gradCheck<S: Real>(_ model: Model<S>, batch: Batch, objective: Objective, seed: UInt64,
                               samples: Int = 24) -> (rows: [GradCheckRow], floor: Double) {
    let p = S.self == Double.self ? Precision.f64 : Precision.f32
    let (h, _, baseFloor) = gradCheckSettings(p)
    let step = S(h)
    var rng = SeededGenerator(seed: seed)
    let layers = model.config.numHiddenLayers

    // A random functional <C, A> of every layer's attention probabilities: its gradient C is
    // what Eq. 7 injects.
    let probe = model.forward(batch)
    // Scaled so <C, A> is O(1) like the loss: its rounding noise sets the finite differences' floor.
    let coefficients: [Tensor<S>] = probe.layers.map { cache in
        let t = Tensor<S>(cache.attention.shape)
        let scale = 1 / Double(t.count).squareRoot()
        for i in 0..<t.count { t.data[i] = S(scale * rng.normal()) }
        return t
    }
    func attentionFunctional(_ pass: ForwardPass<S>) -> Double {
        var s = 0.0
        for (l, cache) in pass.layers.enumerated() {
            for i in 0..<cache.attention.count { s += Double(coefficients[l].data[i] * cache.attention.data[i]) }
        }
        return s
    }
    /// (L, L + <C, A>) at the current parameters.
    func losses(_ options: ForwardOptions<S> = ForwardOptions()) -> (Double, Double) {
        let pass = model.forward(batch, options: options)
        let l = loss(pass, objective).loss
        return (l, l + attentionFunctional(pass))
    }

    // Analytic gradients: plain, and with the injected dA = C.
    let (loss0, dOut) = loss(probe, objective)
    // Rounding noise of a central difference grows with |L| (about eps_mach * |L| / h), so the
    // denominator floor does too.
    let floor = baseFloor * max(1, abs(loss0))
    let grads = model.makeGradients()
    let plain = model.backward(probe, dOutput: dOut, into: grads)
    let gradsA = model.makeGradients()
    model.backward(probe, dOutput: dOut, dAttention: coefficients, into: gradsA)

    func pick(_ range: Range<Int>, nonzero: (Int) -> Bool) -> [Int] {
        if range.count <= samples { return Array(range) }
        let hot = range.filter(nonzero)
        var chosen = Set<Int>()
        for _ in 0..<(samples / 2) where !hot.isEmpty { chosen.insert(hot[rng.int(below: hot.count)]) }
        while chosen.count < samples { chosen.insert(range.lowerBound + rng.int(below: range.count)) }
        return chosen.sorted()
    }

    var rows: [GradCheckRow] = []
    var rowsA: [GradCheckRow] = []
    for t in model.layout.tensors {
        let idx = pick(t.range) { grads.data[$0] != 0 || gradsA.data[$0] != 0 }
        var err = 0.0, errA = 0.0, mx = 0.0, mxA = 0.0
        for i in idx {
            let saved = model.params.data[i]
            model.params.data[i] = saved + step
            let (lp, lpA) = losses()
            model.params.data[i] = saved - step
            let (lm, lmA) = losses()
            model.params.data[i] = saved
            let fd = (lp - lm) / (2 * h), fdA = (lpA - lmA) / (2 * h)
            err = max(err, relativeError(Double(grads.data[i]), fd, floor: floor))
            errA = max(errA, relativeError(Double(gradsA.data[i]), fdA, floor: floor))
            mx = max(mx, abs(fd)); mxA = max(mxA, abs(fdA))
        }
        rows.append(GradCheckRow(section: "loss", name: t.name, checked: idx.count, maxRelativeError: err, maxAbsGradient: mx))
        rowsA.append(GradCheckRow(section: "loss+<C,A>", name: t.name, checked: idx.count, maxRelativeError: errA,
                                  maxAbsGradient: mxA))
    }
    rows += rowsA

    // dL/dH, entry by entry, through an additive probe on the head-output buffer.
    for l in 0..<layers {
        let dH = plain.headOutputGradients[l]
        let idx = pick(0..<dH.count) { dH.data[$0] != 0 }
        var err = 0.0, mx = 0.0
        for i in idx {
            let (lp, _) = losses(ForwardOptions(headOutputNudge: (l, i, step)))
            let (lm, _) = losses(ForwardOptions(headOutputNudge: (l, i, -step)))
            let fd = (lp - lm) / (2 * h)
            err = max(err, relativeError(Double(dH.data[i]), fd, floor: floor))
            mx = max(mx, abs(fd))
        }
        rows.append(GradCheckRow(section: "dL/dH", name: "layer \(l) head outputs", checked: idx.count,
                                 maxRelativeError: err, maxAbsGradient: mx))
    }

    // dL/dgate at gates = 1 (Eq. 4's importance before the absolute value and the mean).
    let heads = model.config.numAttentionHeads
    for l in 0..<layers {
        var err = 0.0, mx = 0.0
        for hd in 0..<heads {
            var gates = [[S]](repeating: [S](repeating: 1, count: heads), count: layers)
            gates[l][hd] = 1 + step
            let (lp, _) = losses(ForwardOptions(headGates: gates))
            gates[l][hd] = 1 - step
            let (lm, _) = losses(ForwardOptions(headGates: gates))
            let fd = (lp - lm) / (2 * h)
            err = max(err, relativeError(Double(plain.gateGradients[l][hd]), fd, floor: floor))
            mx = max(mx, abs(fd))
        }
        rows.append(GradCheckRow(section: "dL/dgate", name: "layer \(l) gates", checked: heads, maxRelativeError: err,
                                 maxAbsGradient: mx))
    }
    return (rows, floor)
}

/// The command's entry point, non-generic so the command line needs no generic code.
public func runGradCheck(config: ModelConfig, name: String, precision: Precision, backend: Backend, seed: UInt64,
                         samples: Int) -> GradCheckReport {
    func run<S: Real>(_: S.Type) -> (rows: [GradCheckRow], floor: Double) {
        let model = Model<S>(config: config, backend: backend)
        model.initialize(seed: seed)
        jitterForGradCheck(model, seed: seed)
        let (batch, objective) = gradCheckBatch(config, seed: seed &+ 1)
        return gradCheck(model, batch: batch, objective: objective, seed: seed &+ 2, samples: samples)
    }
    let result = precision == .f64 ? run(Double.self) : run(Float.self)
    let s = gradCheckSettings(precision)
    return GradCheckReport(preset: name, precision: precision, backend: backend.description, step: s.step,
                           tolerance: s.tolerance, floor: result.floor, rows: result.rows)
}
