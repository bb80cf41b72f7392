// KVCache.swift: greedy generation of a Llama decoder with a key/value cache. Each new token
// runs the layers on one row and attends to the keys and values of every earlier position,
// kept per layer, instead of recomputing the whole prefix: O(T) work per token, not O(T^2).
// It computes the same function as `Model.forward` (the same ops, in the same order per row);
// `KVCacheTests` checks logits and tokens against the uncached path.

/// The keys and values of the positions seen so far, per layer, and the running position.
public final class KeyValueCache<S: Real> {
    public let model: Model<S>
    public let capacity: Int  // positions the cache holds at most
    let keys: [Tensor<S>], values: [Tensor<S>]  // per layer [capacity, NKV*HS], keys after rotary
    public private(set) var length = 0

    public init(_ model: Model<S>, capacity: Int) {
        precondition(model.config.family == .llama, "KeyValueCache: a Llama decoder")
        precondition(capacity >= 1 && capacity <= model.config.maxPositionEmbeddings,
                     "KeyValueCache: capacity \(capacity) outside 1...\(model.config.maxPositionEmbeddings)")
        let s = model.config.attentionShape, kvDim = s.kvHeads * s.headSize
        self.model = model
        self.capacity = capacity
        keys = (0..<model.config.numHiddenLayers).map { _ in Tensor([capacity, kvDim]) }
        values = (0..<model.config.numHiddenLayers).map { _ in Tensor([capacity, kvDim]) }
    }

    /// Runs `tokens` at positions `length ..< length + m` (a prompt in one go, or one generated
    /// token) and returns the logits of the last of them, `[V]`.
    public func append(_ tokens: [Int]) -> [S] {
        let m = tokens.count, p0 = length
        precondition(m >= 1 && p0 + m <= capacity, "KeyValueCache.append: \(p0) + \(m) positions exceed the capacity \(capacity)")
        let w = model.weights, d = model.config.hiddenSize

        var x = Tensor<S>([m, d])  // [m, D]
        embeddingForward(x, w.tokenEmbedding, tokens)
        for (l, lw) in w.layers.enumerated() {
            x = cachedLayerStep(model, lw, keys: keys[l], values: values[l], x: x, start: p0)
        }
        length = p0 + m
        return lastRowLogits(model, x)
    }
}

/// One layer for `m` new rows at positions `p0 ..< p0 + m`: their keys and values are written
/// into the layer's cache (`[capacity, NKV*HS]`), each row attends to positions `0 ... p0 + i`.
/// Returns the layer's output `[m, D]`. `lw` may belong to a different model of the same shape
/// (a 7B model run layer by layer passes every layer through one resident layer's weights).
package func cachedLayerStep<S: Real>(_ model: Model<S>, _ lw: LayerWeights<S>, keys: Tensor<S>, values: Tensor<S>, x: Tensor<S>,
                              start p0: Int) -> Tensor<S> {
    cachedLayerStep(model, lw, [CachedRows(keys: keys, values: values, start: p0, rows: x.shape[0])], x: x)
}

/// Rows of one sequence in a `cachedLayerStep`: `rows` new positions from `start` on, with the
/// layer's key/value cache of that sequence (`[capacity, NKV*HS]`).
package struct CachedRows<S: Real> {
    package let keys: Tensor<S>, values: Tensor<S>
    package let start: Int, rows: Int
    package init(keys: Tensor<S>, values: Tensor<S>, start: Int, rows: Int) {
        self.keys = keys; self.values = values; self.start = start; self.rows = rows
    }
}

/// A layer's linear maps, named for a caller that brings its own products (`project`).
package enum LayerLinear: Sendable { case query, key, value, output, gate, up, down }

