// FastMath.swift: branch-free exp and erf for Float, so the loops of softmax, GELU and SiLU
// vectorise. Kept apart from the reading path: Tensor.swift's `Real` uses them for Float, and
// every formula in Ops.swift reads as if it called libm. Double keeps libm (the oracle's precision).
// Also the naive backend's register-blocked Float product, and the half-precision product of the
// streamed decode.

import Dispatch
#if canImport(Glibc)
import Glibc
#elseif canImport(Darwin)
import Darwin
#endif
#if canImport(HeadAlignKernels)
import HeadAlignKernels  // the packed kernel (a separate target only for its compiler flags); one module in the fuzz build
#endif

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

// MARK: - The naive backend's Float product

/// `naiveGemm` for Float, register-blocked; the naive backend runs it for every Float product
/// (`gemm` in BLAS.swift). C is computed in tiles of 4 rows x 8 columns held in registers while p
/// runs 0..<k, so each element of C receives the same products `(alpha a_ip) b_pj`, added one at
/// a time in the same order, as in naiveGemm's i-k-j loop: the results are bit-identical
/// (TensorTests checks it on random shapes, strides and causal zeros). Why: the i-k-j loop loads
/// and stores a row of C for every p, which costs most where rows are short and p runs long (a
/// training step's weight gradients, the 8-column per-head products); with this kernel the no-BLAS
/// demo went from 98.9 s to 76.0 s (docs/BENCHMARK.md; alone on 64x384x384 it is no faster).
/// Like naiveGemm it skips a p where every row of the tile has a_ip == 0 (the future keys of a
/// causal attention row); a row whose a_ip is 0 while others' are not adds `0 * b_pj`, which
/// differs from skipping only when B holds an infinity or a NaN, or when C holds -0 (it becomes +0).
public func blockedGemm(transA: Bool, transB: Bool, m: Int, n: Int, k: Int, alpha: Float,
                        a: UnsafePointer<Float>, lda: Int, b: UnsafePointer<Float>, ldb: Int,
                        beta: Float, c: UnsafeMutablePointer<Float>, ldc: Int) {
    scaleByBeta(c, m: m, n: n, ldc: ldc, beta: beta)
    if m == 0 || n == 0 || k == 0 { return }
    // op(A)[i][p] is a[i * rowStep + p * pStep]; op(B) is copied as [k, n] so its rows are contiguous
    let rowStep = transA ? 1 : lda, pStep = transA ? lda : 1
    var bScratch: UnsafeMutablePointer<Float>? = nil
    defer { bScratch?.deallocate() }
    var bRows = b, bStride = ldb
    if transB {
        let t = UnsafeMutablePointer<Float>.allocate(capacity: k * n)
        for j in 0..<n {
            for p in 0..<k { t[p * n + j] = b[j * ldb + p] }
        }
        bScratch = t; bRows = UnsafePointer(t); bStride = n
    }
    var i = 0
    while i + 4 <= m {
        var j = 0
        let ai = a + i * rowStep
        while j + 8 <= n { gemmTile4(SIMD8<Float>.self, ai, rowStep, pStep, alpha, k, bRows + j, bStride, c + i * ldc + j, ldc); j += 8 }
        while j + 4 <= n { gemmTile4(SIMD4<Float>.self, ai, rowStep, pStep, alpha, k, bRows + j, bStride, c + i * ldc + j, ldc); j += 4 }
        while j + 2 <= n { gemmTile4(SIMD2<Float>.self, ai, rowStep, pStep, alpha, k, bRows + j, bStride, c + i * ldc + j, ldc); j += 2 }
        if j < n {  // the last column
            for r in i..<(i + 4) {
                var s = c[r * ldc + j]
                for p in 0..<k {
                    let x = alpha * a[r * rowStep + p * pStep]
                    if x != 0 { s += x * bRows[p * bStride + j] }
                }
                c[r * ldc + j] = s
            }
        }
        i += 4
    }
    while i < m {  // the last rows, one at a time: naiveGemm's loop
        let ci = c + i * ldc
        for p in 0..<k {
            let x = alpha * a[i * rowStep + p * pStep]
            if x == 0 { continue }
            let bp = bRows + p * bStride
            for j in 0..<n { ci[j] += x * bp[j] }
        }
        i += 1
    }
}

