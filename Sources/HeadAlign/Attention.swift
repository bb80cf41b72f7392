// Attention.swift: Eq. 1, multi-head scaled dot-product attention over packed sequences, with
// padding and causal masks and grouped-query sharing; forward and backward side by side.
// The forward keeps every head's probabilities A (the defense reads them) and outputs
// H = A V (Eq. 4 reads them); the backward accepts an extra gradient at A (Eq. 7 injects it).
// Projections and rotary embeddings are done by the caller (Model.swift).

/// Head counts and masking of one attention layer.
public struct AttentionShape: Sendable, Equatable {
    public let heads: Int  // NH
    public let kvHeads: Int  // NKV; query head h reads key/value head h / (NH / NKV)
    public let headSize: Int  // HS
    public let causal: Bool

    public init(heads: Int, kvHeads: Int, headSize: Int, causal: Bool) {
        precondition(heads > 0 && kvHeads > 0 && heads % kvHeads == 0,
                     "AttentionShape: \(heads) query heads cannot share \(kvHeads) key/value heads")
        self.heads = heads
        self.kvHeads = kvHeads
        self.headSize = headSize
        self.causal = causal
    }

    /// The key/value head that query head `h` reads (Hugging Face `repeat_kv`: consecutive
    /// query heads share one key/value head).
    @inline(__always) public func kvHead(of h: Int) -> Int { h / (heads / kvHeads) }

    /// The query heads sharing key/value head `g`.
    public func queryHeads(of g: Int) -> Range<Int> {
        let rep = heads / kvHeads
        return (g * rep)..<((g + 1) * rep)
    }

    public var scale: Double { 1 / Double(headSize).squareRoot() }
}

/// Where head h of sequence b starts in a layer's attention buffer `[sum_b NH * T_b^2]`.
@inline(__always)
package func attentionBlockOffset(_ batch: Batch, _ b: Int, _ h: Int, heads: Int) -> Int {
    let t = batch.sequences[b].count
    return heads * batch.squareOffset[b] + h * t * t
}

// MARK: - Forward

/// Eq. 1: `A = softmax(Q K^T / sqrt(HS) + M)` row-wise, `M = -inf` at padding keys and (causal)
/// at `k > t`, so `A[t,k] = 0` exactly there; then `H = A V`.
///
/// - q: `[N, NH*HS]` queries (after rotary), k/v: `[N, NKV*HS]`
/// - att: out, `[sum_b NH*T_b*T_b]`, each head's `[T, T]` block row-major
/// - headOut: out, `[N, NH*HS]`, head h's H in columns `h*HS ..< (h+1)*HS`
@_specialize(exported: true, where S == Float)
@_specialize(exported: true, where S == Double)
public func attentionForward<S: Real>(headOut: Tensor<S>, att: Tensor<S>,
                                      q: Tensor<S>, k: Tensor<S>, v: Tensor<S>,
                                      batch: Batch, shape: AttentionShape, backend: Backend) {
    let nh = shape.heads, hs = shape.headSize, ldq = nh * hs, ldk = shape.kvHeads * hs
    precondition(q.shape == [batch.tokenCount, ldq] && k.shape == [batch.tokenCount, ldk] && v.shape == k.shape,
                 "attentionForward: q \(q.shape), k \(k.shape), v \(v.shape) for \(batch.tokenCount) tokens, \(shape)")
    precondition(att.count == nh * batch.squareCount && headOut.shape == q.shape,
                 "attentionForward: att \(att.shape), headOut \(headOut.shape)")
    let scale = S(shape.scale)
    for (b, seq) in batch.sequences.enumerated() {
        let t = seq.count, row0 = batch.rowOffset[b]
        for h in 0..<nh {
            let g = shape.kvHead(of: h)
            let qh = q.data + row0 * ldq + h * hs  // [T, HS], stride ldq
            let kg = k.data + row0 * ldk + g * hs  // [T, HS], stride ldk
            let vg = v.data + row0 * ldk + g * hs  // [T, HS], stride ldk
            let a = att.data + attentionBlockOffset(batch, b, h, heads: nh)  // [T, T]
            // scores = Q K^T / sqrt(HS)
            gemm(backend, transB: true, m: t, n: t, k: hs, alpha: scale, a: qh, lda: ldq, b: kg, ldb: ldk,
                 c: a, ldc: t)
            for i in 0..<t {
                let row = a + i * t
                let limit = shape.causal ? i + 1 : t  // a decoder's query sees keys 0...i
                if let mask = seq.mask {
                    for key in 0..<limit where !mask[key] { row[key] = -S.infinity }
                    softmaxPrefix(row, limit, t)
                    for key in 0..<limit where !mask[key] { row[key] = 0 }  // exactly 0 at padding
                } else {
                    softmaxPrefix(row, limit, t)
                }
            }
            // H = A V
            gemm(backend, m: t, n: hs, k: t, a: a, lda: t, b: vg, ldb: ldk,
                 c: headOut.data + row0 * ldq + h * hs, ldc: ldq)
        }
    }
}

