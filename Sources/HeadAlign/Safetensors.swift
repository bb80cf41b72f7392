// Safetensors.swift: read (memory-mapped, validated as the reference `safetensors` reader
// validates) and write (atomically, header padded to 8 bytes) the safetensors format, and
// convert stored half precision to the compute precision. Model-level naming is Checkpoint.swift's.
//
// Format: 8-byte little-endian header length N, N bytes of UTF-8 JSON mapping tensor names to
// {dtype, shape, data_offsets: [begin, end)} (plus an optional "__metadata__" string map), then
// the data section, which the tensors must cover exactly, back to back from offset 0.

#if canImport(Glibc)
import Glibc
#elseif canImport(Darwin)
import Darwin
#endif
import Foundation

// MARK: - Types

/// In the reference implementation's order (it sorts by this order when writing).
public enum SafetensorsDType: String, CaseIterable, Sendable {
    case BOOL, F4, F6_E2M3, F6_E3M2, U8, I8, F8_E5M2, F8_E4M3, F8_E8M0, F8_E4M3FNUZ, F8_E5M2FNUZ
    case I16, U16, F16, BF16, I32, U32, F32, C64, F64, I64, U64

    /// Bits per element (sub-byte types pack).
    public var bits: Int {
        switch self {
        case .F4: return 4
        case .F6_E2M3, .F6_E3M2: return 6
        case .BOOL, .U8, .I8, .F8_E5M2, .F8_E4M3, .F8_E8M0, .F8_E4M3FNUZ, .F8_E5M2FNUZ: return 8
        case .I16, .U16, .F16, .BF16: return 16
        case .I32, .U32, .F32: return 32
        case .C64, .F64, .I64, .U64: return 64
        }
    }

    /// Whether headalign can turn it into model weights.
    public var isFloatingPoint: Bool { [.F16, .BF16, .F32, .F64].contains(self) }
}

public struct SafetensorsEntry: Sendable, Equatable {
    public let name: String
    public let dtype: SafetensorsDType
    public let shape: [Int]
    public let begin: Int  // within the data section
    public let end: Int
    public var count: Int { shape.reduce(1, *) }
}

/// The parsed, validated header of one file.
public struct SafetensorsHeader: Sendable {
    public let headerLength: Int  // N
    public let metadata: [String: String]?
    public let entries: [SafetensorsEntry]  // sorted by data offsets
    public var dataStart: Int { 8 + headerLength }

    public func entry(_ name: String) -> SafetensorsEntry? { entries.first { $0.name == name } }
}

// MARK: - Validation

public let safetensorsMaxHeaderLength = 100_000_000

