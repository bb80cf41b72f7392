// ForwardCommand.swift: `headalign forward`, one forward pass on sentences: tokens and outputs.

import Foundation
import HeadAlign
import HeadAlignLab

enum ForwardCommand: Command {
    static let spec = CommandSpec(
        name: "forward",
        summary: "run a model on sentences and print tokens and outputs",
        detail: """
            Tokenize each --text with the model's tokenizer and run one forward pass. Prints the token ids and
            pieces and, per sentence, the classifier's logits and prediction, the next-token prediction of a
            decoder's last position, or the first components of an encoder's [CLS] hidden state.
            """,
        usage: "forward (--model DIR | --llama2c FILE --tokenizer FILE) --text TEXT [--text TEXT]...",
        options: modelOptions + [
            OptionSpec(name: "--text", value: "TEXT", help: "a sentence (repeatable)", repeatable: true),
        ])

    static func run(_ args: ParsedArguments) throws -> Int32 {
        let texts = args.strings("--text")
        guard !texts.isEmpty else { throw HeadAlignError.usage("--text: give at least one sentence") }
        let (model, tokenizer, _) = try args.loadModel()
        let c = model.config
        var seqs: [TokenSequence] = []
        for t in texts {
            let (ids, truncated) = try tokenizer.encode(t, maxLength: c.maxPositionEmbeddings)
            if truncated { printError("headalign forward: warning: '\(t.prefix(40))…' truncated to \(ids.count) tokens") }
            seqs.append(TokenSequence(ids))
        }
        let batch = Batch(seqs)
        let rows = model.outputs(batch)
        for (b, s) in seqs.enumerated() {
            print("[\(b)] \(texts[b])")
            print("    ids: \(s.tokens.map(String.init).joined(separator: " "))")
            print("    tokens: \(tokenizer.pieces(s.tokens).joined(separator: " | "))")
            if c.numLabels > 0 {
                let logits = rows[b]
                let best = logits.indices.max { logits[$0] < logits[$1] }!
                print("    logits: " + logits.map { String(format: "%.6f", $0) }.joined(separator: " ") + "  -> class \(best)")
            } else if c.hasLMHead {
                let last = rows[batch.rowOffset[b] + s.count - 1]
                let best = last.indices.max { last[$0] < last[$1] }!
                print("    next token: \(best) (\(tokenizer.pieces([best])[0].debugDescription)), logit \(String(format: "%.6f", last[best]))")
            } else {
                print("    [CLS] hidden[0..<5]: " + rows[batch.rowOffset[b]].prefix(5).map { String(format: "%.6f", $0) }.joined(separator: " "))
            }
        }
        return 0
    }
}
