// Similarity.swift: the analysis views of A, Eq. 2 (row-major flattening) and Eq. 3 (cosine with
// the zero-norm rule), all head pairs in a scope, and the pair statistics of Figure 1 / Table 1
// (frac_above, p99). Everything accumulates in Double.

/// Which part of A is compared (SPEC "Analysis view").
public enum AnalysisView: String, CaseIterable, Sendable {
    case full  // the whole T x T matrix over real tokens
    case cls  // row 0, the [CLS] row: where a BERT classifier reads
    case last  // the last real token's row: where a decoder classifier reads
    case gen2prompt  // A[T_p ..< T, 0 ..< T_p]: generated tokens attending to the prompt

    /// The rows and columns of a `T x T` attention matrix this view keeps.
    public func block(tokens t: Int, promptLength tp: Int) -> (rows: Range<Int>, cols: Range<Int>) {
        switch self {
        case .full: return (0..<t, 0..<t)
        case .cls: return (0..<1, 0..<t)
        case .last: return ((t - 1)..<t, 0..<t)
        case .gen2prompt:
            precondition(tp > 0 && tp < t, "gen2prompt view: prompt length \(tp) must be in 1..<\(t)")
            return (tp..<t, 0..<tp)
        }
    }
}

/// Which head pairs are compared.
public enum PairScope: String, CaseIterable, Sendable {
    case model  // every pair of heads in the model (default, as the paper's text says)
    case layer  // pairs inside the same layer (as its formula is typeset)
}

/// A head, `(layer, head)`, written `l:h` on the command line.
public struct HeadID: Hashable, Comparable, Sendable, CustomStringConvertible {
    public let layer: Int, head: Int
    public init(_ layer: Int, _ head: Int) { self.layer = layer; self.head = head }
    public var description: String { "\(layer):\(head)" }
    public static func < (a: HeadID, b: HeadID) -> Bool { (a.layer, a.head) < (b.layer, b.head) }
}

/// Eq. 2: `vec(P)`, row-major, of the view of one head's `[T, T]` attention matrix.
@_specialize(exported: true, where S == Float)
@_specialize(exported: true, where S == Double)
public func flattenedView<S: Real>(_ a: UnsafePointer<S>, tokens t: Int, view: AnalysisView, promptLength: Int) -> [Double] {
    let (rows, cols) = view.block(tokens: t, promptLength: promptLength)
    var v: [Double] = []
    v.reserveCapacity(rows.count * cols.count)
    for i in rows { for j in cols { v.append(Double(a[i * t + j])) } }
    return v
}

/// Eq. 3: `cos(P, Q) = vec(P) . vec(Q) / (||vec(P)|| ||vec(Q)||)`, defined as 0 when either
/// norm is 0. Attention entries are non-negative, so the result lies in [0, 1].
public func cosine(_ p: [Double], _ q: [Double]) -> Double {
    precondition(p.count == q.count, "cosine: views of \(p.count) and \(q.count) entries")
    var dot = 0.0, pp = 0.0, qq = 0.0
    for i in 0..<p.count {
        dot += p[i] * q[i]
        pp += p[i] * p[i]
        qq += q[i] * q[i]
    }
    if pp == 0 || qq == 0 { return 0 }
    return dot / (pp.squareRoot() * qq.squareRoot())
}

/// The unordered pairs `(i, j)`, `i < j`, of head indices (layer-major, head-major: index
/// `l * NH + h`) in a scope: `L*H*(L*H-1)/2` pairs for `model`, `L*H*(H-1)/2` for `layer`.
public func headPairs(layers: Int, heads: Int, scope: PairScope) -> [(Int, Int)] {
    var pairs: [(Int, Int)] = []
    let n = layers * heads
    for i in 0..<n {
        for j in (i + 1)..<max(n, i + 1) where scope == .model || i / heads == j / heads {
            pairs.append((i, j))
        }
    }
    return pairs
}

/// The cosine of every pair in scope order, for one input's views (one per head, index l*NH+h).
public func pairCosines(_ views: [[Double]], pairs: [(Int, Int)]) -> [Double] {
    pairs.map { cosine(views[$0.0], views[$0.1]) }
}

/// `maxsim` of each head: the largest cosine with any other head in the scope (0 when the scope
/// has no other head).
public func maxSimilarity(_ cosines: [Double], pairs: [(Int, Int)], headCount: Int) -> [Double] {
    var m = [Double](repeating: 0, count: headCount)
    for (k, (i, j)) in pairs.enumerated() {
        m[i] = max(m[i], cosines[k])
        m[j] = max(m[j], cosines[k])
    }
    return m
}

/// Fraction of values strictly above `threshold` (Figure 1's statistic; 0.99 by default).
public func fractionAbove(_ values: [Double], threshold: Double) -> Double {
    values.isEmpty ? 0 : Double(values.filter { $0 > threshold }.count) / Double(values.count)
}

/// The q-quantile with linear interpolation between order statistics (numpy's default):
/// position `(n - 1) q` in the sorted values.
public func quantile(_ values: [Double], _ q: Double) -> Double {
    precondition(!values.isEmpty, "quantile of no values")
    let s = values.sorted()
    let pos = Double(s.count - 1) * q
    let lo = Int(pos.rounded(.down)), hi = min(lo + 1, s.count - 1)
    return s[lo] + (s[hi] - s[lo]) * (pos - Double(lo))
}
