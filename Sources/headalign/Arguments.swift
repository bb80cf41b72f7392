// Arguments.swift: a small command-line parser (Foundation only). Every command declares its
// options; anything else is a one-line usage error with exit status 2.

import Foundation
import HeadAlign

struct OptionSpec {
    let name: String  // "--seed"
    let value: String?  // placeholder such as "N"; nil for a switch
    let help: String
    var repeatable = false
}

struct CommandSpec {
    let name: String
    let summary: String  // one line, for the overview
    var detail: String = ""  // a paragraph for the command's --help
    let usage: String
    let options: [OptionSpec]

    var helpText: String {
        var s = "usage: headalign \(usage)\n\n\(detail.isEmpty ? summary : detail)\n"
        let all = options + [OptionSpec(name: "--help", value: nil, help: "show this help")]
        let width = all.map { $0.name.count + ($0.value.map { $0.count + 1 } ?? 0) }.max()! + 2
        s += "\noptions:\n"
        for o in all {
            let left = o.name + (o.value.map { " " + $0 } ?? "")
            s += "  " + left.padding(toLength: width, withPad: " ", startingAt: 0) + o.help + "\n"
        }
        return s
    }
}

/// Parsed options of one command. Getters check ranges and throw usage errors that name the flag.
struct ParsedArguments {
    let command: String
    private(set) var values: [String: [String]] = [:]
    private(set) var switches: Set<String> = []
    private(set) var wantsHelp = false

    init(_ argv: [String], spec: CommandSpec) throws {
        command = spec.name
        var i = 0
        let byName = Dictionary(uniqueKeysWithValues: spec.options.map { ($0.name, $0) })
        while i < argv.count {
            var arg = argv[i]
            var inline: String? = nil
            if arg == "--help" || arg == "-h" { wantsHelp = true; i += 1; continue }
            if arg.hasPrefix("--"), let eq = arg.firstIndex(of: "=") {
                inline = String(arg[arg.index(after: eq)...])
                arg = String(arg[..<eq])
            }
            guard let opt = byName[arg] else {
                if arg.hasPrefix("-") {
                    throw HeadAlignError.usage("unknown flag \(arg) (see 'headalign \(spec.name) --help')")
                }
                throw HeadAlignError.usage("unexpected argument '\(arg)' (see 'headalign \(spec.name) --help')")
            }
            if opt.value == nil {
                guard inline == nil else { throw HeadAlignError.usage("\(arg) takes no value") }
                switches.insert(arg)
                i += 1
                continue
            }
            let v: String
            if let inline { v = inline; i += 1 } else {
                guard i + 1 < argv.count else { throw HeadAlignError.usage("\(arg) needs a value (\(opt.value!))") }
                v = argv[i + 1]
                i += 2
            }
            if values[arg] != nil && !opt.repeatable {
                throw HeadAlignError.usage("\(arg) given twice")
            }
            values[arg, default: []].append(v)
        }
    }

    func has(_ name: String) -> Bool { switches.contains(name) || values[name] != nil }

    func string(_ name: String) -> String? { values[name]?.last }

    func strings(_ name: String) -> [String] { values[name] ?? [] }

    func choice(_ name: String, _ choices: [String], default d: String) throws -> String {
        let v = string(name) ?? d
        guard choices.contains(v) else {
            throw HeadAlignError.usage("\(name): '\(v)' is not one of \(choices.joined(separator: ", "))")
        }
        return v
    }

    func int(_ name: String, default d: Int, range: ClosedRange<Int>) throws -> Int {
        guard let s = string(name) else { return d }
        guard let v = Int(s) else { throw HeadAlignError.usage("\(name): '\(s)' is not a whole number") }
        guard range.contains(v) else {
            throw HeadAlignError.usage("\(name): \(v) is outside \(range.lowerBound)...\(range.upperBound)")
        }
        return v
    }

    func uint64(_ name: String, default d: UInt64) throws -> UInt64 {
        guard let s = string(name) else { return d }
        guard let v = UInt64(s) else { throw HeadAlignError.usage("\(name): '\(s)' is not a non-negative whole number") }
        return v
    }

    func double(_ name: String, default d: Double, range: ClosedRange<Double>) throws -> Double {
        guard let s = string(name) else { return d }
        guard let v = Double(s), v.isFinite else { throw HeadAlignError.usage("\(name): '\(s)' is not a number") }
        guard range.contains(v) else {
            throw HeadAlignError.usage("\(name): \(s) is outside [\(range.lowerBound), \(range.upperBound)]")
        }
        return v
    }

