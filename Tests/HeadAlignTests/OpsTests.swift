// OpsTests.swift: each operation by hand on tiny inputs, and its backward by finite differences (f64).

import XCTest
import HeadAlign
import HeadAlignLab

final class OpsTests: XCTestCase {
    // MARK: hand-computed values

    /// softmax([1, 2, 3]) with key 1 masked: [e^-2, 0, 1] / (1 + e^-2) = [0.1192029, 0, 0.8807971].
    func testSoftmaxWithMask() {
        var row: [Double] = [1, 2, 3]
        softmaxRow(&row, 3, allowed: { $0 != 1 })
        XCTAssertEqual(row[1], 0)  // exactly
        assertClose(row[0], 0.11920292202211755, rtol: 1e-14)
        assertClose(row[2], 0.8807970779778823, rtol: 1e-14)
        var none: [Double] = [1, 2]
        softmaxRow(&none, 2, allowed: { _ in false })
        XCTAssertEqual(none, [0, 0])
    }

    /// x = [1,2,3,4]: mean 2.5, var 1.25, rstd 1/sqrt(1.25) = 0.894427191;
    /// xhat = [-1.3416408, -0.4472136, 0.4472136, 1.3416408]; gamma [1,1,2,0.5], beta [0,0,1,0].
    func testLayerNormByHand() {
        let x = Tensor<Double>([1, 4], [1, 2, 3, 4]), out = Tensor<Double>([1, 4]), xhat = Tensor<Double>([1, 4])
        let rstd = Tensor<Double>([1])
        layerNormForward(out, xhat, rstd, x, Tensor([4], [1, 1, 2, 0.5]), Tensor([4], [0, 0, 1, 0]), eps: 0)
        let s = 1 / 1.25.squareRoot()
        assertClose(rstd[0], s, rtol: 1e-15)
        assertAllClose(out.array, [-1.5 * s, -0.5 * s, 1 + 2 * 0.5 * s, 0.5 * 1.5 * s], rtol: 1e-14)
    }

    /// x = [3, 4]: mean square 12.5, rstd 1/sqrt(12.5); w = [1, 2] -> [3, 8] / sqrt(12.5).
    func testRMSNormByHand() {
        let x = Tensor<Double>([1, 2], [3, 4]), out = Tensor<Double>([1, 2]), xhat = Tensor<Double>([1, 2])
        let rstd = Tensor<Double>([1])
        rmsNormForward(out, xhat, rstd, x, Tensor([2], [1, 2]), eps: 0)
        assertAllClose(out.array, [3 / 12.5.squareRoot(), 8 / 12.5.squareRoot()], rtol: 1e-15)
    }

    /// gelu(x) = x Phi(x): gelu(1) = 0.8413447460685429, gelu(-1) = -0.15865525393145707,
    /// gelu(2) = 1.9544997361036416, gelu(0) = 0.
    func testGELUValues() {
        let x = Tensor<Double>([4], [1, -1, 2, 0]), out = Tensor<Double>([4])
        geluForward(out, x)
        assertAllClose(out.array, [0.8413447460685429, -0.15865525393145707, 1.9544997361036416, 0], atol: 1e-15, rtol: 1e-14)
    }

    /// silu(z) * u with z = 1, u = 2: 2 / (1 + e^-1) = 1.4621171572600098.
    func testSwiGLUValue() {
        let out = Tensor<Double>([1])
        swigluForward(out, Tensor([1], [1]), Tensor([1], [2]))
        assertClose(out[0], 1.4621171572600098, rtol: 1e-14)
    }

    /// Head size 2 has one frequency, 1 radian per position: (1, 0) at position 1 becomes
    /// (cos 1, sin 1); (0, 1) at position 2 becomes (-sin 2, cos 2).
    func testRotary2DByHand() {
        let table = RotaryTable<Double>(headSize: 2, positions: 4, theta: 10000)
        var x: [Double] = [1, 0, 0, 1]  // rows at positions 1 and 2 (start 1)
        ropeApply(&x, rows: 2, heads: 1, startPosition: 1, table: table, interleaved: false, inverse: false)
        assertAllClose(x, [0.5403023058681398, 0.8414709848078965, -0.9092974268256817, -0.4161468365471424], rtol: 1e-14)
        ropeApply(&x, rows: 2, heads: 1, startPosition: 1, table: table, interleaved: false, inverse: true)
        assertAllClose(x, [1, 0, 0, 1], atol: 1e-15)
    }

