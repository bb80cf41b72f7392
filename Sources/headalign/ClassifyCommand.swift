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
        usage: "classify (--model DIR | ...) --inputs FILE [--clean FILE --maxsim contrast | --classes focus] [options]",
        options: modelOptions + analysisOptions + [
            OptionSpec(name: "--stream", value: nil, help: "run a Llama --model DIR layer by layer from its memory-mapped checkpoint (7B in BLAS mode)"),
        ] + inputOptions() + [
            OptionSpec(name: "--maxsim", value: "M", help: "plain (the paper's) or contrast (default \(defenseDefaults.maxsim.rawValue))"),
            OptionSpec(name: "--clean", value: "FILE", help: "clean inputs for --maxsim contrast and --classes focus"),
            OptionSpec(name: "--classes", value: "R", help: "tau (Eq. 5's bounds, the default) or focus (ours, needs --clean: suspicious when the inputs move >= \(focusSuspiciousShift) of a head's attention, in the monitor's view, onto one ordinary token against the clean inputs; safe < \(focusSafeShift); tau when fewer than \(focusMinHeads) heads do)"),
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
        let rule: ClassRule = try args.choice("--classes", ["tau", "focus"], default: "tau") == "focus" ? .focus : .tau
        var override: [Double]? = nil, shift: [Double]? = nil
        if mode.needsClean || rule == .focus {
            guard let path = args.string("--clean") else { throw HeadAlignError.usage("--\(rule == .focus ? "classes focus" : "maxsim \(mode.rawValue)") needs --clean FILE") }
            var clean: [AnalysisInput] = []
            for e in try readTextLines(path) { clean.append(AnalysisInput(tokens: try tokenizer.encode(e.text, maxLength: c.maxPositionEmbeddings).ids, label: e.label)) }
            guard !clean.isEmpty else { throw HeadAlignError.usage("--clean \(path): no inputs") }
            if mode.needsClean {
                let cos = try model.analyze(clean, settings: settings).map(\.pairCosines)
                override = maxsimOverride(mode, analyses, cleanCosines: cos, pairs: headPairs(layers: c.numHiddenLayers, heads: c.numAttentionHeads, scope: settings.scope),
                                          headCount: c.numHiddenLayers * c.numAttentionHeads)
            }
            if rule == .focus {  // in the monitor's view, where the model reads
                var m = settings
                m.view = ModelTask.of(c).defaultViews(c.family).monitor
                m.importance = false
                func focused(_ x: [AnalysisInput]) throws -> [[Double]] { try model.analyze(x, settings: m).map { focus($0, view: m.view, family: c.family) } }
                shift = focusShift(flagged: try focused(inputs), clean: try focused(clean))
            }
        }
        let r = safetyReport(analyses, alpha: alpha, tau: tau, heads: c.numAttentionHeads, maxsimOverride: override, rule: rule, focusShift: shift)
        print("headalign classify: \(inputs.count) inputs; view \(settings.view.rawValue), scope \(settings.scope.rawValue), alpha \(alpha), tau \(tau), maxsim \(mode.rawValue), importance labels \(settings.importanceLabels.rawValue)\(settings.view == .gen2prompt ? ", generate \(settings.generate)" : "")")
        print("")
        print("| layer | head | maxsim | G | G / max G | S |" + (shift == nil ? "" : " focus shift |") + " class |")
        print("|---:|---:|---:|---:|---:|---:|" + (shift == nil ? "" : "---:|") + "---|")
        for k in r.safety.indices {
            print(String(format: "| %d | %d | %.4f | %.4e | %.4f | %.4f |", k / c.numAttentionHeads, k % c.numAttentionHeads,
                         r.maxsim[k], r.importance[k], r.normalizedImportance[k], r.safety[k])
                  + (shift.map { String(format: " %.4f |", $0[k]) } ?? "") + " \(r.classes[k].rawValue) |")
        }
        if rule == .focus { print("\nclasses: " + (r.rule == .focus ? "focus (suspicious: shift >= \(focusSuspiciousShift), safe: < \(focusSafeShift))" : focusFallbackReason + "; Eq. 5 with tau \(tau)")) }
        print("")
        print("suspicious: \(r.ids(.suspicious).map(\.description).joined(separator: ","))")
        print("safe: \(r.ids(.safe).map(\.description).joined(separator: ","))")
        print("intermediate: \(r.ids(.intermediate).count) heads")
        if let empty = r.emptyClassReport { print("note: \(empty)") }
        return 0
    }
}
