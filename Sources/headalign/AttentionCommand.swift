// AttentionCommand.swift: `headalign attention`, Eq. 1 as a calculator: one head's scores, masks
// and softmax for a hand-given Q and K (and H = A V for a given V), computed by the same
// `attentionForward` the models use, so a worked example can be checked by hand.

import Foundation
import HeadAlign
import HeadAlignLab

enum AttentionCommand: Command {
    static let spec = CommandSpec(
        name: "attention",
        summary: "Eq. 1 for one head from hand-given Q, K (and V): scores, A = softmax(QK^T/sqrt(d) + M), H = AV",
        detail: """
            Rows separated by ';', numbers by spaces: --q 'q00 q01; q10 q11; q20 q21' gives T = 3 queries of d_head = 2.
            --k has the same shape; --v (optional) too. --causal masks keys after each query (a decoder); --mask '1 1 0'
            marks padding (0) that no query attends to. Computed in Double by the models' attentionForward; printed with 6
            decimals, or with --precision f64 with 17 significant digits (an f64 value round-trips exactly).
            """,
        usage: "attention --q ROWS --k ROWS [--v ROWS] [--causal] [--mask 'B B ...'] [--precision f64]",
        options: [
            OptionSpec(name: "--q", value: "ROWS", help: "queries, T rows of d_head numbers"),
            OptionSpec(name: "--k", value: "ROWS", help: "keys, same shape"),
            OptionSpec(name: "--v", value: "ROWS", help: "values, same shape (optional)"),
            OptionSpec(name: "--causal", value: nil, help: "causal mask (key k > query t is masked)"),
            OptionSpec(name: "--mask", value: "'B ...'", help: "key padding mask, 1 = real token, 0 = padding"),
            OptionSpec(name: "--precision", value: "P", help: "f32 (default: 6 decimals) or f64 (17 significant digits)"),
        ])

    static func matrix(_ flag: String, _ text: String) throws -> [[Double]] {
        let rows = try text.split(separator: ";").map { row in
            try row.split(separator: " ").map { w -> Double in
                guard let x = Double(w), x.isFinite else { throw HeadAlignError.usage("\(flag): '\(w)' is not a number") }
                return x
            }
        }
        guard !rows.isEmpty, let d = rows.first?.count, d > 0, rows.allSatisfy({ $0.count == d }) else {
            throw HeadAlignError.usage("\(flag): give rows of equal length separated by ';'")
        }
        return rows
    }

    static func run(_ args: ParsedArguments) throws -> Int32 {
        guard let qs = args.string("--q"), let ks = args.string("--k") else { throw HeadAlignError.usage("--q and --k are required") }
        let q = try matrix("--q", qs), k = try matrix("--k", ks)
        let v = try args.string("--v").map { try matrix("--v", $0) } ?? k
        let t = q.count, d = q[0].count
        guard k.count == t, k[0].count == d, v.count == t, v[0].count == d else { throw HeadAlignError.usage("--q, --k and --v must have the same shape (\(t) x \(d))") }
        var mask: [Bool]? = nil
        if let m = args.string("--mask") {
            let bits = m.split(separator: " ")
            guard bits.count == t, bits.allSatisfy({ $0 == "0" || $0 == "1" }), bits.contains("1") else {
                throw HeadAlignError.usage("--mask: give \(t) values of 0 or 1, at least one 1")
            }
            mask = bits.map { $0 == "1" }
        }
        let shape = AttentionShape(heads: 1, kvHeads: 1, headSize: d, causal: args.has("--causal"))
        let batch = Batch([TokenSequence([Int](repeating: 0, count: t), mask: mask)])
        func tensor(_ m: [[Double]]) -> Tensor<Double> {
            let x = Tensor<Double>([t, d])
            for i in 0..<t { for j in 0..<d { x.data[i * d + j] = m[i][j] } }
            return x
        }
        // Finite inputs can still overflow (1e308 x 1e308): every score and output is checked
        // before anything is printed, and refused in one line rather than printed as inf or nan.
        let scale = 1 / Double(d).squareRoot()
        let scores = (0..<t).map { i in (0..<t).map { j in (0..<d).reduce(0.0) { $0 + q[i][$1] * k[j][$1] } * scale } }
        for i in 0..<t { for j in 0..<t where !scores[i][j].isFinite {
            throw HeadAlignError.usage("--q, --k: score [\(i), \(j)] of Q K^T / sqrt(\(d)) overflows a Double; give smaller values")
        } }
        let att = Tensor<Double>([t * t]), h = Tensor<Double>([t, d])
        attentionForward(headOut: h, att: att, q: tensor(q), k: tensor(k), v: tensor(v), batch: batch, shape: shape, backend: .naive)
        guard att.array.allSatisfy(\.isFinite) else { throw HeadAlignError.usage("--q, --k: the softmax of these scores is not finite; give smaller values") }
        if let bad = h.array.firstIndex(where: { !$0.isFinite }) {
            throw HeadAlignError.usage("--v: H = A V [\(bad / d), \(bad % d)] overflows a Double; give smaller values")
        }
        let full = try args.precision() == .f64
        func show(_ title: String, _ rows: Int, _ cols: Int, _ value: (Int, Int) -> Double) {
            print(title)
            for i in 0..<rows {
                print("  " + (0..<cols).map { String(format: full ? "%24.17g" : "%9.6f", value(i, $0)) }.joined(separator: " "))
            }
        }
        show("scores Q K^T / sqrt(\(d))  [T, T]", t, t) { i, j in scores[i][j] }
        show("A = softmax(scores + M), row by row  [T, T]" + (shape.causal ? " (causal)" : "") + (mask == nil ? "" : " (padding masked)"), t, t) { i, j in att.data[i * t + j] }
        if args.has("--v") { show("H = A V  [T, d_head]", t, d) { i, j in h.data[i * d + j] } }
        return 0
    }
}
