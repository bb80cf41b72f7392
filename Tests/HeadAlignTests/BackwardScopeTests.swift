// BackwardScopeTests.swift: the narrow backward passes (`BackwardScope`) give bit for bit what the
// full backward gives where they compute anything, on a BERT and a grouped-query Llama of three
// layers, with the suspicious heads below the top layer (the skipped layers above) and in it.

import XCTest
import HeadAlign
import HeadAlignLab

final class BackwardScopeTests: XCTestCase {
    /// Three layers, so a scope can leave layers out above and below.
    func models() throws -> [Model<Float>] {
        var bert = try ModelConfig.preset("bert-tiny"), llama = try ModelConfig.preset("llama-tiny")
        bert.numHiddenLayers = 3
        llama.numHiddenLayers = 3
        return [bert, llama].map { c in
            let m = Model<Float>(config: c)
            m.initialize(seed: 3)
            return m
        }
    }

    let sequences: [(tokens: [Int], promptLength: Int)] = [([1, 5, 9, 12, 7, 2], 4), ([1, 30, 8, 2], 2), ([1, 44, 45, 46, 47, 3, 2], 5)]

    func testHeadOutputsScopeGivesTheSameHeadGradients() throws {
        for model in try models() {
            let pass = model.forward(Batch(sequences.map(\.tokens)))
            let objective: Objective = model.config.family == .bert ? .classification(labels: [0, 1, 1])
                : .nextToken(targets: sequences.map { generationTargets($0.tokens, promptLength: $0.promptLength) })
            let (_, dOut) = loss(pass, objective)
            let full = model.backward(pass, dOutput: dOut, into: model.makeGradients())
            let narrowGrads = model.makeGradients()
            let narrow = model.backward(pass, dOutput: dOut, into: narrowGrads, scope: .headOutputs)
            XCTAssertEqual(narrow.headOutputGradients.count, 3)
            for l in 0..<3 {
                XCTAssertEqual(narrow.headOutputGradients[l].array, full.headOutputGradients[l].array, "layer \(l)")
                XCTAssertGreaterThan(narrow.headOutputGradients[l].array.map { abs($0) }.max()!, 0)
            }
            XCTAssertEqual(narrow.gateGradients.map { $0.map(Double.init) }, full.gateGradients.map { $0.map(Double.init) })
            // no weight product: what is left are the norms' and the output head's few entries
            let formed = narrowGrads.array.filter { $0 != 0 }.count
            XCTAssertLessThan(formed, model.layout.total / 10, "\(formed) of \(model.layout.total) entries have a gradient")
        }
    }

    func testQueriesAndKeysScopeGivesTheSameAlignmentGradient() throws {
        let splits: [(suspicious: [HeadID], safe: [HeadID])] = [
            ([HeadID(0, 1), HeadID(1, 2), HeadID(1, 3)], [HeadID(0, 0), HeadID(1, 0), HeadID(2, 0), HeadID(2, 1)]),  // layer 2 skipped
            ([HeadID(2, 0), HeadID(2, 1)], [HeadID(0, 0), HeadID(1, 1), HeadID(2, 3)]),  // one layer, the top
        ]
        for model in try models() {
            for split in splits {
                let full = model.makeGradients(), narrow = model.makeGradients()
                let layers = split.suspicious.map(\.layer)
                let a = alignmentGradient(model, sequences: sequences, view: .full, suspicious: split.suspicious, safe: split.safe, into: full)
                let b = alignmentGradient(model, sequences: sequences, view: .full, suspicious: split.suspicious, safe: split.safe,
                                          into: narrow, scope: .queriesAndKeys(layers.min()!...layers.max()!))
                XCTAssertEqual(a, b)
                let trainable = alignmentTrainableMask(layout: model.layout, config: model.config, suspicious: split.suspicious)
                let wanted = trainable.indices.filter { trainable[$0] }
                XCTAssertFalse(wanted.isEmpty)
                XCTAssertEqual(wanted.map { narrow.data[$0] }, wanted.map { full.data[$0] }, "\(model.config.family) \(split.suspicious)")
                XCTAssertGreaterThan(wanted.map { abs(narrow.data[$0]) }.max()!, 0)
                // the full pass forms gradients the alignment does not train (lower layers, values, FFN); the narrow one skips them
                let skipped = trainable.indices.filter { !trainable[$0] && full.data[$0] != 0 && narrow.data[$0] == 0 }
                XCTAssertGreaterThan(skipped.count, 0)
            }
        }
    }

    /// `alignmentStep` (narrow) moves exactly what a step on the full gradient moves, to the bit.
    func testAlignmentStepEqualsAStepOnTheFullGradient() throws {
        for model in try models() {
            let twin = Model<Float>(config: model.config)
            twin.params.data.update(from: model.params.data, count: model.params.count)
            let suspicious = [HeadID(1, 0), HeadID(1, 1)], safe = [HeadID(0, 0), HeadID(2, 2)]
            let frozen = alignmentTrainableMask(layout: model.layout, config: model.config, suspicious: suspicious).map { !$0 }
            let o1 = AdamW<Float>(count: model.layout.total, learningRate: 1e-3, weightDecay: 0), o2 = AdamW<Float>(count: model.layout.total, learningRate: 1e-3, weightDecay: 0)
            o1.frozen = frozen; o2.frozen = frozen
            for _ in 0..<3 {
                alignmentStep(model, sequences: sequences, view: .full, suspicious: suspicious, safe: safe, optimizer: o1)
                let g = twin.makeGradients()
                alignmentGradient(twin, sequences: sequences, view: .full, suspicious: suspicious, safe: safe, into: g)
                o2.update(twin.params, g)
            }
            XCTAssertEqual(model.params.array, twin.params.array)
        }
    }
}
