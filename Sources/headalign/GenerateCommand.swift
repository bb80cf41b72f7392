// GenerateCommand.swift: `headalign generate`, greedy continuation of a prompt.

import Foundation
import HeadAlign
import HeadAlignLab

enum GenerateCommand: Command {
    static let spec = CommandSpec(
        name: "generate",
        summary: "greedy continuation of a prompt by a decoder",
        detail: """
            Greedy (argmax) continuation of --prompt by a Llama-style model. The prompt is tokenized with the
            model's tokenizer and starts with BOS; an empty prompt starts from BOS alone. --instruction
            (and --input) build the instruction prompt of the decoder experiments instead. Prints the
            continuation; --ids also prints the token ids.
            """,
        usage: "generate (--model DIR | --llama2c FILE --tokenizer FILE) [--prompt TEXT | --instruction TEXT [--input TEXT]] [--max-new N] [--stop-at-bos | --stop-at-eos] [--ids]",
        options: modelOptions + [
            OptionSpec(name: "--prompt", value: "TEXT", help: "the prompt (default empty: start from BOS)"),
            OptionSpec(name: "--max-new", value: "N", help: "tokens to generate (default 64)"),
            OptionSpec(name: "--instruction", value: "TEXT", help: "an instruction, wrapped in the Alpaca prompt template (docs/FORMATS.md)"),
            OptionSpec(name: "--input", value: "TEXT", help: "the instruction's optional input"),
            OptionSpec(name: "--stop-at-bos", value: nil, help: "stop when BOS is generated, as llama2.c does"),
            OptionSpec(name: "--stop-at-eos", value: nil, help: "stop when EOS is generated (instruction-tuned decoders end a response with it)"),
            OptionSpec(name: "--ids", value: nil, help: "also print the generated token ids"),
        ])

    static func run(_ args: ParsedArguments) throws -> Int32 {
        let maxNew = try args.int("--max-new", default: 64, range: 0...100_000)
        let (model, tokenizer, _) = try args.loadModel()
        guard model.config.hasLMHead else { throw HeadAlignError.usage("the model has no LM head (it is a \(model.config.architectures.joined()))") }
        if args.has("--prompt") && args.has("--instruction") { throw HeadAlignError.usage("give --prompt or --instruction, not both") }
        if args.has("--input") && !args.has("--instruction") { throw HeadAlignError.usage("--input goes with --instruction") }
        if args.has("--stop-at-bos") && args.has("--stop-at-eos") { throw HeadAlignError.usage("give --stop-at-bos or --stop-at-eos, not both") }
        let prompt = args.string("--instruction").map { InstructionRecord(instruction: $0, input: args.string("--input") ?? "", output: "").prompt }
            ?? args.string("--prompt") ?? ""
        var ids: [Int]
        if prompt.isEmpty, case .llama2c(let t) = tokenizer {
            ids = [t.bos]
        } else {
            let (encoded, truncated) = try tokenizer.encode(prompt, maxLength: model.config.maxPositionEmbeddings)
            if truncated { printError("headalign generate: warning: prompt truncated from the left to \(model.config.maxPositionEmbeddings) tokens") }
            ids = encoded
        }
        let bos = model.config.bosTokenId ?? 1, eos = model.config.eosTokenId ?? 2
        let stop: Set<Int> = args.has("--stop-at-bos") ? [bos] : args.has("--stop-at-eos") ? [eos] : []
        let out = model.generate(prompt: ids, maxNew: maxNew, stopAt: stop)
        if !stop.isEmpty && out.count == maxNew { printError("headalign generate: note: stopped at --max-new \(maxNew) before \(args.has("--stop-at-bos") ? "BOS" : "EOS")") }
        switch tokenizer {
        case .llama2c(let t): print(t.decode(out, after: ids.last!))
        default: print(tokenizer.pieces(out).joined(separator: " "))
        }
        if args.has("--ids") { print("ids: \(out.map(String.init).joined(separator: " "))") }
        return 0
    }
}
