// CheckpointTests.swift: model directories (round trip, names, missing/unexpected/mis-shaped
// tensors), llama2.c checkpoints, and the real checkpoints against references nobody here made.

import XCTest
import Foundation
import HeadAlign
import HeadAlignLab

final class CheckpointTests: XCTestCase {
    func tinyModel(_ preset: String) throws -> Model<Double> {
        let m = Model<Double>(config: try ModelConfig.preset(preset))
        m.initialize(seed: 9)
        jitterForGradCheck(m, seed: 9)
        return m
    }

    func testSaveThenLoadIsBitIdentical() throws {
        let dir = temporaryDirectory(self)
        for preset in ["bert-tiny", "llama-tiny"] {
            let m = try tinyModel(preset)
            try saveModel(m, to: dir + "/" + preset)
            let back: Model<Double> = try loadModel(directory: dir + "/" + preset, backend: .naive)
            XCTAssertEqual(back.config, m.config)
            XCTAssertEqual(back.params.array.map(\.bitPattern), m.params.array.map(\.bitPattern))
            // F32 storage: equal to the values rounded to Float
            try saveModel(m, to: dir + "/" + preset + "-f32", dtype: .F32)
            let f: Model<Float> = try loadModel(directory: dir + "/" + preset + "-f32", backend: .naive)
            XCTAssertEqual(f.params.array, m.params.array.map { Float($0) })
        }
    }

    func testHuggingFaceNames() throws {
        let dir = temporaryDirectory(self)
        try saveModel(try tinyModel("bert-tiny"), to: dir + "/b")
        let names = try SafetensorsFile(path: dir + "/b/model.safetensors").names
        XCTAssertTrue(names.contains("bert.encoder.layer.1.attention.self.query.weight"))  // BertForSequenceClassification
        XCTAssertTrue(names.contains("classifier.weight"))
        let config = try ModelConfig.preset("bert-tiny"), layout = ParameterLayout(config: config)
        XCTAssertEqual(layoutName(forCheckpointName: "bert.embeddings.LayerNorm.gamma", layout: layout, config: config),
                       .parameter("embeddings.LayerNorm.weight"))
        XCTAssertEqual(layoutName(forCheckpointName: "embeddings.position_ids", layout: layout, config: config), .dropped)
        XCTAssertEqual(layoutName(forCheckpointName: "cls.predictions.bias", layout: layout, config: config), .dropped)
        XCTAssertEqual(layoutName(forCheckpointName: "encoder.layer.9.output.dense.weight", layout: layout, config: config), .unexpected)
        let llama = try ModelConfig.preset("llama-tiny")
        XCTAssertEqual(layoutName(forCheckpointName: "model.layers.0.self_attn.rotary_emb.inv_freq", layout: ParameterLayout(config: llama),
                                  config: llama), .dropped)
    }

    /// Missing, unexpected and mis-shaped tensors: one line naming the tensor; nothing loads.
    func testBadDirectoriesNameTheTensor() throws {
        let dir = temporaryDirectory(self)
        let m = try tinyModel("llama-tiny")
        try saveModel(m, to: dir + "/ok")
        func rewrite(_ name: String, _ edit: ([SafetensorsTensor<Double>]) -> [SafetensorsTensor<Double>]) throws -> String {
            let path = dir + "/" + name
            try FileManager.default.createDirectory(atPath: path, withIntermediateDirectories: false)
            try FileManager.default.copyItem(atPath: dir + "/ok/config.json", toPath: path + "/config.json")
            let tensors = m.layout.tensors.map { p in
                SafetensorsTensor(name: p.name, shape: p.shape, values: UnsafeBufferPointer(start: m.params.data + p.offset, count: p.count), dtype: .F32)
            }
            try writeAtomically(try serializeSafetensors(edit(tensors)), to: path + "/model.safetensors")
            return path
        }
        func assertFails(_ path: String, _ needle: String, line: UInt = #line) {
            XCTAssertThrowsError(try loadModel(directory: path, backend: .naive) as Model<Float>, line: line) { e in
                XCTAssertTrue("\(e)".contains(needle), "\(e)", line: line)
            }
        }
        assertFails(try rewrite("missing") { $0.filter { $0.name != "model.norm.weight" } }, "missing tensor 'model.norm.weight'")
        let extra = [Double](repeating: 0, count: 3)
        try extra.withUnsafeBufferPointer { buf in
            assertFails(try rewrite("unexpected") { $0 + [SafetensorsTensor(name: "model.extra", shape: [3], values: buf, dtype: .F32)] },
                        "unexpected tensor 'model.extra'")
        }
        assertFails(try rewrite("shape") { ts in ts.map { t in
            t.name == "model.norm.weight" ? SafetensorsTensor(name: t.name, shape: [1, 64], values: t.values, dtype: .F32) : t } },
                    "has shape [1, 64], the config implies [64]")
        assertFails(dir + "/nothing-here", "config.json")
        // the output directory of a save is never replaced
        XCTAssertThrowsError(try saveModel(m, to: dir + "/ok")) { XCTAssertTrue("\($0)".contains("exists")) }
    }

