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
        // the handle stays open for the life of the process
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

/// Time and floating-point work spent in `gemm`, for `headalign bench` (fraction of time in GEMM,
/// and the product shapes to replay against raw sgemm). Off unless a benchmark switches it on.
public final class GemmStats: @unchecked Sendable {
    public struct Shape: Hashable, Sendable {
        public let transA: Bool, transB: Bool, m: Int, n: Int, k: Int
    }
    public var enabled = false
    public var seconds = 0.0
    public var flops = 0.0
    public var calls = 0
    public var shapes: [Shape: Int] = [:]
    public static let shared = GemmStats()

    public func reset() { seconds = 0; flops = 0; calls = 0; shapes = [:] }
}

/// `C[m,n] = alpha * op(A) op(B) + beta * C` on the chosen backend (row-major). Every matrix
/// product in the library goes through here.
@inline(__always)
@_specialize(exported: true, where S == Float)
@_specialize(exported: true, where S == Double)
public func gemm<S: Real>(_ backend: Backend, transA: Bool = false, transB: Bool = false,
                          m: Int, n: Int, k: Int, alpha: S = 1,
                          a: UnsafePointer<S>, lda: Int, b: UnsafePointer<S>, ldb: Int,
                          beta: S = 0, c: UnsafeMutablePointer<S>, ldc: Int) {
    let stats = GemmStats.shared
    let start = stats.enabled ? monotonicSeconds() : 0
    switch backend {
    case .naive:
        naiveGemm(transA: transA, transB: transB, m: m, n: n, k: k, alpha: alpha,
                  a: a, lda: lda, b: b, ldb: ldb, beta: beta, c: c, ldc: ldc)
    case .blas(let lib):
        if m == 0 || n == 0 { return }
        S.blasGemm(lib, transA, transB, m, n, k, alpha, a, lda, b, ldb, beta, c, ldc)
    }
    if stats.enabled {
        stats.seconds += monotonicSeconds() - start
        stats.flops += 2 * Double(m) * Double(n) * Double(k)
        stats.calls += 1
        stats.shapes[GemmStats.Shape(transA: transA, transB: transB, m: m, n: n, k: k), default: 0] += 1
    }
}

/// Seconds on a monotonic clock.
public func monotonicSeconds() -> Double {
    var ts = timespec()
    clock_gettime(CLOCK_MONOTONIC, &ts)
    return Double(ts.tv_sec) + Double(ts.tv_nsec) * 1e-9
}
