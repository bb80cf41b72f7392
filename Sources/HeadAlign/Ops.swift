// Ops.swift: the transformer's operations as forward/backward pairs, side by side (llm.c style).
// Forward functions write their output (and the cache their backward needs); backward functions
// *accumulate* (`+=`) into `d`-prefixed gradients, which the caller zeroes once per step.
// Attention itself (Eq. 1) lives in Attention.swift.

// MARK: - Linear

/// `out = x W^T + b`: x `[N, I]`, W `[O, I]` (the Hugging Face layout), b `[O]`, out `[N, O]`.
@_specialize(exported: true, where S == Float)
@_specialize(exported: true, where S == Double)
public func linearForward<S: Real>(_ out: Tensor<S>, _ x: Tensor<S>, _ w: Tensor<S>, _ b: Tensor<S>?,
                                   _ backend: Backend) {
    let n = x.shape[0], i = x.shape[1], o = w.shape[0]
    precondition(w.shape == [o, i] && out.shape == [n, o],
                 "linearForward: x \(x.shape), W \(w.shape), out \(out.shape)")
    gemm(backend, transB: true, m: n, n: o, k: i, a: x.data, lda: i, b: w.data, ldb: i,
         c: out.data, ldc: o)
    if let b {
        precondition(b.count == o, "linearForward: bias \(b.shape) for \(o) outputs")
        for r in 0..<n {
            let row = out.data + r * o
            for j in 0..<o { row[j] += b.data[j] }
        }
    }
}

/// Backward of `out = x W^T + b`: `dx += dout W`, `dW += dout^T x`, `db += sum_rows dout`.
/// `dx` may be nil when the input needs no gradient, `dW` (and with it `db`) when the weight
/// needs none (`BackwardScope`).
@_specialize(exported: true, where S == Float)
@_specialize(exported: true, where S == Double)
public func linearBackward<S: Real>(_ dx: Tensor<S>?, _ dw: Tensor<S>?, _ db: Tensor<S>?,
                                    _ dout: Tensor<S>, _ x: Tensor<S>, _ w: Tensor<S>, _ backend: Backend) {
    let n = x.shape[0], i = x.shape[1], o = w.shape[0]
    precondition(dout.shape == [n, o] && (dw == nil || dw!.shape == w.shape),
                 "linearBackward: dout \(dout.shape), x \(x.shape), W \(w.shape), dW \(dw?.shape ?? [])")
    if let dx {
        precondition(dx.shape == x.shape, "linearBackward: dx \(dx.shape) vs x \(x.shape)")
        gemm(backend, m: n, n: i, k: o, a: dout.data, lda: o, b: w.data, ldb: i, beta: 1,
             c: dx.data, ldc: i)
    }
    guard let dw else { return }
    gemm(backend, transA: true, m: o, n: i, k: n, a: dout.data, lda: o, b: x.data, ldb: i, beta: 1,
         c: dw.data, ldc: i)
    if let db {
        for r in 0..<n {
            let row = dout.data + r * o
            for j in 0..<o { db.data[j] += row[j] }
        }
    }
}

/// The input half of `linearBackward` alone: `dx += dout W`. An activations-only backward (a 7B
/// model run layer by layer keeps no weight gradients) uses it.
@_specialize(exported: true, where S == Float)
@_specialize(exported: true, where S == Double)
public func linearBackwardInput<S: Real>(_ dx: Tensor<S>, _ dout: Tensor<S>, _ w: Tensor<S>, _ backend: Backend) {
    let n = dx.shape[0], i = dx.shape[1], o = w.shape[0]
    precondition(dout.shape == [n, o] && w.shape == [o, i], "linearBackwardInput: dout \(dout.shape), W \(w.shape), dx \(dx.shape)")
    gemm(backend, m: n, n: i, k: o, a: dout.data, lda: o, b: w.data, ldb: i, beta: 1, c: dx.data, ldc: i)
}

// MARK: - Embedding

