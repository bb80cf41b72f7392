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
    let c = model.config, backend = model.backend, d = c.hiddenSize, m = x.shape[0]
    let shape = c.attentionShape, nh = shape.heads, hs = shape.headSize, qDim = nh * hs, kvDim = shape.kvHeads * hs
    let t = p0 + m  // keys visible to the last new row
    let hat = Tensor<S>([m, d]), rstd = Tensor<S>([m])  // RMSNorm scratch (the cache of a backward we never run)
    // attention: mid = x + O(Attn(RMS1(x)))
    let h = Tensor<S>([m, d])
    rmsNormForward(h, hat, rstd, x, lw.norm1.weight, eps: c.rmsNormEps)
    let q = Tensor<S>([m, qDim]), k = Tensor<S>([m, kvDim]), v = Tensor<S>([m, kvDim])
    linearForward(q, h, lw.attention.query.weight, lw.attention.query.bias, backend)
    linearForward(k, h, lw.attention.key.weight, lw.attention.key.bias, backend)
    linearForward(v, h, lw.attention.value.weight, lw.attention.value.bias, backend)
    if let rotary = model.rotary {
        ropeApply(q.data, rows: m, heads: nh, startPosition: p0, table: rotary, interleaved: c.ropeInterleaved, inverse: false)
        ropeApply(k.data, rows: m, heads: shape.kvHeads, startPosition: p0, table: rotary, interleaved: c.ropeInterleaved, inverse: false)
    }
    (keys.data + p0 * kvDim).update(from: k.data, count: m * kvDim)
    (values.data + p0 * kvDim).update(from: v.data, count: m * kvDim)
    let headOut = Tensor<S>([m, qDim]), scores = Tensor<S>([m, t])  // [m, NH*HS], one head's [m, T] at a time
    for head in 0..<nh {
        let g = shape.kvHead(of: head)
        // Eq. 1 for the new rows: softmax(q K^T / sqrt(HS)) over keys 0 ... p0 + i
        gemm(backend, transB: true, m: m, n: t, k: hs, alpha: S(shape.scale), a: q.data + head * hs, lda: qDim,
             b: keys.data + g * hs, ldb: kvDim, c: scores.data, ldc: t)
        for i in 0..<m { softmaxPrefix(scores.data + i * t, p0 + i + 1, t) }
        gemm(backend, m: m, n: hs, k: t, a: scores.data, lda: t, b: values.data + g * hs, ldb: kvDim,
             c: headOut.data + head * hs, ldc: qDim)
    }
    let proj = Tensor<S>([m, d])
    linearForward(proj, headOut, lw.attention.output.weight, lw.attention.output.bias, backend)
    let mid = Tensor<S>([m, d])
    for i in 0..<(m * d) { mid.data[i] = x.data[i] + proj.data[i] }
    // feed-forward: out = mid + Down(SwiGLU(Gate(RMS2(mid)), Up(RMS2(mid))))
    let f = c.intermediateSize
    let ffnIn = Tensor<S>([m, d]), gate = Tensor<S>([m, f]), up = Tensor<S>([m, f]), act = Tensor<S>([m, f])
    rmsNormForward(ffnIn, hat, rstd, mid, lw.norm2.weight, eps: c.rmsNormEps)
    linearForward(gate, ffnIn, lw.ffnGate!.weight, nil, backend)
    linearForward(up, ffnIn, lw.ffnUp.weight, nil, backend)
    swigluForward(act, gate, up)
    linearForward(proj, act, lw.ffnDown.weight, nil, backend)
    let out = Tensor<S>([m, d])
    for i in 0..<(m * d) { out.data[i] = mid.data[i] + proj.data[i] }
    return out
}

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
