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
    /// Ours (issue 16): heads locking onto one token. Mean over heads of max(z_h, 0), z_h each
    /// head's column focus (`columnFocus`) against clean inputs of the same length (a least-squares
    /// fit on 1, T, 1/T over the first calibration half: short inputs concentrate attention by
    /// themselves). Not a pair statistic: it reads `monitorReading`'s focus row.
    case focus

    /// Whether the score reads each head's focus (`monitorReading`) rather than the pair cosines.
    public var readsFocus: Bool { self == .focus }
}

/// What `score` reads of one analysed input: the pair cosines (Eq. 3), or for `focus` each head's
/// column focus followed by the token count T.
public func monitorReading(_ a: InputAnalysis, score: MonitorScore) -> [Double] {
    score.readsFocus ? a.columnFocus + [Double(a.tokens.count)] : a.pairCosines
}

/// Least squares of y on (1, T, 1/T): the coefficients, by the normal equations (3 x 3, Gaussian
/// elimination with partial pivoting). A term that the lengths cannot separate (all T equal, or
/// fewer than 3 distinct) is dropped in turn (1/T, then T), leaving the mean.
public func lengthFit(_ y: [Double], lengths: [Double]) -> [Double] {
    for terms in [3, 2, 1] {
        let x = lengths.map { t in Array([1, t, 1 / t].prefix(terms)) }
        var a = (0..<terms).map { r in (0..<terms).map { c in x.indices.map { x[$0][r] * x[$0][c] }.reduce(0, +) } }
        var b = (0..<terms).map { r in x.indices.map { x[$0][r] * y[$0] }.reduce(0, +) }
        var singular = false
        for col in 0..<terms {
            let pivot = (col..<terms).max { abs(a[$0][col]) < abs(a[$1][col]) }!
            if abs(a[pivot][col]) <= 1e-10 * max(1, abs(a[0][0])) { singular = true; break }
            a.swapAt(col, pivot); b.swapAt(col, pivot)
            for r in 0..<terms where r != col {
                let f = a[r][col] / a[col][col]
                for k in col..<terms { a[r][k] -= f * a[col][k] }
                b[r] -= f * b[col]
            }
        }
        if !singular { return (0..<3).map { $0 < terms ? b[$0] / a[$0][$0] : 0 } }
    }
    return [0, 0, 0]  // no inputs
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
    /// `focus` only: per head, the fit (1, T, 1/T) of its column focus on clean inputs; `mean` is
    /// then 0 and `sd` the residuals' standard deviation.
    public let lengthFits: [[Double]]
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

    /// `readings`: one per clean input (`monitorReading`: the pair cosines in scope order,
    /// or for `focus` the heads' column focus and T). Needs at least 2 inputs.
    public init(clean readings: [[Double]], score: MonitorScore, q: Double = 0.99, topK: Int = MonitorCalibration.defaultTopK,
                cosineThreshold: Double = 0.99, rule: FlagRule = .quantile) throws {
        guard readings.count >= 2 else { throw HeadAlignError.usage("the monitor needs at least 2 clean inputs to calibrate") }
        let half = readings.count / 2
        let first = Array(readings[..<half]), second = Array(readings[half...])
        // focus: the last entry of a reading is T, not a feature
        let pairs = readings[0].count - (score.readsFocus ? 1 : 0)
        var mean = [Double](repeating: 0, count: pairs), sd = mean, quant = mean, fits: [[Double]] = []
        for k in 0..<pairs {
            let column = first.map { $0[k] }
            if score.readsFocus {  // the residual of the length fit
                let lengths = first.map { $0[pairs] }, fit = lengthFit(column, lengths: lengths)
                let residual = column.indices.map { column[$0] - (fit[0] + fit[1] * lengths[$0] + fit[2] / lengths[$0]) }
                fits.append(fit)
                sd[k] = (residual.map { $0 * $0 }.reduce(0, +) / Double(residual.count)).squareRoot()
                continue
            }
            let m = column.reduce(0, +) / Double(column.count)
            mean[k] = m
            sd[k] = (column.map { ($0 - m) * ($0 - m) }.reduce(0, +) / Double(column.count)).squareRoot()
            quant[k] = HeadAlign.quantile(column, q)
        }
        self.mean = mean; self.sd = sd; self.quantile = quant; self.lengthFits = fits
        self.q = q; self.topK = topK; self.threshold = cosineThreshold; self.score = score
        let partial = MonitorCalibration(mean: mean, sd: sd, quantile: quant, lengthFits: fits, q: q, topK: topK, threshold: cosineThreshold,
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

    private init(mean: [Double], sd: [Double], quantile: [Double], lengthFits: [[Double]], q: Double, topK: Int, threshold: Double,
                 score: MonitorScore, flagThreshold: Double, cleanScores: [Double], rule: FlagRule, guarantee: FPRGuarantee?) {
        self.mean = mean; self.sd = sd; self.quantile = quantile; self.lengthFits = lengthFits; self.q = q; self.topK = topK
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

    /// One input's score from its reading (`monitorReading`: pair cosines, or for `focus` the
    /// heads' column focus and T).
    public func score(of cos: [Double]) -> Double {
        let features = cos.count - (score.readsFocus ? 1 : 0)
        precondition(features == mean.count, "monitor: \(features) features, calibrated on \(mean.count)")
        func z(_ k: Int) -> Double { (cos[k] - mean[k]) / (sd[k] + 1e-6) }
        switch score {
        case .focus:
            return headZ(of: cos).map { max($0, 0) }.reduce(0, +) / Double(max(features, 1))
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

    /// `focus` only: each head's z, its column focus against clean inputs of the same length,
    /// `z_h = (F_h - (b0 + b1 T + b2 / T)) / sd_h`, from a reading `[F_1 ... F_H, T]`, `[H]`.
    public func headZ(of reading: [Double]) -> [Double] {
        precondition(score.readsFocus, "headZ: a \(score.rawValue) calibration has no per-head fits")
        let heads = reading.count - 1, t = reading[heads]
        precondition(heads == lengthFits.count, "monitor: \(heads) heads, calibrated on \(lengthFits.count)")
        return (0..<heads).map { h in
            (reading[h] - (lengthFits[h][0] + lengthFits[h][1] * t + lengthFits[h][2] / t)) / (sd[h] + 1e-6)
        }
    }
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