/// Parses and validates a whole file's bytes, with the reference reader's rules in its order.
/// `source` names the file in errors. Never traps on any input.
public func parseSafetensorsHeader(_ bytes: UnsafeRawBufferPointer, source: String) throws -> SafetensorsHeader {
    func bad(_ m: String) -> HeadAlignError { .badInput("\(source): \(m)") }
    guard bytes.count >= 8 else { throw bad("file is \(bytes.count) bytes, shorter than the 8-byte header length") }
    var n64: UInt64 = 0
    for k in 0..<8 { n64 |= UInt64(bytes[k]) << (8 * UInt64(k)) }
    guard n64 <= UInt64(safetensorsMaxHeaderLength) else {
        throw bad("header length \(n64) exceeds the limit of \(safetensorsMaxHeaderLength) bytes")
    }
    let n = Int(n64)
    guard 8 + n <= bytes.count else {
        throw bad("header length \(n) runs past the end of the file (\(bytes.count) bytes)")
    }
    let headerBytes = UnsafeBufferPointer(rebasing: bytes.bindMemory(to: UInt8.self)[8..<(8 + n)])
    guard String(validating: headerBytes, as: UTF8.self) != nil else { throw bad("header is not valid UTF-8") }
    let json: JSONValue
    do { json = try JSONValue.parse(headerBytes) } catch let e as JSONError {
        throw bad("header is not valid JSON (\(e))")
    }
    guard case .object(let members) = json else { throw bad("header is \(json.described) in JSON, not an object") }

    var metadata: [String: String]? = nil
    var byName: [String: SafetensorsEntry] = [:]
    var order: [String] = []
    for (name, value) in members {
        if name == "__metadata__" {
            guard case .object(let pairs) = value else { throw bad("__metadata__ is \(value.described), not an object of strings") }
            var m: [String: String] = [:]
            for (k, v) in pairs {
                guard case .string(let s) = v else { throw bad("__metadata__ key '\(k)' is \(v.described), not a string") }
                m[k] = s
            }
            metadata = m
            continue
        }
        func field(_ key: String) throws -> JSONValue {
            guard let f = value[key] else { throw bad("tensor '\(name)': missing field '\(key)'") }
            return f
        }
        func index(_ v: JSONValue, _ what: String) throws -> Int {
            guard case .integer(let i) = v, i >= 0 else { throw bad("tensor '\(name)': \(what) must be non-negative integers, found \(v.described)") }
            return i
        }
        guard case .object = value else { throw bad("tensor '\(name)': \(value.described), not an object") }
        guard case .string(let dt) = try field("dtype") else { throw bad("tensor '\(name)': dtype is not a string") }
        guard let dtype = SafetensorsDType(rawValue: dt) else { throw bad("tensor '\(name)': unknown dtype '\(dt)'") }
        guard case .array(let dims) = try field("shape") else { throw bad("tensor '\(name)': shape is not an array") }
        let shape = try dims.map { try index($0, "shape entries") }
        guard case .array(let offs) = try field("data_offsets"), offs.count == 2 else {
            throw bad("tensor '\(name)': data_offsets must be an array of two integers")
        }
        let begin = try index(offs[0], "data_offsets"), end = try index(offs[1], "data_offsets")
        if byName[name] == nil { order.append(name) }
        byName[name] = SafetensorsEntry(name: name, dtype: dtype, shape: shape, begin: begin, end: end)
    }
    // Sorted by (begin, end), each tensor must start where the previous ended, from 0.
    let entries = order.compactMap { byName[$0] }.sorted { ($0.begin, $0.end) < ($1.begin, $1.end) }
    var cursor = 0
    for e in entries {
        if e.begin != cursor || e.end < e.begin {
            if e.end < e.begin { throw bad("tensor '\(e.name)': data_offsets [\(e.begin), \(e.end)] end before they begin") }
            if cursor == 0 { throw bad("tensor '\(e.name)': data_offsets start at \(e.begin), not at 0") }
            throw bad(e.begin > cursor
                ? "tensor '\(e.name)': data_offsets start at \(e.begin), leaving a gap after the previous tensor's end \(cursor)"
                : "tensor '\(e.name)': data_offsets start at \(e.begin), overlapping the previous tensor (ends at \(cursor))")
        }
        cursor = e.end
        var elements = 1
        for d in e.shape {
            let (p, o) = elements.multipliedReportingOverflow(by: d)
            guard !o else { throw bad("tensor '\(e.name)': element count of shape \(e.shape) overflows") }
            elements = p
        }
        let (bits, o) = elements.multipliedReportingOverflow(by: e.dtype.bits)
        guard !o else { throw bad("tensor '\(e.name)': byte size of shape \(e.shape) in \(e.dtype) overflows") }
        guard bits % 8 == 0 else {
            throw bad("tensor '\(e.name)': \(elements) elements of \(e.dtype) do not end on a byte boundary")
        }
        guard bits / 8 == e.end - e.begin else {
            throw bad("tensor '\(e.name)': \(elements) elements of \(e.dtype) need \(bits / 8) bytes, data_offsets span \(e.end - e.begin)")
        }
    }
    let dataLength = bytes.count - 8 - n
    if cursor != dataLength {
        throw bad(cursor < dataLength
            ? "\(dataLength - cursor) bytes left over after the last tensor (data section \(dataLength) bytes, tensors cover \(cursor))"
            : "the tensors need \(cursor) bytes of data but the file has \(dataLength)")
    }
    return SafetensorsHeader(headerLength: n, metadata: metadata, entries: entries)
}

// MARK: - Reading

/// A memory-mapped, validated safetensors file. The mapping is read-only and private: the file
/// is never modified, and it stays mapped while this object lives.
public final class SafetensorsFile: @unchecked Sendable {
    public let path: String
    public let header: SafetensorsHeader
    private let base: UnsafeRawPointer?
    private let length: Int

