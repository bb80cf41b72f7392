// CLITests.swift: the binary's exit statuses and one-line errors.

import XCTest
import Foundation

final class CLITests: XCTestCase {
    /// Runs the built `headalign` with arguments; skips when the binary was not built.
    func run(_ args: [String]) throws -> (status: Int32, out: String, err: String) {
        let binary = Bundle.main.bundleURL.appendingPathComponent("headalign")
        guard FileManager.default.isExecutableFile(atPath: binary.path) else {
            throw XCTSkip("headalign binary not found beside the tests at \(binary.path)")
        }
        let p = Process()
        p.executableURL = binary
        p.arguments = args
        let out = Pipe(), err = Pipe()
        p.standardOutput = out
        p.standardError = err
        try p.run()
        let o = out.fileHandleForReading.readDataToEndOfFile(), e = err.fileHandleForReading.readDataToEndOfFile()
        p.waitUntilExit()
        return (p.terminationStatus, String(decoding: o, as: UTF8.self), String(decoding: e, as: UTF8.self))
    }

    func assertUsageError(_ args: [String], mentions needle: String, file: StaticString = #filePath, line: UInt = #line) throws {
        let r = try run(args)
        XCTAssertEqual(r.status, 2, "\(args): \(r.err)", file: file, line: line)
        let lines = r.err.split(separator: "\n")
        XCTAssertEqual(lines.count, 1, "one line expected: \(r.err)", file: file, line: line)
        XCTAssertTrue(r.err.contains(needle), "\(r.err) should mention \(needle)", file: file, line: line)
        XCTAssertEqual(r.out, "", file: file, line: line)
    }

    func testBadInputIsOneLineAndStatusTwo() throws {
        try assertUsageError(["frobnicate"], mentions: "frobnicate")
        try assertUsageError(["gradcheck", "--bogus"], mentions: "--bogus")
        try assertUsageError(["gradcheck", "--preset", "gpt-9"], mentions: "--preset")
        try assertUsageError(["gradcheck", "--precision", "f16"], mentions: "--precision")
        try assertUsageError(["gradcheck", "--backend", "gpu"], mentions: "--backend")
        try assertUsageError(["gradcheck", "--samples", "-3"], mentions: "--samples")
        try assertUsageError(["gradcheck", "--seed"], mentions: "--seed")
        try assertUsageError(["bench", "--preset", "nope"], mentions: "--preset")
    }

    func testHelpAndVersion() throws {
        let h = try run(["--help"])
        XCTAssertEqual(h.status, 0)
        for c in ["gradcheck", "bench", "version"] { XCTAssertTrue(h.out.contains(c)) }
        let g = try run(["gradcheck", "--help"])
        XCTAssertEqual(g.status, 0)
        XCTAssertTrue(g.out.contains("--precision"))
        let v = try run(["version"])
        XCTAssertEqual(v.status, 0)
        XCTAssertTrue(v.out.hasPrefix("headalign "))
    }

    func testGradcheckCommandPasses() throws {
        let r = try run(["gradcheck", "--preset", "llama-tiny", "--samples", "4", "--backend", "naive"])
        XCTAssertEqual(r.status, 0, r.err)
        XCTAssertTrue(r.out.contains(": OK"), r.out)
        XCTAssertTrue(r.out.contains("model.layers.1.self_attn.q_proj.weight"))
    }
}