    func precision(default d: Precision = .f32) throws -> Precision {
        Precision(rawValue: try choice("--precision", Precision.allCases.map(\.rawValue), default: d.rawValue))!
    }

    func backend() throws -> Backend {
        try Backend.named(try choice("--backend", ["naive", "blas", "auto"], default: "auto"))
    }
}

/// Writes to standard error.
func printError(_ s: String) {
    FileHandle.standardError.write((s + "\n").data(using: .utf8)!)
}

// MARK: - Options shared by the commands that load a model

let modelOptions: [OptionSpec] = [
    OptionSpec(name: "--model", value: "DIR", help: "a model directory in the Hugging Face layout (config.json, model.safetensors, vocab.txt or tokenizer.bin)"),
    OptionSpec(name: "--llama2c", value: "FILE", help: "a llama2.c legacy checkpoint (.bin) instead of --model"),
    OptionSpec(name: "--tokenizer", value: "FILE", help: "the llama2.c tokenizer.bin for --llama2c"),
    OptionSpec(name: "--preset", value: "NAME", help: "random weights of a built-in shape instead of --model (\(ModelConfig.presetNames.joined(separator: ", ")))"),
    OptionSpec(name: "--seed", value: "N", help: "seed for --preset weights (default 1)"),
    OptionSpec(name: "--precision", value: "P", help: "f32 (default) or f64"),
    OptionSpec(name: "--backend", value: "B", help: "naive, blas or auto (default auto)"),
]

extension ParsedArguments {
    /// Exactly one of --model, --llama2c, --preset.
    func modelSource() throws -> ModelSource {
        let given = ["--model", "--llama2c", "--preset"].filter { has($0) }
        guard given.count == 1 else {
            throw HeadAlignError.usage(given.isEmpty ? "give a model: --model DIR, --llama2c FILE or --preset NAME"
                                                     : "give only one of \(given.joined(separator: ", "))")
        }
        if let dir = string("--model") {
            var isDir: ObjCBool = false
            guard FileManager.default.fileExists(atPath: dir, isDirectory: &isDir), isDir.boolValue else {
                throw HeadAlignError.usage("--model \(dir): not a directory")
            }
            return .directory(dir)
        }
        if let file = string("--llama2c") {
            guard FileManager.default.fileExists(atPath: file) else { throw HeadAlignError.usage("--llama2c \(file): no such file") }
            if let tok = string("--tokenizer"), !FileManager.default.fileExists(atPath: tok) {
                throw HeadAlignError.usage("--tokenizer \(tok): no such file")
            }
            return .llama2c(model: file, tokenizer: string("--tokenizer"))
        }
        let name = string("--preset")!
        _ = try ModelConfig.preset(name)
        return .preset(name, seed: try uint64("--seed", default: 1))
    }

    /// What `inspect`, `classify` and `monitor` need of a model: its configuration and Eq. 1–5's analysis, from a
    /// resident model or, with `--stream`, layer by layer from a Llama checkpoint.
    func loadAnalyzer() throws -> (Analyzer, AnyTokenizer, ModelSource) {
        guard has("--stream") else {
            let (m, t, s) = try loadModel()
            return (Analyzer(config: m.config, analyze: { try m.analyze($0, settings: $1) },
                             inspect: { try m.inspect($0, settings: $1, commandLine: $2) }, streamed: nil), t, s)
        }
        guard case .directory(let dir) = try modelSource() else { throw HeadAlignError.usage("--stream needs --model DIR") }
        guard try precision() == .f32 else { throw HeadAlignError.usage("--stream computes in f32") }
        let s = try StreamedLlama(directory: dir, backend: try backend())
        return (Analyzer(config: s.config, analyze: { try s.analyze($0, settings: $1) },
                         inspect: { try inspectDocument(s, inputs: $0, settings: $1, commandLine: $2) }, streamed: s),
                try AnyModel.tokenizer(for: .directory(dir), config: s.config), .directory(dir))
    }

    /// The model and its tokenizer, in the precision and on the backend the flags ask for.
    func loadModel() throws -> (AnyModel, AnyTokenizer, ModelSource) {
        let source = try modelSource()
        let model = try AnyModel.load(source, precision: try precision(), backend: try backend())
        return (model, try AnyModel.tokenizer(for: source, config: model.config), source)
    }
}

