// OracleCompare.swift: `headalign compare`'s engine. Walks two oracle dumps (schema
// headalign-oracle/1) field by field and reports, per field, the worst relative and absolute
// error and where. The rules (docs/ORACLE.md, "Comparing"): exact fields (tokens, ids, counts,
// classes, head lists, strings) must be equal; fields zero in exact arithmetic (the key bias's
// gradient and change) are compared with an absolute tolerance; every other number passes when
// |a - b| <= atol + rtol * max(|a|, |b|); informational fields (the command line, the version)
// are not compared.

import Foundation

/// Tolerances of the comparison.
public struct OracleTolerance: Sendable {
    public var rtol = 1e-9
    public var atol = 1e-12
    /// For fields that are zero in exact arithmetic (`oracleZeroField`).
    public var zeroAtol = 1e-9
    public init() {}
}

/// How one field is compared.
public enum OracleRule: String, Sendable {
    case exact, tolerance, zero, informational
}

/// Fields whose values must be equal: token ids, lengths, counts, labels, classes, head lists, names.
public let oracleExactFields: Set<String> = [
    "schema", "tokens", "token_count", "prompt_length", "generated_length", "document", "documents", "pair_count",
    "class", "suspicious", "safe", "suspicious_count", "safe_count", "align_suspicious", "align_safe",
    "explicit_suspicious", "explicit_safe", "gold_label", "importance_label", "view", "scope", "model_type", "task",
    "layers", "heads", "kv_heads", "head_size", "hidden_size", "precision", "importance_labels", "generate",
    "head_split", "head", "kv_head", "key_trained", "steps", "step", "batch", "name",
]

/// Fields not compared: where and with what a dump was made.
public let oracleInformationalFields: Set<String> = ["command", "headalign", "note"]

/// Whether a field is zero in exact arithmetic: the key bias adds a constant to each softmax row,
/// so its gradient (and, but for weight decay, its AdamW change) vanishes.
public func oracleZeroField(_ keys: [String]) -> Bool {
    keys.contains { $0 == "key_bias" || $0.hasSuffix("attention.self.key.bias") }
}

/// The rule of a field given by its key path (array indices left out): by its last key.
public func oracleRule(_ keys: [String]) -> OracleRule {
    guard let last = keys.last else { return .tolerance }
    if oracleInformationalFields.contains(last) { return .informational }
    if oracleZeroField(keys) { return .zero }
    return oracleExactFields.contains(last) ? .exact : .tolerance
}

/// One field's comparison.
public struct OracleFieldReport: Sendable {
    public let field: String  // key path, e.g. "documents.maxsim"
    public let rule: OracleRule
    public var count = 0  // values compared
    public var failures = 0
    public var worstRelative = 0.0, worstRelativeAt = ""
    public var worstAbsolute = 0.0, worstAbsoluteAt = ""
    public var firstFailure: String? = nil
    public var passed: Bool { failures == 0 }
}

/// A parsed dump, checked to be one (`schema` = headalign-oracle/1).
public func readOracleDump(path: String) throws -> JSONValue {
    guard let data = FileManager.default.contents(atPath: path) else { throw HeadAlignError.badInput("\(path): cannot read the file") }
    let v: JSONValue
    do { v = try data.withUnsafeBytes { try JSONValue.parse($0.bindMemory(to: UInt8.self)) } } catch let e as JSONError {
        throw HeadAlignError.badInput("\(path): not JSON (\(e))")
    }
    guard case .object = v else { throw HeadAlignError.badInput("\(path): not an oracle dump (the top level is \(v.described), not an object)") }
    guard case .string(let schema)? = v["schema"] else {
        throw HeadAlignError.badInput("\(path): not an oracle dump (no \"schema\": \"\(oracleSchema)\" at top level)")
    }
    guard schema == oracleSchema else { throw HeadAlignError.badInput("\(path): schema '\(schema)', this compare reads '\(oracleSchema)'") }
    return v
}

