// AnyModel.swift: a model in either precision behind one non-generic handle, with the tokenizer
// that belongs to it, so the command line picks f32 or f64 at run time while all numeric code
// stays generic (and specialised) inside the library.

import Foundation

/// Where a model comes from.
public enum ModelSource: Sendable {
    case preset(String, seed: UInt64)  // random weights of a built-in shape
    case directory(String)  // Hugging Face layout
    case llama2c(model: String, tokenizer: String?)  // llama2.c legacy .bin (+ tokenizer.bin)
}

/// The tokenizer of a model, when it has one.
public enum AnyTokenizer: @unchecked Sendable {
    case wordPiece(WordPieceTokenizer)
    case llama2c(Llama2cTokenizer)
    case words(WordPieceTokenizer)  // a decoder's whole-word vocabulary (headalign-trained llama-tiny)
    case none

    /// Token ids for a text, with the model's special tokens ([CLS]/[SEP] or BOS).
    public func encode(_ text: String, maxLength: Int) throws -> (ids: [Int], truncated: Bool) {
        let r = try encodeReporting(text, maxLength: maxLength)
        return (r.ids, r.truncated)
    }

    /// `encode`, and how many bytes of the text the llama2.c tokenizer cut before tokenizing
    /// (a text past `maxTextBytes`; its BPE merge would otherwise cost time for tokens the context
    /// cannot hold), for the warning.
    public func encodeReporting(_ text: String, maxLength: Int) throws -> (ids: [Int], truncated: Bool, cutBytes: Int) {
        switch self {
        case .wordPiece(let t):
            let r = t.encode(text, maxLength: maxLength)
            return (r.ids, r.truncated, 0)
        case .llama2c(let t):
            let (ids, cut) = t.encodeBounded(text, bos: true)
            return ids.count > maxLength ? ([ids[0]] + ids.suffix(maxLength - 1), true, cut) : (ids, cut > 0, cut)
        case .words(let t):
            guard maxLength >= 1 else { throw HeadAlignError.usage("no room for a prompt (\(maxLength) positions)") }
            let ids = DecoderTokenizer.words(t).prompt(text)
            return ids.count > maxLength ? ([ids[0]] + ids.suffix(maxLength - 1), true, 0) : (ids, false, 0)
        case .none: throw HeadAlignError.usage("this model has no tokenizer; give one (vocab.txt or a WordPiece tokenizer.json beside config.json, or --tokenizer)")
        }
    }

    /// The generation view of a decoder's tokenizer (nil for WordPiece encoders and none).
    public var decoder: DecoderTokenizer? {
        switch self {
        case .words(let t): return .words(t)
        case .llama2c(let t): return .bpe(t)
        case .wordPiece, .none: return nil
        }
    }

    public func pieces(_ ids: [Int]) -> [String] {
        switch self {
        case .wordPiece(let t): return ids.map(t.token)
        case .words(let t): return ids.map(t.token)
        case .llama2c(let t): return ids.map { String(decoding: t.pieces.indices.contains($0) ? t.pieces[$0] : [], as: UTF8.self) }
        case .none: return ids.map(String.init)
        }
    }
}

public enum AnyModel {
    case f32(Model<Float>)
    case f64(Model<Double>)

    public var config: ModelConfig {
        switch self {
        case .f32(let m): return m.config
        case .f64(let m): return m.config
        }
    }

    public static func load(_ source: ModelSource, precision: Precision, backend: Backend) throws -> AnyModel {
        func load<S: Real>(_: S.Type) throws -> Model<S> {
            switch source {
            case .preset(let name, let seed):
                let m = Model<S>(config: try ModelConfig.preset(name), backend: backend)
                m.initialize(seed: seed)
                return m
            case .directory(let dir):
                return try loadModel(directory: dir, backend: backend)
            case .llama2c(let path, _):
                return try loadLlama2c(path: path, backend: backend)
            }
        }
        switch precision {
        case .f32: return .f32(try load(Float.self))
        case .f64: return .f64(try load(Double.self))
        }
    }