// MARK: - Options of the method's commands

let analysisOptions: [OptionSpec] = [
    OptionSpec(name: "--view", value: "V", help: "view of A for Eq. 3 in Eq. 5 and Eq. 6-7: full, cls, last, gen2prompt (default: full for classifiers, gen2prompt for decoders)"),
    OptionSpec(name: "--scope", value: "S", help: "head pairs compared: model (default) or layer"),
    OptionSpec(name: "--alpha", value: "A", help: "Eq. 5 weight of maxsim against importance, in [0, 1] (default 0.5)"),
    OptionSpec(name: "--tau", value: "T", help: "Eq. 5 class bound, in [0, 0.5] (default 0.5)"),
    OptionSpec(name: "--importance-labels", value: "L", help: "Eq. 4 loss labels: predicted (default) or gold"),
    OptionSpec(name: "--generate", value: "N", help: "tokens generated for gen2prompt, T_g (default 8)"),
    OptionSpec(name: "--threshold", value: "C", help: "frac_above's cosine threshold (default 0.99)"),
]

extension ParsedArguments {
    func analysisSettings(for config: ModelConfig, view flag: String = "--view") throws -> AnalysisSettings {
        let task = Task.of(config)
        let defaultView = task.defaultViews(config.family).defense
        var s = AnalysisSettings(view: AnalysisView(rawValue: try choice(flag, AnalysisView.allCases.map(\.rawValue), default: defaultView.rawValue))!)
        s.scope = PairScope(rawValue: try choice("--scope", PairScope.allCases.map(\.rawValue), default: "model"))!
        s.importanceLabels = ImportanceLabels(rawValue: try choice("--importance-labels", ImportanceLabels.allCases.map(\.rawValue), default: "predicted"))!
        s.generate = try int("--generate", default: 8, range: 1...max(1, config.maxPositionEmbeddings - 2))
        s.threshold = try double("--threshold", default: 0.99, range: 0...1)
        if s.view == .gen2prompt && task != .generation { throw HeadAlignError.usage("\(flag) gen2prompt needs a decoder with an LM head") }
        if s.view == .cls && config.family != .bert { throw HeadAlignError.usage("\(flag) cls is the [CLS] row of a BERT encoder; use last for a decoder") }
        return s
    }

    func alphaTau() throws -> (Double, Double) {
        (try double("--alpha", default: 0.5, range: 0...1), try double("--tau", default: 0.5, range: 0...0.5))
    }

    /// Inputs from --text/--ids and from a file flag, tokenized; a warning for truncated ones.
    func analysisInputs(fileFlag: String?, tokenizer: AnyTokenizer, config: ModelConfig, command: String) throws -> [AnalysisInput] {
        var inputs: [AnalysisInput] = []
        let maxLength = config.maxPositionEmbeddings - (Task.of(config) == .generation ? try int("--generate", default: 8, range: 1...4096) : 0)
        func add(_ text: String, _ label: Int?) throws {
            let (ids, truncated) = try tokenizer.encode(text, maxLength: maxLength)
            if truncated { printError("headalign \(command): warning: input '\(text.prefix(40))' truncated to \(ids.count) tokens") }
            if let label, config.numLabels > 0, label >= config.numLabels {
                throw HeadAlignError.usage("label \(label) of '\(text.prefix(40))' is outside the model's \(config.numLabels) classes")
            }
            inputs.append(AnalysisInput(tokens: ids, label: label))
        }
        for t in strings("--text") { try add(t, has("--label") ? try int("--label", default: 0, range: 0...100_000) : nil) }
        for s in strings("--ids") {
            let ids = s.split(whereSeparator: { $0 == " " || $0 == "," }).map { Int($0) }
            guard !ids.isEmpty, ids.allSatisfy({ $0 != nil && $0! >= 0 && $0! < config.vocabSize }) else {
                throw HeadAlignError.usage("--ids '\(s)': token ids must be integers in 0..<\(config.vocabSize)")
            }
            guard ids.count <= maxLength else { throw HeadAlignError.usage("--ids: \(ids.count) tokens exceed \(maxLength) positions") }
            inputs.append(AnalysisInput(tokens: ids.map { $0! }, label: has("--label") ? try int("--label", default: 0, range: 0...100_000) : nil))
        }
        if let flag = fileFlag, let path = string(flag) {
            for e in try readPlainExamples(path: path) { try add(e.text, e.label) }
        }
        return inputs
    }
}

