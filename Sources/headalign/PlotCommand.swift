// PlotCommand.swift: `headalign plot KIND`, the notebooks' figures as SVG (Plot.swift draws them).
// Figures of one model's attention are computed here; the others read the JSON the other
// commands write (inspect, defend --report, experiment --json), so a figure shows exactly the
// numbers a notebook printed.

import Foundation
import HeadAlign
import HeadAlignLab

enum PlotCommand: Command {
    static let kinds = ["attention", "cosines", "heads", "classes", "loss", "bars"]
    static let spec = CommandSpec(
        name: "plot",
        summary: "draw a figure as SVG: attention, cosines, heads, classes, loss, bars",
        detail: """
            attention: one head's view of A with token labels (--model/--preset, --text, --layer, --head, --view).
            cosines: histogram of pair cosines (Eq. 2), clean (--clean FILE) against triggered (--inputs FILE) inputs.
            heads: maxsim against G/max G with Eq. 5's tau bands, classes coloured, from `inspect --out` JSON (--from).
            classes: the layer x head grid of classes, from `inspect` JSON (--from).
            loss: Eq. 7's alignment loss per step of each round, from `defend --report` JSON (--from).
            bars: CA and ASR per method (mean and std over seeds), from `experiment --json` (--from).
            """,
        usage: "plot KIND [--from FILE | model options] --out FILE.svg",
        options: modelOptions + analysisOptions + [
            OptionSpec(name: "--kind", value: "K", help: "the figure (also given as the first word): \(kinds.joined(separator: ", "))"),
            OptionSpec(name: "--from", value: "FILE", help: "heads, classes: inspect JSON; loss: defense report JSON; bars: experiment JSON"),
            OptionSpec(name: "--text", value: "TEXT", help: "attention: the input"),
            OptionSpec(name: "--layer", value: "L", help: "attention: the layer (default 0)"),
            OptionSpec(name: "--head", value: "H", help: "attention: the head (default 0)"),
            OptionSpec(name: "--clean", value: "FILE", help: "cosines: clean inputs, one per line (text or label<TAB>text)"),
            OptionSpec(name: "--inputs", value: "FILE", help: "cosines: triggered inputs, one per line"),
            OptionSpec(name: "--bins", value: "N", help: "cosines: histogram bins over [0, 1] (default 20)"),
            OptionSpec(name: "--title", value: "TEXT", help: "the figure's title (each kind has a default)"),
            OptionSpec(name: "--out", value: "FILE", help: "the SVG file to write (atomically)"),
        ])

    static func run(_ args: ParsedArguments) throws -> Int32 {
        guard args.has("--kind") else { throw HeadAlignError.usage("give the figure: plot \(kinds.joined(separator: "|")) ...") }
        let kind = try args.choice("--kind", kinds, default: "attention")
        guard let out = args.string("--out") else { throw HeadAlignError.usage("--out FILE.svg is required") }
        let svg: String
        switch kind {
        case "attention": svg = try attention(args)
        case "cosines": svg = try cosines(args)
        case "heads", "classes": svg = try heads(args, grid: kind == "classes")
        case "loss": svg = try loss(args)
        case "bars": svg = try bars(args)
        default: throw HeadAlignError.usage("give the figure: plot \(kinds.joined(separator: "|")) ...")
        }
        try writeAtomically(Data(svg.utf8), to: out)
        print("wrote \(out)")
        return 0
    }

    static func attention(_ args: ParsedArguments) throws -> String {
        guard let text = args.string("--text") else { throw HeadAlignError.usage("plot attention: --text TEXT is required") }
        let (model, tokenizer, _) = try args.loadModel()
        let c = model.config
        let layer = try args.int("--layer", default: 0, range: 0...(c.numHiddenLayers - 1))
        let head = try args.int("--head", default: 0, range: 0...(c.numAttentionHeads - 1))
        var s = try args.analysisSettings(for: c)
        s.importance = false
        let maxLength = c.maxPositionEmbeddings - (s.view == .gen2prompt ? s.generate : 0)
        let ids = try tokenizer.encode(text, maxLength: maxLength).ids
        let an = try model.analyze([AnalysisInput(tokens: ids)], settings: s)[0]
        let block = s.view.block(tokens: an.tokens.count, promptLength: an.promptLength)
        let v = an.views[layer * c.numAttentionHeads + head], cols = block.cols.count
        let rows = stride(from: 0, to: v.count, by: cols).map { Array(v[$0..<($0 + cols)]) }
        let pieces = tokenizer.pieces(an.tokens).enumerated().map { "\($0.offset) \($0.element.trimmingCharacters(in: .whitespacesAndNewlines))" }
        return attentionHeatmapSVG(rows, rowLabels: Array(pieces[block.rows]), columnLabels: Array(pieces[block.cols]),
                                   title: args.string("--title") ?? "Attention of head \(layer):\(head) (\(s.view.rawValue) view)")
    }

    static func cosines(_ args: ParsedArguments) throws -> String {
        guard let cleanPath = args.string("--clean"), let triggeredPath = args.string("--inputs") else {
            throw HeadAlignError.usage("plot cosines: --clean FILE and --inputs FILE (triggered) are required")
        }
        let (model, tokenizer, _) = try args.loadModel()
        let c = model.config
        var s = try args.analysisSettings(for: c)
        s.importance = false
        func pairs(_ path: String) throws -> [Double] {
            let inputs = try readAnalysisInputs(path, tokenizer: tokenizer, config: c, generate: s.view == .gen2prompt ? s.generate : 0)
            guard !inputs.isEmpty else { throw HeadAlignError.usage("\(path): no inputs") }
            return try model.analyze(inputs, settings: s).flatMap(\.pairCosines)
        }
        let bins = try args.int("--bins", default: 20, range: 2...200)
        return cosineHistogramSVG(clean: try pairs(cleanPath), triggered: try pairs(triggeredPath), bins: bins, range: 0...1,
                                  title: args.string("--title") ?? "Pair cosines of the heads' attention (\(s.view.rawValue) view)")
    }