    public init(path: String) throws {
        self.path = path
        let fd = open(path, O_RDONLY)
        guard fd >= 0 else { throw HeadAlignError.badInput("\(path): cannot open (\(String(cString: strerror(errno))))") }
        defer { close(fd) }
        var st = stat()
        guard fstat(fd, &st) == 0 else { throw HeadAlignError.badInput("\(path): cannot stat") }
        guard (st.st_mode & S_IFMT) == S_IFREG else { throw HeadAlignError.badInput("\(path): not a regular file") }
        length = Int(st.st_size)
        if length == 0 {
            base = nil
        } else {
            let m = mmap(nil, length, PROT_READ, MAP_PRIVATE, fd, 0)
            guard let m, m != MAP_FAILED else { throw HeadAlignError.badInput("\(path): cannot map (\(String(cString: strerror(errno))))") }
            base = UnsafeRawPointer(m)
        }
        header = try parseSafetensorsHeader(UnsafeRawBufferPointer(start: base, count: length), source: path)
    }

    deinit {
        if let base { munmap(UnsafeMutableRawPointer(mutating: base), length) }
    }

    public var names: [String] { header.entries.map(\.name) }

    /// The raw bytes of one tensor.
    public func bytes(of e: SafetensorsEntry) -> UnsafeRawBufferPointer {
        UnsafeRawBufferPointer(start: base.map { $0 + header.dataStart + e.begin }, count: e.end - e.begin)
    }

    /// Converts tensor `name` to `S` into `out` (which holds its element count).
    @_specialize(exported: true, where S == Float)
    @_specialize(exported: true, where S == Double)
    public func read<S: Real>(_ name: String, into out: UnsafeMutablePointer<S>, count: Int) throws {
        guard let e = header.entry(name) else { throw HeadAlignError.badInput("\(path): no tensor '\(name)'") }
        guard e.count == count else {
            throw HeadAlignError.badInput("\(path): tensor '\(name)' has \(e.count) elements, \(count) expected")
        }
        try convert(bytes(of: e), dtype: e.dtype, into: out, count: count, what: "\(path): tensor '\(name)'")
    }
}

/// Little-endian stored values of a floating-point dtype into `S`.
@_specialize(exported: true, where S == Float)
@_specialize(exported: true, where S == Double)
public func convert<S: Real>(_ raw: UnsafeRawBufferPointer, dtype: SafetensorsDType, into out: UnsafeMutablePointer<S>,
                             count: Int, what: String) throws {
    switch dtype {
    case .F32:
        for i in 0..<count { out[i] = S(Float(bitPattern: raw.loadUnaligned(fromByteOffset: 4 * i, as: UInt32.self))) }
    case .F64:
        for i in 0..<count { out[i] = S(Double(bitPattern: raw.loadUnaligned(fromByteOffset: 8 * i, as: UInt64.self))) }
    case .BF16:  // the top half of a Float
        if S.self == Float.self, let base = raw.baseAddress, Int(bitPattern: base) % 2 == 0 {
            // a 7B model run layer by layer converts 6.7 G elements per pass: a plain typed loop that vectorises
            let src = base.assumingMemoryBound(to: UInt16.self)
            let dst = UnsafeMutableRawPointer(out).assumingMemoryBound(to: UInt32.self)
            for i in 0..<count { dst[i] = UInt32(UInt16(littleEndian: src[i])) << 16 }
            return
        }
        for i in 0..<count {
            out[i] = S(Float(bitPattern: UInt32(raw.loadUnaligned(fromByteOffset: 2 * i, as: UInt16.self)) << 16))
        }
    case .F16:
        let table = halfToFloatTable
        for i in 0..<count { out[i] = S(table[Int(raw.loadUnaligned(fromByteOffset: 2 * i, as: UInt16.self))]) }
    default:
        throw HeadAlignError.badInput("\(what): dtype \(dtype) cannot be used as model weights (F16, BF16, F32, F64)")
    }
}

