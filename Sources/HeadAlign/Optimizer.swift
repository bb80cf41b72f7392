// Optimizer.swift: AdamW over the flat parameter buffer, with a learning-rate multiplier per
// element and a frozen mask, so per-head learning rates and frozen sets are index ranges.

/// AdamW (Loshchilov & Hutter 2019) as PyTorch implements it: decoupled weight decay
/// `p -= lr * wd * p`, then `m = b1 m + (1-b1) g`, `v = b2 v + (1-b2) g^2`,
/// `p -= lr * mhat / (sqrt(vhat) + eps)` with bias-corrected `mhat`, `vhat`.
public final class AdamW<S: Real> {
    public var learningRate: Double
    public let beta1: Double, beta2: Double, eps: Double, weightDecay: Double
    /// Per-element multiplier on `learningRate` (nil = 1 everywhere).
    public var learningRateScale: [S]?
    /// `true` = never touched: no decay, no moment update. Frozen entries stay bit-identical.
    public var frozen: [Bool]?
    /// Linear warm-up: update `t` uses `learningRate * min(1, t / warmupSteps)` (0 = none, the
    /// paper's fine-tuning). Adam's first updates move every parameter by about the full rate
    /// whatever its gradient's size (`mhat / sqrt(vhat)` is the gradient's sign at t = 1); a warm-up
    /// keeps those first steps small while the moment estimates settle.
    public var warmupSteps = 0
    public private(set) var step = 0
    let m: Tensor<S>, v: Tensor<S>

    @_specialize(exported: true, where S == Float)
    @_specialize(exported: true, where S == Double)
    public init(count: Int, learningRate: Double, beta1: Double = 0.9, beta2: Double = 0.999, eps: Double = 1e-8,
                weightDecay: Double = 0.01) {
        self.learningRate = learningRate
        self.beta1 = beta1; self.beta2 = beta2; self.eps = eps; self.weightDecay = weightDecay
        m = Tensor([count]); v = Tensor([count])
    }

    /// One update of `params` from `grads` (both `[count]`).
    @_specialize(exported: true, where S == Float)
    @_specialize(exported: true, where S == Double)
    public func update(_ params: Tensor<S>, _ grads: Tensor<S>) {
        precondition(params.count == m.count && grads.count == m.count,
                     "AdamW.update: params \(params.count), grads \(grads.count), state \(m.count)")
        precondition(learningRateScale == nil || learningRateScale!.count == m.count, "AdamW: learningRateScale length")
        precondition(frozen == nil || frozen!.count == m.count, "AdamW: frozen mask length")
        step += 1
        let b1 = S(beta1), b2 = S(beta2), e = S(eps)
        let c1 = S(1 - Foundation.pow(beta1, Double(step))), c2 = S(1 - Foundation.pow(beta2, Double(step)))
        let p = params.data, g = grads.data, mm = m.data, vv = v.data
        let warmup = warmupSteps > 0 ? min(1, Double(step) / Double(warmupSteps)) : 1
        for i in 0..<m.count {
            if let frozen, frozen[i] { continue }
            let lr = S(learningRate * warmup) * (learningRateScale?[i] ?? 1)
            p[i] -= lr * S(weightDecay) * p[i]
            mm[i] = b1 * mm[i] + (1 - b1) * g[i]
            vv[i] = b2 * vv[i] + (1 - b2) * g[i] * g[i]
            let mhat = mm[i] / c1, vhat = vv[i] / c2
            p[i] -= lr * mhat / (vhat.squareRoot() + e)
        }
    }
}

import Foundation
