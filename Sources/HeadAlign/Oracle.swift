// Oracle.swift: `headalign inspect`'s dump, every intermediate quantity of Eq. 1–7 as JSON with
// 17 significant digits, so another implementation can diff against it. One document per input
// (computed with that input alone as the analysis set) and an `aggregate` block over all inputs.

import Foundation

/// A JSON writer for the dump: numbers with 17 significant digits (Double round-trips), non-finite
/// numbers as null, keys in the order given.
public indirect enum JSONOut {
    case number(Double), int(Int), string(String), bool(Bool), null
    case array([JSONOut]), object([(String, JSONOut)])

    public static func numbers(_ xs: [Double]) -> JSONOut { .array(xs.map { .number($0) }) }

    public func write(into s: inout String, indent: String = "", pretty: Bool = true) {
        switch self {
        case .number(let x): s += x.isFinite ? String(format: "%.17g", x) : "null"
        case .int(let i): s += String(i)
        case .string(let t): s += jsonQuoted(t)
        case .bool(let b): s += b ? "true" : "false"
        case .null: s += "null"
        case .array(let items):
            // arrays of scalars on one line; nested structures one item per line
            let scalar = items.allSatisfy { if case .array = $0 { return false }; if case .object = $0 { return false }; return true }
            if scalar || !pretty {
                s += "["
                for (k, v) in items.enumerated() { if k > 0 { s += ", " }; v.write(into: &s, indent: indent, pretty: false) }
                s += "]"
            } else {
                s += "[\n"
                for (k, v) in items.enumerated() {
                    s += indent + "  "
                    v.write(into: &s, indent: indent + "  ", pretty: pretty)
                    s += k + 1 < items.count ? ",\n" : "\n"
                }
                s += indent + "]"
            }
        case .object(let members):
            s += "{\n"
            for (k, (key, v)) in members.enumerated() {
                s += indent + "  " + jsonQuoted(key) + ": "
                v.write(into: &s, indent: indent + "  ", pretty: pretty)
                s += k + 1 < members.count ? ",\n" : "\n"
            }
            s += indent + "}"
        }
    }

    public var text: String { var s = ""; write(into: &s); return s + "\n" }
}

/// The schema every dump declares at top level (`"schema"`); conformance/headalign-oracle-1.schema.json
/// describes it and docs/ORACLE.md documents each field. A new major version changes a field's meaning.
public let oracleSchema = "headalign-oracle/1"

public struct InspectSettings: Sendable {
    public var analysis: AnalysisSettings
    public var alpha = 0.5
    public var tau = 0.5
    public var dumpAttention = false
    public var suspicious: [HeadID]? = nil  // explicit split for align_loss
    public var safe: [HeadID]? = nil
    /// Eq. 6–7's full-backprop gradient at each suspicious head's W_q / W_k rows and bias entries.
    public var dumpAlignmentGradient = false
    /// H = A V per head and dL/dH (Eq. 4's factors) per input.
    public var dumpHidden = false
    /// Head-wise AdamW steps on the inputs (0 = none): rates, gradients and parameter changes.
    public var finetuneSteps = 0
    public var finetuneRates = HeadwiseRates()
    public var finetuneWeightDecay = 0.01
    public init(view: AnalysisView) { analysis = AnalysisSettings(view: view) }

    /// Whether a block only a resident model can give is asked for.
    public var needsModel: Bool { dumpAlignmentGradient || dumpHidden || finetuneSteps > 0 }
}

/// `[layer][head]` nesting of a per-head list indexed `l * NH + h`.
func perHead(_ xs: [Double], heads: Int) -> JSONOut {
    .array(stride(from: 0, to: xs.count, by: heads).map { JSONOut.numbers(Array(xs[$0..<($0 + heads)])) })
}

/// A head list as `[[layer, head], ...]`.
func headPairsJSON(_ ids: [HeadID]) -> JSONOut { .array(ids.map { .array([.int($0.layer), .int($0.head)]) }) }

/// A flat row-major buffer as nested rows of `cols`.
func rowsJSON(_ xs: [Double], cols: Int) -> JSONOut {
    .array(stride(from: 0, to: xs.count, by: max(cols, 1)).map { JSONOut.numbers(Array(xs[$0..<min(xs.count, $0 + cols)])) })
}