/// Four rows of C times V.scalarCount columns of `blockedGemm`: `a` points at op(A)[i][0], `b` at
/// op(B)[0][j], `c` at C[i][j]; four accumulators, one per row.
@inline(__always)
private func gemmTile4<V: SIMD>(_: V.Type, _ a: UnsafePointer<Float>, _ rowStep: Int, _ pStep: Int, _ alpha: Float, _ k: Int,
                                _ b: UnsafePointer<Float>, _ ldb: Int, _ c: UnsafeMutablePointer<Float>, _ ldc: Int)
where V.Scalar == Float {
    let c0 = UnsafeMutableRawPointer(c), c1 = UnsafeMutableRawPointer(c + ldc)
    let c2 = UnsafeMutableRawPointer(c + 2 * ldc), c3 = UnsafeMutableRawPointer(c + 3 * ldc)
    var s0 = c0.loadUnaligned(as: V.self), s1 = c1.loadUnaligned(as: V.self)
    var s2 = c2.loadUnaligned(as: V.self), s3 = c3.loadUnaligned(as: V.self)
    for p in 0..<k {
        let ap = a + p * pStep
        let x0 = alpha * ap[0], x1 = alpha * ap[rowStep], x2 = alpha * ap[2 * rowStep], x3 = alpha * ap[3 * rowStep]
        if x0 == 0 && x1 == 0 && x2 == 0 && x3 == 0 { continue }
        let bp = UnsafeRawPointer(b + p * ldb).loadUnaligned(as: V.self)
        s0 += V(repeating: x0) * bp
        s1 += V(repeating: x1) * bp
        s2 += V(repeating: x2) * bp
        s3 += V(repeating: x3) * bp
    }
    c0.storeBytes(of: s0, as: V.self); c1.storeBytes(of: s1, as: V.self)
    c2.storeBytes(of: s2, as: V.self); c3.storeBytes(of: s3, as: V.self)
}

/// The naive backend's Float product (`gemm` in BLAS.swift picks it for Float): the packed kernel
/// (HeadAlignKernels) for a layer's large products (its linear maps and their gradients: at least
/// 8 rows, 64 columns and an inner dimension of 64), `blockedGemm` for the rest (per-head
/// products, single rows). Each is naiveGemm bit for bit except where B holds an infinity or a NaN
/// or C a -0 beside a zero of A (each kernel's comment says how), so the choice changes the time,
/// not a finite result.
public func floatGemm(transA: Bool, transB: Bool, m: Int, n: Int, k: Int, alpha: Float,
                      a: UnsafePointer<Float>, lda: Int, b: UnsafePointer<Float>, ldb: Int,
                      beta: Float, c: UnsafeMutablePointer<Float>, ldc: Int) {
    if FloatKernel.isPackedShape(m: m, n: n, k: k) {
        packedGemm(transA: transA, transB: transB, m: m, n: n, k: k, alpha: alpha, a: a, lda: lda, b: b, ldb: ldb, beta: beta, c: c, ldc: ldc)
    } else {
        blockedGemm(transA: transA, transB: transB, m: m, n: n, k: k, alpha: alpha, a: a, lda: lda, b: b, ldb: ldb, beta: beta, c: c, ldc: ldc)
    }
}

/// The packed kernel's two builds: the same Swift source (HeadAlignKernels' `packedGemmAccumulate`),
/// compiled for any x86-64 (SSE2) into this module, and for AVX-512 into HeadAlignKernels
/// (Package.swift gives that target alone `-target-cpu skylake-avx512`, in release builds). Swift
/// does not fuse a product and a sum unless asked, so both add the same products in the same order:
/// the same bits
/// (TensorTests); the AVX-512 one 2 to 2.5 times faster on this machine kind (docs/BENCHMARK.md).
public enum FloatKernel: String, Sendable {
    case generic, avx512

    /// Whether `floatGemm` gives an `m x k` by `k x n` product to the packed kernel: a layer's
    /// products (its linear maps and their gradients) are; per-head products and single rows are
    /// not. Where the cut lies: measured on this machine kind (docs/BENCHMARK.md), packing costs
    /// more than it saves below it.
    public static func isPackedShape(m: Int, n: Int, k: Int) -> Bool { m >= 8 && n >= 64 && k >= 64 }

    /// What this process runs: `avx512` when the CPU has every feature that build may use and
    /// `HEADALIGN_NO_AVX512` is not set (set to anything, even empty or 0: `generic`). Read once.
    public static let chosen: FloatKernel = avx512Supported && getenv("HEADALIGN_NO_AVX512") == nil ? .avx512 : .generic

