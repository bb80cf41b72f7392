// Experiment.swift: one row set of the paper's tables for one backdoored classifier: CA and ASR
// before any defense ("vanilla") and after each method, all starting from the same weights and
// using the same clean data and fine-tuning budget; the Table 1 statistic (p99, frac_above) of
// clean against triggered inputs and the monitor's AUROC. `headalign experiment` repeats it over
// seeds; `headalign demo` runs it once on a shipped tiny model.

import HeadAlign
import Foundation

/// The data of one experiment, tokenized.
public struct ExperimentSplit: Sendable {
    public var defenderClean: [TrainingExample]  // the defender's small clean labelled set
    public var cleanTest: [TrainingExample]  // CA
    public var triggeredTest: [TrainingExample]  // ASR: triggered inputs with their true labels
    public var monitorClean: [AnalysisInput]  // unlabeled traffic the monitor screens: clean part
    public var monitorTriggered: [AnalysisInput]  // and triggered part
    public var target: Int

    public init(defenderClean: [TrainingExample], cleanTest: [TrainingExample], triggeredTest: [TrainingExample],
                monitorClean: [AnalysisInput], monitorTriggered: [AnalysisInput], target: Int) {
        self.defenderClean = defenderClean; self.cleanTest = cleanTest; self.triggeredTest = triggeredTest
        self.monitorClean = monitorClean; self.monitorTriggered = monitorTriggered; self.target = target
    }

    /// Builds the split from texts: the monitor screens `monitorCount` clean and as many triggered
    /// test inputs (a seeded sample; labels withheld).
    public static func make(defenderClean: [LabeledText], cleanTest: [LabeledText], triggeredTest: [LabeledText], target: Int,
                            monitorCount: Int, seed: UInt64, encode: (String) throws -> [Int]) throws -> ExperimentSplit {
        func examples(_ xs: [LabeledText]) throws -> [TrainingExample] { try xs.map { TrainingExample(tokens: try encode($0.text), label: $0.label) } }
        let clean = try examples(cleanTest), triggered = try examples(triggeredTest.filter { $0.label != target })
        var rng = SeededGenerator(seed: seed ^ 0x4D4F4E)
        func sample(_ xs: [TrainingExample]) -> [AnalysisInput] {
            var idx = Array(xs.indices)
            idx.shuffle(using: &rng)
            return idx.prefix(monitorCount).sorted().map { AnalysisInput(tokens: xs[$0].tokens) }
        }
        return ExperimentSplit(defenderClean: try examples(defenderClean), cleanTest: clean, triggeredTest: triggered,
                               monitorClean: sample(clean), monitorTriggered: sample(triggered), target: target)
    }
}

/// The Table 1 statistic and the monitor's detection quality on clean vs triggered inputs.
public struct DetectionSummary: Sendable {
    public let view: AnalysisView
    public let p99Clean: Double, p99Triggered: Double  // means over inputs
    public let fracAboveClean: Double, fracAboveTriggered: Double
    public let auroc: [(score: MonitorScore, value: Double)]
    public let defaultScore: MonitorScore
    public let tpr: Double, fpr: Double  // of the default score at its calibrated threshold
    public let budget: String?  // with --fpr-budget: the threshold's rank and what it promises
}

/// One method's outcome.
public struct MethodOutcome: Sendable {
    public let method: String  // "vanilla" or an ExperimentMethod's name
    public let ca: Double, asr: Double
    public let seconds: Double
    public let note: String  // what the method did, or why it did not run
    public let suspicious: [HeadID], safe: [HeadID]
    public let ran: Bool

    public init(method: String, ca: Double, asr: Double, seconds: Double, note: String, suspicious: [HeadID], safe: [HeadID], ran: Bool) {
        self.method = method; self.ca = ca; self.asr = asr; self.seconds = seconds; self.note = note
        self.suspicious = suspicious; self.safe = safe; self.ran = ran
    }
}

