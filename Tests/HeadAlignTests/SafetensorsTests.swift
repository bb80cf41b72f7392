// SafetensorsTests.swift: every validation rule of the reference reader, each with its own
// message; writing (padding, order, bytes) and a bit-identical round trip; never modifying input.

import XCTest
import Foundation
import HeadAlign
import HeadAlignLab

final class SafetensorsTests: XCTestCase {
    /// 8-byte little-endian length, the header, the data.
    func file(_ header: String, data: Int = 0, length: UInt64? = nil) -> [UInt8] {
        let h = Array(header.utf8)
        var out: [UInt8] = []
        withUnsafeBytes(of: (length ?? UInt64(h.count)).littleEndian) { out += $0 }
        return out + h + [UInt8](repeating: 0, count: data)
    }

    func parse(_ bytes: [UInt8]) throws -> SafetensorsHeader {
        try bytes.withUnsafeBytes { try parseSafetensorsHeader($0, source: "x.safetensors") }
    }

    func assertRejects(_ bytes: [UInt8], _ needle: String, file: StaticString = #filePath, line: UInt = #line) {
        XCTAssertThrowsError(try parse(bytes), file: file, line: line) { e in
            let m = "\(e)"
            XCTAssertTrue(m.hasPrefix("x.safetensors: ") && m.contains(needle), "'\(m)' should mention '\(needle)'", file: file, line: line)
            XCTAssertFalse(m.contains("\n"), file: file, line: line)
            XCTAssertEqual((e as? HeadAlignError)?.exitStatus, 2, file: file, line: line)
        }
    }

    func t(_ name: String, _ dtype: String = "F32", _ shape: [Int], _ b: Int, _ e: Int) -> String {
        "\"\(name)\":{\"dtype\":\"\(dtype)\",\"shape\":\(shape),\"data_offsets\":[\(b),\(e)]}"
    }

    func testEachRuleHasItsOwnError() {
        assertRejects([1, 2, 3], "shorter than the 8-byte header length")
        assertRejects(file("{}", length: 100_000_001), "exceeds the limit of 100000000")
        assertRejects(file("{}", length: 50), "runs past the end of the file")
        assertRejects([6, 0, 0, 0, 0, 0, 0, 0, 0x7B, 0x22, 0xFF, 0x22, 0x7D, 0x20], "not valid UTF-8")
        assertRejects(file("[1,2]"), "not an object")
        assertRejects(file("{\"a\":"), "not valid JSON")
        assertRejects(file("{}x"), "not valid JSON")
        assertRejects(file("{\"__metadata__\":{\"a\":1}}"), "__metadata__ key 'a'")
        assertRejects(file("{\"__metadata__\":[1]}"), "__metadata__ is an array")
        assertRejects(file("{" + t("w", "Q8", [1], 0, 1) + "}", data: 1), "unknown dtype 'Q8'")
        assertRejects(file("{\"w\":{\"dtype\":\"F32\",\"shape\":[1]}}", data: 4), "missing field 'data_offsets'")
        assertRejects(file("{\"w\":{\"dtype\":\"F32\",\"shape\":[1.0],\"data_offsets\":[0,4]}}", data: 4), "non-negative integers")
        assertRejects(file("{\"w\":{\"dtype\":\"F32\",\"shape\":[-1],\"data_offsets\":[0,4]}}", data: 4), "non-negative integers")
        assertRejects(file("{\"w\":{\"dtype\":\"F32\",\"shape\":[true],\"data_offsets\":[0,4]}}", data: 4), "non-negative integers")
        assertRejects(file("{\"w\":{\"dtype\":\"F32\",\"shape\":[1],\"data_offsets\":[0,4,8]}}", data: 4), "two integers")
        assertRejects(file("{" + t("w", "F32", [4_294_967_296, 4_294_967_296], 0, 4) + "}", data: 4), "overflows")
        assertRejects(file("{" + t("w", "F32", [2], 0, 4) + "}", data: 4), "need 8 bytes, data_offsets span 4")
        assertRejects(file("{" + t("w", "F4", [3], 0, 2) + "}", data: 2), "byte boundary")
        assertRejects(file("{" + t("w", "F32", [1], 4, 8) + "}", data: 8), "not at 0")
        assertRejects(file("{" + t("a", "F32", [1], 0, 4) + "," + t("b", "F32", [1], 8, 12) + "}", data: 12), "gap")
        assertRejects(file("{" + t("a", "F32", [2], 0, 8) + "," + t("b", "F32", [1], 4, 8) + "}", data: 8), "overlapping")
        assertRejects(file("{" + t("w", "F32", [1], 8, 4) + "}", data: 8), "end before they begin")
        assertRejects(file("{" + t("w", "F32", [1], 0, 4) + "}", data: 8), "4 bytes left over after the last tensor")
        assertRejects(file("{" + t("w", "F32", [2], 0, 8) + "}", data: 4), "need 8 bytes of data but the file has 4")
    }