    /// Whether the AVX-512 build can run here: Linux's /proc/cpuinfo lists each feature of
    /// skylake-avx512 that compiled Float code can use (lzcnt shows as `abm`); elsewhere false.
    public static let avx512Supported: Bool = {
        #if arch(x86_64)
        return ["avx512f", "avx512dq", "avx512cd", "avx512bw", "avx512vl", "avx2", "fma", "bmi1", "bmi2", "abm",
                "f16c", "movbe", "popcnt"].allSatisfy(cpuFlags.contains)
        #else
        return false
        #endif
    }()
}

/// The CPU feature flags of /proc/cpuinfo's first `flags` line (empty where there is none, as
/// off Linux). Read once; `FloatKernel` and the BLAS kernel hint (`cpuHasAVX2`) ask it.
let cpuFlags: Set<String> = {
    guard let f = fopen("/proc/cpuinfo", "r") else { return [] }
    defer { fclose(f) }
    var line: UnsafeMutablePointer<CChar>? = nil, capacity = 0
    defer { free(line) }
    while getline(&line, &capacity, f) > 0 {  // bounded by the file
        let text = String(cString: line!)
        guard text.hasPrefix("flags") else { continue }
        return Set(text.split(whereSeparator: { $0 == " " || $0 == "\t" || $0 == "\n" || $0 == ":" }).map(String.init))
    }
    return []
}()

/// This module's build of the packed kernel (any x86-64; HeadAlignKernels' header says why a type).
public enum GenericBuild: PackedGemmBuild {}

/// `C = alpha op(A) op(B) + beta C` by the packed kernel (HeadAlignKernels), in `kernel`'s build.
public func packedGemm(kernel: FloatKernel = .chosen, transA: Bool, transB: Bool, m: Int, n: Int, k: Int, alpha: Float,
                       a: UnsafePointer<Float>, lda: Int, b: UnsafePointer<Float>, ldb: Int,
                       beta: Float, c: UnsafeMutablePointer<Float>, ldc: Int) {
    scaleByBeta(c, m: m, n: n, ldc: ldc, beta: beta)
    if m == 0 || n == 0 || k == 0 { return }
    switch kernel {
    case .avx512:
        precondition(FloatKernel.avx512Supported, "packedGemm: this CPU lacks the AVX-512 build's features")
        packedGemmAccumulateAVX512(transA: transA, transB: transB, m: m, n: n, k: k, alpha: alpha, a: a, lda: lda, b: b, ldb: ldb, c: c, ldc: ldc)
    case .generic:
        packedGemmAccumulate(GenericBuild.self, transA: transA, transB: transB, m: m, n: n, k: k, alpha: alpha, a: a, lda: lda, b: b, ldb: ldb, c: c, ldc: ldc)
    }
}

// MARK: - Products read from half precision (the streamed decode)

/// Eight BF16 values to Float: a BF16 number is the top half of a Float's bits.
@inline(__always)
package func bf16x8(_ p: UnsafeRawPointer) -> SIMD8<Float> {
    let h = SIMD8<UInt32>(truncatingIfNeeded: p.loadUnaligned(as: SIMD8<UInt16>.self))
    return unsafeBitCast(h &<< 16, to: SIMD8<Float>.self)
}

/// Eight IEEE half-precision values to Float, in registers: the exponent and mantissa moved into a
/// Float's fields (shift by 13) and rescaled by 2^112 (the bias 127 - 15), which is exact for
/// normal and subnormal halves alike; infinities and NaNs keep an all-ones exponent; the sign is
/// copied. Equal to `halfToFloat` on every bit pattern (TensorTests checks all 65,536).
@inline(__always)
package func f16x8(_ p: UnsafeRawPointer) -> SIMD8<Float> {
    let h = SIMD8<UInt32>(truncatingIfNeeded: p.loadUnaligned(as: SIMD8<UInt16>.self))
    let magnitude = h & 0x7FFF, sign = (h & 0x8000) &<< 16
    let finite = unsafeBitCast(unsafeBitCast(magnitude &<< 13, to: SIMD8<Float>.self) * 0x1p112, to: SIMD8<UInt32>.self)
    let special = (magnitude &<< 13) | 0x7F80_0000
    return unsafeBitCast(finite.replacing(with: special, where: magnitude .>= 0x7C00) | sign, to: SIMD8<Float>.self)
}

