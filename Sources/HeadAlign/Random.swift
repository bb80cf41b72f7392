// Random.swift: a small seeded generator, so that the same seed gives the same model, sample and
// batch order on every machine. Foundation's generators are not seedable, hence this one.

/// SplitMix64 (Steele, Lea & Flood 2014): 64-bit state, passes BigCrush, trivially seedable.
public struct SeededGenerator: RandomNumberGenerator, Sendable {
    private var state: UInt64

    public init(seed: UInt64) { state = seed }

    public mutating func next() -> UInt64 {
        state &+= 0x9E37_79B9_7F4A_7C15
        var z = state
        z = (z ^ (z >> 30)) &* 0xBF58_476D_1CE4_E5B9
        z = (z ^ (z >> 27)) &* 0x94D0_49BB_1331_11EB
        return z ^ (z >> 31)
    }

    /// Uniform in [0, 1) with 53 random bits.
    public mutating func uniform() -> Double {
        Double(next() >> 11) * 0x1.0p-53
    }

    /// Standard normal by Box–Muller (one of the pair; simple and exactly reproducible).
    public mutating func normal() -> Double {
        var u1 = uniform()
        while u1 <= 0 { u1 = uniform() }
        let u2 = uniform()
        return (-2 * Double.log(u1)).squareRoot() * cosine(2 * Double.pi * u2)
    }

    /// Uniform integer in 0..<n.
    public mutating func int(below n: Int) -> Int {
        precondition(n > 0, "SeededGenerator.int(below:): n must be positive, got \(n)")
        return Int(next() % UInt64(n))
    }
}

#if canImport(Glibc)
import Glibc
#elseif canImport(Darwin)
import Darwin
#endif

@inline(__always) private func cosine(_ x: Double) -> Double { cos(x) }
