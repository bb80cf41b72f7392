// Tokenizer.swift: BERT's WordPiece (basic tokenizer + greedy longest match), llama2.c's BPE
// (merges by score, byte fallback), and building a whole-word vocabulary from a training set for
// the tiny models headalign trains (saved as a WordPiece vocab.txt, so Hugging Face's
// BertTokenizer reads it too).

import Foundation

// MARK: - WordPiece

public final class WordPieceTokenizer: @unchecked Sendable {
    public let vocab: [String]
    public let ids: [String: Int]
    public let lowercase: Bool
    public let stripAccents: Bool
    public let splitChinese: Bool
    public let unk: Int, cls: Int, sep: Int, pad: Int
    /// Longest word WordPiece tries to split (longer words become [UNK], as in BERT).
    public let maxCharsPerWord = 100

    public init(vocab: [String], lowercase: Bool = true, stripAccents: Bool? = nil, splitChinese: Bool = true,
                source: String = "vocab") throws {
        guard !vocab.isEmpty else { throw HeadAlignError.badInput("\(source): empty vocabulary") }
        var ids: [String: Int] = [:]
        for (i, t) in vocab.enumerated() where ids[t] == nil { ids[t] = i }
        func special(_ t: String) throws -> Int {
            guard let i = ids[t] else { throw HeadAlignError.badInput("\(source): no \(t) token") }
            return i
        }
        self.vocab = vocab
        self.ids = ids
        self.lowercase = lowercase
        self.stripAccents = stripAccents ?? lowercase  // BERT: unset follows lower-casing
        self.splitChinese = splitChinese
        unk = try special("[UNK]"); cls = try special("[CLS]"); sep = try special("[SEP]")
        pad = ids["[PAD]"] ?? 0
    }

    /// Reads `vocab.txt` (one token per line, id = line number) and, when present beside it,
    /// `tokenizer_config.json` (`do_lower_case`, `strip_accents`, `tokenize_chinese_chars`).
    /// `vocabSize`, the model's `vocab_size`, bounds the entries: an id at or past it would index
    /// past the embedding table. Fewer entries than `vocab_size` are fine: checkpoints pad the
    /// embedding (to a multiple of 64 or 128, for speed), and rows no token maps to are unused.
    /// A repeated entry is an error: two ids for one token means the file is not the vocabulary
    /// the model was trained with (the second id could never be produced).
    public convenience init(directory dir: String, vocabSize: Int? = nil) throws {
        let path = dir + "/vocab.txt"
        guard let data = FileManager.default.contents(atPath: path) else { throw HeadAlignError.badInput("\(path): cannot read") }
        guard let text = String(data: data, encoding: .utf8) else { throw HeadAlignError.badInput("\(path): not UTF-8") }
        var lines = textLines(text)
        if lines.last == "" { lines.removeLast() }
        if let vocabSize, lines.count > vocabSize {
            throw HeadAlignError.badInput("\(path): \(lines.count) entries, more than config.json's vocab_size \(vocabSize)")
        }
        var firstLine: [String: Int] = [:]
        for (n, token) in lines.enumerated() {
            if let earlier = firstLine[token] {
                throw HeadAlignError.badInput("\(path):\(n + 1): entry '\(token.prefix(40))' repeats line \(earlier + 1)")
            }
            firstLine[token] = n
        }
        var lower = true, strip: Bool? = nil, chinese = true
        let configPath = dir + "/tokenizer_config.json"
        if let c = FileManager.default.contents(atPath: configPath) {
            let json: JSONValue
            do { json = try c.withUnsafeBytes { try JSONValue.parse($0.bindMemory(to: UInt8.self)) } } catch {
                throw HeadAlignError.badInput("\(configPath): not valid JSON (\(error))")
            }
            if case .bool(let b)? = json["do_lower_case"] { lower = b }
            if case .bool(let b)? = json["strip_accents"] { strip = b }
            if case .bool(let b)? = json["tokenize_chinese_chars"] { chinese = b }
        }
        try self.init(vocab: lines, lowercase: lower, stripAccents: strip, splitChinese: chinese, source: path)
    }

