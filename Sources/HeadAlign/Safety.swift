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
    public var rule: ClassRule = .tau  // the rule that made the classes (`.tau` when `.focus` or `.columnFocus` fell back)
    public var focusShift: [Double]? = nil  // per head, when measured: Delta (`focusShift`) or Z (`columnFocusShift`)

    public func ids(_ cls: HeadClass) -> [HeadID] {
        classes.indices.filter { classes[$0] == cls }.map { HeadID($0 / heads, $0 % heads) }
    }

    /// A one-line description of an empty class, or nil when both sets the defense needs exist.
    public var emptyClassReport: String? {
        let s = ids(.safe).count, u = ids(.suspicious).count
        guard s == 0 || u == 0 else { return nil }
        let lo = safety.min() ?? 0, hi = safety.max() ?? 0
        let bounds: (safe: String, suspicious: String, with: String)
        switch rule {
        case .tau: bounds = ("S > \(1 - tau)", "S < \(tau)", "tau \(tau)")
        case .outliers(let z): bounds = ("robust z >= -1", "robust z < -\(z)", "the outlier rule")
        case .focus: bounds = ("focus shift < \(focusSafeShift)", "focus shift >= \(focusSuspiciousShift)", "the focus rule")
        case .columnFocus: bounds = ("column-focus Z < \(columnFocusSafeZ)", "column-focus Z >= \(columnFocusSuspiciousZ)", "the column-focus rule")
        }
        let which = [s == 0 ? "safe (\(bounds.safe))" : nil, u == 0 ? "suspicious (\(bounds.suspicious))" : nil].compactMap { $0 }
        return "no \(which.joined(separator: " and no ")) heads: safety scores range over [\(String(format: "%.4f", lo)), \(String(format: "%.4f", hi))] with alpha \(alpha), \(bounds.with)"
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

/// How Eq. 5's scores become classes.
public enum ClassRule: Sendable, Equatable {
    /// The paper's fixed bounds (`classifyHeads`).
    case tau
    /// Ours: classes sized by the evidence (`classifyOutliers`).
    case outliers(z: Double)
    /// Ours (issue 15): classes from how far the flagged inputs move each head's attention onto one
    /// ordinary token, against clean inputs (`focusShift`, `classifyFocus`); Eq. 5 with `tau` when
    /// fewer than `focusMinHeads` heads move that far (the trigger is not one token several heads read).
    case focus
    /// Ours (issues 15 and 16): classes from how far the flagged inputs raise each head's column
    /// focus (many rows on one ordinary token), in clean standard deviations at the input's length
    /// (`columnFocusShift`, `classifyColumnFocus`); Eq. 5 with `tau` when fewer than
    /// `focusMinHeads` heads rise that far. For triggers that are a form, not a token.
    case columnFocus

    /// 3 robust standard deviations: the usual cut for an outlier. Measured in docs/RESULTS.md §6.
    public static let defaultZ = 3.0
    /// The outlier cut, or nil for the fixed-`tau` rule.
    public var z: Double? { if case .outliers(let z) = self { return z } else { return nil } }
    /// The rule's name on the command line.
    public var name: String {
        switch self {
        case .tau: return "tau"
        case .outliers: return "outliers"
        case .focus: return "focus"
        case .columnFocus: return "column-focus"
        }
    }
}

/// Evidence-sized classes (ours; SPEC lets the default be such a rule, with the fixed-`tau` rule
/// one flag away). The robust z-score of each head's S against all heads,
/// `z = (S - median S) / (1.4826 * MAD)`: suspicious when `z < -zCut` (an outlier below the
/// rest: the few heads a trigger hijacks), safe when `z >= -1` (within about one standard
/// deviation of the typical head, or above it), intermediate in between (the undecided).
/// Why: `tau` 0.5 has no intermediate class and splits every head into two camps whatever the
/// evidence — 52 of 72 MiniLM heads suspicious on HiddenKiller and on a text-style trigger, where
/// aligning them to the other 20 left the model worse than no defense. An outlier rule finds few
/// heads when few stand out, and none when none do (then the defense reports an empty set).
/// A MAD of 0 (half the heads share one score) makes every other head an outlier; the rule then
/// falls back to the standard deviation.
public func classifyOutliers(_ safety: [Double], z zCut: Double) -> [HeadClass] {
    let z = robustZ(safety)
    return z.map { $0 < -zCut ? .suspicious : ($0 >= -1 ? .safe : .intermediate) }
}

/// `(x - median) / (1.4826 * MAD)`, or `(x - mean) / sd` when the MAD is 0; all 0 when both are.
public func robustZ(_ x: [Double]) -> [Double] {
    func median(_ v: [Double]) -> Double {
        let s = v.sorted(), n = s.count
        return n == 0 ? 0 : n % 2 == 1 ? s[n / 2] : (s[n / 2 - 1] + s[n / 2]) / 2
    }
    let m = median(x), mad = 1.4826 * median(x.map { abs($0 - m) })
    if mad > 0 { return x.map { ($0 - m) / mad } }
    let mean = x.reduce(0, +) / Double(max(1, x.count))
    let sd = (x.map { ($0 - mean) * ($0 - mean) }.reduce(0, +) / Double(max(1, x.count))).squareRoot()
    return sd > 0 ? x.map { ($0 - mean) / sd } : x.map { _ in 0 }
}

/// The classes of `safety` under `rule`.
public func classes(_ safety: [Double], rule: ClassRule, tau: Double) -> [HeadClass] {
    switch rule {
    case .tau, .focus, .columnFocus: return classifyHeads(safety, tau: tau)  // focus without a shift: Eq. 5 with tau
    case .outliers(let z): return classifyOutliers(safety, z: z)
    }
}

/// A head's focus on one input: in the view's rows, the largest attention on an ordinary token,
/// averaged over the rows, `[headCount]`. Ordinary: not a rest position, where heads park their
/// attention when they have nothing to read (the first token, [CLS] or a decoder's BOS, and for
/// BERT the closing [SEP]); these are the tokenizer's, not the trigger's, so the defender knows them.
public func focus(_ a: InputAnalysis, view: AnalysisView, family: ModelFamily) -> [Double] {
    let t = a.tokens.count
    let (rows, cols) = view.block(tokens: t, promptLength: a.promptLength)
    let rest = restPositions(tokens: t, family: family)
    let ordinary = cols.enumerated().filter { !rest.contains($0.element) }.map(\.offset)  // column offsets in the block
    return a.views.map { v in
        guard !ordinary.isEmpty else { return 0 }
        var sum = 0.0
        for r in 0..<rows.count {
            var top = 0.0
            for k in ordinary { top = max(top, v[r * cols.count + k]) }
            sum += top
        }
        return sum / Double(rows.count)
    }
}

/// The positions where heads park their attention (`focus`): the first token, and for BERT the closing [SEP].
public func restPositions(tokens t: Int, family: ModelFamily) -> Set<Int> { family == .bert ? [0, t - 1] : [0] }

/// A head's column focus on one input (ours, issue 16; the `focus` monitor score reads it): the
/// largest share of attention that the rows of the whole `[T, T]` map put, on average, on one
/// ordinary key, `max_j (1/T) sum_i A[i, j]` over keys j that are not rest positions (0 when
/// there is none). `focus` takes each row's own largest entry; this asks whether the rows agree on
/// one token, as they do when many rows of a head lock onto a trigger. Read from the whole map
/// whatever the view, so the monitor sees every row: on three HiddenKiller MiniLMs the trigger's
/// syntactic form draws the rows of many heads onto the first word, which the [CLS] row alone
/// shows weakly (docs/RESULTS.md, section 17).
public func columnFocus<S: Real>(_ map: UnsafePointer<S>, tokens t: Int, family: ModelFamily) -> Double {
    let rest = restPositions(tokens: t, family: family)
    var best = 0.0
    for j in 0..<t where !rest.contains(j) {
        var column = 0.0
        for i in 0..<t { column += Double(map[i * t + j]) }
        best = max(best, column / Double(t))
    }
    return best
}

/// `Delta_h`: the mean focus over the flagged inputs minus the mean over clean inputs (both in the
/// monitor's view, where the model reads), `[headCount]`. A head a trigger token hijacks moves most
/// of its attention onto it: on three BadNets MiniLMs (docs/RESULTS.md §15; 100 triggered test
/// sentences against 300 clean ones) 27 of the 28 heads whose [CLS] row puts more than half its
/// attention on the trigger word moved 0.34–0.87 (C's 5:9, at 0.52, moved 0.15), no head of layers
/// 0–3 moved 0.1; on two HiddenKiller MiniLMs (a syntactic trigger, no token) no head moved 0.25.
public func focusShift(flagged: [[Double]], clean: [[Double]]) -> [Double] {
    precondition(!flagged.isEmpty && !clean.isEmpty, "focusShift: no inputs")
    let n = flagged[0].count
    func mean(_ rows: [[Double]], _ h: Int) -> Double { rows.map { $0[h] }.reduce(0, +) / Double(rows.count) }
    return (0..<n).map { mean(flagged, $0) - mean(clean, $0) }
}

/// The bounds of `classifyFocus`. Suspicious: the flagged inputs moved at least a quarter of the
/// head's attention onto one ordinary token. Safe: less than a tenth. In between: intermediate
/// (partly drawn to it: neither aligned nor a reference). Round numbers, set after looking at the
/// shifts above on all five MiniLMs (not at any defense result); docs/RESULTS.md §15 says so.
public let focusSuspiciousShift = 0.25, focusSafeShift = 0.1

/// The fewest heads whose shift reaches `focusSuspiciousShift` for the focus classes to be used.
/// The paper's premise is that *several* heads lock onto the trigger together; one head drawn to
/// one token is not that pattern. On the HiddenKiller MiniLM D (a syntactic trigger) one head moved
/// 0.25 on every seed, the rule aligned it alone, and ASR was 64.0% where Eq. 5's `tau` left 44.3%
/// (docs/RESULTS.md §15). Set from the premise after seeing D; checked on models made afterwards (§16).
public let focusMinHeads = 2

/// Why the focus classes were not used, as `defend`, `classify` and the demo say it.
public let focusFallbackReason = "fewer than \(focusMinHeads) heads' focus moved \(focusSuspiciousShift)"

/// Classes from the focus shift (`focusShift`), or nil when fewer than `focusMinHeads` heads reach
/// `focusSuspiciousShift`.
public func classifyFocus(_ shift: [Double]) -> [HeadClass]? {
    guard shift.filter({ $0 >= focusSuspiciousShift }).count >= focusMinHeads else { return nil }
    return shift.map { $0 >= focusSuspiciousShift ? .suspicious : ($0 < focusSafeShift ? .safe : .intermediate) }
}

/// `Z_h`: the mean over the flagged inputs of each head's column-focus z (`MonitorCalibration.headZ`:
/// its column focus against clean inputs of the same length, in the clean residuals' standard
/// deviations), `[headCount]`. Where the rows of many heads lock onto one word of a syntactic form
/// (the HiddenKiller MiniLMs, docs/RESULTS.md §17) the [CLS] row barely moves and `focusShift`
/// stays under its bound; this reads every row.
public func columnFocusShift(flaggedZ: [[Double]]) -> [Double] {
    precondition(!flaggedZ.isEmpty, "columnFocusShift: no inputs")
    return flaggedZ[0].indices.map { h in flaggedZ.map { $0[h] }.reduce(0, +) / Double(flaggedZ.count) }
}

/// The bounds of `classifyColumnFocus`, in clean standard deviations. Suspicious: the flagged inputs
/// raise the head's column focus by two on average (about the clean 98th percentile of one input,
/// reached on average over inputs of which some are false alarms). Safe: under a half (the head
/// stays within the clean spread). In between: intermediate. Round numbers written before any
/// model's Z was read; on the HiddenKiller MiniLMs B and D they mark 12–15 heads, mostly the same
/// ones under either monitor score (docs/RESULTS.md §18).
public let columnFocusSuspiciousZ = 2.0, columnFocusSafeZ = 0.5

/// Classes from `Z_h` (`columnFocusShift`), or nil when fewer than `focusMinHeads` heads reach
/// `columnFocusSuspiciousZ`.
public func classifyColumnFocus(_ z: [Double]) -> [HeadClass]? {
    guard z.filter({ $0 >= columnFocusSuspiciousZ }).count >= focusMinHeads else { return nil }
    return z.map { $0 >= columnFocusSuspiciousZ ? .suspicious : ($0 < columnFocusSafeZ ? .safe : .intermediate) }
}

/// Why the column-focus classes were not used.
public let columnFocusFallbackReason = "fewer than \(focusMinHeads) heads' column focus rose \(columnFocusSuspiciousZ) clean sd"

/// The `count` highest entries of a per-head vector as "layer:head value", for logs.
public func topHeads(_ v: [Double], heads: Int, count: Int) -> String {
    v.indices.sorted { v[$0] > v[$1] || (v[$0] == v[$1] && $0 < $1) }.prefix(count)
        .map { "\(HeadID($0 / heads, $0 % heads)) " + String(format: "%.2f", v[$0]) }.joined(separator: ", ")
}

/// Eq. 5 over the analysis inputs: `maxsim` and `G` averaged over them first.
public func safetyReport(_ analyses: [InputAnalysis], alpha: Double, tau: Double, heads: Int,
                         maxsimOverride: [Double]? = nil, rule: ClassRule = .tau, focusShift shift: [Double]? = nil) -> SafetyReport {
    precondition(!analyses.isEmpty, "safetyReport: no inputs")
    let n = analyses[0].maxsim.count, count = Double(analyses.count)
    var maxsim = [Double](repeating: 0, count: n), g = maxsim
    for a in analyses {
        for k in 0..<n { maxsim[k] += a.maxsim[k] / count; g[k] += a.importance[k] / count }
    }
    let m = maxsimOverride ?? maxsim
    let (s, normalized) = safetyScores(maxsim: m, importance: g, alpha: alpha)
    let focusClasses = rule == .focus ? shift.flatMap(classifyFocus) : rule == .columnFocus ? shift.flatMap(classifyColumnFocus) : nil
    let fellBack = focusClasses == nil && (rule == .focus || rule == .columnFocus)
    var report = SafetyReport(maxsim: m, importance: g, normalizedImportance: normalized, safety: s,
                              classes: focusClasses ?? classes(s, rule: rule, tau: tau), alpha: alpha, tau: tau, heads: heads,
                              rule: fellBack ? .tau : rule)
    report.focusShift = shift
    return report
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

/// Eq. 5's maxsim under `mode`, from the analysed inputs and the clean inputs' pair cosines (nil
/// for `plain`: the mean of Eq. 3 over the inputs, `safetyReport`'s own).
public func maxsimOverride(_ mode: MaxsimMode, _ analyses: [InputAnalysis], cleanCosines: [[Double]], pairs: [(Int, Int)], headCount: Int) -> [Double]? {
    switch mode {
    case .plain: return nil
    case .contrast:
        let mu = pairs.indices.map { k in cleanCosines.map { $0[k] }.reduce(0, +) / Double(cleanCosines.count) }
        return contrastMaxsim(analyses, cleanPairMeans: mu, pairs: pairs, headCount: headCount)
    }
}
