// BLAS.swift: loading OpenBLAS at run time and the one switch between the naive kernels and BLAS.
// Nothing is linked at build time: the same binary runs on a machine without OpenBLAS.

#if canImport(Glibc)
import Glibc
#elseif canImport(Darwin)
import Darwin
#endif
import Foundation

// MARK: - Run-time loading

/// A CBLAS library opened with `dlopen`, holding `cblas_sgemm` and `cblas_dgemm`.
public final class BLASLibrary: @unchecked Sendable {
    public typealias SGemm = @convention(c) (
        Int32, Int32, Int32, Int32, Int32, Int32, Float, UnsafePointer<Float>?, Int32,
        UnsafePointer<Float>?, Int32, Float, UnsafeMutablePointer<Float>?, Int32) -> Void
    public typealias DGemm = @convention(c) (
        Int32, Int32, Int32, Int32, Int32, Int32, Double, UnsafePointer<Double>?, Int32,
        UnsafePointer<Double>?, Int32, Double, UnsafeMutablePointer<Double>?, Int32) -> Void

    // CBLAS enum values (cblas.h)
    static let rowMajor: Int32 = 101
    static let noTrans: Int32 = 111
    static let trans: Int32 = 112

    /// Where it was found, e.g. `libopenblas.so.0`.
    public let name: String
    let sgemm: SGemm
    let dgemm: DGemm
    private let setThreads: (@convention(c) (Int32) -> Void)?
    private let getThreads: (@convention(c) () -> Int32)?
    private let getCore: (@convention(c) () -> UnsafePointer<CChar>?)?

    /// Tried in this order; the first that opens and exports both gemms wins.
    public static let candidates = ["libopenblas.so.0", "libopenblas.so", "libcblas.so.3", "libblas.so.3",
                                    "libopenblas.dylib"]

    /// The library loaded once per process, or nil when none of the candidates provides CBLAS
    /// (or when `HEADALIGN_NO_BLAS` is set: the way to run the naive-only path on a machine that
    /// has OpenBLAS, as CI does to test both).
    public static let shared: BLASLibrary? = {
        if ProcessInfo.processInfo.environment["HEADALIGN_NO_BLAS"] != nil { return nil }
        for name in candidates {
            if let lib = BLASLibrary(name: name) { return lib }
        }
        return nil
    }()

    private init?(name: String) {
        guard let handle = dlopen(name, RTLD_NOW | RTLD_LOCAL) else { return nil }
        guard let s = dlsym(handle, "cblas_sgemm"), let d = dlsym(handle, "cblas_dgemm") else {
            dlclose(handle)
            return nil
        }
        self.name = name
        self.sgemm = unsafeBitCast(s, to: SGemm.self)
        self.dgemm = unsafeBitCast(d, to: DGemm.self)
        self.setThreads = dlsym(handle, "openblas_set_num_threads").map {
            unsafeBitCast($0, to: (@convention(c) (Int32) -> Void).self)
        }
        self.getThreads = dlsym(handle, "openblas_get_num_threads").map {
            unsafeBitCast($0, to: (@convention(c) () -> Int32).self)
        }
        self.getCore = dlsym(handle, "openblas_get_corename").map {
            unsafeBitCast($0, to: (@convention(c) () -> UnsafePointer<CChar>?).self)
        }
        // the handle stays open for the life of the process
    }

    /// OpenBLAS's kernel family (its `openblas_get_corename`, e.g. "Haswell", "Cooperlake"), when
    /// exposed: bench and version print it, since `OPENBLAS_CORETYPE` in the environment overrides
    /// OpenBLAS's own choice (this project's machines set it to Haswell; docs/BENCHMARK.md).
    public var core: String? { getCore.flatMap { $0() }.map { String(cString: $0) } }

    /// "core NAME" for the logs, with the environment's `OPENBLAS_CORETYPE` when it chose it, and
    /// a hint when OpenBLAS fell back to pre-AVX kernels on a CPU that has AVX2: OpenBLAS 0.3.21
    /// does this on a virtual CPU it cannot name (seen 2026-12-01: "Intel(R) Xeon(R) Processor",
    /// core Prescott; `OPENBLAS_CORETYPE=Haswell` trained a MiniLM epoch 1.6x faster).
    public var coreDescription: String? {
        guard let core else { return nil }
        let forced = ProcessInfo.processInfo.environment["OPENBLAS_CORETYPE"].flatMap { $0.isEmpty ? nil : $0 }.map { " (OPENBLAS_CORETYPE=\($0) in the environment)" } ?? ""
        let preAVX: Set<String> = ["Prescott", "Core2", "Penryn", "Dunnington", "Nehalem", "Atom", "Katmai", "Coppermine", "Northwood", "Banias"]
        let hint = forced.isEmpty && preAVX.contains(core) && cpuHasAVX2()
            ? "; this CPU has AVX2: OPENBLAS_CORETYPE=Haswell (or SkylakeX) selects faster kernels" : ""
        return "core \(core)\(forced)\(hint)"
    }

    /// OpenBLAS's thread count, when the library exposes it.
    public var threads: Int? {
        get { getThreads.map { Int($0()) } }
    }

