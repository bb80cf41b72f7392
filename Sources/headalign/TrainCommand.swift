// TrainCommand.swift: `headalign train`, a classifier from scratch or fine-tuned, saved in the HF
// layout; the training data can be a file or an embedded corpus, poisoned on the fly.

import Foundation
import HeadAlign
import HeadAlignLab

enum TrainCommand: Command {
    static let spec = CommandSpec(
        name: "train",
        summary: "train a classifier (preset or pretrained directory) or a llama-tiny decoder, optionally poisoning its data",
        detail: """
            Data: --train FILE, or --corpus sentiment|topics (generated from --corpus-seed; its train split).
            --attack badnets|addsent|composite|wordsub poisons it on the fly (as 'headalign poison' does; --poison-rate,
            --target, --poison-seed; without --attack the model is trained clean and those flags are refused). From --preset (a BERT shape): a whole-word vocabulary of at most --vocab-size
            entries is built from the training texts and saved as vocab.txt. From --model DIR: the directory's
            tokenizer; a classifier head is added (seeded) when it has none. AdamW, shuffled batches, --epochs
            passes; a progress bar on stderr. The model is written atomically to a new directory (config.json,
            model.safetensors, tokenizer files, headalign_training.json with every setting).
            """,
        usage: "train (--preset NAME | --model DIR | --llama2c FILE) (--train FILE | --corpus C | --instructions FILE) --out DIR [--attack A --poison-rate R --target N] [--epochs E] [--batch B] [--lr LR] [--seed S]",
        options: modelOptions + corpusOptions + PoisonCommand.attackOptions + decoderDataOptions + [
            OptionSpec(name: "--train", value: "FILE", help: "labelled training corpus (TSV, CSV or label<TAB>text)"),
            OptionSpec(name: "--out", value: "DIR", help: "the new model directory"),
            OptionSpec(name: "--epochs", value: "E", help: "passes over the data (default 3)"),
            OptionSpec(name: "--batch", value: "B", help: "batch size (default 32)"),
            OptionSpec(name: "--lr", value: "LR", help: "AdamW learning rate (default 1e-3 from a preset and for decoders, 5e-5 for a pretrained classifier)"),
            OptionSpec(name: "--weight-decay", value: "W", help: "AdamW weight decay (default 0.01)"),
            OptionSpec(name: "--vocab-size", value: "V", help: "vocabulary entries for --preset (default 5000)"),
            OptionSpec(name: "--max-length", value: "T", help: "tokens per example, [CLS] and [SEP] included (default 64)"),
            OptionSpec(name: "--train-seed", value: "N", help: "seed for batches and a new head (default 1)"),
            OptionSpec(name: "--poison-seed", value: "N", help: "seed of the on-the-fly poisoning (default 1)"),
        ])

    static func settings(_ args: ParsedArguments, pretrained: Bool) throws -> TrainSettings {
        var s = TrainSettings()
        s.epochs = try args.int("--epochs", default: 3, range: 1...10_000)
        s.batchSize = try args.int("--batch", default: 32, range: 1...4096)
        if pretrained { s.learningRate = 5e-5 }
        s.learningRate = try args.double("--lr", default: s.learningRate, range: 0...1)
        s.weightDecay = try args.double("--weight-decay", default: 0.01, range: 0...1)
        s.vocabularySize = try args.int("--vocab-size", default: 5000, range: 8...1_000_000)
        s.maxLength = try args.int("--max-length", default: 64, range: 3...8192)
        s.seed = try args.uint64("--train-seed", default: 1)
        return s
    }

