// Safety.swift: Eq. 5, the safety score of each head from its similarity to other heads and its
// gradient importance, and the three classes. An empty safe or suspicious set is reported, not
// trapped on: the defense cannot run without both.

public enum HeadClass: String, Sendable {
    case safe, intermediate, suspicious
}

/// The result of Eq. 5 over a set of analysis inputs (heads indexed `l * NH + h`).
public struct SafetyReport: Sendable {
    public let maxsim: [Double]  // mean over inputs
    public let importance: [Double]  // G: mean over inputs of |<H, dL/dH>|
    public let normalizedImportance: [Double]  // G / max G (0 when every G is 0)
    public let safety: [Double]  // S
    public let classes: [HeadClass]
    public let alpha: Double, tau: Double
    public let heads: Int  // NH per layer

    public func ids(_ cls: HeadClass) -> [HeadID] {
        classes.indices.filter { classes[$0] == cls }.map { HeadID($0 / heads, $0 % heads) }
    }

    /// A one-line description of an empty class, or nil when both sets the defense needs exist.
    public var emptyClassReport: String? {
        let s = ids(.safe).count, u = ids(.suspicious).count
        guard s == 0 || u == 0 else { return nil }
        let lo = safety.min() ?? 0, hi = safety.max() ?? 0
        let which = [s == 0 ? "safe (S > \(1 - tau))" : nil, u == 0 ? "suspicious (S < \(tau))" : nil].compactMap { $0 }
        return "no \(which.joined(separator: " and no ")) heads: safety scores range over [\(String(format: "%.4f", lo)), \(String(format: "%.4f", hi))] with alpha \(alpha), tau \(tau)"
    }
}


/// Eq. 5: `S = 1 - [alpha * maxsim + (1 - alpha) * G / max_heads G]`.
public func safetyScores(maxsim: [Double], importance: [Double], alpha: Double) -> (safety: [Double], normalized: [Double]) {
    precondition(maxsim.count == importance.count, "safetyScores: \(maxsim.count) maxsim for \(importance.count) heads")
    let gMax = importance.max() ?? 0
    let normalized = importance.map { gMax > 0 ? $0 / gMax : 0 }
    let s = zip(maxsim, normalized).map { 1 - (alpha * $0 + (1 - alpha) * $1) }
    return (s, normalized)
}

/// Classes for `tau` in [0, 0.5]: `S < tau` suspicious, `S > 1 - tau` safe, else intermediate
/// (a score equal to either bound is intermediate).
public func classifyHeads(_ safety: [Double], tau: Double) -> [HeadClass] {
    safety.map { $0 < tau ? .suspicious : ($0 > 1 - tau ? .safe : .intermediate) }
}

/// Eq. 5 over the analysis inputs: `maxsim` and `G` averaged over them first.
public func safetyReport(_ analyses: [InputAnalysis], alpha: Double, tau: Double, heads: Int,
                         maxsimOverride: [Double]? = nil) -> SafetyReport {
    precondition(!analyses.isEmpty, "safetyReport: no inputs")
    let n = analyses[0].maxsim.count, count = Double(analyses.count)
    var maxsim = [Double](repeating: 0, count: n), g = maxsim
    for a in analyses {
        for k in 0..<n { maxsim[k] += a.maxsim[k] / count; g[k] += a.importance[k] / count }
    }
    let m = maxsimOverride ?? maxsim
    let (s, normalized) = safetyScores(maxsim: m, importance: g, alpha: alpha)
    return SafetyReport(maxsim: m, importance: g, normalizedImportance: normalized, safety: s,
                        classes: classifyHeads(s, tau: tau), alpha: alpha, tau: tau, heads: heads)
}

/// `--maxsim contrast`: `max_{j != h} max(0, cos(A^h, A^j) - mu_hj)` averaged over the inputs,
/// `mu_hj` the pair's mean cosine on clean calibration inputs (same view and scope), divided by its
/// maximum over heads, so that heads alike on every input (attention sinks) do not look suspicious.
public func contrastMaxsim(_ analyses: [InputAnalysis], cleanPairMeans mu: [Double], pairs: [(Int, Int)], headCount: Int) -> [Double] {
    var m = [Double](repeating: 0, count: headCount)
    for a in analyses {
        var perInput = [Double](repeating: 0, count: headCount)
        for (k, (i, j)) in pairs.enumerated() {
            let excess = max(0, a.pairCosines[k] - mu[k])
            perInput[i] = max(perInput[i], excess)
            perInput[j] = max(perInput[j], excess)
        }
        for h in 0..<headCount { m[h] += perInput[h] / Double(analyses.count) }
    }
    let top = m.max() ?? 0
    return m.map { top > 0 ? $0 / top : 0 }
}