/// `y = x W^T` for a few rows `x [m, K]` (Float) and a weight `W [N, K]` read where it lies, in
/// its stored precision (`dtype` BF16, F16 or F32; row-major, as a checkpoint stores a linear
/// layer). Why: generating one token is a matrix-vector product per weight matrix, bound by how
/// fast the weights stream from memory; converting a whole layer to Float32 first reads the half
/// precision bytes, writes twice as many and reads those again. Here each row of W is converted in
/// registers, eight values at a time, and dotted with all m rows of x while it is in cache, so B
/// prompts decoded together read the weights once. Each output is summed by one thread in a
/// fixed order (four accumulators of eight lanes over p, then the lanes, then the tail), so the result does not depend
/// on m, on which other rows are in x, or on the thread count. Rows of W are split across
/// `threads` workers. Meant for small m (decoding); prefill and backward convert and call `gemm`.
package func halfLinearForward(_ y: UnsafeMutablePointer<Float>, _ x: UnsafePointer<Float>, m: Int, k: Int, n: Int,
                               weight: UnsafeRawPointer, dtype: SafetensorsDType, threads: Int = 2) {
    precondition(dtype == .BF16 || dtype == .F16 || dtype == .F32, "halfLinearForward: \(dtype)")
    let start = GemmStats.shared.enabled ? monotonicSeconds() : 0
    let bytes = dtype.bits / 8, k32 = k - k % 32, k8 = k - k % 8
    let shared = HalfLinearPointers(y: y, x: x, w: weight)
    @Sendable @inline(__always) func load8(_ row: UnsafeRawPointer, _ p: Int) -> SIMD8<Float> {
        switch dtype {
        case .BF16: return bf16x8(row + 2 * p)
        case .F16: return f16x8(row + 2 * p)
        default: return row.loadUnaligned(fromByteOffset: 4 * p, as: SIMD8<Float>.self)
        }
    }
    @Sendable @inline(__always) func xs8(_ i: Int, _ p: Int) -> SIMD8<Float> { UnsafeRawPointer(shared.x + i * k + p).loadUnaligned(as: SIMD8<Float>.self) }
    @Sendable func rows(_ range: Range<Int>) {
        // four accumulators per row of x (p in blocks of 32: lanes of p % 32 in 0..<8 to the first,
        // 8..<16 to the second, ...): four independent chains of additions keep the core busy
        withUnsafeTemporaryAllocation(of: SIMD8<Float>.self, capacity: 4 * m) { acc in
            for j in range {
                let row = shared.w + j * k * bytes
                for a in 0..<(4 * m) { acc[a] = .zero }
                var p = 0
                while p < k32 {  // the weights' 32 values, converted once, meet every row of x
                    let w0 = load8(row, p), w1 = load8(row, p + 8), w2 = load8(row, p + 16), w3 = load8(row, p + 24)
                    for i in 0..<m {
                        acc[4 * i] += w0 * xs8(i, p)
                        acc[4 * i + 1] += w1 * xs8(i, p + 8)
                        acc[4 * i + 2] += w2 * xs8(i, p + 16)
                        acc[4 * i + 3] += w3 * xs8(i, p + 24)
                    }
                    p += 32
                }
                while p < k8 {  // what is left in blocks of 8, to the first accumulator
                    let w0 = load8(row, p)
                    for i in 0..<m { acc[4 * i] += w0 * xs8(i, p) }
                    p += 8
                }
                for i in 0..<m {
                    var s = ((acc[4 * i] + acc[4 * i + 1]) + (acc[4 * i + 2] + acc[4 * i + 3])).sum()
                    for q in k8..<k {
                        let wq: Float
                        switch dtype {
                        case .BF16: wq = Float(bitPattern: UInt32(row.loadUnaligned(fromByteOffset: 2 * q, as: UInt16.self)) << 16)
                        case .F16: wq = halfToFloat(row.loadUnaligned(fromByteOffset: 2 * q, as: UInt16.self))
                        default: wq = row.loadUnaligned(fromByteOffset: 4 * q, as: Float.self)
                        }
                        s += wq * shared.x[i * k + q]
                    }
                    shared.y[i * n + j] = s
                }
            }
        }
    }
    let parts = max(1, min(threads, n / 64))
    if parts == 1 {
        rows(0..<n)
    } else {
        let size = (n + parts - 1) / parts
        DispatchQueue.concurrentPerform(iterations: parts) { t in rows((t * size)..<min(n, (t + 1) * size)) }
    }
    if GemmStats.shared.enabled { GemmStats.shared.recordHalf(since: start, weightBytes: n * k * bytes) }
}

/// The pointers `halfLinearForward`'s workers share (each writes its own rows of y).
struct HalfLinearPointers: @unchecked Sendable {
    let y: UnsafeMutablePointer<Float>, x: UnsafePointer<Float>, w: UnsafeRawPointer
}
