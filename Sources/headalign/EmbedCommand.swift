// EmbedCommand.swift: `headalign embed`, sentence embeddings and their cosine similarities.

import Foundation
import HeadAlign
import HeadAlignLab

enum EmbedCommand: Command {
    static let spec = CommandSpec(
        name: "embed",
        summary: "sentence embeddings (mean pooling, L2 norm) and their similarity matrix",
        detail: """
            Embed each --text with a BERT encoder as sentence-transformers does for all-MiniLM-L6-v2: mean of
            the last hidden states over the tokens ([CLS] and [SEP] included), L2-normalised. Prints the
            tokens, the first components and the cosine-similarity matrix.
            """,
        usage: "embed --model DIR --text TEXT [--text TEXT]... [--components N]",
        options: modelOptions + [
            OptionSpec(name: "--text", value: "TEXT", help: "a sentence (repeatable)", repeatable: true),
            OptionSpec(name: "--components", value: "N", help: "embedding components to print (default 5)"),
        ])

    static func run(_ args: ParsedArguments) throws -> Int32 {
        let texts = args.strings("--text")
        guard !texts.isEmpty else { throw HeadAlignError.usage("--text: give at least one sentence") }
        let k = try args.int("--components", default: 5, range: 0...100_000)
        let (model, tokenizer, _) = try args.loadModel()
        guard model.config.family == .bert, model.config.numLabels == 0 else {
            throw HeadAlignError.usage("embed needs a BERT encoder without a classifier head")
        }
        var seqs: [TokenSequence] = []
        for t in texts {
            let (ids, truncated) = try tokenizer.encode(t, maxLength: model.config.maxPositionEmbeddings)
            if truncated { printError("headalign embed: warning: '\(t.prefix(40))…' truncated to \(ids.count) tokens") }
            seqs.append(TokenSequence(ids))
        }
        let e = model.embeddings(Batch(seqs))
        for (i, s) in seqs.enumerated() {
            print("[\(i)] \(texts[i])")
            print("    ids: \(s.tokens.map(String.init).joined(separator: " "))")
            print("    tokens: \(tokenizer.pieces(s.tokens).joined(separator: " "))")
            print("    embedding[0..<\(min(k, e[i].count))]: " + e[i].prefix(k).map { String(format: "%.6f", $0) }.joined(separator: " "))
        }
        print("cosine similarity:")
        for a in e { print("  " + e.map { String(format: "%.4f", dot(a, $0)) }.joined(separator: "  ")) }
        return 0
    }
}
