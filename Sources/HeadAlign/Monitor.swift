// Monitor.swift: the online monitor. It calibrates per head pair on clean inputs, scores each
// incoming input by how far its head-similarity structure moved from clean, and flags inputs
// above a clean quantile (SPEC) or within a false-positive budget (ours); with known triggered
// inputs it reports AUROC, TPR and FPR.

import Foundation

/// The scores SPEC defines (`--score`).
public enum MonitorScore: String, CaseIterable, Sendable {
    case contrastAbsZ = "contrast-absz"  // mean |z| over pairs (default)
    case contrastZ = "contrast-z"  // mean of the k largest z
    case contrastFrac = "contrast-frac"  // fraction of pairs above their clean q-quantile
    case fracAbove = "frac-above"  // the paper's statistic, uncalibrated
    case p99  // the paper's statistic, uncalibrated
}

/// How the flagging threshold is read off the n clean calibration scores (`--fpr-budget`).
public enum FlagRule: Sendable, Equatable {
    /// SPEC: the q-quantile (numpy linear) of the scores. With n = 50 scores and q = 0.99 this is
    /// nearly the largest, and what it promises about false positives depends on n.
    case quantile
    /// Ours (issue 16): a false-positive budget alpha. The threshold is the k-th smallest of the n
    /// scores, k = ceil((n + 1)(1 - alpha)). A clean input exchangeable with the calibration inputs
    /// scores above it with probability (n + 1 - k) / (n + 1) <= alpha, whatever the scores'
    /// distribution (the split-conformal bound; ties only lower it). When k > n no threshold on n
    /// scores keeps the promise and nothing is flagged: alpha needs n >= 1/alpha - 1.
    case fprBudget(Double)
}

/// What a threshold at the k-th smallest of n clean scores promises about the false-positive
/// rate (FPR) on clean inputs like the calibration ones.
public struct FPRGuarantee: Sendable, Equatable {
    public let n: Int, k: Int  // k = n + 1: no threshold (nothing flagged)
    /// P(a new clean input is flagged), over calibration sets and inputs: (n + 1 - k) / (n + 1).
    public var expected: Double { Double(n + 1 - k) / Double(n + 1) }
    /// The FPR of this one calibration set is Beta(n + 1 - k, k)-distributed (continuous scores);
    /// its 90% quantile: the FPR stays below this for 9 calibration sets in 10.
    public var upper90: Double { k > n ? 0 : betaQuantile(a: n + 1 - k, b: k, p: 0.9) }
}

/// The split-conformal threshold of `scores` for budget `alpha`: the k-th smallest score,
/// k = ceil((n + 1)(1 - alpha)), or +infinity when k > n.
public func conformalThreshold(_ scores: [Double], alpha: Double) -> (threshold: Double, guarantee: FPRGuarantee) {
    let n = scores.count
    // 1e-9 below the product: (n + 1)(1 - alpha) in binary may land a hair above an integer
    let k = max(1, Int(((Double(n) + 1) * (1 - alpha) - 1e-9).rounded(.up)))
    let sorted = scores.sorted()
    return (k <= n ? sorted[k - 1] : .infinity, FPRGuarantee(n: n, k: min(k, n + 1)))
}

/// P(Bin(n, x) >= m): the CDF of Beta(m, n + 1 - m) at x, for integers 1 <= m <= n.
func binomialUpperTail(n: Int, m: Int, x: Double) -> Double {
    if x <= 0 { return 0 }
    if x >= 1 { return 1 }
    var total = 0.0
    for j in m...n {  // bounded by n
        let logTerm = lgamma(Double(n + 1)) - lgamma(Double(j + 1)) - lgamma(Double(n - j + 1))
            + Double(j) * log(x) + Double(n - j) * log1p(-x)
        total += exp(logTerm)
    }
    return min(1, total)
}

/// The p-quantile of Beta(a, b) for positive integers a, b, by bisection (60 halvings: below
/// 1e-15 of the interval).
public func betaQuantile(a: Int, b: Int, p: Double) -> Double {
    var lo = 0.0, hi = 1.0
    for _ in 0..<60 {
        let mid = (lo + hi) / 2
        if binomialUpperTail(n: a + b - 1, m: a, x: mid) < p { lo = mid } else { hi = mid }
    }
    return (lo + hi) / 2
}

/// Calibration: per-pair statistics from the first half of the clean inputs, the flagging
/// threshold (q-quantile of scores, or the budget's order statistic) from the second half.
public struct MonitorCalibration: Sendable {
    public let mean: [Double]  // mu_ij
    public let sd: [Double]  // population standard deviation
    public let quantile: [Double]  // c_ij
    public let q: Double
    /// contrast-z averages the k largest z (SPEC.md: k = 10).
    public static let defaultTopK = 10
    public let topK: Int
    public let threshold: Double  // 0.99 for frac-above's cosine threshold
    public let score: MonitorScore
    public let flagThreshold: Double
    public let cleanScores: [Double]  // the second half's
    public let rule: FlagRule
    /// With `.fprBudget`: what the threshold promises (nil for SPEC's quantile).
    public let guarantee: FPRGuarantee?

