// Shrink.swift: a smaller copy of a pretrained BERT-style model directory, small enough to ship as
// a teaching model (issue 17): its first layers only, and the WordPiece vocabulary reduced to the
// pieces some texts use, stored in half precision. On those texts the reduced tokenizer gives the
// same pieces as the full one (greedy longest match picks the same longest piece, which is kept,
// and no longer one exists), so the copy computes exactly what the cut model computes on them.

import HeadAlign
import Foundation

/// What `shrinkModel` kept.
public struct ShrinkSummary: Sendable {
    public let config: ModelConfig
    public let keptPieces: Int, originalPieces: Int
}

/// Writes into the new directory `out` a copy of the model in `dir` with its first `layers`
/// layers (nil: all) and, given `keepTexts`, only the vocabulary pieces their tokenization uses plus
/// the special tokens (a BERT `vocab.txt` model only; the pieces keep their order), in `dtype`.
public func shrinkModel(directory dir: String, layers: Int?, keepTexts: [String]?, dtype: SafetensorsDType,
                        to out: String) throws -> ShrinkSummary {
    let base = try ModelConfig.load(contentsOf: URL(fileURLWithPath: dir + "/config.json"))
    var cut = base
    if let layers {
        guard (1...base.numHiddenLayers).contains(layers) else {
            throw HeadAlignError.usage("--layers: \(dir) has \(base.numHiddenLayers) layers; keep 1 to \(base.numHiddenLayers)")
        }
        cut.numHiddenLayers = layers
    }
    // the checkpoint names of the dropped layers: "...layer.K." (BERT) or "...layers.K." (Llama), K >= layers
    func dropped(_ name: String) -> Bool {
        let parts = name.split(separator: ".")
        guard let i = parts.firstIndex(where: { $0 == "layer" || $0 == "layers" }), i + 1 < parts.count,
              let k = Int(parts[i + 1]) else { return false }
        return k >= cut.numHiddenLayers
    }
    var files = tokenizerFiles(in: dir)
    files["tokenizer.json"] = nil  // it would describe the old vocabulary; `tokenizer-json` writes a new one
    // how the weights were trained travels with them (the copy's README names the cut and the dtype)
    if let record = FileManager.default.contents(atPath: dir + "/headalign_training.json") { files["headalign_training.json"] = record }
    // refused before the weights are read
    if keepTexts != nil, cut.family != .bert || files["vocab.txt"] == nil {
        throw HeadAlignError.usage("--vocab-from: reducing the vocabulary needs a BERT model with a vocab.txt")
    }
    let model: Model<Float> = try loadModel(directory: dir, backend: .naive, config: cut, allowUnexpected: dropped)
    guard let keepTexts else {
        try saveModel(model, to: out, dtype: dtype, extraFiles: files)
        return ShrinkSummary(config: cut, keptPieces: cut.vocabSize, originalPieces: base.vocabSize)
    }
    guard let vocabText = String(data: files["vocab.txt"]!, encoding: .utf8) else {
        throw HeadAlignError.badInput("\(dir)/vocab.txt: not UTF-8 text")
    }
    let pieces = textLines(vocabText).dropLast(vocabText.hasSuffix("\n") ? 1 : 0)
    guard pieces.count == cut.vocabSize else {
        throw HeadAlignError.badInput("\(dir)/vocab.txt: \(pieces.count) pieces, config.json says \(cut.vocabSize)")
    }
    let tokenizer = try AnyModel.tokenizer(for: .directory(dir), config: cut)
    var kept = Set(["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"].compactMap { pieces.firstIndex(of: $0) })
    for text in keepTexts { kept.formUnion(try tokenizer.encode(text, maxLength: cut.maxPositionEmbeddings).ids) }
    let order = kept.sorted()  // old ids in order: [PAD] stays 0, the special tokens keep their relative order
    var small = cut
    small.vocabSize = order.count
    let shrunk = Model<Float>(config: small, backend: .naive)
    let embeddings = "embeddings.word_embeddings.weight", d = cut.hiddenSize
    for p in shrunk.layout.tensors {
        let source = model.layout[p.name]!
        if p.name == embeddings {  // row i of the new table is row order[i] of the old one
            for (i, old) in order.enumerated() {
                (shrunk.params.data + p.offset + i * d).update(from: model.params.data + source.offset + old * d, count: d)
            }
        } else {
            (shrunk.params.data + p.offset).update(from: model.params.data + source.offset, count: p.count)
        }
    }
    files["vocab.txt"] = Data((order.map { String(pieces[$0]) }.joined(separator: "\n") + "\n").utf8)
    try saveModel(shrunk, to: out, dtype: dtype, extraFiles: files)
    return ShrinkSummary(config: small, keptPieces: order.count, originalPieces: cut.vocabSize)
}