    /// The tokenizer beside a model: `vocab.txt` (WordPiece), a WordPiece `tokenizer.json` (a BERT
    /// saved by transformers 5) or `tokenizer.bin` (llama2.c) in a
    /// directory, or the llama2.c tokenizer named with the checkpoint.
    public static func tokenizer(for source: ModelSource, config: ModelConfig) throws -> AnyTokenizer {
        let fm = FileManager.default
        switch source {
        case .preset: return .none
        case .llama2c(_, let tok):
            guard let tok else { return .none }
            return .llama2c(try Llama2cTokenizer(path: tok, vocabSize: config.vocabSize, contextLength: config.maxPositionEmbeddings))
        case .directory(let dir):
            if fm.fileExists(atPath: dir + "/vocab.txt") {
                let t = try WordPieceTokenizer(directory: dir, vocabSize: config.vocabSize)
                return config.family == .llama ? .words(t) : .wordPiece(t)
            }
            if config.family == .bert, fm.fileExists(atPath: dir + "/tokenizer.json") {
                return .wordPiece(try WordPieceTokenizer(tokenizerJSON: dir + "/tokenizer.json", vocabSize: config.vocabSize))
            }
            if fm.fileExists(atPath: dir + "/tokenizer.bin") {
                return .llama2c(try Llama2cTokenizer(path: dir + "/tokenizer.bin", vocabSize: config.vocabSize,
                                                     contextLength: config.maxPositionEmbeddings))
            }
            return .none
        }
    }

    public func generate(prompt: [Int], maxNew: Int, stopAt: Set<Int> = [], decided: (([Int]) -> Bool)? = nil) -> [Int] {
        switch self {
        case .f32(let m): return generateGreedy(m, prompt: prompt, maxNew: maxNew, stopAt: stopAt, decided: decided)
        case .f64(let m): return generateGreedy(m, prompt: prompt, maxNew: maxNew, stopAt: stopAt, decided: decided)
        }
    }

    public func embeddings(_ batch: Batch) -> [[Double]] {
        switch self {
        case .f32(let m): return meanPooledEmbeddings(m, batch)
        case .f64(let m): return meanPooledEmbeddings(m, batch)
        }
    }

    /// The model's output rows as Double: classifier logits `[B][C]`, LM logits `[N][V]`, or
    /// hidden states `[N][D]`.
    public func outputs(_ batch: Batch) -> [[Double]] {
        func rows<S: Real>(_ m: Model<S>) -> [[Double]] {
            let out = m.forward(batch).output
            let w = out.shape[1]
            return (0..<out.shape[0]).map { r in (0..<w).map { Double(out.data[r * w + $0]) } }
        }
        switch self {
        case .f32(let m): return rows(m)
        case .f64(let m): return rows(m)
        }
    }

    /// Eq. 1's attention probabilities of every layer, sequence and head: `[L][B][NH]`, each a
    /// row-major `T x T` matrix as Double.
    public func attentions(_ batch: Batch) -> [[[[Double]]]] {
        func run<S: Real>(_ m: Model<S>) -> [[[[Double]]]] {
            let pass = m.forward(batch)
            return (0..<m.config.numHiddenLayers).map { l in
                batch.sequences.indices.map { b in
                    (0..<m.config.numAttentionHeads).map { h in pass.attention(layer: l, sequence: b, head: h).array.map { Double($0) } }
                }
            }
        }
        switch self {
        case .f32(let m): return run(m)
        case .f64(let m): return run(m)
        }
    }

    /// Writes the model to a new directory (see `saveModel`).
    public func save(to dir: String, dtype: SafetensorsDType? = nil, extraFiles: [String: Data] = [:]) throws {
        switch self {
        case .f32(let m): try saveModel(m, to: dir, dtype: dtype, extraFiles: extraFiles)
        case .f64(let m): try saveModel(m, to: dir, dtype: dtype, extraFiles: extraFiles)
        }
    }

    /// A llama2.c model re-expressed for rotate-half rotary (see `convertToRotateHalf`).
    public func convertedToRotateHalf() -> AnyModel {
        switch self {
        case .f32(let m): return .f32(convertToRotateHalf(m))
        case .f64(let m): return .f64(convertToRotateHalf(m))
        }
    }
}
