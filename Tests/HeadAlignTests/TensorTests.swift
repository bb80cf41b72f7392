// TensorTests.swift: the naive kernels by hand, and naive against BLAS on random shapes.

import XCTest
import HeadAlign
import HeadAlignLab

final class TensorTests: XCTestCase {
    /// A = [[1,2],[3,4]], B = [[5,6],[7,8]]:
    /// AB = [[19,22],[43,50]], A^T B = [[26,30],[38,44]], A B^T = [[17,23],[39,53]], A^T B^T = [[23,31],[34,46]].
    func testNaiveGemmByHand() {
        let a: [Double] = [1, 2, 3, 4], b: [Double] = [5, 6, 7, 8]
        let cases: [(Bool, Bool, [Double])] = [(false, false, [19, 22, 43, 50]), (true, false, [26, 30, 38, 44]),
                                               (false, true, [17, 23, 39, 53]), (true, true, [23, 31, 34, 46])]
        for (ta, tb, expected) in cases {
            var c = [Double](repeating: -1, count: 4)
            naiveGemm(transA: ta, transB: tb, m: 2, n: 2, k: 2, alpha: 1, a: a, lda: 2, b: b, ldb: 2, beta: 0, c: &c, ldc: 2)
            XCTAssertEqual(c, expected, "transA \(ta) transB \(tb)")
        }
        // alpha and beta: C = 2 AB + 0.5 C0 with C0 = ones
        var c = [Double](repeating: 1, count: 4)
        naiveGemm(transA: false, transB: false, m: 2, n: 2, k: 2, alpha: 2, a: a, lda: 2, b: b, ldb: 2, beta: 0.5, c: &c, ldc: 2)
        XCTAssertEqual(c, [38.5, 44.5, 86.5, 100.5])
    }

    /// Leading dimensions: a 2x2 block inside a 3-wide matrix.
    func testNaiveGemmLeadingDimensions() {
        let a: [Double] = [1, 2, 99, 3, 4, 99]  // [[1,2],[3,4]] with lda 3
        let b: [Double] = [5, 6, 7, 8]
        var c = [Double](repeating: 0, count: 6)
        naiveGemm(transA: false, transB: false, m: 2, n: 2, k: 2, alpha: 1, a: a, lda: 3, b: b, ldb: 2, beta: 0, c: &c, ldc: 3)
        XCTAssertEqual(c, [19, 22, 0, 43, 50, 0])
    }

    func testNaiveAndBLASAgreeOnRandomShapes() throws {
        let blas = try blasOrSkip()
        var rng = SeededGenerator(seed: 11)
        for trial in 0..<60 {
            let m = 1 + rng.int(below: 40), n = 1 + rng.int(below: 40), k = 1 + rng.int(below: 40)
            let ta = rng.int(below: 2) == 1, tb = rng.int(below: 2) == 1
            let pad = rng.int(below: 3)
            let lda = (ta ? m : k) + pad, ldb = (tb ? k : n) + pad, ldc = n + pad
            let aRows = ta ? k : m, bRows = tb ? n : k
            let beta = trial % 3 == 0 ? 0.0 : 0.5
            for precision in Precision.allCases {
                func run<S: Real>(_: S.Type) -> ([S], [S]) {
                    var g = SeededGenerator(seed: UInt64(trial))
                    let a: Tensor<S> = randomTensor([aRows * lda], &g), b: Tensor<S> = randomTensor([bRows * ldb], &g)
                    let c0: Tensor<S> = randomTensor([m * ldc], &g)
                    let c1 = c0.copy(), c2 = c0.copy()
                    gemm(.naive, transA: ta, transB: tb, m: m, n: n, k: k, alpha: S(1.5), a: a.data, lda: lda, b: b.data,
                         ldb: ldb, beta: S(beta), c: c1.data, ldc: ldc)
                    gemm(blas, transA: ta, transB: tb, m: m, n: n, k: k, alpha: S(1.5), a: a.data, lda: lda, b: b.data,
                         ldb: ldb, beta: S(beta), c: c2.data, ldc: ldc)
                    return (c1.array, c2.array)
                }
                if precision == .f32 {
                    let (x, y) = run(Float.self)
                    for (u, v) in zip(x, y) { assertClose(Double(u), Double(v), atol: 1e-5, rtol: 1e-5, "f32 trial \(trial)") }
                } else {
                    let (x, y) = run(Double.self)
                    for (u, v) in zip(x, y) { assertClose(u, v, atol: 1e-12, rtol: 1e-12, "f64 trial \(trial)") }
                }
            }
        }
    }

