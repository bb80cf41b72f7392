// TokenizerJSONCommand.swift: `headalign tokenizer-json`, a Hugging Face tokenizer.json for a model
// directory's vocab.txt or llama2.c tokenizer.bin (HFTokenizer.swift), so transformers'
// AutoTokenizer gives the same ids.

import Foundation
import HeadAlign
import HeadAlignLab

enum TokenizerJSONCommand: Command {
    static let spec = CommandSpec(
        name: "tokenizer-json",
        summary: "write a Hugging Face tokenizer.json for a model's vocab.txt or tokenizer.bin (AutoTokenizer gives the same ids)",
        detail: """
            BERT WordPiece: BertNormalizer + BertPreTokenizer + WordPiece + '[CLS] $A [SEP]'. A Llama model's
            whole-word vocabulary (headalign-trained): the same normalizer and pre-tokenizer + WordLevel + '[CLS] $A'
            ([CLS] is BOS, [SEP] EOS); without --out its tokenizer_config.json also gets tokenizer_class
            PreTrainedTokenizerFast and the special tokens (other keys kept), which AutoTokenizer needs. llama2.c's BPE
            (tokenizer.bin, e.g. stories260K): BPE whose merges are the pairs that concatenate to a piece, by that
            piece's score, with byte fallback, a prepended " " (the pieces' literal space) and '<s> $A'; its
            tokenizer_config.json gets <s>, </s>, <unk> likewise. Prints the ids of --text with headalign's own
            tokenizer, to compare with AutoTokenizer's.
            """,
        usage: "tokenizer-json --model DIR [--out FILE] [--text TEXT]...",
        options: [
            OptionSpec(name: "--model", value: "DIR", help: "a model directory with vocab.txt or tokenizer.bin"),
            OptionSpec(name: "--out", value: "FILE", help: "write tokenizer.json here (default DIR/tokenizer.json, and DIR's tokenizer_config.json updated)"),
            OptionSpec(name: "--text", value: "TEXT", help: "print this text's ids (repeatable)", repeatable: true),
        ])

    static func out(_ v: JSONValue) -> JSONOut {
        switch v {
        case .object(let m): return .object(m.map { ($0.0, out($0.1)) })
        case .array(let a): return .array(a.map(out))
        case .string(let s): return .string(s)
        case .integer(let i): return .int(i)
        case .bigInteger(let s): return .number(Double(s) ?? .nan)
        case .float(let x): return .number(x)
        case .bool(let b): return .bool(b)
        case .null: return .null
        }
    }

    static func run(_ args: ParsedArguments) throws -> Int32 {
        guard let dir = args.string("--model") else { throw HeadAlignError.usage("--model DIR is required") }
        let config = try ModelConfig.load(contentsOf: URL(fileURLWithPath: dir + "/config.json"))
        // vocab.txt first, then tokenizer.bin, as AnyModel.tokenizer reads a directory
        let tokenizer = try AnyModel.tokenizer(for: .directory(dir), config: config)
        let path = args.string("--out") ?? dir + "/tokenizer.json"
        let json: JSONOut, what: String, specials: [(String, String)]
        switch tokenizer {
        case .wordPiece(let t):
            (json, what, specials) = (huggingFaceTokenizerJSON(t, wholeWords: false), "WordPiece, \(t.vocab.count) tokens", [])
        case .words(let t):
            (json, what) = (huggingFaceTokenizerJSON(t, wholeWords: true), "WordLevel, whole words, \(t.vocab.count) tokens")
            specials = [("bos_token", "[CLS]"), ("eos_token", "[SEP]"), ("unk_token", "[UNK]"), ("pad_token", "[PAD]")]
        case .llama2c(let t):
            json = huggingFaceTokenizerJSON(t)
            let names = Dictionary(huggingFaceSpecialTokens(t).map { ($0.id, $0.name) }, uniquingKeysWith: { a, _ in a })
            what = "BPE, llama2.c, \(t.pieces.count) tokens, byte fallback"
            specials = [("bos_token", names[t.bos]), ("eos_token", names[t.eos]), ("unk_token", names[0])].compactMap { k, v in v.map { (k, $0) } }
        case .none:
            throw HeadAlignError.usage("--model \(dir): no vocab.txt or tokenizer.bin")
        }
        try writeAtomically(Data(json.text.utf8), to: path)
        print("wrote \(path) (\(what))")
        if !specials.isEmpty && !args.has("--out") {
            let cp = dir + "/tokenizer_config.json"
            var members: [(String, JSONOut)] = []
            if let d = FileManager.default.contents(atPath: cp) {
                let v = try d.withUnsafeBytes { try JSONValue.parse($0.bindMemory(to: UInt8.self)) }
                if case .object(let m) = v { members = m.map { ($0.0, out($0.1)) } }
            }
            let keys = Set(members.map(\.0))
            for (k, v) in [("tokenizer_class", "PreTrainedTokenizerFast")] + specials where !keys.contains(k) {
                members.append((k, .string(v)))
            }
            try writeAtomically(Data(JSONOut.object(members).text.utf8), to: cp)
            print("updated \(cp) (tokenizer_class PreTrainedTokenizerFast, special tokens)")
        }
        for text in args.strings("--text") {
            print("\(text)\t" + (try tokenizer.encode(text, maxLength: Int.max / 2).ids.map(String.init).joined(separator: " ")))
        }
        return 0
    }
}
