// DefendCommand.swift: `headalign defend`, the whole defense, writing a repaired model and a report.

import Foundation
import HeadAlign
import HeadAlignLab

enum DefendCommand: Command {
    static let spec = CommandSpec(
        name: "defend",
        summary: "the whole defense: monitor, then rounds of classify -> align -> head-wise fine-tune",
        detail: """
            The monitor, calibrated on --clean, flags inputs of --inputs (no labels needed). Each round: Eq. 4-5 on the
            flagged inputs; Eq. 6-7 alignment of the suspicious heads' query/key slices toward the safe heads' mean
            attention; head-wise fine-tuning on the labelled --clean examples (suspicious --lr-suspicious, safe
            --lr-safe, intermediate --lr-intermediate, everything else --lr-other); the monitor re-scores the
            flagged inputs. With --suspicious and --safe every round skips Eq. 4-5 and uses that split (every other head
            intermediate). Rounds stop when none is flagged or after --rounds. Writes the repaired model (same
            layout as the input, a new directory) and defense_report.json in it. Never touches the input model.
            """,
        usage: "defend --model DIR --clean FILE --inputs FILE (--out DIR | --no-write) [options]",
        options: modelOptions + analysisOptions + defenseOptions + headSplitOptions + [
            OptionSpec(name: "--clean", value: "FILE", help: "clean examples: calibration and fine-tuning (label<TAB>text; a decoder also takes Alpaca records, FILE.json)"),
            OptionSpec(name: "--inputs", value: "FILE", help: "inputs the monitor screens (text per line; a decoder's FILE.json: the records' prompts)"),
            OptionSpec(name: "--out", value: "DIR", help: "the repaired model's new directory"),
            OptionSpec(name: "--report", value: "FILE", help: "also write defense_report.json here (with --no-write too)"),
            OptionSpec(name: "--no-write", value: nil, help: "run and report, write nothing (instead of --out)"),
            OptionSpec(name: "--method", value: "M", help: "ours (default), align-only, ft-only, finetune, fine-pruning, pure, reinit, meft"),
        ])