    public func setThreadCount(_ n: Int) { setThreads?(Int32(n)) }
}

// MARK: - The switch

/// Which kernels compute matrix products. `auto` on the command line resolves to `.blas` when a
/// library loads and to `.naive` otherwise.
public enum Backend: Sendable, CustomStringConvertible {
    case naive
    case blas(BLASLibrary)

    public var description: String {
        switch self {
        case .naive: return "naive"
        case .blas(let lib): return "blas (\(lib.name))"
        }
    }

    public var isBLAS: Bool { if case .blas = self { return true } else { return false } }

    /// Resolve a command-line name: `naive`, `blas` or `auto`.
    public static func named(_ name: String) throws -> Backend {
        switch name {
        case "naive": return .naive
        case "auto": return BLASLibrary.shared.map { .blas($0) } ?? .naive
        case "blas":
            guard let lib = BLASLibrary.shared else {
                throw HeadAlignError.usage(
                    "--backend blas: no CBLAS library could be loaded (tried \(BLASLibrary.candidates.joined(separator: ", "))); install it with 'apt-get install libopenblas-dev' or use --backend naive")
            }
            return .blas(lib)
        default:
            throw HeadAlignError.usage("--backend: '\(name)' is not one of naive, blas, auto")
        }
    }
}

/// `C[m,n] = alpha * op(A) op(B) + beta * C` on the chosen backend (row-major). Every matrix
/// product in the library goes through here. (Timed and counted when `GemmStats.shared.enabled`:
/// Counters.swift.)
@inline(__always)
public func gemm<S: Real>(_ backend: Backend, transA: Bool = false, transB: Bool = false,
                          m: Int, n: Int, k: Int, alpha: S = 1,
                          a: UnsafePointer<S>, lda: Int, b: UnsafePointer<S>, ldb: Int,
                          beta: S = 0, c: UnsafeMutablePointer<S>, ldc: Int) {
    let stats = GemmStats.shared, start = stats.enabled ? monotonicSeconds() : 0
    switch backend {
    case .naive:
        if S.self == Float.self {  // the same results, packed or register-blocked (FastMath.swift)
            floatGemm(transA: transA, transB: transB, m: m, n: n, k: k, alpha: alpha as! Float,
                      a: UnsafeRawPointer(a).assumingMemoryBound(to: Float.self), lda: lda,
                      b: UnsafeRawPointer(b).assumingMemoryBound(to: Float.self), ldb: ldb, beta: beta as! Float,
                      c: UnsafeMutableRawPointer(c).assumingMemoryBound(to: Float.self), ldc: ldc)
        } else {
            naiveGemm(transA: transA, transB: transB, m: m, n: n, k: k, alpha: alpha,
                      a: a, lda: lda, b: b, ldb: ldb, beta: beta, c: c, ldc: ldc)
        }
    case .blas(let lib):
        if m == 0 || n == 0 { return }
        blasGemm(lib, transA, transB, m, n, k, alpha, a, lda, b, ldb, beta, c, ldc)
    }
    if stats.enabled { stats.record(since: start, transA: transA, transB: transB, m: m, n: n, k: k) }
}

/// `cblas_sgemm` for Float, `cblas_dgemm` for Double (row-major). The type test is resolved when
/// the generic code is specialised, so no branch remains at run time.
@inline(__always)
func blasGemm<S: Real>(_ lib: BLASLibrary, _ transA: Bool, _ transB: Bool, _ m: Int, _ n: Int, _ k: Int, _ alpha: S,
                       _ a: UnsafePointer<S>, _ lda: Int, _ b: UnsafePointer<S>, _ ldb: Int, _ beta: S,
                       _ c: UnsafeMutablePointer<S>, _ ldc: Int) {
    let ta = transA ? BLASLibrary.trans : BLASLibrary.noTrans, tb = transB ? BLASLibrary.trans : BLASLibrary.noTrans
    if S.self == Float.self {
        lib.sgemm(BLASLibrary.rowMajor, ta, tb, Int32(m), Int32(n), Int32(k), alpha as! Float,
                  UnsafeRawPointer(a).assumingMemoryBound(to: Float.self), Int32(lda),
                  UnsafeRawPointer(b).assumingMemoryBound(to: Float.self), Int32(ldb), beta as! Float,
                  UnsafeMutableRawPointer(c).assumingMemoryBound(to: Float.self), Int32(ldc))
    } else if S.self == Double.self {
        lib.dgemm(BLASLibrary.rowMajor, ta, tb, Int32(m), Int32(n), Int32(k), alpha as! Double,
                  UnsafeRawPointer(a).assumingMemoryBound(to: Double.self), Int32(lda),
                  UnsafeRawPointer(b).assumingMemoryBound(to: Double.self), Int32(ldb), beta as! Double,
                  UnsafeMutableRawPointer(c).assumingMemoryBound(to: Double.self), Int32(ldc))
    } else {
        preconditionFailure("blasGemm: no BLAS routine for \(S.self)")
    }
}

/// Whether /proc/cpuinfo lists the avx2 flag (false where there is no /proc/cpuinfo).
func cpuHasAVX2() -> Bool { cpuFlags.contains("avx2") }