    /// `pairCosines`: one row per clean input (scope order). Needs at least 2 inputs.
    public init(clean pairCosines: [[Double]], score: MonitorScore, q: Double = 0.99, topK: Int = MonitorCalibration.defaultTopK,
                cosineThreshold: Double = 0.99, rule: FlagRule = .quantile) throws {
        guard pairCosines.count >= 2 else { throw HeadAlignError.usage("the monitor needs at least 2 clean inputs to calibrate") }
        let half = pairCosines.count / 2
        let first = Array(pairCosines[..<half]), second = Array(pairCosines[half...])
        let pairs = pairCosines[0].count
        var mean = [Double](repeating: 0, count: pairs), sd = mean, quant = mean
        for k in 0..<pairs {
            let column = first.map { $0[k] }
            let m = column.reduce(0, +) / Double(column.count)
            mean[k] = m
            sd[k] = (column.map { ($0 - m) * ($0 - m) }.reduce(0, +) / Double(column.count)).squareRoot()
            quant[k] = HeadAlign.quantile(column, q)
        }
        self.mean = mean; self.sd = sd; self.quantile = quant
        self.q = q; self.topK = topK; self.threshold = cosineThreshold; self.score = score
        let partial = MonitorCalibration(mean: mean, sd: sd, quantile: quant, q: q, topK: topK, threshold: cosineThreshold,
                                         score: score, flagThreshold: 0, cleanScores: [], rule: rule, guarantee: nil)
        let scores = second.map { partial.score(of: $0) }
        self.cleanScores = scores
        self.rule = rule
        switch rule {
        case .quantile:
            self.flagThreshold = HeadAlign.quantile(scores, q)
            self.guarantee = nil
        case .fprBudget(let alpha):
            (self.flagThreshold, self.guarantee) = conformalThreshold(scores, alpha: alpha)
        }
    }

    private init(mean: [Double], sd: [Double], quantile: [Double], q: Double, topK: Int, threshold: Double, score: MonitorScore,
                 flagThreshold: Double, cleanScores: [Double], rule: FlagRule, guarantee: FPRGuarantee?) {
        self.mean = mean; self.sd = sd; self.quantile = quantile; self.q = q; self.topK = topK
        self.threshold = threshold; self.score = score; self.flagThreshold = flagThreshold; self.cleanScores = cleanScores
        self.rule = rule; self.guarantee = guarantee
    }

    /// The same calibration scoring with another score (thresholds recomputed).
    public func with(score: MonitorScore, clean: [[Double]]) throws -> MonitorCalibration {
        try MonitorCalibration(clean: clean, score: score, q: q, topK: topK, cosineThreshold: threshold, rule: rule)
    }

    /// The threshold rule in words, for reports.
    public var ruleDescription: String {
        switch rule {
        case .quantile: return "q \(q) of \(cleanScores.count) clean scores"
        case .fprBudget(let alpha):
            guard let g = guarantee, g.k <= g.n else {
                // k <= n needs n >= (1 - alpha) / alpha, with conformalThreshold's tolerance
                let need = Int(((1 - alpha) / alpha - 1e-9).rounded(.up))
                return "FPR budget \(alpha): \(cleanScores.count) clean scores are too few (need \(need)); nothing flagged"
            }
            return String(format: "FPR budget %g: score %d of %d clean scores; expected FPR <= %.3f, <= %.3f for 9 calibrations in 10",
                          alpha, g.k, g.n, g.expected, g.upper90)
        }
    }

    /// One input's score from its pair cosines.
    public func score(of cos: [Double]) -> Double {
        precondition(cos.count == mean.count, "monitor: \(cos.count) pairs, calibrated on \(mean.count)")
        func z(_ k: Int) -> Double { (cos[k] - mean[k]) / (sd[k] + 1e-6) }
        switch score {
        case .contrastAbsZ:
            return cos.indices.map { abs(z($0)) }.reduce(0, +) / Double(max(cos.count, 1))
        case .contrastZ:
            let top = cos.indices.map(z).sorted(by: >).prefix(topK)
            return top.reduce(0, +) / Double(max(top.count, 1))
        case .contrastFrac:
            return Double(cos.indices.filter { cos[$0] > quantile[$0] }.count) / Double(max(cos.count, 1))
        case .fracAbove:
            return fractionAbove(cos, threshold: threshold)
        case .p99:
            return cos.isEmpty ? 0 : HeadAlign.quantile(cos, 0.99)
        }
    }

    public func flags(_ score: Double) -> Bool { score > flagThreshold }
}

/// Area under the ROC curve: the probability that a random triggered input scores above a random
/// clean one, ties counting one half.
public func auroc(clean: [Double], triggered: [Double]) -> Double {
    guard !clean.isEmpty, !triggered.isEmpty else { return .nan }
    var wins = 0.0
    for t in triggered { for c in clean { wins += t > c ? 1 : (t == c ? 0.5 : 0) } }
    return wins / Double(clean.count * triggered.count)
}

public struct DetectionMetrics: Sendable {
    public let auroc: Double
    public let tpr: Double  // triggered inputs flagged
    public let fpr: Double  // clean inputs flagged
}

public func detectionMetrics(_ cal: MonitorCalibration, clean: [Double], triggered: [Double]) -> DetectionMetrics {
    DetectionMetrics(auroc: auroc(clean: clean, triggered: triggered),
                     tpr: triggered.isEmpty ? .nan : Double(triggered.filter(cal.flags).count) / Double(triggered.count),
                     fpr: clean.isEmpty ? .nan : Double(clean.filter(cal.flags).count) / Double(clean.count))
}