/// The oracle dump for `inputs`.
@_specialize(exported: true, where S == Float)
@_specialize(exported: true, where S == Double)
public func inspectDocument<S: Real>(_ model: Model<S>, inputs: [AnalysisInput], settings: InspectSettings,
                                     commandLine: String) throws -> JSONOut {
    if settings.finetuneSteps > 0 && ModelTask.of(model.config) == .classification,
       let i = inputs.firstIndex(where: { $0.label == nil }) {
        throw HeadAlignError.usage("--dump-finetune-step: input \(i + 1) has no gold label (give --label or label<TAB>text)")
    }
    if settings.finetuneSteps > 0 && model.layout.total > 200_000 {
        throw HeadAlignError.usage("--dump-finetune-step writes every parameter's gradient: keep it to toy models (\(model.layout.total) parameters > 200000)")
    }
    return try inspectDocument(AnalysisRunner(model), inputs: inputs, settings: settings, commandLine: commandLine,
                               extras: OracleExtras(perDocument: { an, split in oracleDocumentExtras(model, an, split: split, settings: settings) },
                                                    whole: { analyses, classes in
                                                        settings.finetuneSteps > 0
                                                            ? [("finetune", oracleFinetune(model, inputs: inputs, analyses: analyses, classes: classes, settings: settings))] : []
                                                    }))
}

/// The blocks only a resident model gives (`InspectSettings.needsModel`).
public struct OracleExtras {
    let perDocument: (InputAnalysis, (suspicious: [HeadID], safe: [HeadID])?) -> [(String, JSONOut)]
    let whole: ([InputAnalysis], [HeadClass]) -> [(String, JSONOut)]
}

/// The same through the analysis seam (a model that is not resident brings its own runner).
@_specialize(exported: true, where S == Float)
@_specialize(exported: true, where S == Double)
public func inspectDocument<S: Real>(_ model: AnalysisRunner<S>, inputs: [AnalysisInput], settings: InspectSettings,
                              commandLine: String, extras: OracleExtras? = nil) throws -> JSONOut {
    if settings.needsModel && extras == nil {
        throw HeadAlignError.usage("--dump-alignment-gradient, --dump-hidden and --dump-finetune-step need a resident model (not --stream)")
    }
    let c = model.config, nh = c.numAttentionHeads
    let analyses = try analyze(model, inputs, settings: settings.analysis)
    func split(_ r: SafetyReport) -> (suspicious: [HeadID], safe: [HeadID])? {
        let susp = settings.suspicious ?? r.ids(.suspicious), safe = settings.safe ?? r.ids(.safe)
        return susp.isEmpty || safe.isEmpty ? nil : (susp, safe)
    }
    func flat(_ ids: [HeadID]) -> [Int] { ids.map { $0.layer * nh + $0.head } }
    func headsBlock(_ r: SafetyReport, split s: (suspicious: [HeadID], safe: [HeadID])?, alignLoss: Double?) -> [(String, JSONOut)] {
        [("maxsim", perHead(r.maxsim, heads: nh)), ("importance", perHead(r.importance, heads: nh)),
         ("importance_normalized", perHead(r.normalizedImportance, heads: nh)), ("safety", perHead(r.safety, heads: nh)),
         ("class", .array(stride(from: 0, to: r.classes.count, by: nh).map { s in .array(r.classes[s..<(s + nh)].map { .string($0.rawValue) }) })),
         ("suspicious", headPairsJSON(r.ids(.suspicious))), ("suspicious_count", .int(r.ids(.suspicious).count)),
         ("safe", headPairsJSON(r.ids(.safe))), ("safe_count", .int(r.ids(.safe).count)),
         ("align_suspicious", s.map { headPairsJSON($0.suspicious) } ?? .null), ("align_safe", s.map { headPairsJSON($0.safe) } ?? .null),
         ("align_loss", alignLoss.map { .number($0) } ?? .null)]
    }
    let a = settings.analysis
    let pairCount = headPairs(layers: c.numHiddenLayers, heads: nh, scope: a.scope).count
    var configMembers: [(String, JSONOut)] = [
        ("command", .string(commandLine)), ("headalign", .string(headAlignVersion)),
        ("model_type", .string(c.modelType)), ("task", .string(ModelTask.of(c).rawValue)), ("layers", .int(c.numHiddenLayers)), ("heads", .int(nh)),
        ("kv_heads", .int(c.numKeyValueHeads)), ("head_size", .int(c.headSize)), ("hidden_size", .int(c.hiddenSize)),
        ("precision", .string(S.precisionName)),
        ("view", .string(a.view.rawValue)), ("scope", .string(a.scope.rawValue)), ("pair_count", .int(pairCount)),
        ("alpha", .number(settings.alpha)),
        ("tau", .number(settings.tau)), ("frac_above_threshold", .number(a.threshold)),
        ("importance_labels", .string(a.importanceLabels.rawValue)), ("generate", .int(a.generate)),
        ("head_split", .string(settings.suspicious == nil ? "eq5" : "explicit")),
    ]
    if let s = settings.suspicious, let t = settings.safe { configMembers += [("explicit_suspicious", headPairsJSON(s)), ("explicit_safe", headPairsJSON(t))] }
    let config: JSONOut = .object(configMembers)
    var docs: [JSONOut] = []
    for (x, an) in analyses.enumerated() {
        let r = safetyReport([an], alpha: settings.alpha, tau: settings.tau, heads: nh)
        let sp = split(r)
        let loss = sp.map { alignmentLoss(an.views, suspicious: flat($0.suspicious), safe: flat($0.safe)) }
        var members: [(String, JSONOut)] = [
            ("document", .int(x)), ("tokens", .array(an.tokens.map { .int($0) })), ("token_count", .int(an.tokens.count)),
            ("prompt_length", .int(an.promptLength)),
            ("generated_length", .int(an.generatedLength)), ("view", .string(a.view.rawValue)), ("scope", .string(a.scope.rawValue)),
            ("gold_label", inputs[x].label.map { .int($0) } ?? .null),
            ("importance_label", an.label.map { .int($0) } ?? .null),
        ]
        if settings.dumpAttention {
            let rows = a.view.block(tokens: an.tokens.count, promptLength: an.promptLength)
            members.append(("attention", .array((0..<c.numHiddenLayers).map { l in .array((0..<nh).map { h in
                rowsJSON(an.views[l * nh + h], cols: rows.cols.count)
            }) })))
        }
        members += headsBlock(r, split: sp, alignLoss: loss)
        members += [("pair_count", .int(an.pairCosines.count)), ("pair_cosines", .numbers(an.pairCosines)),
                    ("frac_above", .number(an.fracAbove)), ("p99", .number(an.p99))]
        if let extras { members += extras.perDocument(an, sp) }
        docs.append(.object(members))
    }
    let agg = safetyReport(analyses, alpha: settings.alpha, tau: settings.tau, heads: nh)
    let aggSplit = split(agg)
    let aggLoss = aggSplit.map { s in analyses.map { alignmentLoss($0.views, suspicious: flat(s.suspicious), safe: flat(s.safe)) }.reduce(0, +) / Double(analyses.count) }
    var aggregate: [(String, JSONOut)] = [("documents", .int(analyses.count))]
    aggregate += headsBlock(agg, split: aggSplit, alignLoss: aggLoss)
    if let empty = agg.emptyClassReport { aggregate.append(("note", .string(empty))) }
    var top: [(String, JSONOut)] = [("schema", .string(oracleSchema)), ("config", config), ("documents", .array(docs)), ("aggregate", .object(aggregate))]
    if let extras {
        // the fine-tuning step's classes: the explicit split (every other head intermediate) or the aggregate's Eq. 5
        var classes = agg.classes
        if let s = settings.suspicious, let t = settings.safe {
            classes = [HeadClass](repeating: .intermediate, count: agg.classes.count)
            for id in s { classes[id.layer * nh + id.head] = .suspicious }
            for id in t { classes[id.layer * nh + id.head] = .safe }
        }
        top += extras.whole(analyses, classes)
    }
    return .object(top)
}