    /// What the reference reader accepts, this one accepts too (measured with safetensors 0.8.0).
    func testAcceptsWhatTheReferenceAccepts() throws {
        XCTAssertEqual(try parse(file("{}")).entries.count, 0)
        XCTAssertEqual(try parse(file(" {}      ")).entries.count, 0)  // whitespace around the object
        let extra = try parse(file("{\"w\":{\"dtype\":\"F32\",\"shape\":[1],\"data_offsets\":[0,4],\"x\":1}}", data: 4))
        XCTAssertEqual(extra.entries.map(\.name), ["w"])  // unknown fields ignored
        let scalar = try parse(file("{" + t("w", "F32", [], 0, 4) + "}", data: 4))
        XCTAssertEqual(scalar.entries[0].count, 1)  // shape [] is one element
        let empty = try parse(file("{" + t("a", "F32", [0], 0, 0) + "," + t("b", "F32", [1], 0, 4) + "}", data: 4))
        XCTAssertEqual(empty.entries.map(\.name), ["a", "b"])  // sorted by offsets
        let dup = try parse(file("{" + t("w", "F32", [1], 0, 4) + "," + t("w", "F32", [1], 0, 4) + "}", data: 4))
        XCTAssertEqual(dup.entries.count, 1)  // a repeated name: the last one counts
        let meta = try parse(file("{\"__metadata__\":{\"format\":\"pt\"}," + t("w", "BF16", [2], 0, 4) + "}", data: 4))
        XCTAssertEqual(meta.metadata, ["format": "pt"])
    }

    /// The reference writer's bytes for one F32 tensor [1,2,3] named attn.0: header
    /// {"attn.0":{"dtype":"F32","shape":[1,2,3],"data_offsets":[0,24]}} (64 bytes, no padding
    /// needed), then 0,1,2,3,4,5 as little-endian floats.
    func testWriterMatchesTheReferenceBytes() throws {
        let values: [Float] = [0, 1, 2, 3, 4, 5]
        let data = try values.withUnsafeBufferPointer {
            try serializeSafetensors([SafetensorsTensor(name: "attn.0", shape: [1, 2, 3], values: $0, dtype: .F32)])
        }
        let expected: [UInt8] = [64, 0, 0, 0, 0, 0, 0, 0] + Array("{\"attn.0\":{\"dtype\":\"F32\",\"shape\":[1,2,3],\"data_offsets\":[0,24]}}".utf8)
            + [0, 0, 0, 0, 0, 0, 128, 63, 0, 0, 0, 64, 0, 0, 64, 64, 0, 0, 128, 64, 0, 0, 160, 64]
        XCTAssertEqual(Array(data), expected)
        // a name one byte shorter needs 7 spaces of padding to reach a multiple of 8
        let padded = try values.withUnsafeBufferPointer {
            try serializeSafetensors([SafetensorsTensor(name: "attn0", shape: [1, 1, 2, 3], values: $0, dtype: .F32)])
        }
        XCTAssertEqual(padded[0], 72)
        XCTAssertEqual(Array(padded[(8 + 65)..<(8 + 72)]), [UInt8](repeating: 0x20, count: 7))
        XCTAssertEqual(try parse(Array(padded)).entries[0].shape, [1, 1, 2, 3])
    }

    func testRoundTripIsBitIdenticalInEveryWritableDtype() throws {
        var rng = SeededGenerator(seed: 3)
        let a = (0..<12).map { _ in rng.normal() }, b = (0..<5).map { _ in Double(Float(rng.normal())) }
        let dir = temporaryDirectory(self)
        for dtype in [SafetensorsDType.F64, .F32, .BF16, .F16] {
            let path = dir + "/x-\(dtype).safetensors"
            let data = try a.withUnsafeBufferPointer { pa in
                try b.withUnsafeBufferPointer { pb in
                    try serializeSafetensors([SafetensorsTensor(name: "z.a", shape: [3, 4], values: pa, dtype: dtype),
                                              SafetensorsTensor(name: "b", shape: [5], values: pb, dtype: dtype)],
                                             metadata: ["format": "pt"])
                }
            }
            try writeAtomically(data, to: path)
            let f = try SafetensorsFile(path: path)
            XCTAssertEqual(f.names.sorted(), ["b", "z.a"])
            var back = [Double](repeating: 0, count: 12)
            try f.read("z.a", into: &back, count: 12)
            for (x, y) in zip(a, back) {
                switch dtype {
                case .F64: XCTAssertEqual(x.bitPattern, y.bitPattern)
                case .F32: XCTAssertEqual(Float(x).bitPattern, Float(y).bitPattern)
                case .BF16: assertClose(y, x, atol: 1e-9, rtol: 1.0 / 256)  // 8 significant bits
                default: XCTAssertEqual(Float16(Float(x)), Float16(Float(y)))
                }
            }
        }
    }