    /// The naive backend's small-product Float kernel (FastMath.swift's blockedGemm) is naiveGemm, bit for bit:
    /// random shapes around its tile sizes (4 rows, 8/4/2/1 columns), strides, both transposes,
    /// alpha and beta, and A with zero runs (a causal attention matrix's future keys, which both skip).
    func testBlockedGemmIsNaiveGemmBitForBit() {
        var rng = SeededGenerator(seed: 29)
        var compared = 0
        for trial in 0..<200 {
            let x = GemmCase(trial: trial, below: (19, 37, 23), causal: trial % 2 == 0, seed: 1000, &rng)
            XCTAssertEqual(x.bits(naiveGemm), x.bits(blockedGemm), x.label)
            compared += x.m * x.n
        }
        XCTAssertGreaterThan(compared, 10_000)
    }

    /// The naive backend's packed Float kernel (HeadAlignKernels) is naiveGemm, bit for bit, in both
    /// builds (generic, and AVX-512 where this CPU has it): shapes around its panels (8 rows, 32
    /// columns) and its p-blocks of 256 (k up to 600 on dense A, so a sum crosses one or two blocks),
    /// strides, both transposes, alpha and beta, and A with causal zero runs; `floatGemm`, which picks the
    /// packed or the register-blocked kernel by shape, likewise.
    func testPackedGemmIsNaiveGemmBitForBit() {
        let kernels: [FloatKernel] = FloatKernel.avx512Supported ? [.generic, .avx512] : [.generic]
        if !FloatKernel.avx512Supported { print("note: this CPU lacks AVX-512; only the packed kernel's generic build is compared") }
        var rng = SeededGenerator(seed: 31)
        var compared = 0, packedShapes = 0, deepDense = 0
        for trial in 0..<60 {
            // causal zeros on trial % 4 == 2; the deep trials (trial % 4 == 0, k up to 600) stay dense
            let x = GemmCase(trial: trial, below: (41, 100, trial % 4 == 0 ? 600 : 90), causal: trial % 4 == 2, seed: 2000, &rng)
            let want = x.bits(naiveGemm)
            for kernel in kernels {
                XCTAssertEqual(want, x.bits { packedGemm(kernel: kernel, transA: $0, transB: $1, m: $2, n: $3, k: $4, alpha: $5, a: $6, lda: $7,
                                                         b: $8, ldb: $9, beta: $10, c: $11, ldc: $12) }, "\(kernel) " + x.label)
            }
            XCTAssertEqual(want, x.bits(floatGemm), x.label)
            compared += x.m * x.n
            if FloatKernel.isPackedShape(m: x.m, n: x.n, k: x.k) { packedShapes += 1 }
            if trial % 4 == 0 && x.k > 256 { deepDense += 1 }  // a sum that crosses a p-block with nonzero products
        }
        XCTAssertGreaterThan(compared, 30_000)
        XCTAssertGreaterThan(packedShapes, 5, "floatGemm's packed branch must be among the shapes")
        XCTAssertGreaterThan(deepDense, 3, "sums across the 256-value p-blocks must be among the shapes")
    }

