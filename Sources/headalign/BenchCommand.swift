import HeadAlign

enum BenchCommand: Command {
    static let spec = CommandSpec(name: "bench", summary: "time forward and backward on each backend", usage: "bench", options: [])
    static func run(_ args: ParsedArguments) throws -> Int32 { 0 }
}