    // MARK: Figures from JSON

    static func document(_ args: ParsedArguments) throws -> (JSONValue, String) {
        guard let path = args.string("--from") else { throw HeadAlignError.usage("--from FILE is required for this figure") }
        guard let data = FileManager.default.contents(atPath: path) else { throw HeadAlignError.usage("--from \(path): cannot read the file") }
        do {
            return (try data.withUnsafeBytes { try JSONValue.parse($0.bindMemory(to: UInt8.self)) }, path)
        } catch {
            throw HeadAlignError.badInput("\(path): not JSON (\(error))")
        }
    }

    static func numbers(_ v: JSONValue?, _ what: String, _ path: String) throws -> [Double] {
        guard case .array(let xs)? = v else { throw HeadAlignError.badInput("\(path): \(what) is not an array") }
        return try xs.map {
            switch $0 {
            case .integer(let i): return Double(i)
            case .float(let x): return x
            default: throw HeadAlignError.badInput("\(path): \(what) holds \($0.described), not a number")
            }
        }
    }

    static func nested(_ v: JSONValue?, _ what: String, _ path: String) throws -> [JSONValue] {
        guard case .array(let xs)? = v else { throw HeadAlignError.badInput("\(path): \(what) is not an array") }
        return xs
    }

    static func number(_ v: JSONValue?, _ what: String, _ path: String) throws -> Double {
        try numbers(v.map { .array([$0]) }, what, path).first ?? 0
    }

    static func heads(_ args: ParsedArguments, grid: Bool) throws -> String {
        let (doc, path) = try document(args)
        guard let agg = doc["aggregate"], let config = doc["config"] else { throw HeadAlignError.badInput("\(path): not an `inspect` document (no aggregate block)") }
        let maxsim = try nested(agg["maxsim"], "aggregate.maxsim", path).map { try numbers($0, "aggregate.maxsim", path) }
        let g = try nested(agg["importance_normalized"], "aggregate.importance_normalized", path).map { try numbers($0, "aggregate.importance_normalized", path) }
        let classes = try nested(agg["class"], "aggregate.class", path).map { row in
            try nested(row, "aggregate.class", path).map { v -> HeadClass in
                guard case .string(let s) = v, let c = HeadClass(rawValue: s) else { throw HeadAlignError.badInput("\(path): aggregate.class holds \(v.described), not a class name") }
                return c
            }
        }
        guard !maxsim.isEmpty, maxsim.count == g.count, maxsim.count == classes.count,
              zip(maxsim, classes).allSatisfy({ $0.count == $1.count }) else { throw HeadAlignError.badInput("\(path): maxsim, importance and class shapes differ") }
        let alpha = try number(config["alpha"], "config.alpha", path), tau = try number(config["tau"], "config.tau", path)
        let view: String = { if case .string(let s)? = config["view"] { return s }; return "?" }()
        if grid {
            return classGridSVG(classes, title: args.string("--title") ?? "Eq. 5 classes per layer and head (\(view) view)")
        }
        return headScatterSVG(maxsim: maxsim.flatMap { $0 }, normalizedImportance: g.flatMap { $0 }, classes: classes.flatMap { $0 },
                              heads: maxsim[0].count, alpha: alpha, tau: tau,
                              title: args.string("--title") ?? "Heads on Eq. 5's plane (\(view) view)")
    }

    static func loss(_ args: ParsedArguments) throws -> String {
        let (doc, path) = try document(args)
        let rounds = try nested(doc["rounds"], "rounds", path)
        guard !rounds.isEmpty else { throw HeadAlignError.badInput("\(path): no defense rounds (the defense did not run)") }
        let series = try rounds.enumerated().map { i, r in ("round \(i + 1)", try numbers(r["align_loss"], "rounds[\(i)].align_loss", path)) }
        guard series.contains(where: { !$0.1.isEmpty }) else { throw HeadAlignError.badInput("\(path): no alignment steps recorded") }
        return lossCurveSVG(series.map { (name: $0.0, values: $0.1) }, title: args.string("--title") ?? "Alignment loss (Eq. 7) per step",
                            yTitle: "L_align")
    }

    static func bars(_ args: ParsedArguments) throws -> String {
        let (doc, path) = try document(args)
        let seeds = try nested(doc["seeds"], "seeds", path)
        guard !seeds.isEmpty else { throw HeadAlignError.badInput("\(path): no seeds") }
        var order: [String] = [], ca: [String: [Double]] = [:], asr: [String: [Double]] = [:]
        for (i, s) in seeds.enumerated() {
            for m in try nested(s["methods"], "seeds[\(i)].methods", path) {
                guard case .string(let name)? = m["method"] else { throw HeadAlignError.badInput("\(path): seeds[\(i)].methods: a method without a name") }
                if ca[name] == nil { order.append(name) }
                ca[name, default: []].append(try number(m["ca"], "\(name).ca", path))
                asr[name, default: []].append(try number(m["asr"], "\(name).asr", path))
            }
        }
        let title: String = { if case .string(let a)? = doc["attack"] { return "CA and ASR per method (\(a))" }; return "CA and ASR per method" }()
        return methodBarsSVG(order.map { (method: $0, ca: ca[$0]!, asr: asr[$0]!) }, title: args.string("--title") ?? title)
    }
}
