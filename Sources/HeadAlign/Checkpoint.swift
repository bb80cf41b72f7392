// Checkpoint.swift: model directories in the Hugging Face layout (config.json + model.safetensors
// or sharded model-XXXXX-of-YYYYY.safetensors + index) to and from a Model, with every rename and
// dropped tensor in one mapping function; and llama2.c's legacy `.bin` checkpoints.

import Foundation

// MARK: - The one name mapping

/// What a checkpoint tensor name means for a configuration's layout.
public enum CheckpointName: Equatable, Sendable {
    case parameter(String)  // the layout's name
    case dropped  // known, not a parameter (position_ids, rotary inv_freq, pretraining heads)
    case unexpected
}

/// Hugging Face name -> layout name. BERT checkpoints may carry the `bert.` prefix
/// (`BertFor...` classes) or not (`BertModel`); old ones say `gamma`/`beta` for LayerNorm
/// weight/bias. Buffers and heads the models here do not have are dropped.
public func layoutName(forCheckpointName name: String, layout: ParameterLayout, config: ModelConfig) -> CheckpointName {
    var n = name
    switch config.family {
    case .bert:
        if n.hasPrefix("bert.") { n.removeFirst(5) }
        if n.hasSuffix("position_ids") || n.hasPrefix("cls.") { return .dropped }
        if n.hasSuffix("LayerNorm.gamma") { n = String(n.dropLast(5)) + "weight" }
        if n.hasSuffix("LayerNorm.beta") { n = String(n.dropLast(4)) + "bias" }
    case .llama:
        if n.hasSuffix("rotary_emb.inv_freq") { return .dropped }
        // a causal-LM checkpoint loaded as a classifier keeps its body; its LM head is not used
        if n == "lm_head.weight" && layout["lm_head.weight"] == nil { return .dropped }
    }
    return layout[n] == nil ? .unexpected : .parameter(n)
}

/// Layout name -> the name Hugging Face writes for this configuration's architecture
/// (`BertForSequenceClassification` prefixes the encoder with `bert.`).
public func checkpointName(forLayoutName name: String, config: ModelConfig) -> String {
    if config.family == .bert && config.numLabels > 0 && !name.hasPrefix("classifier.") { return "bert." + name }
    return name
}

// MARK: - Reading a directory

/// The safetensors files of a model directory: `model.safetensors`, or the shards named by
/// `model.safetensors.index.json`.
public func safetensorsFiles(in dir: String) throws -> [String] {
    let fm = FileManager.default
    let single = dir + "/model.safetensors", index = dir + "/model.safetensors.index.json"
    if fm.fileExists(atPath: single) { return [single] }
    guard fm.fileExists(atPath: index) else {
        if fm.fileExists(atPath: dir + "/pytorch_model.bin") {
            throw HeadAlignError.badInput("\(dir): only pytorch_model.bin (pickle) found; headalign reads safetensors only")
        }
        throw HeadAlignError.badInput("\(dir): no model.safetensors or model.safetensors.index.json")
    }
    guard let data = fm.contents(atPath: index) else { throw HeadAlignError.badInput("\(index): cannot read") }
    let json: JSONValue
    do { json = try data.withUnsafeBytes { try JSONValue.parse($0.bindMemory(to: UInt8.self)) } } catch {
        throw HeadAlignError.badInput("\(index): not valid JSON (\(error))")
    }
    guard case .object(let map)? = json["weight_map"] else { throw HeadAlignError.badInput("\(index): no weight_map object") }
    var shards: [String] = []
    for (tensor, file) in map {
        guard case .string(let f) = file, !f.contains("/"), !f.isEmpty else {
            throw HeadAlignError.badInput("\(index): weight_map entry '\(tensor)' is not a file name in the directory")
        }
        if !shards.contains(f) { shards.append(f) }
    }
    for f in shards where !fm.fileExists(atPath: dir + "/" + f) {
        throw HeadAlignError.badInput("\(index): shard \(f) is missing")
    }
    return shards.sorted().map { dir + "/" + $0 }
}

