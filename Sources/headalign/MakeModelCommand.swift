// MakeModelCommand.swift: `headalign make-model`, a random-weight checkpoint of a preset's real
// shape in the real sharded layout (RandomCheckpoint.swift), for the 7B path without real weights.

import Foundation
import HeadAlign
import HeadAlignLab

enum MakeModelCommand: Command {
    static let spec = CommandSpec(
        name: "make-model",
        summary: "write a random-weight checkpoint of a preset's shape (sharded safetensors, F16/BF16/F32)",
        detail: """
            The Hugging Face layout of the preset (config.json, model-0000X-of-0000Y.safetensors shards of at most
            --shard-gb GB, model.safetensors.index.json), weights uniform with the preset's initializer standard
            deviation, norms 1, written tensor by tensor (never the whole model in memory). --layers keeps the first
            N layers (a small variant of the real shape for tests). Checks the free disk space first.
            """,
        usage: "make-model --preset NAME --out DIR [--dtype bf16|f16|f32] [--seed S] [--layers N] [--shard-gb G]",
        options: [
            OptionSpec(name: "--preset", value: "NAME", help: "the shape (\(ModelConfig.presetNames.joined(separator: ", ")))"),
            OptionSpec(name: "--out", value: "DIR", help: "the new directory"),
            OptionSpec(name: "--dtype", value: "D", help: "bf16 (default), f16 or f32"),
            OptionSpec(name: "--seed", value: "S", help: "seed of the weights (default 1)"),
            OptionSpec(name: "--layers", value: "N", help: "keep only the first N layers"),
            OptionSpec(name: "--shard-gb", value: "G", help: "largest shard in GB (default 5)"),
        ])

    static func run(_ args: ParsedArguments) throws -> Int32 {
        guard let name = args.string("--preset") else { throw HeadAlignError.usage("--preset NAME is required") }
        guard let out = args.string("--out") else { throw HeadAlignError.usage("--out DIR is required") }
        var config = try ModelConfig.preset(name)
        if args.has("--layers") { config.numHiddenLayers = try args.int("--layers", default: 1, range: 1...config.numHiddenLayers) }
        let dtype: SafetensorsDType = ["bf16": .BF16, "f16": .F16, "f32": .F32][try args.choice("--dtype", ["bf16", "f16", "f32"], default: "bf16")]!
        let seed = try args.uint64("--seed", default: 1)
        let shardGB = try args.double("--shard-gb", default: 5, range: 0.0001...1000)
        let start = monotonicSeconds()
        try writeRandomCheckpoint(config: config, dtype: dtype, seed: seed, to: out, shardBytes: Int(shardGB * 1e9),
                                  progress: { printError("headalign make-model: " + $0) })
        let bytes = ParameterLayout(config: config).total * dtype.bits / 8
        print(String(format: "wrote %@: %@, %d layers, %@, %.2f GB in %.1f s", out, name, config.numHiddenLayers, dtype.rawValue,
                     Double(bytes) / 1e9, monotonicSeconds() - start))
        return 0
    }
}
