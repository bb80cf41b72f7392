// HFTokenizer.swift: a Hugging Face `tokenizer.json` (the `tokenizers` library's format, what
// AutoTokenizer's fast tokenizers load) for headalign's vocab.txt tokenizers, so a model headalign
// trained or defended can be used from transformers with the same token ids. BERT WordPiece maps
// onto BertNormalizer + BertPreTokenizer + WordPiece + "[CLS] $A [SEP]"; the whole-word decoder
// vocabulary onto the same normalizer and pre-tokenizer + WordLevel + "[CLS] $A" ([CLS] is BOS);
// llama2.c's BPE (tokenizer.bin) onto BPE with merges by score and byte fallback + "<s> $A".

import Foundation

/// `tokenizer.json` for a vocab.txt tokenizer; `wholeWords`: the decoders' whole-word vocabulary
/// (unknown words -> [UNK], BOS = [CLS], no [SEP] after a prompt) instead of BERT's WordPiece.
public func huggingFaceTokenizerJSON(_ t: WordPieceTokenizer, wholeWords: Bool) -> JSONOut {
    let specials = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"].compactMap { name in t.ids[name].map { (name, $0) } }
    let added: JSONOut = .array(specials.map { name, id in
        .object([("id", .int(id)), ("content", .string(name)), ("single_word", .bool(false)), ("lstrip", .bool(false)),
                 ("rstrip", .bool(false)), ("normalized", .bool(false)), ("special", .bool(true))])
    })
    // first occurrence of a duplicated vocab line wins, as in WordPieceTokenizer
    let vocab: JSONOut = .object(t.vocab.enumerated().filter { t.ids[$0.element] == $0.offset }.map { ($0.element, .int($0.offset)) })
    func piece(_ name: String, _ id: Int) -> [(String, JSONOut)] {
        [(name, .object([("id", .string(name)), ("ids", .array([.int(id)])), ("tokens", .array([.string(name)]))]))]
    }
    func special(_ name: String) -> JSONOut { .object([("SpecialToken", .object([("id", .string(name)), ("type_id", .int(0))]))]) }
    let sequence: JSONOut = .object([("Sequence", .object([("id", .string("A")), ("type_id", .int(0))]))])
    let single: [JSONOut] = wholeWords ? [special("[CLS]"), sequence] : [special("[CLS]"), sequence, special("[SEP]")]
    let pair: [JSONOut] = wholeWords
        ? [special("[CLS]"), sequence, .object([("Sequence", .object([("id", .string("B")), ("type_id", .int(0))]))])]
        : [special("[CLS]"), sequence, special("[SEP]"), .object([("Sequence", .object([("id", .string("B")), ("type_id", .int(1))]))]),
           .object([("SpecialToken", .object([("id", .string("[SEP]")), ("type_id", .int(1))]))])]
    let model: JSONOut = wholeWords
        ? .object([("type", .string("WordLevel")), ("vocab", vocab), ("unk_token", .string("[UNK]"))])
        : .object([("type", .string("WordPiece")), ("unk_token", .string("[UNK]")), ("continuing_subword_prefix", .string("##")),
                   ("max_input_chars_per_word", .int(t.maxCharsPerWord)), ("vocab", vocab)])
    return .object([
        ("version", .string("1.0")), ("truncation", .null), ("padding", .null), ("added_tokens", added),
        ("normalizer", .object([("type", .string("BertNormalizer")), ("clean_text", .bool(true)),
                                ("handle_chinese_chars", .bool(t.splitChinese)), ("strip_accents", .bool(t.stripAccents)),
                                ("lowercase", .bool(t.lowercase))])),
        ("pre_tokenizer", .object([("type", .string("BertPreTokenizer"))])),
        ("post_processor", .object([("type", .string("TemplateProcessing")), ("single", .array(single)), ("pair", .array(pair)),
                                    ("special_tokens", .object(piece("[CLS]", t.cls) + (wholeWords ? [] : piece("[SEP]", t.sep))))])),
        ("decoder", wholeWords ? .null : .object([("type", .string("WordPiece")), ("prefix", .string("##")), ("cleanup", .bool(true))])),
        ("model", model),
    ])
}

