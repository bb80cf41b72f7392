// Defense.swift: the whole defense in rounds. The monitor picks the flagged inputs (no labels);
// then each round classifies the heads on them (Eq. 4–5), aligns the suspicious heads to the safe
// ones (Eq. 6–7) and fine-tunes head-wise on clean labelled data; the monitor, recalibrated on
// the clean inputs through the repaired model, re-scores the flagged inputs, and rounds repeat
// until none is flagged or the budget of rounds is spent.

/// Eq. 5's similarity term: the paper's maxsim, or measured against clean inputs (ours:
/// `contrastMaxsim`).
public enum MaxsimMode: String, CaseIterable, Sendable {
    case plain, contrast
    public var needsClean: Bool { self != .plain }
}

/// Which parts of the defense run (the ablations of Table 3 share one code path). The other
/// defenses the paper compares against are not here: they wrap this from outside.
public enum DefenseMethod: String, CaseIterable, Sendable {
    case ours  // align, then head-wise fine-tuning
    case alignOnly = "align-only"
    case ftOnly = "ft-only"  // head-wise fine-tuning without alignment
    case finetune  // one learning rate for everything (`uniformRate`)

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
    public var tau = 0.5  // the paper gives none; used by `.tau`, and by `.focus` and `.columnFocus` when no head moves
    /// How the heads are classed: the focus classes (ours, the default: `classifyFocus`), the
    /// paper's Eq. 5 with fixed `tau` (`--classes tau`), robust outliers of S (`--classes outliers`),
    /// or the column-focus classes (ours, opt-in: `classifyColumnFocus`, `--classes column-focus`).
    /// Why focus: on BadNets MiniLMs Eq. 5's maxsim is near 1 for most heads of layers 0–3 (their
    /// [CLS] rows all rest on [CLS]) and `tau` marked 15–35 heads, many there, and left heads that
    /// lock onto the trigger safe (docs/RESULTS.md §14); the focus shift marks the heads the trigger
    /// draws (all 9 on E, 8 of 8 on A and 10 of 11 on C, counted by the evaluator from the trigger
    /// word) and none of layers 0–3. Measured over five seeds (§15): `ours` E 14.9 → 8.3% ASR, A
    /// 20.5 → 15.6%, C 47.5 → 14.6%; `align-only` 29–82% → 16–19% at vanilla CA; on the unseen G
    /// 11.3% (§16). Where fewer than `focusMinHeads` heads' focus moves a quarter (the HiddenKiller
    /// MiniLMs, the stories260K teaching decoder) it is Eq. 5 with `tau`, bit for bit: on D one
    /// head moved, and aligning it alone left 64.0% where `tau` left 44.3% (§15). The outlier rule
    /// found 2–4 heads and left align-only ASR at 44–92% (§6).
    public var classRule: ClassRule = .focus
    public var maxsim: MaxsimMode = .plain
    public var score: MonitorScore = DefenseSettings.defaultScore
    /// The monitor's flagging score: SPEC's calibrated `contrast-absz`, the best we have on
    /// rare-word triggers (AUROC 0.98–1.00 on the BadNets MiniLMs). `focus` (ours) finds the
    /// syntactic trigger where it fails (0.89–0.95 against 0.58–0.82 on three HiddenKiller MiniLMs)
    /// but is opt-in: picked after seeing those models, and the defense on them did not improve
    /// with it (docs/RESULTS.md §17).
    public static let defaultScore: MonitorScore = .contrastAbsZ
    public var quantile = 0.99
    /// The flagging threshold: SPEC's q-quantile (the default, so recorded tables stand), or a
    /// false-positive budget with its conformal bound (ours, `--fpr-budget`; `FlagRule`).
    public var flagRule: FlagRule = .quantile
    public var importanceLabels: ImportanceLabels = .predicted
    public var generate = 8
    public var rounds = 1
    public var alignSteps = 50
    public var alignLearningRate = 1e-3
    public var finetuneSteps = 100  // without a budget (`finetuneBudget == nil`): the fixed step count
    public var batchSize = 16
    public var rates = HeadwiseRates()
    /// The `finetune` ablation's one rate for every parameter, and the baselines' fine-tuning
    /// rate: 5e-5, the usual BERT fine-tuning rate.
    public var uniformRate = 5e-5
    public var weightDecay = 0.01
    public var seed: UInt64 = 1
    /// Our extension (not the paper's): stop the head-wise fine-tuning when it brings back the
    /// behaviour the alignment removed on the flagged inputs (see `FinetuneGuard`). Off by
    /// default until measured across models (issue 15; docs/RESULTS.md).
    public var finetuneGuard: FinetuneGuard? = nil
    /// Our extension (issue 15's candidate, not the paper's): lambda in `L = CE + lambda * L_align`
    /// during the head-wise fine-tuning, Eq. 7 taken on a batch of the inputs the alignment
    /// trained on each step, so the fine-tuning pays for undoing the alignment. 0 = the paper's
    /// fine-tuning, the default: measured (docs/RESULTS.md §7, seed 1), lambda 0.1 and 1 raised
    /// ASR on MiniLM E from 11.4% to 17.7% and 39.5%, on B from 21.2% to 37.3% and 58.6%.
    public var alignPenalty = 0.0
    /// Steps of linear learning-rate warm-up in the head-wise fine-tuning (and the baselines' and
    /// ablations' fine-tuning, which share its budget). 0 = none, the paper's, the default for now.
    /// Measured (docs/RESULTS.md §16, five seeds, `ours`): 15 steps (one pass over 240 sentences)
    /// took the four BadNets MiniLMs to 8.6–13.0% ASR with every seed ≤ 21.8, and CA up 0.3–1.3
    /// points on E, C, G (A −0.1): without it the first steps at `eta_high` throw the model off
    /// (A, seed 1: CA 87.1 → 68.9 at step 10). Not the default: it failed the check written down
    /// before the models it was not chosen on ran (§16): HiddenKiller F 47.1 → 62.0%, B 42.7 → 47.7%.
    public var finetuneWarmup = 0
    /// Ours (issue 15; opt-in until checked): the safe heads' fine-tuning rate when the alignment has
    /// removed the backdoor on the flagged inputs, i.e. fewer than `removedBelow` (a third) of them still get
    /// the backdoored model's answer after it (the defender's label-free self-check). Then the
    /// fine-tuning's job is to restore clean accuracy without undoing the alignment, and `eta_high`'s
    /// large first steps throw the model off (docs/RESULTS.md §16: A, seed 1, CA 87.1 → 68.9 at step
    /// 10); when more still get it, the fine-tuning must do the removing and keeps the paper's
    /// `eta_high` (on the HiddenKiller MiniLMs a gentler start, the warm-up, left more: §16). Measured on
    /// BadNets A, C, G with 5e-5 for every run (§16): 12.7–14.4% ASR at −0.9 to +0.2 CA against
    /// 11.3–15.6% at −1.5 to −2.5. Not the default: it failed the check written before the models
    /// it was not chosen on ran (§18): no worse on E and the 3-layer encoder, the default's runs on
    /// B, D and the teaching decoder, but W's ASR +2.5 (the check allowed 2), its self-check at 45–47%
    /// on the two seeds the gentle rate lost. nil = `eta_high` always (the paper's).
    public var safeRateWhenRemoved: Double? = nil
    /// The share of flagged inputs still answered as before below which the alignment counts as
    /// having removed the backdoor: a third (more than two in three flagged inputs changed their answer).
    /// It was a half until §18's check: on W (word substitution) 45-47% still answered as before on
    /// two seeds, the half called that removed, and the gentle rate lost 6-7 points of ASR there
    /// (`align-only` leaves 40% on W: the fine-tuning still had removing to do). The rare-word models
    /// the gentle rate helps sit at 15-26% (E, the 3-layer encoder), W at 45-64%, HiddenKiller B, D
    /// and the teaching decoder at 86-100%. A third was chosen after seeing W, so it was checked on
    /// two MiniLMs trained afterwards (H, I: docs/RESULTS.md §20) and failed: inside the bounds,
    /// better on neither. On BadNets A, C, E, H it takes the gentle rate on every seed and meets
    /// issue 15's BadNets targets on A, C and E (§20).
    public static let removedBelow = 1.0 / 3
    /// `removedBelow` in words, for help and logs.
    public static let removedBelowText = "a third"
    /// Whether the alignment counts as having removed the backdoor, `d` the share of flagged inputs
    /// still answered as before: the one decision `safeRate` and the defense's log both read.
    public static func alignmentRemoved(_ d: Double) -> Bool { d < removedBelow }
    /// The safe heads' rate given `d`, the share of flagged inputs still answered as before after
    /// the alignment (nil: not measured): `safeRateWhenRemoved` when `d < removedBelow`, else `eta_high`.
    public func safeRate(afterAlignment d: Double?) -> Double {
        guard let gentle = safeRateWhenRemoved, let d, DefenseSettings.alignmentRemoved(d) else { return rates.safe }
        return gentle
    }
    /// How long fine-tuning runs and which step is kept (ours; see `FinetuneBudget` for the why
    /// and the measurement). nil = the fixed `finetuneSteps` on the whole clean set, the earlier
    /// default (`--ft-holdout 0`).
    public var finetuneBudget: FinetuneBudget? = FinetuneBudget()
    /// An explicit head split used by every round instead of Eq. 4–5's classes (every other head
    /// intermediate); nil = Eq. 5.
    public var explicitSplit: (suspicious: [HeadID], safe: [HeadID])? = nil

