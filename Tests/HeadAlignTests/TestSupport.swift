// TestSupport.swift: tolerances with call-site reporting, random data, finite differences.

import XCTest
import HeadAlign
import HeadAlignLab

/// `|a - b| <= atol + rtol * |b|`, reported at the caller's line.
func assertClose(_ a: Double, _ b: Double, atol: Double = 0, rtol: Double = 0, _ message: String = "",
                 file: StaticString = #filePath, line: UInt = #line) {
    XCTAssert(abs(a - b) <= atol + rtol * abs(b), "\(a) vs \(b) (atol \(atol), rtol \(rtol)) \(message)",
              file: file, line: line)
}

func assertAllClose<S: Real>(_ a: [S], _ b: [Double], atol: Double = 0, rtol: Double = 0, _ message: String = "",
                             file: StaticString = #filePath, line: UInt = #line) {
    XCTAssertEqual(a.count, b.count, "lengths \(message)", file: file, line: line)
    for (i, (x, y)) in zip(a, b).enumerated() where abs(Double(x) - y) > atol + rtol * abs(y) {
        XCTFail("[\(i)] \(x) vs \(y) (atol \(atol), rtol \(rtol)) \(message)", file: file, line: line)
        return
    }
}

/// `experiment` on a bert-tiny trained on 200 sentences of the embedded corpus with BadNets, one
/// seed, a 3-step fine-tuning budget and small defender and monitor sets: seconds in release.
func smallExperimentArguments(methods: String, json: String, markdown: String) -> [String] {
    ["experiment", "--preset", "bert-tiny", "--corpus", "sentiment", "--corpus-size", "200", "--epochs", "2",
     "--attack", "badnets", "--poison-rate", "0.2", "--seeds", "1", "--methods", methods,
     "--ft-steps", "3", "--defense-count", "30", "--monitor-count", "10", "--backend", "naive", "--json", json, "--out-md", markdown]
}

func randomTensor<S: Real>(_ shape: [Int], _ rng: inout SeededGenerator, std: Double = 1) -> Tensor<S> {
    let t = Tensor<S>(shape)
    for i in 0..<t.count { t.data[i] = S(std * rng.normal()) }
    return t
}

/// Checks `backward` of a scalar-valued probe `f(x) = <R, op(x)>` against central differences.
/// `forward(x)` returns op(x); `backward(x, dOut)` returns dL/dx for dL/dout = dOut.
func checkGradient(_ x: Tensor<Double>, outputCount: Int, seed: UInt64 = 7, step: Double = 1e-5, tolerance: Double = 1e-6,
                   forward: (Tensor<Double>) -> Tensor<Double>,
                   backward: (Tensor<Double>, Tensor<Double>) -> Tensor<Double>,
                   file: StaticString = #filePath, line: UInt = #line) {
    var rng = SeededGenerator(seed: seed)
    let outShape = forward(x).shape
    precondition(outShape.reduce(1, *) == outputCount, "checkGradient: output has shape \(outShape)")
    let r: Tensor<Double> = randomTensor(outShape, &rng)
    func f(_ x: Tensor<Double>) -> Double {
        let y = forward(x)
        var s = 0.0
        for i in 0..<y.count { s += r.data[i] * y.data[i] }
        return s
    }
    let analytic = backward(x, r)
    for i in 0..<x.count {
        let saved = x.data[i]
        x.data[i] = saved + step; let fp = f(x)
        x.data[i] = saved - step; let fm = f(x)
        x.data[i] = saved
        let fd = (fp - fm) / (2 * step)
        let err = abs(analytic.data[i] - fd) / max(abs(fd), abs(analytic.data[i]), 1e-3)
        if err > tolerance {
            XCTFail("d/dx[\(i)]: analytic \(analytic.data[i]) vs finite difference \(fd) (rel \(err))", file: file, line: line)
            return
        }
    }
}

/// The BLAS backend, or nil (the caller skips) when no library loads.
func blasOrSkip() throws -> Backend {
    guard let lib = BLASLibrary.shared else {
        throw XCTSkip("OpenBLAS not found (apt-get install libopenblas-dev); BLAS checks skipped")
    }
    return .blas(lib)
}

/// The package root (two levels above this file).
let packageRoot = URL(fileURLWithPath: #filePath).deletingLastPathComponent().deletingLastPathComponent()
    .deletingLastPathComponent().path

/// A path under ../shared/data, or a skip with a clear message when the data is not there.
func sharedData(_ relative: String) throws -> String {
    let path = packageRoot + "/../shared/data/" + relative
    guard FileManager.default.fileExists(atPath: path) else {
        throw XCTSkip("../shared/data/\(relative) is absent; reference checks on real checkpoints skipped")
    }
    return path
}

/// A committed fixture's parsed JSON.
func fixture(_ name: String) throws -> JSONValue {
    let path = packageRoot + "/Tests/HeadAlignTests/Fixtures/" + name
    guard let data = FileManager.default.contents(atPath: path) else { XCTFail("missing fixture \(path)"); throw XCTSkip("no fixture") }
    return try data.withUnsafeBytes { try JSONValue.parse($0.bindMemory(to: UInt8.self)) }
}

extension JSONValue {
    var array: [JSONValue] { if case .array(let a) = self { return a } else { return [] } }
    var int: Int { if case .integer(let i) = self { return i } else { return Int.min } }
    var double: Double {
        switch self {
        case .integer(let i): return Double(i)
        case .float(let d): return d
        default: return .nan
        }
    }
    var stringValue: String { if case .string(let s) = self { return s } else { return "" } }
}

/// A fresh temporary directory, removed at the end of the test.
func temporaryDirectory(_ test: XCTestCase) -> String {
    let dir = FileManager.default.temporaryDirectory.appendingPathComponent("headalign-test-\(UUID().uuidString)").path
    try! FileManager.default.createDirectory(atPath: dir, withIntermediateDirectories: true)
    test.addTeardownBlock { try? FileManager.default.removeItem(atPath: dir) }
    return dir
}
