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
            Eq. 7. Then an aggregate block: maxsim and G averaged over the inputs, S, classes and the
            batch-mean alignment loss recomputed. Numbers have 17 significant digits. The head split for the
            alignment loss comes from Eq. 5, or from --suspicious and --safe.
            """,
        usage: "inspect (--model DIR | --llama2c FILE --tokenizer FILE | --preset NAME) (--text TEXT | --ids 'I I I' | --inputs FILE)... [options] [--out FILE]",
        options: modelOptions + analysisOptions + inputOptions() + headSplitOptions + [
            OptionSpec(name: "--dump-attention", value: nil, help: "include each head's view of A"),
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
