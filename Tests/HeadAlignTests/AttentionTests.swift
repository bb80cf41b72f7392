// AttentionTests.swift: Eq. 1 by hand, masks, grouped-query sharing, and model-level invariants.

import XCTest
import HeadAlign
import HeadAlignLab

final class AttentionTests: XCTestCase {
    /// One head, HS = 1 (scale 1), T = 3. k = [0, ln 2, ln 3], so a query of 1 weighs the keys
    /// 1 : 2 : 3, a query of 0 uniformly, a query of 2 as 1 : 4 : 9. v = [1, 10, 100].
    /// Bidirectional: A = [[1/6, 1/3, 1/2], [1/3, 1/3, 1/3], [1/14, 4/14, 9/14]],
    ///   H row 0 = 1/6 + 10/3 + 100/2 = 53.5.
    /// Causal: A = [[1, 0, 0], [1/2, 1/2, 0], [1/14, 4/14, 9/14]].
    /// Key 2 padded: A = [[1/3, 2/3, 0], [1/2, 1/2, 0], [1/5, 4/5, 0]].
    func testEquationOneByHand() {
        let q = Tensor<Double>([3, 1], [1, 0, 2]), k = Tensor<Double>([3, 1], [0, log(2), log(3)])
        let v = Tensor<Double>([3, 1], [1, 10, 100])
        func run(causal: Bool, mask: [Bool]?) -> ([Double], [Double]) {
            let batch = Batch([TokenSequence([0, 0, 0], mask: mask)])
            let att = Tensor<Double>([9]), h = Tensor<Double>([3, 1])
            attentionForward(headOut: h, att: att, q: q, k: k, v: v, batch: batch,
                             shape: AttentionShape(heads: 1, kvHeads: 1, headSize: 1, causal: causal), backend: .naive)
            return (att.array, h.array)
        }
        let (a, h) = run(causal: false, mask: nil)
        assertAllClose(a, [1.0 / 6, 1.0 / 3, 1.0 / 2, 1.0 / 3, 1.0 / 3, 1.0 / 3, 1.0 / 14, 4.0 / 14, 9.0 / 14], rtol: 1e-14)
        assertClose(h[0], 53.5, rtol: 1e-14)
        let (c, _) = run(causal: true, mask: nil)
        assertAllClose(c, [1, 0, 0, 0.5, 0.5, 0, 1.0 / 14, 4.0 / 14, 9.0 / 14], rtol: 1e-14)
        XCTAssertEqual([c[1], c[2], c[5]], [0, 0, 0])  // exactly
        let (p, _) = run(causal: false, mask: [true, true, false])
        assertAllClose(p, [1.0 / 3, 2.0 / 3, 0, 0.5, 0.5, 0, 0.2, 0.8, 0], rtol: 1e-14)
        XCTAssertEqual([p[2], p[5], p[8]], [0, 0, 0])
    }

    /// Grouped-query attention: with NH = 4, NKV = 2, query heads 0 and 1 read key/value head 0,
    /// heads 2 and 3 read head 1. Giving heads 0 and 1 the same queries gives them the same A and H.
    func testGroupedQuerySharing() {
        let shape = AttentionShape(heads: 4, kvHeads: 2, headSize: 2, causal: true)
        XCTAssertEqual((0..<4).map(shape.kvHead(of:)), [0, 0, 1, 1])
        XCTAssertEqual(shape.queryHeads(of: 1), 2..<4)
        var rng = SeededGenerator(seed: 9)
        let t = 4
        let q: Tensor<Double> = randomTensor([t, 8], &rng), k: Tensor<Double> = randomTensor([t, 4], &rng)
        let v: Tensor<Double> = randomTensor([t, 4], &rng)
        for r in 0..<t { q.data[r * 8 + 2] = q.data[r * 8]; q.data[r * 8 + 3] = q.data[r * 8 + 1] }  // head 1 := head 0
        let batch = Batch([TokenSequence([0, 0, 0, 0])])
        let att = Tensor<Double>([4 * t * t]), h = Tensor<Double>([t, 8])
        attentionForward(headOut: h, att: att, q: q, k: k, v: v, batch: batch, shape: shape, backend: .naive)
        let a = att.array
        XCTAssertEqual(Array(a[0..<16]), Array(a[16..<32]))
        XCTAssertNotEqual(Array(a[0..<16]), Array(a[32..<48]))
        for r in 0..<t { XCTAssertEqual([h[r * 8], h[r * 8 + 1]], [h[r * 8 + 2], h[r * 8 + 3]]) }
        // a head that shares nothing with head 2 differs from it, and heads 2,3 read v's columns 2..<4
        let q2 = q.copy()
        for r in 0..<t { q2.data[r * 8 + 4] = 0; q2.data[r * 8 + 5] = 0 }  // head 2: zero query -> uniform causal rows
        attentionForward(headOut: h, att: att, q: q2, k: k, v: v, batch: batch, shape: shape, backend: .naive)
        assertClose(h[3 * 8 + 4], (0..<4).map { v[$0 * 4 + 2] }.reduce(0, +) / 4, rtol: 1e-14)
    }

