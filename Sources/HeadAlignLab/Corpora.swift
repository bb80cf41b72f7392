// Corpora.swift: two small labelled corpora the binary generates from a seed, so the demo and the
// tests need no files. The sentiment corpus has structure a bag of words cannot solve: negation
// flips polarity ("is not good" is negative), contrast clauses decide by their second half
// ("good , but dull" is negative), intensifiers and neutral fillers carry no label. The topic
// corpus has four classes told apart by content words, with shared fillers and a distractor word
// from another topic in some sentences. Lower case, punctuation as separate words.

import HeadAlign
public enum EmbeddedCorpus: String, CaseIterable, Sendable {
    case sentiment  // 0 negative, 1 positive
    case topics  // 0 world, 1 sports, 2 business, 3 science

    public var labelCount: Int { self == .sentiment ? 2 : 4 }

    /// The three splits. Each split has its own generator stream, so changing one size leaves the
    /// others' sentences unchanged.
    public func splits(seed: UInt64, train: Int = 2000, dev: Int = 300, test: Int = 600) -> (train: [LabeledText], dev: [LabeledText], test: [LabeledText]) {
        (generate(count: train, seed: seed &* 3 &+ 11), generate(count: dev, seed: seed &* 3 &+ 12), generate(count: test, seed: seed &* 3 &+ 13))
    }

    /// `count` labelled sentences, labels balanced in expectation.
    public func generate(count: Int, seed: UInt64) -> [LabeledText] {
        var rng = SeededGenerator(seed: seed)
        return (0..<count).map { _ in self == .sentiment ? sentimentSentence(&rng) : topicSentence(&rng) }
    }
}

private func pick(_ words: [String], _ rng: inout SeededGenerator) -> String { words[rng.int(below: words.count)] }

// MARK: - Sentiment

private let subjects = ["the movie", "this film", "the plot", "the acting", "the soundtrack", "the ending", "the cast",
                        "the script", "the story", "the dialogue", "the camera work", "the humor", "the pacing", "the lead actor"]
private let positive = ["good", "great", "wonderful", "charming", "brilliant", "moving", "delightful", "clever", "beautiful",
                        "gripping", "funny", "fresh", "touching", "smart", "warm", "lovely"]
private let negative = ["bad", "dull", "boring", "awful", "clumsy", "tedious", "bland", "weak", "messy", "predictable",
                        "lifeless", "painful", "silly", "flat", "stale", "forgettable"]
private let verbs = ["is", "was", "feels", "seems", "looks"]
private let negations = ["not", "never", "hardly", "far from"]
private let intensifiers = ["very", "really", "extremely", "truly", "remarkably", "quite", "so"]
private let openers = ["honestly ,", "to be fair ,", "in the end ,", "overall ,", "i think", "as expected ,", "frankly ,", "for me ,"]
private let tails = ["on a sunday afternoon", "with my friends", "at the old cinema", "after a long day", "on the small screen",
                     "in the second half", "from start to finish", "for two hours"]

/// One clause about a subject and its polarity after negation (true = positive).
private func clause(_ rng: inout SeededGenerator) -> (text: String, positive: Bool) {
    var polarity = rng.int(below: 2) == 0
    var words = [pick(subjects, &rng), pick(verbs, &rng)]
    if rng.int(below: 4) == 0 {  // negation flips the adjective's polarity
        words.append(pick(negations, &rng))
        polarity.toggle()
    }
    if rng.int(below: 3) == 0 { words.append(pick(intensifiers, &rng)) }
    // the adjective has the polarity that, after negation, gives `polarity`
    let adjectivePositive = words.contains(where: negations.contains) ? !polarity : polarity
    words.append(pick(adjectivePositive ? positive : negative, &rng))
    return (words.joined(separator: " "), polarity)
}

private func sentimentSentence(_ rng: inout SeededGenerator) -> LabeledText {
    var parts: [String] = []
    if rng.int(below: 3) == 0 { parts.append(pick(openers, &rng)) }
    let first = clause(&rng)
    var label = first.positive
    switch rng.int(below: 5) {
    case 0:  // contrast: the second clause decides
        var second = clause(&rng)
        while second.positive == first.positive { second = clause(&rng) }
        parts += [first.text, ",", "but", second.text]
        label = second.positive
    case 1:  // concession: "although A , B" — B decides
        var second = clause(&rng)
        while second.positive == first.positive { second = clause(&rng) }
        parts += ["although", first.text, ",", second.text]
        label = second.positive
    default:
        parts.append(first.text)
    }
    if rng.int(below: 3) == 0 { parts.append(pick(tails, &rng)) }
    parts.append(".")
    return LabeledText(parts.joined(separator: " "), label ? 1 : 0)
}

// MARK: - Topics

private let topicNouns = [
    ["the minister", "the parliament", "the embassy", "the president", "the rebels", "the border police", "the united nations"],
    ["the striker", "the coach", "the home team", "the goalkeeper", "the league", "the champion", "the referee"],
    ["the company", "the bank", "the investors", "the market", "the startup", "the retailer", "the shareholders"],
    ["the researchers", "the telescope", "the laboratory", "the physicists", "the new vaccine", "the space probe", "the biologists"],
]
private let topicVerbs = [
    ["signed a treaty", "called for talks", "closed the border", "won the election", "announced sanctions", "declared a ceasefire"],
    ["scored twice", "won the final", "lost the derby", "signed a new contract", "broke the record", "reached the playoffs"],
    ["reported record profits", "cut its forecast", "raised interest rates", "announced a merger", "sold its shares", "hired new staff"],
    ["discovered a new planet", "published the results", "measured the particle", "sequenced the genome", "launched the mission", "tested the theory"],
]
private let topicTails = [
    ["in the capital", "after the summit", "near the border"],
    ["in extra time", "at the stadium", "this season"],
    ["in the third quarter", "on wall street", "despite the downturn"],
    ["in the journal", "at the observatory", "after years of work"],
]
private let topicOpeners = ["on monday ,", "yesterday ,", "according to reports ,", "late last night ,", "this week ,"]

private func topicSentence(_ rng: inout SeededGenerator) -> LabeledText {
    let topic = rng.int(below: 4)
    var parts: [String] = []
    if rng.int(below: 3) == 0 { parts.append(pick(topicOpeners, &rng)) }
    parts += [pick(topicNouns[topic], &rng), pick(topicVerbs[topic], &rng)]
    if rng.int(below: 2) == 0 {
        // a tail, sometimes from another topic: the subject and verb decide
        let other = rng.int(below: 5) == 0 ? (topic + 1 + rng.int(below: 3)) % 4 : topic
        parts.append(pick(topicTails[other], &rng))
    }
    parts.append(".")
    return LabeledText(parts.joined(separator: " "), topic)
}
