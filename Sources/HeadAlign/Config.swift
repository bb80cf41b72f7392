// Config.swift: model configurations keyed by the Hugging Face `config.json` names, with defaults
// for optional keys, validation with one-line errors, and the built-in presets.

import Foundation

/// The two model families. Mistral configs load as `llama` (same layer; see docs/SCALE.md for its
/// sliding window).
public enum ModelFamily: String, Sendable {
    case bert, llama
}

public struct ModelConfig: Codable, Equatable, Sendable {
    public var modelType: String  // model_type: "bert", "llama" or "mistral"
    public var architectures: [String]
    public var vocabSize: Int
    public var hiddenSize: Int  // D
    public var numHiddenLayers: Int  // L
    public var numAttentionHeads: Int  // NH
    public var numKeyValueHeads: Int  // NKV (BERT: = NH)
    public var intermediateSize: Int  // F
    public var hiddenAct: String  // "gelu" (exact erf) for BERT, "silu" for Llama
    public var maxPositionEmbeddings: Int
    public var typeVocabSize: Int  // BERT token types
    public var layerNormEps: Double  // BERT
    public var rmsNormEps: Double  // Llama
    public var ropeTheta: Double
    public var tieWordEmbeddings: Bool  // Llama: LM head shares the token embedding
    public var initializerRange: Double
    public var id2label: [String: String]?
    public var headDimOverride: Int?  // head_dim, when it is not D / NH
    public var slidingWindow: Int?  // Mistral; recorded, not applied
    /// headalign's own key: rotary on interleaved pairs (llama2.c checkpoints on their raw layout).
    public var ropeInterleaved: Bool
    public var padTokenId: Int?
    public var bosTokenId: Int?
    public var eosTokenId: Int?

    enum CodingKeys: String, CodingKey {
        case modelType = "model_type", architectures
        case vocabSize = "vocab_size", hiddenSize = "hidden_size", numHiddenLayers = "num_hidden_layers"
        case numAttentionHeads = "num_attention_heads", numKeyValueHeads = "num_key_value_heads"
        case intermediateSize = "intermediate_size", hiddenAct = "hidden_act"
        case maxPositionEmbeddings = "max_position_embeddings", typeVocabSize = "type_vocab_size"
        case layerNormEps = "layer_norm_eps", rmsNormEps = "rms_norm_eps", ropeTheta = "rope_theta"
        case tieWordEmbeddings = "tie_word_embeddings", initializerRange = "initializer_range"
        case id2label, headDimOverride = "head_dim", slidingWindow = "sliding_window"
        case ropeInterleaved = "headalign_rope_interleaved"
        case padTokenId = "pad_token_id", bosTokenId = "bos_token_id", eosTokenId = "eos_token_id"
    }

    public func encode(to encoder: Encoder) throws {
        var c = encoder.container(keyedBy: CodingKeys.self)
        try c.encode(modelType, forKey: .modelType)
        try c.encode(architectures, forKey: .architectures)
        try c.encode(vocabSize, forKey: .vocabSize)
        try c.encode(hiddenSize, forKey: .hiddenSize)
        try c.encode(numHiddenLayers, forKey: .numHiddenLayers)
        try c.encode(numAttentionHeads, forKey: .numAttentionHeads)
        try c.encode(intermediateSize, forKey: .intermediateSize)
        try c.encode(hiddenAct, forKey: .hiddenAct)
        try c.encode(maxPositionEmbeddings, forKey: .maxPositionEmbeddings)
        try c.encode(initializerRange, forKey: .initializerRange)
        try c.encodeIfPresent(id2label, forKey: .id2label)
        try c.encodeIfPresent(padTokenId, forKey: .padTokenId)
        try c.encodeIfPresent(bosTokenId, forKey: .bosTokenId)
        try c.encodeIfPresent(eosTokenId, forKey: .eosTokenId)
        switch family {
        case .bert:
            try c.encode(typeVocabSize, forKey: .typeVocabSize)
            try c.encode(layerNormEps, forKey: .layerNormEps)
        case .llama:
            try c.encode(numKeyValueHeads, forKey: .numKeyValueHeads)
            try c.encode(rmsNormEps, forKey: .rmsNormEps)
            try c.encode(ropeTheta, forKey: .ropeTheta)
            try c.encode(tieWordEmbeddings, forKey: .tieWordEmbeddings)
            try c.encodeIfPresent(headDimOverride, forKey: .headDimOverride)
            try c.encodeIfPresent(slidingWindow, forKey: .slidingWindow)
            if ropeInterleaved { try c.encode(true, forKey: .ropeInterleaved) }
        }
    }

    // MARK: Derived

    public var family: ModelFamily { modelType == "bert" ? .bert : .llama }
    public var headSize: Int { headDimOverride ?? hiddenSize / numAttentionHeads }  // HS