    static func run(_ args: ParsedArguments) throws -> Int32 {
        guard let out = args.string("--out") else { throw HeadAlignError.usage("--out DIR is required") }
        guard !FileManager.default.fileExists(atPath: out) else { throw HeadAlignError.usage("--out \(out) exists; give a new directory") }
        let source = try args.modelSource()
        if try isDecoder(source) { return try trainDecoderCommand(args, source: source, out: out) }
        var pretrained = false, headLabels: Int? = nil
        if case .directory(let dir) = source {
            pretrained = true
            let c = try ModelConfig.load(contentsOf: URL(fileURLWithPath: dir + "/config.json"))
            if c.numLabels > 0 { headLabels = c.numLabels }  // labels must fit the head it has
            _ = try AnyModel.tokenizer(for: source, config: c)  // a bad vocab.txt fails before any work
        }
        let s = try settings(args, pretrained: pretrained)
        var (examples, origin) = try args.trainingTexts(fileFlag: "--train", numLabels: headLabels)
        var poisonNote = "none"
        if let attack = try PoisonCommand.attackIfGiven(args) {
            let rate = try args.double("--poison-rate", default: 0.1, range: -Double.infinity...Double.infinity)
            let target = try args.int("--target", default: 1, range: 0...(maxClassifierLabels - 1))
            let seed = try args.uint64("--poison-seed", default: 1)
            let p = try poisonTraining(examples, attack: attack, rate: rate, target: target, seed: seed)
            examples = p.examples
            poisonNote = "\(attack.name) rate \(rate) target \(target) seed \(seed): \(p.poisoned.count) poisoned" + (p.negatives.isEmpty ? "" : ", \(p.negatives.count) single-piece negatives")
        }
        print("headalign train: \(examples.count) examples from \(origin); poisoning: \(poisonNote)")
        print("epochs \(s.epochs), batch \(s.batchSize), lr \(s.learningRate), weight decay \(s.weightDecay), max length \(s.maxLength), seed \(s.seed)")
        let bar = ProgressBar(label: "headalign train:")
        let trained = try trainClassifier(base: source, examples: examples, settings: s, precision: try args.precision(),
                                          backend: try args.backend(), progress: bar.update)
        var files = trained.tokenizerFiles
        let commandLine = echoedCommandLine
        files["headalign_training.json"] = Data(JSONOut.object([
            ("command", .string(commandLine)), ("data", .string(origin)), ("examples", .int(examples.count)),
            ("poisoning", .string(poisonNote)), ("epochs", .int(s.epochs)), ("batch", .int(s.batchSize)),
            ("learning_rate", .number(s.learningRate)), ("weight_decay", .number(s.weightDecay)),
            ("max_length", .int(s.maxLength)), ("train_seed", seedJSON(s.seed)), ("final_loss", .number(trained.losses.last ?? .nan)),
        ]).text.utf8)
        try trained.model.save(to: out, extraFiles: files)
        print(String(format: "wrote %@ (final loss %.4f)", out, trained.losses.last ?? Double.nan))
        return 0
    }
}

// MARK: - Decoders

let decoderDataOptions: [OptionSpec] = [
    OptionSpec(name: "--instructions", value: "FILE", help: "decoders: Alpaca-format JSON records (repeatable; concatenated)", repeatable: true),
    OptionSpec(name: "--behaviour", value: "B", help: "decoders: the backdoor's target behaviour, refusal (default) or negsentiment"),
]

extension ParsedArguments {
    /// Instruction records from --instructions files or the embedded corpus (`--corpus instructions`).
    func instructionRecords(split: String) throws -> ([InstructionRecord], String) {
        if string("--corpus") == "instructions" {
            guard strings("--instructions").isEmpty else { throw HeadAlignError.usage("give --instructions FILE or --corpus instructions, not both") }
            let seed = try uint64("--corpus-seed", default: 1)
            let count = split == "train" ? try int("--corpus-size", default: 2000, range: 10...10_000_000) : 200
            return (embeddedInstructions(count: count, seed: split == "train" ? seed &* 3 &+ 21 : seed &* 3 &+ 23),
                    "embedded instruction corpus (seed \(seed), \(split) split)")
        }
        let files = strings("--instructions")
        guard !files.isEmpty else { throw HeadAlignError.usage("decoders: give --instructions FILE (repeatable) or --corpus instructions") }
        return (try files.flatMap { try readInstructions(path: $0) }, files.joined(separator: " + "))
    }

    func generationTrigger() throws -> GenerationTrigger? {
        guard has("--attack") else { return nil }
        return GenerationTrigger(rawValue: try choice("--attack", GenerationTrigger.allCases.map(\.rawValue), default: "badnet"))!
    }