/// `out[t] += table[ids[t]]`: table `[V, D]`, out `[N, D]`. Adds, so token, position and
/// token-type embeddings sum into one buffer.
@_specialize(exported: true, where S == Float)
@_specialize(exported: true, where S == Double)
public func embeddingForward<S: Real>(_ out: Tensor<S>, _ table: Tensor<S>, _ ids: [Int]) {
    let d = table.shape[1]
    precondition(out.shape == [ids.count, d], "embeddingForward: out \(out.shape), \(ids.count) ids, D \(d)")
    for (t, id) in ids.enumerated() {
        precondition(id >= 0 && id < table.shape[0], "embeddingForward: id \(id) outside table \(table.shape)")
        let src = table.data + id * d, dst = out.data + t * d
        for j in 0..<d { dst[j] += src[j] }
    }
}

/// `dtable[ids[t]] += dout[t]`.
@_specialize(exported: true, where S == Float)
@_specialize(exported: true, where S == Double)
public func embeddingBackward<S: Real>(_ dtable: Tensor<S>, _ dout: Tensor<S>, _ ids: [Int]) {
    let d = dtable.shape[1]
    for (t, id) in ids.enumerated() {
        let src = dout.data + t * d, dst = dtable.data + id * d
        for j in 0..<d { dst[j] += src[j] }
    }
}

// MARK: - LayerNorm (BERT)

/// `out = xhat * gamma + beta` with `xhat = (x - mean) * rstd`, `rstd = 1 / sqrt(var + eps)`,
/// population variance over the last dimension. Caches `xhat` `[N, D]` and `rstd` `[N]`.
@_specialize(exported: true, where S == Float)
@_specialize(exported: true, where S == Double)
public func layerNormForward<S: Real>(_ out: Tensor<S>, _ xhat: Tensor<S>, _ rstd: Tensor<S>,
                                      _ x: Tensor<S>, _ gamma: Tensor<S>, _ beta: Tensor<S>, eps: Double) {
    let n = x.shape[0], d = x.shape[1]
    precondition(out.shape == x.shape && xhat.shape == x.shape && rstd.count == n && gamma.count == d,
                 "layerNormForward: x \(x.shape), out \(out.shape), gamma \(gamma.shape)")
    for r in 0..<n {
        let xr = x.data + r * d, yr = out.data + r * d, hr = xhat.data + r * d
        var mean: S = 0
        for j in 0..<d { mean += xr[j] }
        mean /= S(d)
        var v: S = 0
        for j in 0..<d { let c = xr[j] - mean; v += c * c }
        v /= S(d)
        let rs = 1 / (v + S(eps)).squareRoot()
        rstd.data[r] = rs
        for j in 0..<d {
            let h = (xr[j] - mean) * rs
            hr[j] = h
            yr[j] = h * gamma.data[j] + beta.data[j]
        }
    }
}

/// With `g = dout * gamma`: `dx += rstd * (g - mean(g) - xhat * mean(g * xhat))`,
/// `dgamma += sum_rows dout * xhat`, `dbeta += sum_rows dout`.
@_specialize(exported: true, where S == Float)
@_specialize(exported: true, where S == Double)
public func layerNormBackward<S: Real>(_ dx: Tensor<S>, _ dgamma: Tensor<S>, _ dbeta: Tensor<S>,
                                       _ dout: Tensor<S>, _ xhat: Tensor<S>, _ rstd: Tensor<S>,
                                       _ gamma: Tensor<S>) {
    let n = xhat.shape[0], d = xhat.shape[1]
    for r in 0..<n {
        let dy = dout.data + r * d, h = xhat.data + r * d, dxr = dx.data + r * d
        var meanG: S = 0, meanGH: S = 0
        for j in 0..<d {
            let g = dy[j] * gamma.data[j]
            meanG += g
            meanGH += g * h[j]
        }
        meanG /= S(d)
        meanGH /= S(d)
        let rs = rstd.data[r]
        for j in 0..<d {
            let g = dy[j] * gamma.data[j]
            dxr[j] += rs * (g - meanG - h[j] * meanGH)
            dgamma.data[j] += dy[j] * h[j]
            dbeta.data[j] += dy[j]
        }
    }
}

// MARK: - RMSNorm (Llama)

