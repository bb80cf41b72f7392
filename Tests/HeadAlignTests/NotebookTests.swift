// NotebookTests.swift: the notebooks' recorded outputs are what the binary prints today, and the
// check names the notebook and line of a stale output; update repairs it.

import XCTest
import Foundation
import HeadAlign
import HeadAlignLab

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

    /// A figure a command writes is regenerated and compared byte for byte with the committed one,
    /// in command order (the plot reads the JSON the command before it wrote); a stale figure is
    /// reported and put back, and update rewrites it.
    func testFiguresAreRegeneratedAndCompared() throws {
        let root = temporaryDirectory(self), dir = root + "/notebooks"
        try FileManager.default.createDirectory(atPath: dir + "/figures", withIntermediateDirectories: true)
        let exp = """
            {"attack": "t", "seeds": [{"seed": 1, "methods": [{"method": "vanilla", "ca": 0.9, "asr": 1.0}]}]}
            """
        try Data(exp.utf8).write(to: URL(fileURLWithPath: dir + "/figures/e.json"))
        let text = """
            # f

            ```console
            $ headalign plot bars --from notebooks/figures/e.json --out notebooks/figures/bars.svg
            wrote notebooks/figures/bars.svg
            ```
            """
        try Data(text.utf8).write(to: URL(fileURLWithPath: dir + "/f.md"))
        let missing = try runHeadalign(["notebooks", "check", "--dir", dir])
        XCTAssertEqual(missing.status, 1)
        XCTAssertTrue(missing.err.contains("f.md:4: the command wrote") && missing.err.contains("not committed"), missing.err)
        XCTAssertFalse(FileManager.default.fileExists(atPath: dir + "/figures/bars.svg"), "check leaves no new file behind")
        XCTAssertEqual(try runHeadalign(["notebooks", "update", "--dir", dir]).status, 0)
        let good = try Data(contentsOf: URL(fileURLWithPath: dir + "/figures/bars.svg"))
        XCTAssertEqual(try runHeadalign(["notebooks", "check", "--dir", dir]).status, 0)
        let stale = Data("<svg/>".utf8)
        try stale.write(to: URL(fileURLWithPath: dir + "/figures/bars.svg"))
        let bad = try runHeadalign(["notebooks", "check", "--dir", dir])
        XCTAssertEqual(bad.status, 1)
        XCTAssertTrue(bad.err.contains("bars.svg differs from the committed file"), bad.err)
        XCTAssertEqual(try Data(contentsOf: URL(fileURLWithPath: dir + "/figures/bars.svg")), stale, "check restores what was committed")
        XCTAssertEqual(try runHeadalign(["notebooks", "update", "--dir", dir]).status, 0)
        XCTAssertEqual(try Data(contentsOf: URL(fileURLWithPath: dir + "/figures/bars.svg")), good, "same data, same bytes")
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
