// OptimizerTests.swift: AdamW by hand over two steps; frozen entries and zero learning rates.

import XCTest
import HeadAlign
import HeadAlignLab

final class OptimizerTests: XCTestCase {
    /// p0 = 1, lr 0.1, weight decay 0.01, betas (0.9, 0.999), eps 1e-8, gradients 0.5 then -0.25.
    /// Step 1: decay p = 1 - 0.1*0.01*1 = 0.999; m = 0.05, v = 0.00025; mhat = 0.5, vhat = 0.25;
    ///   p = 0.999 - 0.1 * 0.5 / (0.5 + 1e-8) = 0.899000002.
    /// Step 2: decay p = 0.899000002 * 0.999 = 0.898101001998; m = 0.045 - 0.025 = 0.02,
    ///   v = 0.999*0.00025 + 0.001*0.0625 = 0.00031225; mhat = 0.02/0.19 = 0.10526315789,
    ///   vhat = 0.00031225/0.001999 = 0.15620310155; p = 0.898101001998 - 0.1 * 0.10526315789 /
    ///   (0.39522538... + 1e-8) = 0.87146729870585.
    func testTwoStepsByHand() {
        let p = Tensor<Double>([1], [1]), g = Tensor<Double>([1])
        let opt = AdamW<Double>(count: 1, learningRate: 0.1, weightDecay: 0.01)
        g[0] = 0.5
        opt.update(p, g)
        assertClose(p[0], 0.899000002, rtol: 1e-14)
        g[0] = -0.25
        opt.update(p, g)
        assertClose(p[0], 0.8714672987058463, rtol: 1e-14)
    }

    /// Warm-up over 4 steps, the case above: step 1 at rate 0.1 * 1/4 = 0.025, so p = 1 - 0.025*0.01
    /// - 0.025 * 0.5 / (0.5 + 1e-8) = 0.974750000500; step 2 at 0.05: decay p * (1 - 0.0005) =
    /// 0.974262625250, minus 0.05 * 0.10526315789 / (0.39522538... + 1e-8). From step 4 on the
    /// full rate: a warmed-up and a plain optimizer fed the same gradients take equal steps there
    /// from equal points (checked on their difference: p and q move by the same amount).
    func testWarmupScalesTheFirstStepsLinearly() {
        let p = Tensor<Double>([1], [1]), g = Tensor<Double>([1])
        let opt = AdamW<Double>(count: 1, learningRate: 0.1, weightDecay: 0.01)
        opt.warmupSteps = 4
        g[0] = 0.5
        opt.update(p, g)
        assertClose(p[0], 1 - 0.025 * 0.01 - 0.025 * 0.5 / (0.5 + 1e-8), rtol: 1e-14)
        g[0] = -0.25
        let before = p[0]
        opt.update(p, g)
        let mhat = 0.02 / 0.19, vhat = 0.00031225 / (1 - 0.999 * 0.999)
        assertClose(p[0], before * (1 - 0.05 * 0.01) - 0.05 * mhat / (vhat.squareRoot() + 1e-8), rtol: 1e-12)
        // step 3 at 0.075: m = 0.9 * 0.02 + 0.1 * 0.3 = 0.048, v = 0.999 * 0.00031225 + 0.001 * 0.09
        let third = p[0]
        g[0] = 0.3
        opt.update(p, g)
        let mhat3 = 0.048 / (1 - 0.729), vhat3 = (0.999 * 0.00031225 + 0.001 * 0.09) / (1 - 0.999 * 0.999 * 0.999)
        assertClose(p[0], third * (1 - 0.075 * 0.01) - 0.075 * mhat3 / (vhat3.squareRoot() + 1e-8), rtol: 1e-12)
        // steps 4-6: from step 4 the warmed-up rate is the full rate
        let plain = AdamW<Double>(count: 1, learningRate: 0.1, weightDecay: 0.01), q = Tensor<Double>([1], [1])
        for (t, grad) in [0.5, -0.25, 0.3, 0.1, -0.2, 0.4].enumerated() {
            g[0] = grad
            if t >= 3 {
                let (p0, q0) = (p[0], q[0])
                opt.update(p, g)
                plain.update(q, g)
                assertClose((p0 - p[0]) - (q0 - q[0]), 0.1 * 0.01 * (p0 - q0), atol: 1e-15)
            } else {
                plain.update(q, g)
            }
        }
        XCTAssertNotEqual(p[0], q[0])  // the first steps differed
    }

    /// Frozen entries and entries with learning-rate scale 0 are bit-identical after steps; the
    /// update of an entry with scale 0.5 is half of one with scale 1 on the first step (no decay).
    func testFrozenAndScaledEntries() {
        let p = Tensor<Float>([4], [0.3, -0.7, 1.1, 2.5]), g = Tensor<Float>([4], [0.2, 0.2, -0.4, 0.9])
        let before = p.array
        let opt = AdamW<Float>(count: 4, learningRate: 1e-2, weightDecay: 0)
        opt.frozen = [true, false, false, false]
        opt.learningRateScale = [1, 0, 1, 0.5]
        opt.update(p, g)
        XCTAssertEqual(p[0].bitPattern, before[0].bitPattern)
        XCTAssertEqual(p[1].bitPattern, before[1].bitPattern)
        // first step: the update is lr * sign(g) (mhat / sqrt(vhat) = g / |g|, up to eps)
        assertClose(Double(before[2] - p[2]), -1e-2, rtol: 1e-4)  // f32 rounding of p near 1
        assertClose(Double(before[3] - p[3]), 0.5e-2, rtol: 1e-4)
        for _ in 0..<5 { opt.update(p, g) }
        XCTAssertEqual(p[0].bitPattern, before[0].bitPattern)
        XCTAssertEqual(p[1].bitPattern, before[1].bitPattern)
    }

    /// A model trained a few steps with everything but one tensor frozen changes only that tensor.
    func testFrozenModelParametersStayBitIdentical() throws {
        let config = try ModelConfig.preset("bert-tiny")
        let model = Model<Float>(config: config)
        model.initialize(seed: 2)
        let before = model.params.array
        let trainable = model.layout["encoder.layer.1.attention.self.query.weight"]!.range
        let opt = AdamW<Float>(count: model.layout.total, learningRate: 1e-2)
        opt.frozen = (0..<model.layout.total).map { !trainable.contains($0) }
        let batch = Batch([[1, 2, 3, 4], [5, 6, 7]])
        for _ in 0..<3 {
            let pass = model.forward(batch)
            let (_, d) = loss(pass, .classification(labels: [0, 1]))
            let g = model.makeGradients()
            model.backward(pass, dOutput: d, into: g)
            opt.update(model.params, g)
        }
        let after = model.params.array
        var changed = 0
        for i in 0..<after.count {
            if trainable.contains(i) { if after[i] != before[i] { changed += 1 } }
            else { XCTAssertEqual(after[i].bitPattern, before[i].bitPattern, "entry \(i)") }
        }
        XCTAssertGreaterThan(changed, trainable.count / 2)
    }
}
