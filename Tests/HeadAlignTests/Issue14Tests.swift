// Issue14Tests.swift: regressions of issue 14 (bad model directories, unbounded labels, the BPE
// tokenizer's cost, outputs that overwrite inputs, flags that silently do nothing, stale
// temporaries, lost stdout lines, the progress line, the empty command line).

import XCTest
import Foundation
import HeadAlign
import HeadAlignLab

/// The built binary's URL (skips when it was not built).
func headalignBinary() throws -> URL {
    let binary = Bundle.main.bundleURL.appendingPathComponent("headalign")
    guard FileManager.default.isExecutableFile(atPath: binary.path) else { throw XCTSkip("headalign binary not found at \(binary.path)") }
    return binary
}

final class Issue14CLITests: XCTestCase {
    /// `headalign` alone is a usage error: the overview on stderr, status 2.
    func testNoArgumentsIsUsageError() throws {
        let r = try runHeadalign([])
        XCTAssertEqual(r.status, 2)
        XCTAssertEqual(r.out, "")
        XCTAssertTrue(r.err.contains("usage: headalign <command>"), r.err)
        XCTAssertEqual(try runHeadalign(["--help"]).status, 0)
    }

    /// stdout is line-buffered: a line printed before a kill is in the redirected file.
    func testStdoutLinesSurviveAKill() throws {
        let dir = temporaryDirectory(self)
        let outPath = dir + "/stdout.txt"
        FileManager.default.createFile(atPath: outPath, contents: nil)
        let p = Process()
        p.executableURL = try headalignBinary()
        p.arguments = ["train", "--preset", "bert-tiny", "--corpus", "sentiment", "--epochs", "10000", "--out", dir + "/m"]
        p.standardOutput = try FileHandle(forWritingTo: URL(fileURLWithPath: outPath))
        p.standardError = FileHandle.nullDevice
        try p.run()
        // wait (bounded) until training is under way: the settings line precedes the first step
        var text = ""
        for _ in 0..<600 where p.isRunning {
            text = (try? String(contentsOfFile: outPath, encoding: .utf8)) ?? ""
            if text.contains("epochs 10000") { break }
            usleep(100_000)
        }
        kill(p.processIdentifier, SIGKILL)
        p.waitUntilExit()
        text = (try? String(contentsOfFile: outPath, encoding: .utf8)) ?? ""
        XCTAssertTrue(text.contains("headalign train: 2000 examples"), "stdout file: '\(text)'")
        XCTAssertTrue(text.contains("epochs 10000"), "stdout file: '\(text)'")
    }
}