    /// Reads the WordPiece vocabulary of a Hugging Face `tokenizer.json` (`model.type` WordPiece,
    /// `model.vocab` token -> id; `normalizer` BertNormalizer's `lowercase`, `strip_accents`,
    /// `handle_chinese_chars`), for directories saved without `vocab.txt` (transformers 5 writes
    /// only `tokenizer.json`). The ids must be 0..<n, each once, as in a `vocab.txt`.
    public convenience init(tokenizerJSON path: String, vocabSize: Int? = nil) throws {
        guard let data = FileManager.default.contents(atPath: path) else { throw HeadAlignError.badInput("\(path): cannot read") }
        let json: JSONValue
        do { json = try data.withUnsafeBytes { try JSONValue.parse($0.bindMemory(to: UInt8.self)) } } catch {
            throw HeadAlignError.badInput("\(path): not valid JSON (\(error))")
        }
        guard case .string(let type)? = json["model"]?["type"], type == "WordPiece" else {
            throw HeadAlignError.badInput("\(path): model.type is not WordPiece (headalign reads WordPiece tokenizer.json files; give vocab.txt)")
        }
        guard case .object(let entries)? = json["model"]?["vocab"], !entries.isEmpty else {
            throw HeadAlignError.badInput("\(path): model.vocab is not a non-empty object")
        }
        if let vocabSize, entries.count > vocabSize {
            throw HeadAlignError.badInput("\(path): \(entries.count) entries, more than config.json's vocab_size \(vocabSize)")
        }
        var vocab = [String?](repeating: nil, count: entries.count)
        for (token, value) in entries {
            guard case .integer(let id) = value, id >= 0, id < entries.count else {
                throw HeadAlignError.badInput("\(path): model.vocab['\(token.prefix(40))'] is not an id in 0..<\(entries.count)")
            }
            guard vocab[id] == nil else { throw HeadAlignError.badInput("\(path): id \(id) is given to two tokens") }
            vocab[id] = token
        }
        if let prefix = json["model"]?["continuing_subword_prefix"], prefix != .null, prefix != .string("##") {
            throw HeadAlignError.badInput("\(path): model.continuing_subword_prefix is not \"##\" (headalign's WordPiece uses ##)")
        }
        var lower = true, strip: Bool? = nil, chinese = true
        if let n = json["normalizer"], n != .null {
            guard n["type"] == .string("BertNormalizer") else {
                throw HeadAlignError.badInput("\(path): normalizer is not a BertNormalizer (headalign reads BERT's; give vocab.txt and tokenizer_config.json)")
            }
            if case .bool(let b)? = n["lowercase"] { lower = b }
            if case .bool(let b)? = n["strip_accents"] { strip = b }
            if case .bool(let b)? = n["handle_chinese_chars"] { chinese = b }
        }
        try self.init(vocab: vocab.map { $0! }, lowercase: lower, stripAccents: strip, splitChinese: chinese, source: path)
    }

    /// The basic tokenizer: clean, split CJK characters, lower-case, strip accents, split off
    /// punctuation, split on whitespace.
    public func basicTokens(_ text: String) -> [String] {
        var cleaned = String.UnicodeScalarView()
        for u in text.unicodeScalars {
            if u.value == 0 || u.value == 0xFFFD || isControl(u) { continue }
            if isWhitespace(u) { cleaned.append(" "); continue }
            if splitChinese && isChinese(u) { cleaned.append(" "); cleaned.append(u); cleaned.append(" "); continue }
            cleaned.append(u)
        }
        var out: [String] = []
        for word in String(cleaned).split(separator: " ", omittingEmptySubsequences: true) {
            var w = String(word)
            if lowercase { w = w.lowercased() }
            if stripAccents {
                w = String(String.UnicodeScalarView(w.decomposedStringWithCanonicalMapping.unicodeScalars.filter {
                    $0.properties.generalCategory != .nonspacingMark
                }))
            }
            var current = String.UnicodeScalarView()
            for u in w.unicodeScalars {
                if isPunctuation(u) {
                    if !current.isEmpty { out.append(String(current)); current = String.UnicodeScalarView() }
                    out.append(String(u))
                } else {
                    current.append(u)
                }
            }
            if !current.isEmpty { out.append(String(current)) }
        }
        return out
    }

    /// Greedy longest-match-first WordPiece of one basic token; continuation pieces start with ##.
    public func wordPieces(_ word: String) -> [Int] {
        let chars = Array(word.unicodeScalars)
        if chars.count > maxCharsPerWord { return [unk] }
        var pieces: [Int] = []
        var start = 0
        while start < chars.count {
            var end = chars.count
            var found: Int? = nil
            while start < end {
                var piece = String(String.UnicodeScalarView(chars[start..<end]))
                if start > 0 { piece = "##" + piece }
                if let id = ids[piece] { found = id; break }
                end -= 1
            }
            guard let id = found else { return [unk] }
            pieces.append(id)
            start = end
        }
        return pieces
    }