/// Every IEEE half-precision bit pattern as a Float (256 KiB, built once): a table lookup per
/// element instead of a conversion call, which is slow on a generic x86-64 build.
let halfToFloatTable: [Float] = (0..<65536).map { halfToFloat(UInt16($0)) }

/// One half-precision bit pattern to Float, by its fields.
public func halfToFloat(_ h: UInt16) -> Float {
    let sign: Float = (h & 0x8000) != 0 ? -1 : 1
    let exponent = Int((h >> 10) & 0x1F), mantissa = Float(h & 0x3FF)
    switch exponent {
    case 0: return sign * mantissa * 0x1p-24  // zero and subnormals
    case 31: return mantissa == 0 ? sign * .infinity : .nan
    default: return sign * (1 + mantissa / 1024) * Float(sign: .plus, exponent: exponent - 15, significand: 1)
    }
}

/// Float to bfloat16 bits, rounding to nearest even (NaN stays NaN).
public func floatToBFloat16(_ x: Float) -> UInt16 {
    if x.isNaN { return 0x7FC0 }
    let b = x.bitPattern
    return UInt16(truncatingIfNeeded: (b &+ 0x7FFF &+ ((b >> 16) & 1)) >> 16)
}

// MARK: - Writing

/// One tensor to write: its values in the compute precision and the dtype to store.
public struct SafetensorsTensor<S: Real> {
    public let name: String
    public let shape: [Int]
    public let values: UnsafeBufferPointer<S>
    public let dtype: SafetensorsDType

    public init(name: String, shape: [Int], values: UnsafeBufferPointer<S>, dtype: SafetensorsDType) {
        self.name = name; self.shape = shape; self.values = values; self.dtype = dtype
    }
}

/// The file's bytes: header sorted as the reference writer sorts (larger dtypes first, then by
/// name), compact JSON padded with spaces to a multiple of 8, then the data back to back.
@_specialize(exported: true, where S == Float)
@_specialize(exported: true, where S == Double)
public func serializeSafetensors<S: Real>(_ tensors: [SafetensorsTensor<S>], metadata: [String: String]? = nil) throws -> Data {
    for t in tensors where ![.F32, .F64, .F16, .BF16].contains(t.dtype) {
        throw HeadAlignError.usage("safetensors writer: dtype \(t.dtype) is not writable (F32, F64, F16, BF16)")
    }
    let rank = { (d: SafetensorsDType) in SafetensorsDType.allCases.firstIndex(of: d)! }  // the reference's dtype order
    let sorted = tensors.sorted { a, b in
        a.dtype != b.dtype ? rank(a.dtype) > rank(b.dtype) : a.name < b.name
    }
    var header = "{"
    var parts: [String] = []
    if let metadata {
        parts.append("\"__metadata__\":{" + metadata.keys.sorted().map { "\(jsonQuoted($0)):\(jsonQuoted(metadata[$0]!))" }
            .joined(separator: ",") + "}")
    }
    var offset = 0
    for t in sorted {
        precondition(t.shape.reduce(1, *) == t.values.count, "serializeSafetensors: \(t.name) shape \(t.shape) vs \(t.values.count) values")
        let size = t.values.count * t.dtype.bits / 8
        parts.append("\(jsonQuoted(t.name)):{\"dtype\":\"\(t.dtype.rawValue)\",\"shape\":[\(t.shape.map(String.init).joined(separator: ","))],\"data_offsets\":[\(offset),\(offset + size)]}")
        offset += size
    }
    header += parts.joined(separator: ",") + "}"
    var headerBytes = Array(header.utf8)
    headerBytes += [UInt8](repeating: 0x20, count: (8 - headerBytes.count % 8) % 8)
    var data = Data(capacity: 8 + headerBytes.count + offset)
    withUnsafeBytes(of: UInt64(headerBytes.count).littleEndian) { data.append(contentsOf: $0) }
    data.append(contentsOf: headerBytes)
    for t in sorted {
        data.append(encodeValues(t.values, as: t.dtype))
    }
    return data
}

