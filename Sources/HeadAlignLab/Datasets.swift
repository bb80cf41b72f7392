// Datasets.swift: labelled text corpora as the shared data ships them: GLUE-style TSV
// (`sentence<TAB>label`, header, CRLF), PURE-style CSV (`label,text`, RFC 4180 quoting) and plain
// `label<TAB>text`. Errors name the file and the line.

import HeadAlign
import Foundation

public struct LabeledText: Sendable, Equatable {
    public var text: String
    public var label: Int
    public init(_ text: String, _ label: Int) { self.text = text; self.label = label }
}

/// A corpus header: two fields (already trimmed), one of them `label` in any case.
public func isDatasetHeader(_ fields: [String]) -> Bool {
    fields.count == 2 && fields.contains { $0.lowercased() == "label" }
}

/// Reads a corpus, choosing the format by extension and header: `.csv` as CSV (header
/// `label,text` or `text,label`); otherwise tab-separated, `sentence<TAB>label` when the header says
/// so (or the second field is the integer), else `label<TAB>text`. Surrounding spaces of fields
/// are trimmed; CR before LF is dropped. `numLabels`, when given, bounds the labels (the model's
/// classes); without it they lie in `0..<maxClassifierLabels`, the most a new head may have.
public func readLabeledTexts(path: String, numLabels: Int? = nil) throws -> [LabeledText] {
    guard let data = FileManager.default.contents(atPath: path) else { throw HeadAlignError.badInput("\(path): cannot read") }
    guard let text = String(data: data, encoding: .utf8) else { throw HeadAlignError.badInput("\(path): not UTF-8 text") }
    let rows = path.lowercased().hasSuffix(".csv") ? try csvRows(text, path: path) : tsvRows(text)
    guard let first = rows.first else { throw HeadAlignError.badInput("\(path): empty file") }
    // header and column order
    var labelColumn = 1, start = 0
    if isDatasetHeader(first.fields) {
        labelColumn = first.fields[0].lowercased() == "label" ? 0 : 1
        start = 1
    } else if first.fields.count == 2, Int(first.fields[0]) != nil, Int(first.fields[1]) == nil {
        labelColumn = 0
    }
    var out: [LabeledText] = []
    for row in rows[start...] {
        guard row.fields.count == 2 else {
            throw HeadAlignError.badInput("\(path):\(row.line): expected 2 fields, found \(row.fields.count)")
        }
        let rawLabel = row.fields[labelColumn], body = row.fields[1 - labelColumn]
        guard let label = Int(rawLabel) else { throw HeadAlignError.badInput("\(path):\(row.line): label '\(rawLabel)' is not an integer") }
        if let e = labelRangeError(label, numLabels: numLabels, at: "\(path):\(row.line)") { throw e }
        guard !body.isEmpty else { throw HeadAlignError.badInput("\(path):\(row.line): empty text") }
        out.append(LabeledText(body, label))
    }
    guard !out.isEmpty else { throw HeadAlignError.badInput("\(path): no examples after the header") }
    return out
}

struct Row { let line: Int; let fields: [String] }

/// Tab-separated rows; blank lines skipped.
func tsvRows(_ text: String) -> [Row] {
    textLines(text).enumerated().compactMap { n, line in
        if line.trimmingCharacters(in: .whitespaces).isEmpty { return nil }
        return Row(line: n + 1, fields: line.components(separatedBy: "\t").map { $0.trimmingCharacters(in: .whitespaces) })
    }
}

/// RFC 4180 rows: fields separated by commas, optionally quoted with `"`, `""` an escaped quote,
/// quoted fields may hold commas and line breaks; blank lines skipped.
func csvRows(_ text: String, path: String) throws -> [Row] {
    var rows: [Row] = []
    var fields: [String] = [], field = "", inQuotes = false, quotedField = false
    var line = 1, rowLine = 1
    let chars = Array(text.unicodeScalars)
    var i = 0
    func endField() { fields.append(quotedField ? field : field.trimmingCharacters(in: .whitespaces)); field = ""; quotedField = false }
    func endRow() {
        endField()
        if !(fields.count == 1 && fields[0].isEmpty) { rows.append(Row(line: rowLine, fields: fields)) }
        fields = []
    }
    while i < chars.count {
        let c = chars[i]
        if inQuotes {
            if c == "\"" {
                if i + 1 < chars.count, chars[i + 1] == "\"" { field.unicodeScalars.append("\""); i += 2; continue }
                inQuotes = false
            } else {
                if c == "\n" { line += 1 }
                field.unicodeScalars.append(c)
            }
        } else if c == "\"" {
            guard field.trimmingCharacters(in: .whitespaces).isEmpty else {
                throw HeadAlignError.badInput("\(path):\(line): a quote inside an unquoted field")
            }
            field = ""
            inQuotes = true
            quotedField = true
        } else if c == "," {
            endField()
        } else if c == "\n" {
            endRow()
            line += 1
            rowLine = line
        } else if c != "\r" {
            field.unicodeScalars.append(c)
        }
        i += 1
    }
    if inQuotes { throw HeadAlignError.badInput("\(path):\(rowLine): a quoted field is not closed") }
    if !field.isEmpty || !fields.isEmpty { endRow() }
    return rows
}