/// CA on the clean test set and ASR on the triggered one (SPEC.md's metrics).
public func caAndASR<S: Real>(_ model: Model<S>, _ split: ExperimentSplit) -> (ca: Double, asr: Double) {
    func predictions(_ xs: [TrainingExample]) -> [Int] {
        stride(from: 0, to: xs.count, by: 64).flatMap { start in
            rowArgmax(model.forward(Batch(xs[start..<min(xs.count, start + 64)].map(\.tokens))).output)
        }
    }
    let ca = cleanAccuracy(predictions: predictions(split.cleanTest), labels: split.cleanTest.map { $0.label! })
    let asr = attackSuccessRate(predictions: predictions(split.triggeredTest), trueLabels: split.triggeredTest.map { $0.label! },
                                target: split.target)
    return (ca.value, asr.value)
}

/// Table 1's statistic and every monitor score's AUROC, the monitor calibrated on the defender's
/// clean set, in the monitor view.
public func detectionSummary<S: Real>(_ model: Model<S>, _ split: ExperimentSplit, settings: DefenseSettings) throws -> DetectionSummary {
    try detectionSummary(model, calibration: split.defenderClean.map { AnalysisInput(tokens: $0.tokens) }, clean: split.monitorClean,
                         triggered: split.monitorTriggered, settings: settings)
}

/// The same from analysis inputs: the monitor is calibrated on `calibration` (the defender's
/// clean inputs) and scores `clean` against `triggered`.
public func detectionSummary<S: Real>(_ model: Model<S>, calibration: [AnalysisInput], clean cleanInputs: [AnalysisInput],
                                      triggered triggeredInputs: [AnalysisInput], settings: DefenseSettings) throws -> DetectionSummary {
    let (cal, calibrationAnalyses, _) = try calibrateMonitor(model, clean: calibration, settings: settings)
    let a = settings.analysis(settings.monitorView, importance: false)
    let clean = try analyze(model, cleanInputs, settings: a), triggered = try analyze(model, triggeredInputs, settings: a)
    func mean(_ xs: [Double]) -> Double { xs.reduce(0, +) / Double(max(1, xs.count)) }
    var aurocs: [(MonitorScore, Double)] = []
    var metrics: DetectionMetrics? = nil
    for score in MonitorScore.allCases {
        let c = try cal.with(score: score, clean: calibrationAnalyses.map { monitorReading($0, score: score) })
        let sc = clean.map { c.score(of: monitorReading($0, score: score)) }, st = triggered.map { c.score(of: monitorReading($0, score: score)) }
        aurocs.append((score, auroc(clean: sc, triggered: st)))
        if score == settings.score { metrics = detectionMetrics(c, clean: sc, triggered: st) }
    }
    return DetectionSummary(view: settings.monitorView, p99Clean: mean(clean.map(\.p99)), p99Triggered: mean(triggered.map(\.p99)),
                            fracAboveClean: mean(clean.map(\.fracAbove)), fracAboveTriggered: mean(triggered.map(\.fracAbove)),
                            auroc: aurocs, defaultScore: settings.score, tpr: metrics!.tpr, fpr: metrics!.fpr, budget: cal.guarantee == nil ? nil : cal.ruleDescription)
}

/// How much a monitor score's AUROC depends on which clean inputs calibrate it (issue 16): `draws`
/// seeded draws of `size` rows of `calibration` (readings, `monitorReading`, one row per clean input; without
/// replacement), each calibrated as `MonitorCalibration` does (first half: per-pair mean and
/// standard deviation; second half: threshold), each scoring the same `clean` and `triggered` rows.
/// Returns one AUROC per draw, in draw order.
public func aurocOverCalibrationDraws(calibration: [[Double]], clean: [[Double]], triggered: [[Double]], size: Int, draws: Int,
                                      seed: UInt64, score: MonitorScore, topK: Int = MonitorCalibration.defaultTopK,
                                      cosineThreshold: Double = 0.99) throws -> [Double] {
    guard (2...calibration.count).contains(size) else {
        throw HeadAlignError.usage("a calibration draw takes 2 to \(calibration.count) clean inputs, not \(size)")
    }
    var rng = SeededGenerator(seed: seed)
    return try (0..<draws).map { _ in
        var order = Array(calibration.indices)
        order.shuffle(using: &rng)
        let cal = try MonitorCalibration(clean: order.prefix(size).map { calibration[$0] }, score: score, topK: topK,
                                         cosineThreshold: cosineThreshold)
        return auroc(clean: clean.map(cal.score(of:)), triggered: triggered.map(cal.score(of:)))
    }
}