// MARK: - Data: a file or an embedded corpus

let corpusOptions: [OptionSpec] = [
    OptionSpec(name: "--corpus", value: "C", help: "an embedded corpus instead of a file: sentiment or topics (decoders: instructions)"),
    OptionSpec(name: "--corpus-seed", value: "N", help: "seed the embedded corpus is generated from (default 1)"),
    OptionSpec(name: "--corpus-size", value: "N", help: "training sentences of the embedded corpus (default 2000)"),
]

extension ParsedArguments {
    func embeddedCorpus() throws -> EmbeddedCorpus? {
        guard has("--corpus"), string("--corpus") != "instructions" else { return nil }
        return EmbeddedCorpus(rawValue: try choice("--corpus", EmbeddedCorpus.allCases.map(\.rawValue), default: "sentiment"))!
    }

    /// The embedded corpus's splits, as the flags ask.
    func corpusSplits(_ corpus: EmbeddedCorpus) throws -> (train: [LabeledText], dev: [LabeledText], test: [LabeledText]) {
        corpus.splits(seed: try uint64("--corpus-seed", default: 1), train: try int("--corpus-size", default: 2000, range: 10...10_000_000))
    }

    /// Training texts from `fileFlag` or the embedded corpus's train split, and where they came from.
    func trainingTexts(fileFlag: String) throws -> ([LabeledText], String) {
        if let corpus = try embeddedCorpus() {
            guard !has(fileFlag) else { throw HeadAlignError.usage("give \(fileFlag) FILE or --corpus, not both") }
            let seed = try uint64("--corpus-seed", default: 1)
            return (try corpusSplits(corpus).train, "embedded \(corpus.rawValue) corpus (seed \(seed), train split)")
        }
        guard let path = string(fileFlag) else { throw HeadAlignError.usage("\(fileFlag) FILE (or --corpus sentiment|topics) is required") }
        return (try readLabeledTexts(path: path), path)
    }
}

// MARK: - Options of the defense (defend, experiment, demo)

let defenseOptions: [OptionSpec] = [
            OptionSpec(name: "--monitor-view", value: "V", help: "the monitor's view (default cls / last / gen2prompt)"),
            OptionSpec(name: "--score", value: "S", help: "the monitor's score (default contrast-absz)"),
            OptionSpec(name: "--quantile", value: "Q", help: "the monitor's calibration quantile (default 0.99)"),
            OptionSpec(name: "--maxsim", value: "M", help: "Eq. 5's maxsim: plain (default) or contrast"),
            OptionSpec(name: "--rounds", value: "N", help: "at most this many rounds (default 1)"),
            OptionSpec(name: "--align-steps", value: "N", help: "alignment steps per round (default 50)"),
            OptionSpec(name: "--align-lr", value: "LR", help: "alignment AdamW learning rate (default 1e-3)"),
            OptionSpec(name: "--ft-steps", value: "N", help: "fine-tuning steps per round (default 100)"),
            OptionSpec(name: "--batch", value: "B", help: "batch size (default 16)"),
            OptionSpec(name: "--lr-suspicious", value: "LR", help: "eta_low (default 5e-6)"),
            OptionSpec(name: "--lr-safe", value: "LR", help: "eta_high (default 2e-4)"),
            OptionSpec(name: "--lr-intermediate", value: "LR", help: "eta_mid (default 5e-5)"),
            OptionSpec(name: "--lr-other", value: "LR", help: "parameters no head owns; the finetune method's one rate (default 5e-5)"),
            OptionSpec(name: "--weight-decay", value: "W", help: "AdamW weight decay in fine-tuning (default 0.01)"),
            OptionSpec(name: "--defense-seed", value: "N", help: "seed for batches (default 1)"),
    OptionSpec(name: "--prune-margin", value: "M", help: "fine-pruning/pure: stop pruning before clean accuracy drops more than M (default 0.02)"),
    OptionSpec(name: "--prune-layers", value: "N", help: "fine-pruning: prune the last N layers' feed-forward units (default half of them)"),
    OptionSpec(name: "--pure-penalty", value: "L", help: "pure: attention-normalisation coefficient (default 0.15)"),
    OptionSpec(name: "--pure-step", value: "N", help: "pure: heads pruned per accuracy check (default 1; PURE uses 10 on BERT-base)"),
    OptionSpec(name: "--reinit-layers", value: "N", help: "reinit: re-initialise the top N layers (default 1)"),
]