    func testShardedDirectory() throws {
        let dir = temporaryDirectory(self)
        let m = try tinyModel("llama-tiny")
        try saveModel(m, to: dir + "/one")
        let whole = try SafetensorsFile(path: dir + "/one/model.safetensors")
        let path = dir + "/sharded"
        try FileManager.default.createDirectory(atPath: path, withIntermediateDirectories: false)
        try FileManager.default.copyItem(atPath: dir + "/one/config.json", toPath: path + "/config.json")
        var weightMap: [String] = []
        for (k, names) in [whole.names.filter { $0.contains("layers.0") }, whole.names.filter { !$0.contains("layers.0") }].enumerated() {
            let shard = "model-0000\(k + 1)-of-00002.safetensors"
            let tensors = names.map { n -> SafetensorsTensor<Double> in
                let p = m.layout[n]!
                return SafetensorsTensor(name: n, shape: p.shape, values: UnsafeBufferPointer(start: m.params.data + p.offset, count: p.count), dtype: .F64)
            }
            try writeAtomically(try serializeSafetensors(tensors), to: path + "/" + shard)
            weightMap += names.map { "\"\($0)\": \"\(shard)\"" }
        }
        try "{\"metadata\": {}, \"weight_map\": {\(weightMap.joined(separator: ", "))}}".write(toFile: path + "/model.safetensors.index.json",
                                                                                              atomically: true, encoding: .utf8)
        let back: Model<Double> = try loadModel(directory: path, backend: .naive)
        XCTAssertEqual(back.params.array, m.params.array)
        try FileManager.default.removeItem(atPath: path + "/model-00002-of-00002.safetensors")
        XCTAssertThrowsError(try loadModel(directory: path, backend: .naive) as Model<Double>) {
            XCTAssertTrue("\($0)".contains("shard model-00002-of-00002.safetensors is missing"))
        }
    }

    /// llama2.c's interleaved rotary on the raw layout and Hugging Face's rotate-half on the
    /// permuted rows give the same logits.
    func testRotateHalfConversionKeepsOutputs() throws {
        var c = try ModelConfig.preset("llama-tiny")
        c.ropeInterleaved = true
        let m = Model<Double>(config: c)
        m.initialize(seed: 2)
        jitterForGradCheck(m, seed: 2)
        let converted = convertToRotateHalf(m)
        let batch = Batch([[1, 5, 9, 200, 3]])
        assertAllClose(converted.forward(batch).output.array, m.forward(batch).output.array, atol: 1e-12)
    }

    // MARK: real checkpoints (../shared/data)

