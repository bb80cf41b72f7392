// DefendCommand.swift: `headalign defend`, the whole defense, writing a repaired model and a report.

import Foundation
import HeadAlign

enum DefendCommand: Command {
    static let spec = CommandSpec(
        name: "defend",
        summary: "the whole defense: monitor, then rounds of classify -> align -> head-wise fine-tune",
        detail: """
            The monitor, calibrated on --clean, flags inputs of --inputs (no labels needed). Each round: Eq. 4-5 on the
            flagged inputs; Eq. 6-7 alignment of the suspicious heads' query/key slices toward the safe heads' mean
            attention; head-wise fine-tuning on the labelled --clean examples (suspicious --lr-suspicious, safe
            --lr-safe, intermediate --lr-intermediate, everything else --lr-other); the monitor re-scores the
            flagged inputs. Rounds stop when none is flagged or after --rounds. Writes the repaired model (same
            layout as the input, a new directory) and defense_report.json in it. Never touches the input model.
            """,
        usage: "defend --model DIR --clean FILE --inputs FILE --out DIR [options]",
        options: modelOptions + analysisOptions + [
            OptionSpec(name: "--clean", value: "FILE", help: "clean labelled examples (label<TAB>text): calibration and fine-tuning"),
            OptionSpec(name: "--inputs", value: "FILE", help: "inputs the monitor screens (text per line)"),
            OptionSpec(name: "--out", value: "DIR", help: "the repaired model's new directory"),
            OptionSpec(name: "--method", value: "M", help: "ours (default), align-only, ft-only, finetune"),
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
        ])

    static func run(_ args: ParsedArguments) throws -> Int32 {
        guard let cleanPath = args.string("--clean") else { throw HeadAlignError.usage("--clean FILE is required") }
        guard let inputsPath = args.string("--inputs") else { throw HeadAlignError.usage("--inputs FILE is required") }
        guard let out = args.string("--out") else { throw HeadAlignError.usage("--out DIR is required") }
        guard !FileManager.default.fileExists(atPath: out) else { throw HeadAlignError.usage("--out \(out) exists; give a new directory") }
        guard case .directory = try args.modelSource() else { throw HeadAlignError.usage("defend needs --model DIR (it writes the repaired model in the same layout)") }
        let (model, tokenizer, _) = try args.loadModel()
        let c = model.config, task = Task.of(c)
        var s = DefenseSettings(task: task, family: c.family)
        let a = try args.analysisSettings(for: c)
        s.defenseView = a.view; s.scope = a.scope; s.importanceLabels = a.importanceLabels; s.generate = a.generate
        if args.has("--monitor-view") {
            s.monitorView = AnalysisView(rawValue: try args.choice("--monitor-view", AnalysisView.allCases.map(\.rawValue), default: "cls"))!
        }
        (s.alpha, s.tau) = try args.alphaTau()
        s.method = DefenseMethod(rawValue: try args.choice("--method", DefenseMethod.allCases.map(\.rawValue), default: "ours"))!
        s.score = MonitorScore(rawValue: try args.choice("--score", MonitorScore.allCases.map(\.rawValue), default: "contrast-absz"))!
        s.quantile = try args.double("--quantile", default: 0.99, range: 0...1)
        s.maxsim = MaxsimMode(rawValue: try args.choice("--maxsim", MaxsimMode.allCases.map(\.rawValue), default: "plain"))!
        s.rounds = try args.int("--rounds", default: 1, range: 1...100)
        s.alignSteps = try args.int("--align-steps", default: 50, range: 0...1_000_000)
        s.alignLearningRate = try args.double("--align-lr", default: 1e-3, range: 0...1)
        s.finetuneSteps = try args.int("--ft-steps", default: 100, range: 0...1_000_000)
        s.batchSize = try args.int("--batch", default: 16, range: 1...4096)
        s.rates.suspicious = try args.double("--lr-suspicious", default: 5e-6, range: 0...1)
        s.rates.safe = try args.double("--lr-safe", default: 2e-4, range: 0...1)
        s.rates.intermediate = try args.double("--lr-intermediate", default: 5e-5, range: 0...1)
        s.rates.other = try args.double("--lr-other", default: 5e-5, range: 0...1)
        s.weightDecay = try args.double("--weight-decay", default: 0.01, range: 0...1)
        s.seed = try args.uint64("--defense-seed", default: 1)

        let maxLength = c.maxPositionEmbeddings - (task == .generation ? s.generate : 0)
        let clean = try readPlainExamples(path: cleanPath).enumerated().map { n, e -> TrainingExample in
            if task == .classification {
                guard let label = e.label, label < c.numLabels else {
                    throw HeadAlignError.badInput("\(cleanPath): example \(n + 1) needs a label in 0..<\(c.numLabels) (label<TAB>text)")
                }
                return TrainingExample(tokens: try tokenizer.encode(e.text, maxLength: maxLength).ids, label: label)
            }
            return TrainingExample(tokens: try tokenizer.encode(e.text, maxLength: maxLength).ids, responseStart: 1)
        }
        let inputs = try readPlainExamples(path: inputsPath).map { AnalysisInput(tokens: try tokenizer.encode($0.text, maxLength: maxLength).ids) }

        let commandLine = (["headalign"] + CommandLine.arguments.dropFirst()).joined(separator: " ")
        print("\(commandLine)")
        print("settings: method \(s.method.rawValue), view \(s.defenseView.rawValue), monitor view \(s.monitorView.rawValue), scope \(s.scope.rawValue), alpha \(s.alpha), tau \(s.tau), maxsim \(s.maxsim.rawValue), score \(s.score.rawValue), q \(s.quantile), rounds \(s.rounds), align steps \(s.alignSteps) at \(s.alignLearningRate), ft steps \(s.finetuneSteps), batch \(s.batchSize), lr suspicious \(s.rates.suspicious) safe \(s.rates.safe) intermediate \(s.rates.intermediate) other \(s.rates.other), weight decay \(s.weightDecay), seed \(s.seed)")
        let report = try model.defend(clean: clean, inputs: inputs, settings: s, log: { print($0) })
        print("stopped: \(report.stoppedBecause)")
        if report.rounds.isEmpty && report.flagged.isEmpty {
            print("nothing written")
            return 0
        }
        let json = JSONOut.object([
            ("command", .string(commandLine)), ("stopped", .string(report.stoppedBecause)),
            ("monitor_threshold", .number(report.threshold)), ("flagged", .array(report.flagged.map { .int($0) })),
            ("scores_before", .numbers(report.scoresBefore)),
            ("rounds", .array(report.rounds.map { r in .object([
                ("round", .int(r.round)), ("suspicious", .array(r.suspicious.map { .string($0.description) })),
                ("safe", .array(r.safe.map { .string($0.description) })), ("intermediate", .int(r.intermediateCount)),
                ("align_loss", .numbers(r.alignLoss)), ("finetune_loss", .numbers(r.finetuneLoss)),
                ("flagged_after", .int(r.flaggedAfter)), ("mean_score_after", .number(r.meanScoreAfter)),
            ]) })),
        ])
        var files = tokenizerFiles(in: args.string("--model")!)
        files["defense_report.json"] = Data(json.text.utf8)
        try model.save(to: out, extraFiles: files)
        print("wrote \(out) (model, tokenizer files, defense_report.json)")
        return 0
    }
}
