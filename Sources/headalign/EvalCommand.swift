// EvalCommand.swift: `headalign eval`, clean accuracy and attack success rate of a classifier.

import Foundation
import HeadAlign

enum EvalCommand: Command {
    static let spec = CommandSpec(
        name: "eval",
        summary: "CA and ASR of a classifier on clean and triggered test files",
        detail: """
            CA: accuracy on --clean. ASR: among --triggered inputs whose true label is not --target, the fraction
            classified as --target. Prints counts; --json FILE also writes them as JSON (atomically).
            """,
        usage: "eval --model DIR [--clean FILE] [--triggered FILE --target N] [--json FILE]",
        options: modelOptions + [
            OptionSpec(name: "--clean", value: "FILE", help: "clean labelled test set"),
            OptionSpec(name: "--triggered", value: "FILE", help: "triggered test set (true labels)"),
            OptionSpec(name: "--target", value: "N", help: "the attack's target label (default 1)"),
            OptionSpec(name: "--json", value: "FILE", help: "also write the numbers as JSON"),
            OptionSpec(name: "--batch", value: "B", help: "sequences per forward pass (default 32)"),
        ])

    static func run(_ args: ParsedArguments) throws -> Int32 {
        guard args.has("--clean") || args.has("--triggered") else { throw HeadAlignError.usage("give --clean FILE and/or --triggered FILE") }
        let (model, tokenizer, _) = try args.loadModel()
        let c = model.config
        guard c.numLabels > 0 else { throw HeadAlignError.usage("eval needs a classifier (the model has no sequence-classification head)") }
        let target = try args.int("--target", default: 1, range: 0...(c.numLabels - 1))
        let batchSize = try args.int("--batch", default: 32, range: 1...4096)
        func predict(_ path: String) throws -> (predictions: [Int], labels: [Int]) {
            let data = try readLabeledTexts(path: path, numLabels: c.numLabels)
            var predictions: [Int] = []
            for start in stride(from: 0, to: data.count, by: batchSize) {
                let chunk = data[start..<min(data.count, start + batchSize)]
                let seqs = try chunk.map { TokenSequence(try tokenizer.encode($0.text, maxLength: c.maxPositionEmbeddings).ids) }
                predictions += model.outputs(Batch(seqs)).map { row in row.indices.max { row[$0] < row[$1] }! }
            }
            return (predictions, data.map(\.label))
        }
        var members: [(String, JSONOut)] = [("model", .string(args.string("--model") ?? "")), ("target", .int(target))]
        if let path = args.string("--clean") {
            let (p, l) = try predict(path)
            let ca = cleanAccuracy(predictions: p, labels: l)
            print(String(format: "CA  %.4f (%d / %d correct on %@)", ca.value, ca.correct, ca.total, path))
            members += [("ca", .number(ca.value)), ("ca_correct", .int(ca.correct)), ("ca_total", .int(ca.total))]
        }
        if let path = args.string("--triggered") {
            let (p, l) = try predict(path)
            let asr = attackSuccessRate(predictions: p, trueLabels: l, target: target)
            print(String(format: "ASR %.4f (%d / %d non-target inputs classified as %d on %@)", asr.value, asr.hits, asr.total, target, path))
            members += [("asr", .number(asr.value)), ("asr_hits", .int(asr.hits)), ("asr_total", .int(asr.total))]
        }
        if let json = args.string("--json") { try writeAtomically(Data(JSONOut.object(members).text.utf8), to: json) }
        return 0
    }
}
