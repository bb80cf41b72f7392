// ConvertCommand.swift: `headalign convert`, a llama2.c checkpoint to a Hugging Face directory.

import Foundation
import HeadAlign
import HeadAlignLab

enum ConvertCommand: Command {
    static let spec = CommandSpec(
        name: "convert",
        summary: "llama2.c checkpoint -> Hugging Face directory; or add a classifier head to a model directory, or make a smaller copy of one",
        detail: """
            Read a llama2.c legacy checkpoint and write config.json + model.safetensors (F32) in the Hugging Face
            LlamaForCausalLM layout. W_q and W_k rows are permuted per head (row 2i -> i, 2i+1 -> i + HS/2) so
            that Hugging Face's rotate-half rotary gives the same outputs as llama2.c's interleaved pairs.
            The llama2.c tokenizer is copied as tokenizer.bin (headalign reads it; transformers needs its own).
            With --model DIR and --layers N and/or --vocab-from FILE: a smaller copy for shipping (the first N layers;
            only the WordPiece pieces the FILEs' texts use, plus the special tokens: on those texts the tokenizer
            gives the same pieces), in --dtype (default f32).
            """,
        usage: "convert --llama2c FILE --tokenizer FILE --out DIR | convert --model DIR --labels N [--seed S] --out DIR | convert --model DIR [--layers N] [--vocab-from FILE]... [--dtype D] --out DIR",
        options: [
            OptionSpec(name: "--model", value: "DIR", help: "a Hugging Face directory to give a new classifier head (with --labels) or to copy smaller (--layers, --vocab-from, --dtype)"),
            OptionSpec(name: "--labels", value: "N", help: "classes of the new sequence-classification head (initialised from --seed)"),
            OptionSpec(name: "--seed", value: "N", help: "seed of the new head's weights (default 1)"),
            OptionSpec(name: "--llama2c", value: "FILE", help: "the llama2.c legacy checkpoint (.bin)"),
            OptionSpec(name: "--tokenizer", value: "FILE", help: "its tokenizer.bin (copied into the directory)"),
            OptionSpec(name: "--layers", value: "N", help: "keep the first N layers of --model"),
            OptionSpec(name: "--vocab-from", value: "FILE", help: "keep only the vocabulary these texts use (repeatable; dataset files, label<TAB>text or plain lines)", repeatable: true),
            OptionSpec(name: "--dtype", value: "D", help: "stored precision of a smaller copy: f32 (default), f16 or bf16"),
            OptionSpec(name: "--out", value: "DIR", help: "the new directory (must not exist)"),
        ])

    static func run(_ args: ParsedArguments) throws -> Int32 {
        guard let out = args.string("--out") else { throw HeadAlignError.usage("--out DIR is required") }
        if let dir = args.string("--model"), args.has("--layers") || args.has("--vocab-from") || args.has("--dtype") {
            if args.has("--labels") { throw HeadAlignError.usage("--labels adds a head; make the smaller copy in a second convert") }
            // shrinkModel bounds --layers by the model's own count
            let layers = args.has("--layers") ? try args.int("--layers", default: 1, range: 1...100_000) : nil
            let texts = try args.has("--vocab-from") ? args.strings("--vocab-from").flatMap { try readTextLines($0).map(\.text) } : nil
            let dtype = SafetensorsDType(rawValue: try args.choice("--dtype", ["f32", "f16", "bf16"], default: "f32").uppercased())!
            let r = try shrinkModel(directory: dir, layers: layers, keepTexts: texts, dtype: dtype, to: out)
            print("wrote \(out): \(r.config.numHiddenLayers) layers, \(r.keptPieces) of \(r.originalPieces) vocabulary pieces, \(dtype.rawValue)")
            return 0
        }
        if let dir = args.string("--model") {
            guard args.has("--labels") else { throw HeadAlignError.usage("--model needs --labels N (the classifier head to add)") }
            let labels = try args.int("--labels", default: 2, range: 2...100_000)
            let seed = try args.uint64("--seed", default: 1)
            let config = try addClassifierHead(directory: dir, labels: labels, seed: seed, to: out)
            print("wrote \(out): \(config.architectures[0]) with a new \(labels)-class head (seed \(seed))")
            return 0
        }
        guard let path = args.string("--llama2c") else { throw HeadAlignError.usage("--llama2c FILE or --model DIR is required") }
        guard FileManager.default.fileExists(atPath: path) else { throw HeadAlignError.usage("--llama2c \(path): no such file") }
        var extra: [String: Data] = [:]
        if let tok = args.string("--tokenizer") {
            guard let data = FileManager.default.contents(atPath: tok) else { throw HeadAlignError.usage("--tokenizer \(tok): cannot read") }
            extra["tokenizer.bin"] = data
        }
        let model: Model<Float> = try loadLlama2c(path: path, backend: .naive)
        if let tok = args.string("--tokenizer") {  // check it fits the model before writing anything
            _ = try Llama2cTokenizer(path: tok, vocabSize: model.config.vocabSize)
        }
        try saveModel(convertToRotateHalf(model), to: out, dtype: .F32, extraFiles: extra)
        print("wrote \(out): config.json, model.safetensors (\(model.layout.tensors.count) tensors, \(model.layout.total) parameters)\(extra.isEmpty ? "" : ", tokenizer.bin")")
        return 0
    }
}
