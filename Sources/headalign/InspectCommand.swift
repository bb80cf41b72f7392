// InspectCommand.swift: `headalign inspect`, the oracle dump of Eq. 1–7 as JSON.

import Foundation
import HeadAlign
import HeadAlignLab

enum InspectCommand: Command {
    static let spec = CommandSpec(
        name: "inspect",
        summary: "dump every quantity of Eq. 1-7 for some inputs as JSON (the oracle)",
        detail: """
            For each input (computed with that input alone): tokens, prompt and generated lengths, per layer and
            head the view of A (--dump-attention), maxsim, importance G, G/max G, safety S, class; the pair
            cosines (scope order: layer-major, head-major, i < j), frac_above, p99 and the alignment loss of
            Eq. 7; with --dump-hidden, --dump-alignment-gradient and --dump-finetune-step, Eq. 4's H and dL/dH, Eq. 6-7's
            gradient and head-wise fine-tuning steps. Then an aggregate block: maxsim and G averaged over the inputs, S, classes and the
            batch-mean alignment loss recomputed. Numbers have 17 significant digits. Schema headalign-oracle/1 (docs/ORACLE.md); compare two dumps with
            'headalign compare'. The head split for the
            alignment loss comes from Eq. 5, or from --suspicious and --safe.
            """,
        usage: "inspect (--model DIR | --llama2c FILE --tokenizer FILE | --preset NAME) (--text TEXT | --ids 'I I I' | --inputs FILE)... [options] [--out FILE]",
        options: modelOptions + analysisOptions + inputOptions() + headSplitOptions + [
            OptionSpec(name: "--dump-attention", value: nil, help: "include each head's view of A"),
            OptionSpec(name: "--dump-alignment-gradient", value: nil, help: "include Eq. 6-7's gradient at each suspicious head's W_q/W_k rows and bias entries (full backprop)"),
            OptionSpec(name: "--dump-hidden", value: nil, help: "include H = A V per head and dL/dH (Eq. 4's factors)"),
            OptionSpec(name: "--dump-finetune-step", value: "N", help: "include N head-wise AdamW steps on the inputs (gold labels): rates, gradients, parameter changes (toy models)"),
            OptionSpec(name: "--stream", value: nil, help: "run a Llama --model DIR layer by layer from its memory-mapped checkpoint (7B in BLAS mode)"),
            OptionSpec(name: "--out", value: "FILE", help: "write the JSON here (atomically) instead of standard output"),
        ])

    static func run(_ args: ParsedArguments) throws -> Int32 {
        let (model, tokenizer, _) = try args.loadAnalyzer()  // --stream: layer by layer from the mapped checkpoint
        let c = model.config
        var settings = InspectSettings(view: .full)
        settings.analysis = try args.analysisSettings(for: c)
        (settings.alpha, settings.tau) = try args.alphaTau()
        settings.dumpAttention = args.has("--dump-attention")
        settings.dumpAlignmentGradient = args.has("--dump-alignment-gradient")
        settings.dumpHidden = args.has("--dump-hidden")
        settings.finetuneSteps = try args.int("--dump-finetune-step", default: 0, range: 0...100)
        if let split = try args.headSplit(c) { (settings.suspicious, settings.safe) = split }
        let inputs = try args.analysisInputs(fileFlag: "--inputs", tokenizer: tokenizer, config: c, command: "inspect")
        guard !inputs.isEmpty else { throw HeadAlignError.usage("give inputs: --text, --ids or --inputs") }
        let commandLine = echoedCommandLine
        let start = monotonicSeconds()
        let doc = try model.inspect(inputs, settings, commandLine).text
        if let s = model.streamed {
            printError(String(format: "headalign inspect: streamed %d layer loads (%.1f s converting weights) in %.1f s", s.layerLoads, s.conversionSeconds,
                              monotonicSeconds() - start))
        }
        if let out = args.string("--out") {
            try writeAtomically(Data(doc.utf8), to: out)
            printError("headalign inspect: wrote \(out) (\(inputs.count) inputs)")
        } else {
            print(doc, terminator: "")
        }
        return 0
    }
}
