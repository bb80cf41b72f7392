// NotebooksCommand.swift: `headalign notebooks check|update`. The notebooks are markdown; a
// ```console block holds commands (`$ headalign ...`), each followed by the output the binary
// printed. `check` re-runs every command and fails, naming the notebook and line, when an output
// differs; `update` rewrites the outputs (atomically). Commands run from the repository root (the
// notebooks folder's parent) on the naive backend, so the numbers do not depend on a BLAS library.

import Foundation
import HeadAlign
import HeadAlignLab

enum NotebooksCommand: Command {
    static let spec = CommandSpec(
        name: "notebooks",
        summary: "re-run the notebooks' commands: check (fail on any difference) or update (rewrite the outputs)",
        detail: """
            Every ```console block of every notebooks/*.md file: a line '$ headalign ARGS' is a command, the lines
            after it (to the next '$ ' line or the end of the block) its expected standard output. 'check' runs each
            command (from the notebooks folder's parent, with HEADALIGN_NO_BLAS=1) and reports every notebook:line
            whose output differs, and every file it writes (--out, --report, --json, --out-md: the figures and their
            JSON) whose bytes differ from the committed one (which is put back), exit status 1; 'update' writes the
            new outputs into the notebooks and leaves the regenerated files.
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

    /// The files a command writes into the repository, by its output flags (relative paths, from
    /// the repository root); an absolute path is scratch space the check does not compare.
    static func outputFiles(_ arguments: [String]) -> [String] {
        zip(arguments, arguments.dropFirst()).compactMap { flag, value in
            ["--out", "--report", "--json", "--out-md"].contains(flag) && !value.hasPrefix("/") ? value : nil  // absolute paths are scratch
        }
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
            // cells run in order (a figure may read the JSON an earlier command wrote); outputs
            // are replaced afterwards, later cells first, so the earlier ranges stay valid
            var replacements: [(Range<Int>, [String])] = []
            for cell in try cells(lines, file: path) {
                commands += 1
                // files the command writes (figures, JSON): remember the committed bytes first
                let written = outputFiles(cell.arguments).map { root + "/" + $0 }
                let committed = written.map { FileManager.default.contents(atPath: $0) }
                let printed = try run(cell.arguments, in: root)
                let actual = printed.isEmpty ? [] : printed.components(separatedBy: "\n")  // a silent command has no output lines
                if mode == "check" {
                    for (file, old) in zip(written, committed) {
                        let new = FileManager.default.contents(atPath: file)
                        guard new != old else { continue }
                        differences += 1
                        printError("\(path):\(cell.line): \(old == nil ? "the command wrote \(file), which is not committed" : "\(file) differs from the committed file (regenerated bytes)")")
                        if let old { try writeAtomically(old, to: file) } else { try? FileManager.default.removeItem(atPath: file) }
                    }
                }
                let expected = Array(lines[cell.outputRange])
                guard actual != expected else { continue }
                if mode == "update" {
                    replacements.append((cell.outputRange, actual))
                } else {
                    differences += 1
                    let k = (0..<min(expected.count, actual.count)).first { expected[$0] != actual[$0] } ?? min(expected.count, actual.count)
                    let want = k < expected.count ? expected[k] : "(no more lines)", got = k < actual.count ? actual[k] : "(no more lines)"
                    printError("\(path):\(cell.line): output differs at output line \(k + 1): notebook has '\(want)', the binary prints '\(got)'")
                }
            }
            for (range, actual) in replacements.reversed() { lines.replaceSubrange(range, with: actual) }
            let changed = !replacements.isEmpty
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