    /// llama2.c's interleaved pairs (2i, 2i+1) equal rotate-half pairs (i, i + HS/2) after the
    /// permutation Hugging Face's conversion applies to W_q / W_k rows.
    func testInterleavedRotaryEqualsRotateHalfAfterPermutation() {
        let hs = 8, heads = 2, pos = 5
        let table = RotaryTable<Double>(headSize: hs, positions: 8, theta: 10000)
        var rng = SeededGenerator(seed: 3)
        let v = (0..<(hs * heads)).map { _ in rng.normal() }
        // interleaved index 2i -> i, 2i+1 -> i + HS/2, per head
        func permute(_ x: [Double]) -> [Double] {
            var y = x
            for h in 0..<heads { for i in 0..<(hs / 2) {
                y[h * hs + i] = x[h * hs + 2 * i]; y[h * hs + i + hs / 2] = x[h * hs + 2 * i + 1]
            } }
            return y
        }
        var a = v
        ropeApply(&a, rows: 1, heads: heads, startPosition: pos, table: table, interleaved: true, inverse: false)
        var b = permute(v)
        ropeApply(&b, rows: 1, heads: heads, startPosition: pos, table: table, interleaved: false, inverse: false)
        assertAllClose(permute(a), b.map { $0 }, rtol: 1e-14)
    }

    /// -log softmax([1,2,3])[2] = log(1 + e^-1 + e^-2) = 0.4076059644443806; gradient p - onehot.
    func testCrossEntropyByHand() {
        let logits = Tensor<Double>([2, 3], [1, 2, 3, 0, 0, 0]), d = Tensor<Double>([2, 3])
        let total = crossEntropy(logits, targets: [2, -1], scale: 1, dlogits: d)
        assertClose(total, 0.4076059644443806, rtol: 1e-14)
        let z = 1 + exp(-1.0) + exp(-2.0)
        assertAllClose(d.array, [exp(-2.0) / z, exp(-1.0) / z, 1 / z - 1, 0, 0, 0], rtol: 1e-14)
    }

    // MARK: finite differences, f64

    func testLinearBackward() {
        var rng = SeededGenerator(seed: 1)
        let x: Tensor<Double> = randomTensor([3, 4], &rng), w: Tensor<Double> = randomTensor([5, 4], &rng)
        let b: Tensor<Double> = randomTensor([5], &rng)
        for backend in [Backend.naive] + (BLASLibrary.shared.map { [Backend.blas($0)] } ?? []) {
            let fwd: (Tensor<Double>, Tensor<Double>, Tensor<Double>) -> Tensor<Double> = { x, w, b in
                let o = Tensor<Double>([3, 5]); linearForward(o, x, w, b, backend); return o
            }
            checkGradient(x, outputCount: 15, forward: { fwd($0, w, b) }, backward: { x, d in
                let dx = Tensor<Double>(x.shape), dw = Tensor<Double>(w.shape), db = Tensor<Double>([5])
                linearBackward(dx, dw, db, d, x, w, backend); return dx
            })
            checkGradient(w, outputCount: 15, forward: { fwd(x, $0, b) }, backward: { w, d in
                let dx = Tensor<Double>(x.shape), dw = Tensor<Double>(w.shape), db = Tensor<Double>([5])
                linearBackward(dx, dw, db, d, x, w, backend); return dw
            })
            checkGradient(b, outputCount: 15, forward: { fwd(x, w, $0) }, backward: { b, d in
                let dx = Tensor<Double>(x.shape), dw = Tensor<Double>(w.shape), db = Tensor<Double>([5])
                linearBackward(dx, dw, db, d, x, w, backend); return db
            })
        }
    }

    func testLayerNormBackward() {
        var rng = SeededGenerator(seed: 2)
        let x: Tensor<Double> = randomTensor([3, 6], &rng), g: Tensor<Double> = randomTensor([6], &rng)
        let beta: Tensor<Double> = randomTensor([6], &rng)
        func fwd(_ x: Tensor<Double>, _ g: Tensor<Double>, _ b: Tensor<Double>) -> (Tensor<Double>, Tensor<Double>, Tensor<Double>) {
            let o = Tensor<Double>(x.shape), h = Tensor<Double>(x.shape), r = Tensor<Double>([3])
            layerNormForward(o, h, r, x, g, b, eps: 1e-5); return (o, h, r)
        }
        func bwd(_ x: Tensor<Double>, _ g: Tensor<Double>, _ b: Tensor<Double>, _ d: Tensor<Double>) -> [Tensor<Double>] {
            let (_, h, r) = fwd(x, g, b)
            let dx = Tensor<Double>(x.shape), dg = Tensor<Double>([6]), db = Tensor<Double>([6])
            layerNormBackward(dx, dg, db, d, h, r, g); return [dx, dg, db]
        }
        checkGradient(x, outputCount: 18, forward: { fwd($0, g, beta).0 }, backward: { bwd($0, g, beta, $1)[0] })
        checkGradient(g, outputCount: 18, forward: { fwd(x, $0, beta).0 }, backward: { bwd(x, $0, beta, $1)[1] })
        checkGradient(beta, outputCount: 18, forward: { fwd(x, g, $0).0 }, backward: { bwd(x, g, $0, $1)[2] })
    }