    /// `[CLS] pieces [SEP]`, truncated to `maxLength` tokens (the [SEP] kept). Returns whether
    /// it truncated.
    public func encode(_ text: String, maxLength: Int = 512) -> (ids: [Int], truncated: Bool) {
        var body = basicTokens(text).flatMap(wordPieces)
        let room = max(0, maxLength - 2)
        let truncated = body.count > room
        if truncated { body = Array(body.prefix(room)) }
        return ([cls] + body + [sep], truncated)
    }

    public func token(_ id: Int) -> String { id >= 0 && id < vocab.count ? vocab[id] : "<\(id)>" }
}

// Character classes as BERT defines them.
func isWhitespace(_ u: Unicode.Scalar) -> Bool {
    u == " " || u == "\t" || u == "\n" || u == "\r" || u.properties.generalCategory == .spaceSeparator
}

func isControl(_ u: Unicode.Scalar) -> Bool {
    if u == "\t" || u == "\n" || u == "\r" { return false }
    let c = u.properties.generalCategory
    return c == .control || c == .format
}

func isPunctuation(_ u: Unicode.Scalar) -> Bool {
    let v = u.value
    if (33...47).contains(v) || (58...64).contains(v) || (91...96).contains(v) || (123...126).contains(v) { return true }
    switch u.properties.generalCategory {
    case .connectorPunctuation, .dashPunctuation, .openPunctuation, .closePunctuation, .initialPunctuation,
         .finalPunctuation, .otherPunctuation:
        return true
    default: return false
    }
}

func isChinese(_ u: Unicode.Scalar) -> Bool {
    let v = u.value
    return (0x4E00...0x9FFF).contains(v) || (0x3400...0x4DBF).contains(v) || (0x20000...0x2A6DF).contains(v)
        || (0x2A700...0x2B73F).contains(v) || (0x2B740...0x2B81F).contains(v) || (0x2B820...0x2CEAF).contains(v)
        || (0xF900...0xFAFF).contains(v) || (0x2F800...0x2FA1F).contains(v)
}

// MARK: - Whole-word vocabularies for the tiny models

/// A vocabulary of whole words from a training set: special tokens first ([PAD] [UNK] [CLS] [SEP]
/// [MASK]), then the words by descending count (ties alphabetical), at most `size` entries in all.
/// Words are the basic tokenizer's (lower-cased, punctuation split off), so WordPiece over this
/// vocabulary is word-level tokenization.
public func buildWordVocabulary(_ texts: [String], size: Int) throws -> [String] {
    let specials = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]
    let basic = try WordPieceTokenizer(vocab: specials)
    var counts: [String: Int] = [:]
    for t in texts { for w in basic.basicTokens(t) { counts[w, default: 0] += 1 } }
    let words = counts.sorted { $0.value != $1.value ? $0.value > $1.value : $0.key < $1.key }.map(\.key)
    return specials + words.filter { !specials.contains($0) }.prefix(max(0, size - specials.count))
}

// MARK: - llama2.c BPE

/// llama2.c's tokenizer (`tokenizer.bin`): max token length, then per id a float score, a length
/// and the piece's bytes. Encoding as llama2.c's `encode`: optional BOS, a leading space piece,
/// each UTF-8 character looked up (or its bytes as `<0xHH>` fallback ids 3 + byte), then the
/// adjacent pair whose merge has the highest score is merged until none is in the vocabulary.
public final class Llama2cTokenizer: @unchecked Sendable {
    public let pieces: [[UInt8]]
    public let scores: [Float]
    private let lookup: [[UInt8]: Int]
    public let bos = 1, eos = 2
    /// The most UTF-8 bytes of a text that are tokenized: `contextLength` tokens of at most
    /// `maxBytesPerToken` bytes each, plus a margin; a longer text is cut first (what is cut could
    /// not reach the context anyway), so a 10 MB line costs as much as a context's worth.
    public let maxTextBytes: Int
    /// A generous bound of the bytes one token covers (llama2.c's longest pieces are far shorter).
    public static let maxBytesPerToken = 64

