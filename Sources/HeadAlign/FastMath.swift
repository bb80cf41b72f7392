// FastMath.swift: branch-free exp and erf for Float, so the loops of softmax, GELU and SiLU
// vectorise. Kept apart from the reading path: Tensor.swift's `Real` uses them for Float, and
// every formula in Ops.swift reads as if it called libm. Double keeps libm (the oracle's precision).

/// erf for Float as `x P(x^2) / Q(x^2)` on x clamped to [-4, 4] (erf(4) rounds to 1 in Float).
/// Why not libm's `erff`: it is a call per element (~16 ns here) and GELU evaluates it for every
/// feed-forward unit, which made it the largest non-GEMM cost of a MiniLM training step; this form
/// has no branches or calls, so GELU's loop vectorises. Max absolute error over [-6, 6], evaluated
/// in Float: 3.7e-7 (about 3 ulp near 1). The coefficients are our own weighted least-squares
/// rational fit (Sanathanan–Koerner iterations) on 42,000 points of [0, 4]. Double keeps libm.
@inline(__always)
public func erfRational(_ x: Float) -> Float {
    let c = Swift.min(Swift.max(x, -4), 4)
    let t = c * c
    var p: Float = 2.017601126613755e-06
    p = p * t + 0.00028344487513445177
    p = p * t + 0.003786783786122461
    p = p * t + 0.05280125852701795
    p = p * t + 0.1911467051755129
    p = p * t + 1.1283791478638336
    var q: Float = 3.7684319667573296e-05
    q = q * t + 0.0011642630285658784
    q = q * t + 0.01501082124948348
    q = q * t + 0.11437426152254399
    q = q * t + 0.5027321295255371
    q = q * t + 1
    return c * p / q
}

/// exp for Float without a library call, so softmax, GELU's backward and SiLU vectorise:
/// `exp(x) = 2^k exp(r)` with `k = round(x / ln 2)`, `r = x - k ln 2` (ln 2 split in two for an
/// exact product), `exp(r)` by its degree-7 Taylor polynomial on |r| <= ln2/2, and `2^k` built in
/// the exponent bits. x is clamped to [-87, 88], so the result is always a normal number (exp(-87)
/// = 1.6e-38 rather than 0; callers that need exact zeros, such as masked softmax entries, set
/// them explicitly). Max relative error over [-87, 88], evaluated in Float: 1.0e-7 (1.7 ulp).
@inline(__always)
public func expInline(_ x: Float) -> Float {
    let c = Swift.min(Swift.max(x, -87), 88)
    let shifter: Float = 12_582_912  // 1.5 * 2^23: adding it rounds to an integer in the low bits
    let kShifted = c * 1.4426950408889634 + shifter
    let k = kShifted - shifter
    let r = (c - k * 0.693359375) - k * -2.12194440e-4
    var p: Float = 1.0 / 5040
    p = p * r + 1.0 / 720
    p = p * r + 1.0 / 120
    p = p * r + 1.0 / 24
    p = p * r + 1.0 / 6
    p = p * r + 0.5
    p = p * r + 1
    p = p * r + 1
    let ki = Int32(bitPattern: kShifted.bitPattern) &- 0x4B40_0000  // k as an integer
    return p * Float(bitPattern: UInt32(bitPattern: (ki &+ 127) << 23))
}