/// `tokenizer.json` for llama2.c's BPE (`tokenizer.bin`), as Hugging Face's LlamaConverter maps
/// SentencePiece BPE: model BPE with `vocab` = piece -> id and `merges` = every pair of pieces
/// whose concatenation is a piece, by that piece's score descending (llama2.c merges the pair whose
/// merged piece scores highest; ties by id), `byte_fallback` onto the `<0xHH>` pieces, a normalizer
/// that prepends the space piece (llama2.c's pieces hold a literal " ", not SentencePiece's "▁"),
/// no pre-tokenizer, and `<s> $A` (BOS). The special pieces (llama2.c writes "\n<s>\n") are named
/// `<unk>`, `<s>`, `</s>`. Pieces that are not UTF-8 are left out (no text reaches them).
public func huggingFaceTokenizerJSON(_ t: Llama2cTokenizer) -> JSONOut {
    var names: [String?] = t.pieces.map { String(bytes: $0, encoding: .utf8) }
    let special = huggingFaceSpecialTokens(t)
    for (name, id) in special { names[id] = name }
    // the JSON vocab: the first id of a duplicated piece wins, as in llama2.c's lookup
    var vocabIDs: [String: Int] = [:]
    var vocab: [(String, JSONOut)] = []
    for (i, n) in names.enumerated() {
        guard let n, vocabIDs[n] == nil else { continue }
        vocabIDs[n] = i
        vocab.append((n, .int(i)))
    }
    var ids: [[UInt8]: Int] = [:]
    for (i, p) in t.pieces.enumerated() where ids[p] == nil { ids[p] = i }
    let isSpecial = Set(special.map(\.id))
    func plain(_ id: Int) -> Bool { !isSpecial.contains(id) && names[id] != nil && vocabIDs[names[id]!] == id }
    var merges: [(score: Float, id: Int, split: Int, a: String, b: String)] = []
    for (id, p) in t.pieces.enumerated() where p.count > 1 && plain(id) && ids[p] == id {
        for k in 1..<p.count {
            guard let a = ids[Array(p[..<k])], let b = ids[Array(p[k...])], plain(a), plain(b) else { continue }
            merges.append((t.scores[id], id, k, names[a]!, names[b]!))
        }
    }
    merges.sort { ($0.score, $1.id, $1.split) > ($1.score, $0.id, $0.split) }  // score down, then id, split up
    let unk = special.first { $0.id == 0 }?.name
    let added: JSONOut = .array(special.sorted { $0.id < $1.id }.map { name, id in
        .object([("id", .int(id)), ("content", .string(name)), ("single_word", .bool(false)), ("lstrip", .bool(false)),
                 ("rstrip", .bool(false)), ("normalized", .bool(false)), ("special", .bool(true))])
    })
    let bos = names[t.bos] ?? "<s>"
    func tok(_ name: String, _ type: Int) -> JSONOut { .object([("SpecialToken", .object([("id", .string(name)), ("type_id", .int(type))]))]) }
    func seq(_ id: String, _ type: Int) -> JSONOut { .object([("Sequence", .object([("id", .string(id)), ("type_id", .int(type))]))]) }
    let hasSpace = ids[[0x20]] != nil  // llama2.c adds the space piece before a non-empty text
    return .object([
        ("version", .string("1.0")), ("truncation", .null), ("padding", .null), ("added_tokens", added),
        ("normalizer", hasSpace ? .object([("type", .string("Prepend")), ("prepend", .string(" "))]) : .null),
        ("pre_tokenizer", .null),
        ("post_processor", .object([
            ("type", .string("TemplateProcessing")), ("single", .array([tok(bos, 0), seq("A", 0)])),
            ("pair", .array([tok(bos, 0), seq("A", 0), tok(bos, 1), seq("B", 1)])),
            ("special_tokens", .object([(bos, .object([("id", .string(bos)), ("ids", .array([.int(t.bos)])), ("tokens", .array([.string(bos)]))]))])),
        ])),
        ("decoder", .object([("type", .string("Sequence")), ("decoders", .array([
            .object([("type", .string("ByteFallback"))]), .object([("type", .string("Fuse"))]),
            .object([("type", .string("Strip")), ("content", .string(" ")), ("start", .int(1)), ("stop", .int(0))]),
        ]))])),
        ("model", .object([
            ("type", .string("BPE")), ("dropout", .null), ("unk_token", unk.map { .string($0) } ?? .null),
            ("continuing_subword_prefix", .null), ("end_of_word_suffix", .null), ("fuse_unk", .bool(true)),
            ("byte_fallback", .bool(true)), ("ignore_merges", .bool(false)), ("vocab", .object(vocab)),
            ("merges", .array(merges.map { .array([.string($0.a), .string($0.b)]) })),
        ])),
    ])
}

/// The names of llama2.c's special pieces in `tokenizer.json` ("\n<s>\n" -> `<s>`; `<unk>`, `<s>`,
/// `</s>` when a trimmed piece is empty), by id; a name that is another piece is left out.
public func huggingFaceSpecialTokens(_ t: Llama2cTokenizer) -> [(name: String, id: Int)] {
    var ids: [[UInt8]: Int] = [:]
    for (i, p) in t.pieces.enumerated() where ids[p] == nil { ids[p] = i }
    var special: [(name: String, id: Int)] = []
    for (id, fallback) in [(0, "<unk>"), (t.bos, "<s>"), (t.eos, "</s>")] where id < t.pieces.count {
        let trimmed = String(bytes: t.pieces[id], encoding: .utf8).map { $0.trimmingCharacters(in: .whitespacesAndNewlines) } ?? ""
        let name = trimmed.isEmpty ? fallback : trimmed
        if let other = ids[Array(name.utf8)], other != id { continue }
        special.append((name, id))
    }
    return special
}
