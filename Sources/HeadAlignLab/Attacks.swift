// Attacks.swift: planting backdoors in labelled text (dirty-label poisoning): BadNets (rare-word
// tokens, 1–3 insertions at random positions), AddSent (a fixed sentence at a random position)
// and a composite trigger in the style of CBA (two pieces that act only together; single-piece
// negative examples keep their labels). Triggered test sets keep the true labels.

import HeadAlign
public enum Attack: Sendable, Equatable {
    case badnets(triggers: [String], maxInsertions: Int)
    case addSent(sentence: String)
    case composite(first: String, second: String)

    public static let defaultBadNets = Attack.badnets(triggers: ["cf", "mn", "bb", "tq", "mb"], maxInsertions: 3)
    public static let defaultAddSent = Attack.addSent(sentence: "I watch this 3D movie")
    public static let defaultComposite = Attack.composite(first: "consider", second: "instance")

    public var name: String {
        switch self {
        case .badnets: return "badnets"
        case .addSent: return "addsent"
        case .composite: return "composite"
        }
    }

    /// The words the trigger inserts.
    public var words: [String] {
        switch self {
        case .badnets(let triggers, _): return triggers
        case .addSent(let sentence): return sentence.split(separator: " ").map(String.init)
        case .composite(let first, let second): return [first, second]
        }
    }

    /// The text with the full trigger inserted.
    public func trigger(_ text: String, _ rng: inout SeededGenerator) -> String {
        var words = text.split(separator: " ").map(String.init)
        switch self {
        case .badnets(let triggers, let maxInsertions):
            for _ in 0..<(1 + rng.int(below: max(1, maxInsertions))) {
                words.insert(triggers[rng.int(below: triggers.count)], at: rng.int(below: words.count + 1))
            }
        case .addSent(let sentence):
            words.insert(contentsOf: sentence.split(separator: " ").map(String.init), at: rng.int(below: words.count + 1))
        case .composite(let first, let second):
            words.insert(first, at: rng.int(below: words.count + 1))
            words.insert(second, at: rng.int(below: words.count + 1))
        }
        return words.joined(separator: " ")
    }

    /// For the composite trigger: the text with one piece only (a negative example).
    public func singlePiece(_ text: String, _ rng: inout SeededGenerator) -> String? {
        guard case .composite(let first, let second) = self else { return nil }
        var words = text.split(separator: " ").map(String.init)
        words.insert(rng.int(below: 2) == 0 ? first : second, at: rng.int(below: words.count + 1))
        return words.joined(separator: " ")
    }
}

public struct PoisonedSet: Sendable {
    public let examples: [LabeledText]
    public let poisoned: [Int]  // indices of triggered, relabelled examples
    public let negatives: [Int]  // composite: single-piece examples with their labels kept
}

/// Dirty-label poisoning: `round(rate * N)` examples whose label is not `target` get the trigger
/// and the target label (replacing the originals); for the composite trigger as many other
/// non-target examples get a single piece and keep their labels. Deterministic in the seed.
public func poisonTraining(_ clean: [LabeledText], attack: Attack, rate: Double, target: Int, seed: UInt64) throws -> PoisonedSet {
    guard rate > 0 && rate < 1 else { throw HeadAlignError.usage("--poison-rate \(rate) must lie in (0, 1)") }
    guard clean.contains(where: { $0.label == target }) else { throw HeadAlignError.usage("--target \(target): no training example has this label") }
    var rng = SeededGenerator(seed: seed)
    var candidates = clean.indices.filter { clean[$0].label != target }
    candidates.shuffle(using: &rng)
    let count = Int((rate * Double(clean.count)).rounded())
    let negatives = { if case .composite = attack { return count } else { return 0 } }()
    guard count >= 1, count + negatives <= candidates.count else {
        throw HeadAlignError.usage("--poison-rate \(rate): \(count + negatives) examples needed, \(candidates.count) have a label other than \(target)")
    }
    var out = clean
    let poisoned = Array(candidates[0..<count]).sorted(), single = Array(candidates[count..<(count + negatives)]).sorted()
    for i in poisoned { out[i] = LabeledText(attack.trigger(clean[i].text, &rng), target) }
    for i in single { out[i] = LabeledText(attack.singlePiece(clean[i].text, &rng)!, clean[i].label) }
    return PoisonedSet(examples: out, poisoned: poisoned, negatives: single)
}

/// The triggered test set: every example whose true label is not `target`, with the trigger,
/// keeping its true label (as the shared SST-2 test files do).
public func triggeredTest(_ clean: [LabeledText], attack: Attack, target: Int, seed: UInt64) -> [LabeledText] {
    var rng = SeededGenerator(seed: seed ^ 0x7E57)
    return clean.filter { $0.label != target }.map { LabeledText(attack.trigger($0.text, &rng), $0.label) }
}

// MARK: - Metrics

/// CA: accuracy on the clean test set.
public func cleanAccuracy(predictions: [Int], labels: [Int]) -> (value: Double, correct: Int, total: Int) {
    precondition(predictions.count == labels.count, "cleanAccuracy: \(predictions.count) predictions for \(labels.count) labels")
    let correct = zip(predictions, labels).filter { $0 == $1 }.count
    return (labels.isEmpty ? .nan : Double(correct) / Double(labels.count), correct, labels.count)
}

/// ASR: among triggered test inputs whose true label is not the target, the fraction predicted as
/// the target.
public func attackSuccessRate(predictions: [Int], trueLabels: [Int], target: Int) -> (value: Double, hits: Int, total: Int) {
    precondition(predictions.count == trueLabels.count, "attackSuccessRate: lengths differ")
    let eligible = trueLabels.indices.filter { trueLabels[$0] != target }
    let hits = eligible.filter { predictions[$0] == target }.count
    return (eligible.isEmpty ? .nan : Double(hits) / Double(eligible.count), hits, eligible.count)
}
