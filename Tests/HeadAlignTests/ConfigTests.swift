// ConfigTests.swift: Hugging Face config.json keys, defaults, validation errors, presets, layout.

import XCTest
import Foundation
import HeadAlign
import HeadAlignLab

final class ConfigTests: XCTestCase {
    func decode(_ json: String) throws -> ModelConfig {
        try JSONDecoder().decode(ModelConfig.self, from: Data(json.utf8))
    }

    func testLlamaConfigWithDefaults() throws {
        let c = try decode("""
            {"model_type": "llama", "vocab_size": 32000, "hidden_size": 4096, "num_hidden_layers": 32,
             "num_attention_heads": 32, "intermediate_size": 11008, "rms_norm_eps": 1e-05}
            """)
        try c.validate()
        XCTAssertEqual(c.family, .llama)
        XCTAssertEqual(c.numKeyValueHeads, 32)  // defaults to the query heads
        XCTAssertEqual(c.headSize, 128)
        XCTAssertEqual(c.ropeTheta, 10000)
        XCTAssertEqual(c.hiddenAct, "silu")
        XCTAssertFalse(c.tieWordEmbeddings)
        XCTAssertTrue(c.hasLMHead)
        XCTAssertEqual(c.numLabels, 0)
    }

    func testBertClassifierConfig() throws {
        let c = try decode("""
            {"model_type": "bert", "architectures": ["BertForSequenceClassification"], "vocab_size": 100,
             "hidden_size": 16, "num_hidden_layers": 1, "num_attention_heads": 2, "intermediate_size": 32,
             "id2label": {"0": "neg", "1": "pos", "2": "neutral"}}
            """)
        try c.validate()
        XCTAssertEqual(c.numLabels, 3)
        XCTAssertEqual(c.layerNormEps, 1e-12)
        XCTAssertEqual(c.maxPositionEmbeddings, 512)
        XCTAssertNotNil(ParameterLayout(config: c)["classifier.weight"])
    }

    func testRoundTripThroughJSON() throws {
        for name in ModelConfig.presetNames {
            let c = try ModelConfig.preset(name)
            let back = try JSONDecoder().decode(ModelConfig.self, from: try JSONEncoder().encode(c))
            XCTAssertEqual(back, c, name)
        }
    }

    func testValidationNamesTheKey() throws {
        var c = try ModelConfig.preset("llama-tiny")
        c.numKeyValueHeads = 3
        XCTAssertThrowsError(try c.validate()) { XCTAssertTrue("\($0)".contains("num_key_value_heads")) }
        c = try ModelConfig.preset("bert-tiny")
        c.hiddenSize = 66
        XCTAssertThrowsError(try c.validate()) { XCTAssertTrue("\($0)".contains("hidden_size")) }
        c = try ModelConfig.preset("bert-tiny")
        c.hiddenAct = "relu"
        XCTAssertThrowsError(try c.validate()) { XCTAssertTrue("\($0)".contains("hidden_act")) }
        XCTAssertThrowsError(try ModelConfig.preset("gpt-9")) { XCTAssertEqual(($0 as? HeadAlignError)?.exitStatus, 2) }
    }

    func testConfigFileErrorsNameTheFile() throws {
        let dir = FileManager.default.temporaryDirectory.appendingPathComponent("headalign-config-\(getpid())")
        try FileManager.default.createDirectory(at: dir, withIntermediateDirectories: true)
        defer { try? FileManager.default.removeItem(at: dir) }
        let url = dir.appendingPathComponent("config.json")
        for (text, needle) in [("{\"model_type\": \"bert\"}", "missing key"), ("[1, 2]", "not a valid"),
                               ("{\"vocab_size\": \"many\"}", "wrong type")] {
            try text.write(to: url, atomically: true, encoding: .utf8)
            XCTAssertThrowsError(try ModelConfig.load(contentsOf: url)) { e in
                XCTAssertTrue("\(e)".contains(url.path) && "\(e)".contains(needle), "\(e)")
            }
        }
    }

    /// Presets have the shapes the README lists, and the layout the parameter count they imply.
    func testPresetShapesAndParameterCounts() throws {
        let tiny = try ModelConfig.preset("llama-tiny")
        XCTAssertEqual([tiny.numHiddenLayers, tiny.numAttentionHeads, tiny.numKeyValueHeads, tiny.hiddenSize], [2, 4, 2, 64])
        // embed 512*64 + per layer (q 64*64 + k,v 2*32*64 + o 64*64 + 3*176*64 + 2*64) + norm 64 + lm_head 512*64
        let perLayer = 64 * 64 + 2 * 32 * 64 + 64 * 64 + 3 * 176 * 64 + 2 * 64
        XCTAssertEqual(ParameterLayout(config: tiny).total, 512 * 64 + 2 * perLayer + 64 + 512 * 64)
        let minilm = try ModelConfig.preset("minilm-l6")
        var encoder = minilm
        encoder.architectures = ["BertModel"]
        // all-MiniLM-L6-v2 (BertModel, with pooler) has 22,713,216 parameters
        XCTAssertEqual(ParameterLayout(config: encoder).total, 22_713_216)
        let llama7b = try ModelConfig.preset("llama2-7b")
        XCTAssertEqual(ParameterLayout(config: llama7b).total, 6_738_415_616)  // Llama-2-7b
    }
}
