// Arguments.swift: a small command-line parser (Foundation only). Every command declares its
// options; anything else is a one-line usage error with exit status 2.

import Foundation
import HeadAlign
import HeadAlignLab

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
    /// The flags whose values name files or directories (placeholder FILE or DIR).
    let pathFlags: [String]
    /// The flags whose values name directories (placeholder DIR): an output one must be new.
    let directoryFlags: Set<String>

    init(_ argv: [String], spec: CommandSpec) throws {
        command = spec.name
        pathFlags = spec.options.filter { $0.value == "FILE" || $0.value == "DIR" }.map(\.name)
        directoryFlags = Set(spec.options.filter { $0.value == "DIR" }.map(\.name))
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

// MARK: - Outputs

/// The flags that name what a command writes; every other FILE or DIR flag names an input.
let outputFlags: Set<String> = ["--out", "--out-md", "--out-test", "--out-train", "--report", "--json", "--trace"]

/// A path as the file system resolves it: an existing path's realpath and file id (st_dev,
/// st_ino); a new path's resolved parent and its last component.
struct ResolvedPath {
    let path: String
    let id: (dev: UInt64, ino: UInt64)?
    let isDirectory: Bool
    let isRegularOrAbsent: Bool

    init(_ given: String) {
        var st = stat()
        if stat(given, &st) == 0 {
            id = (UInt64(st.st_dev), UInt64(st.st_ino))
            isDirectory = (st.st_mode & S_IFMT) == S_IFDIR
            isRegularOrAbsent = (st.st_mode & S_IFMT) == S_IFREG
            path = realpath(given, nil).map { p in defer { free(p) }; return String(cString: p) } ?? given
        } else {
            id = nil
            isDirectory = false
            isRegularOrAbsent = true
            let url = URL(fileURLWithPath: given)
            let parent = url.deletingLastPathComponent().path
            let resolved = realpath(parent, nil).map { p in defer { free(p) }; return String(cString: p) } ?? parent
            path = (resolved as NSString).appendingPathComponent(url.lastPathComponent)
        }
    }

    func isSame(as o: ResolvedPath) -> Bool {
        if let a = id, let b = o.id { return a.dev == b.dev && a.ino == b.ino }
        return path == o.path
    }

    func isInside(_ dir: ResolvedPath) -> Bool { dir.isDirectory && path.hasPrefix(dir.path.hasSuffix("/") ? dir.path : dir.path + "/") }
}

extension ParsedArguments {
    /// The one rule for what a command writes, checked before any work: an output is none of the
    /// command's inputs (nor inside an input directory) and no other output, compared by resolved
    /// path and file id so that a symlink or `./x` for `x` is caught; its parent directory exists
    /// and is writable; a file output is not a directory; a directory output (placeholder DIR) does
    /// not exist yet. Throws a one-line usage error naming the flag. main.swift runs it for every
    /// command before the command's own code.
    func checkOutputs() throws {
        let inputs = pathFlags.filter { !outputFlags.contains($0) }.flatMap { f in strings(f).map { (f, $0, ResolvedPath($0)) } }
        var seen: [(String, String, ResolvedPath)] = []
        for flag in outputFlags.sorted() {
            guard let out = string(flag) else { continue }
            guard !out.isEmpty else { throw HeadAlignError.usage("\(flag): empty path") }
            let r = ResolvedPath(out)
            for (inFlag, inPath, i) in inputs {
                if r.isSame(as: i) {
                    throw HeadAlignError.usage("\(flag) \(out): is the \(inFlag) input \(inPath); headalign never overwrites an input")
                }
                if r.isInside(i) {
                    throw HeadAlignError.usage("\(flag) \(out): lies inside the \(inFlag) input \(inPath); headalign never writes into an input")
                }
            }
            for (otherFlag, _, o) in seen where r.isSame(as: o) {
                throw HeadAlignError.usage("\(flag) \(out): is also the \(otherFlag) output")
            }
            seen.append((flag, out, r))
            if directoryFlags.contains(flag) {
                guard r.id == nil else { throw HeadAlignError.usage("\(flag) \(out) exists; give a new directory") }
            } else {
                guard !r.isDirectory else { throw HeadAlignError.usage("\(flag) \(out): is a directory") }
                if r.id != nil && !r.isRegularOrAbsent { continue }  // /dev/stdout and the like are written in place
            }
            let parent = URL(fileURLWithPath: out).deletingLastPathComponent().path
            var isDir: ObjCBool = false
            guard FileManager.default.fileExists(atPath: parent, isDirectory: &isDir), isDir.boolValue else {
                throw HeadAlignError.usage("\(flag) \(out): parent directory \(parent) does not exist")
            }
            guard access(parent, W_OK) == 0 else { throw HeadAlignError.usage("\(flag) \(out): parent directory \(parent) is not writable") }
        }
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
        if has("--seed") && !has("--preset") {  // accepted with any model, it would be silently ignored
            throw HeadAlignError.usage("--seed seeds a --preset's random weights and does nothing with \(given[0]) (a defense's batches: --defense-seed)")
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
                         inspect: { try s.inspect($0, settings: $1, commandLine: $2) }, streamed: s),
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

/// The defaults every option below prints and parses: the settings structs own them (with
/// their reasons); the parser and the help read them from here.
let analysisDefaults = AnalysisSettings(view: .full)
let defenseDefaults = DefenseSettings(task: .classification, family: .bert)
let baselineDefaults = BaselineSettings()

let analysisOptions: [OptionSpec] = [
    OptionSpec(name: "--view", value: "V", help: "view of A for Eq. 3 in Eq. 5 and Eq. 6-7: full, cls, last, gen2prompt (default: full for classifiers, gen2prompt for decoders)"),
    OptionSpec(name: "--scope", value: "S", help: "head pairs compared: model or layer (default \(analysisDefaults.scope.rawValue))"),
    OptionSpec(name: "--alpha", value: "A", help: "Eq. 5 weight of maxsim against importance, in [0, 1] (default \(defenseDefaults.alpha))"),
    OptionSpec(name: "--tau", value: "T", help: "Eq. 5 class bound, in [0, 0.5] (default \(defenseDefaults.tau))"),
    OptionSpec(name: "--importance-labels", value: "L", help: "Eq. 4 loss labels: predicted or gold (default \(analysisDefaults.importanceLabels.rawValue))"),
    OptionSpec(name: "--generate", value: "N", help: "tokens generated for gen2prompt, T_g (default \(analysisDefaults.generate))"),
    OptionSpec(name: "--threshold", value: "C", help: "frac_above's cosine threshold (default \(analysisDefaults.threshold))"),
]

extension ParsedArguments {
    func analysisSettings(for config: ModelConfig, view flag: String = "--view") throws -> AnalysisSettings {
        let task = ModelTask.of(config)
        let defaultView = task.defaultViews(config.family).defense
        var s = AnalysisSettings(view: AnalysisView(rawValue: try choice(flag, AnalysisView.allCases.map(\.rawValue), default: defaultView.rawValue))!)
        s.scope = PairScope(rawValue: try choice("--scope", PairScope.allCases.map(\.rawValue), default: s.scope.rawValue))!
        s.importanceLabels = ImportanceLabels(rawValue: try choice("--importance-labels", ImportanceLabels.allCases.map(\.rawValue),
                                                                   default: s.importanceLabels.rawValue))!
        s.generate = try generate(config)
        s.threshold = try double("--threshold", default: s.threshold, range: 0...1)
        if s.view == .gen2prompt && task != .generation { throw HeadAlignError.usage("\(flag) gen2prompt needs a decoder with an LM head") }
        if s.view == .cls && config.family != .bert { throw HeadAlignError.usage("\(flag) cls is the [CLS] row of a BERT encoder; use last for a decoder") }
        return s
    }

    /// T_g, the tokens generated for gen2prompt (room is left for at least two prompt tokens).
    func generate(_ config: ModelConfig) throws -> Int {
        try int("--generate", default: analysisDefaults.generate, range: 1...max(1, config.maxPositionEmbeddings - 2))
    }

    func alphaTau() throws -> (Double, Double) {
        (try double("--alpha", default: defenseDefaults.alpha, range: 0...1), try double("--tau", default: defenseDefaults.tau, range: 0...0.5))
    }

    /// Inputs from --text/--ids and from a file flag (`inputOptions`), tokenized; a warning for truncated ones.
    func analysisInputs(fileFlag: String?, tokenizer: AnyTokenizer, config: ModelConfig, command: String) throws -> [AnalysisInput] {
        var inputs: [AnalysisInput] = []
        let maxLength = config.maxPositionEmbeddings - (ModelTask.of(config) == .generation ? try generate(config) : 0)
        func add(_ text: String, _ label: Int?) throws {
            let (ids, truncated, cut) = try tokenizer.encodeReporting(text, maxLength: maxLength)
            if truncated {
                printError("headalign \(command): warning: input '\(text.prefix(40))' truncated to \(ids.count) tokens"
                           + (cut > 0 ? " (its first \(cut) bytes cut before tokenizing)" : ""))
            }
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
            if try isInstructionFile(path, config) {
                inputs += try readAnalysisInputs(path, tokenizer: tokenizer, config: config, generate: try generate(config))
            } else {
                for e in try readTextLines(path, numLabels: config.numLabels > 0 ? config.numLabels : nil) { try add(e.text, e.label) }
            }
        }
        return inputs
    }
}

/// The inputs of the analysis commands: --text, --ids, a file, and the gold label of --text/--ids.
func inputOptions(file: String = "--inputs", fileHelp: String = "inputs, one per line: text or label<TAB>text (a decoder's FILE.json: the Alpaca records' prompts)") -> [OptionSpec] {
    [
        OptionSpec(name: "--text", value: "TEXT", help: "an input (repeatable)", repeatable: true),
        OptionSpec(name: "--ids", value: "'I I ...'", help: "an input as token ids, e.g. for --preset models (repeatable)", repeatable: true),
        OptionSpec(name: file, value: "FILE", help: fileHelp),
        OptionSpec(name: "--label", value: "N", help: "gold label of the --text/--ids inputs (for --importance-labels gold)"),
    ]
}

/// An explicit head split instead of Eq. 5's classes.
let headSplitOptions: [OptionSpec] = [
    OptionSpec(name: "--suspicious", value: "l:h,...", help: "explicit suspicious heads (with --safe), instead of Eq. 5"),
    OptionSpec(name: "--safe", value: "l:h,...", help: "explicit safe heads (with --suspicious)"),
]

extension ParsedArguments {
    /// `--suspicious` and `--safe` (`headSplitOptions`): both or neither, disjoint, heads of the model.
    func headSplit(_ config: ModelConfig) throws -> (suspicious: [HeadID], safe: [HeadID])? {
        if has("--suspicious") != has("--safe") { throw HeadAlignError.usage("--suspicious and --safe go together") }
        guard let s = string("--suspicious"), let t = string("--safe") else { return nil }
        let suspicious = try parseHeadList(s, config: config, flag: "--suspicious")
        let safe = try parseHeadList(t, config: config, flag: "--safe")
        if !Set(suspicious).isDisjoint(with: safe) { throw HeadAlignError.usage("a head is both --suspicious and --safe") }
        return (suspicious, safe)
    }
}

/// The command line as the outputs record it (first word `headalign`, whatever the binary's path).
let echoedCommandLine = (["headalign"] + CommandLine.arguments.dropFirst()).joined(separator: " ")

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
    /// `numLabels`: the classes of the model being trained, when it already has a head.
    func trainingTexts(fileFlag: String, numLabels: Int? = nil) throws -> ([LabeledText], String) {
        if let corpus = try embeddedCorpus() {
            guard !has(fileFlag) else { throw HeadAlignError.usage("give \(fileFlag) FILE or --corpus, not both") }
            let seed = try uint64("--corpus-seed", default: 1)
            return (try corpusSplits(corpus).train, "embedded \(corpus.rawValue) corpus (seed \(seed), train split)")
        }
        guard let path = string(fileFlag) else { throw HeadAlignError.usage("\(fileFlag) FILE (or --corpus sentiment|topics) is required") }
        return (try readLabeledTexts(path: path, numLabels: numLabels), path)
    }
}

// MARK: - Options of the defense (defend, experiment, demo)

let defenseOptions: [OptionSpec] = {
    let d = defenseDefaults, b = baselineDefaults
    return [
        OptionSpec(name: "--monitor-view", value: "V", help: "the monitor's view (default cls / last / gen2prompt)"),
        OptionSpec(name: "--score", value: "S", help: "the monitor's score (default \(d.score.rawValue))"),
        OptionSpec(name: "--quantile", value: "Q", help: "the monitor's calibration quantile (default \(d.quantile))"),
        OptionSpec(name: "--fpr-budget", value: "A", help: fprBudgetHelp),
        OptionSpec(name: "--maxsim", value: "M", help: "Eq. 5's maxsim: plain or contrast (default \(d.maxsim.rawValue))"),
        OptionSpec(name: "--classes", value: "R", help: "Eq. 5's classes: tau (the paper's fixed bounds), outliers (ours: suspicious = robust z of S < -Z, safe = z >= -1; implied by --outlier-z), focus (ours: suspicious when the flagged inputs move >= \(focusSuspiciousShift) of a head's attention onto one ordinary token, safe < \(focusSafeShift); tau when fewer than \(focusMinHeads) heads do) or column-focus (ours: suspicious when they raise a head's column focus >= \(columnFocusSuspiciousZ) clean sd on average, safe < \(columnFocusSafeZ); tau when fewer than \(focusMinHeads) heads do) (default \(d.classRule.name))"),
        OptionSpec(name: "--outlier-z", value: "Z", help: "--classes outliers: the robust z below which a head is suspicious (default \(ClassRule.defaultZ))"),
        OptionSpec(name: "--rounds", value: "N", help: "at most this many rounds (default \(d.rounds))"),
        OptionSpec(name: "--align-steps", value: "N", help: "alignment steps per round (default \(d.alignSteps))"),
        OptionSpec(name: "--align-lr", value: "LR", help: "alignment AdamW learning rate (default \(d.alignLearningRate))"),
        OptionSpec(name: "--ft-steps", value: "N", help: "a fixed budget: N fine-tuning steps per round on the whole clean set, no held-out split (also --ft-holdout 0: \(d.finetuneSteps) steps)"),
        OptionSpec(name: "--ft-holdout", value: "F", help: "share of the clean set held out to pick the fine-tuning step (--ft-keep) (default \(FinetuneBudget().holdout))"),
        OptionSpec(name: "--ft-passes", value: "P", help: "fine-tuning budget in passes over the rest of the clean set (default \(FinetuneBudget().passes))"),
        OptionSpec(name: "--ft-patience", value: "N", help: "held-out checks (every \(FinetuneBudget().every) steps) in a row that --ft-keep would not keep before stopping (default \(FinetuneBudget().patience))"),
        OptionSpec(name: "--ft-keep", value: "RULE", help: "which held-out check is kept: lowest (the lowest held-out loss), latest-within-se (the latest within one standard error of it) or fewest-flagged-within-se (ours: of those, the one where the flagged inputs least keep the backdoored model's answers) (default \(FinetuneBudget().rule.rawValue))"),
        OptionSpec(name: "--batch", value: "B", help: "batch size (default \(d.batchSize))"),
        OptionSpec(name: "--lr-suspicious", value: "LR", help: "eta_low (default \(d.rates.suspicious))"),
        OptionSpec(name: "--lr-safe", value: "LR", help: "eta_high (default \(d.rates.safe))"),
        OptionSpec(name: "--lr-safe-when-removed", value: "LR", help: "ours: the safe heads' rate when, after the alignment, fewer than \(DefenseSettings.removedBelowText) of the flagged inputs still get the backdoored model's answer (default: eta_high always)"),
        OptionSpec(name: "--lr-intermediate", value: "LR", help: "eta_mid (default \(d.rates.intermediate))"),
        OptionSpec(name: "--lr-other", value: "LR", help: "eta_other: parameters no head owns (default \(d.rates.other); 0 freezes them)"),
        OptionSpec(name: "--lr-uniform", value: "LR", help: "the finetune method's one rate, and the baselines' fine-tuning rate (default \(d.uniformRate))"),
        OptionSpec(name: "--weight-decay", value: "W", help: "AdamW weight decay in fine-tuning (default \(d.weightDecay))"),
        OptionSpec(name: "--defense-seed", value: "N", help: "seed for batches (default \(d.seed))"),
        OptionSpec(name: "--ft-warmup", value: "N", help: "steps of linear learning-rate warm-up in the fine-tuning (default \(d.finetuneWarmup), none)"),
        OptionSpec(name: "--ft-align-penalty", value: "LAMBDA", help: "our extension (default \(d.alignPenalty), off): fine-tune on CE + LAMBDA * Eq. 7 on the aligned inputs"),
        OptionSpec(name: "--ft-guard", value: nil, help: "our extension (off by default): stop fine-tuning when it restores the backdoored model's behaviour on the flagged inputs"),
        OptionSpec(name: "--ft-guard-tolerance", value: "T", help: "--ft-guard: share of the alignment's change that may be undone (default \(FinetuneGuard().tolerance))"),
        OptionSpec(name: "--ft-guard-every", value: "N", help: "--ft-guard: steps between checks (default \(FinetuneGuard().every))"),
        OptionSpec(name: "--prune-margin", value: "M", help: "fine-pruning/pure: stop pruning before clean accuracy drops more than M (default \(b.accuracyMargin))"),
        OptionSpec(name: "--prune-layers", value: "N", help: "fine-pruning: prune the last N layers' feed-forward units (default half of them)"),
        OptionSpec(name: "--pure-penalty", value: "L", help: "pure: attention-normalisation coefficient (default \(b.purePenalty))"),
        OptionSpec(name: "--pure-step", value: "N", help: "pure: heads pruned per accuracy check (default \(b.pureStep); PURE uses 10 on BERT-base)"),
        OptionSpec(name: "--reinit-layers", value: "N", help: "reinit: re-initialise the top N layers (default \(b.reinitLayers))"),
        OptionSpec(name: "--meft-share", value: "X", help: "meft: the entropy stage ends when a batch's mean entropy reaches X log C (default \(b.meftEntropyShare); 1 runs it for the whole budget)"),
    ]
}()

extension ParsedArguments {
    /// Every defense setting the flags give; defaults are DefenseSettings' own.
    func defenseSettings(for c: ModelConfig) throws -> DefenseSettings {
        var s = DefenseSettings(task: ModelTask.of(c), family: c.family)
        let a = try analysisSettings(for: c)
        s.defenseView = a.view; s.scope = a.scope; s.importanceLabels = a.importanceLabels; s.generate = a.generate
        if has("--monitor-view") {
            s.monitorView = AnalysisView(rawValue: try choice("--monitor-view", AnalysisView.allCases.map(\.rawValue), default: s.monitorView.rawValue))!
        }
        (s.alpha, s.tau) = try alphaTau()
        // --outlier-z alone means the outlier classes
        let rule = try choice("--classes", ["tau", "outliers", "focus", "column-focus"], default: has("--outlier-z") ? "outliers" : s.classRule.name)
        if rule == "outliers" {
            if has("--tau") { throw HeadAlignError.usage("--tau: the outlier classes have no tau; add --classes tau") }
            s.classRule = .outliers(z: try double("--outlier-z", default: s.classRule.z ?? ClassRule.defaultZ, range: 0...100))
        } else if rule == "focus" || rule == "column-focus" {
            if has("--outlier-z") { throw HeadAlignError.usage("--outlier-z goes with --classes outliers") }
            // --tau stays: the rule falls back to Eq. 5 with tau when fewer than focusMinHeads heads' focus moves
            s.classRule = rule == "focus" ? .focus : .columnFocus
        } else {
            if has("--outlier-z") { throw HeadAlignError.usage("--outlier-z goes with --classes outliers") }
            s.classRule = .tau
        }
        s.score = MonitorScore(rawValue: try choice("--score", MonitorScore.allCases.map(\.rawValue), default: s.score.rawValue))!
        s.quantile = try double("--quantile", default: s.quantile, range: 0...1)
        if let rule = try fprBudget() { s.flagRule = rule }
        s.maxsim = MaxsimMode(rawValue: try choice("--maxsim", MaxsimMode.allCases.map(\.rawValue), default: s.maxsim.rawValue))!
        s.rounds = try int("--rounds", default: s.rounds, range: 1...100)
        s.alignSteps = try int("--align-steps", default: s.alignSteps, range: 0...1_000_000)
        s.alignLearningRate = try double("--align-lr", default: s.alignLearningRate, range: 0...1)
        s.finetuneSteps = try int("--ft-steps", default: s.finetuneSteps, range: 0...1_000_000)
        var budget = s.finetuneBudget ?? FinetuneBudget()
        budget.holdout = try double("--ft-holdout", default: budget.holdout, range: 0...0.9)
        budget.passes = try double("--ft-passes", default: budget.passes, range: 0.01...1000)
        budget.patience = try int("--ft-patience", default: budget.patience, range: 1...1_000_000)
        budget.rule = HeldOutRule(rawValue: try choice("--ft-keep", HeldOutRule.allCases.map(\.rawValue), default: budget.rule.rawValue))!
        if has("--ft-steps") && has("--ft-holdout") && budget.holdout > 0 {
            throw HeadAlignError.usage("--ft-steps: a fixed step count has no held-out split; drop --ft-holdout or set it to 0")
        }
        s.finetuneBudget = has("--ft-steps") || budget.holdout == 0 ? nil : budget
        if s.finetuneBudget == nil, let flag = ["--ft-passes", "--ft-patience", "--ft-keep"].first(where: has) {
            throw HeadAlignError.usage("\(flag) goes with the held-out budget; --ft-steps or --ft-holdout 0 turned it off")
        }
        s.batchSize = try int("--batch", default: s.batchSize, range: 1...4096)
        s.rates.suspicious = try double("--lr-suspicious", default: s.rates.suspicious, range: 0...1)
        s.rates.safe = try double("--lr-safe", default: s.rates.safe, range: 0...1)
        if has("--lr-safe-when-removed") { s.safeRateWhenRemoved = try double("--lr-safe-when-removed", default: 0, range: 0...1) }
        s.rates.intermediate = try double("--lr-intermediate", default: s.rates.intermediate, range: 0...1)
        s.rates.other = try double("--lr-other", default: s.rates.other, range: 0...1)
        s.uniformRate = try double("--lr-uniform", default: s.uniformRate, range: 0...1)
        s.weightDecay = try double("--weight-decay", default: s.weightDecay, range: 0...1)
        s.seed = try uint64("--defense-seed", default: s.seed)
        s.alignPenalty = try double("--ft-align-penalty", default: s.alignPenalty, range: 0...1_000_000)
        s.finetuneWarmup = try int("--ft-warmup", default: s.finetuneWarmup, range: 0...1_000_000)
        if has("--ft-guard") {
            var g = FinetuneGuard()
            g.tolerance = try double("--ft-guard-tolerance", default: g.tolerance, range: 0...1)
            g.every = try int("--ft-guard-every", default: g.every, range: 1...1_000_000)
            s.finetuneGuard = g
        } else if has("--ft-guard-tolerance") || has("--ft-guard-every") {
            throw HeadAlignError.usage("--ft-guard-tolerance and --ft-guard-every go with --ft-guard")
        }
        return s
    }

    /// The baselines' settings (fine-pruning, pure, reinit); defaults are BaselineSettings' own.
    func baselineSettings(for c: ModelConfig) throws -> BaselineSettings {
        var b = BaselineSettings()
        b.accuracyMargin = try double("--prune-margin", default: b.accuracyMargin, range: 0...1)
        if has("--prune-layers") { b.pruneLayers = try int("--prune-layers", default: 1, range: 1...c.numHiddenLayers) }
        b.purePenalty = try double("--pure-penalty", default: b.purePenalty, range: 0...1_000)
        b.pureStep = try int("--pure-step", default: b.pureStep, range: 1...100_000)
        b.reinitLayers = try int("--reinit-layers", default: b.reinitLayers, range: 1...c.numHiddenLayers)
        b.meftEntropyShare = try double("--meft-share", default: b.meftEntropyShare, range: 0.01...1)
        return b
    }
}

let fprBudgetHelp = "flag above the k-th smallest of the n clean calibration scores, k = ceil((n+1)(1-A)): a clean input is flagged with probability <= A (ours; instead of --quantile's threshold; A in (0, 1))"

extension ParsedArguments {
    /// `--fpr-budget A`: the monitor's conformal threshold rule, or nil without the flag.
    func fprBudget() throws -> FlagRule? {
        guard has("--fpr-budget") else { return nil }
        if has("--quantile") { throw HeadAlignError.usage("--fpr-budget and --quantile both set the monitor's threshold; give one") }
        let alpha = try double("--fpr-budget", default: 0.05, range: 0...1)
        guard alpha > 0, alpha < 1 else { throw HeadAlignError.usage("--fpr-budget \(alpha): the budget must lie strictly between 0 and 1") }
        return .fprBudget(alpha)
    }
}

/// The monitor's threshold rule in the settings line.
func flagRuleText(_ s: DefenseSettings) -> String {
    if case .fprBudget(let alpha) = s.flagRule { return "fpr budget \(alpha)" }
    return "q \(s.quantile)"
}

/// How the heads are classed, as the settings line and the demo's tables say it.
func classesText(_ s: DefenseSettings) -> String {
    switch s.classRule {
    case .tau: return "classes tau \(s.tau)"
    case .outliers(let z): return "classes outliers z \(z)"
    case .focus: return "classes focus (else tau \(s.tau))"
    case .columnFocus: return "classes column-focus (else tau \(s.tau))"
    }
}

/// The settings line every defense command prints.
func describe(_ s: DefenseSettings, _ b: BaselineSettings) -> String {
    let method = "view \(s.defenseView.rawValue), monitor view \(s.monitorView.rawValue), scope \(s.scope.rawValue), alpha \(s.alpha), "
        + classesText(s) + ", "
        + "maxsim \(s.maxsim.rawValue), score \(s.score.rawValue), \(flagRuleText(s)), rounds \(s.rounds), "
        + "align steps \(s.alignSteps) at \(s.alignLearningRate), "
        + (s.finetuneBudget.map { "ft held-out \($0.holdout), passes \($0.passes), patience \($0.patience) checks every \($0.every) steps, keep \($0.rule.rawValue), " }
           ?? "ft steps \(s.finetuneSteps), ") + "batch \(s.batchSize), "
        + "lr suspicious \(s.rates.suspicious) safe \(s.rates.safe) intermediate \(s.rates.intermediate) other \(s.rates.other), uniform \(s.uniformRate), "
        + "weight decay \(s.weightDecay), seed \(s.seed)"
        + (s.finetuneGuard.map { ", ft guard every \($0.every) tolerance \($0.tolerance)" } ?? "")
        + (s.alignPenalty > 0 ? ", ft align penalty \(s.alignPenalty)" : "")
        + (s.finetuneWarmup > 0 ? ", ft warm-up \(s.finetuneWarmup) steps" : "")
        + (s.safeRateWhenRemoved.map { ", safe \($0) when the alignment removed it (< \(DefenseSettings.removedBelowText) flagged as before)" } ?? "")
        + (s.explicitSplit.map { ", explicit split (suspicious " + $0.suspicious.map(\.description).joined(separator: " ")
                                  + "; safe " + $0.safe.map(\.description).joined(separator: " ") + ")" } ?? "")
    let baselines = "prune margin \(b.accuracyMargin), prune layers \(b.pruneLayers.map(String.init) ?? "half"), "
        + "pure penalty \(b.purePenalty) step \(b.pureStep), reinit layers \(b.reinitLayers), meft share \(b.meftEntropyShare)"
    return method + "; baselines: " + baselines
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

// MARK: - Inputs and clean sets from files

/// Whether `path` is read as instruction records: an Alpaca JSON file (`.json`) given for a
/// decoder. Everything else is text, one input per line (`label<TAB>text` or plain).
func isInstructionFile(_ path: String, _ c: ModelConfig) throws -> Bool {
    guard path.lowercased().hasSuffix(".json") else { return false }
    guard ModelTask.of(c) == .generation else {
        throw HeadAlignError.usage("\(path): instruction records (.json) are read for decoders; a classifier reads label<TAB>text lines")
    }
    return true
}

/// Text lines from `path`: a dataset file (`.csv`, or a TSV whose first line is a two-column
/// header naming `label`, as `../shared/data`'s SST-2 and AG News files; either column order) is
/// read as `train`, `eval` and `experiment` read it; anything else as `label<TAB>text` or plain lines.
func readTextLines(_ path: String, numLabels: Int? = nil) throws -> [TextExample] {
    guard isDatasetFile(path) else { return try readPlainExamples(path: path, numLabels: numLabels) }
    return try readLabeledTexts(path: path, numLabels: numLabels).map { TextExample(text: $0.text, label: $0.label) }
}

/// `.csv`, or a first line that `readLabeledTexts` takes for a header (`isDatasetHeader`).
func isDatasetFile(_ path: String) -> Bool {
    if path.lowercased().hasSuffix(".csv") { return true }
    guard let handle = FileHandle(forReadingAtPath: path) else { return false }  // the reader names an unreadable file
    defer { try? handle.close() }
    let head = String(decoding: (try? handle.read(upToCount: 4096)) ?? Data(), as: UTF8.self)
    return isDatasetHeader((textLines(head).first ?? "").components(separatedBy: "\t").map { $0.trimmingCharacters(in: .whitespaces) })
}

/// The inputs Eq. 1–5 and the monitor read from `path`: for a decoder's `.json`, each record's
/// prompt in the training template (`promptInputs`: cut from the left to leave `generate`
/// positions), as `experiment` and `demo` screen them; otherwise one text per line.
func readAnalysisInputs(_ path: String, tokenizer: AnyTokenizer, config c: ModelConfig, generate: Int) throws -> [AnalysisInput] {
    if try isInstructionFile(path, c) {
        return promptInputs(try readInstructions(path: path), tokenizer: try decoderTokenizer(tokenizer, path), room: c.maxPositionEmbeddings - generate)
    }
    return try readTextLines(path).map {
        AnalysisInput(tokens: try tokenizer.encode($0.text, maxLength: c.maxPositionEmbeddings - generate).ids, label: $0.label)
    }
}

/// The defender's clean set from `path`: labelled lines for a classifier; for a decoder, a `.json`
/// file's records as prompt + reference response (the loss on the response only), cut like the
/// training records (`TrainSettings.decoderMaxLength`), or plain text lines (the loss on every
/// token after the first).
func readCleanExamples(_ path: String, tokenizer: AnyTokenizer, config c: ModelConfig, generate: Int) throws -> [TrainingExample] {
    let task = ModelTask.of(c), maxLength = c.maxPositionEmbeddings - (task == .generation ? generate : 0)
    if try isInstructionFile(path, c) {
        return responseExamples(try readInstructions(path: path), tokenizer: try decoderTokenizer(tokenizer, path),
                                maxLength: min(TrainSettings.decoderMaxLength, maxLength))
    }
    return try readTextLines(path).enumerated().map { n, e -> TrainingExample in
        if task == .classification {
            guard let label = e.label, label < c.numLabels else {
                throw HeadAlignError.badInput("\(path): example \(n + 1) needs a label in 0..<\(c.numLabels) (label<TAB>text)")
            }
            return TrainingExample(tokens: try tokenizer.encode(e.text, maxLength: maxLength).ids, label: label)
        }
        return TrainingExample(tokens: try tokenizer.encode(e.text, maxLength: maxLength).ids, responseStart: 1)
    }
}

private func decoderTokenizer(_ t: AnyTokenizer, _ path: String) throws -> DecoderTokenizer {
    guard let d = t.decoder else { throw HeadAlignError.usage("\(path): instruction records need the decoder's own tokenizer (tokenizer.bin or a word vocabulary)") }
    return d
}
