// HeadAlignKernels: the naive backend's packed Float product, alone in a target for one reason:
// Package.swift compiles this target, on x86-64 in release builds, for AVX-512 (`-target-cpu
// skylake-avx512`), so `packedGemmAccumulateAVX512` runs 16-lane vectors; `packedGemmAccumulate` is
// emitted into each caller (`@_alwaysEmitIntoClient`) and compiled there with the caller's flags
// (HeadAlign: any x86-64, or whatever the build's architecture is). The same source, the same
// products added in the same order: the same bits. Each build is a specialisation for its own
// marker type (`Build`), so the two never share a symbol the linker could merge (an AVX-512 copy
// must not stand in for the generic one). Nothing here checks the CPU: HeadAlign (FastMath.swift,
// `FloatKernel`) calls the AVX-512 build only where /proc/cpuinfo lists its features. This target
// imports nothing, so no other code is built for AVX-512.

/// The build a specialisation of `packedGemmAccumulate` belongs to (its symbol names the type).
public protocol PackedGemmBuild {}

/// This target's build (AVX-512 on x86-64 in release builds).
public enum AVX512Build: PackedGemmBuild {}

/// `packedGemmAccumulate` compiled in this target (AVX-512 on x86-64 in release builds); call only
/// where the CPU has skylake-avx512's features (`FloatKernel.avx512Supported`).
public func packedGemmAccumulateAVX512(transA: Bool, transB: Bool, m: Int, n: Int, k: Int, alpha: Float,
                                       a: UnsafePointer<Float>, lda: Int, b: UnsafePointer<Float>, ldb: Int,
                                       c: UnsafeMutablePointer<Float>, ldc: Int) {
    packedGemmAccumulate(AVX512Build.self, transA: transA, transB: transB, m: m, n: n, k: k, alpha: alpha,
                         a: a, lda: lda, b: b, ldb: ldb, c: c, ldc: ldc)
}

/// `C += alpha op(A) op(B)` for Float, row-major (naiveGemm's product after its beta), packed and
/// cache-blocked as GotoBLAS does, without its reordering of sums: op(A) is copied once into panels
/// of 8 rows ([k][8], alpha applied), op(B) one panel of 32 columns at a time ([k][32]), zero-padded
/// at the edges; for each block of 256 values of p of that panel (32 KB, which stays in this
/// machine kind's 48 KB L1 cache) every A panel meets it in an 8 x 32 tile of C held in registers
/// (sixteen 16-lane registers in the AVX-512 build; the generic build's SSE has 16 four-lane ones
/// and spills some). Each element of C still receives the products `(alpha a_ip) b_pj` one at a
/// time in increasing p (a block adds its p's to what the previous block stored), so the result is
/// naiveGemm's bit for bit (TensorTests), with one exception shared with HeadAlign's `blockedGemm`:
/// a p where all 8 rows of a panel have a_ip = 0 is skipped (a causal attention matrix's future
/// keys), but a row whose a_ip is 0 while another row's is not adds `0 * b_pj`, which naiveGemm
/// skips; that differs only when b_pj is infinite or NaN (NaN instead of the sum) or when C holds
/// -0 (it becomes +0). Why: `blockedGemm` reads B straight from the caller's matrix, a row of B per
/// p, and on a layer's products (640 x 1536 x 384) that streamed B from beyond the L2 cache for
/// every 4 rows of C: 9 GFLOP/s where this runs at 19-20 (generic build) and 47-49 (AVX-512), 4-5 on
/// the 2,176-deep weight gradients where this runs at 20 and 36 (docs/BENCHMARK.md).
@_alwaysEmitIntoClient
public func packedGemmAccumulate<Build: PackedGemmBuild>(_: Build.Type, transA: Bool, transB: Bool, m: Int, n: Int, k: Int, alpha: Float,
                                 a: UnsafePointer<Float>, lda: Int, b: UnsafePointer<Float>, ldb: Int,
                                 c: UnsafeMutablePointer<Float>, ldc: Int) {
    typealias V = SIMD16<Float>
    if m == 0 || n == 0 || k == 0 { return }
    let rowsPerTile = 8, colsPerTile = 2 * V.scalarCount, pBlock = 256
    let aPanels = (m + rowsPerTile - 1) / rowsPerTile, bPanels = (n + colsPerTile - 1) / colsPerTile
    let packedA = UnsafeMutablePointer<Float>.allocate(capacity: aPanels * k * rowsPerTile)  // [aPanels][k][8]
    let packedB = UnsafeMutablePointer<Float>.allocate(capacity: k * colsPerTile)            // one B panel, [k][32]
    let edge = UnsafeMutablePointer<Float>.allocate(capacity: rowsPerTile * colsPerTile)      // a tile of C at the edges
    defer { packedA.deallocate(); packedB.deallocate(); edge.deallocate() }
    // op(A)[i][p] is a[i * rowStep + p * pStep]; a panel with a p where all its rows are zero checks every p
    let rowStep = transA ? 1 : lda, pStep = transA ? lda : 1
    let panelHasZeroStep = UnsafeMutablePointer<Bool>.allocate(capacity: aPanels)
    panelHasZeroStep.initialize(repeating: false, count: aPanels)
    defer { panelHasZeroStep.deallocate() }
    for q in 0..<aPanels {
        let panel = packedA + q * k * rowsPerTile, rows = min(rowsPerTile, m - q * rowsPerTile)
        for p in 0..<k {
            var allZero = true
            for r in 0..<rowsPerTile {
                let x: Float = r < rows ? alpha * a[(q * rowsPerTile + r) * rowStep + p * pStep] : 0
                panel[p * rowsPerTile + r] = x
                if x != 0 { allZero = false }
            }
            if allZero { panelHasZeroStep[q] = true }
        }
    }
    for qb in 0..<bPanels {
        // this B panel, packed: one panel at a time, so the copy is k x 32 however wide B is
        let cols = min(colsPerTile, n - qb * colsPerTile)
        for p in 0..<k {
            for j in 0..<colsPerTile {
                let col = qb * colsPerTile + j
                packedB[p * colsPerTile + j] = j >= cols ? 0 : transB ? b[col * ldb + p] : b[p * ldb + col]
            }
        }
        var p0 = 0
        while p0 < k {
            let steps = min(pBlock, k - p0)
            let bTile = UnsafePointer(packedB + p0 * colsPerTile)
            for qa in 0..<aPanels {
                let rows = min(rowsPerTile, m - qa * rowsPerTile)
                let aTile = UnsafePointer(packedA + (qa * k + p0) * rowsPerTile)
                let cTile = c + qa * rowsPerTile * ldc + qb * colsPerTile
                if rows == rowsPerTile && cols == colsPerTile {
                    gemmTile8x32(Build.self, aTile, bTile, steps, cTile, ldc, checkZeros: panelHasZeroStep[qa])
                } else {  // through a full-size copy, so the tile never reads or writes outside C
                    for r in 0..<rowsPerTile {
                        for j in 0..<colsPerTile { edge[r * colsPerTile + j] = r < rows && j < cols ? cTile[r * ldc + j] : 0 }
                    }
                    gemmTile8x32(Build.self, aTile, bTile, steps, edge, colsPerTile, checkZeros: panelHasZeroStep[qa])
                    for r in 0..<rows { for j in 0..<cols { cTile[r * ldc + j] = edge[r * colsPerTile + j] } }
                }
            }
            p0 += steps
        }
    }
}

