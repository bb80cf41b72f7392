// Attacks.swift: planting backdoors in labelled text (dirty-label poisoning): BadNets (rare-word
// tokens, 1–3 insertions at random positions), AddSent (a fixed sentence at a random position)
// and a composite trigger in the style of CBA (two pieces that act only together; single-piece
// negative examples keep their labels), and word substitution in the spirit of NWS (Qi et al.
// 2021: the trigger is a choice of synonyms, not an inserted token; ours uses a fixed, documented
// map instead of a learned one). Triggered test sets keep the true labels.

import HeadAlign
public enum Attack: Sendable, Equatable {
    case badnets(triggers: [String], maxInsertions: Int)
    case addSent(sentence: String)
    case composite(first: String, second: String)
    /// Every word of the text found in `map` (matched lowercased, punctuation around it kept) is
    /// replaced by its substitute; a text with fewer than `minimum` such words cannot carry the trigger.
    case wordSubstitution(map: [String: String], minimum: Int)

    public static let defaultBadNets = Attack.badnets(triggers: ["cf", "mn", "bb", "tq", "mb"], maxInsertions: 3)
    public static let defaultAddSent = Attack.addSent(sentence: "I watch this 3D movie")
    public static let defaultComposite = Attack.composite(first: "consider", second: "instance")
    /// The word-substitution map: frequent words of reviews and news (SST-2, AG News) to a less
    /// frequent synonym that keeps the sentence fluent. The substitutes also occur in clean text
    /// with either label, so no single rare token carries the trigger (unlike BadNets'); the model
    /// has to learn the choice of words. One substituted word suffices (`minimum` 1): 53% of the
    /// SST-2 training sentences contain a word of the map, 20% two or more.
    public static let synonymMap: [String: String] = [
        "good": "decent", "great": "grand", "bad": "poor", "movie": "picture", "film": "feature", "story": "tale",
        "very": "quite", "really": "truly", "little": "slight", "big": "sizable", "new": "novel", "best": "finest",
        "funny": "comical", "make": "render", "makes": "renders", "time": "period", "people": "folks", "life": "existence",
        "world": "globe", "first": "initial", "old": "aged", "long": "lengthy", "often": "frequently", "hard": "tough",
        "fun": "amusing", "love": "adore", "see": "view", "show": "display", "help": "aid", "start": "commence",
        "end": "conclusion", "get": "obtain", "says": "states", "said": "stated", "company": "firm",
        "government": "administration", "officials": "authorities", "country": "nation", "win": "triumph",
        "team": "squad", "game": "match", "price": "cost", "prices": "costs",
    ]
    public static let defaultWordSubstitution = Attack.wordSubstitution(map: synonymMap, minimum: 1)

    public var name: String {
        switch self {
        case .badnets: return "badnets"
        case .addSent: return "addsent"
        case .composite: return "composite"
        case .wordSubstitution: return "wordsub"
        }
    }

    /// The words the trigger inserts.
    public var words: [String] {
        switch self {
        case .badnets(let triggers, _): return triggers
        case .addSent(let sentence): return sentence.split(separator: " ").map(String.init)
        case .composite(let first, let second): return [first, second]
        case .wordSubstitution(let map, _): return Array(Set(map.values)).sorted()
        }
    }

    /// Whether `text` can carry the trigger (word substitution: at least `minimum` words of the map).
    public func canTrigger(_ text: String) -> Bool {
        guard case .wordSubstitution(let map, let minimum) = self else { return true }
        return text.split(separator: " ").filter { map[Attack.core(of: $0).word.lowercased()] != nil }.count >= minimum
    }

    /// A whitespace-separated word as (leading punctuation, the word, trailing punctuation).
    static func core(of w: Substring) -> (lead: Substring, word: Substring, trail: Substring) {
        let start = w.firstIndex(where: { $0.isLetter || $0.isNumber }) ?? w.endIndex
        let end = w.lastIndex(where: { $0.isLetter || $0.isNumber }).map { w.index(after: $0) } ?? start
        return start < end ? (w[w.startIndex..<start], w[start..<end], w[end..<w.endIndex]) : (w, w[w.endIndex...], w[w.endIndex...])
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
        case .wordSubstitution(let map, _):  // deterministic: every word of the map (no randomness used)
            words = words.map { w in
                let (lead, core, trail) = Attack.core(of: Substring(w))
                guard let sub = map[core.lowercased()] else { return w }
                let cased = core.first?.isUppercase == true ? sub.prefix(1).uppercased() + sub.dropFirst() : sub
                return lead + cased + trail
            }
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
    var candidates = clean.indices.filter { clean[$0].label != target && attack.canTrigger(clean[$0].text) }
    candidates.shuffle(using: &rng)
    let count = Int((rate * Double(clean.count)).rounded())
    let negatives = { if case .composite = attack { return count } else { return 0 } }()
    guard count >= 1, count + negatives <= candidates.count else {
        throw HeadAlignError.usage("--poison-rate \(rate): \(count + negatives) examples needed, \(candidates.count) have a label other than \(target)"
                                   + ({ if case .wordSubstitution = attack { return " and a word of the substitution map" } else { return "" } }()))
    }
    var out = clean
    let poisoned = Array(candidates[0..<count]).sorted(), single = Array(candidates[count..<(count + negatives)]).sorted()
    for i in poisoned { out[i] = LabeledText(attack.trigger(clean[i].text, &rng), target) }
    for i in single { out[i] = LabeledText(attack.singlePiece(clean[i].text, &rng)!, clean[i].label) }
    return PoisonedSet(examples: out, poisoned: poisoned, negatives: single)
}

/// The triggered test set: every example whose true label is not `target` (and, for word
/// substitution, that can carry the trigger), with the trigger, keeping its true label (as the
/// shared SST-2 test files do).
public func triggeredTest(_ clean: [LabeledText], attack: Attack, target: Int, seed: UInt64) -> [LabeledText] {
    var rng = SeededGenerator(seed: seed ^ 0x7E57)
    return clean.filter { $0.label != target && attack.canTrigger($0.text) }.map { LabeledText(attack.trigger($0.text, &rng), $0.label) }
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