    public init(path: String, vocabSize: Int, contextLength: Int = 4096) throws {
        guard let data = FileManager.default.contents(atPath: path) else { throw HeadAlignError.badInput("\(path): cannot read") }
        var pieces: [[UInt8]] = [], scores: [Float] = []
        var o = 4
        func need(_ n: Int) throws {
            guard o + n <= data.count else { throw HeadAlignError.badInput("\(path): ends inside token \(pieces.count) (\(data.count) bytes)") }
        }
        try need(0)
        guard data.count >= 4 else { throw HeadAlignError.badInput("\(path): shorter than its 4-byte header") }
        for _ in 0..<vocabSize {
            try need(8)
            let score = data.withUnsafeBytes { Float(bitPattern: $0.loadUnaligned(fromByteOffset: o, as: UInt32.self)) }
            let len = Int(data.withUnsafeBytes { Int32(littleEndian: $0.loadUnaligned(fromByteOffset: o + 4, as: Int32.self)) })
            o += 8
            guard len >= 0, len <= 1 << 16 else { throw HeadAlignError.badInput("\(path): token \(pieces.count) has length \(len)") }
            try need(len)
            pieces.append(Array(data[(data.startIndex + o)..<(data.startIndex + o + len)]))
            scores.append(score)
            o += len
        }
        guard o == data.count else {
            throw HeadAlignError.badInput("\(path): \(data.count - o) bytes left after \(vocabSize) tokens (vocabulary size mismatch?)")
        }
        var lookup: [[UInt8]: Int] = [:]
        for (i, p) in pieces.enumerated() where lookup[p] == nil { lookup[p] = i }
        self.pieces = pieces
        self.scores = scores
        self.lookup = lookup
        self.maxTextBytes = max(1, contextLength) * Self.maxBytesPerToken + 1024
    }

    public func encode(_ text: String, bos addBOS: Bool = true, eos addEOS: Bool = false) -> [Int] {
        encodeBounded(text, bos: addBOS, eos: addEOS).ids
    }

    /// `encode` of at most `maxTextBytes` bytes of the text: the end of it (`keepEnd`, as prompts
    /// are truncated from the left) or its start, cut at a character boundary; `cutBytes` says
    /// how many bytes were dropped before tokenizing.
    public func encodeBounded(_ text: String, bos addBOS: Bool = true, eos addEOS: Bool = false,
                              keepEnd: Bool = true) -> (ids: [Int], cutBytes: Int) {
        var tokens: [Int] = addBOS ? [bos] : []
        var bytes = Array(text.utf8)
        var cut = 0
        if bytes.count > maxTextBytes {
            if keepEnd {
                var from = bytes.count - maxTextBytes
                while from < bytes.count, bytes[from] & 0xC0 == 0x80 { from += 1 }  // not inside a character
                cut = from
                bytes.removeFirst(from)
            } else {
                var to = maxTextBytes
                while to > 0, bytes[to] & 0xC0 == 0x80 { to -= 1 }
                cut = bytes.count - to
                bytes.removeLast(bytes.count - to)
            }
        }
        if !bytes.isEmpty, let space = lookup[[0x20]] { tokens.append(space) }
        var i = 0
        while i < bytes.count {
            var j = i + 1  // a UTF-8 character: a lead byte and its continuation bytes (at most 4)
            while j < bytes.count, bytes[j] & 0xC0 == 0x80, j - i < 4 { j += 1 }
            let ch = Array(bytes[i..<j])
            if let id = lookup[ch] {
                tokens.append(id)
            } else {  // byte fallback: <0xHH> is id 3 + HH in llama2.c vocabularies (<unk> if absent)
                tokens += ch.map { Int($0) + 3 < pieces.count ? Int($0) + 3 : 0 }
            }
            i = j
        }
        // Merge the best-scoring adjacent pair until none is in the vocabulary (llama2.c's loop;
        // the first of equal scores wins). The pairs wait in a heap ordered by score, then by
        // position, and the tokens form a linked list; a merge pushes its two new neighbour pairs
        // and stale entries are skipped when popped: O(n log n) rather than llama2.c's O(n^2).
        let n = tokens.count
        var next = Array(1...max(1, n)), prev = Array(-1..<max(0, n - 1)), alive = [Bool](repeating: true, count: n)
        if n > 0 { next[n - 1] = -1 }
        var version = [Int](repeating: 0, count: n)
        var heap = MergeHeap()
        func push(_ i: Int) {
            let j = next[i]
            guard j >= 0, let id = lookup[pieces[tokens[i]] + pieces[tokens[j]]], scores[id] > -Float.infinity else { return }
            heap.push(MergeHeap.Entry(score: scores[id], left: i, right: j, id: id, leftVersion: version[i], rightVersion: version[j]))
        }
        for i in 0..<max(0, n - 1) { push(i) }
        while let e = heap.pop() {
            guard alive[e.left], alive[e.right], next[e.left] == e.right, version[e.left] == e.leftVersion,
                  version[e.right] == e.rightVersion else { continue }
            tokens[e.left] = e.id
            version[e.left] += 1
            alive[e.right] = false
            next[e.left] = next[e.right]
            if next[e.left] >= 0 { prev[next[e.left]] = e.left }
            if prev[e.left] >= 0 { push(prev[e.left]) }
            push(e.left)
        }
        var merged: [Int] = []
        merged.reserveCapacity(n)
        var k = n > 0 ? 0 : -1
        while k >= 0 { merged.append(tokens[k]); k = next[k] }
        tokens = merged
        if addEOS { tokens.append(eos) }
        return (tokens, cut)
    }

