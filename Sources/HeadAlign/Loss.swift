// Loss.swift: the two objectives, as SPEC.md fixes their reductions. Classification: mean
// cross-entropy over the batch. Next-token prediction: cross-entropy summed over each sequence's
// target tokens, then the mean over sequences.

public enum Objective: Sendable {
    /// One label per sequence, for a model with a classifier head.
    case classification(labels: [Int])
    /// Per sequence and position, the token the model should predict there, or -1 for none.
    case nextToken(targets: [[Int]])

    /// Targets for plain language modelling: position t predicts token t+1; padding and the
    /// last position predict nothing.
    public static func languageModeling(_ batch: Batch) -> Objective {
        .nextToken(targets: batch.sequences.map { s in
            (0..<s.count).map { t in t + 1 < s.count && s.isReal(t) && s.isReal(t + 1) ? s.tokens[t + 1] : -1 }
        })
    }
}

/// The loss of a forward pass and dL/d(output), ready for `Model.backward`.
@_specialize(exported: true, where S == Float)
@_specialize(exported: true, where S == Double)
public func loss<S: Real>(_ pass: ForwardPass<S>, _ objective: Objective) -> (loss: Double, dOutput: Tensor<S>) {
    let out = pass.output, batch = pass.batch
    let dOutput = Tensor<S>(out.shape)
    let scale = S(1) / S(batch.count)
    let targets: [Int]
    switch objective {
    case .classification(let labels):
        precondition(labels.count == batch.count && out.shape[0] == batch.count,
                     "loss: \(labels.count) labels for \(batch.count) sequences, output \(out.shape)")
        targets = labels
    case .nextToken(let perSequence):
        precondition(perSequence.count == batch.count && out.shape[0] == batch.tokenCount,
                     "loss: next-token targets need LM logits [N, V], output is \(out.shape)")
        precondition(zip(perSequence, batch.sequences).allSatisfy { $0.count == $1.count },
                     "loss: one target per position")
        targets = perSequence.flatMap { $0 }
    }
    let total = crossEntropy(out, targets: targets, scale: scale, dlogits: dOutput)
    return (total / Double(batch.count), dOutput)
}

/// The index of the largest entry in each row of a `[R, W]` output (the first on ties): a
/// classifier's predictions, or an LM's greedy next tokens.
@_specialize(exported: true, where S == Float)
@_specialize(exported: true, where S == Double)
public func rowArgmax<S: Real>(_ t: Tensor<S>) -> [Int] {
    let w = t.shape[1]
    return (0..<t.shape[0]).map { argmax(UnsafeBufferPointer(start: t.data + $0 * w, count: w)) }
}

/// The index of the largest entry (the first on ties).
public func argmax<C: RandomAccessCollection>(_ xs: C) -> Int where C.Element: Comparable, C.Index == Int {
    var best = xs.startIndex
    for j in xs.indices where xs[j] > xs[best] { best = j }
    return best - xs.startIndex
}

/// Next-token targets for Eq. 4 on a decoder: position t predicts token t+1 for the generated
/// tokens only (from the last prompt position on); -1 elsewhere (no loss).
public func generationTargets(_ tokens: [Int], promptLength tp: Int) -> [Int] {
    (0..<tokens.count).map { t in t >= tp - 1 && t + 1 < tokens.count ? tokens[t + 1] : -1 }
}
