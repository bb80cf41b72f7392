// NotebookTests.swift: the notebooks' recorded outputs are what the binary prints today, and the
// check names the notebook and line of a stale output; update repairs it.

import XCTest
import Foundation
import HeadAlign

final class NotebookTests: XCTestCase {
    func testShippedNotebooksAgreeWithTheBinary() throws {
        let root = URL(fileURLWithPath: #filePath).deletingLastPathComponent().deletingLastPathComponent().deletingLastPathComponent().path
        guard FileManager.default.fileExists(atPath: root + "/notebooks") else { throw XCTSkip("no notebooks/ at \(root)") }
        let r = try runHeadalign(["notebooks", "check", "--dir", root + "/notebooks"])
        XCTAssertEqual(r.status, 0, r.err)
        XCTAssertTrue(r.out.contains("all outputs agree"), r.out)
    }

    func testStaleOutputIsReportedAndUpdated() throws {
        let dir = temporaryDirectory(self) + "/notebooks"
        try FileManager.default.createDirectory(atPath: dir, withIntermediateDirectories: true)
        let text = """
            # t

            ```console
            $ headalign attention --q "1 0; 0 1" --k '1 0; 0 1'
            scores Q K^T / sqrt(2)  [T, T]
               0.707107  0.000000
               0.000000  0.999999
            ```
            """
        try Data(text.utf8).write(to: URL(fileURLWithPath: dir + "/a.md"))
        let bad = try runHeadalign(["notebooks", "check", "--dir", dir])
        XCTAssertEqual(bad.status, 1)
        XCTAssertTrue(bad.err.contains(dir + "/a.md:4: output differs at output line 3"), bad.err)
        XCTAssertTrue(bad.err.contains("'   0.000000  0.999999'") && bad.err.contains("'   0.000000  0.707107'"), bad.err)
        XCTAssertEqual(try runHeadalign(["notebooks", "update", "--dir", dir]).status, 0)
        let fixed = try String(contentsOfFile: dir + "/a.md", encoding: .utf8)
        XCTAssertTrue(fixed.contains("   0.000000  0.707107\nA = softmax"), fixed)
        XCTAssertTrue(fixed.hasPrefix("# t\n\n```console\n$ headalign attention"), "text around the block kept")
        XCTAssertEqual(try runHeadalign(["notebooks", "check", "--dir", dir]).status, 0)
    }

    func testAttentionCalculatorByHand() throws {
        let r = try runHeadalign(["attention", "--q", "1 0; 0 1; 1 1", "--k", "1 0; 0 1; 1 1", "--causal"])
        XCTAssertEqual(r.status, 0, r.err)
        // row 1 under the causal mask: (1, e^(1/sqrt 2)) / (1 + e^(1/sqrt 2)), then an exact zero
        let e = Foundation.exp(1 / 2.0.squareRoot())
        XCTAssertTrue(r.out.contains(String(format: "%9.6f %9.6f %9.6f", 1 / (1 + e), e / (1 + e), 0.0)), r.out)
        try assertUsageError(["attention", "--q", "1 0; 0 1", "--k", "1 0"], mentions: "same shape")
        try assertUsageError(["attention", "--q", "1 x", "--k", "1 0"], mentions: "'x' is not a number")
    }
}
