// Alignment.swift: Eq. 6 (the safe heads' mean attention, a constant at each step) and Eq. 7 (the
// squared distance of each suspicious head's attention from it), and training on that loss with
// only the suspicious heads' query and key parameters free.

/// Eq. 6: `Abar_safe(x)`, the mean of the safe heads' views (heads indexed `l * NH + h`).
public func safeReference(_ views: [[Double]], safe: [Int]) -> [Double] {
    precondition(!safe.isEmpty, "safeReference: no safe heads")
    var mean = [Double](repeating: 0, count: views[safe[0]].count)
    for h in safe { for k in 0..<mean.count { mean[k] += views[h][k] } }
    return mean.map { $0 / Double(safe.count) }
}

/// Eq. 7 for one input: `sum_{h in suspicious} ||A^h - Abar_safe||_F^2` over the view.
public func alignmentLoss(_ views: [[Double]], suspicious: [Int], safe: [Int]) -> Double {
    let ref = safeReference(views, safe: safe)
    var total = 0.0
    for h in suspicious { for k in 0..<ref.count { let e = views[h][k] - ref[k]; total += e * e } }
    return total
}

/// What Eq. 7 trains: the suspicious heads' W_q rows and bias entries, and a key/value head's
/// W_k rows and bias entries only when every query head sharing it is suspicious. `true` = free.
public func alignmentTrainableMask(layout: ParameterLayout, config c: ModelConfig, suspicious: [HeadID]) -> [Bool] {
    var mask = [Bool](repeating: false, count: layout.total)
    let set = Set(suspicious), shape = c.attentionShape
    for id in suspicious {
        let s = headSlices(layout: layout, config: c, layer: id.layer, head: id.head)
        for r in s.query { for i in r { mask[i] = true } }
        let g = shape.kvHead(of: id.head)
        if shape.queryHeads(of: g).allSatisfy({ set.contains(HeadID(id.layer, $0)) }) {
            for r in s.key { for i in r { mask[i] = true } }
        }
    }
    return mask
}

/// Eq. 7's loss on a batch of sequences (each with its prompt length, for gen2prompt) and its
/// gradient, accumulated into `grads`: Eq. 6's reference recomputed from the current model and
/// held constant, `2 (A^h - Abar) / B` injected at each suspicious head's view, then full
/// backpropagation (`scope`: every parameter's gradient, or with `.queriesAndKeys` only what
/// the alignment trains). `weight` scales the loss and its gradient (1 for Eq. 7 itself; the
/// fine-tuning penalty's lambda). Returns the weighted batch-mean loss.
@discardableResult
@_specialize(exported: true, where S == Float)
@_specialize(exported: true, where S == Double)
public func alignmentGradient<S: Real>(_ model: Model<S>, sequences: [(tokens: [Int], promptLength: Int)], view: AnalysisView,
                                       suspicious: [HeadID], safe: [HeadID], weight: Double = 1, into grads: Tensor<S>,
                                       scope: BackwardScope = .all) -> Double {
    let pass = model.forward(Batch(sequences.map(\.tokens)))
    let (loss, dAttention) = alignmentInjection(pass, config: model.config, sequences: sequences, view: view, suspicious: suspicious, safe: safe)
    if weight != 1 { for t in dAttention { for i in 0..<t.count { t.data[i] *= S(weight) } } }
    model.backward(pass, dOutput: Tensor(pass.output.shape), dAttention: dAttention, into: grads, scope: scope)
    return weight * loss
}

/// Eq. 6–7 on a forward pass: the batch-mean loss and dL/dA for every layer (laid out like the
/// layer's attention; non-zero only at the suspicious heads' views).
@_specialize(exported: true, where S == Float)
@_specialize(exported: true, where S == Double)
package func alignmentInjection<S: Real>(_ pass: ForwardPass<S>, config c: ModelConfig, sequences: [(tokens: [Int], promptLength: Int)],
                                 view: AnalysisView, suspicious: [HeadID], safe: [HeadID]) -> (Double, [Tensor<S>]) {
    let nh = c.numAttentionHeads, batch = pass.batch
    let susp = suspicious.map { $0.layer * nh + $0.head }, safeIdx = safe.map { $0.layer * nh + $0.head }
    let dAttention = pass.layers.map { Tensor<S>($0.attention.shape) }
    var total = 0.0
    let scale = 2 / Double(batch.count)
    for (b, seq) in sequences.enumerated() {
        let t = seq.tokens.count
        var views: [[Double]] = []
        for l in 0..<c.numHiddenLayers {
            for h in 0..<nh {
                views.append(flattenedView(pass.attention(layer: l, sequence: b, head: h).data, tokens: t, view: view,
                                           promptLength: seq.promptLength))
            }
        }
        let ref = safeReference(views, safe: safeIdx)  // Eq. 6: a constant, no gradient flows into it
        total += alignmentLoss(views, suspicious: susp, safe: safeIdx)
        let (rows, cols) = view.block(tokens: t, promptLength: seq.promptLength)
        for id in suspicious {
            let v = views[id.layer * nh + id.head]
            let block = pass.attention(layer: id.layer, sequence: b, head: id.head)
            let grad = dAttention[id.layer].data + (block.data - pass.layers[id.layer].attention.data)  // same offset, [T, T]
            var k = 0
            for i in rows { for j in cols { grad[i * t + j] = S(scale * (v[k] - ref[k])); k += 1 } }
        }
    }
    return (total / Double(batch.count), dAttention)
}

/// One alignment step: Eq. 7's gradient, then an AdamW update of the entries the optimizer does
/// not freeze (`alignmentTrainableMask`). Returns the batch-mean loss before the update. Only the
/// suspicious layers' query and key gradients are formed (`BackwardScope.queriesAndKeys`: the
/// same values, about half the work of a full backward).
@discardableResult
@_specialize(exported: true, where S == Float)
@_specialize(exported: true, where S == Double)
public func alignmentStep<S: Real>(_ model: Model<S>, sequences: [(tokens: [Int], promptLength: Int)], view: AnalysisView,
                                   suspicious: [HeadID], safe: [HeadID], optimizer: AdamW<S>) -> Double {
    let grads = model.makeGradients()
    let layers = suspicious.map(\.layer)
    let loss = alignmentGradient(model, sequences: sequences, view: view, suspicious: suspicious, safe: safe, into: grads,
                                 scope: layers.isEmpty ? .all : .queriesAndKeys(layers.min()!...layers.max()!))
    optimizer.update(model.params, grads)
    return loss
}