    /// The streamed decode's in-register half-to-Float conversion equals `halfToFloat` (by fields)
    /// on all 65,536 bit patterns: zeros, subnormals, normals, infinities, NaNs, both signs.
    func testF16x8EqualsHalfToFloatOnEveryPattern() {
        var patterns = (0..<65536).map { UInt16($0) }
        var mismatches = 0, nans = 0
        patterns.withUnsafeMutableBytes { raw in
            for g in 0..<8192 {
                let v = f16x8(raw.baseAddress! + 16 * g)
                for lane in 0..<8 {
                    let want = halfToFloat(UInt16(8 * g + lane)), got = v[lane]
                    if want.isNaN { nans += 1; if !got.isNaN { mismatches += 1 } } else if got.bitPattern != want.bitPattern { mismatches += 1 }
                }
            }
        }
        XCTAssertEqual(mismatches, 0)
        XCTAssertEqual(nans, 2 * 1023, "every NaN pattern was checked")
    }

    /// `halfLinearForward` (weights read in BF16, F16 or F32 where they lie) equals converting the
    /// weights and calling naiveGemm (x W^T), to Float rounding; each output row does not depend on
    /// the other rows of x or on the thread count (bit for bit), so a batch of prompts decodes as
    /// each prompt alone.
    func testHalfLinearForwardEqualsConvertThenGemm() throws {
        var rng = SeededGenerator(seed: 31)
        var compared = 0
        for trial in 0..<60 {
            let m = 1 + rng.int(below: 6), k = 1 + rng.int(below: 77), n = 1 + rng.int(below: 300)
            let dtype: SafetensorsDType = [.BF16, .F16, .F32][trial % 3]
            var g = SeededGenerator(seed: UInt64(2000 + trial))
            let w32: Tensor<Float> = randomTensor([n * k], &g), x: Tensor<Float> = randomTensor([m * k], &g)
            var stored = [UInt8]()
            for v in w32.array {
                switch dtype {
                case .BF16: withUnsafeBytes(of: UInt16(v.bitPattern >> 16).littleEndian) { stored += $0 }
                case .F16: withUnsafeBytes(of: Float16(v).bitPattern.littleEndian) { stored += $0 }
                default: withUnsafeBytes(of: v.bitPattern.littleEndian) { stored += $0 }
                }
            }
            let w = Tensor<Float>([n, k])
            try stored.withUnsafeBytes { try convert($0, dtype: dtype, into: w.data, count: n * k, what: "test") }
            let want = Tensor<Float>([m, n])
            naiveGemm(transA: false, transB: true, m: m, n: n, k: k, alpha: 1, a: x.data, lda: k, b: w.data, ldb: k, beta: 0, c: want.data, ldc: n)
            var runs: [[Float]] = []
            for threads in [1, 2] {
                let y = Tensor<Float>([m, n])
                stored.withUnsafeBytes { halfLinearForward(y.data, x.data, m: m, k: k, n: n, weight: $0.baseAddress!, dtype: dtype, threads: threads) }
                runs.append(y.array)
            }
            XCTAssertEqual(runs[0].map(\.bitPattern), runs[1].map(\.bitPattern), "trial \(trial): threads")
            for (u, v) in zip(want.array, runs[0]) { assertClose(Double(u), Double(v), atol: 1e-5, rtol: 1e-5, "trial \(trial) \(dtype) m \(m) k \(k) n \(n)") }
            // row i alone gives row i of the batch, bit for bit
            let i = rng.int(below: m), y1 = Tensor<Float>([1, n])
            stored.withUnsafeBytes { halfLinearForward(y1.data, x.data + i * k, m: 1, k: k, n: n, weight: $0.baseAddress!, dtype: dtype) }
            XCTAssertEqual(y1.array.map(\.bitPattern), Array(runs[0][(i * n)..<((i + 1) * n)]).map(\.bitPattern), "trial \(trial): row \(i) alone")
            compared += m * n
        }
        XCTAssertGreaterThan(compared, 5_000)
    }

