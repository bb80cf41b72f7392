// CorpusCommand.swift: `headalign corpus`, the embedded corpora written out as files
// (label<TAB>text), optionally with a trigger inserted, so they can be read, edited and fed to the
// file-based commands.

import Foundation
import HeadAlign
import HeadAlignLab

enum CorpusCommand: Command {
    static let spec = CommandSpec(
        name: "corpus",
        summary: "write a split of an embedded corpus (sentiment, topics) as label<TAB>text, optionally triggered",
        detail: """
            --split train|dev|test of the corpus generated from --corpus-seed (the splits the other commands use with
            --corpus). --first N keeps the first N rows. With --attack, every example whose label is not --target gets the
            trigger and keeps its true label (a triggered test set, as 'poison --test' makes). --text-only drops the
            labels. Written atomically to --out, or to standard output.
            """,
        usage: "corpus --corpus sentiment|topics --split train|dev|test [--first N] [--attack A [--target N] [--seed S]] [--text-only] [--out FILE]",
        options: corpusOptions + PoisonCommand.attackOptions + [
            OptionSpec(name: "--split", value: "S", help: "train, dev or test (default test)"),
            OptionSpec(name: "--first", value: "N", help: "keep the first N rows"),
            OptionSpec(name: "--seed", value: "N", help: "seed of the trigger positions (default 1)"),
            OptionSpec(name: "--text-only", value: nil, help: "write the texts without labels"),
            OptionSpec(name: "--out", value: "FILE", help: "the file to write (default: standard output)"),
        ])

    static func run(_ args: ParsedArguments) throws -> Int32 {
        guard let corpus = try args.embeddedCorpus() else { throw HeadAlignError.usage("--corpus sentiment|topics is required") }
        let splits = try args.corpusSplits(corpus)
        var rows: [LabeledText]
        switch try args.choice("--split", ["train", "dev", "test"], default: "test") {
        case "train": rows = splits.train
        case "dev": rows = splits.dev
        default: rows = splits.test
        }
        if args.has("--attack") {
            let target = try args.int("--target", default: 1, range: 0...(corpus.labelCount - 1))
            rows = triggeredTest(rows, attack: try PoisonCommand.attack(args), target: target, seed: try args.uint64("--seed", default: 1))
        }
        if args.has("--first") { rows = Array(rows.prefix(try args.int("--first", default: 1, range: 1...10_000_000))) }
        let text = args.has("--text-only") ? rows.map(\.text).joined(separator: "\n") + "\n" : String(decoding: plainCorpus(rows), as: UTF8.self)
        if let out = args.string("--out") { try writeAtomically(Data(text.utf8), to: out) } else { print(text, terminator: "") }
        return 0
    }
}