/// `out = xhat * w` with `xhat = x * rstd`, `rstd = 1 / sqrt(mean(x^2) + eps)`.
/// Caches `xhat` `[N, D]` and `rstd` `[N]`.
@_specialize(exported: true, where S == Float)
@_specialize(exported: true, where S == Double)
public func rmsNormForward<S: Real>(_ out: Tensor<S>, _ xhat: Tensor<S>, _ rstd: Tensor<S>,
                                    _ x: Tensor<S>, _ w: Tensor<S>, eps: Double) {
    let n = x.shape[0], d = x.shape[1]
    precondition(out.shape == x.shape && xhat.shape == x.shape && rstd.count == n && w.count == d,
                 "rmsNormForward: x \(x.shape), out \(out.shape), w \(w.shape)")
    for r in 0..<n {
        let xr = x.data + r * d, yr = out.data + r * d, hr = xhat.data + r * d
        var ms: S = 0
        for j in 0..<d { ms += xr[j] * xr[j] }
        ms /= S(d)
        let rs = 1 / (ms + S(eps)).squareRoot()
        rstd.data[r] = rs
        for j in 0..<d {
            let h = xr[j] * rs
            hr[j] = h
            yr[j] = h * w.data[j]
        }
    }
}

/// With `g = dout * w`: `dx += rstd * (g - xhat * mean(g * xhat))`, `dw += sum_rows dout * xhat`.
@_specialize(exported: true, where S == Float)
@_specialize(exported: true, where S == Double)
public func rmsNormBackward<S: Real>(_ dx: Tensor<S>, _ dw: Tensor<S>, _ dout: Tensor<S>,
                                     _ xhat: Tensor<S>, _ rstd: Tensor<S>, _ w: Tensor<S>) {
    let n = xhat.shape[0], d = xhat.shape[1]
    for r in 0..<n {
        let dy = dout.data + r * d, h = xhat.data + r * d, dxr = dx.data + r * d
        var meanGH: S = 0
        for j in 0..<d { meanGH += dy[j] * w.data[j] * h[j] }
        meanGH /= S(d)
        let rs = rstd.data[r]
        for j in 0..<d {
            dxr[j] += rs * (dy[j] * w.data[j] - h[j] * meanGH)
            dw.data[j] += dy[j] * h[j]
        }
    }
}

// MARK: - GELU (exact, erf form, as BERT's "gelu")

/// `gelu(x) = x * Phi(x) = 0.5 x (1 + erf(x / sqrt 2))`.
@_specialize(exported: true, where S == Float)
@_specialize(exported: true, where S == Double)
public func geluForward<S: Real>(_ out: Tensor<S>, _ x: Tensor<S>) {
    precondition(out.count == x.count, "geluForward: out \(out.shape), x \(x.shape)")
    let invSqrt2 = S(0.70710678118654752440)
    for i in 0..<x.count {
        let v = x.data[i]
        out.data[i] = 0.5 * v * (1 + S.erf(v * invSqrt2))
    }
}

/// `gelu'(x) = Phi(x) + x * phi(x)`, phi the standard normal density.
@_specialize(exported: true, where S == Float)
@_specialize(exported: true, where S == Double)
public func geluBackward<S: Real>(_ dx: Tensor<S>, _ dout: Tensor<S>, _ x: Tensor<S>) {
    let invSqrt2 = S(0.70710678118654752440), invSqrt2Pi = S(0.39894228040143267794)
    for i in 0..<x.count {
        let v = x.data[i]
        let cdf = 0.5 * (1 + S.erf(v * invSqrt2))
        let pdf = invSqrt2Pi * S.exp(-0.5 * v * v)
        dx.data[i] += dout.data[i] * (cdf + v * pdf)
    }
}

// MARK: - tanh (BERT pooler)

@_specialize(exported: true, where S == Float)
@_specialize(exported: true, where S == Double)
public func tanhForward<S: Real>(_ out: Tensor<S>, _ x: Tensor<S>) {
    for i in 0..<x.count { out.data[i] = S.tanh(x.data[i]) }
}