/// Compares two dumps field by field. `fields`: patterns selecting fields (a key path such as
/// `aggregate.safety`, a prefix of one such as `aggregate`, or a key name such as `maxsim`); nil = all.
public func compareOracleDumps(_ a: JSONValue, _ b: JSONValue, tolerance: OracleTolerance = OracleTolerance(),
                               fields: [String]? = nil) -> [OracleFieldReport] {
    var reports: [String: OracleFieldReport] = [:]
    var order: [String] = []
    func selected(_ keys: [String]) -> Bool {
        guard let fields else { return true }
        let path = keys.joined(separator: ".")
        return fields.contains { p in path == p || path.hasPrefix(p + ".") || keys.contains(p) }
    }
    /// Selected, or on the way to a selected field (where a length mismatch hides it).
    func onPath(_ keys: [String]) -> Bool {
        guard let fields else { return true }
        let path = keys.joined(separator: ".")
        return keys.isEmpty || selected(keys) || fields.contains { $0.hasPrefix(path + ".") }
    }
    func location(_ doc: Int?, _ indices: [Int]) -> String {
        let idx = indices.map { "[\($0)]" }.joined()
        if let doc { return "document \(doc)" + (idx.isEmpty ? "" : " " + idx) }
        return idx.isEmpty ? "(scalar)" : idx
    }
    func record(_ keys: [String], _ update: (inout OracleFieldReport) -> Void) {
        let field = keys.joined(separator: ".")
        if reports[field] == nil {
            reports[field] = OracleFieldReport(field: field, rule: oracleRule(keys))
            order.append(field)
        }
        update(&reports[field]!)
    }
    func fail(_ keys: [String], _ what: String) {
        record(keys) { r in r.failures += 1; if r.firstFailure == nil { r.firstFailure = what } }
    }
    func number(_ v: JSONValue) -> Double? {
        switch v {
        case .integer(let i): return Double(i)
        case .float(let x): return x
        case .bigInteger(let s): return Double(s)
        default: return nil
        }
    }
    func scalarText(_ v: JSONValue) -> String {
        switch v {
        case .string(let s): return "\"\(s)\""
        case .integer(let i): return String(i)
        case .bigInteger(let s): return s
        case .float(let x): return String(format: "%.17g", x)
        case .bool(let x): return x ? "true" : "false"
        case .null: return "null"
        case .array: return "an array"
        case .object: return "an object"
        }
    }
    func walk(_ x: JSONValue?, _ y: JSONValue?, keys: [String], doc: Int?, indices: [Int]) {
        let rule = oracleRule(keys)
        if rule == .informational { return }
        guard let x, let y else {
            guard onPath(keys) else { return }
            fail(keys, "\(location(doc, indices)): only in \(x == nil ? "B" : "A")")
            return
        }
        switch (x, y) {
        case let (.object(mx), .object(my)):
            var seen = Set<String>()
            for (k, v) in mx where !seen.contains(k) {
                seen.insert(k)
                walk(v, y[k], keys: keys + [k], doc: doc, indices: indices)
            }
            for (k, v) in my where !seen.contains(k) {
                seen.insert(k)
                walk(nil, v, keys: keys + [k], doc: doc, indices: indices)
            }
        case let (.array(ax), .array(ay)):
            guard ax.count == ay.count else {
                if onPath(keys) { fail(keys, "\(location(doc, indices)): \(ax.count) items in A, \(ay.count) in B") }
                return
            }
            let isDocuments = keys == ["documents"]
            for (i, (u, v)) in zip(ax, ay).enumerated() {
                walk(u, v, keys: keys, doc: isDocuments ? i : doc, indices: isDocuments ? indices : indices + [i])
            }
        case (.object, _), (.array, _), (_, .object), (_, .array):
            if onPath(keys) { fail(keys, "\(location(doc, indices)): \(x.described) in A, \(y.described) in B") }
        default:
            guard selected(keys) else { return }
            let at = location(doc, indices)
            if rule == .exact || number(x) == nil || number(y) == nil {
                let equal = x == y || (number(x) != nil && number(x) == number(y))
                record(keys) { $0.count += 1 }
                if !equal { fail(keys, "\(at): \(scalarText(x)) in A, \(scalarText(y)) in B") }
                return
            }
            let u = number(x)!, v = number(y)!
            let diff = abs(u - v), scale = max(abs(u), abs(v))
            let rel = diff == 0 ? 0 : diff / scale
            let ok = rule == .zero ? diff <= tolerance.zeroAtol : diff <= tolerance.atol + tolerance.rtol * scale
            record(keys) { r in
                r.count += 1
                if rel > r.worstRelative || r.worstRelativeAt.isEmpty { r.worstRelative = rel; r.worstRelativeAt = at }
                if diff > r.worstAbsolute || r.worstAbsoluteAt.isEmpty { r.worstAbsolute = diff; r.worstAbsoluteAt = at }
            }
            if !ok { fail(keys, "\(at): \(String(format: "%.17g", u)) in A, \(String(format: "%.17g", v)) in B") }
        }
    }
    walk(a, b, keys: [], doc: nil, indices: [])
    return order.map { reports[$0]! }
}