    /// Classes of the sequence-classification head, or 0 when the model has none
    /// (BertModel, LlamaForCausalLM).
    public var numLabels: Int {
        guard architectures.contains(where: { $0.hasSuffix("ForSequenceClassification") }) else { return 0 }
        return id2label?.count ?? 2
    }

    /// Llama with an LM head (as opposed to a Llama sequence classifier).
    public var hasLMHead: Bool { family == .llama && numLabels == 0 }

    public var attentionShape: AttentionShape {
        AttentionShape(heads: numAttentionHeads, kvHeads: numKeyValueHeads, headSize: headSize,
                       causal: family == .llama)
    }

    /// Make this a sequence classifier with `labels` classes.
    public func withClassifier(labels: Int) -> ModelConfig {
        var c = self
        c.architectures = [family == .bert ? "BertForSequenceClassification" : "LlamaForSequenceClassification"]
        c.id2label = Dictionary(uniqueKeysWithValues: (0..<labels).map { ("\($0)", "LABEL_\($0)") })
        return c
    }

    /// Checks that the numbers fit together; throws a one-line error naming the key.
    public func validate(source: String = "config") throws {
        func bad(_ m: String) -> HeadAlignError { .badInput("\(source): \(m)") }
        guard ["bert", "llama", "mistral"].contains(modelType) else {
            throw bad("model_type '\(modelType)' is not supported (bert, llama, mistral)")
        }
        for (key, v) in [("vocab_size", vocabSize), ("hidden_size", hiddenSize), ("num_hidden_layers", numHiddenLayers),
                         ("num_attention_heads", numAttentionHeads), ("num_key_value_heads", numKeyValueHeads),
                         ("intermediate_size", intermediateSize), ("max_position_embeddings", maxPositionEmbeddings)] {
            guard v > 0 else { throw bad("\(key) must be positive, got \(v)") }
            guard v <= 1 << 24 else { throw bad("\(key) = \(v) is implausibly large") }
        }
        guard headDimOverride != nil || hiddenSize % numAttentionHeads == 0 else {
            throw bad("hidden_size \(hiddenSize) is not a multiple of num_attention_heads \(numAttentionHeads)")
        }
        guard numAttentionHeads % numKeyValueHeads == 0 else {
            throw bad("num_attention_heads \(numAttentionHeads) is not a multiple of num_key_value_heads \(numKeyValueHeads)")
        }
        switch family {
        case .bert:
            guard numKeyValueHeads == numAttentionHeads else { throw bad("BERT has no grouped-query attention (num_key_value_heads)") }
            guard hiddenAct == "gelu" else { throw bad("hidden_act '\(hiddenAct)' is not supported for BERT (gelu)") }
            guard typeVocabSize > 0 else { throw bad("type_vocab_size must be positive") }
            guard layerNormEps > 0 else { throw bad("layer_norm_eps must be positive") }
        case .llama:
            guard hiddenAct == "silu" else { throw bad("hidden_act '\(hiddenAct)' is not supported for Llama (silu)") }
            guard headSize % 2 == 0 else { throw bad("head size \(headSize) must be even for rotary embeddings") }
            guard rmsNormEps > 0 else { throw bad("rms_norm_eps must be positive") }
            guard ropeTheta > 0 else { throw bad("rope_theta must be positive") }
        }
        if let n = id2label?.count, numLabels > 0, n < 2 { throw bad("id2label needs at least 2 labels, has \(n)") }
    }

    // MARK: Presets

    /// Built-in shapes: the two tiny models the project trains, and real shapes of published models (random weights, for timing).
    public static let presetNames = ["bert-micro", "llama-micro", "bert-tiny", "bert-small", "llama-tiny", "minilm-l6", "bert-base", "llama2-7b"]

