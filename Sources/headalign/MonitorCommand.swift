// MonitorCommand.swift: `headalign monitor`, calibrate on clean inputs, score and flag inputs.

import Foundation
import HeadAlign
import HeadAlignLab

enum MonitorCommand: Command {
    static let spec = CommandSpec(
        name: "monitor",
        summary: "calibrate on clean inputs, then score and flag inputs; AUROC / TPR / FPR when triggered inputs are known",
        detail: """
            Calibration (SPEC): the clean inputs are split in two halves; per head pair the first half gives the mean,
            the standard deviation and the q-quantile of the pair cosine; the second half's scores give the flagging
            threshold (their q-quantile). --inputs are scored and flagged one per line. For a decoder every FILE may be
            Alpaca records (FILE.json): their prompts, in the training template, are what is scored. With --clean-test and
            --triggered, every score (the calibrated contrast scores and the paper's frac-above and p99) is
            evaluated: AUROC, TPR at the threshold, FPR on the clean test inputs.
            """,
        usage: "monitor (--model DIR | ...) --clean FILE [--inputs FILE] [--clean-test FILE --triggered FILE] [--score S] [--monitor-view V] [--quantile Q]",
        options: modelOptions + [
            OptionSpec(name: "--stream", value: nil, help: "run a Llama --model DIR layer by layer from its memory-mapped checkpoint (7B in BLAS mode)"),
            OptionSpec(name: "--clean", value: "FILE", help: "clean inputs for calibration (at least 2)"),
            OptionSpec(name: "--inputs", value: "FILE", help: "inputs to score and flag"),
            OptionSpec(name: "--clean-test", value: "FILE", help: "held-out clean inputs, for detection metrics"),
            OptionSpec(name: "--triggered", value: "FILE", help: "inputs known to carry the trigger, for detection metrics"),
            OptionSpec(name: "--score", value: "S", help: "flagging score: \(MonitorScore.allCases.map(\.rawValue).joined(separator: ", ")) (default \(defenseDefaults.score.rawValue))"),
            OptionSpec(name: "--monitor-view", value: "V", help: "view: cls (BERT classifier default), last (decoder classifier), gen2prompt (decoder default), full"),
            OptionSpec(name: "--scope", value: "S", help: "head pairs: model or layer (default \(analysisDefaults.scope.rawValue))"),
            OptionSpec(name: "--quantile", value: "Q", help: "calibration quantile q (default \(defenseDefaults.quantile))"),
            OptionSpec(name: "--fpr-budget", value: "A", help: fprBudgetHelp),
            OptionSpec(name: "--top-k", value: "K", help: "pairs averaged by contrast-z (default \(MonitorCalibration.defaultTopK))"),
            OptionSpec(name: "--generate", value: "N", help: "tokens generated for gen2prompt (default \(analysisDefaults.generate))"),
            OptionSpec(name: "--threshold", value: "C", help: "frac-above's cosine threshold (default \(analysisDefaults.threshold))"),
            OptionSpec(name: "--calibration-draws", value: "N", help: "with --clean-test/--triggered: also each score's AUROC over N seeded draws of --calibration-size clean inputs (median, min, max)"),
            OptionSpec(name: "--calibration-size", value: "n", help: "clean inputs per draw (default \(defaultCalibrationDrawSize), or all when fewer)"),
            OptionSpec(name: "--draw-seed", value: "S", help: "seed of the calibration draws (default 1)"),
        ])

    /// The defender's clean records the experiments calibrate on (experiment --defense-count's default).
    static let defaultCalibrationDrawSize = 100

