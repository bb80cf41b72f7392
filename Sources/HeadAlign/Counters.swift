// Counters.swift: what a timing run counts inside the kernels, kept out of their reading path: time and floating-point work spent in `gemm` and the product shapes (to replay against
// raw sgemm), and a monotonic clock. Off unless a timing run switches it on.

#if canImport(Glibc)
import Glibc
#elseif canImport(Darwin)
import Darwin
#endif

/// Time and floating-point work spent in `gemm` (fraction of time in GEMM, and the product
/// shapes to replay against raw sgemm). Off unless a timing run switches it on.
public final class GemmStats: @unchecked Sendable {
    public struct Shape: Hashable, Sendable {
        public let transA: Bool, transB: Bool, m: Int, n: Int, k: Int
    }
    public var enabled = false
    public var seconds = 0.0
    public var flops = 0.0
    public var calls = 0
    public var shapes: [Shape: Int] = [:]
    /// The same for `halfLinearForward` (weights read in their stored precision), with the weight bytes it read.
    public var halfSeconds = 0.0, halfBytes = 0.0
    public static let shared = GemmStats()

    public func reset() { seconds = 0; flops = 0; calls = 0; shapes = [:]; halfSeconds = 0; halfBytes = 0 }

    /// Counts one `halfLinearForward` that started at `start`.
    func recordHalf(since start: Double, weightBytes: Int) {
        halfSeconds += monotonicSeconds() - start
        halfBytes += Double(weightBytes)
    }

    /// Counts one `gemm` of the given shape that started at `start`.
    func record(since start: Double, transA: Bool, transB: Bool, m: Int, n: Int, k: Int) {
        seconds += monotonicSeconds() - start
        flops += 2 * Double(m) * Double(n) * Double(k)
        calls += 1
        shapes[Shape(transA: transA, transB: transB, m: m, n: n, k: k), default: 0] += 1
    }
}


/// Seconds on a monotonic clock.
public func monotonicSeconds() -> Double {
    var ts = timespec()
    clock_gettime(CLOCK_MONOTONIC, &ts)
    return Double(ts.tv_sec) + Double(ts.tv_nsec) * 1e-9
}
