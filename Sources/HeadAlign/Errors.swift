// Errors.swift: the errors a user can cause. Each carries one line that names the flag or file
// and what is wrong; the command line prints it and exits with status 2 (1 for numeric failures).
// Programmer errors (shape mismatches inside the library) are preconditions instead.

public enum HeadAlignError: Error, CustomStringConvertible, Equatable {
    /// A bad flag, value, preset or command.
    case usage(String)
    /// A file that cannot be read or is malformed; the message names the file.
    case badInput(String)
    /// A numeric failure (NaN in training, a gradient check over tolerance).
    case numeric(String)

    public var description: String {
        switch self {
        case .usage(let m), .badInput(let m), .numeric(let m): return m
        }
    }

    /// The process exit status for this error.
    public var exitStatus: Int32 {
        switch self {
        case .usage, .badInput: return 2
        case .numeric: return 1
        }
    }
}