    /// llama2.c's own test: greedy from BOS, 200 steps, reproduces its expected text byte for byte,
    /// from the .bin and from the converted safetensors directory, in f32 and f64.
    func testStories260KGoldenText() throws {
        let bin = try sharedData("llama2c-stories260K/stories260K.bin")
        let tok = try sharedData("llama2c-stories260K/tok512.bin")
        let expected = try String(contentsOfFile: try sharedData("llama2c-stories260K/reference_greedy_t0_n200.txt"), encoding: .utf8)
        let tokenizer = try Llama2cTokenizer(path: tok, vocabSize: 512)
        // (AnyModel: the library's specialised code; generic calls from here would run unspecialised)
        let f32 = try AnyModel.load(.llama2c(model: bin, tokenizer: tok), precision: .f32, backend: .naive)
        let ids = f32.generate(prompt: [1], maxNew: 200, stopAt: [1])
        XCTAssertEqual(tokenizer.decode(ids, after: 1), expected)
        let reference = try JSONSerialization.jsonObject(with: Data(contentsOf: URL(fileURLWithPath:
            try sharedData("llama2c-stories260K/reference_greedy_token_ids.json")))) as! [String: Any]
        XCTAssertEqual(ids, reference["steps_200_ids"] as! [Int])

        let dir = temporaryDirectory(self) + "/stories"
        try f32.convertedToRotateHalf().save(to: dir, dtype: .F32)
        let f64 = try AnyModel.load(.directory(dir), precision: .f64, backend: .naive)
        XCTAssertFalse(f64.config.ropeInterleaved)
        XCTAssertEqual(tokenizer.decode(f64.generate(prompt: [1], maxNew: 200, stopAt: [1]), after: 1), expected)
    }

    /// The published sentence-transformers example: three sentences, cosine similarities
    /// [[1, 0.6660, 0.1046], [0.6660, 1, 0.1411], [0.1046, 0.1411, 1]] to 4 decimals.
    func testMiniLMSimilarityMatrix() throws {
        let dir = try sharedData("all-MiniLM-L6-v2")
        let tokenizer = try WordPieceTokenizer(directory: dir)
        let batch = Batch(["The weather is lovely today.", "It's so sunny outside!", "He drove to the stadium."]
            .map { TokenSequence(tokenizer.encode($0).ids) })
        let published: [[Double]] = [[1, 0.6660, 0.1046], [0.6660, 1, 0.1411], [0.1046, 0.1411, 1]]
        for precision in Precision.allCases {
            let model = try AnyModel.load(.directory(dir), precision: precision, backend: .naive)
            let e = model.embeddings(batch)
            for i in 0..<3 { for j in 0..<3 {
                XCTAssertEqual((dot(e[i], e[j]) * 10000).rounded() / 10000, published[i][j], "\(precision) [\(i)][\(j)]")
            } }
        }
    }

    /// Per-head attention probabilities of all-MiniLM-L6-v2 for two sentences against Hugging Face
    /// transformers (fixture made by Fixtures/make_minilm_fixtures.py): 1e-5 in f32, 1e-9 in f64.
    func testMiniLMAttentionMatchesTransformers() throws {
        let dir = try sharedData("all-MiniLM-L6-v2")
        let doc = try fixture("minilm_attention.json")
        for (precision, tolerance) in [(Precision.f32, 1e-5), (.f64, 1e-9)] {
            let model = try AnyModel.load(.directory(dir), precision: precision, backend: .naive)
            for case_ in doc[precision.rawValue]!.array {
                let ids = case_["ids"]!.array.map(\.int)
                let ours = model.attentions(Batch([ids]))
                let expected = case_["attention"]!.array
                XCTAssertEqual(expected.count, 6)
                var worst = 0.0, compared = 0
                for l in 0..<6 { for h in 0..<12 {
                    for (i, row) in expected[l].array[h].array.enumerated() { for (j, v) in row.array.enumerated() {
                        worst = max(worst, abs(ours[l][0][h][i * ids.count + j] - v.double))
                        compared += 1
                    } }
                } }
                XCTAssertEqual(compared, 6 * 12 * ids.count * ids.count)
                XCTAssertLessThanOrEqual(worst, tolerance, "\(precision) \(case_["text"]!.stringValue)")
            }
        }
    }
}