extension Model {
    /// A copy with its own parameters (same configuration and backend).
    public func copy() -> Model<S> {
        let m = Model<S>(config: config, backend: backend)
        m.params.data.update(from: params.data, count: layout.total)
        return m
    }
}

/// Vanilla, then each method on a fresh copy of `backdoored` (which is left unchanged). The
/// monitor screens the split's clean and triggered inputs together, unlabeled. A method that
/// refuses (Eq. 5 leaves a class empty, the monitor flags nothing) keeps the vanilla numbers and
/// says why.
public func runMethods<S: Real>(_ backdoored: Model<S>, _ split: ExperimentSplit, methods: [ExperimentMethod], settings: DefenseSettings,
                                baseline: BaselineSettings = BaselineSettings(), vanilla: Bool = true,
                                log: (String) -> Void = { _ in }) throws -> [MethodOutcome] {
    try runMethods(backdoored, defenderClean: split.defenderClean, inputs: split.monitorClean + split.monitorTriggered,
                   methods: methods, settings: settings, baseline: baseline, vanilla: vanilla, log: log, evaluate: { caAndASR($0, split) })
}

/// The same for any task: `evaluate` gives (CA, ASR) of a model. The first row is the backdoored
/// model's own (`vanilla`) unless `vanilla` is false (a caller that runs the methods in parts).
/// `align-only` is `ours` stopped after its alignment: with one round, the same monitor, classes
/// and alignment steps from the same seeds. When both are asked for, `ours`' aligned model gives
/// `align-only`'s row (evaluated at that point), so the alignment runs once; the rows equal those of
/// separate runs (FinetuneTraceTests.testAlignOnlyRowFromOursEqualsItsOwnRun).
public func runMethods<S: Real>(_ backdoored: Model<S>, defenderClean: [TrainingExample], inputs: [AnalysisInput],
                                calibration: [AnalysisInput]? = nil, methods: [ExperimentMethod], settings: DefenseSettings,
                                baseline: BaselineSettings = BaselineSettings(), vanilla: Bool = true, log: (String) -> Void = { _ in },
                                evaluate: (Model<S>) -> (ca: Double, asr: Double)) throws -> [MethodOutcome] {
    var start = monotonicSeconds()
    var out: [MethodOutcome] = []
    if vanilla {
        let v = evaluate(backdoored)
        out.append(MethodOutcome(method: "vanilla", ca: v.ca, asr: v.asr, seconds: monotonicSeconds() - start,
                                 note: "the backdoored model", suspicious: [], safe: [], ran: true))
        log(String(format: "vanilla: CA %.4f ASR %.4f", v.ca, v.asr))
    }
    let shareAlignment = methods.contains(.ours) && methods.contains(.alignOnly) && settings.rounds == 1
    var alignOnlyFromOurs: (ca: Double, asr: Double, seconds: Double)? = nil
    var rows: [ExperimentMethod: MethodOutcome] = [:]
    var order = methods  // with a shared alignment `ours` runs first of the two; the rows keep the asked order
    if shareAlignment, let a = order.firstIndex(of: .alignOnly), let o = order.firstIndex(of: .ours), a < o { order.swapAt(a, o) }
    for method in order {
        if method == .alignOnly, let r = rows[.ours], let a = alignOnlyFromOurs {  // ours' aligned model, evaluated
            let note = r.note.components(separatedBy: "; safe heads at ")[0]  // that rate is the fine-tuning's, which align-only has not
            rows[.alignOnly] = MethodOutcome(method: method.rawValue, ca: a.ca, asr: a.asr, seconds: a.seconds, note: note,
                                             suspicious: r.suspicious, safe: r.safe, ran: r.ran)
            log(String(format: "%@: CA %.4f ASR %.4f (ours' aligned model, %.1f s into ours) %@", method.rawValue, a.ca, a.asr, a.seconds, note))
            continue
        }
        start = monotonicSeconds()
        let model = backdoored.copy()
        let afterAlignment: (Int) -> Void = method == .ours && shareAlignment
            ? { _ in let e = evaluate(model); alignOnlyFromOurs = (e.ca, e.asr, monotonicSeconds() - start) } : { _ in }
        var note: String, suspicious: [HeadID] = [], safe: [HeadID] = [], ran = true
        do {
            switch try runMethod(model, method, clean: defenderClean, inputs: inputs, calibration: calibration, settings: settings, baseline: baseline,
                                 log: { log("  " + $0) }, afterAlignment: afterAlignment) {
            case .baseline(let summary, _):
                note = summary
            case .defense(let report) where method == .finetune && !report.rounds.isEmpty:
                note = "one rate (\(settings.uniformRate)) for every parameter, \(report.rounds[0].finetuneLoss.count) steps"
                    + (settings.finetuneBudget == nil ? "" : ", kept step \(report.rounds[0].finetuneKeptStep)")
            case .defense(let report):
                if let r = report.rounds.first {
                    suspicious = r.suspicious; safe = r.safe
                    let safeRates = report.rounds.compactMap(\.safeRate)  // what the self-check picked, per round
                    note = "\(report.flagged.count) flagged; \(r.suspicious.count) suspicious, \(r.safe.count) safe heads; \(report.rounds.count) round(s)"
                        + (settings.safeRateWhenRemoved != nil && method == .ours && !safeRates.isEmpty
                           ? "; safe heads at " + safeRates.map { "\($0)" }.joined(separator: ", ") : "")
                } else {
                    note = report.stoppedBecause
                    ran = false
                }
            }
        } catch HeadAlignError.usage(let why) {
            note = "did not run: " + why
            ran = false
            model.params.data.update(from: backdoored.params.data, count: model.layout.total)
        }
        let r = evaluate(model)
        rows[method] = MethodOutcome(method: method.rawValue, ca: r.ca, asr: r.asr, seconds: monotonicSeconds() - start, note: note,
                                     suspicious: suspicious, safe: safe, ran: ran)
        log(String(format: "%@: CA %.4f ASR %.4f (%.1f s) %@", method.rawValue, r.ca, r.asr, monotonicSeconds() - start, note))
    }
    return out + methods.map { rows[$0]! }
}