/// Loads a model directory. `allowMissing` names layout tensors that may be absent (they keep
/// the initialisation from `seed`), e.g. a new classifier head on a pretrained encoder;
/// `allowUnexpected` names checkpoint tensors to skip, e.g. the layers a smaller copy drops.
@_specialize(exported: true, where S == Float)
@_specialize(exported: true, where S == Double)
public func loadModel<S: Real>(directory dir: String, backend: Backend, config override: ModelConfig? = nil,
                               allowMissing: (String) -> Bool = { _ in false }, allowUnexpected: (String) -> Bool = { _ in false },
                               seed: UInt64 = 0) throws -> Model<S> {
    let config = try override ?? ModelConfig.load(contentsOf: URL(fileURLWithPath: dir + "/config.json"))
    let model = Model<S>(config: config, backend: backend)
    model.initialize(seed: seed)
    var seen = Set<String>()
    for path in try safetensorsFiles(in: dir) {
        let file = try SafetensorsFile(path: path)
        for e in file.header.entries {
            switch layoutName(forCheckpointName: e.name, layout: model.layout, config: config) {
            case .dropped: continue
            case .unexpected:
                if allowUnexpected(e.name) { continue }
                throw HeadAlignError.badInput("\(path): unexpected tensor '\(e.name)' for a \(config.architectures.joined(separator: ",")) with this config")
            case .parameter(let name):
                let p = model.layout[name]!
                guard e.shape == p.shape else {
                    throw HeadAlignError.badInput("\(path): tensor '\(e.name)' has shape \(e.shape), the config implies \(p.shape)")
                }
                guard seen.insert(name).inserted else { throw HeadAlignError.badInput("\(path): tensor '\(e.name)' appears twice") }
                try convert(file.bytes(of: e), dtype: e.dtype, into: model.params.data + p.offset, count: p.count,
                            what: "\(path): tensor '\(e.name)'")
                try checkFinite(model.params.data + p.offset, count: p.count, what: "\(path): tensor '\(e.name)'")
            }
        }
    }
    for p in model.layout.tensors where !seen.contains(p.name) && !allowMissing(p.name) {
        throw HeadAlignError.badInput("\(dir): missing tensor '\(checkpointName(forLayoutName: p.name, config: config))'")
    }
    return model
}

/// A weight that is NaN or infinite poisons every output it reaches; a loaded tensor is checked
/// once, and the error names it and its first bad element (flat row-major index).
@_specialize(exported: true, where S == Float)
@_specialize(exported: true, where S == Double)
public func checkFinite<S: Real>(_ values: UnsafePointer<S>, count: Int, what: String) throws {
    for i in 0..<count where !values[i].isFinite {
        throw HeadAlignError.badInput("\(what): element \(i) is \(values[i]) (weights must be finite)")
    }
}

// MARK: - Writing a directory

/// Writes `config.json` and `model.safetensors` (F32 for Float models, F64 for Double ones unless
/// `dtype` says otherwise) into a new directory, plus `extraFiles` (name -> bytes), all under a
/// temporary name renamed into place at the end. Refuses to replace an existing directory.
@_specialize(exported: true, where S == Float)
@_specialize(exported: true, where S == Double)
public func saveModel<S: Real>(_ model: Model<S>, to dir: String, dtype: SafetensorsDType? = nil,
                               extraFiles: [String: Data] = [:]) throws {
    let fm = FileManager.default
    guard !fm.fileExists(atPath: dir) else { throw HeadAlignError.usage("\(dir) exists; headalign writes a new directory and never replaces one") }
    let parent = URL(fileURLWithPath: dir).deletingLastPathComponent().path
    guard fm.fileExists(atPath: parent) else { throw HeadAlignError.usage("\(dir): parent directory \(parent) does not exist") }
    removeStaleTemporaries(beside: dir)
    let tmp = dir + ".tmp-\(getpid())"
    try? fm.removeItem(atPath: tmp)
    do {
        try fm.createDirectory(atPath: tmp, withIntermediateDirectories: false)
        try writeConfigJSON(model.config, into: tmp)
        let store = dtype ?? (S.self == Double.self ? .F64 : .F32)
        let tensors = model.layout.tensors.map { p in
            SafetensorsTensor(name: checkpointName(forLayoutName: p.name, config: model.config), shape: p.shape,
                              values: UnsafeBufferPointer(start: model.params.data + p.offset, count: p.count), dtype: store)
        }
        try serializeSafetensors(tensors, metadata: ["format": "pt"]).write(to: URL(fileURLWithPath: tmp + "/model.safetensors"))
        for (name, data) in extraFiles { try data.write(to: URL(fileURLWithPath: tmp + "/" + name)) }
        try fm.moveItem(atPath: tmp, toPath: dir)
    } catch {
        try? fm.removeItem(atPath: tmp)
        if let e = error as? HeadAlignError { throw e }
        throw HeadAlignError.badInput("\(dir): cannot write (\(error.localizedDescription))")
    }
}

