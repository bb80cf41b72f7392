// HFTokenizer.swift: a Hugging Face `tokenizer.json` (the `tokenizers` library's format, what
// AutoTokenizer's fast tokenizers load) for headalign's vocab.txt tokenizers, so a model headalign
// trained or defended can be used from transformers with the same token ids. BERT WordPiece maps
// onto BertNormalizer + BertPreTokenizer + WordPiece + "[CLS] $A [SEP]"; the whole-word decoder
// vocabulary onto the same normalizer and pre-tokenizer + WordLevel + "[CLS] $A" ([CLS] is BOS).

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
