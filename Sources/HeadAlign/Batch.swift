// Batch.swift: what the model reads. Sequences of different lengths are packed row after row
// into one `[N, D]` activation matrix (N = sum of the T's), so every linear layer is one matrix
// product over the whole batch and no compute is spent on padding. Attention then works per
// sequence. An explicit padding mask is still honoured, for inputs that arrive padded.

/// One input: token ids, an optional key padding mask (`false` = padding; padded positions
/// are never attended to) and optional BERT token types (segment ids, default 0).
public struct TokenSequence: Sendable, Equatable {
    public var tokens: [Int]
    public var mask: [Bool]?
    public var tokenTypes: [Int]?

    public init(_ tokens: [Int], mask: [Bool]? = nil, tokenTypes: [Int]? = nil) {
        precondition(mask == nil || mask!.count == tokens.count, "TokenSequence: mask length \(mask!.count) vs \(tokens.count) tokens")
        precondition(tokenTypes == nil || tokenTypes!.count == tokens.count, "TokenSequence: token types length vs tokens")
        self.tokens = tokens
        self.mask = mask
        self.tokenTypes = tokenTypes
    }

    public var count: Int { tokens.count }

    /// Whether position `k` is a real token.
    @inline(__always) public func isReal(_ k: Int) -> Bool { mask?[k] ?? true }

    /// Index of the last real token (where a decoder classifier reads).
    public var lastRealIndex: Int {
        guard let mask else { return tokens.count - 1 }
        return mask.lastIndex(of: true) ?? (tokens.count - 1)
    }
}

/// Sequences packed into rows. `rowOffset[b]` is the first row of sequence b in `[N, ...]`
/// activations; `attentionOffset[b]` the first element of its `[NH, T, T]` block in a layer's
/// attention buffer (given NH).
public struct Batch: Sendable {
    public let sequences: [TokenSequence]
    public let rowOffset: [Int]
    public let tokenCount: Int  // N
    public let squareOffset: [Int]  // sum of T^2 of earlier sequences
    public let squareCount: Int  // sum of T^2

    public init(_ sequences: [TokenSequence]) {
        precondition(!sequences.isEmpty, "Batch: no sequences")
        precondition(sequences.allSatisfy { $0.count > 0 }, "Batch: an empty sequence")
        self.sequences = sequences
        var rows = [Int](), squares = [Int]()
        var n = 0, sq = 0
        for s in sequences {
            rows.append(n); squares.append(sq)
            n += s.count; sq += s.count * s.count
        }
        rowOffset = rows
        squareOffset = squares
        tokenCount = n
        squareCount = sq
    }

    public init(_ tokenLists: [[Int]]) { self.init(tokenLists.map { TokenSequence($0) }) }

    public var count: Int { sequences.count }
    public var allTokens: [Int] { sequences.flatMap(\.tokens) }
}