/// `dx += dout * (1 - y^2)`, y the forward output.
@_specialize(exported: true, where S == Float)
@_specialize(exported: true, where S == Double)
public func tanhBackward<S: Real>(_ dx: Tensor<S>, _ dout: Tensor<S>, _ y: Tensor<S>) {
    for i in 0..<y.count { dx.data[i] += dout.data[i] * (1 - y.data[i] * y.data[i]) }
}

// MARK: - SwiGLU (Llama feed-forward)

/// `out = silu(gate) * up`, `silu(z) = z * sigmoid(z)`; all `[N, F]`.
@_specialize(exported: true, where S == Float)
@_specialize(exported: true, where S == Double)
public func swigluForward<S: Real>(_ out: Tensor<S>, _ gate: Tensor<S>, _ up: Tensor<S>) {
    precondition(out.count == gate.count && gate.count == up.count, "swigluForward: shapes differ")
    for i in 0..<gate.count {
        let z = gate.data[i]
        out.data[i] = z / (1 + S.exp(-z)) * up.data[i]
    }
}

/// `dgate += dout * up * sigmoid(z) (1 + z (1 - sigmoid(z)))`, `dup += dout * silu(z)`.
@_specialize(exported: true, where S == Float)
@_specialize(exported: true, where S == Double)
public func swigluBackward<S: Real>(_ dgate: Tensor<S>, _ dup: Tensor<S>, _ dout: Tensor<S>,
                                    _ gate: Tensor<S>, _ up: Tensor<S>) {
    for i in 0..<gate.count {
        let z = gate.data[i]
        let sig = 1 / (1 + S.exp(-z))
        dgate.data[i] += dout.data[i] * up.data[i] * sig * (1 + z * (1 - sig))
        dup.data[i] += dout.data[i] * z * sig
    }
}

// MARK: - Rotary position embeddings (Llama)

/// The angles `pos * theta^(-2i/HS)`, i in 0..<HS/2, as `cos` and `sin` tables `[P, HS/2]`,
/// computed in Double and rounded once.
public struct RotaryTable<S: Real> {
    public let headSize: Int
    public let cos: [S], sin: [S]  // [P, HS/2]

    public init(headSize: Int, positions: Int, theta: Double) {
        precondition(headSize % 2 == 0, "RotaryTable: head size \(headSize) is odd")
        self.headSize = headSize
        let half = headSize / 2
        var c = [S](repeating: 0, count: positions * half), s = c
        for p in 0..<positions {
            for i in 0..<half {
                let invFreq = 1 / pow(theta, Double(2 * i) / Double(headSize))
                let angle = Double(p) * invFreq
                c[p * half + i] = S(Foundation.cos(angle))
                s[p * half + i] = S(Foundation.sin(angle))
            }
        }
        self.cos = c
        self.sin = s
    }
}

/// Rotates each head's `[HS]` slice of `x` `[T, heads*HS]` in place by its position's angles.
/// `interleaved == false`: Hugging Face rotate_half, pairs `(i, i + HS/2)`;
/// `interleaved == true`: llama2.c, pairs `(2i, 2i+1)`. `inverse` applies the transpose rotation,
/// which is the backward (a rotation's Jacobian is the rotation itself).
@_specialize(exported: true, where S == Float)
@_specialize(exported: true, where S == Double)
public func ropeApply<S: Real>(_ x: UnsafeMutablePointer<S>, rows: Int, heads: Int, startPosition: Int,
                               table: RotaryTable<S>, interleaved: Bool, inverse: Bool) {
    let hs = table.headSize, half = hs / 2, ld = heads * hs
    for t in 0..<rows {
        let p = startPosition + t
        precondition(p * half < table.cos.count, "ropeApply: position \(p) beyond the rotary table")
        for h in 0..<heads {
            let v = x + t * ld + h * hs
            for i in 0..<half {
                let c = table.cos[p * half + i]
                let s = inverse ? -table.sin[p * half + i] : table.sin[p * half + i]
                let (ia, ib) = interleaved ? (2 * i, 2 * i + 1) : (i, i + half)
                let a = v[ia], b = v[ib]
                v[ia] = a * c - b * s
                v[ib] = b * c + a * s
            }
        }
    }
}

// MARK: - Softmax and cross-entropy

