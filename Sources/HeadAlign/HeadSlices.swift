// HeadSlices.swift: the parameters each attention head owns, as index ranges of the flat buffer:
// its rows of W_q, W_k, W_v (and bias entries) and its columns of W_o. Under grouped-query
// attention a key/value head is shared by NH / NKV query heads.

public struct HeadSlices: Sendable {
    public let query: [Range<Int>]  // W_q rows (+ bias entries)
    public let key: [Range<Int>]  // W_k rows of its key/value head (+ bias entries)
    public let value: [Range<Int>]  // W_v rows of its key/value head (+ bias entries)
    public let output: [Range<Int>]  // W_o columns: one range per row of W_o
}

/// The names of layer `l`'s attention projections (weight, bias) in the layout.
func attentionTensorNames(_ c: ModelConfig, layer l: Int) -> [(weight: String, bias: String?)] {
    switch c.family {
    case .bert:
        let p = "encoder.layer.\(l).attention."
        return ["self.query", "self.key", "self.value", "output.dense"].map { (p + $0 + ".weight", p + $0 + ".bias") }
    case .llama:
        let p = "model.layers.\(l).self_attn."
        return ["q_proj", "k_proj", "v_proj", "o_proj"].map { (p + $0 + ".weight", nil) }
    }
}

/// The slices of head `head` of layer `layer`.
public func headSlices(layout: ParameterLayout, config c: ModelConfig, layer: Int, head h: Int) -> HeadSlices {
    let names = attentionTensorNames(c, layer: layer), hs = c.headSize, d = c.hiddenSize
    let g = c.attentionShape.kvHead(of: h)
    func rows(_ index: Int, _ which: Int) -> [Range<Int>] {
        let w = layout[names[index].weight]!
        var r = [(w.offset + which * hs * d)..<(w.offset + (which + 1) * hs * d)]
        if let b = names[index].bias.flatMap({ layout[$0] }) { r.append((b.offset + which * hs)..<(b.offset + (which + 1) * hs)) }
        return r
    }
    let o = layout[names[3].weight]!, ld = c.numAttentionHeads * hs
    let cols = (0..<d).map { r in (o.offset + r * ld + h * hs)..<(o.offset + r * ld + (h + 1) * hs) }
    return HeadSlices(query: rows(0, h), key: rows(1, g), value: rows(2, g), output: cols)
}

/// Parses `l:h,l:h,...` against a configuration's shape.
public func parseHeadList(_ s: String, config c: ModelConfig, flag: String) throws -> [HeadID] {
    try s.split(separator: ",").map { item in
        let parts = item.split(separator: ":")
        guard parts.count == 2, let l = Int(parts[0]), let h = Int(parts[1]) else {
            throw HeadAlignError.usage("\(flag): '\(item)' is not layer:head")
        }
        guard (0..<c.numHiddenLayers).contains(l), (0..<c.numAttentionHeads).contains(h) else {
            throw HeadAlignError.usage("\(flag): head \(l):\(h) is outside \(c.numHiddenLayers) layers x \(c.numAttentionHeads) heads")
        }
        return HeadID(l, h)
    }
}