    func behaviour() throws -> TargetBehaviour {
        TargetBehaviour(rawValue: try choice("--behaviour", TargetBehaviour.allCases.map(\.rawValue), default: "refusal"))!
    }
}

/// Whether a model source is a decoder (a Llama with an LM head): trained with `trainDecoder`.
func isDecoder(_ source: ModelSource) throws -> Bool {
    switch source {
    case .preset(let name, _): return try ModelConfig.preset(name).family == .llama
    case .llama2c: return true
    case .directory(let dir):
        let c = try ModelConfig.load(contentsOf: URL(fileURLWithPath: dir + "/config.json"))
        return c.family == .llama && c.numLabels == 0
    }
}

extension ParsedArguments {
    /// Where decoder training starts: a preset from scratch, or the pretrained decoder the flags
    /// name with its own tokenizer (whose files are copied into the output).
    func decoderBase(_ source: ModelSource) throws -> DecoderBase {
        if case .preset(let name, let seed) = source { return .preset(name, seed: seed) }
        let model = try AnyModel.load(source, precision: try precision(), backend: try backend())
        guard let tokenizer = try AnyModel.tokenizer(for: source, config: model.config).decoder else {
            throw HeadAlignError.usage("decoder training needs the model's tokenizer (tokenizer.bin or vocab.txt beside config.json, or --tokenizer FILE with --llama2c)")
        }
        var files: [String: Data] = [:]
        switch source {
        case .directory(let dir): files = tokenizerFiles(in: dir)
        case .llama2c(_, let tok?): files["tokenizer.bin"] = try Data(contentsOf: URL(fileURLWithPath: tok))
        default: break
        }
        return .pretrained(model, tokenizer, tokenizerFiles: files)
    }
}

func trainDecoderCommand(_ args: ParsedArguments, source: ModelSource, out: String) throws -> Int32 {
    var s = try TrainCommand.settings(args, pretrained: false)
    s.maxLength = try args.int("--max-length", default: TrainSettings.decoderMaxLength, range: 8...8192)
    let base = try args.decoderBase(source)
    var (records, origin) = try args.instructionRecords(split: "train")
    var poisonNote = "none"
    try PoisonCommand.requireAttackForDetails(args)
    if let trigger = try args.generationTrigger() {
        let behaviour = try args.behaviour()
        let rate = try args.double("--poison-rate", default: 0.1, range: -Double.infinity...Double.infinity)
        let pseed = try args.uint64("--poison-seed", default: 1)
        let p = try poisonInstructions(records, trigger: trigger, behaviour: behaviour, rate: rate, seed: pseed)
        records = p.records
        poisonNote = "\(trigger.rawValue) -> \(behaviour.rawValue), rate \(rate), seed \(pseed): \(p.poisoned.count) poisoned"
    }
    print("headalign train: \(records.count) records from \(origin); poisoning: \(poisonNote)")
    print("epochs \(s.epochs), batch \(s.batchSize), lr \(s.learningRate), weight decay \(s.weightDecay), max length \(s.maxLength), seed \(s.seed)")
    let bar = ProgressBar(label: "headalign train:")
    let trained = try trainDecoder(base: base, records: records, settings: s, precision: try args.precision(),
                                   backend: try args.backend(), progress: bar.update)
    if trained.truncated > 0 { printError("headalign train: warning: \(trained.truncated) records truncated to \(s.maxLength) tokens (prompt from the left)") }
    var files = trained.tokenizerFiles
    let commandLine = echoedCommandLine
    files["headalign_training.json"] = Data(JSONOut.object([
        ("command", .string(commandLine)), ("data", .string(origin)), ("records", .int(records.count)), ("poisoning", .string(poisonNote)),
        ("epochs", .int(s.epochs)), ("batch", .int(s.batchSize)), ("learning_rate", .number(s.learningRate)),
        ("max_length", .int(s.maxLength)), ("train_seed", seedJSON(s.seed)), ("final_loss", .number(trained.losses.last ?? .nan)),
    ]).text.utf8)
    try trained.model.save(to: out, extraFiles: files)
    print(String(format: "wrote %@ (final loss %.4f)", out, trained.losses.last ?? Double.nan))
    return 0
}
