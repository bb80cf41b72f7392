// FuzzTests.swift: thousands of mutated and truncated inputs to every parser; each must parse or
// throw a HeadAlignError, never trap or hang (a trap would crash this test process).

import XCTest
import Foundation
import HeadAlign
import HeadAlignLab

final class FuzzTests: XCTestCase {
    /// Byte flips, truncations, insertions and splices of a valid input.
    func mutations(of seed: [UInt8], count: Int, seed rngSeed: UInt64) -> [[UInt8]] {
        var rng = SeededGenerator(seed: rngSeed)
        let interesting: [UInt8] = Array("{}[],:\"0123456789-.eE \\u".utf8) + [0, 0xFF, 0x80, 0xC3]
        return (0..<count).map { _ in
            var b = seed
            for _ in 0..<(1 + rng.int(below: 4)) {
                switch rng.int(below: 5) {
                case 0 where !b.isEmpty: b[rng.int(below: b.count)] = UInt8(truncatingIfNeeded: rng.next())
                case 1 where !b.isEmpty: b[rng.int(below: b.count)] = interesting[rng.int(below: interesting.count)]
                case 2: b = Array(b.prefix(rng.int(below: b.count + 1)))
                case 3: b.insert(interesting[rng.int(below: interesting.count)], at: rng.int(below: b.count + 1))
                default:
                    if b.count > 2 { let i = rng.int(below: b.count - 1); b.removeSubrange(i..<(i + 1 + rng.int(below: b.count - i - 1))) }
                }
            }
            return b
        }
    }

    func testSafetensorsHeaders() throws {
        let h = Array("{\"__metadata__\":{\"format\":\"pt\"},\"a\":{\"dtype\":\"F32\",\"shape\":[2,1],\"data_offsets\":[0,8]},\"b\":{\"dtype\":\"BF16\",\"shape\":[3],\"data_offsets\":[8,14]}}".utf8)
        var seed: [UInt8] = []
        withUnsafeBytes(of: UInt64(h.count).littleEndian) { seed += $0 }
        seed += h + [UInt8](repeating: 1, count: 14)
        XCTAssertNoThrow(try seed.withUnsafeBytes { try parseSafetensorsHeader($0, source: "seed") })
        var accepted = 0, rejected = 0
        for input in mutations(of: seed, count: 20_000, seed: 1) {
            do {
                let header = try input.withUnsafeBytes { try parseSafetensorsHeader($0, source: "fuzz") }
                for e in header.entries { XCTAssertLessThanOrEqual(header.dataStart + e.end, input.count) }
                accepted += 1
            } catch let e as HeadAlignError {
                XCTAssertTrue(e.description.hasPrefix("fuzz: "))
                rejected += 1
            }
        }
        XCTAssertGreaterThan(rejected, 10_000)  // most mutations break something
        XCTAssertGreaterThan(accepted, 10)  // and some survive (e.g. a changed data byte)
    }

    func testConfigs() throws {
        let seed = Array(try JSONEncoder().encode(try ModelConfig.preset("llama-tiny")))
        let dir = temporaryDirectory(self)
        let url = URL(fileURLWithPath: dir + "/config.json")
        var rejected = 0
        for input in mutations(of: seed, count: 3_000, seed: 2) {
            try Data(input).write(to: url)
            do { _ = try ModelConfig.load(contentsOf: url) } catch is HeadAlignError { rejected += 1 }
        }
        XCTAssertGreaterThan(rejected, 1_000)
    }

    func testJSON() {
        let seed = Array("{\"a\": [1, -2.5e3, true, null, \"x\\u00e9\\n\"], \"b\": {\"c\": []}}".utf8)
        XCTAssertNoThrow(try seed.withUnsafeBufferPointer { try JSONValue.parse($0) })
        for input in mutations(of: seed, count: 20_000, seed: 3) {
            _ = try? input.withUnsafeBufferPointer { try JSONValue.parse($0) }
        }
        // depth is bounded, not the stack
        let deep = Array(String(repeating: "[", count: 100_000).utf8)
        XCTAssertThrowsError(try deep.withUnsafeBufferPointer { try JSONValue.parse($0) })
    }

    func testVocabularies() throws {
        let dir = temporaryDirectory(self)
        let seed = Array("[PAD]\n[UNK]\n[CLS]\n[SEP]\nthe\n##s\ncafé\n".utf8)
        var built = 0
        for (k, input) in mutations(of: seed, count: 2_000, seed: 4).enumerated() {
            try Data(input).write(to: URL(fileURLWithPath: dir + "/vocab.txt"))
            if let t = try? WordPieceTokenizer(directory: dir) {
                built += 1
                _ = t.encode(String(decoding: input, as: UTF8.self) + " the cafés \(k)")
            }
        }
        XCTAssertGreaterThan(built, 100)
    }

    func testLlama2cFiles() throws {
        let dir = temporaryDirectory(self)
        // a tokenizer.bin with 3 pieces: max length, then (score, length, bytes) each
        var tok: [UInt8] = []
        func append<T>(_ v: T) { withUnsafeBytes(of: v) { tok += $0 } }
        append(Int32(2))
        for (score, piece) in [(Float(0), "a"), (Float(-1), "b"), (Float(-2), "ab")] {
            append(score); append(Int32(piece.utf8.count)); tok += Array(piece.utf8)
        }
        XCTAssertNoThrow(try { try Data(tok).write(to: URL(fileURLWithPath: dir + "/t.bin")); _ = try Llama2cTokenizer(path: dir + "/t.bin", vocabSize: 3) }())
        for input in mutations(of: tok, count: 3_000, seed: 5) {
            try Data(input).write(to: URL(fileURLWithPath: dir + "/t.bin"))
            if let t = try? Llama2cTokenizer(path: dir + "/t.bin", vocabSize: 3) { _ = t.encode("abba ab") }
        }
        // model headers: 7 int32 then floats; random headers must be rejected before allocating
        var rng = SeededGenerator(seed: 6)
        for _ in 0..<2_000 {
            var bin: [UInt8] = []
            for _ in 0..<7 { withUnsafeBytes(of: Int32(truncatingIfNeeded: Int(rng.next() % 4096) - 64)) { bin += $0 } }
            bin += [UInt8](repeating: 0, count: rng.int(below: 4096))
            try Data(bin).write(to: URL(fileURLWithPath: dir + "/m.bin"))
            XCTAssertThrowsError(try loadLlama2c(path: dir + "/m.bin", backend: .naive) as Model<Float>)
        }
    }
}