    public init(task: ModelTask, family: ModelFamily) {
        (monitorView, defenseView) = task.defaultViews(family)
    }

    /// The seed of the held-out split (the same split in every round).
    public var heldOutSeed: UInt64 { seed &+ 200 }
    /// The seed of round `r`'s fine-tuning batches.
    public func finetuneSeed(round r: Int) -> UInt64 { seed &+ UInt64(100 + r) }
    /// The seed of round `r`'s alignment-penalty batches (`alignPenalty`).
    public func penaltySeed(round r: Int) -> UInt64 { seed &+ UInt64(300 + r) }

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

/// The fine-tuning guard. The monitor's flagged inputs carry no labels, but the defender knows
/// what the backdoored model did on them (its prediction, or its first T_g greedy tokens). The
/// alignment changes that behaviour on a share `D` of them; fine-tuning that restores more than
/// `tolerance * D` of it is bringing the backdoor back, so every `every` steps the agreement with
/// the backdoored model's behaviour is measured and, past the bound, the parameters of the last
/// step within it are restored and fine-tuning stops. Measured on stories260K sentiment steering
/// (seed 1, BadNets): after alignment ASR 11%; 10 unguarded steps later 83%, 20 later 99%, while
/// Eq. 7's loss on the flagged inputs kept falling — the backdoor returns through the safe heads
/// and the parameters no head owns, not through the aligned attention.
public struct FinetuneGuard: Sendable {
    public var every = 5  // steps between checks
    public var tolerance = 0.5  // share of the alignment's change that may be undone
    public init() {}
}

public struct RoundLog: Sendable {
    public let round: Int
    public let suspicious: [HeadID], safe: [HeadID]
    public let intermediateCount: Int
    /// What made the classes: "focus", "column-focus", "tau", "outliers", "explicit", or "none" (uniform fine-tuning).
    public var classes = "none"
    /// The focus shift per head when it was measured (`focusShift`; the column-focus Z under `.columnFocus`).
    public var focusShift: [Double]? = nil
    public let alignLoss: [Double]  // per alignment step (before each update)
    public let finetuneLoss: [Double]  // per fine-tuning step (fewer when the guard or the budget stopped it)
    public let heldOutLoss: [(step: Int, loss: Double)]  // with a budget: the held-out checks
    public let finetuneKeptStep: Int  // the step whose parameters were kept (the last one without a budget)
    public let flaggedAfter: Int  // flagged inputs the monitor still flags after the round
    public let meanScoreAfter: Double
    /// Flagged inputs that still get the backdoored model's answer (a classifier's label, a
    /// decoder's first T_g greedy tokens) after the round; nil when nothing was flagged.
    public let flaggedAsBefore: Int?
    /// The safe heads' fine-tuning rate used (`DefenseSettings.safeRate`); nil when nothing fine-tuned head-wise.
    public var safeRate: Double? = nil
}

public struct DefenseReport: Sendable {
    public let threshold: Double
    public let thresholdRule: String  // how the threshold was set (MonitorCalibration.ruleDescription)
    public let flagged: [Int]  // indices into the inputs
    public let scoresBefore: [Double]
    public let rounds: [RoundLog]
    public let stoppedBecause: String
}

/// Monitor calibration in the monitor view on clean inputs; also each clean input's analysis and
/// each head's focus there (`focus`, for the focus classes).
@_specialize(exported: true, where S == Float)
@_specialize(exported: true, where S == Double)
public func calibrateMonitor<S: Real>(_ model: Model<S>, clean: [AnalysisInput], settings: DefenseSettings) throws
    -> (calibration: MonitorCalibration, analyses: [InputAnalysis], focus: [[Double]]) {
    let analyses = try analyze(model, clean, settings: settings.analysis(settings.monitorView, importance: false))
    let readings = analyses.map { monitorReading($0, score: settings.score) }
    let focused = analyses.map { focus($0, view: settings.monitorView, family: model.config.family) }
    return (try MonitorCalibration(clean: readings, score: settings.score, q: settings.quantile, rule: settings.flagRule), analyses, focused)
}

/// What the focus classes read of the flagged inputs (indices into `screened`, the monitor-view
/// analyses of the screened inputs): for `.focus` the focus shift against the clean inputs' focus
/// (`cleanFocus`), for `.columnFocus` each head's mean column-focus z against the clean inputs
/// (`clean`, their analyses; calibrated as the `focus` monitor score is); nil for the other rules
/// or when nothing was flagged.
public func flaggedFocusShift(screened: [InputAnalysis], flagged: [Int], cleanFocus: [[Double]], clean: [InputAnalysis],
                              settings: DefenseSettings, family: ModelFamily) throws -> [Double]? {
    guard !flagged.isEmpty else { return nil }
    switch settings.classRule {
    case .focus:
        return focusShift(flagged: flagged.map { focus(screened[$0], view: settings.monitorView, family: family) }, clean: cleanFocus)
    case .columnFocus:
        let cal = try MonitorCalibration(clean: clean.map { monitorReading($0, score: .focus) }, score: .focus)
        return columnFocusShift(flaggedZ: flagged.map { cal.headZ(of: monitorReading(screened[$0], score: .focus)) })
    case .tau, .outliers:
        return nil
    }
}

/// Runs the defense on `model` in place. `clean` are labelled clean examples (fine-tuning, and
/// the monitor's calibration), `inputs` the unlabeled inputs the monitor screens. `calibration`,
/// when given, replaces the clean examples' prompts wherever the clean inputs are analysed: a
/// decoder's clean examples are cut to the training length (the prompt from the left), and the
/// monitor must calibrate on prompts in the form it screens them.
@_specialize(exported: true, where S == Float)
@_specialize(exported: true, where S == Double)
public func defend<S: Real>(_ model: Model<S>, clean: [TrainingExample], inputs: [AnalysisInput], calibration: [AnalysisInput]? = nil,
                            settings: DefenseSettings, log: (String) -> Void = { _ in },
                            afterAlignment: (_ round: Int) -> Void = { _ in }) throws -> DefenseReport {
    let c = model.config, nh = c.numAttentionHeads
    let cleanInputs = calibration
        ?? clean.map { AnalysisInput(tokens: Array($0.tokens.prefix($0.responseStart ?? $0.tokens.count)), label: $0.label) }
    let (cal, cleanAnalyses, cleanFocus) = try calibrateMonitor(model, clean: cleanInputs, settings: settings)
    let monitorSettings = settings.analysis(settings.monitorView, importance: false)
    let screened = try analyze(model, inputs, settings: monitorSettings)
    let scores = screened.map { cal.score(of: monitorReading($0, score: settings.score)) }
    let flagged = inputs.indices.filter { cal.flags(scores[$0]) }
    // the focus classes' reading of the flagged inputs: the focus shift, or under `.columnFocus` the column-focus Z
    let shift = try flaggedFocusShift(screened: screened, flagged: flagged, cleanFocus: cleanFocus, clean: cleanAnalyses,
                                      settings: settings, family: c.family)
    log("monitor (\(settings.score.rawValue), \(settings.monitorView.rawValue) view): threshold \(fmt(cal.flagThreshold)); flagged \(flagged.count) of \(inputs.count) inputs")
    guard !flagged.isEmpty || !settings.method.aligns else {
        return DefenseReport(threshold: cal.flagThreshold, thresholdRule: cal.ruleDescription, flagged: [], scoresBefore: scores, rounds: [],
                             stoppedBecause: "the monitor flagged no input; the model is unchanged")
    }
    let analysisInputs = flagged.isEmpty ? cleanInputs : flagged.map { inputs[$0] }
    var defenseSettings = settings.analysis(settings.defenseView)
    // flagged inputs carry no labels: gold labels exist only when the clean inputs are analysed
    if !flagged.isEmpty { defenseSettings.importanceLabels = .predicted }
    var cleanCosines: [[Double]] = []  // the clean inputs' pair cosines in the defense view, for a maxsim against them
    if settings.maxsim.needsClean {
        var cosinesOnly = defenseSettings
        cosinesOnly.importance = false
        cleanCosines = try analyze(model, cleanInputs, settings: cosinesOnly).map(\.pairCosines)
    }
    let pairs = headPairs(layers: c.numHiddenLayers, heads: nh, scope: settings.scope)
    // the backdoored model's behaviour on the flagged inputs: for the fine-tuning guard, the
    // fewest-flagged-within-se rule and each round's self-check (how many still get that answer)
    let flaggedInputs = flagged.map { inputs[$0] }
    let behaviourBefore = flagged.isEmpty ? nil : behaviour(model, flaggedInputs, generate: settings.generate)
    func flaggedAsBefore(_ before: [[Int]]) -> Int { behavioursKept(model, flaggedInputs, before: before, generate: settings.generate) }
    func flaggedAgreement(_ before: [[Int]]) -> Double { Double(flaggedAsBefore(before)) / Double(max(1, before.count)) }
    var rounds: [RoundLog] = []
    var stopped = "the budget of \(settings.rounds) round(s) was spent"
    for r in 1...settings.rounds {
        // Eq. 4–5 on the flagged inputs (uniform fine-tuning needs no head classes), or the explicit split
        var classes: [HeadClass]? = nil, analyses: [InputAnalysis] = []
        var classesMadeBy = "none", shiftMeasured: [Double]? = nil
        if settings.method.aligns || settings.method.headwise {
            if let split = settings.explicitSplit {
                var tokensOnly = defenseSettings
                tokensOnly.importance = false  // the split replaces Eq. 4–5; the analysis only gives the sequences
                analyses = settings.method.aligns ? try analyze(model, analysisInputs, settings: tokensOnly) : []
                var c = [HeadClass](repeating: .intermediate, count: model.config.numHiddenLayers * nh)
                for id in split.suspicious { c[id.layer * nh + id.head] = .suspicious }
                for id in split.safe { c[id.layer * nh + id.head] = .safe }
                classes = c
                classesMadeBy = "explicit"
                if split.suspicious.isEmpty || split.safe.isEmpty {
                    throw HeadAlignError.usage("round \(r): the explicit split has an empty set; the defense does not run on an empty set")
                }
            } else {
                analyses = try analyze(model, analysisInputs, settings: defenseSettings)
                let override = maxsimOverride(settings.maxsim, analyses, cleanCosines: cleanCosines, pairs: pairs, headCount: c.numHiddenLayers * nh)
                let report = safetyReport(analyses, alpha: settings.alpha, tau: settings.tau, heads: nh, maxsimOverride: override,
                                          rule: settings.classRule, focusShift: r == 1 ? shift : nil)
                if settings.classRule == .focus {
                    log(report.rule == .focus
                        ? "round \(r): focus classes (suspicious: the flagged inputs moved >= \(focusSuspiciousShift) of the head's attention onto one ordinary token; safe: < \(focusSafeShift))"
                        : "round \(r): " + (r == 1 ? focusFallbackReason + " (the trigger is not one token several heads read)" : "focus measured in round 1 only") + "; Eq. 5 with tau \(settings.tau)")
                } else if settings.classRule == .columnFocus {
                    if r == 1, let z = shift { log("round 1: column-focus Z of the flagged inputs, highest: " + topHeads(z, heads: nh, count: 16)) }
                    log(report.rule == .columnFocus
                        ? "round \(r): column-focus classes (suspicious: the flagged inputs raised the head's column focus >= \(columnFocusSuspiciousZ) clean sd on average; safe: < \(columnFocusSafeZ))"
                        : "round \(r): " + (r == 1 ? columnFocusFallbackReason : "column focus measured in round 1 only") + "; Eq. 5 with tau \(settings.tau)")
                }
                if let empty = report.emptyClassReport {
                    throw HeadAlignError.usage("round \(r): \(empty); the defense does not run on an empty set (try another \(settings.classRule.z == nil ? "--tau" : "--outlier-z") or --alpha)")
                }
                classes = report.classes
                classesMadeBy = report.rule.name
                shiftMeasured = report.focusShift
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
            afterAlignment(r)  // the caller may read the aligned model (align-only's, when rounds = 1)
        }
        // head-wise (or uniform) fine-tuning on clean labelled data
        var ftLosses: [Double] = [], heldOutLosses: [(step: Int, loss: Double)] = [], keptStep = 0
        var headRates = settings.rates
        if settings.method.finetunes && settings.method.headwise && settings.method.aligns && settings.safeRateWhenRemoved != nil,
           let before = behaviourBefore {
            // the self-check after the alignment picks the safe heads' rate (`safeRateWhenRemoved`);
            // each round checks against the backdoored model's own answers
            let kept = flaggedAsBefore(before), share = Double(kept) / Double(max(1, before.count))
            headRates.safe = settings.safeRate(afterAlignment: share)
            log("  after the alignment \(kept) of \(before.count) flagged inputs still get the backdoored model's answer: safe heads fine-tune at \(headRates.safe)"
                + (DefenseSettings.alignmentRemoved(share)
                   ? " (fewer than \(DefenseSettings.removedBelowText): the alignment removed it, keep it)"
                   : " (eta_high: the fine-tuning has to remove it)"))
        }
        if settings.method.finetunes {
            let rates = settings.method.headwise
                ? headwiseLearningRates(layout: model.layout, config: c, classes: classes!, rates: headRates)
                : [Double](repeating: settings.uniformRate, count: model.layout.total)
            let optimizer = headwiseOptimizer(model, rates: rates, weightDecay: settings.weightDecay, warmup: settings.finetuneWarmup)
            var stop: ((StepStats) -> Bool)? = nil, guardNotes: [String] = [], guardKept: Int? = nil
            if let guardSettings = settings.finetuneGuard, settings.method.aligns, let before = behaviourBefore {
                let check = fineTuningGuard(model, flagged: flagged.map { inputs[$0] }, before: before, settings: guardSettings,
                                            generate: settings.generate, note: { guardNotes.append($0) })
                stop = { stats in  // when it stops, the guard restores its previous check's parameters
                    let stops = check(stats)
                    if stops { guardKept = stats.step - guardSettings.every }
                    return stops
                }
            }
            // the alignment penalty (our extension): Eq. 7 on a batch of the aligned inputs, weighted, each step
            let penalty = settings.method.aligns
                ? alignmentPenalty(model, sequences: analyses.map { (tokens: $0.tokens, promptLength: $0.promptLength) },
                                   suspicious: suspicious, safe: safe, settings: settings, round: r)
                : nil
            if let budget = settings.finetuneBudget {
                let (train, heldOut) = heldOutSplit(clean, holdout: budget.holdout, seed: settings.heldOutSeed)
                let outcome = try finetuneWithHeldOut(model, train: train, heldOut: heldOut, budget: budget, batchSize: settings.batchSize,
                                                      seed: settings.finetuneSeed(round: r), optimizer: optimizer, extraObjective: penalty,
                                                      guardStop: stop, guardEvery: settings.finetuneGuard?.every ?? 1,
                                                      flaggedAgreement: behaviourBefore.map { before in { flaggedAgreement(before) } })
                (ftLosses, heldOutLosses, keptStep) = (outcome.losses, outcome.heldOut, outcome.chosenStep)
                guardNotes.forEach(log)
                log("  fine-tuning on \(train.count) examples, \(heldOut.count) held out: loss \(fmt(ftLosses.first ?? 0)) -> \(fmt(ftLosses.last ?? 0)) over \(ftLosses.count) steps; "
                    + "held-out loss " + heldOutLosses.map { "\($0.step): " + String(format: "%.4f", $0.loss) }.joined(separator: ", ")
                    + "; kept step \(keptStep)")
            } else {
                ftLosses = try trainSteps(model, examples: clean, steps: settings.finetuneSteps, batchSize: settings.batchSize,
                                          seed: settings.finetuneSeed(round: r), optimizer: optimizer, extraObjective: penalty, stopAfter: stop)
                keptStep = guardKept ?? ftLosses.count
                guardNotes.forEach(log)
                log("  fine-tuning: loss \(fmt(ftLosses.first ?? 0)) -> \(fmt(ftLosses.last ?? 0)) over \(ftLosses.count) steps")
            }
        }
        // the monitor, recalibrated on the clean inputs through the repaired model (the repair moves
        // the clean similarity structure too), re-scores the flagged inputs
        let (calNow, _, _) = try calibrateMonitor(model, clean: cleanInputs, settings: settings)
        let after = flagged.isEmpty ? [] : try analyze(model, flagged.map { inputs[$0] }, settings: monitorSettings).map { calNow.score(of: monitorReading($0, score: settings.score)) }
        let still = after.filter(calNow.flags).count
        let mean = after.isEmpty ? 0 : after.reduce(0, +) / Double(after.count)
        // the self-check the defender can make without labels: a backdoor still in place shows as
        // the backdoored model's answers on the (mostly triggered) flagged inputs
        let asBefore = behaviourBefore.map(flaggedAsBefore)
        log("  monitor: \(still) of \(flagged.count) flagged inputs still above the recalibrated threshold \(fmt(calNow.flagThreshold)) (mean score \(fmt(mean)))"
            + (asBefore.map { "; \($0) of \(flagged.count) still get the backdoored model's answer" } ?? ""))
        var roundLog = RoundLog(round: r, suspicious: suspicious, safe: safe, intermediateCount: intermediate,
                                alignLoss: alignLosses, finetuneLoss: ftLosses, heldOutLoss: heldOutLosses,
                                finetuneKeptStep: keptStep, flaggedAfter: still, meanScoreAfter: mean, flaggedAsBefore: asBefore)
        (roundLog.classes, roundLog.focusShift) = (classesMadeBy, shiftMeasured)
        if settings.method.finetunes && settings.method.headwise { roundLog.safeRate = headRates.safe }
        rounds.append(roundLog)
        if still == 0 {
            stopped = "no flagged input is above the clean threshold after round \(r)"
            break
        }
    }
    return DefenseReport(threshold: cal.flagThreshold, thresholdRule: cal.ruleDescription, flagged: flagged, scoresBefore: scores,
                         rounds: rounds, stoppedBecause: stopped)
}

/// The alignment penalty's term for `trainSteps` (`DefenseSettings.alignPenalty`; nil when it is
/// 0 or there is nothing to align): each call draws a seeded batch of the aligned sequences and
/// adds `lambda *` Eq. 7's gradient on it into the step's gradients, returning `lambda *` the loss.
@_specialize(exported: true, where S == Float)
@_specialize(exported: true, where S == Double)
package func alignmentPenalty<S: Real>(_ model: Model<S>, sequences: [(tokens: [Int], promptLength: Int)], suspicious: [HeadID],
                                       safe: [HeadID], settings: DefenseSettings, round r: Int) -> ((Tensor<S>) -> Double)? {
    guard settings.alignPenalty > 0, !sequences.isEmpty, !suspicious.isEmpty, !safe.isEmpty else { return nil }
    var rng = SeededGenerator(seed: settings.penaltySeed(round: r))
    let (lambda, view, batch) = (settings.alignPenalty, settings.defenseView, min(settings.batchSize, sequences.count))
    return { grads in
        let picked = (0..<batch).map { _ in sequences[rng.int(below: sequences.count)] }
        return alignmentGradient(model, sequences: picked, view: view, suspicious: suspicious, safe: safe, weight: lambda, into: grads)
    }
}

package func fmt(_ x: Double) -> String { String(format: "%.6g", x) }

// MARK: - The fine-tuning guard (our extension)

/// What a model does on `inputs`, as the guard compares it: a classifier's predicted label, a
/// decoder's first `generate` greedy tokens.
package func behaviour<S: Real>(_ model: Model<S>, _ inputs: [AnalysisInput], generate: Int) -> [[Int]] {
    if model.config.numLabels > 0 {
        return stride(from: 0, to: inputs.count, by: 64).flatMap { start in
            rowArgmax(model.forward(Batch(inputs[start..<min(inputs.count, start + 64)].map(\.tokens))).output).map { [$0] }
        }
    }
    return inputs.map { generateGreedy(model, prompt: $0.tokens, maxNew: generate) }
}

/// How many of `inputs` get from `model` the behaviour `before` records (`behaviour` of the
/// backdoored model on the same inputs): the self-check, the guard and the trace count this.
package func behavioursKept<S: Real>(_ model: Model<S>, _ inputs: [AnalysisInput], before: [[Int]], generate: Int) -> Int {
    zip(behaviour(model, inputs, generate: generate), before).filter { $0 == $1 }.count
}

/// The guard's stopping rule for one fine-tuning run (`FinetuneGuard`): returns the closure
/// `trainSteps` calls after each step; it restores the last parameters within the bound when it
/// stops.
func fineTuningGuard<S: Real>(_ model: Model<S>, flagged: [AnalysisInput], before: [[Int]], settings: FinetuneGuard,
                              generate: Int, note: @escaping (String) -> Void) -> (StepStats) -> Bool {
    func agreement() -> Double { Double(behavioursKept(model, flagged, before: before, generate: generate)) / Double(max(1, before.count)) }
    let aligned = agreement(), changed = 1 - aligned  // D: the share the alignment changed
    let bound = aligned + settings.tolerance * changed
    var lastGood = model.params.copy()
    note("  guard: the alignment changed the behaviour on \(String(format: "%.3f", changed)) of the flagged inputs; fine-tuning stops above agreement \(String(format: "%.3f", bound))")
    return { stats in
        guard stats.step % settings.every == 0 else { return false }
        let a = agreement()
        if a <= bound {
            lastGood = model.params.copy()
            return false
        }
        model.params.data.update(from: lastGood.data, count: model.layout.total)
        note("  guard: step \(stats.step): agreement with the backdoored model \(String(format: "%.3f", a)) > \(String(format: "%.3f", bound)); restored step \(stats.step - settings.every) and stopped")
        return true
    }
}