/// Row softmax in place over `n` entries, max subtracted first; entries with `allowed[k] == false`
/// become exactly 0. A row with no allowed entry becomes all zeros.
@inline(__always)
@_specialize(exported: true, where S == Float)
@_specialize(exported: true, where S == Double)
public func softmaxRow<S: Real>(_ row: UnsafeMutablePointer<S>, _ n: Int, allowed: (Int) -> Bool) {
    for k in 0..<n where !allowed(k) { row[k] = -S.infinity }
    softmaxPrefix(row, n, n)
    for k in 0..<n where !allowed(k) { row[k] = 0 }  // exp of -inf is 0, but exactly, always
}

/// Softmax over `row[0..<limit]`, zeros in `row[limit..<n]` (a causal row: keys after the query).
/// Entries equal to -inf get weight 0 (up to exp's underflow; callers that need exact zeros
/// set them afterwards). The exponentials and the scaling are plain loops that vectorise.
@inline(__always)
@_specialize(exported: true, where S == Float)
@_specialize(exported: true, where S == Double)
public func softmaxPrefix<S: Real>(_ row: UnsafeMutablePointer<S>, _ limit: Int, _ n: Int) {
    var mx = -S.infinity
    for k in 0..<limit { mx = Swift.max(mx, row[k]) }
    if mx == -S.infinity {
        row.update(repeating: 0, count: n)
        return
    }
    for k in 0..<limit { row[k] = S.exp(row[k] - mx) }
    var sum: S = 0
    for k in 0..<limit { sum += row[k] }
    let inv = 1 / sum
    for k in 0..<limit { row[k] *= inv }
    for k in limit..<n { row[k] = 0 }
}

/// Backward of a softmax row: `dz = p * (dp - sum_k p_k dp_k)`, written (not accumulated) to `dz`.
/// Masked entries have p = 0 and so get dz = 0.
@inline(__always)
@_specialize(exported: true, where S == Float)
@_specialize(exported: true, where S == Double)
public func softmaxRowBackward<S: Real>(_ dz: UnsafeMutablePointer<S>, _ dp: UnsafePointer<S>,
                                        _ p: UnsafePointer<S>, _ n: Int) {
    var dot: S = 0
    for k in 0..<n { dot += p[k] * dp[k] }
    for k in 0..<n { dz[k] = p[k] * (dp[k] - dot) }
}

/// Cross-entropy of each row of `logits` `[R, C]` against `targets[r]` (`-1` = no target), and
/// its gradient `dlogits = scale * (softmax - onehot)` for those rows (0 for the others).
/// Returns the sum of the row losses (the caller picks the reduction through `scale`).
@_specialize(exported: true, where S == Float)
@_specialize(exported: true, where S == Double)
public func crossEntropy<S: Real>(_ logits: Tensor<S>, targets: [Int], scale: S,
                                  dlogits: Tensor<S>?) -> Double {
    let r = logits.shape[0], c = logits.shape[1]
    precondition(targets.count == r, "crossEntropy: \(targets.count) targets for \(r) rows")
    var total = 0.0
    let p = UnsafeMutablePointer<S>.allocate(capacity: c)  // [C]
    defer { p.deallocate() }
    for i in 0..<r {
        let y = targets[i]
        let row = logits.data + i * c
        if y < 0 {
            if let dlogits { (dlogits.data + i * c).update(repeating: 0, count: c) }
            continue
        }
        precondition(y < c, "crossEntropy: target \(y) outside \(c) classes")
        p.update(from: row, count: c)
        softmaxRow(p, c, allowed: { _ in true })
        // log softmax at y, computed stably as z_y - max - log(sum exp(z - max))
        var mx = -S.infinity
        for k in 0..<c { mx = Swift.max(mx, row[k]) }
        var sum: S = 0
        for k in 0..<c { sum += S.exp(row[k] - mx) }
        total -= Double(row[y] - mx - S.log(sum))
        if let dlogits {
            let d = dlogits.data + i * c
            for k in 0..<c { d[k] = scale * (p[k] - (k == y ? 1 : 0)) }
        }
    }
    return total
}

import Foundation
