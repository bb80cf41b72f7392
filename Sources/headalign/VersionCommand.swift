import HeadAlign
import HeadAlignLab

enum VersionCommand: Command {
    static let spec = CommandSpec(name: "version", summary: "print the version and the available backends",
                                  usage: "version", options: [])

    static func run(_ args: ParsedArguments) throws -> Int32 {
        print("headalign \(headAlignVersion)")
        print("blas: \(BLASLibrary.shared.map { "\($0.name) (loaded at run time)\($0.coreDescription.map { ", " + $0 } ?? "")" } ?? "not found (naive kernels only)")")
        return 0
    }
}
