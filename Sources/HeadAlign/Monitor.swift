// Monitor.swift: the online monitor. It calibrates per head pair on clean inputs, scores each
// incoming input by how far its head-similarity structure moved from clean, and flags inputs
// above a clean quantile; with known triggered inputs it reports AUROC, TPR and FPR.

/// The scores SPEC defines (`--score`).
public enum MonitorScore: String, CaseIterable, Sendable {
    case contrastAbsZ = "contrast-absz"  // mean |z| over pairs (default)
    case contrastZ = "contrast-z"  // mean of the k largest z
    case contrastFrac = "contrast-frac"  // fraction of pairs above their clean q-quantile
    case fracAbove = "frac-above"  // the paper's statistic, uncalibrated
    case p99  // the paper's statistic, uncalibrated
}

/// Calibration: per-pair statistics from the first half of the clean inputs, the flagging
/// threshold (q-quantile of scores) from the second half.
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

    /// `pairCosines`: one row per clean input (scope order). Needs at least 2 inputs.
    public init(clean pairCosines: [[Double]], score: MonitorScore, q: Double = 0.99, topK: Int = MonitorCalibration.defaultTopK,
                cosineThreshold: Double = 0.99) throws {
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
                                         score: score, flagThreshold: 0, cleanScores: [])
        let scores = second.map { partial.score(of: $0) }
        self.cleanScores = scores
        self.flagThreshold = HeadAlign.quantile(scores, q)
    }

    private init(mean: [Double], sd: [Double], quantile: [Double], q: Double, topK: Int, threshold: Double, score: MonitorScore,
                 flagThreshold: Double, cleanScores: [Double]) {
        self.mean = mean; self.sd = sd; self.quantile = quantile; self.q = q; self.topK = topK
        self.threshold = threshold; self.score = score; self.flagThreshold = flagThreshold; self.cleanScores = cleanScores
    }

    /// The same calibration scoring with another score (thresholds recomputed).
    public func with(score: MonitorScore, clean: [[Double]]) throws -> MonitorCalibration {
        try MonitorCalibration(clean: clean, score: score, q: q, topK: topK, cosineThreshold: threshold)
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
