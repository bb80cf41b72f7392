// Inference.swift: using a model without training it: greedy generation, mean-pooled sentence
// embeddings, classifier predictions.

/// Greedy continuation of `prompt`: `maxNew` tokens, each the argmax of the last position's logits
/// (the first index on ties). Stops early at a token in `stopAt` (not included) or when the
/// context is full, or once `decided` (given the tokens so far) says the caller has what it needs.
/// Uses a key/value cache (KVCache.swift): one position per step.
public func generateGreedy<S: Real>(_ model: Model<S>, prompt: [Int], maxNew: Int, stopAt: Set<Int> = [],
                                    decided: (([Int]) -> Bool)? = nil) -> [Int] {
    precondition(model.config.hasLMHead && model.config.family == .llama, "generateGreedy: needs a Llama decoder with an LM head")
    precondition(!prompt.isEmpty, "generateGreedy: empty prompt")
    let positions = model.config.maxPositionEmbeddings
    guard maxNew > 0 && prompt.count < positions else { return [] }
    let cache = KeyValueCache(model, capacity: min(positions, prompt.count + maxNew))
    var generated: [Int] = [], feed = prompt
    for _ in 0..<maxNew {
        if prompt.count + generated.count >= positions { break }
        let best = argmax(cache.append(feed))  // of the logits [V] at the last position
        if stopAt.contains(best) { break }
        generated.append(best)
        if let decided, decided(generated) { break }
        feed = [best]
    }
    return generated
}

/// The same without a cache: the whole prefix through `Model.forward` at every step. The
/// reference `generateGreedy` is tested against.
@_specialize(exported: true, where S == Float)
@_specialize(exported: true, where S == Double)
public func generateGreedyUncached<S: Real>(_ model: Model<S>, prompt: [Int], maxNew: Int, stopAt: Set<Int> = []) -> [Int] {
    precondition(model.config.hasLMHead, "generateGreedyUncached: the model has no LM head")
    precondition(!prompt.isEmpty, "generateGreedyUncached: empty prompt")
    var tokens = prompt
    var generated: [Int] = []
    let v = model.config.vocabSize
    for _ in 0..<maxNew {
        if tokens.count >= model.config.maxPositionEmbeddings { break }
        let logits = model.forward(Batch([tokens])).output  // [T, V]
        let best = argmax(UnsafeBufferPointer(start: logits.data + (tokens.count - 1) * v, count: v))
        if stopAt.contains(best) { break }
        generated.append(best)
        tokens.append(best)
    }
    return generated
}

/// Sentence embeddings as sentence-transformers computes them for MiniLM: the mean of the last
/// hidden states over the real tokens ([CLS] and [SEP] included), L2-normalised. `[B, D]`.
@_specialize(exported: true, where S == Float)
@_specialize(exported: true, where S == Double)
public func meanPooledEmbeddings<S: Real>(_ model: Model<S>, _ batch: Batch) -> [[Double]] {
    precondition(model.config.family == .bert && model.config.numLabels == 0,
                 "meanPooledEmbeddings: needs a BERT encoder without a classifier head")
    let hidden = model.forward(batch).output  // [N, D]
    let d = model.config.hiddenSize
    return batch.sequences.enumerated().map { b, seq in
        var sum = [Double](repeating: 0, count: d)
        var n = 0.0
        for t in 0..<seq.count where seq.isReal(t) {
            let row = hidden.data + (batch.rowOffset[b] + t) * d
            for j in 0..<d { sum[j] += Double(row[j]) }
            n += 1
        }
        let mean = sum.map { $0 / n }
        let norm = mean.map { $0 * $0 }.reduce(0, +).squareRoot()
        return mean.map { $0 / max(norm, 1e-12) }
    }
}

/// Cosine similarity of unit vectors.
public func dot(_ a: [Double], _ b: [Double]) -> Double { zip(a, b).map(*).reduce(0, +) }
