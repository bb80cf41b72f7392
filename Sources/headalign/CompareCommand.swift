// CompareCommand.swift: `headalign compare A.json B.json`, two oracle dumps field by field (the
// rules are OracleCompare.swift's and docs/ORACLE.md's): per field the worst relative and absolute
// error and where; exit 0 when every field is within tolerance, 1 when one is not, 2 on bad input.

import Foundation
import HeadAlign
import HeadAlignLab

enum CompareCommand: Command {
    static let spec = CommandSpec(
        name: "compare",
        summary: "compare two oracle dumps (headalign-oracle/1) field by field; exit 0 when they agree",
        detail: """
            Walks both dumps field by field. Exact fields (tokens, lengths, counts, labels, classes, head lists,
            strings) must be equal; fields zero in exact arithmetic (the key bias's gradient and change) pass when
            |a - b| <= --zero-atol; every other number passes when |a - b| <= atol + rtol * max(|a|, |b|). The
            command line and version in config are not compared. Prints one line per field: the values compared, the
            worst relative and absolute error and where (document index, index path), and the first value outside
            tolerance. Exit 0 when every field agrees, 1 when one does not, 2 on a file that is not a dump.
            """,
        usage: "compare A.json B.json [--rtol R] [--atol A] [--zero-atol Z] [--fields f,...] [--quiet]",
        options: [
            OptionSpec(name: "--a", value: "FILE", help: "the first dump (or give it as the first word)"),
            OptionSpec(name: "--b", value: "FILE", help: "the second dump (or give it as the second word)"),
            OptionSpec(name: "--rtol", value: "R", help: "relative tolerance (default \(OracleTolerance().rtol))"),
            OptionSpec(name: "--atol", value: "A", help: "absolute floor (default \(OracleTolerance().atol))"),
            OptionSpec(name: "--zero-atol", value: "Z", help: "absolute tolerance of fields zero in exact arithmetic (default \(OracleTolerance().zeroAtol))"),
            OptionSpec(name: "--fields", value: "f,...", help: "compare only these fields: key paths (aggregate.safety), prefixes (aggregate) or key names (maxsim)"),
            OptionSpec(name: "--quiet", value: nil, help: "print only the fields outside tolerance and the summary"),
        ])

    /// `compare A B ...` -> `compare --a A --b B ...`.
    static func positional(_ argv: [String]) throws -> [String] {
        let valued = Set(spec.options.filter { $0.value != nil }.map(\.name))
        var files: [String] = [], rest: [String] = []
        var i = 0
        while i < argv.count {
            let a = argv[i]
            if valued.contains(a) && i + 1 < argv.count { rest += [a, argv[i + 1]]; i += 2; continue }
            if a.hasPrefix("-") { rest.append(a) } else { files.append(a) }
            i += 1
        }
        guard files.count <= 2 else { throw HeadAlignError.usage("give two dumps, A.json and B.json (got \(files.count) files)") }
        return zip(["--a", "--b"], files).flatMap { [$0, $1] } + rest
    }

    static func run(_ args: ParsedArguments) throws -> Int32 {
        guard let pa = args.string("--a"), let pb = args.string("--b") else { throw HeadAlignError.usage("give two dumps: compare A.json B.json") }
        var t = OracleTolerance()
        t.rtol = try args.double("--rtol", default: t.rtol, range: 0...1)
        t.atol = try args.double("--atol", default: t.atol, range: 0...1e300)
        t.zeroAtol = try args.double("--zero-atol", default: t.zeroAtol, range: 0...1e300)
        let fields = args.string("--fields").map { $0.split(separator: ",").map { String($0).trimmingCharacters(in: .whitespaces) } }
        let a = try readOracleDump(path: pa), b = try readOracleDump(path: pb)
        let reports = compareOracleDumps(a, b, tolerance: t, fields: fields)
        if let fields, reports.isEmpty { throw HeadAlignError.usage("--fields \(fields.joined(separator: ",")): no such field in either dump") }
        let width = min(60, reports.map(\.field.count).max() ?? 10)
        let quiet = args.has("--quiet")
        for r in reports where !quiet || !r.passed {
            var line = (r.passed ? "ok   " : "FAIL ") + r.field.padding(toLength: max(width, r.field.count), withPad: " ", startingAt: 0)
            line += "  \(r.rule.rawValue)  n=\(r.count)"
            if r.rule != .exact && r.count > 0 {
                line += String(format: "  max rel %.3g", r.worstRelative) + " at \(r.worstRelativeAt)"
                line += String(format: "  max abs %.3g", r.worstAbsolute) + " at \(r.worstAbsoluteAt)"
            }
            if let f = r.firstFailure { line += "  (\(r.failures) outside; first: \(f))" }
            print(line)
        }
        let bad = reports.filter { !$0.passed }
        print("compare: \(reports.count) fields, \(bad.count) outside tolerance"
              + String(format: " (rtol %g, atol %g, zero-atol %g)", t.rtol, t.atol, t.zeroAtol)
              + (bad.isEmpty ? "" : ": " + bad.map(\.field).joined(separator: ", ")))
        return bad.isEmpty ? 0 : 1
    }
}