    func testHalfPrecisionConversionByHand() {
        XCTAssertEqual(halfToFloat(0x3C00), 1)  // 1.0
        XCTAssertEqual(halfToFloat(0xC000), -2)
        XCTAssertEqual(halfToFloat(0x7BFF), 65504)  // largest finite
        XCTAssertEqual(halfToFloat(0x0001), 0x1p-24)  // smallest subnormal
        XCTAssertEqual(halfToFloat(0x7C00), .infinity)
        XCTAssertTrue(halfToFloat(0x7E00).isNaN)
        for bits in stride(from: 0, to: 65536, by: 97) where !Float16(bitPattern: UInt16(bits)).isNaN {
            XCTAssertEqual(halfToFloat(UInt16(bits)), Float(Float16(bitPattern: UInt16(bits))))
        }
        XCTAssertEqual(floatToBFloat16(1), 0x3F80)
        XCTAssertEqual(floatToBFloat16(Float(bitPattern: 0x3F80_8000)), 0x3F80)  // a tie rounds to even
        XCTAssertEqual(floatToBFloat16(Float(bitPattern: 0x3F81_8000)), 0x3F82)
    }

    func testReadingNeverModifiesTheFileAndWritesAreAtomic() throws {
        let dir = temporaryDirectory(self)
        let path = dir + "/m.safetensors"
        let one: [Float] = [1, 2]
        try writeAtomically(try one.withUnsafeBufferPointer {
            try serializeSafetensors([SafetensorsTensor(name: "w", shape: [2], values: $0, dtype: .F32)])
        }, to: path)
        let before = try Data(contentsOf: URL(fileURLWithPath: path))
        let attributes = try FileManager.default.attributesOfItem(atPath: path)
        _ = try SafetensorsFile(path: path)
        XCTAssertEqual(try Data(contentsOf: URL(fileURLWithPath: path)), before)
        XCTAssertEqual(try FileManager.default.attributesOfItem(atPath: path)[.modificationDate] as? Date,
                       attributes[.modificationDate] as? Date)
        // a write into a missing directory fails and leaves nothing behind
        XCTAssertThrowsError(try writeAtomically(before, to: dir + "/missing/m.safetensors"))
        XCTAssertEqual(try FileManager.default.contentsOfDirectory(atPath: dir), ["m.safetensors"])
    }

    /// A symlink stays a symlink (its target is replaced atomically); a FIFO (like /dev/stdout
    /// on a pipe) is written into, not replaced by a plain file.
    func testAtomicWritesFollowLinksAndLeaveSpecialFilesAlone() throws {
        let dir = temporaryDirectory(self)
        try Data("old".utf8).write(to: URL(fileURLWithPath: dir + "/target.json"))
        try FileManager.default.createSymbolicLink(atPath: dir + "/link.json", withDestinationPath: dir + "/target.json")
        try writeAtomically(Data("new".utf8), to: dir + "/link.json")
        XCTAssertEqual(try FileManager.default.destinationOfSymbolicLink(atPath: dir + "/link.json"), dir + "/target.json")
        XCTAssertEqual(try String(contentsOfFile: dir + "/target.json", encoding: .utf8), "new")
        let fifo = dir + "/pipe"
        XCTAssertEqual(mkfifo(fifo, 0o600), 0)
        signal(SIGPIPE, SIG_IGN)
        final class Box: @unchecked Sendable { var count = -1 }
        let received = Box()
        let done = DispatchSemaphore(value: 0)
        let reader = Thread {  // opens the read end so the write can proceed, reads to the end
            received.count = FileHandle(forReadingAtPath: fifo)?.readDataToEndOfFile().count ?? -2
            done.signal()
        }
        reader.start()
        try writeAtomically(Data("through the pipe".utf8), to: fifo)
        done.wait()
        XCTAssertEqual(received.count, 16)
        var st = stat()
        XCTAssertEqual(stat(fifo, &st), 0)
        XCTAssertEqual(st.st_mode & S_IFMT, S_IFIFO, "still a FIFO")
        XCTAssertThrowsError(try writeAtomically(Data(), to: dir)) { XCTAssertTrue("\($0)".contains("is a directory")) }
    }
}
