// GradientTests.swift: the whole of both presets against finite differences, in f64: every
// parameter tensor, dL/dH, the head gates, and the injected-dL/dA path of Eq. 7.

import XCTest
import HeadAlign
import HeadAlignLab

final class GradientTests: XCTestCase {
    func check(_ config: ModelConfig, _ name: String, backend: Backend = .naive, file: StaticString = #filePath, line: UInt = #line) {
        let report = runGradCheck(config: config, name: name, precision: .f64, backend: backend, seed: 1, samples: 16)
        XCTAssertEqual(report.tolerance, 1e-6)
        // every tensor of the layout appears, in both parameter sections
        let layout = ParameterLayout(config: config)
        XCTAssertEqual(report.rows.filter { $0.section == "loss" }.map(\.name), layout.tensors.map(\.name), file: file, line: line)
        XCTAssertEqual(report.rows.filter { $0.section == "dL/dH" }.count, config.numHiddenLayers, file: file, line: line)
        for r in report.rows {
            XCTAssertLessThanOrEqual(r.maxRelativeError, 1e-6, "\(name) \(r.section) \(r.name)", file: file, line: line)
            XCTAssertGreaterThan(r.checked, 0)
        }
        // the checks are not vacuous: gradients are far from zero somewhere in each section
        for section in ["loss", "loss+<C,A>", "dL/dH", "dL/dgate"] {
            XCTAssertGreaterThan(report.rows.filter { $0.section == section }.map(\.maxAbsGradient).max() ?? 0, 1e-3, section)
        }
    }

    func testBertTinyClassifier() throws { check(try ModelConfig.preset("bert-tiny"), "bert-tiny") }

    func testBertEncoderWithoutClassifier() throws {
        var c = try ModelConfig.preset("bert-tiny")
        c.architectures = ["BertModel"]
        c.id2label = nil
        check(c, "bert-tiny encoder")
    }

    func testLlamaTinyLanguageModel() throws { check(try ModelConfig.preset("llama-tiny"), "llama-tiny") }

    func testLlamaTinyTiedEmbeddingsAndInterleavedRotary() throws {
        var c = try ModelConfig.preset("llama-tiny")
        c.tieWordEmbeddings = true
        c.ropeInterleaved = true
        XCTAssertNil(ParameterLayout(config: c)["lm_head.weight"])
        check(c, "llama-tiny tied")
    }

    func testLlamaTinyClassifierOnLastRealToken() throws {
        check(try ModelConfig.preset("llama-tiny").withClassifier(labels: 3), "llama-tiny classifier")
    }

    func testWithBLAS() throws {
        let blas = try blasOrSkip()
        check(try ModelConfig.preset("bert-tiny"), "bert-tiny", backend: blas)
        check(try ModelConfig.preset("llama-tiny"), "llama-tiny", backend: blas)
    }

    /// A wrong backward would be caught: corrupting one analytic gradient entry makes the check fail.
    func testCheckCatchesAWrongGradient() throws {
        let config = try ModelConfig.preset("llama-tiny")
        let model = Model<Double>(config: config)
        model.initialize(seed: 1)
        jitterForGradCheck(model, seed: 1)
        let (batch, objective) = gradCheckBatch(config, seed: 2)
        let pass = model.forward(batch)
        let (l0, d) = loss(pass, objective)
        let g = model.makeGradients()
        model.backward(pass, dOutput: d, into: g)
        let w = config.hiddenSize + 3  // an entry of the first q_proj row block
        let i = model.layout["model.layers.0.self_attn.q_proj.weight"]!.offset + w
        let h = 1e-5
        let saved = model.params[i]
        model.params[i] = saved + h; let lp = loss(model.forward(batch), objective).loss
        model.params[i] = saved - h; let lm = loss(model.forward(batch), objective).loss
        model.params[i] = saved
        let fd = (lp - lm) / (2 * h)
        XCTAssertLessThan(relativeError(g[i], fd, floor: 1e-3 * max(1, l0)), 1e-6)
        XCTAssertGreaterThan(relativeError(g[i] * 1.001 + 1e-4, fd, floor: 1e-3 * max(1, l0)), 1e-6)
    }
}