/// Per input: Eq. 4's factors (`--dump-hidden`) and Eq. 6–7's gradient (`--dump-alignment-gradient`).
func oracleDocumentExtras<S: Real>(_ model: Model<S>, _ an: InputAnalysis, split: (suspicious: [HeadID], safe: [HeadID])?,
                                   settings: InspectSettings) -> [(String, JSONOut)] {
    let c = model.config, nh = c.numAttentionHeads, hs = c.headSize, d = c.hiddenSize, t = an.tokens.count
    var out: [(String, JSONOut)] = []
    if settings.dumpHidden {
        let pass = model.forward(Batch([an.tokens]))
        let objective: Objective = ModelTask.of(c) == .classification
            ? .classification(labels: [an.label!])
            : .nextToken(targets: [generationTargets(an.tokens, promptLength: an.promptLength)])
        let (l, dOut) = loss(pass, objective)
        let dH = model.backward(pass, dOutput: dOut, into: model.makeGradients()).headOutputGradients
        func heads(_ x: (Int) -> Tensor<S>) -> JSONOut {
            .array((0..<c.numHiddenLayers).map { layer in .array((0..<nh).map { h in
                .array((0..<t).map { r in JSONOut.numbers((0..<hs).map { j in Double(x(layer).data[r * nh * hs + h * hs + j]) }) })
            }) })
        }
        out += [("importance_loss", .number(l)), ("hidden", heads { pass.layers[$0].headOutput }), ("hidden_gradient", heads { dH[$0] })]
    }
    if settings.dumpAlignmentGradient {
        guard let split else { out.append(("alignment_gradient", .null)); return out }
        let grads = model.makeGradients()
        let l = alignmentGradient(model, sequences: [(tokens: an.tokens, promptLength: an.promptLength)], view: settings.analysis.view,
                                  suspicious: split.suspicious, safe: split.safe, into: grads)
        let set = Set(split.suspicious), shape = c.attentionShape
        func values(_ r: Range<Int>) -> [Double] { r.map { Double(grads.data[$0]) } }
        let heads: [JSONOut] = split.suspicious.map { id in
            let s = headSlices(layout: model.layout, config: c, layer: id.layer, head: id.head)
            let g = shape.kvHead(of: id.head)
            return .object([
                ("head", .array([.int(id.layer), .int(id.head)])),
                ("query_weight", rowsJSON(values(s.query[0]), cols: d)),
                ("query_bias", s.query.count > 1 ? .numbers(values(s.query[1])) : .null),
                ("kv_head", .int(g)),
                ("key_trained", .bool(shape.queryHeads(of: g).allSatisfy { set.contains(HeadID(id.layer, $0)) })),
                ("key_weight", rowsJSON(values(s.key[0]), cols: d)),
                ("key_bias", s.key.count > 1 ? .numbers(values(s.key[1])) : .null),
            ])
        }
        out.append(("alignment_gradient", .object([("loss", .number(l)), ("heads", .array(heads))])))
    }
    return out
}

