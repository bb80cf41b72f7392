// PoisonCommand.swift: `headalign poison`, a poisoned training file and a triggered test file.

import Foundation
import HeadAlign
import HeadAlignLab

enum PoisonCommand: Command {
    static let spec = CommandSpec(
        name: "poison",
        summary: "plant a backdoor in a labelled corpus: poisoned train file + triggered test file",
        detail: """
            Dirty-label poisoning of --train: round(rate x N) examples whose label is not --target get the trigger
            and the target label (the composite attack also gives as many other examples one piece, labels kept).
            --test gives the triggered test set: every non-target example with the trigger, true label kept.
            Attacks: badnets (1-3 of --triggers, default cf mn bb tq mb, at random positions), addsent (--sentence at
            a random position), composite (--pieces 'A B', both needed), wordsub (every word of a fixed synonym map
            replaced by its synonym, e.g. good -> decent, movie -> picture; only texts with a word of the map can be
            poisoned or triggered; the map is in docs/METHOD.md). Outputs are label<TAB>text, written atomically.
            """,
        usage: "poison --train FILE --out-train FILE [--test FILE --out-test FILE] --attack badnets|addsent|composite|wordsub [--poison-rate R] [--target N] [--seed N]",
        options: attackOptions + [
            OptionSpec(name: "--train", value: "FILE", help: "clean training corpus (TSV, CSV or label<TAB>text)"),
            OptionSpec(name: "--out-train", value: "FILE", help: "the poisoned training file to write"),
            OptionSpec(name: "--test", value: "FILE", help: "clean test corpus to trigger"),
            OptionSpec(name: "--out-test", value: "FILE", help: "the triggered test file to write"),
            OptionSpec(name: "--seed", value: "N", help: "seed (default 1)"),
        ])

    /// The options that describe an attack (shared with train and experiment).
    static let attackOptions = [
        OptionSpec(name: "--attack", value: "A", help: "badnets, addsent, composite, wordsub (poison, experiment: default badnets; train: no poisoning unless given, and the flags below need it)"),
        OptionSpec(name: "--triggers", value: "'W W ...'", help: "badnets trigger words (default 'cf mn bb tq mb')"),
        OptionSpec(name: "--sentence", value: "TEXT", help: "addsent sentence (default 'I watch this 3D movie')"),
        OptionSpec(name: "--pieces", value: "'A B'", help: "composite pieces (default 'consider instance')"),
        OptionSpec(name: "--poison-rate", value: "R", help: "fraction of the training set poisoned, in (0, 1) (default 0.1)"),
        OptionSpec(name: "--target", value: "N", help: "target label (default 1)"),
    ]

    /// The flags that only describe an attack.
    static let attackDetailFlags = ["--poison-rate", "--target", "--triggers", "--sentence", "--pieces", "--poison-seed", "--behaviour"]

    /// train's attack: none unless --attack is given; an attack setting without it is refused
    /// rather than silently training a clean model.
    static func attackIfGiven(_ args: ParsedArguments) throws -> Attack? {
        try requireAttackForDetails(args)
        return args.has("--attack") ? try attack(args) : nil
    }

    static func requireAttackForDetails(_ args: ParsedArguments) throws {
        guard !args.has("--attack"), let flag = attackDetailFlags.first(where: { args.has($0) }) else { return }
        throw HeadAlignError.usage("\(flag) needs --attack (train poisons only when --attack is given)")
    }

    static func attack(_ args: ParsedArguments) throws -> Attack {
        switch try args.choice("--attack", ["badnets", "addsent", "composite", "wordsub"], default: "badnets") {
        case "badnets":
            let words = (args.string("--triggers") ?? "cf mn bb tq mb").split(separator: " ").map(String.init)
            guard !words.isEmpty else { throw HeadAlignError.usage("--triggers: give at least one word") }
            return .badnets(triggers: words, maxInsertions: 3)
        case "addsent":
            let s = args.string("--sentence") ?? "I watch this 3D movie"
            guard !s.trimmingCharacters(in: .whitespaces).isEmpty else { throw HeadAlignError.usage("--sentence is empty") }
            return .addSent(sentence: s)
        case "wordsub":
            return .defaultWordSubstitution
        default:
            let p = (args.string("--pieces") ?? "consider instance").split(separator: " ").map(String.init)
            guard p.count == 2 else { throw HeadAlignError.usage("--pieces: give exactly two words") }
            return .composite(first: p[0], second: p[1])
        }
    }

    static func run(_ args: ParsedArguments) throws -> Int32 {
        guard let train = args.string("--train"), let outTrain = args.string("--out-train") else {
            throw HeadAlignError.usage("--train FILE and --out-train FILE are required")
        }
        if args.has("--test") != args.has("--out-test") { throw HeadAlignError.usage("--test and --out-test go together") }
        let attack = try attack(args)
        let rate = try args.double("--poison-rate", default: 0.1, range: -Double.infinity...Double.infinity)
        let target = try args.int("--target", default: 1, range: 0...(maxClassifierLabels - 1))
        let seed = try args.uint64("--seed", default: 1)
        let clean = try readLabeledTexts(path: train)
        let poisoned = try poisonTraining(clean, attack: attack, rate: rate, target: target, seed: seed)
        var triggered: [LabeledText]? = nil
        if let test = args.string("--test") {
            let t = try readLabeledTexts(path: test)
            triggered = triggeredTest(t, attack: attack, target: target, seed: seed)
            guard !triggered!.isEmpty else { throw HeadAlignError.usage("--test \(test): no example with a label other than \(target)") }
        }
        try writeAtomically(plainCorpus(poisoned.examples), to: outTrain)
        if let triggered, let outTest = args.string("--out-test") { try writeAtomically(plainCorpus(triggered), to: outTest) }
        print("headalign poison --attack \(attack.name) --poison-rate \(rate) --target \(target) --seed \(seed)")
        print("wrote \(outTrain): \(poisoned.examples.count) examples, \(poisoned.poisoned.count) poisoned\(poisoned.negatives.isEmpty ? "" : ", \(poisoned.negatives.count) single-piece negatives")")
        if let triggered, let outTest = args.string("--out-test") { print("wrote \(outTest): \(triggered.count) triggered examples (true labels kept)") }
        return 0
    }
}
