// Defense.swift: the whole defense in rounds. The monitor picks the flagged inputs (no labels);
// then each round classifies the heads on them (Eq. 4–5), aligns the suspicious heads to the safe
// ones (Eq. 6–7) and fine-tunes head-wise on clean labelled data; the monitor, recalibrated on
// the clean inputs through the repaired model, re-scores the flagged inputs, and rounds repeat
// until none is flagged or the budget of rounds is spent.

public enum MaxsimMode: String, CaseIterable, Sendable { case plain, contrast }

/// Which parts of the defense run (the ablations of Table 3 share one code path). The paper's
/// baselines (fine-pruning, PURE, re-initialisation) are the lab's: they wrap this from outside.
public enum DefenseMethod: String, CaseIterable, Sendable {
    case ours  // align, then head-wise fine-tuning
    case alignOnly = "align-only"
    case ftOnly = "ft-only"  // head-wise fine-tuning without alignment
    case finetune  // one learning rate for everything (rates.other)

    public var aligns: Bool { self == .ours || self == .alignOnly }
    public var finetunes: Bool { self != .alignOnly }
    public var headwise: Bool { self == .ours || self == .ftOnly }
}

public struct DefenseSettings: Sendable {
    public var method: DefenseMethod = .ours
    public var defenseView: AnalysisView
    public var monitorView: AnalysisView
    public var scope: PairScope = .model
    public var alpha = 0.5
    public var tau = 0.5
    public var maxsim: MaxsimMode = .plain
    public var score: MonitorScore = .contrastAbsZ
    public var quantile = 0.99
    public var importanceLabels: ImportanceLabels = .predicted
    public var generate = 8
    public var rounds = 1
    public var alignSteps = 50
    public var alignLearningRate = 1e-3
    public var finetuneSteps = 100
    public var batchSize = 16
    public var rates = HeadwiseRates()
    public var weightDecay = 0.01
    public var seed: UInt64 = 1
    /// An explicit head split used by every round instead of Eq. 4–5's classes (every other head
    /// intermediate); nil = Eq. 5.
    public var explicitSplit: (suspicious: [HeadID], safe: [HeadID])? = nil

    public init(task: ModelTask, family: ModelFamily) {
        (monitorView, defenseView) = task.defaultViews(family)
    }

    public func analysis(_ view: AnalysisView, importance: Bool = true) -> AnalysisSettings {
        var a = AnalysisSettings(view: view)
        a.importance = importance
        a.scope = scope
        a.importanceLabels = importanceLabels
        a.generate = generate
        a.batchSize = batchSize
        return a
    }
}

public struct RoundLog: Sendable {
    public let round: Int
    public let suspicious: [HeadID], safe: [HeadID]
    public let intermediateCount: Int
    public let alignLoss: [Double]  // per alignment step (before each update)
    public let finetuneLoss: [Double]  // per fine-tuning step
    public let flaggedAfter: Int  // flagged inputs the monitor still flags after the round
    public let meanScoreAfter: Double
}

public struct DefenseReport: Sendable {
    public let threshold: Double
    public let flagged: [Int]  // indices into the inputs
    public let scoresBefore: [Double]
    public let rounds: [RoundLog]
    public let stoppedBecause: String
}

/// Monitor calibration in the monitor view on clean inputs.
@_specialize(exported: true, where S == Float)
@_specialize(exported: true, where S == Double)
public func calibrateMonitor<S: Real>(_ model: Model<S>, clean: [AnalysisInput], settings: DefenseSettings) throws -> (MonitorCalibration, [[Double]]) {
    let cos = try analyze(model, clean, settings: settings.analysis(settings.monitorView, importance: false)).map(\.pairCosines)
    return (try MonitorCalibration(clean: cos, score: settings.score, q: settings.quantile), cos)
}

