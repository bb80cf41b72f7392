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

public struct InspectSettings: Sendable {
    public var analysis: AnalysisSettings
    public var alpha = 0.5
    public var tau = 0.5
    public var dumpAttention = false
    public var suspicious: [HeadID]? = nil  // explicit split for align_loss
    public var safe: [HeadID]? = nil
    public init(view: AnalysisView) { analysis = AnalysisSettings(view: view) }
}

/// `[layer][head]` nesting of a per-head list indexed `l * NH + h`.
func perHead(_ xs: [Double], heads: Int) -> JSONOut {
    .array(stride(from: 0, to: xs.count, by: heads).map { JSONOut.numbers(Array(xs[$0..<($0 + heads)])) })
}

/// The oracle dump for `inputs`.
@_specialize(exported: true, where S == Float)
@_specialize(exported: true, where S == Double)
public func inspectDocument<S: Real>(_ model: Model<S>, inputs: [AnalysisInput], settings: InspectSettings,
                                     commandLine: String) throws -> JSONOut {
    try inspectDocument(AnalysisRunner(model), inputs: inputs, settings: settings, commandLine: commandLine)
}

/// The same through the analysis seam (a model that is not resident brings its own runner).
@_specialize(exported: true, where S == Float)
@_specialize(exported: true, where S == Double)
public func inspectDocument<S: Real>(_ model: AnalysisRunner<S>, inputs: [AnalysisInput], settings: InspectSettings,
                              commandLine: String) throws -> JSONOut {
    let c = model.config, nh = c.numAttentionHeads
    let analyses = try analyze(model, inputs, settings: settings.analysis)
    func split(_ r: SafetyReport) -> (suspicious: [Int], safe: [Int])? {
        let susp = (settings.suspicious ?? r.ids(.suspicious)).map { $0.layer * nh + $0.head }
        let safe = (settings.safe ?? r.ids(.safe)).map { $0.layer * nh + $0.head }
        return susp.isEmpty || safe.isEmpty ? nil : (susp, safe)
    }
    func headsBlock(_ r: SafetyReport, alignLoss: Double?) -> [(String, JSONOut)] {
        [("maxsim", perHead(r.maxsim, heads: nh)), ("importance", perHead(r.importance, heads: nh)),
         ("importance_normalized", perHead(r.normalizedImportance, heads: nh)), ("safety", perHead(r.safety, heads: nh)),
         ("class", .array(stride(from: 0, to: r.classes.count, by: nh).map { s in .array(r.classes[s..<(s + nh)].map { .string($0.rawValue) }) })),
         ("suspicious", .array(r.ids(.suspicious).map { .string($0.description) })),
         ("safe", .array(r.ids(.safe).map { .string($0.description) })),
         ("align_loss", alignLoss.map { .number($0) } ?? .null)]
    }
    let a = settings.analysis
    let config: JSONOut = .object([
        ("command", .string(commandLine)), ("headalign", .string(headAlignVersion)),
        ("model_type", .string(c.modelType)), ("layers", .int(c.numHiddenLayers)), ("heads", .int(nh)),
        ("kv_heads", .int(c.numKeyValueHeads)), ("precision", .string(S.precisionName)),
        ("view", .string(a.view.rawValue)), ("scope", .string(a.scope.rawValue)), ("alpha", .number(settings.alpha)),
        ("tau", .number(settings.tau)), ("frac_above_threshold", .number(a.threshold)),
        ("importance_labels", .string(a.importanceLabels.rawValue)), ("generate", .int(a.generate)),
        ("head_split", .string(settings.suspicious == nil ? "eq5" : "explicit")),
    ])
    var docs: [JSONOut] = []
    for (x, an) in analyses.enumerated() {
        let r = safetyReport([an], alpha: settings.alpha, tau: settings.tau, heads: nh)
        let loss = split(r).map { alignmentLoss(an.views, suspicious: $0.suspicious, safe: $0.safe) }
        var members: [(String, JSONOut)] = [
            ("input", .int(x)), ("tokens", .array(an.tokens.map { .int($0) })), ("prompt_length", .int(an.promptLength)),
            ("generated_length", .int(an.generatedLength)), ("view", .string(a.view.rawValue)), ("scope", .string(a.scope.rawValue)),
            ("label", an.label.map { .int($0) } ?? .null),
        ]
        if settings.dumpAttention {
            let rows = a.view.block(tokens: an.tokens.count, promptLength: an.promptLength)
            members.append(("attention", .array((0..<c.numHiddenLayers).map { l in .array((0..<nh).map { h in
                let v = an.views[l * nh + h]
                return .array(stride(from: 0, to: v.count, by: rows.cols.count).map { JSONOut.numbers(Array(v[$0..<($0 + rows.cols.count)])) })
            }) })))
        }
        members += headsBlock(r, alignLoss: loss)
        members += [("pair_cosines", .numbers(an.pairCosines)), ("frac_above", .number(an.fracAbove)), ("p99", .number(an.p99))]
        docs.append(.object(members))
    }
    let agg = safetyReport(analyses, alpha: settings.alpha, tau: settings.tau, heads: nh)
    let aggLoss = split(agg).map { s in analyses.map { alignmentLoss($0.views, suspicious: s.suspicious, safe: s.safe) }.reduce(0, +) / Double(analyses.count) }
    var aggregate: [(String, JSONOut)] = [("inputs", .int(analyses.count))]
    aggregate += headsBlock(agg, alignLoss: aggLoss)
    if let empty = agg.emptyClassReport { aggregate.append(("note", .string(empty))) }
    return .object([("config", config), ("inputs", .array(docs)), ("aggregate", .object(aggregate))])
}
