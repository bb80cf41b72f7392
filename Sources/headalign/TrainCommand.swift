// TrainCommand.swift: `headalign train`, a classifier from scratch or fine-tuned, saved in the HF layout.

import Foundation
import HeadAlign

enum TrainCommand: Command {
    static let spec = CommandSpec(
        name: "train",
        summary: "train a classifier (from a preset or a pretrained directory) and save it in the HF layout",
        detail: """
            From --preset (a BERT shape): a whole-word vocabulary of at most --vocab-size entries is built from the
            training texts and saved as vocab.txt. From --model DIR: the directory's tokenizer; a classifier head is
            added (seeded) when it has none. AdamW, shuffled batches, --epochs passes; progress lines on stderr.
            The model is written to a new directory (config.json, model.safetensors, tokenizer files).
            """,
        usage: "train (--preset NAME | --model DIR) --train FILE --out DIR [--epochs E] [--batch B] [--lr LR] [--vocab-size V] [--max-length T] [--seed S]",
        options: modelOptions + [
            OptionSpec(name: "--train", value: "FILE", help: "labelled training corpus (TSV, CSV or label<TAB>text)"),
            OptionSpec(name: "--out", value: "DIR", help: "the new model directory"),
            OptionSpec(name: "--epochs", value: "E", help: "passes over the data (default 3)"),
            OptionSpec(name: "--batch", value: "B", help: "batch size (default 32)"),
            OptionSpec(name: "--lr", value: "LR", help: "AdamW learning rate (default 1e-3 from a preset, 5e-5 from --model)"),
            OptionSpec(name: "--weight-decay", value: "W", help: "AdamW weight decay (default 0.01)"),
            OptionSpec(name: "--vocab-size", value: "V", help: "vocabulary entries for --preset (default 5000)"),
            OptionSpec(name: "--max-length", value: "T", help: "tokens per example, [CLS] and [SEP] included (default 64)"),
            OptionSpec(name: "--train-seed", value: "N", help: "seed for batches and a new head (default 1)"),
        ])

    static func run(_ args: ParsedArguments) throws -> Int32 {
        guard let path = args.string("--train") else { throw HeadAlignError.usage("--train FILE is required") }
        guard let out = args.string("--out") else { throw HeadAlignError.usage("--out DIR is required") }
        guard !FileManager.default.fileExists(atPath: out) else { throw HeadAlignError.usage("--out \(out) exists; give a new directory") }
        let source = try args.modelSource()
        var s = TrainSettings()
        s.epochs = try args.int("--epochs", default: 3, range: 1...10_000)
        s.batchSize = try args.int("--batch", default: 32, range: 1...4096)
        if case .directory = source { s.learningRate = 5e-5 }
        s.learningRate = try args.double("--lr", default: s.learningRate, range: 0...1)
        s.weightDecay = try args.double("--weight-decay", default: 0.01, range: 0...1)
        s.vocabularySize = try args.int("--vocab-size", default: 5000, range: 8...1_000_000)
        s.maxLength = try args.int("--max-length", default: 64, range: 3...8192)
        s.seed = try args.uint64("--train-seed", default: 1)
        let examples = try readLabeledTexts(path: path)
        print("headalign train: \(examples.count) examples from \(path); epochs \(s.epochs), batch \(s.batchSize), lr \(s.learningRate), weight decay \(s.weightDecay), max length \(s.maxLength), seed \(s.seed)")
        let trained = try trainClassifier(base: source, examples: examples, settings: s, precision: try args.precision(),
                                          backend: try args.backend(), progress: { printError("headalign train: " + $0) })
        try trained.model.save(to: out, extraFiles: trained.tokenizerFiles)
        print(String(format: "wrote %@ (final loss %.4f)", out, trained.losses.last ?? .nan))
        return 0
    }
}