    static func run(_ args: ParsedArguments) throws -> Int32 {
        let (model, tokenizer, _) = try args.loadAnalyzer()
        let c = model.config
        guard let cleanPath = args.string("--clean") else { throw HeadAlignError.usage("--clean FILE is required") }
        if args.has("--clean-test") != args.has("--triggered") { throw HeadAlignError.usage("--clean-test and --triggered go together") }
        guard args.has("--inputs") || args.has("--triggered") else { throw HeadAlignError.usage("give --inputs, or --clean-test with --triggered") }
        var settings = try args.analysisSettings(for: c, view: "--monitor-view")
        if !args.has("--monitor-view") { settings.view = ModelTask.of(c).defaultViews(c.family).monitor }
        settings.importance = false  // the monitor reads cosines only
        let score = MonitorScore(rawValue: try args.choice("--score", MonitorScore.allCases.map(\.rawValue), default: defenseDefaults.score.rawValue))!
        let q = try args.double("--quantile", default: defenseDefaults.quantile, range: 0...1)
        let k = try args.int("--top-k", default: MonitorCalibration.defaultTopK, range: 1...1_000_000)
        func analyses(_ path: String) throws -> [InputAnalysis] {
            try model.analyze(try readAnalysisInputs(path, tokenizer: tokenizer, config: c, generate: settings.generate), settings: settings)
        }
        func readings(_ a: [InputAnalysis], _ s: MonitorScore) -> [[Double]] { a.map { monitorReading($0, score: s) } }
        let draws = try args.int("--calibration-draws", default: 0, range: 0...10_000)
        if draws > 0 && !args.has("--triggered") { throw HeadAlignError.usage("--calibration-draws needs --clean-test and --triggered") }
        if (args.has("--calibration-size") || args.has("--draw-seed")) && draws == 0 {
            throw HeadAlignError.usage("--calibration-size and --draw-seed go with --calibration-draws")
        }
        let cleanAnalyses = try analyses(cleanPath), clean = readings(cleanAnalyses, score)
        let drawSize = try args.int("--calibration-size", default: min(defaultCalibrationDrawSize, clean.count), range: 2...clean.count)
        let drawSeed = try args.uint64("--draw-seed", default: 1)
        let cal = try MonitorCalibration(clean: clean, score: score, q: q, topK: k, cosineThreshold: settings.threshold,
                                         rule: try args.fprBudget() ?? .quantile)
        print("headalign monitor: calibrated on \(clean.count) clean inputs; score \(score.rawValue), view \(settings.view.rawValue), scope \(settings.scope.rawValue), threshold \(String(format: "%.6g", cal.flagThreshold)) (\(cal.ruleDescription))")
        if let path = args.string("--inputs") {
            let texts = try isInstructionFile(path, c) ? try readInstructions(path: path).map(\.instruction) : try readTextLines(path).map(\.text)
            let scores = readings(try analyses(path), score).map(cal.score(of:))
            print("")
            print("| input | score | flagged | text |")
            print("|---:|---:|---|---|")
            for (i, s) in scores.enumerated() {
                print(String(format: "| %d | %.6g | %@ | %@ |", i + 1, s, cal.flags(s) ? "yes" : "no", String(texts[i].prefix(60))))
            }
            print("")
            print("flagged \(scores.filter(cal.flags).count) of \(scores.count)")
        }
        if let cleanTest = args.string("--clean-test"), let triggered = args.string("--triggered") {
            let ct = try analyses(cleanTest), tr = try analyses(triggered)
            print("")
            print("detection on \(ct.count) clean and \(tr.count) triggered inputs:")
            print("| score | AUROC | TPR | FPR | threshold |")
            print("|---|---:|---:|---:|---:|")
            for s in MonitorScore.allCases {
                let calS = try cal.with(score: s, clean: readings(cleanAnalyses, s))
                let m = detectionMetrics(calS, clean: readings(ct, s).map(calS.score(of:)), triggered: readings(tr, s).map(calS.score(of:)))
                print(String(format: "| %@%@ | %.3f | %.3f | %.3f | %.6g |", s.rawValue, s == score ? " (flagging)" : "", m.auroc, m.tpr, m.fpr, calS.flagThreshold))
            }
            if draws > 0 {
                // the scores that need no calibration (frac-above, p99) do not vary with the draw
                print("")
                print("AUROC over \(draws) draws of \(drawSize) of the \(clean.count) clean inputs (seed \(drawSeed)), each split in halves as above:")
                print("| score | median | min | max |")
                print("|---|---:|---:|---:|")
                for s in MonitorScore.allCases {
                    let a = try aurocOverCalibrationDraws(calibration: readings(cleanAnalyses, s), clean: readings(ct, s), triggered: readings(tr, s),
                                                          size: drawSize, draws: draws,
                                                          seed: drawSeed, score: s, topK: k, cosineThreshold: settings.threshold).sorted()
                    print(String(format: "| %@ | %.3f | %.3f | %.3f |", s.rawValue, quantile(a, 0.5), a.first!, a.last!))
                }
            }
        }
        return 0
    }
}