/// `--dump-finetune-step N`: N head-wise AdamW steps (SPEC "Head-wise fine-tuning") on all the inputs as one batch,
/// each parameter at its head's class rate; per step the loss, every parameter's gradient and its change. The
/// model's parameters are restored afterwards.
func oracleFinetune<S: Real>(_ model: Model<S>, inputs: [AnalysisInput], analyses: [InputAnalysis], classes: [HeadClass],
                             settings: InspectSettings) -> JSONOut {
    let c = model.config, nh = c.numAttentionHeads, task = ModelTask.of(c)
    let examples = zip(inputs, analyses).map { input, an in
        task == .classification ? TrainingExample(tokens: an.tokens, label: input.label)
                                : TrainingExample(tokens: an.tokens, responseStart: an.promptLength)
    }
    let rates = headwiseLearningRates(layout: model.layout, config: c, classes: classes, rates: settings.finetuneRates)
    let optimizer = headwiseOptimizer(model, rates: rates, weightDecay: settings.finetuneWeightDecay)
    let saved = (0..<model.layout.total).map { model.params.data[$0] }
    func perTensor(_ x: (Int) -> Double) -> JSONOut {
        .object(model.layout.tensors.map { p in (p.name, .numbers(p.range.map(x))) })
    }
    var steps: [JSONOut] = []
    for step in 1...settings.finetuneSteps {
        let before = (0..<model.layout.total).map { model.params.data[$0] }
        let pass = model.forward(Batch(examples.map(\.tokens)))
        let (l, dOut) = loss(pass, trainingObjective(examples, task: task))
        let grads = model.makeGradients()
        model.backward(pass, dOutput: dOut, into: grads)
        optimizer.update(model.params, grads)
        steps.append(.object([("step", .int(step)), ("loss", .number(l)),
                              ("gradient", perTensor { Double(grads.data[$0]) }),
                              ("change", perTensor { Double(model.params.data[$0]) - Double(before[$0]) })]))
    }
    for i in 0..<saved.count { model.params.data[i] = saved[i] }
    let r = settings.finetuneRates
    let headRates: JSONOut = .array((0..<c.numHiddenLayers).map { l in .array((0..<nh).map { h in
        let s = headSlices(layout: model.layout, config: c, layer: l, head: h)
        return .object([("query", .number(rates[s.query[0].lowerBound])), ("key", .number(rates[s.key[0].lowerBound])),
                        ("value", .number(rates[s.value[0].lowerBound])), ("output", .number(rates[s.output[0].lowerBound]))])
    }) })
    return .object([
        ("steps", .int(settings.finetuneSteps)), ("batch", .int(examples.count)),
        ("optimizer", .object([("name", .string("adamw")), ("beta1", .number(optimizer.beta1)), ("beta2", .number(optimizer.beta2)),
                               ("eps", .number(optimizer.eps)), ("weight_decay", .number(settings.finetuneWeightDecay))])),
        ("rates", .object([("suspicious", .number(r.suspicious)), ("safe", .number(r.safe)), ("intermediate", .number(r.intermediate)),
                           ("other", .number(r.other))])),
        ("class", .array(stride(from: 0, to: classes.count, by: nh).map { s in .array(classes[s..<(s + nh)].map { .string($0.rawValue) }) })),
        ("head_rates", headRates),
        ("learning_rate", perTensor { rates[$0] }),
        ("trace", .array(steps)),
    ])
}
