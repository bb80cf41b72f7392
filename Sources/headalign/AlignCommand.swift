// AlignCommand.swift: `headalign align`, Eq. 6–7 on a Llama checkpoint too large for memory,
// streamed layer by layer (Streaming.swift): the suspicious heads' W_q / W_k rows are trained in
// Float32 and written into a new checkpoint directory, every other tensor copied as it is.

import Foundation
import HeadAlign
import HeadAlignLab

enum AlignCommand: Command {
    static let spec = CommandSpec(
        name: "align",
        summary: "Eq. 6-7 on a large Llama checkpoint, streamed: train the suspicious heads' query/key rows, write a new checkpoint",
        detail: """
            The inputs are continued greedily by --generate tokens once (the gen2prompt view by default); the head split
            comes from Eq. 5 on them (--alpha, --tau) or from --suspicious and --safe. Each step: a streamed forward
            with the attention captured, Eq. 7's gradient injected at the suspicious heads, a streamed backward from
            the highest suspicious layer to the lowest with gradients for the trained rows only, AdamW on those rows
            (weight decay 0, as in defend). The trained rows stay in Float32 during the run and are stored in the
            checkpoint's dtype at the end.
            """,
        usage: "align --model DIR (--text T | --ids 'I ...' | --inputs FILE)... [--suspicious l:h,... --safe l:h,...] [--align-steps N] [--align-lr LR] (--out DIR | --no-write)",
        options: modelOptions + analysisOptions + inputOptions() + headSplitOptions + [
            OptionSpec(name: "--align-steps", value: "N", help: "alignment steps (default \(defenseDefaults.alignSteps))"),
            OptionSpec(name: "--align-lr", value: "LR", help: "AdamW learning rate (default \(defenseDefaults.alignLearningRate))"),
            OptionSpec(name: "--out", value: "DIR", help: "the aligned checkpoint's new directory"),
            OptionSpec(name: "--no-write", value: nil, help: "run the steps, write nothing"),
        ])

    static func run(_ args: ParsedArguments) throws -> Int32 {
        guard case .directory(let dir) = try args.modelSource() else { throw HeadAlignError.usage("align needs --model DIR (a Llama checkpoint)") }
        if args.has("--no-write") == args.has("--out") { throw HeadAlignError.usage("give --out DIR or --no-write") }
        if let out = args.string("--out") { try StreamedLlama.checkRoom(copying: dir, to: out) }
        let steps = try args.int("--align-steps", default: defenseDefaults.alignSteps, range: 1...1_000_000)
        let lr = try args.double("--align-lr", default: defenseDefaults.alignLearningRate, range: 0...1)
        let start = monotonicSeconds()
        let model = try StreamedLlama(directory: dir, backend: try args.backend())
        let c = model.config
        let settings = try args.analysisSettings(for: c)
        let (alpha, tau) = try args.alphaTau()
        let tokenizer = try AnyModel.tokenizer(for: .directory(dir), config: c)
        let inputs = try args.analysisInputs(fileFlag: "--inputs", tokenizer: tokenizer, config: c, command: "align")
        guard !inputs.isEmpty else { throw HeadAlignError.usage("give inputs: --text, --ids or --inputs") }
        var suspicious: [HeadID], safe: [HeadID]
        var sequences: [(tokens: [Int], promptLength: Int)]
        if let split = try args.headSplit(c) {
            (suspicious, safe) = split
            sequences = model.analysisSequences(inputs, settings: settings)  // Eq. 5 is not needed: no analysis pass
        } else {
            let analyses = try model.analyze(inputs, settings: settings)  // Eq. 1-5 on the inputs
            let r = safetyReport(analyses, alpha: alpha, tau: tau, heads: c.numAttentionHeads)
            if let empty = r.emptyClassReport { throw HeadAlignError.usage("Eq. 5: \(empty); give --suspicious and --safe, or another --alpha/--tau") }
            suspicious = r.ids(.suspicious); safe = r.ids(.safe)
            sequences = analyses.map { ($0.tokens, $0.promptLength) }
        }
        print("headalign align: \(inputs.count) inputs, view \(settings.view.rawValue)\(settings.view == .gen2prompt ? ", generate \(settings.generate)" : ""); \(steps) steps at \(lr)")
        print("suspicious: \(suspicious.map(\.description).joined(separator: ","))")
        print("safe: \(safe.map(\.description).joined(separator: ","))")
        model.prepareAlignment(suspicious: suspicious, learningRate: lr)
        var losses: [Double] = []
        for step in 0..<steps {
            let t0 = monotonicSeconds()
            let l = model.alignmentStep(sequences: sequences, view: settings.view, suspicious: suspicious, safe: safe)
            guard l.isFinite else { throw HeadAlignError.numeric("alignment loss is \(l) at step \(step + 1); stopped") }
            losses.append(l)
            printError(String(format: "headalign align: step %d loss %.6g (%.1f s)", step + 1, l, monotonicSeconds() - t0))
        }
        print(String(format: "alignment loss %.6g -> %.6g over %d steps", losses.first!, losses.last!, steps))
        if let out = args.string("--out") {
            try model.saveAligned(from: dir, to: out)
            print("wrote \(out)")
        }
        printError(String(format: "headalign align: %d layer loads (%.1f s converting weights), %.1f s in all", model.layerLoads,
                          model.conversionSeconds, monotonicSeconds() - start))
        return 0
    }
}
