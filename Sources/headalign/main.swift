// main.swift: the single binary. `headalign <command> [options]`; each command is one small file.

import Foundation
import HeadAlign
import HeadAlignLab

/// A command: its spec (flags and help) and what it does. `run` returns the exit status.
protocol Command {
    static var spec: CommandSpec { get }
    static func run(_ args: ParsedArguments) throws -> Int32
}

let commands: [Command.Type] = [
    InspectCommand.self, ClassifyCommand.self, MonitorCommand.self, DefendCommand.self, PoisonCommand.self, TrainCommand.self, EvalCommand.self,
    ExperimentCommand.self, DemoCommand.self, NotebooksCommand.self, PlotCommand.self, AttentionCommand.self, CorpusCommand.self,
    ForwardCommand.self, EmbedCommand.self, GenerateCommand.self, ConvertCommand.self,
    GradCheckCommand.self, BenchCommand.self, MakeModelCommand.self, AlignCommand.self, CompareCommand.self, TokenizerJSONCommand.self, VersionCommand.self,
]

@MainActor func overview() -> String {
    var s = """
    headalign: find and align the attention heads a backdoor hijacks (Jin et al.), in Swift.

    usage: headalign <command> [options]

    commands:

    """
    let width = (commands.map { $0.spec.name.count }.max() ?? 0) + 2
    for c in commands { s += "  " + c.spec.name.padding(toLength: width, withPad: " ", startingAt: 0) + c.spec.summary + "\n" }
    s += "\n'headalign <command> --help' describes a command's options.\n"
    return s
}

@MainActor func mainEntry(_ argv: [String]) -> Int32 {
    // No command at all is a usage error: the overview goes to stderr and the status is 2
    // (`headalign --help` prints it to stdout with status 0).
    guard !argv.isEmpty else {
        FileHandle.standardError.write(Data(overview().utf8))
        return 2
    }
    guard let name = argv.first, !["--help", "-h", "help"].contains(name) else {
        if argv.count >= 2, let c = commands.first(where: { $0.spec.name == argv[1] }) {
            print(c.spec.helpText, terminator: "")
        } else {
            print(overview(), terminator: "")
        }
        return 0
    }
    if name == "--version" { return (try? VersionCommand.run(ParsedArguments([], spec: VersionCommand.spec))) ?? 0 }
    guard let command = commands.first(where: { $0.spec.name == name }) else {
        printError("headalign: unknown command '\(name)' (see 'headalign --help')")
        return 2
    }
    do {
        var rest = Array(argv.dropFirst())
        // `headalign notebooks check|update`: the mode as a word
        if name == "notebooks", let first = rest.first, ["check", "update"].contains(first) { rest = ["--mode", first] + rest.dropFirst() }
        // `headalign plot KIND`: the figure as a word
        if name == "plot", let first = rest.first, !first.hasPrefix("-") { rest = ["--kind", first] + rest.dropFirst() }
        // `headalign compare A.json B.json`: the dumps as words
        if name == "compare" { rest = try CompareCommand.positional(rest) }
        let args = try ParsedArguments(rest, spec: command.spec)
        if args.wantsHelp {
            print(command.spec.helpText, terminator: "")
            return 0
        }
        try args.checkOutputs()  // outputs: never an input, room to write them, before any work
        return try command.run(args)
    } catch let e as HeadAlignError {
        printError("headalign \(name): \(e.description)")
        return e.exitStatus
    } catch {
        printError("headalign \(name): \(error)")
        return 2
    }
}

// Line-buffered stdout: with stdout redirected to a file, every line printed before an interrupt
// (SIGINT, SIGTERM, a kill) is already in the file rather than lost in a block buffer.
// (Swift 6 refuses a reference to the C global `stdout`; its address comes from the C library.)
func lineBufferStandardOutput() {
    #if canImport(Darwin)
    let symbol = "__stdoutp"
    #else
    let symbol = "stdout"
    #endif
    guard let p = dlsym(dlopen(nil, RTLD_NOW), symbol),
          let file = p.assumingMemoryBound(to: UnsafeMutablePointer<FILE>?.self).pointee else { return }
    setvbuf(file, nil, _IOLBF, 0)
}
lineBufferStandardOutput()
keepFreedMemoryInHeap()  // Tensor.swift: a step's activations reuse the last step's pages
exit(mainEntry(Array(CommandLine.arguments.dropFirst())))