/// `config.json` as Hugging Face writes it (sorted keys, indented) into a directory.
package func writeConfigJSON(_ config: ModelConfig, into dir: String) throws {
    let encoder = JSONEncoder()
    encoder.outputFormatting = [.prettyPrinted, .sortedKeys]
    try encoder.encode(config).write(to: URL(fileURLWithPath: dir + "/config.json"))
}

// MARK: - llama2.c

/// llama2.c's legacy (version 0) checkpoint: 7 int32 (dim, hidden_dim, n_layers, n_heads,
/// n_kv_heads, vocab_size, seq_len; negative vocab_size = unshared classifier), then float32
/// tensors in a fixed order. Loaded on its own layout with the interleaved rotary convention.
@_specialize(exported: true, where S == Float)
@_specialize(exported: true, where S == Double)
public func loadLlama2c<S: Real>(path: String, backend: Backend) throws -> Model<S> {
    guard let data = FileManager.default.contents(atPath: path) else {
        throw HeadAlignError.badInput("\(path): cannot read")
    }
    guard data.count >= 28 else { throw HeadAlignError.badInput("\(path): \(data.count) bytes, shorter than the 28-byte llama2.c header") }
    let h: [Int] = (0..<7).map { i in Int(data.withUnsafeBytes { Int32(littleEndian: $0.loadUnaligned(fromByteOffset: 4 * i, as: Int32.self)) }) }
    if UInt32(truncatingIfNeeded: h[0]) == 0x616B_3432 {
        throw HeadAlignError.badInput("\(path): a llama2.c version 1/2 export ('ak42'); only the legacy version-0 format is read")
    }
    let (dim, hidden, layers, heads, kvHeads, vocabSigned, seqLen) = (h[0], h[1], h[2], h[3], h[4], h[5], h[6])
    for (name, v) in [("dim", dim), ("hidden_dim", hidden), ("n_layers", layers), ("n_heads", heads), ("n_kv_heads", kvHeads),
                      ("seq_len", seqLen)] where v <= 0 || v > 1 << 20 {
        throw HeadAlignError.badInput("\(path): header field \(name) = \(v) is not a plausible size")
    }
    let vocab = abs(vocabSigned)
    guard vocab > 0, vocab <= 1 << 22, dim % heads == 0, heads % kvHeads == 0, (dim / heads) % 2 == 0 else {
        throw HeadAlignError.badInput("\(path): header \(h) does not describe a valid model")
    }
    var config = ModelConfig.llama(vocab: vocab, d: dim, layers: layers, heads: heads, kvHeads: kvHeads, ffn: hidden,
                                   positions: seqLen, eps: 1e-5)
    config.tieWordEmbeddings = vocabSigned > 0
    config.ropeInterleaved = true
    let hs = dim / heads, kvDim = kvHeads * hs
    let sizes: [(String, Int)] = [
        ("tok", vocab * dim), ("rms_att", layers * dim), ("wq", layers * dim * dim), ("wk", layers * kvDim * dim),
        ("wv", layers * kvDim * dim), ("wo", layers * dim * dim), ("rms_ffn", layers * dim),
        ("w1", layers * hidden * dim), ("w2", layers * dim * hidden), ("w3", layers * hidden * dim), ("rms_final", dim),
        ("freq_cis", seqLen * hs),  // real and imaginary tables, seqLen * hs/2 each; unused
    ] + (vocabSigned < 0 ? [("wcls", vocab * dim)] : [])
    let expected = 28 + 4 * sizes.map(\.1).reduce(0, +)
    guard data.count == expected else {
        throw HeadAlignError.badInput("\(path): \(data.count) bytes, but header \(h) implies \(expected)")
    }
    let model = Model<S>(config: config, backend: backend)
    var offset = 28
    var arrays: [String: Int] = [:]  // byte offset of each array
    for (name, count) in sizes { arrays[name] = offset; offset += 4 * count }
    func copy(_ array: String, element start: Int, count: Int, to name: String) {
        let p = model.layout[name]!
        precondition(p.count == count, "llama2c: \(name) size")
        data.withUnsafeBytes { raw in
            let base = arrays[array]! + 4 * start
            for i in 0..<count {
                model.params.data[p.offset + i] = S(Float(bitPattern: raw.loadUnaligned(fromByteOffset: base + 4 * i, as: UInt32.self)))
            }
        }
    }
    copy("tok", element: 0, count: vocab * dim, to: "model.embed_tokens.weight")
    for l in 0..<layers {
        let p = "model.layers.\(l)."
        copy("rms_att", element: l * dim, count: dim, to: p + "input_layernorm.weight")
        copy("wq", element: l * dim * dim, count: dim * dim, to: p + "self_attn.q_proj.weight")
        copy("wk", element: l * kvDim * dim, count: kvDim * dim, to: p + "self_attn.k_proj.weight")
        copy("wv", element: l * kvDim * dim, count: kvDim * dim, to: p + "self_attn.v_proj.weight")
        copy("wo", element: l * dim * dim, count: dim * dim, to: p + "self_attn.o_proj.weight")
        copy("rms_ffn", element: l * dim, count: dim, to: p + "post_attention_layernorm.weight")
        copy("w1", element: l * hidden * dim, count: hidden * dim, to: p + "mlp.gate_proj.weight")
        copy("w2", element: l * dim * hidden, count: dim * hidden, to: p + "mlp.down_proj.weight")
        copy("w3", element: l * hidden * dim, count: hidden * dim, to: p + "mlp.up_proj.weight")
    }
    copy("rms_final", element: 0, count: dim, to: "model.norm.weight")
    if vocabSigned < 0 { copy("wcls", element: 0, count: vocab * dim, to: "lm_head.weight") }
    for p in model.layout.tensors {
        try checkFinite(model.params.data + p.offset, count: p.count, what: "\(path): tensor '\(p.name)'")
    }
    return model
}