/// Values stored little-endian in a writable dtype (F32, F64, BF16 rounded to nearest even, F16).
@_specialize(exported: true, where S == Float)
@_specialize(exported: true, where S == Double)
public func encodeValues<S: Real>(_ values: UnsafeBufferPointer<S>, as dtype: SafetensorsDType) -> Data {
    let size = dtype.bits / 8
    var out = Data(count: values.count * size)
    out.withUnsafeMutableBytes { raw in
        for (i, v) in values.enumerated() {
            switch dtype {
            case .F64: raw.storeBytes(of: Double(v).bitPattern.littleEndian, toByteOffset: 8 * i, as: UInt64.self)
            case .F32: raw.storeBytes(of: Float(v).bitPattern.littleEndian, toByteOffset: 4 * i, as: UInt32.self)
            case .BF16: raw.storeBytes(of: floatToBFloat16(Float(v)).littleEndian, toByteOffset: 2 * i, as: UInt16.self)
            default: raw.storeBytes(of: Float16(Float(v)).bitPattern.littleEndian, toByteOffset: 2 * i, as: UInt16.self)
            }
        }
    }
    return out
}

/// A JSON string literal.
public func jsonQuoted(_ s: String) -> String {
    var out = "\""
    for u in s.unicodeScalars {
        switch u {
        case "\"": out += "\\\""
        case "\\": out += "\\\\"
        case "\n": out += "\\n"
        case "\r": out += "\\r"
        case "\t": out += "\\t"
        default:
            if u.value < 0x20 { out += String(format: "\\u%04x", u.value) } else { out.unicodeScalars.append(u) }
        }
    }
    return out + "\""
}

/// Removes the temporaries a killed headalign left beside `target`: entries of its directory
/// named `NAME.tmp-PID` or `.NAME.tmp-PID` (what the atomic writers create) whose process PID no
/// longer exists. A live process's temporary (kill(PID, 0) succeeds or is not permitted) and
/// this process's own are never touched. Best effort: a failure to list or remove is ignored.
public func removeStaleTemporaries(beside target: String) {
    let fm = FileManager.default
    let parent = URL(fileURLWithPath: target).deletingLastPathComponent().path
    guard let names = try? fm.contentsOfDirectory(atPath: parent) else { return }
    for name in names {
        guard let r = name.range(of: ".tmp-", options: .backwards), r.lowerBound > name.startIndex else { continue }
        let digits = name[r.upperBound...]
        guard !digits.isEmpty, digits.count <= 10, digits.allSatisfy({ $0.isASCII && $0.isNumber }),
              let pid = Int32(digits), pid > 0, pid != getpid() else { continue }
        guard kill(pid, 0) != 0, errno == ESRCH else { continue }  // alive, or not ours to judge
        try? fm.removeItem(atPath: (parent as NSString).appendingPathComponent(name))
    }
}

/// Writes `data` to `path` atomically: a temporary file in the same directory, then a rename, so a
/// failed run never leaves a half-written output. Stale temporaries of killed runs beside it go.
public func writeAtomically(_ data: Data, to given: String) throws {
    // A symlink is followed (the link stays a link); a device or pipe such as /dev/stdout is
    // written directly: renaming a temporary file over it would replace it with a plain file.
    let path = URL(fileURLWithPath: given).resolvingSymlinksInPath().path
    var st = stat()
    if stat(path, &st) == 0, (st.st_mode & S_IFMT) != S_IFREG {
        guard (st.st_mode & S_IFMT) != S_IFDIR else { throw HeadAlignError.badInput("\(given): is a directory") }
        guard let h = FileHandle(forWritingAtPath: path) else { throw HeadAlignError.badInput("\(given): cannot open for writing") }
        h.write(data)
        try? h.close()
        return
    }
    let url = URL(fileURLWithPath: path)
    removeStaleTemporaries(beside: path)
    let tmp = url.deletingLastPathComponent().appendingPathComponent(".\(url.lastPathComponent).tmp-\(getpid())")
    do {
        try data.write(to: tmp)
        if rename(tmp.path, path) != 0 {
            throw HeadAlignError.badInput("\(path): cannot write (\(String(cString: strerror(errno))))")
        }
    } catch let e as HeadAlignError {
        try? FileManager.default.removeItem(at: tmp)
        throw e
    } catch {
        try? FileManager.default.removeItem(at: tmp)
        throw HeadAlignError.badInput("\(path): cannot write (\(error.localizedDescription))")
    }
}
