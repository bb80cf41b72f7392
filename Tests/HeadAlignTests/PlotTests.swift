import XCTest
import Foundation
#if canImport(FoundationXML)
import FoundationXML
#endif
import HeadAlign
import HeadAlignLab

/// Every figure is well-formed XML with a title, axes or labels, and one mark per data point.
final class PlotTests: XCTestCase {
    /// The elements of an SVG document: name and attributes, and the text of every element.
    final class Collector: NSObject, XMLParserDelegate {
        var elements: [(name: String, attributes: [String: String])] = []
        var texts: [String] = []
        var current = ""
        func parser(_ parser: XMLParser, didStartElement name: String, namespaceURI: String?, qualifiedName: String?,
                    attributes: [String: String] = [:]) {
            elements.append((name, attributes))
            current = ""
        }
        func parser(_ parser: XMLParser, foundCharacters string: String) { current += string }
        func parser(_ parser: XMLParser, didEndElement name: String, namespaceURI: String?, qualifiedName: String?) {
            if !current.isEmpty { texts.append(current) }
            current = ""
        }
        func count(_ cls: String) -> Int { elements.filter { $0.attributes["class"] == cls }.count }
        func with(_ cls: String) -> [[String: String]] { elements.filter { $0.attributes["class"] == cls }.map(\.attributes) }
    }

    func parse(_ svg: String, file: StaticString = #filePath, line: UInt = #line) -> Collector {
        let c = Collector()
        let p = XMLParser(data: Data(svg.utf8))
        p.delegate = c
        XCTAssertTrue(p.parse(), "not well-formed XML: \(p.parserError.map { "\($0)" } ?? "")", file: file, line: line)
        XCTAssertEqual(c.elements.first?.name, "svg", file: file, line: line)
        XCTAssertEqual(c.elements.first?.attributes["xmlns"], "http://www.w3.org/2000/svg", file: file, line: line)
        XCTAssertEqual(c.elements.dropFirst().first?.name, "title", file: file, line: line)
        return c
    }

    func testAttentionHeatmapHasOneCellPerEntryAndEscapedTokenLabels() {
        let a = [[1.0, 0, 0], [0.25, 0.75, 0], [0.2, 0.3, 0.5]]
        let labels = ["0 <s>", "1 \"good\"", "2 a&b"]
        let c = parse(attentionHeatmapSVG(a, rowLabels: labels, columnLabels: labels, title: "head 0:1"))
        XCTAssertEqual(c.count("mark"), 9)
        XCTAssertEqual(c.with("mark").map { $0["fill"]! }.first, "#000028", "weight 1 is the darkest cell")
        XCTAssertTrue(c.texts.contains("2 a&b"), "labels survive escaping")
        XCTAssertEqual(c.count("rowlabel"), 3)
        XCTAssertEqual(c.count("columnlabel"), 3)
        XCTAssertTrue(c.texts.contains("1 \"good\" -> 0 <s>: 0.2500"), "each cell names its query, key and value")
    }

    func testCosineHistogramBinsAreFractionsOfEachSet() {
        let c = parse(cosineHistogramSVG(clean: [0.05, 0.15, 0.16], triggered: [0.95, 0.99, 1.0, 0.91], bins: 10, range: 0...1, title: "h"))
        XCTAssertEqual(c.count("mark"), 20, "a clean and a triggered bar per bin")
        XCTAssertEqual(c.count("axis"), 2)
        XCTAssertTrue(c.texts.contains("clean, bin from 0.100: 0.6667"))
        XCTAssertTrue(c.texts.contains("triggered, bin from 0.900: 1.0000"), "1.0 falls in the last bin")
        XCTAssertTrue(c.texts.contains("clean (3 pairs)"))
    }

    func testHeadScatterShadesEq5BandsWhereHandComputed() {
        // alpha 0.5, tau 0.25: suspicious where (x + y) / 2 > 0.75, the triangle (1, .5) (1, 1) (.5, 1);
        // safe where (x + y) / 2 < 0.25, the triangle (0, 0) (.5, 0) (0, .5). The area maps [0, 1] to
        // x 70...430 and y 400...40 pixels.
        let c = parse(headScatterSVG(maxsim: [0.9, 0.1, 0.5], normalizedImportance: [1, 0.05, 0.4],
                                     classes: [.suspicious, .safe, .intermediate], heads: 3, alpha: 0.5, tau: 0.25, title: "s"))
        XCTAssertEqual(c.count("mark"), 3)
        let bands = c.with("band").map { $0["points"]! }
        XCTAssertEqual(bands, ["430.00,220.00 430.00,40.00 250.00,40.00", "70.00,400.00 250.00,400.00 70.00,220.00"])
        let fills = c.with("mark").map { $0["fill"]! }
        XCTAssertEqual(fills, ["#c92a2a", "#2b8a3e", "#868e96"])
        XCTAssertEqual(c.with("mark")[0]["cx"], "394.00")  // 70 + 0.9 * 360
        XCTAssertEqual(c.with("mark")[0]["cy"], "40.00")
        XCTAssertTrue(c.texts.contains("suspicious (1)"))
        XCTAssertTrue(c.texts.contains("maxsim (Eq. 3)"))
    }