extension AnyModel {
    public func caAndASR(_ split: ExperimentSplit) -> (ca: Double, asr: Double) {
        switch self {
        case .f32(let m): return HeadAlignLab.caAndASR(m, split)
        case .f64(let m): return HeadAlignLab.caAndASR(m, split)
        }
    }

    public func detectionSummary(_ split: ExperimentSplit, settings: DefenseSettings) throws -> DetectionSummary {
        switch self {
        case .f32(let m): return try HeadAlignLab.detectionSummary(m, split, settings: settings)
        case .f64(let m): return try HeadAlignLab.detectionSummary(m, split, settings: settings)
        }
    }

    public func runMethods(_ split: ExperimentSplit, methods: [ExperimentMethod], settings: DefenseSettings,
                           baseline: BaselineSettings = BaselineSettings(), vanilla: Bool = true,
                           log: (String) -> Void = { _ in }) throws -> [MethodOutcome] {
        switch self {
        case .f32(let m): return try HeadAlignLab.runMethods(m, split, methods: methods, settings: settings, baseline: baseline, vanilla: vanilla, log: log)
        case .f64(let m): return try HeadAlignLab.runMethods(m, split, methods: methods, settings: settings, baseline: baseline, vanilla: vanilla, log: log)
        }
    }

    /// The trace of `ours`' head-wise fine-tuning (FinetuneTrace.swift) on the split's data.
    public func traceFinetune(_ split: ExperimentSplit, settings: DefenseSettings, every: Int) throws -> (points: [TracePoint], why: String?) {
        func run<S: Real>(_ m: Model<S>) throws -> (points: [TracePoint], why: String?) {
            try traceHeadwiseFinetune(m, clean: split.defenderClean, inputs: split.monitorClean + split.monitorTriggered, settings: settings,
                                      every: every, evaluate: { HeadAlignLab.caAndASR($0, split) })
        }
        switch self {
        case .f32(let m): return try run(m)
        case .f64(let m): return try run(m)
        }
    }