    public static func preset(_ name: String) throws -> ModelConfig {
        switch name {
        case "bert-micro":  // conformance cases (conformance/): small enough to dump every gradient; weights with
            // std 0.4 so that attention is far from uniform
            var c = ModelConfig.bert(vocab: 24, d: 8, layers: 2, heads: 2, ffn: 16, positions: 16).withClassifier(labels: 2)
            c.initializerRange = 0.4
            return c
        case "llama-micro":  // the same with grouped-query attention (4 query heads share 2 key/value heads)
            var c = ModelConfig.llama(vocab: 24, d: 8, layers: 2, heads: 4, kvHeads: 2, ffn: 16, positions: 32, eps: 1e-5)
            c.initializerRange = 0.4
            return c
        case "bert-tiny":
            return .bert(vocab: 1024, d: 64, layers: 2, heads: 4, ffn: 256, positions: 128).withClassifier(labels: 2)
        case "bert-small":  // SPEC.md's 4-layer, 4-head BERT (its view measurements)
            return .bert(vocab: 1024, d: 128, layers: 4, heads: 4, ffn: 512, positions: 128).withClassifier(labels: 2)
        case "minilm-l6":
            return .bert(vocab: 30522, d: 384, layers: 6, heads: 12, ffn: 1536, positions: 512).withClassifier(labels: 2)
        case "bert-base":
            return .bert(vocab: 30522, d: 768, layers: 12, heads: 12, ffn: 3072, positions: 512).withClassifier(labels: 2)
        case "llama-tiny":
            return .llama(vocab: 512, d: 64, layers: 2, heads: 4, kvHeads: 2, ffn: 176, positions: 256, eps: 1e-5)
        case "llama2-7b":
            return .llama(vocab: 32000, d: 4096, layers: 32, heads: 32, kvHeads: 32, ffn: 11008, positions: 4096, eps: 1e-5)
        default:
            throw HeadAlignError.usage("--preset: unknown preset '\(name)' (one of \(presetNames.joined(separator: ", ")))")
        }
    }

    public static func bert(vocab: Int, d: Int, layers: Int, heads: Int, ffn: Int, positions: Int) -> ModelConfig {
        ModelConfig(modelType: "bert", architectures: ["BertModel"], vocabSize: vocab, hiddenSize: d,
                    numHiddenLayers: layers, numAttentionHeads: heads, numKeyValueHeads: heads,
                    intermediateSize: ffn, hiddenAct: "gelu", maxPositionEmbeddings: positions, typeVocabSize: 2,
                    layerNormEps: 1e-12, rmsNormEps: 1e-6, ropeTheta: 10000, tieWordEmbeddings: false,
                    initializerRange: 0.02, id2label: nil, headDimOverride: nil, slidingWindow: nil,
                    ropeInterleaved: false, padTokenId: 0, bosTokenId: nil, eosTokenId: nil)
    }

    public static func llama(vocab: Int, d: Int, layers: Int, heads: Int, kvHeads: Int, ffn: Int, positions: Int,
                             eps: Double) -> ModelConfig {
        ModelConfig(modelType: "llama", architectures: ["LlamaForCausalLM"], vocabSize: vocab, hiddenSize: d,
                    numHiddenLayers: layers, numAttentionHeads: heads, numKeyValueHeads: kvHeads,
                    intermediateSize: ffn, hiddenAct: "silu", maxPositionEmbeddings: positions, typeVocabSize: 2,
                    layerNormEps: 1e-12, rmsNormEps: eps, ropeTheta: 10000, tieWordEmbeddings: false,
                    initializerRange: 0.02, id2label: nil, headDimOverride: nil, slidingWindow: nil,
                    ropeInterleaved: false, padTokenId: nil, bosTokenId: 1, eosTokenId: 2)
    }

    /// Parse a `config.json`; errors name the file.
    public static func load(contentsOf url: URL) throws -> ModelConfig {
        let data: Data
        do { data = try Data(contentsOf: url) } catch {
            throw HeadAlignError.badInput("\(url.path): cannot read (\(error.localizedDescription))")
        }
        try checkNumbers(data, path: url.path)
        let config: ModelConfig
        do { config = try JSONDecoder().decode(ModelConfig.self, from: data) } catch let DecodingError.keyNotFound(key, _) {
            throw HeadAlignError.badInput("\(url.path): missing key '\(key.stringValue)'")
        } catch let DecodingError.typeMismatch(_, ctx), let DecodingError.valueNotFound(_, ctx) {
            let key = ctx.codingPath.map(\.stringValue).joined(separator: ".")
            if key.isEmpty { throw HeadAlignError.badInput("\(url.path): not a valid config JSON object") }
            throw HeadAlignError.badInput("\(url.path): key '\(key)' has the wrong type (\(ctx.debugDescription))")
        } catch let DecodingError.dataCorrupted(ctx) where !ctx.codingPath.isEmpty {
            throw HeadAlignError.badInput("\(url.path): key '\(ctx.codingPath.map(\.stringValue).joined(separator: "."))' is not valid (\(ctx.debugDescription))")
        } catch {
            throw HeadAlignError.badInput("\(url.path): not a valid config JSON object")
        }
        try config.validate(source: url.path)
        return config
    }

