// TextData.swift: the plain input format of the method's commands: one example per line, either
// `text` or `label<TAB>text`. (The dataset readers for TSV/CSV corpora build on this.)

import Foundation

public struct TextExample: Sendable, Equatable {
    public var text: String
    public var label: Int?
    public init(text: String, label: Int? = nil) { self.text = text; self.label = label }
}

/// The most classes a classifier headalign builds may have: a new head takes its class count from
/// the labels seen, so an unbounded label (999999999) would allocate a head of that many rows.
public let maxClassifierLabels = 1000

/// The one-line error of a label outside `0..<numLabels` (the model's classes) or, with no
/// model, outside `0..<maxClassifierLabels`; nil when it is in range.
public func labelRangeError(_ label: Int, numLabels: Int?, at place: String) -> HeadAlignError? {
    if label < 0 { return .badInput("\(place): label \(label) is negative") }
    if let n = numLabels, label >= n { return .badInput("\(place): label \(label) is outside 0..<\(n) (the model's \(n) classes)") }
    if label >= maxClassifierLabels {
        return .badInput("\(place): label \(label) is outside 0..<\(maxClassifierLabels) (at most \(maxClassifierLabels) classes)")
    }
    return nil
}

/// Reads a plain examples file; errors name the file and line. Blank lines are skipped; a file
/// with no example is an error. Labels lie in `0..<numLabels` when given (the model's classes),
/// else in `0..<maxClassifierLabels`.
public func readPlainExamples(path: String, numLabels: Int? = nil) throws -> [TextExample] {
    guard let data = FileManager.default.contents(atPath: path) else { throw HeadAlignError.badInput("\(path): cannot read") }
    guard let text = String(data: data, encoding: .utf8) else { throw HeadAlignError.badInput("\(path): not UTF-8 text") }
    var out: [TextExample] = []
    for (n, line) in textLines(text).enumerated() {
        if line.trimmingCharacters(in: .whitespaces).isEmpty { continue }
        if let tab = line.firstIndex(of: "\t"), let label = Int(line[..<tab].trimmingCharacters(in: .whitespaces)) {
            if let e = labelRangeError(label, numLabels: numLabels, at: "\(path):\(n + 1)") { throw e }
            let body = String(line[line.index(after: tab)...])
            guard !body.trimmingCharacters(in: .whitespaces).isEmpty else { throw HeadAlignError.badInput("\(path):\(n + 1): empty text") }
            out.append(TextExample(text: body, label: label))
        } else {
            out.append(TextExample(text: line))
        }
    }
    guard !out.isEmpty else { throw HeadAlignError.badInput("\(path): no examples") }
    return out
}

/// The lines of a text split at LF, a CR before the LF dropped (CRLF files). Splitting by
/// Unicode scalars matters: to Swift, "\r\n" is one Character, so `split(separator: "\n")` would
/// not split CRLF text at all.
public func textLines(_ text: String) -> [String] {
    text.unicodeScalars.split(separator: "\n", omittingEmptySubsequences: false).map { scalars in
        var line = String(String.UnicodeScalarView(scalars))
        if line.unicodeScalars.last == "\r" { line.unicodeScalars.removeLast() }
        return line
    }
}