    /// Eq. 4–5 on the inputs the monitor flags among the split's traffic (all of them when it
    /// flags none): what the defense would see, for display.
    public func headReport(_ split: ExperimentSplit, settings: DefenseSettings) throws -> (report: SafetyReport, flagged: Int) {
        try headReport(clean: split.defenderClean, inputs: split.monitorClean + split.monitorTriggered, settings: settings)
    }

    /// Eq. 4–5 on the `inputs` the monitor (calibrated on `calibration`, else the prompts of
    /// `clean`, as `defend` does) flags; all of them when it flags none.
    public func headReport(clean: [TrainingExample], inputs: [AnalysisInput], calibration: [AnalysisInput]? = nil,
                           settings: DefenseSettings) throws -> (report: SafetyReport, flagged: Int) {
        func run<S: Real>(_ m: Model<S>) throws -> (SafetyReport, Int) {
            let prompts = calibration ?? clean.map { AnalysisInput(tokens: Array($0.tokens.prefix($0.responseStart ?? $0.tokens.count))) }
            // as `defend`'s first round: the monitor's flags, then Eq. 4–5 under the settings' maxsim and class rule
            let (cal, cleanAnalyses, cleanFocus) = try calibrateMonitor(m, clean: prompts, settings: settings)
            let screened = try HeadAlign.analyze(m, inputs, settings: settings.analysis(settings.monitorView, importance: false))
            let flaggedIndices = inputs.indices.filter { cal.flags(cal.score(of: monitorReading(screened[$0], score: settings.score))) }
            let flagged = flaggedIndices.map { inputs[$0] }
            var a = settings.analysis(settings.defenseView)
            a.importanceLabels = .predicted
            let analyses = try HeadAlign.analyze(m, flagged.isEmpty ? inputs : flagged, settings: a)
            var cosinesOnly = a
            cosinesOnly.importance = false
            let cleanCosines = settings.maxsim.needsClean ? try HeadAlign.analyze(m, prompts, settings: cosinesOnly).map(\.pairCosines) : []
            let c = m.config, nh = c.numAttentionHeads
            let override = maxsimOverride(settings.maxsim, analyses, cleanCosines: cleanCosines,
                                          pairs: headPairs(layers: c.numHiddenLayers, heads: nh, scope: settings.scope), headCount: c.numHiddenLayers * nh)
            let shift = try flaggedFocusShift(screened: screened, flagged: flaggedIndices, cleanFocus: cleanFocus, clean: cleanAnalyses,
                                              settings: settings, family: c.family)
            return (safetyReport(analyses, alpha: settings.alpha, tau: settings.tau, heads: nh, maxsimOverride: override,
                                 rule: settings.classRule, focusShift: shift), flagged.count)
        }
        switch self {
        case .f32(let m): return try run(m)
        case .f64(let m): return try run(m)
        }
    }
}