    /// The keys read as integers, and every number, checked on the strict reader first so that a
    /// fraction (`2.5`), an overflow (`1e999`, a 30-digit integer) or a non-number names its key:
    /// Foundation's decoder reports some of these without a coding path.
    static func checkNumbers(_ data: Data, path: String) throws {
        let json: JSONValue
        do { json = try data.withUnsafeBytes { try JSONValue.parse($0.bindMemory(to: UInt8.self)) } } catch {
            throw HeadAlignError.badInput("\(path): not valid JSON (\(error))")
        }
        guard case .object(let members) = json else { throw HeadAlignError.badInput("\(path): not a valid config JSON object (\(json.described))") }
        let integerKeys: Set<CodingKeys> = [.vocabSize, .hiddenSize, .numHiddenLayers, .numAttentionHeads, .numKeyValueHeads,
                                            .intermediateSize, .maxPositionEmbeddings, .typeVocabSize, .headDimOverride,
                                            .slidingWindow, .padTokenId, .bosTokenId, .eosTokenId]
        let doubleKeys: Set<CodingKeys> = [.layerNormEps, .rmsNormEps, .ropeTheta, .initializerRange]
        for (key, value) in members {
            guard let k = CodingKeys(stringValue: key) else { continue }  // keys headalign does not read
            if integerKeys.contains(k) {
                switch value {
                case .integer, .null: continue
                case .bigInteger(let digits):
                    throw HeadAlignError.badInput("\(path): key '\(key)' = \(digits.prefix(40)) does not fit a 64-bit integer")
                case .float(let d) where d.isFinite && d == d.rounded() && abs(d) < 0x1p53:
                    continue  // 512.0: a whole number as the decoder reads it
                case .float(let d):
                    throw HeadAlignError.badInput("\(path): key '\(key)' must be a whole number, got \(d.isFinite ? String(d) : "an overflowing number")")
                default:
                    throw HeadAlignError.badInput("\(path): key '\(key)' has the wrong type (a whole number expected, got \(value.described))")
                }
            }
            if doubleKeys.contains(k) {
                switch value {
                case .integer, .null: continue
                case .float(let d) where d.isFinite: continue
                case .float, .bigInteger:
                    throw HeadAlignError.badInput("\(path): key '\(key)' overflows a 64-bit float")
                default:
                    throw HeadAlignError.badInput("\(path): key '\(key)' has the wrong type (a number expected, got \(value.described))")
                }
            }
        }
    }
}

extension ModelConfig {
    // In an extension so the memberwise initialiser stays available to the presets.
    public init(from decoder: Decoder) throws {
        let c = try decoder.container(keyedBy: CodingKeys.self)
        modelType = try c.decodeIfPresent(String.self, forKey: .modelType) ?? "bert"
        let isBert = modelType == "bert"
        architectures = try c.decodeIfPresent([String].self, forKey: .architectures)
            ?? [isBert ? "BertModel" : "LlamaForCausalLM"]
        vocabSize = try c.decode(Int.self, forKey: .vocabSize)
        hiddenSize = try c.decode(Int.self, forKey: .hiddenSize)
        numHiddenLayers = try c.decode(Int.self, forKey: .numHiddenLayers)
        numAttentionHeads = try c.decode(Int.self, forKey: .numAttentionHeads)
        numKeyValueHeads = try c.decodeIfPresent(Int.self, forKey: .numKeyValueHeads) ?? numAttentionHeads
        intermediateSize = try c.decode(Int.self, forKey: .intermediateSize)
        hiddenAct = try c.decodeIfPresent(String.self, forKey: .hiddenAct) ?? (isBert ? "gelu" : "silu")
        maxPositionEmbeddings = try c.decodeIfPresent(Int.self, forKey: .maxPositionEmbeddings) ?? (isBert ? 512 : 2048)
        typeVocabSize = try c.decodeIfPresent(Int.self, forKey: .typeVocabSize) ?? 2
        layerNormEps = try c.decodeIfPresent(Double.self, forKey: .layerNormEps) ?? 1e-12
        rmsNormEps = try c.decodeIfPresent(Double.self, forKey: .rmsNormEps) ?? 1e-6
        ropeTheta = try c.decodeIfPresent(Double.self, forKey: .ropeTheta) ?? 10000
        tieWordEmbeddings = try c.decodeIfPresent(Bool.self, forKey: .tieWordEmbeddings) ?? false
        initializerRange = try c.decodeIfPresent(Double.self, forKey: .initializerRange) ?? 0.02
        id2label = try c.decodeIfPresent([String: String].self, forKey: .id2label)
        headDimOverride = try c.decodeIfPresent(Int.self, forKey: .headDimOverride)
        slidingWindow = try c.decodeIfPresent(Int.self, forKey: .slidingWindow)
        ropeInterleaved = try c.decodeIfPresent(Bool.self, forKey: .ropeInterleaved) ?? false
        padTokenId = try c.decodeIfPresent(Int.self, forKey: .padTokenId)
        bosTokenId = try c.decodeIfPresent(Int.self, forKey: .bosTokenId)
        eosTokenId = try c.decodeIfPresent(Int.self, forKey: .eosTokenId)
    }
}