/// Re-expresses a model whose rotary embedding rotates interleaved pairs (2i, 2i+1) in the
/// rotate-half convention (pairs i, i + HS/2), by permuting each head's rows of W_q and W_k as
/// Hugging Face's llama conversion does: row 2i -> i, row 2i+1 -> i + HS/2. Outputs are unchanged.
@_specialize(exported: true, where S == Float)
@_specialize(exported: true, where S == Double)
public func convertToRotateHalf<S: Real>(_ model: Model<S>) -> Model<S> {
    var config = model.config
    precondition(config.ropeInterleaved, "convertToRotateHalf: the model already uses rotate-half")
    config.ropeInterleaved = false
    let out = Model<S>(config: config, backend: model.backend)
    out.params.data.update(from: model.params.data, count: model.layout.total)
    let hs = config.headSize, d = config.hiddenSize
    for l in 0..<config.numHiddenLayers {
        for (proj, heads) in [("q_proj", config.numAttentionHeads), ("k_proj", config.numKeyValueHeads)] {
            let p = model.layout["model.layers.\(l).self_attn.\(proj).weight"]!
            for h in 0..<heads {
                for i in 0..<(hs / 2) {
                    for (from, to) in [(2 * i, i), (2 * i + 1, i + hs / 2)] {
                        let src = model.params.data + p.offset + (h * hs + from) * d
                        let dst = out.params.data + p.offset + (h * hs + to) * d
                        dst.update(from: src, count: d)
                    }
                }
            }
        }
    }
    return out
}

/// Copies a model directory into a new one with a new sequence-classification head of `labels`
/// classes (initialised from `seed` as `Model.initialize` does), tokenizer files included.
public func addClassifierHead(directory dir: String, labels: Int, seed: UInt64, to out: String) throws -> ModelConfig {
    let base = try ModelConfig.load(contentsOf: URL(fileURLWithPath: dir + "/config.json"))
    guard base.numLabels == 0 else { throw HeadAlignError.usage("\(dir) already has a classifier head") }
    let config = base.withClassifier(labels: labels)
    let head = config.family == .bert ? "classifier." : "score."
    let model: Model<Float> = try loadModel(directory: dir, backend: .naive, config: config,
                                            allowMissing: { $0.hasPrefix(head) }, seed: seed)
    try saveModel(model, to: out, dtype: .F32, extraFiles: tokenizerFiles(in: dir))
    return config
}

/// The tokenizer files of a model directory (name -> bytes), to copy beside a derived model.
public func tokenizerFiles(in dir: String) -> [String: Data] {
    var files: [String: Data] = [:]
    for name in ["vocab.txt", "tokenizer_config.json", "special_tokens_map.json", "tokenizer.bin", "tokenizer.json"] {
        if let d = FileManager.default.contents(atPath: dir + "/" + name) { files[name] = d }
    }
    return files
}