/// Per head (`l * NH + h`), the mean over inputs of the attention its read row (BERT: [CLS];
/// decoder: the last token) puts on positions holding one of `ids` (the trigger's tokens):
/// which heads lock onto the trigger.
public func readRowMass<S: Real>(_ model: Model<S>, inputs: [[Int]], ids: Set<Int>) -> [Double] {
    let c = model.config, nh = c.numAttentionHeads
    var sums = [Double](repeating: 0, count: c.numHiddenLayers * nh)
    for start in stride(from: 0, to: inputs.count, by: 64) {
        let batch = Batch(Array(inputs[start..<min(inputs.count, start + 64)]))
        let pass = model.forward(batch)
        for (b, seq) in batch.sequences.enumerated() {
            let t = seq.count, row = c.family == .bert ? 0 : t - 1
            let hits = (0..<t).filter { ids.contains(seq.tokens[$0]) }
            for l in 0..<c.numHiddenLayers {
                for h in 0..<nh {
                    let a = pass.attention(layer: l, sequence: b, head: h).data + row * t
                    sums[l * nh + h] += hits.reduce(0.0) { $0 + Double(a[$1]) }
                }
            }
        }
    }
    return sums.map { $0 / Double(max(1, inputs.count)) }
}

extension AnyModel {
    public func readRowMass(inputs: [[Int]], ids: Set<Int>) -> [Double] {
        switch self {
        case .f32(let m): return HeadAlignLab.readRowMass(m, inputs: inputs, ids: ids)
        case .f64(let m): return HeadAlignLab.readRowMass(m, inputs: inputs, ids: ids)
        }
    }
}

// MARK: - Tables

/// Mean and sample standard deviation (0 for one value).
public func meanAndStd(_ xs: [Double]) -> (mean: Double, std: Double) {
    let m = xs.reduce(0, +) / Double(max(1, xs.count))
    guard xs.count > 1 else { return (m, 0) }
    return (m, (xs.map { ($0 - m) * ($0 - m) }.reduce(0, +) / Double(xs.count - 1)).squareRoot())
}

/// The CA/ASR table over seeds (`runs[seed][method]`), as markdown, in percent.
public func methodTable(_ runs: [[MethodOutcome]]) -> String {
    guard let first = runs.first else { return "" }
    var s = "| method | CA (%) | ASR (%) | runs that ran | note (first seed) |\n|---|---|---|---|---|\n"
    for (i, m) in first.enumerated() {
        let ca = meanAndStd(runs.map { $0[i].ca * 100 }), asr = meanAndStd(runs.map { $0[i].asr * 100 })
        let pm = runs.count > 1
        s += "| \(m.method) | " + String(format: pm ? "%.1f ± %.1f" : "%.1f", ca.mean, ca.std) + " | "
            + String(format: pm ? "%.1f ± %.1f" : "%.1f", asr.mean, asr.std)
            + " | \(runs.filter { $0[i].ran }.count)/\(runs.count) | \(m.note.replacingOccurrences(of: "|", with: "/")) |\n"
    }
    return s
}

/// The detection table over seeds.
public func detectionTable(_ d: [DetectionSummary]) -> String {
    guard let first = d.first else { return "" }
    func cell(_ xs: [Double], _ f: String = "%.3f") -> String {
        let m = meanAndStd(xs)
        return d.count > 1 ? String(format: "\(f) ± \(f)", m.mean, m.std) : String(format: f, m.mean)
    }
    var s = "| statistic (\(first.view.rawValue) view) | clean | triggered |\n|---|---|---|\n"
    s += "| p99 of pair cosines (Table 1) | \(cell(d.map(\.p99Clean))) | \(cell(d.map(\.p99Triggered))) |\n"
    s += "| frac_above 0.99 | \(cell(d.map(\.fracAboveClean))) | \(cell(d.map(\.fracAboveTriggered))) |\n"
    s += "\n| monitor score | AUROC |\n|---|---|\n"
    for (i, a) in first.auroc.enumerated() {
        // the flagging score (`defaultScore`, the run's --score) is marked; "default" only when it is the default
        let mark = a.score != first.defaultScore ? "" : a.score == DefenseSettings.defaultScore ? " (default)" : " (flagging)"
        s += "| \(a.score.rawValue)\(mark) | \(cell(d.map { $0.auroc[i].value })) |\n"
    }
    s += "\nAt the calibrated threshold (\(first.defaultScore.rawValue)): TPR \(cell(d.map(\.tpr))), FPR \(cell(d.map(\.fpr))).\n"
    if let budget = first.budget { s += "Threshold: \(budget) (first seed).\n" }
    return s
}