    func testRMSNormBackward() {
        var rng = SeededGenerator(seed: 3)
        let x: Tensor<Double> = randomTensor([3, 6], &rng), w: Tensor<Double> = randomTensor([6], &rng)
        func fwd(_ x: Tensor<Double>, _ w: Tensor<Double>) -> (Tensor<Double>, Tensor<Double>, Tensor<Double>) {
            let o = Tensor<Double>(x.shape), h = Tensor<Double>(x.shape), r = Tensor<Double>([3])
            rmsNormForward(o, h, r, x, w, eps: 1e-6); return (o, h, r)
        }
        func bwd(_ x: Tensor<Double>, _ w: Tensor<Double>, _ d: Tensor<Double>) -> [Tensor<Double>] {
            let (_, h, r) = fwd(x, w)
            let dx = Tensor<Double>(x.shape), dw = Tensor<Double>([6])
            rmsNormBackward(dx, dw, d, h, r, w); return [dx, dw]
        }
        checkGradient(x, outputCount: 18, forward: { fwd($0, w).0 }, backward: { bwd($0, w, $1)[0] })
        checkGradient(w, outputCount: 18, forward: { fwd(x, $0).0 }, backward: { bwd(x, $0, $1)[1] })
    }

    func testPointwiseBackwards() {
        var rng = SeededGenerator(seed: 4)
        let x: Tensor<Double> = randomTensor([10], &rng, std: 2), u: Tensor<Double> = randomTensor([10], &rng)
        checkGradient(x, outputCount: 10, forward: { let o = Tensor<Double>([10]); geluForward(o, $0); return o },
                      backward: { x, d in let dx = Tensor<Double>([10]); geluBackward(dx, d, x); return dx })
        checkGradient(x, outputCount: 10, forward: { let o = Tensor<Double>([10]); tanhForward(o, $0); return o },
                      backward: { x, d in
                          let y = Tensor<Double>([10]); tanhForward(y, x)
                          let dx = Tensor<Double>([10]); tanhBackward(dx, d, y); return dx })
        checkGradient(x, outputCount: 10, forward: { let o = Tensor<Double>([10]); swigluForward(o, $0, u); return o },
                      backward: { x, d in
                          let dg = Tensor<Double>([10]), du = Tensor<Double>([10]); swigluBackward(dg, du, d, x, u); return dg })
        checkGradient(u, outputCount: 10, forward: { let o = Tensor<Double>([10]); swigluForward(o, x, $0); return o },
                      backward: { u, d in
                          let dg = Tensor<Double>([10]), du = Tensor<Double>([10]); swigluBackward(dg, du, d, x, u); return du })
    }

    func testRotaryBackwardIsTheInverseRotation() {
        let table = RotaryTable<Double>(headSize: 4, positions: 8, theta: 10000)
        var rng = SeededGenerator(seed: 5)
        let x: Tensor<Double> = randomTensor([3, 8], &rng)
        for interleaved in [false, true] {
            checkGradient(x, outputCount: 24, forward: { x in
                let y = x.copy()
                ropeApply(y.data, rows: 3, heads: 2, startPosition: 2, table: table, interleaved: interleaved, inverse: false)
                return y
            }, backward: { _, d in
                let dx = d.copy()
                ropeApply(dx.data, rows: 3, heads: 2, startPosition: 2, table: table, interleaved: interleaved, inverse: true)
                return dx
            })
        }
    }

    func testSoftmaxAndCrossEntropyBackward() {
        var rng = SeededGenerator(seed: 6)
        let z: Tensor<Double> = randomTensor([5], &rng)
        let allowed: (Int) -> Bool = { $0 != 3 }
        checkGradient(z, outputCount: 5, forward: { z in
            let p = z.copy(); softmaxRow(p.data, 5, allowed: allowed); return p
        }, backward: { z, d in
            let p = z.copy(); softmaxRow(p.data, 5, allowed: allowed)
            let dz = Tensor<Double>([5]); softmaxRowBackward(dz.data, d.data, p.data, 5); return dz
        })
        let logits: Tensor<Double> = randomTensor([3, 4], &rng)
        checkGradient(logits, outputCount: 1, forward: { l in
            Tensor([1], [crossEntropy(l, targets: [1, -1, 3], scale: 1, dlogits: nil)])
        }, backward: { l, d in
            let g = Tensor<Double>(l.shape); _ = crossEntropy(l, targets: [1, -1, 3], scale: d[0], dlogits: g); return g
        })
    }

    func testEmbeddingBackwardAccumulatesRepeatedIds() {
        let dtable = Tensor<Double>([3, 2])
        embeddingBackward(dtable, Tensor([3, 2], [1, 2, 3, 4, 5, 6]), [2, 0, 2])
        XCTAssertEqual(dtable.array, [3, 4, 0, 0, 6, 8])
    }
}