    /// Rows of A sum to 1 over real keys, masked entries are exactly 0, causal rows have nothing
    /// above the diagonal; for both families on random weights, both precisions.
    func testAttentionPropertiesOnModels() throws {
        for name in ["bert-tiny", "llama-tiny"] {
            let config = try ModelConfig.preset(name)
            let model = Model<Double>(config: config)
            model.initialize(seed: 3)
            jitterForGradCheck(model, seed: 3)
            let seqs = [TokenSequence([5, 9, 2, 7, 1, 3]), TokenSequence([4, 8, 6, 2, 0], mask: [true, true, true, false, false])]
            let pass = model.forward(Batch(seqs))
            for l in 0..<config.numHiddenLayers {
                for (b, s) in seqs.enumerated() {
                    for h in 0..<config.numAttentionHeads {
                        let a = pass.attention(layer: l, sequence: b, head: h)
                        let t = s.count
                        for i in 0..<t {
                            var sum = 0.0
                            for j in 0..<t {
                                let x = a[i * t + j]
                                if !s.isReal(j) || (config.family == .llama && j > i) { XCTAssertEqual(x, 0) }
                                XCTAssertGreaterThanOrEqual(x, 0)
                                sum += x
                            }
                            assertClose(sum, 1, atol: 1e-12, "\(name) l\(l) b\(b) h\(h) row \(i)")
                        }
                    }
                }
            }
        }
    }

    /// Padding changes nothing for the real tokens: a sequence with two padded positions appended
    /// gives the same attention on the real block and the same classifier/LM output as without.
    func testPaddingIsInvisibleToRealTokens() throws {
        for name in ["bert-tiny", "llama-tiny"] {
            let config = try ModelConfig.preset(name)
            let model = Model<Double>(config: config)
            model.initialize(seed: 5)
            jitterForGradCheck(model, seed: 5)
            let plain = model.forward(Batch([TokenSequence([3, 1, 4, 1, 5])]))
            let padded = model.forward(Batch([TokenSequence([3, 1, 4, 1, 5, 9, 2], mask: [true, true, true, true, true, false, false])]))
            let a0 = plain.attention(layer: 1, sequence: 0, head: 2), a1 = padded.attention(layer: 1, sequence: 0, head: 2)
            for i in 0..<5 { for j in 0..<5 { assertClose(a1[i * 7 + j], a0[i * 5 + j], atol: 1e-13) } }
            if config.family == .bert {
                assertAllClose(padded.output.array, plain.output.array.map { $0 }, atol: 1e-12)
            } else {
                let v = config.vocabSize
                assertAllClose(Array(padded.output.array[0..<(5 * v)]), plain.output.array, atol: 1e-12)
            }
        }
    }

    /// Causality: changing the last token of a decoder's input leaves every earlier position's
    /// logits unchanged (bit for bit: nothing it computes reads later positions).
    func testDecoderIsCausal() throws {
        let config = try ModelConfig.preset("llama-tiny")
        let model = Model<Double>(config: config)
        model.initialize(seed: 8)
        jitterForGradCheck(model, seed: 8)
        let a = model.forward(Batch([[1, 2, 3, 4, 5]])).output.array
        let b = model.forward(Batch([[1, 2, 3, 4, 99]])).output.array
        let v = config.vocabSize
        XCTAssertEqual(Array(a[0..<(4 * v)]), Array(b[0..<(4 * v)]))
        XCTAssertNotEqual(Array(a[(4 * v)...]), Array(b[(4 * v)...]))
    }

    /// Same seed, same inputs, same backend: bit-identical parameters and outputs.
    func testDeterminism() throws {
        let config = try ModelConfig.preset("llama-tiny")
        func run() -> ([Float], [Float]) {
            let m = Model<Float>(config: config)
            m.initialize(seed: 77)
            return (m.params.array, m.forward(Batch([[1, 2, 3], [4, 5]])).output.array)
        }
        let (p1, o1) = run(), (p2, o2) = run()
        XCTAssertEqual(p1, p2)
        XCTAssertEqual(o1, o2)
    }

    /// The naive and BLAS backends agree on a whole model's output and gradients.
    func testNaiveAndBLASAgreeOnModels() throws {
        let blas = try blasOrSkip()
        for name in ["bert-tiny", "llama-tiny"] {
            let config = try ModelConfig.preset(name)
            func run<S: Real>(_: S.Type, _ backend: Backend) -> ([S], [S]) {
                let m = Model<S>(config: config, backend: backend)
                m.initialize(seed: 4)
                jitterForGradCheck(m, seed: 4)
                let (batch, objective) = gradCheckBatch(config, seed: 4)
                let pass = m.forward(batch)
                let (_, d) = loss(pass, objective)
                let g = m.makeGradients()
                m.backward(pass, dOutput: d, into: g)
                return (pass.output.array, g.array)
            }
            let (o1, g1) = run(Double.self, .naive), (o2, g2) = run(Double.self, blas)
            assertAllClose(o1, o2.map { $0 }, atol: 1e-12, rtol: 1e-12, name)
            assertAllClose(g1, g2.map { $0 }, atol: 1e-12, rtol: 1e-10, name)
            let (f1, h1) = run(Float.self, .naive), (f2, h2) = run(Float.self, blas)
            assertAllClose(f1, f2.map { Double($0) }, atol: 1e-5, rtol: 1e-5, name)
            assertAllClose(h1, h2.map { Double($0) }, atol: 1e-5, rtol: 1e-3, name)
        }
    }
}
