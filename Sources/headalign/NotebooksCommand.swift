// NotebooksCommand.swift: `headalign notebooks check|update`. The notebooks are markdown; a
// ```console block holds commands (`$ headalign ...`), each followed by the output the binary
// printed. `check` re-runs every command and fails, naming the notebook and line, when an output
// differs; `update` rewrites the outputs (atomically). Commands run from the repository root (the
// notebooks folder's parent) on the naive backend, so the numbers do not depend on a BLAS library.

import Foundation
import HeadAlign

enum NotebooksCommand: Command {
    static let spec = CommandSpec(
        name: "notebooks",
        summary: "re-run the notebooks' commands: check (fail on any difference) or update (rewrite the outputs)",
        detail: """
            Every ```console block of every notebooks/*.md file: a line '$ headalign ARGS' is a command, the lines
            after it (to the next '$ ' line or the end of the block) its expected standard output. 'check' runs each
            command (from the notebooks folder's parent, with HEADALIGN_NO_BLAS=1) and reports every notebook:line
            whose output differs, exit status 1; 'update' writes the new outputs into the notebooks.
            """,
        usage: "notebooks (check | update) [--dir DIR]",
        options: [
            OptionSpec(name: "--mode", value: "M", help: "check or update (also given as the first word)"),
            OptionSpec(name: "--dir", value: "DIR", help: "the notebooks folder (default notebooks)"),
        ])

    /// One command of a notebook: its line (1-based), its arguments and the output lines recorded.
    struct Cell {
        let line: Int
        let arguments: [String]
        let outputRange: Range<Int>  // indices into the file's lines
    }

    /// Splits a command line as a POSIX shell would for plain words, '...' and "..." (with \" and \\).
    static func shellWords(_ s: String, location: String) throws -> [String] {
        var words: [String] = [], current = "", inWord = false
        var quote: Character? = nil
        var it = Array(s)[...]
        while let ch = it.popFirst() {
            if let q = quote {
                if ch == q { quote = nil } else if q == "\"" && ch == "\\", let next = it.first, next == "\"" || next == "\\" {
                    current.append(it.removeFirst())
                } else { current.append(ch) }
            } else if ch == "'" || ch == "\"" {
                quote = ch; inWord = true
            } else if ch == " " || ch == "\t" {
                if inWord { words.append(current); current = ""; inWord = false }
            } else {
                current.append(ch); inWord = true
            }
        }
        guard quote == nil else { throw HeadAlignError.badInput("\(location): unterminated quote") }
        if inWord { words.append(current) }
        return words
    }

    static func cells(_ lines: [String], file: String) throws -> [Cell] {
        var cells: [Cell] = []
        var i = 0
        while i < lines.count {
            guard lines[i].trimmingCharacters(in: .whitespaces) == "```console" else { i += 1; continue }
            i += 1
            while i < lines.count, lines[i].trimmingCharacters(in: .whitespaces) != "```" {
                guard lines[i].hasPrefix("$ ") else { throw HeadAlignError.badInput("\(file):\(i + 1): a console block line must start with '$ ' or follow a command") }
                let words = try shellWords(String(lines[i].dropFirst(2)), location: "\(file):\(i + 1)")
                guard words.first == "headalign" else { throw HeadAlignError.badInput("\(file):\(i + 1): only headalign commands run in a notebook") }
                let line = i + 1
                i += 1
                let start = i
                while i < lines.count, !lines[i].hasPrefix("$ "), lines[i].trimmingCharacters(in: .whitespaces) != "```" { i += 1 }
                cells.append(Cell(line: line, arguments: Array(words.dropFirst()), outputRange: start..<i))
            }
            guard i < lines.count else { throw HeadAlignError.badInput("\(file): a console block is not closed") }
            i += 1
        }
        return cells
    }

    /// Runs this binary with the arguments; its standard output without the final newline.
    static func run(_ arguments: [String], in directory: String) throws -> String {
        let p = Process()
        p.executableURL = URL(fileURLWithPath: "/proc/self/exe").resolvingSymlinksInPath()
        p.arguments = arguments
        p.currentDirectoryURL = URL(fileURLWithPath: directory)
        var env = ProcessInfo.processInfo.environment
        env["HEADALIGN_NO_BLAS"] = "1"
        p.environment = env
        let out = Pipe()
        p.standardOutput = out
        p.standardError = FileHandle.nullDevice
        try p.run()
        let data = out.fileHandleForReading.readDataToEndOfFile()
        p.waitUntilExit()
        var text = String(decoding: data, as: UTF8.self)
        while text.hasSuffix("\n") { text.removeLast() }
        return p.terminationStatus == 0 ? text : text + (text.isEmpty ? "" : "\n") + "(exit status \(p.terminationStatus))"
    }

    static func run(_ args: ParsedArguments) throws -> Int32 {
        let mode = try args.choice("--mode", ["check", "update"], default: "check")
        let dir = args.string("--dir") ?? "notebooks"
        var isDir: ObjCBool = false
        guard FileManager.default.fileExists(atPath: dir, isDirectory: &isDir), isDir.boolValue else {
            throw HeadAlignError.usage("--dir \(dir): not a directory")
        }
        let root = URL(fileURLWithPath: dir).standardizedFileURL.deletingLastPathComponent().path
        let files = try FileManager.default.contentsOfDirectory(atPath: dir).filter { $0.hasSuffix(".md") }.sorted()
        guard !files.isEmpty else { throw HeadAlignError.usage("--dir \(dir): no .md notebooks") }
        var differences = 0, commands = 0
        for name in files {
            let path = dir + "/" + name
            guard let text = try? String(contentsOfFile: path, encoding: .utf8) else { throw HeadAlignError.badInput("\(path): cannot read as UTF-8") }
            var lines = text.components(separatedBy: "\n")
            var changed = false
            // later cells first, so replacing one output keeps the earlier ranges valid
            for cell in try cells(lines, file: path).reversed() {
                commands += 1
                let actual = try run(cell.arguments, in: root).components(separatedBy: "\n")
                let expected = Array(lines[cell.outputRange])
                guard actual != expected else { continue }
                if mode == "update" {
                    lines.replaceSubrange(cell.outputRange, with: actual)
                    changed = true
                } else {
                    differences += 1
                    let k = (0..<min(expected.count, actual.count)).first { expected[$0] != actual[$0] } ?? min(expected.count, actual.count)
                    let want = k < expected.count ? expected[k] : "(no more lines)", got = k < actual.count ? actual[k] : "(no more lines)"
                    printError("\(path):\(cell.line): output differs at output line \(k + 1): notebook has '\(want)', the binary prints '\(got)'")
                }
            }
            if changed {
                try writeAtomically(Data(lines.joined(separator: "\n").utf8), to: path)
                print("updated \(path)")
            }
        }
        if mode == "check" {
            print("\(commands) commands in \(files.count) notebooks: \(differences == 0 ? "all outputs agree" : "\(differences) differ")")
            return differences == 0 ? 0 : 1
        }
        print("\(commands) commands in \(files.count) notebooks re-run")
        return 0
    }
}