extension ParsedArguments {
    /// Every defense setting the flags give, defaults from SPEC.md.
    func defenseSettings(for c: ModelConfig) throws -> DefenseSettings {
        var s = DefenseSettings(task: Task.of(c), family: c.family)
        let a = try analysisSettings(for: c)
        s.defenseView = a.view; s.scope = a.scope; s.importanceLabels = a.importanceLabels; s.generate = a.generate
        if has("--monitor-view") {
            s.monitorView = AnalysisView(rawValue: try choice("--monitor-view", AnalysisView.allCases.map(\.rawValue), default: "cls"))!
        }
        (s.alpha, s.tau) = try alphaTau()
        s.score = MonitorScore(rawValue: try choice("--score", MonitorScore.allCases.map(\.rawValue), default: "contrast-absz"))!
        s.quantile = try double("--quantile", default: 0.99, range: 0...1)
        s.maxsim = MaxsimMode(rawValue: try choice("--maxsim", MaxsimMode.allCases.map(\.rawValue), default: "plain"))!
        s.rounds = try int("--rounds", default: 1, range: 1...100)
        s.alignSteps = try int("--align-steps", default: 50, range: 0...1_000_000)
        s.alignLearningRate = try double("--align-lr", default: 1e-3, range: 0...1)
        s.finetuneSteps = try int("--ft-steps", default: 100, range: 0...1_000_000)
        s.batchSize = try int("--batch", default: 16, range: 1...4096)
        s.rates.suspicious = try double("--lr-suspicious", default: 5e-6, range: 0...1)
        s.rates.safe = try double("--lr-safe", default: 2e-4, range: 0...1)
        s.rates.intermediate = try double("--lr-intermediate", default: 5e-5, range: 0...1)
        s.rates.other = try double("--lr-other", default: 5e-5, range: 0...1)
        s.weightDecay = try double("--weight-decay", default: 0.01, range: 0...1)
        s.seed = try uint64("--defense-seed", default: 1)
        s.baseline.accuracyMargin = try double("--prune-margin", default: 0.02, range: 0...1)
        if has("--prune-layers") { s.baseline.pruneLayers = try int("--prune-layers", default: 1, range: 1...c.numHiddenLayers) }
        s.baseline.purePenalty = try double("--pure-penalty", default: 0.15, range: 0...1_000)
        s.baseline.pureStep = try int("--pure-step", default: 1, range: 1...100_000)
        s.baseline.reinitLayers = try int("--reinit-layers", default: 1, range: 1...c.numHiddenLayers)
        return s
    }
}

/// The settings line every defense command prints.
func describe(_ s: DefenseSettings) -> String {
    "view \(s.defenseView.rawValue), monitor view \(s.monitorView.rawValue), scope \(s.scope.rawValue), alpha \(s.alpha), tau \(s.tau), maxsim \(s.maxsim.rawValue), score \(s.score.rawValue), q \(s.quantile), rounds \(s.rounds), align steps \(s.alignSteps) at \(s.alignLearningRate), ft steps \(s.finetuneSteps), batch \(s.batchSize), lr suspicious \(s.rates.suspicious) safe \(s.rates.safe) intermediate \(s.rates.intermediate) other \(s.rates.other), weight decay \(s.weightDecay), seed \(s.seed); baselines: prune margin \(s.baseline.accuracyMargin), prune layers \(s.baseline.pruneLayers.map(String.init) ?? "half"), pure penalty \(s.baseline.purePenalty) step \(s.baseline.pureStep), reinit layers \(s.baseline.reinitLayers)"
}

/// A seed in JSON: an integer when it fits, else its decimal text.
func seedJSON(_ seed: UInt64) -> JSONOut { Int(exactly: seed).map { .int($0) } ?? .string(String(seed)) }

/// A model as the analysis commands see it.
struct Analyzer {
    let config: ModelConfig
    let analyze: ([AnalysisInput], AnalysisSettings) throws -> [InputAnalysis]
    let inspect: ([AnalysisInput], InspectSettings, String) throws -> JSONOut  // inputs, settings, command line
    let streamed: StreamedLlama?  // with --stream: its layer loads and conversion time, for the log
    func analyze(_ inputs: [AnalysisInput], settings: AnalysisSettings) throws -> [InputAnalysis] { try analyze(inputs, settings) }
}