/// Runs the defense on `model` in place. `clean` are labelled clean examples (calibration and
/// fine-tuning), `inputs` the unlabeled inputs the monitor screens.
@_specialize(exported: true, where S == Float)
@_specialize(exported: true, where S == Double)
public func defend<S: Real>(_ model: Model<S>, clean: [TrainingExample], inputs: [AnalysisInput], settings: DefenseSettings,
                            log: (String) -> Void = { _ in }) throws -> DefenseReport {
    let c = model.config, nh = c.numAttentionHeads
    let cleanInputs = clean.map { AnalysisInput(tokens: Array($0.tokens.prefix($0.responseStart ?? $0.tokens.count)), label: $0.label) }
    let (cal, _) = try calibrateMonitor(model, clean: cleanInputs, settings: settings)
    let monitorSettings = settings.analysis(settings.monitorView, importance: false)
    let scores = try analyze(model, inputs, settings: monitorSettings).map { cal.score(of: $0.pairCosines) }
    let flagged = inputs.indices.filter { cal.flags(scores[$0]) }
    log("monitor (\(settings.score.rawValue), \(settings.monitorView.rawValue) view): threshold \(fmt(cal.flagThreshold)); flagged \(flagged.count) of \(inputs.count) inputs")
    guard !flagged.isEmpty || !settings.method.aligns else {
        return DefenseReport(threshold: cal.flagThreshold, flagged: [], scoresBefore: scores, rounds: [],
                             stoppedBecause: "the monitor flagged no input; the model is unchanged")
    }
    let analysisInputs = flagged.isEmpty ? cleanInputs : flagged.map { inputs[$0] }
    var defenseSettings = settings.analysis(settings.defenseView)
    // flagged inputs carry no labels: gold labels exist only when the clean inputs are analysed
    if !flagged.isEmpty { defenseSettings.importanceLabels = .predicted }
    var cleanPairMeans: [Double]? = nil
    if settings.maxsim == .contrast {
        var cosinesOnly = defenseSettings
        cosinesOnly.importance = false
        let cos = try analyze(model, cleanInputs, settings: cosinesOnly).map(\.pairCosines)
        cleanPairMeans = cos[0].indices.map { k in cos.map { $0[k] }.reduce(0, +) / Double(cos.count) }
    }
    let pairs = headPairs(layers: c.numHiddenLayers, heads: nh, scope: settings.scope)
    var rounds: [RoundLog] = []
    var stopped = "the budget of \(settings.rounds) round(s) was spent"
    for r in 1...settings.rounds {
        // Eq. 4–5 on the flagged inputs (uniform fine-tuning needs no head classes), or the explicit split
        var classes: [HeadClass]? = nil, analyses: [InputAnalysis] = []
        if settings.method.aligns || settings.method.headwise {
            if let split = settings.explicitSplit {
                var tokensOnly = defenseSettings
                tokensOnly.importance = false  // the split replaces Eq. 4–5; the analysis only gives the sequences
                analyses = settings.method.aligns ? try analyze(model, analysisInputs, settings: tokensOnly) : []
                var c = [HeadClass](repeating: .intermediate, count: model.config.numHiddenLayers * nh)
                for id in split.suspicious { c[id.layer * nh + id.head] = .suspicious }
                for id in split.safe { c[id.layer * nh + id.head] = .safe }
                classes = c
                if split.suspicious.isEmpty || split.safe.isEmpty {
                    throw HeadAlignError.usage("round \(r): the explicit split has an empty set; the defense does not run on an empty set")
                }
            } else {
                analyses = try analyze(model, analysisInputs, settings: defenseSettings)
                let override = cleanPairMeans.map { contrastMaxsim(analyses, cleanPairMeans: $0, pairs: pairs, headCount: c.numHiddenLayers * nh) }
                let report = safetyReport(analyses, alpha: settings.alpha, tau: settings.tau, heads: nh, maxsimOverride: override)
                if let empty = report.emptyClassReport {
                    throw HeadAlignError.usage("round \(r): \(empty); the defense does not run on an empty set (try another --tau or --alpha)")
                }
                classes = report.classes
            }
        }
        func ids(_ k: HeadClass) -> [HeadID] { (classes ?? []).indices.filter { classes![$0] == k }.map { HeadID($0 / nh, $0 % nh) } }
        let suspicious = ids(.suspicious), safe = ids(.safe), intermediate = ids(.intermediate).count
        if classes != nil {
            log("round \(r): \(suspicious.count) suspicious, \(safe.count) safe, \(intermediate) intermediate heads"
                + (settings.explicitSplit != nil ? " (explicit split)" : "")
                + " (suspicious: \(suspicious.map(\.description).joined(separator: " ")); safe: \(safe.map(\.description).joined(separator: " ")))")
        } else {
            log("round \(r): one learning rate for every parameter; heads not classified")
        }
        // Eq. 6–7: only the suspicious heads' query/key slices move
        var alignLosses: [Double] = []
        if settings.method.aligns {
            let optimizer = AdamW<S>(count: model.layout.total, learningRate: settings.alignLearningRate, weightDecay: 0)
            optimizer.frozen = alignmentTrainableMask(layout: model.layout, config: c, suspicious: suspicious).map { !$0 }
            let sequences = analyses.map { (tokens: $0.tokens, promptLength: $0.promptLength) }
            var rng = SeededGenerator(seed: settings.seed &+ UInt64(r))
            for step in 0..<settings.alignSteps {
                let picked = (0..<min(settings.batchSize, sequences.count)).map { _ in sequences[rng.int(below: sequences.count)] }
                let l = alignmentStep(model, sequences: picked, view: settings.defenseView, suspicious: suspicious, safe: safe,
                                      optimizer: optimizer)
                guard l.isFinite else { throw HeadAlignError.numeric("alignment loss is \(l) at round \(r) step \(step + 1); stopped") }
                alignLosses.append(l)
            }
            log("  alignment: loss \(fmt(alignLosses.first ?? 0)) -> \(fmt(alignLosses.last ?? 0)) over \(settings.alignSteps) steps")
            if !alignLosses.isEmpty {  // steps 1, 10, 20, ... and the last
                let marks = Set([0, alignLosses.count - 1]).union(stride(from: 9, to: alignLosses.count, by: 10)).sorted()
                log("  alignment loss by step: " + marks.map { "\($0 + 1): " + String(format: "%.4f", alignLosses[$0]) }.joined(separator: ", "))
            }
        }
        // head-wise (or uniform) fine-tuning on clean labelled data
        var ftLosses: [Double] = []
        if settings.method.finetunes {
            let rates = settings.method.headwise
                ? headwiseLearningRates(layout: model.layout, config: c, classes: classes!, rates: settings.rates)
                : [Double](repeating: settings.rates.other, count: model.layout.total)
            let optimizer = headwiseOptimizer(model, rates: rates, weightDecay: settings.weightDecay)
            ftLosses = try trainSteps(model, examples: clean, steps: settings.finetuneSteps, batchSize: settings.batchSize,
                                      seed: settings.seed &+ UInt64(100 + r), optimizer: optimizer)
            log("  fine-tuning: loss \(fmt(ftLosses.first ?? 0)) -> \(fmt(ftLosses.last ?? 0)) over \(settings.finetuneSteps) steps")
        }
        // the monitor, recalibrated on the clean inputs through the repaired model (the repair moves
        // the clean similarity structure too), re-scores the flagged inputs
        let (calNow, _) = try calibrateMonitor(model, clean: cleanInputs, settings: settings)
        let after = flagged.isEmpty ? [] : try analyze(model, flagged.map { inputs[$0] }, settings: monitorSettings).map { calNow.score(of: $0.pairCosines) }
        let still = after.filter(calNow.flags).count
        let mean = after.isEmpty ? 0 : after.reduce(0, +) / Double(after.count)
        log("  monitor: \(still) of \(flagged.count) flagged inputs still above the recalibrated threshold \(fmt(calNow.flagThreshold)) (mean score \(fmt(mean)))")
        rounds.append(RoundLog(round: r, suspicious: suspicious, safe: safe, intermediateCount: intermediate,
                               alignLoss: alignLosses, finetuneLoss: ftLosses, flaggedAfter: still, meanScoreAfter: mean))
        if still == 0 {
            stopped = "no flagged input is above the clean threshold after round \(r)"
            break
        }
    }
    return DefenseReport(threshold: cal.flagThreshold, flagged: flagged, scoresBefore: scores, rounds: rounds, stoppedBecause: stopped)
}

package func fmt(_ x: Double) -> String { String(format: "%.6g", x) }