// MARK: - Backward

/// Backward of `attentionForward`. Accumulates into dq `[N, NH*HS]`, dk and dv `[N, NKV*HS]`
/// (a shared key/value head sums the gradients of all its query heads). `dHeadOut` is dL/dH;
/// `dAttExtra`, when given, is an extra dL/dA added before the softmax backward (Eq. 7's
/// alignment gradient), laid out like `att`.
@_specialize(exported: true, where S == Float)
@_specialize(exported: true, where S == Double)
public func attentionBackward<S: Real>(dq: Tensor<S>, dk: Tensor<S>, dv: Tensor<S>,
                                       dHeadOut: Tensor<S>, dAttExtra: Tensor<S>?,
                                       att: Tensor<S>, q: Tensor<S>, k: Tensor<S>, v: Tensor<S>,
                                       batch: Batch, shape: AttentionShape, backend: Backend) {
    let nh = shape.heads, hs = shape.headSize, ldq = nh * hs, ldk = shape.kvHeads * hs
    precondition(dAttExtra == nil || dAttExtra!.count == att.count,
                 "attentionBackward: dAttExtra \(dAttExtra!.shape) vs att \(att.shape)")
    let scale = S(shape.scale)
    let maxT = batch.sequences.map(\.count).max()!
    let dA = UnsafeMutablePointer<S>.allocate(capacity: maxT * maxT)  // [T, T] dL/dA
    let dS = UnsafeMutablePointer<S>.allocate(capacity: maxT * maxT)  // [T, T] dL/dscores
    defer { dA.deallocate(); dS.deallocate() }
    for (b, seq) in batch.sequences.enumerated() {
        let t = seq.count, row0 = batch.rowOffset[b]
        for h in 0..<nh {
            let g = shape.kvHead(of: h)
            let off = attentionBlockOffset(batch, b, h, heads: nh)
            let a = att.data + off  // [T, T]
            let dh = dHeadOut.data + row0 * ldq + h * hs  // [T, HS]
            // H = A V  ->  dV += A^T dH,  dA = dH V^T
            gemm(backend, transA: true, m: t, n: hs, k: t, a: a, lda: t, b: dh, ldb: ldq, beta: 1,
                 c: dv.data + row0 * ldk + g * hs, ldc: ldk)
            gemm(backend, transB: true, m: t, n: t, k: hs, a: dh, lda: ldq, b: v.data + row0 * ldk + g * hs,
                 ldb: ldk, c: dA, ldc: t)
            if let extra = dAttExtra {
                let e = extra.data + off
                for i in 0..<(t * t) { dA[i] += e[i] }
            }
            // A = softmax(scores)  ->  dscores = A * (dA - rowsum(A * dA)), then the 1/sqrt(HS)
            for i in 0..<t {
                softmaxRowBackward(dS + i * t, dA + i * t, a + i * t, t)
                for j in 0..<t { dS[i * t + j] *= scale }
            }
            // scores = Q K^T  ->  dQ += dS K,  dK += dS^T Q
            gemm(backend, m: t, n: hs, k: t, a: dS, lda: t, b: k.data + row0 * ldk + g * hs, ldb: ldk, beta: 1,
                 c: dq.data + row0 * ldq + h * hs, ldc: ldq)
            gemm(backend, transA: true, m: t, n: hs, k: t, a: dS, lda: t, b: q.data + row0 * ldq + h * hs,
                 ldb: ldq, beta: 1, c: dk.data + row0 * ldk + g * hs, ldc: ldk)
        }
    }
}
