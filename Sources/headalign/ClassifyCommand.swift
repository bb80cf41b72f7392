// ClassifyCommand.swift: `headalign classify`, the Eq. 4–5 table of heads.

import Foundation
import HeadAlign
import HeadAlignLab

enum ClassifyCommand: Command {
    static let spec = CommandSpec(
        name: "classify",
        summary: "Eq. 4-5: score every head on some inputs and split them into safe / intermediate / suspicious",
        detail: """
            Over the inputs: maxsim (Eq. 3, largest cosine with another head in the scope, averaged), gradient
            importance G (Eq. 4, mean |<H, dL/dH>|), the safety score S = 1 - [alpha maxsim + (1 - alpha) G / max G]
            (Eq. 5) and the class: S < tau suspicious, S > 1 - tau safe, else intermediate. With --maxsim contrast
            (needs --clean) maxsim is measured against the pair's mean cosine on clean inputs.
            """,
        usage: "classify (--model DIR | ...) --inputs FILE [--clean FILE --maxsim contrast] [options]",
        options: modelOptions + analysisOptions + [
            OptionSpec(name: "--stream", value: nil, help: "run a Llama --model DIR layer by layer from its memory-mapped checkpoint (7B in BLAS mode)"),
        ] + inputOptions() + [
            OptionSpec(name: "--maxsim", value: "M", help: "plain (the paper's) or contrast (default \(defenseDefaults.maxsim.rawValue))"),
            OptionSpec(name: "--clean", value: "FILE", help: "clean inputs for --maxsim contrast"),
        ])

    static func run(_ args: ParsedArguments) throws -> Int32 {
        let (model, tokenizer, _) = try args.loadAnalyzer()
        let c = model.config
        let settings = try args.analysisSettings(for: c)
        let (alpha, tau) = try args.alphaTau()
        let mode = MaxsimMode(rawValue: try args.choice("--maxsim", MaxsimMode.allCases.map(\.rawValue), default: defenseDefaults.maxsim.rawValue))!
        let inputs = try args.analysisInputs(fileFlag: "--inputs", tokenizer: tokenizer, config: c, command: "classify")
        guard !inputs.isEmpty else { throw HeadAlignError.usage("give inputs: --inputs FILE, --text or --ids") }
        let analyses = try model.analyze(inputs, settings: settings)
        var override: [Double]? = nil
        if mode.needsClean {
            guard let path = args.string("--clean") else { throw HeadAlignError.usage("--maxsim \(mode.rawValue) needs --clean FILE") }
            var clean: [AnalysisInput] = []
            for e in try readTextLines(path) { clean.append(AnalysisInput(tokens: try tokenizer.encode(e.text, maxLength: c.maxPositionEmbeddings).ids, label: e.label)) }
            guard !clean.isEmpty else { throw HeadAlignError.usage("--clean \(path): no inputs") }
            let cos = try model.analyze(clean, settings: settings).map(\.pairCosines)
            override = maxsimOverride(mode, analyses, cleanCosines: cos, pairs: headPairs(layers: c.numHiddenLayers, heads: c.numAttentionHeads, scope: settings.scope),
                                      headCount: c.numHiddenLayers * c.numAttentionHeads)
        }
        let r = safetyReport(analyses, alpha: alpha, tau: tau, heads: c.numAttentionHeads, maxsimOverride: override)
        print("headalign classify: \(inputs.count) inputs; view \(settings.view.rawValue), scope \(settings.scope.rawValue), alpha \(alpha), tau \(tau), maxsim \(mode.rawValue), importance labels \(settings.importanceLabels.rawValue)\(settings.view == .gen2prompt ? ", generate \(settings.generate)" : "")")
        print("")
        print("| layer | head | maxsim | G | G / max G | S | class |")
        print("|---:|---:|---:|---:|---:|---:|---|")
        for k in r.safety.indices {
            print(String(format: "| %d | %d | %.4f | %.4e | %.4f | %.4f | %@ |", k / c.numAttentionHeads, k % c.numAttentionHeads,
                         r.maxsim[k], r.importance[k], r.normalizedImportance[k], r.safety[k], r.classes[k].rawValue))
        }
        print("")
        print("suspicious: \(r.ids(.suspicious).map(\.description).joined(separator: ","))")
        print("safe: \(r.ids(.safe).map(\.description).joined(separator: ","))")
        print("intermediate: \(r.ids(.intermediate).count) heads")
        if let empty = r.emptyClassReport { print("note: \(empty)") }
        return 0
    }
}