    func testClassGridLossCurveAndBars() {
        let grid = parse(classGridSVG([[.safe, .suspicious], [.intermediate, .safe]], title: "g"))
        XCTAssertEqual(grid.count("mark"), 4)
        XCTAssertTrue(grid.texts.contains("head 0:1 suspicious"))
        XCTAssertTrue(grid.texts.contains("safe (2)"))

        let loss = parse(lossCurveSVG([(name: "round 1", values: [0.4, 0.3, 0.1]), (name: "round 2", values: [0.2, 0.1])], title: "l", yTitle: "L"))
        XCTAssertEqual(loss.count("point"), 5, "one point per step")
        XCTAssertEqual(loss.count("mark"), 2, "one line per round")
        XCTAssertTrue(loss.texts.contains("round 1 step 3: 0.1"), "steps numbered from 1")

        let bars = parse(methodBarsSVG([(method: "vanilla", ca: [0.9, 0.8], asr: [1, 1]), (method: "ours", ca: [0.85], asr: [0.1])], title: "b"))
        XCTAssertEqual(bars.count("mark"), 4, "CA and ASR per method")
        XCTAssertEqual(bars.count("whisker"), 2, "only the two-seed method has whiskers")
        XCTAssertTrue(bars.texts.contains("vanilla CA: 85.0 ± 7.1 (2 seeds)"))
        XCTAssertTrue(bars.texts.contains("ours ASR: 10.0 ± 0.0 (1 seeds)"))
    }

    func testSameDataSameBytes() {
        let a = headScatterSVG(maxsim: [0.3], normalizedImportance: [0.2], classes: [.safe], heads: 1, alpha: 0.5, tau: 0.5, title: "x")
        XCTAssertEqual(a, headScatterSVG(maxsim: [0.3], normalizedImportance: [0.2], classes: [.safe], heads: 1, alpha: 0.5, tau: 0.5, title: "x"))
    }

    // MARK: the command

    func testPlotCommandFromJSONAndErrors() throws {
        let dir = temporaryDirectory(self)
        let exp = dir + "/exp.json"
        try Data("""
            {"attack": "badnets", "seeds": [{"seed": 1, "methods": [{"method": "vanilla", "ca": 0.9, "asr": 1.0}, {"method": "ours", "ca": 0.88, "asr": 0.1}]},
                                            {"seed": 2, "methods": [{"method": "vanilla", "ca": 0.8, "asr": 1}, {"method": "ours", "ca": 0.86, "asr": 0.3}]}]}
            """.utf8).write(to: URL(fileURLWithPath: exp))
        let r = try runHeadalign(["plot", "bars", "--from", exp, "--out", dir + "/bars.svg"])
        XCTAssertEqual(r.status, 0, r.err)
        let c = parse(try String(contentsOfFile: dir + "/bars.svg", encoding: .utf8))
        XCTAssertEqual(c.count("mark"), 4)
        XCTAssertTrue(c.texts.contains("ours ASR: 20.0 ± 14.1 (2 seeds)"))
        XCTAssertTrue(c.texts.contains("CA and ASR per method (badnets)"))

        // heads and classes from a real inspect document
        let inspect = dir + "/inspect.json"
        let i = try runHeadalign(["inspect", "--preset", "bert-tiny", "--ids", "2 7 9 3", "--ids", "2 11 12 13 3", "--view", "cls", "--out", inspect])
        XCTAssertEqual(i.status, 0, i.err)
        XCTAssertEqual(try runHeadalign(["plot", "heads", "--from", inspect, "--out", dir + "/heads.svg"]).status, 0)
        XCTAssertEqual(parse(try String(contentsOfFile: dir + "/heads.svg", encoding: .utf8)).count("mark"), 8, "bert-tiny: 2 layers x 4 heads")
        XCTAssertEqual(try runHeadalign(["plot", "classes", "--from", inspect, "--out", dir + "/classes.svg"]).status, 0)
        XCTAssertEqual(parse(try String(contentsOfFile: dir + "/classes.svg", encoding: .utf8)).count("mark"), 8)
        // attention from a shipped model: a [T, T] grid in the full view, a [1, T] row in the cls view
        let tiny = packageRoot + "/tiny-models/bert-tiny-badnets"
        for (view, rows) in [("full", 5), ("cls", 1)] {
            let a = try runHeadalign(["plot", "attention", "--model", tiny, "--text", "a good film", "--layer", "1", "--head", "2",
                                      "--view", view, "--out", dir + "/att.svg"])
            XCTAssertEqual(a.status, 0, a.err)
            let h = parse(try String(contentsOfFile: dir + "/att.svg", encoding: .utf8))
            XCTAssertEqual(h.count("columnlabel"), 5, "[CLS] a good film [SEP]")
            XCTAssertEqual(h.count("rowlabel"), rows)
            XCTAssertEqual(h.count("mark"), rows * 5)
            XCTAssertTrue(h.texts.contains("0 [CLS]"))
        }
        try assertUsageError(["plot", "attention", "--model", tiny, "--text", "x", "--layer", "9", "--out", dir + "/p.svg"], mentions: "--layer")

        try assertUsageError(["plot", "bars", "--from", exp], mentions: "--out")
        try assertUsageError(["plot", "pie", "--from", exp, "--out", dir + "/p.svg"], mentions: "--kind")
        try assertUsageError(["plot", "heads", "--from", exp, "--out", dir + "/p.svg"], mentions: "exp.json")
        try assertUsageError(["plot", "loss", "--from", dir + "/missing.json", "--out", dir + "/p.svg"], mentions: "missing.json")
        try Data("[1, 2".utf8).write(to: URL(fileURLWithPath: dir + "/bad.json"))
        try assertUsageError(["plot", "bars", "--from", dir + "/bad.json", "--out", dir + "/p.svg"], mentions: "bad.json")
        XCTAssertFalse(FileManager.default.fileExists(atPath: dir + "/p.svg"), "a failed plot writes nothing")
    }
}