    func testViewsAliasTheirBase() {
        let base = Tensor<Double>([6], [0, 1, 2, 3, 4, 5])
        let view = Tensor(viewOf: base, offset: 2, shape: [2, 2])
        XCTAssertEqual(view.array, [2, 3, 4, 5])
        view[0] = 20
        XCTAssertEqual(base[2], 20)
    }

    func testBackendNames() throws {
        XCTAssertEqual(try Backend.named("naive").description, "naive")
        XCTAssertThrowsError(try Backend.named("gpu")) { e in
            XCTAssertEqual((e as? HeadAlignError)?.exitStatus, 2)
            XCTAssertTrue("\(e)".contains("--backend"))
        }
        if BLASLibrary.shared == nil {
            XCTAssertThrowsError(try Backend.named("blas"))
            XCTAssertFalse(try Backend.named("auto").isBLAS)
        } else {
            XCTAssertTrue(try Backend.named("auto").isBLAS)
        }
    }

    func testSeededGeneratorIsReproducibleAndNormalish() {
        var a = SeededGenerator(seed: 42), b = SeededGenerator(seed: 42)
        let xs = (0..<20000).map { _ in a.normal() }
        XCTAssertEqual(xs, (0..<20000).map { _ in b.normal() })
        let mean = xs.reduce(0, +) / Double(xs.count)
        let variance = xs.map { ($0 - mean) * ($0 - mean) }.reduce(0, +) / Double(xs.count)
        assertClose(mean, 0, atol: 0.03)
        assertClose(variance, 1, atol: 0.05)
    }
}

/// One random product for the Float kernel tests: shape below `below` (m, n, k) from `rng`, both
/// transposes, padded leading dimensions, alpha and beta by `trial`, A (with causal zeros, op(A)[i][p]
/// = 0 for p > i, when `causal`), B and C from a generator seeded `seed + trial`.
private struct GemmCase {
    let m: Int, n: Int, k: Int, transA: Bool, transB: Bool, lda: Int, ldb: Int, ldc: Int, alpha: Float, beta: Float
    let a: Tensor<Float>, b: Tensor<Float>, c0: Tensor<Float>
    var label: String { "m \(m) n \(n) k \(k) transA \(transA) transB \(transB)" }

    init(trial: Int, below: (m: Int, n: Int, k: Int), causal: Bool, seed: UInt64, _ rng: inout SeededGenerator) {
        m = 1 + rng.int(below: below.m); n = 1 + rng.int(below: below.n); k = 1 + rng.int(below: below.k)
        transA = rng.int(below: 2) == 1; transB = rng.int(below: 2) == 1
        let pad = rng.int(below: 3)
        lda = (transA ? m : k) + pad; ldb = (transB ? k : n) + pad; ldc = n + pad
        alpha = [1, 1.5, -0.353553][trial % 3]; beta = [0, 1, 0.5][(trial / 3) % 3]
        var g = SeededGenerator(seed: seed + UInt64(trial))
        a = randomTensor([(transA ? k : m) * lda], &g); b = randomTensor([(transB ? n : k) * ldb], &g)
        if causal {
            for i in 0..<m { for p in 0..<k where p > i { a[transA ? p * lda + i : i * lda + p] = 0 } }
        }
        c0 = randomTensor([m * ldc], &g)
    }

    /// The bits of C after `product` computed alpha op(A) op(B) + beta C on a copy of the case's C.
    func bits(_ product: (Bool, Bool, Int, Int, Int, Float, UnsafePointer<Float>, Int, UnsafePointer<Float>, Int, Float,
                          UnsafeMutablePointer<Float>, Int) -> Void) -> [UInt32] {
        let c = c0.copy()
        product(transA, transB, m, n, k, alpha, a.data, lda, b.data, ldb, beta, c.data, ldc)
        return c.array.map(\.bitPattern)
    }
}