    /// The bytes token `id` prints after `previous`, as llama2.c's `decode`: a leading space is
    /// dropped after BOS, and `<0xHH>` stands for the byte HH.
    public func decode(_ id: Int, after previous: Int) -> [UInt8] {
        guard id >= 0 && id < pieces.count else { return [] }
        var p = pieces[id]
        if previous == bos, p.first == 0x20 { p.removeFirst() }
        if p.count == 6, p.starts(with: Array("<0x".utf8)), p.last == UInt8(ascii: ">"),
           let b = UInt8(String(decoding: p[3..<5], as: UTF8.self), radix: 16) {
            return [b]
        }
        return p
    }

    /// The text of a generated sequence that follows `first` (usually BOS).
    public func decode(_ ids: [Int], after first: Int) -> String {
        var bytes: [UInt8] = []
        var previous = first
        for id in ids {
            bytes += decode(id, after: previous)
            previous = id
        }
        return String(decoding: bytes, as: UTF8.self)
    }
}

/// A binary max-heap of candidate merges: the higher score first, of equal scores the leftmost
/// (the smaller left index; a merged token keeps its left index, so indices stay in text order).
struct MergeHeap {
    struct Entry {
        let score: Float
        let left: Int, right: Int, id: Int
        let leftVersion: Int, rightVersion: Int
        func before(_ o: Entry) -> Bool { score != o.score ? score > o.score : left < o.left }
    }
    private var items: [Entry] = []

    mutating func push(_ e: Entry) {
        items.append(e)
        var c = items.count - 1
        while c > 0 {
            let p = (c - 1) / 2
            guard items[c].before(items[p]) else { break }
            items.swapAt(c, p)
            c = p
        }
    }

    mutating func pop() -> Entry? {
        guard let top = items.first else { return nil }
        let last = items.removeLast()
        if !items.isEmpty {
            items[0] = last
            var p = 0
            while true {
                let l = 2 * p + 1, r = l + 1
                var m = p
                if l < items.count, items[l].before(items[m]) { m = l }
                if r < items.count, items[r].before(items[m]) { m = r }
                if m == p { break }
                items.swapAt(p, m)
                p = m
            }
        }
        return top
    }
}

// MARK: - Decoder view

/// A decoder's tokenizer as the generation code sees it: prompts start with BOS, responses end
/// with EOS, decoding drops both. `words`: the whole-word vocabulary of `buildWordVocabulary`
/// (headalign-trained llama-tiny; `[CLS]` is BOS, `[SEP]` EOS). `bpe`: llama2.c's byte-level BPE
/// (stories260K; BOS 1, EOS 2; a response is encoded on its own, with the leading space
/// SentencePiece adds to a text).
public enum DecoderTokenizer: @unchecked Sendable {
    case words(WordPieceTokenizer)
    case bpe(Llama2cTokenizer)

    public var bos: Int {
        switch self { case .words(let w): return w.cls; case .bpe(let t): return t.bos }
    }
    public var eos: Int {
        switch self { case .words(let w): return w.sep; case .bpe(let t): return t.eos }
    }
    public func prompt(_ text: String) -> [Int] {
        switch self {
        case .words(let w): return [bos] + w.basicTokens(text).map { w.ids[$0] ?? w.unk }
        case .bpe(let t): return t.encode(text, bos: true)
        }
    }
    public func response(_ text: String) -> [Int] {
        switch self {
        case .words(let w): return w.basicTokens(text).map { w.ids[$0] ?? w.unk } + [eos]
        case .bpe(let t): return t.encodeBounded(text, bos: false, keepEnd: false).ids + [eos]
        }
    }
    public func decode(_ ids: [Int]) -> String {
        let body = ids.filter { $0 != bos && $0 != eos }
        switch self {
        case .words(let w): return body.map(w.token).joined(separator: " ")
        case .bpe(let t): return t.decode(body, after: t.bos)
        }
    }
}