/// Eight rows of C times 32 columns, for `steps` values of p: `a` is a packed A panel ([steps][8]),
/// `b` a packed B panel ([steps][32]); sixteen accumulators of 16 lanes, two per row.
@usableFromInline @_alwaysEmitIntoClient @inline(__always)
internal func gemmTile8x32<Build: PackedGemmBuild>(_: Build.Type, _ a: UnsafePointer<Float>, _ b: UnsafePointer<Float>, _ steps: Int,
                          _ c: UnsafeMutablePointer<Float>, _ ldc: Int, checkZeros: Bool) {
    typealias V = SIMD16<Float>
    @inline(__always) func load(_ p: UnsafeMutablePointer<Float>) -> V { UnsafeRawPointer(p).loadUnaligned(as: V.self) }
    @inline(__always) func store(_ p: UnsafeMutablePointer<Float>, _ v: V) { UnsafeMutableRawPointer(p).storeBytes(of: v, as: V.self) }
    let w = V.scalarCount
    var c00 = load(c), c01 = load(c + w), c10 = load(c + ldc), c11 = load(c + ldc + w)
    var c20 = load(c + 2 * ldc), c21 = load(c + 2 * ldc + w), c30 = load(c + 3 * ldc), c31 = load(c + 3 * ldc + w)
    var c40 = load(c + 4 * ldc), c41 = load(c + 4 * ldc + w), c50 = load(c + 5 * ldc), c51 = load(c + 5 * ldc + w)
    var c60 = load(c + 6 * ldc), c61 = load(c + 6 * ldc + w), c70 = load(c + 7 * ldc), c71 = load(c + 7 * ldc + w)
    for p in 0..<steps {
        let ap = a + 8 * p
        if checkZeros && UnsafeRawPointer(ap).loadUnaligned(as: SIMD8<Float>.self) == .zero { continue }
        let bp = UnsafeRawPointer(b + 2 * w * p)
        let b0 = bp.loadUnaligned(as: V.self), b1 = bp.loadUnaligned(fromByteOffset: 4 * w, as: V.self)
        var x = V(repeating: ap[0]); c00 += x * b0; c01 += x * b1
        x = V(repeating: ap[1]); c10 += x * b0; c11 += x * b1
        x = V(repeating: ap[2]); c20 += x * b0; c21 += x * b1
        x = V(repeating: ap[3]); c30 += x * b0; c31 += x * b1
        x = V(repeating: ap[4]); c40 += x * b0; c41 += x * b1
        x = V(repeating: ap[5]); c50 += x * b0; c51 += x * b1
        x = V(repeating: ap[6]); c60 += x * b0; c61 += x * b1
        x = V(repeating: ap[7]); c70 += x * b0; c71 += x * b1
    }
    store(c, c00); store(c + w, c01); store(c + ldc, c10); store(c + ldc + w, c11)
    store(c + 2 * ldc, c20); store(c + 2 * ldc + w, c21); store(c + 3 * ldc, c30); store(c + 3 * ldc + w, c31)
    store(c + 4 * ldc, c40); store(c + 4 * ldc + w, c41); store(c + 5 * ldc, c50); store(c + 5 * ldc + w, c51)
    store(c + 6 * ldc, c60); store(c + 6 * ldc + w, c61); store(c + 7 * ldc, c70); store(c + 7 * ldc + w, c71)
}