/// The same layer step for several sequences at once: `x [m, D]` holds each sequence's new rows in
/// turn (`sequences[s].rows` of them); the linear maps and norms run on all m rows together (B
/// prompts decoded together share one read of the weights), rotary positions, the caches and
/// attention per sequence. `project(out, input, which)`, when given, replaces the layer's linear
/// maps `out = input W^T` (the streamed decode reads W in half precision where it lies; Llama
/// layers have no biases); without it `lw`'s weights run through `linearForward`.
package func cachedLayerStep<S: Real>(_ model: Model<S>, _ lw: LayerWeights<S>, _ sequences: [CachedRows<S>], x: Tensor<S>,
                                      project: ((Tensor<S>, Tensor<S>, LayerLinear) -> Void)? = nil) -> Tensor<S> {
    let c = model.config, backend = model.backend, d = c.hiddenSize, m = x.shape[0]
    let shape = c.attentionShape, nh = shape.heads, hs = shape.headSize, qDim = nh * hs, kvDim = shape.kvHeads * hs
    precondition(sequences.reduce(0) { $0 + $1.rows } == m, "cachedLayerStep: the sequences' rows are not x's \(m)")
    let linear = project ?? { out, input, which in
        let l: Linear<S>
        switch which {
        case .query: l = lw.attention.query
        case .key: l = lw.attention.key
        case .value: l = lw.attention.value
        case .output: l = lw.attention.output
        case .gate: l = lw.ffnGate!
        case .up: l = lw.ffnUp
        case .down: l = lw.ffnDown
        }
        linearForward(out, input, l.weight, l.bias, backend)
    }
    let hat = Tensor<S>([m, d]), rstd = Tensor<S>([m])  // RMSNorm scratch (the cache of a backward we never run)
    // attention: mid = x + O(Attn(RMS1(x)))
    let h = Tensor<S>([m, d])
    rmsNormForward(h, hat, rstd, x, lw.norm1.weight, eps: c.rmsNormEps)
    let q = Tensor<S>([m, qDim]), k = Tensor<S>([m, kvDim]), v = Tensor<S>([m, kvDim])
    linear(q, h, .query)
    linear(k, h, .key)
    linear(v, h, .value)
    let headOut = Tensor<S>([m, qDim])  // [m, NH*HS]
    var r0 = 0  // the sequence's first row in x
    for s in sequences {
        let p0 = s.start, rows = s.rows, t = p0 + rows  // keys visible to the sequence's last new row
        precondition(t <= s.keys.shape[0], "cachedLayerStep: positions \(p0) + \(rows) exceed the cache's \(s.keys.shape[0])")
        let qs = q.data + r0 * qDim, ks = k.data + r0 * kvDim, vs = v.data + r0 * kvDim
        if let rotary = model.rotary {
            ropeApply(qs, rows: rows, heads: nh, startPosition: p0, table: rotary, interleaved: c.ropeInterleaved, inverse: false)
            ropeApply(ks, rows: rows, heads: shape.kvHeads, startPosition: p0, table: rotary, interleaved: c.ropeInterleaved, inverse: false)
        }
        (s.keys.data + p0 * kvDim).update(from: ks, count: rows * kvDim)
        (s.values.data + p0 * kvDim).update(from: vs, count: rows * kvDim)
        let scores = Tensor<S>([rows, t])  // one head's [rows, T] at a time
        for head in 0..<nh {
            let g = shape.kvHead(of: head)
            // Eq. 1 for the new rows: softmax(q K^T / sqrt(HS)) over keys 0 ... p0 + i
            gemm(backend, transB: true, m: rows, n: t, k: hs, alpha: S(shape.scale), a: qs + head * hs, lda: qDim,
                 b: s.keys.data + g * hs, ldb: kvDim, c: scores.data, ldc: t)
            for i in 0..<rows { softmaxPrefix(scores.data + i * t, p0 + i + 1, t) }
            gemm(backend, m: rows, n: hs, k: t, a: scores.data, lda: t, b: s.values.data + g * hs, ldb: kvDim,
                 c: headOut.data + r0 * qDim + head * hs, ldc: qDim)
        }
        r0 += rows
    }
    let proj = Tensor<S>([m, d])
    linear(proj, headOut, .output)
    let mid = Tensor<S>([m, d])
    for i in 0..<(m * d) { mid.data[i] = x.data[i] + proj.data[i] }
    // feed-forward: out = mid + Down(SwiGLU(Gate(RMS2(mid)), Up(RMS2(mid))))
    let f = c.intermediateSize
    let ffnIn = Tensor<S>([m, d]), gate = Tensor<S>([m, f]), up = Tensor<S>([m, f]), act = Tensor<S>([m, f])
    rmsNormForward(ffnIn, hat, rstd, mid, lw.norm2.weight, eps: c.rmsNormEps)
    linear(gate, ffnIn, .gate)
    linear(up, ffnIn, .up)
    swigluForward(act, gate, up)
    linear(proj, act, .down)
    let out = Tensor<S>([m, d])
    for i in 0..<(m * d) { out.data[i] = mid.data[i] + proj.data[i] }
    return out
}

/// `cachedLayerStep` and `lastRowLogits` for Float, compiled specialised in this module. Why: a
/// generic function called from another module (a 7B model run layer by layer) runs
/// unspecialised, through value witnesses per element (seen in a profile of that run), and
/// `@_specialize(exported: true)` on these fails to link under Swift 6.3.1.
package func cachedLayerStepFloat(_ model: Model<Float>, _ lw: LayerWeights<Float>, _ sequences: [CachedRows<Float>], x: Tensor<Float>,
                                  project: ((Tensor<Float>, Tensor<Float>, LayerLinear) -> Void)? = nil) -> Tensor<Float> {
    cachedLayerStep(model, lw, sequences, x: x, project: project)
}

/// See `cachedLayerStepFloat`.
package func lastRowLogitsFloat(_ model: Model<Float>, _ x: Tensor<Float>) -> [Float] { lastRowLogits(model, x) }

/// The final RMSNorm and the LM head on the last row of `x` `[m, D]`: logits `[V]`.
package func lastRowLogits<S: Real>(_ model: Model<S>, _ x: Tensor<S>) -> [S] {
    let c = model.config, w = model.weights, d = c.hiddenSize, m = x.shape[0]
    let last = Tensor<S>([1, d]), lastHat = Tensor<S>([1, d]), lastRstd = Tensor<S>([1]), row = Tensor<S>([1, d])
    last.data.update(from: x.data + (m - 1) * d, count: d)
    rmsNormForward(row, lastHat, lastRstd, last, w.finalNorm!.weight, eps: c.rmsNormEps)
    let logits = Tensor<S>([1, c.vocabSize])
    linearForward(logits, row, w.lmHead ?? w.tokenEmbedding, nil, model.backend)
    return Array(UnsafeBufferPointer(start: logits.data, count: c.vocabSize))
}