    static func run(_ args: ParsedArguments) throws -> Int32 {
        guard let cleanPath = args.string("--clean") else { throw HeadAlignError.usage("--clean FILE is required") }
        guard let inputsPath = args.string("--inputs") else { throw HeadAlignError.usage("--inputs FILE is required") }
        let out = args.string("--out") ?? ""
        if args.has("--no-write") {
            guard !args.has("--out") else { throw HeadAlignError.usage("give --out DIR or --no-write, not both") }
        } else {
            guard args.has("--out") else { throw HeadAlignError.usage("--out DIR is required (or --no-write)") }
            guard !FileManager.default.fileExists(atPath: out) else { throw HeadAlignError.usage("--out \(out) exists; give a new directory") }
        }
        if args.has("--lr-safe-when-removed"), let m = args.string("--method"), m != ExperimentMethod.ours.rawValue {  // before any work
            throw HeadAlignError.usage("--lr-safe-when-removed acts only in ours (head-wise fine-tuning after the alignment), not in --method \(m)")
        }
        guard case .directory = try args.modelSource() else { throw HeadAlignError.usage("defend needs --model DIR (it writes the repaired model in the same layout)") }
        let (model, tokenizer, _) = try args.loadModel()
        let c = model.config
        var s = try args.defenseSettings(for: c)
        s.explicitSplit = try args.headSplit(c)  // --suspicious/--safe: every round uses this split, no Eq. 4-5
        let baseline = try args.baselineSettings(for: c)
        let method = ExperimentMethod(rawValue: try args.choice("--method", ExperimentMethod.allCases.map(\.rawValue), default: ExperimentMethod.ours.rawValue))!

        let clean = try readCleanExamples(cleanPath, tokenizer: tokenizer, config: c, generate: s.generate)
        let inputs = try readAnalysisInputs(inputsPath, tokenizer: tokenizer, config: c, generate: s.generate).map { AnalysisInput(tokens: $0.tokens) }
        // a decoder's records calibrate the monitor as prompts in the form it screens them, not cut to the training length
        let calibration = try isInstructionFile(cleanPath, c) ? try readAnalysisInputs(cleanPath, tokenizer: tokenizer, config: c, generate: s.generate) : nil

        let commandLine = echoedCommandLine
        print("\(commandLine)")
        print("settings: method \(method.rawValue), " + describe(s, baseline))
        let run = try model.runMethod(method, clean: clean, inputs: inputs, calibration: calibration, settings: s, baseline: baseline, log: { print($0) })
        var report: DefenseReport? = nil, baselineSummary: String? = nil, baselineLoss: [Double] = []
        switch run {
        case .defense(let r): report = r
        case .baseline(let summary, let losses): (baselineSummary, baselineLoss) = (summary, losses)
        }
        let stopped = report?.stoppedBecause ?? "baseline done"
        print("stopped: \(stopped)")
        if let report, report.rounds.isEmpty && report.flagged.isEmpty {
            print("nothing written")
            return 0
        }
        // the safe heads' rate the self-check picked, only with --lr-safe-when-removed (default reports unchanged)
        func safeRateField(_ r: RoundLog) -> [(String, JSONOut)] {
            s.safeRateWhenRemoved == nil ? [] : [("safe_rate", r.safeRate.map { .number($0) } ?? .null)]
        }
        let json = JSONOut.object([
            ("command", .string(commandLine)), ("method", .string(method.rawValue)), ("stopped", .string(stopped)),
            ("head_split", .string(s.explicitSplit == nil ? "eq5" : "explicit")),
            ("baseline", baselineSummary.map { .string($0) } ?? .null), ("baseline_finetune_loss", .numbers(baselineLoss)),
            ("monitor", report == nil ? .null : .string("\(s.score.rawValue) score, \(s.monitorView.rawValue) view")),
            ("monitor_threshold", .number(report?.threshold ?? .nan)),
            ("monitor_threshold_rule", report.map { .string($0.thresholdRule) } ?? .null), ("flagged", .array((report?.flagged ?? []).map { .int($0) })),
            ("scores_before", .numbers(report?.scoresBefore ?? [])),
            ("rounds", .array((report?.rounds ?? []).map { r in .object([
                ("round", .int(r.round)), ("suspicious", .array(r.suspicious.map { .string($0.description) })),
                ("safe", .array(r.safe.map { .string($0.description) })), ("intermediate", .int(r.intermediateCount)),
                ("classes", .string(r.classes)), ("focus_shift", r.focusShift.map { .numbers($0) } ?? .null),
                ("align_loss", .numbers(r.alignLoss)), ("finetune_loss", .numbers(r.finetuneLoss)),
                ("heldout_steps", .array(r.heldOutLoss.map { .int($0.step) })), ("heldout_loss", .numbers(r.heldOutLoss.map(\.loss))),
                ("finetune_kept_step", .int(r.finetuneKeptStep)),
                ("flagged_after", .int(r.flaggedAfter)), ("mean_score_after", .number(r.meanScoreAfter)), ("flagged_as_before", r.flaggedAsBefore.map { .int($0) } ?? .null),
            ] + safeRateField(r)) })),
        ])
        if let path = args.string("--report") { try writeAtomically(Data(json.text.utf8), to: path) }
        if args.has("--no-write") {
            print(args.has("--report") ? "--no-write: no model written (report: \(args.string("--report")!))" : "--no-write: nothing written")
            return 0
        }
        var files = tokenizerFiles(in: args.string("--model")!)
        files["defense_report.json"] = Data(json.text.utf8)
        try model.save(to: out, extraFiles: files)
        print("wrote \(out) (model, tokenizer files, defense_report.json)")
        return 0
    }
}
