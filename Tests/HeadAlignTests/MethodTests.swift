// MethodTests.swift: Eq. 2–7, head-wise fine-tuning and the monitor, each against values computed
// by hand in the comments, invariants, finite differences; the oracle against an independent
// implementation (transformers + numpy, f64) on the real MiniLM; determinism of the dump.

import XCTest
import Foundation
import HeadAlign
import HeadAlignLab

final class MethodTests: XCTestCase {
    // MARK: views and Eq. 2–3

    /// A hand-built 5-token matrix with entries 10 i + j: gen2prompt with T_p = 3 keeps rows 3, 4
    /// and columns 0, 1, 2: [30, 31, 32, 40, 41, 42]; cls keeps row 0; last row 4; full all 25.
    func testViewsPickTheRowsAndColumnsSpecNames() {
        let a = (0..<25).map { Double(10 * ($0 / 5) + $0 % 5) }
        XCTAssertEqual(flattenedView(a, tokens: 5, view: .gen2prompt, promptLength: 3), [30, 31, 32, 40, 41, 42])
        XCTAssertEqual(flattenedView(a, tokens: 5, view: .cls, promptLength: 5), [0, 1, 2, 3, 4])
        XCTAssertEqual(flattenedView(a, tokens: 5, view: .last, promptLength: 5), [40, 41, 42, 43, 44])
        XCTAssertEqual(flattenedView(a, tokens: 5, view: .full, promptLength: 5), a)
    }

    /// P = [[1, 0], [1, 1]], Q = [[0, 1], [1, 1]]: vec P . vec Q = 2, |P| = |Q| = sqrt 3, cos = 2/3.
    func testCosineByHandAndItsProperties() {
        assertClose(cosine([1, 0, 1, 1], [0, 1, 1, 1]), 2.0 / 3, rtol: 1e-15)
        var rng = SeededGenerator(seed: 5)
        for _ in 0..<50 {
            let p = (0..<12).map { _ in rng.uniform() }, q = (0..<12).map { _ in rng.uniform() }
            assertClose(cosine(p, p), 1, rtol: 1e-14)
            XCTAssertEqual(cosine(p, q), cosine(q, p))
            assertClose(cosine(p.map { 3.5 * $0 }, q), cosine(p, q), rtol: 1e-14)  // invariant to positive scaling
            XCTAssert((0...1).contains(cosine(p, q)))
        }
        XCTAssertEqual(cosine([1, 0, 0, 2], [0, 3, 1, 0]), 0)  // orthogonal supports
        XCTAssertEqual(cosine([0, 0, 0], [1, 2, 3]), 0)  // the zero-norm rule
    }

    func testPairCountsAndStatistics() {
        XCTAssertEqual(headPairs(layers: 3, heads: 4, scope: .model).count, 12 * 11 / 2)  // L*H*(L*H-1)/2
        XCTAssertEqual(headPairs(layers: 3, heads: 4, scope: .layer).count, 3 * 4 * 3 / 2)  // L*H*(H-1)/2
        XCTAssertEqual(headPairs(layers: 2, heads: 2, scope: .model).map { [$0.0, $0.1] }, [[0, 1], [0, 2], [0, 3], [1, 2], [1, 3], [2, 3]])
        XCTAssertEqual(headPairs(layers: 2, heads: 2, scope: .layer).map { [$0.0, $0.1] }, [[0, 1], [2, 3]])
        // sorted: 0.1 0.2 0.5 0.9 0.995; p99 sits at position 4 * 0.99 = 3.96: 0.9 + 0.96 * 0.095 = 0.9912
        let v = [0.5, 0.995, 0.1, 0.9, 0.2]
        assertClose(quantile(v, 0.99), 0.9912, rtol: 1e-14)
        assertClose(quantile(v, 0.5), 0.5, rtol: 1e-15)
        XCTAssertEqual(fractionAbove(v, threshold: 0.99), 0.2)
        XCTAssertEqual(fractionAbove([0.99, 0.99], threshold: 0.99), 0)  // strictly above
        // maxsim over pairs (0,1)=0.3, (0,2)=0.8, (1,2)=0.5 -> [0.8, 0.5, 0.8]
        XCTAssertEqual(maxSimilarity([0.3, 0.8, 0.5], pairs: [(0, 1), (0, 2), (1, 2)], headCount: 3), [0.8, 0.5, 0.8])
    }

    // MARK: Eq. 5

    /// alpha 0.5, maxsim [0.9, 0.2, 0.6, 0.0], G [4, 1, 2, 0] (max 4, normalised [1, .25, .5, 0]):
    /// S = 1 - (0.5 maxsim + 0.5 G/maxG) = [0.05, 0.775, 0.45, 1.0]. tau 0.4: S < 0.4 suspicious,
    /// S > 0.6 safe: [suspicious, safe, intermediate, safe]. Ties exactly at a bound are intermediate.
    func testSafetyScoresAndClassesByHand() {
        let (s, g) = safetyScores(maxsim: [0.9, 0.2, 0.6, 0], importance: [4, 1, 2, 0], alpha: 0.5)
        assertAllClose(g, [1, 0.25, 0.5, 0], rtol: 1e-15)
        assertAllClose(s, [0.05, 0.775, 0.45, 1], atol: 1e-15)
        XCTAssertEqual(classifyHeads(s, tau: 0.4), [.suspicious, .safe, .intermediate, .safe])
        XCTAssertEqual(classifyHeads([0.25, 0.75, 0.2499, 0.7501], tau: 0.25), [.intermediate, .intermediate, .suspicious, .safe])
        XCTAssertEqual(classifyHeads([0.5, 0.4999, 0.5001], tau: 0.5), [.intermediate, .suspicious, .safe])
        XCTAssertEqual(classifyHeads([0, 1], tau: 0), [.intermediate, .intermediate])  // tau 0: nothing is classed
        // all G zero: normalised importance 0, no NaN
        XCTAssertEqual(safetyScores(maxsim: [0.5, 1], importance: [0, 0], alpha: 0.5).safety, [0.75, 0.5])
    }

    func testEmptyClassIsReportedPlainly() {
        let a = InputAnalysis(tokens: [1, 2], promptLength: 2, views: [[1], [1]], pairCosines: [1], maxsim: [1, 1],
                              importance: [1, 1], label: 0, fracAbove: 1, p99: 1)
        let r = safetyReport([a], alpha: 0.5, tau: 0.5, heads: 2)
        XCTAssertEqual(r.classes, [.suspicious, .suspicious])
        let m = r.emptyClassReport ?? ""
        XCTAssertTrue(m.contains("no safe") && m.contains("[0.0000, 0.0000]"), m)
    }

    // MARK: Eq. 4

    /// G equals |dL/d(gate)| at gate 1, by central differences on the gate (f64, 1e-7), for a
    /// classifier (predicted label) and for a decoder's generation loss; and a head whose value
    /// rows are zero (H = 0) has G = 0 exactly.
    func testImportanceIsTheGateDerivative() throws {
        for name in ["bert-tiny", "llama-tiny"] {
            let config = try ModelConfig.preset(name)
            let model = Model<Double>(config: config)
            model.initialize(seed: 21)
            jitterForGradCheck(model, seed: 21)
            let input = AnalysisInput(tokens: [3, 17, 42, 8, 99])
            var settings = AnalysisSettings(view: name == "bert-tiny" ? .full : .gen2prompt)
            settings.generate = 4
            let an = try analyze(model, [input], settings: settings)[0]
            let tokens = an.tokens, tp = an.promptLength
            let objective: Objective = config.numLabels > 0
                ? .classification(labels: [an.label!])
                : .nextToken(targets: [(0..<tokens.count).map { $0 >= tp - 1 && $0 + 1 < tokens.count ? tokens[$0 + 1] : -1 }])
            let h = 1e-6
            for l in 0..<config.numHiddenLayers {
                for hd in 0..<config.numAttentionHeads {
                    func lossAt(_ g: Double) -> Double {
                        var gates = [[Double]](repeating: [Double](repeating: 1, count: config.numAttentionHeads), count: config.numHiddenLayers)
                        gates[l][hd] = g
                        return loss(model.forward(Batch([tokens]), options: ForwardOptions(headGates: gates)), objective).loss
                    }
                    let fd = abs((lossAt(1 + h) - lossAt(1 - h)) / (2 * h))
                    XCTAssertLessThanOrEqual(abs(an.importance[l * config.numAttentionHeads + hd] - fd), 1e-7 * max(1, fd), "\(name) \(l):\(hd)")
                }
            }
        }
        // cut head: zero W_v rows of BERT layer 1 head 2 -> H = 0 -> G = 0
        let model = Model<Double>(config: try ModelConfig.preset("bert-tiny"))
        model.initialize(seed: 3)
        jitterForGradCheck(model, seed: 3)
        let v = model.layout["encoder.layer.1.attention.self.value.weight"]!, b = model.layout["encoder.layer.1.attention.self.value.bias"]!
        let hs = model.config.headSize, d = model.config.hiddenSize
        for i in (v.offset + 2 * hs * d)..<(v.offset + 3 * hs * d) { model.params[i] = 0 }
        for i in (b.offset + 2 * hs)..<(b.offset + 3 * hs) { model.params[i] = 0 }
        let an = try analyze(model, [AnalysisInput(tokens: [5, 6, 7])], settings: AnalysisSettings(view: .full))[0]
        XCTAssertEqual(an.importance[1 * 4 + 2], 0)
        XCTAssertGreaterThan(an.importance[1 * 4 + 1], 0)
    }

    // MARK: Eq. 6–7

    /// Heads 0 (safe) and 1 (safe) with views [0.2, 0.8] and [0.4, 0.6]: Abar = [0.3, 0.7];
    /// suspicious head 2 with [1, 0]: ||[0.7, -0.7]||^2 = 0.98.
    func testAlignmentLossByHand() {
        let views: [[Double]] = [[0.2, 0.8], [0.4, 0.6], [1, 0]]
        assertAllClose(safeReference(views, safe: [0, 1]), [0.3, 0.7], atol: 1e-15)
        assertClose(alignmentLoss(views, suspicious: [2], safe: [0, 1]), 0.98, rtol: 1e-14)
        XCTAssertEqual(alignmentLoss(views, suspicious: [], safe: [0, 1]), 0)
    }

    /// The gradient of Eq. 7 through the whole model (Abar held at its current value) against central
    /// differences on suspicious query/key entries, including a later layer's path back to layer 0.
    func testAlignmentGradientByFiniteDifferences() throws {
        for (name, view) in [("bert-tiny", AnalysisView.full), ("llama-tiny", .gen2prompt)] {
            let config = try ModelConfig.preset(name)
            let model = Model<Double>(config: config)
            model.initialize(seed: 31)
            jitterForGradCheck(model, seed: 31)
            let seqs = [(tokens: [4, 9, 13, 27, 51, 6], promptLength: 4), (tokens: [8, 2, 33, 19, 7], promptLength: 3)]
            let suspicious = [HeadID(0, 1), HeadID(1, 3)], safe = [HeadID(0, 0), HeadID(1, 0)]
            let grads = model.makeGradients()
            alignmentGradient(model, sequences: seqs, view: view, suspicious: suspicious, safe: safe, into: grads)
            // the reference, frozen at the current parameters
            func views(_ b: Int) -> [[Double]] {
                let pass = model.forward(Batch([seqs[b].tokens]))
                return (0..<config.numHiddenLayers).flatMap { l in (0..<config.numAttentionHeads).map { h in
                    flattenedView(pass.attention(layer: l, sequence: 0, head: h).data, tokens: seqs[b].tokens.count, view: view,
                                  promptLength: seqs[b].promptLength) } }
            }
            let nh = config.numAttentionHeads
            let refs = (0..<2).map { safeReference(views($0), safe: safe.map { $0.layer * nh + $0.head }) }
            func frozenLoss() -> Double {
                var total = 0.0
                for b in 0..<2 {
                    let v = views(b)
                    for id in suspicious {
                        let own = v[id.layer * nh + id.head]
                        for k in 0..<own.count { total += (own[k] - refs[b][k]) * (own[k] - refs[b][k]) }
                    }
                }
                return total / 2
            }
            let mask = alignmentTrainableMask(layout: model.layout, config: config, suspicious: suspicious)
            let free = mask.indices.filter { mask[$0] }
            var rng = SeededGenerator(seed: 1)
            let h = 1e-6
            for _ in 0..<12 {
                let i = free[rng.int(below: free.count)]
                let saved = model.params[i]
                model.params[i] = saved + h; let lp = frozenLoss()
                model.params[i] = saved - h; let lm = frozenLoss()
                model.params[i] = saved
                let fd = (lp - lm) / (2 * h)
                XCTAssertLessThanOrEqual(abs(grads[i] - fd), 1e-7 * max(1e-3, abs(fd)) + 1e-10, "\(name) entry \(i)")
            }
        }
    }

    /// Only the suspicious heads' query rows (and key rows when every sharer is suspicious) move;
    /// safe heads and every other parameter stay bit-identical; the loss falls.
    func testAlignmentTouchesOnlySuspiciousQueryKeySlices() throws {
        let config = try ModelConfig.preset("llama-tiny")  // NH 4, NKV 2: heads {0,1} share kv 0, {2,3} kv 1
        let model = Model<Float>(config: config)
        model.initialize(seed: 41)
        jitterForGradCheck(model, seed: 41)
        let suspicious = [HeadID(1, 0), HeadID(1, 1), HeadID(1, 2)], safe = [HeadID(0, 3), HeadID(1, 3)]
        let mask = alignmentTrainableMask(layout: model.layout, config: config, suspicious: suspicious)
        let s10 = headSlices(layout: model.layout, config: config, layer: 1, head: 0)
        let s12 = headSlices(layout: model.layout, config: config, layer: 1, head: 2)
        XCTAssertTrue(s10.key.allSatisfy { $0.allSatisfy { mask[$0] } })  // kv 0: both sharers suspicious
        XCTAssertFalse(s12.key.contains { $0.contains { mask[$0] } })  // kv 1: head 1:3 is safe
        XCTAssertEqual(mask.filter { $0 }.count, 3 * 16 * 64 + 16 * 64)  // three query row blocks + one key block
        let before = model.params.array
        let opt = AdamW<Float>(count: model.layout.total, learningRate: 1e-2, weightDecay: 0)
        opt.frozen = mask.map { !$0 }
        let seqs = [(tokens: [1, 5, 9, 14, 20, 3, 7], promptLength: 4)]
        var losses: [Double] = []
        for _ in 0..<20 {
            losses.append(alignmentStep(model, sequences: seqs, view: .gen2prompt, suspicious: suspicious, safe: safe, optimizer: opt))
        }
        XCTAssertLessThan(losses.last!, 0.8 * losses.first!)
        let after = model.params.array
        for i in 0..<after.count where !mask[i] { XCTAssertEqual(after[i].bitPattern, before[i].bitPattern, "entry \(i)") }
        XCTAssertGreaterThan((0..<after.count).filter { mask[$0] && after[$0] != before[$0] }.count, mask.filter { $0 }.count / 2)
    }

    // MARK: head-wise fine-tuning

    /// A head at rate 0 is bit-identical after training; on the first AdamW step each entry moves by
    /// about its rate (|mhat / sqrt(vhat)| = 1), so update sizes follow the rates (no weight decay).
    func testHeadwiseRatesAndUpdates() throws {
        let config = try ModelConfig.preset("bert-tiny")
        let model = Model<Float>(config: config)
        model.initialize(seed: 51)
        jitterForGradCheck(model, seed: 51)
        var classes = [HeadClass](repeating: .intermediate, count: 8)
        classes[0] = .suspicious; classes[5] = .safe
        var rates = HeadwiseRates()
        rates.suspicious = 0; rates.safe = 1e-3; rates.intermediate = 1e-4; rates.other = 1e-5
        let lr = headwiseLearningRates(layout: model.layout, config: config, classes: classes, rates: rates)
        let s0 = headSlices(layout: model.layout, config: config, layer: 0, head: 0)
        let s5 = headSlices(layout: model.layout, config: config, layer: 1, head: 1)
        XCTAssertTrue((s0.query + s0.key + s0.value + s0.output).allSatisfy { $0.allSatisfy { lr[$0] == 0 } })
        XCTAssertTrue((s5.query + s5.output).allSatisfy { $0.allSatisfy { lr[$0] == 1e-3 } })
        XCTAssertEqual(lr[model.layout["classifier.weight"]!.offset], 1e-5)
        let before = model.params.array
        let opt = headwiseOptimizer(model, rates: lr, weightDecay: 0)
        let data = [TrainingExample(tokens: [2, 8, 9, 3], label: 0), TrainingExample(tokens: [2, 11, 3], label: 1)]
        _ = try trainSteps(model, examples: data, steps: 1, batchSize: 2, seed: 1, optimizer: opt)
        let after = model.params.array
        func moved(_ r: Range<Int>) -> Double { r.map { Double(abs(after[$0] - before[$0])) }.max()! }
        assertClose(moved(s5.query[0]), 1e-3, rtol: 1e-3)
        assertClose(moved(headSlices(layout: model.layout, config: config, layer: 0, head: 1).query[0]), 1e-4, rtol: 1e-2)
        _ = try trainSteps(model, examples: data, steps: 5, batchSize: 2, seed: 2, optimizer: opt)
        let final = model.params.array
        for r in s0.query + s0.key + s0.value + s0.output { for i in r { XCTAssertEqual(final[i].bitPattern, before[i].bitPattern) } }
    }

    /// Grouped-query: a shared key/value head takes the lowest rate of its query heads.
    func testSharedKeyValueHeadTakesTheLowestRate() throws {
        let config = try ModelConfig.preset("llama-tiny")
        let layout = ParameterLayout(config: config)
        var classes = [HeadClass](repeating: .safe, count: 8)
        classes[1] = .suspicious  // layer 0 head 1 shares kv head 0 with head 0
        let lr = headwiseLearningRates(layout: layout, config: config, classes: classes, rates: HeadwiseRates())
        let s0 = headSlices(layout: layout, config: config, layer: 0, head: 0)
        XCTAssertEqual(lr[s0.query[0].lowerBound], 2e-4)
        XCTAssertEqual(lr[s0.key[0].lowerBound], 5e-6)
        XCTAssertEqual(lr[s0.value[0].lowerBound], 5e-6)
        XCTAssertEqual(lr[headSlices(layout: layout, config: config, layer: 0, head: 2).key[0].lowerBound], 2e-4)
    }

    // MARK: monitor

    /// Scores 1..4 clean, 3..6 triggered: of 16 pairs, triggered wins 13, ties 2 (3=3, 4=4) ->
    /// AUROC (13 + 1) / 16 = 0.875.
    func testAUROCAndThresholdByHand() throws {
        XCTAssertEqual(auroc(clean: [1, 2, 3, 4], triggered: [3, 4, 5, 6]), 0.875)
        XCTAssertEqual(auroc(clean: [1, 2], triggered: [3, 4]), 1)
        // calibration: first half gives per-pair mean/sd; the second half's p99 score is the threshold
        let clean: [[Double]] = [[0.1, 0.5], [0.3, 0.5], [0.2, 0.6], [0.2, 0.4]]
        let cal = try MonitorCalibration(clean: clean, score: .contrastAbsZ)
        assertAllClose(cal.mean, [0.2, 0.5], atol: 1e-15)
        assertAllClose(cal.sd, [0.1, 0], atol: 1e-15)
        // second half: |z| of [0.2, 0.6] = [0, 0.1/1e-6]; of [0.2, 0.4] the same -> both mean 50000
        assertClose(cal.flagThreshold, 0.05 / 1e-6, rtol: 1e-6)
        XCTAssertFalse(cal.flags(cal.flagThreshold))
        let m = detectionMetrics(cal, clean: [1, 2], triggered: [1e9, 3])
        XCTAssertEqual(m.tpr, 0.5)
        XCTAssertEqual(m.fpr, 0)
    }

    /// The budget's threshold on the scores 1..19 (n = 19): alpha 0.1 -> k = ceil(20 * 0.9) = 18,
    /// the score 18, expected FPR 2/20; alpha 0.05 -> k = 19, the largest, 1/20, and its FPR is
    /// Beta(1, 19): P(FPR <= x) = 1 - (1 - x)^19, so the 90% bound is 1 - 0.1^(1/19); alpha 0.04 ->
    /// k = 20 > n: no threshold keeps the promise, nothing is flagged.
    func testFPRBudgetThresholdByHand() throws {
        var rng = SeededGenerator(seed: 5)
        let scores = (1...19).map(Double.init).shuffled(using: &rng)
        let a = conformalThreshold(scores, alpha: 0.1)
        XCTAssertEqual(a.threshold, 18)
        XCTAssertEqual([a.guarantee.n, a.guarantee.k], [19, 18])
        assertClose(a.guarantee.expected, 0.1, rtol: 1e-15)
        let b = conformalThreshold(scores, alpha: 0.05)
        XCTAssertEqual(b.threshold, 19)
        assertClose(b.guarantee.expected, 0.05, rtol: 1e-15)
        assertClose(b.guarantee.upper90, 1 - pow(0.1, 1.0 / 19), rtol: 1e-12)
        let c = conformalThreshold(scores, alpha: 0.04)
        XCTAssertEqual(c.threshold, .infinity)
        XCTAssertEqual(c.guarantee.k, 20)
        XCTAssertEqual(c.guarantee.expected, 0)
        // (n + 1)(1 - alpha) = 100 * 0.95 is 95 in exact arithmetic: k = 95, not 96
        XCTAssertEqual(conformalThreshold((1...99).map(Double.init), alpha: 0.05).threshold, 95)
        // a calibration too small for its budget says so and flags nothing: n = 2 scores, alpha 0.05
        // needs n >= 0.95 / 0.05 = 19
        let small = try MonitorCalibration(clean: [[0.1, 0.5], [0.3, 0.5], [0.2, 0.6], [0.2, 0.4]], score: .contrastAbsZ,
                                           rule: .fprBudget(0.05))
        XCTAssertTrue(small.ruleDescription.contains("2 clean scores are too few (need 19)"), small.ruleDescription)
        XCTAssertFalse(small.flags(1e300))
        // Beta(3, 3) is symmetric: its median is 1/2
        assertClose(betaQuantile(a: 3, b: 3, p: 0.5), 0.5, rtol: 1e-12)
    }

    /// The budget as a property: over 20,000 calibrations of n = 30 clean scores, a new clean
    /// score lands above the threshold with probability (n + 1 - k)/(n + 1) = 3/31 (alpha 0.1,
    /// k = 28), whatever the distribution (uniform and exponential here), and the calibration's
    /// own FPR exceeds the 90% bound for about 1 calibration in 10.
    func testFPRBudgetHoldsOverCalibrations() {
        var rng = SeededGenerator(seed: 16)
        let trials = 20_000, n = 30, alpha = 0.1
        // the guarantee depends on n and alpha only
        let bound = conformalThreshold([Double](repeating: 0, count: n), alpha: alpha).guarantee.upper90
        for exponential in [false, true] {
            func draw() -> Double { let u = rng.uniform(); return exponential ? -log(1 - u) : u }
            var flagged = 0, above90 = 0
            for _ in 0..<trials {
                let cal = conformalThreshold((0..<n).map { _ in draw() }, alpha: alpha)
                if draw() > cal.threshold { flagged += 1 }
                // the calibration's own FPR: P(score > threshold) = 1 - F(threshold)
                let fpr = exponential ? exp(-cal.threshold) : 1 - cal.threshold
                if fpr > bound { above90 += 1 }
            }
            let expected = 3.0 / 31, rate = Double(flagged) / Double(trials)
            XCTAssertEqual(rate, expected, accuracy: 4 * (expected * (1 - expected) / Double(trials)).squareRoot(), "exponential \(exponential)")
            XCTAssertLessThanOrEqual(rate, alpha + 0.005)
            XCTAssertEqual(Double(above90) / Double(trials), 0.1, accuracy: 4 * (0.09 / Double(trials)).squareRoot(), "exponential \(exponential)")
        }
    }

    /// Calibration draws by hand: one pair, calibration cosines {0, 2, 100, 102}, draws of 2 rows.
    /// The first drawn row alone sets the mean (standard deviation 0), so the clean input 1 is
    /// nearer than the triggered 50 when that row is 0 or 2 (AUROC 1) and farther when it is 100
    /// or 102 (AUROC 0): each draw gives 0 or 1, half of them 1, and a seed repeats its draws.
    func testAUROCOverCalibrationDrawsByHand() throws {
        let calibration: [[Double]] = [[0], [2], [100], [102]]
        func draws(_ seed: UInt64) throws -> [Double] {
            try aurocOverCalibrationDraws(calibration: calibration, clean: [[1]], triggered: [[50]], size: 2, draws: 400, seed: seed,
                                          score: .contrastAbsZ)
        }
        let a = try draws(7)
        XCTAssertEqual(Set(a), [0, 1])
        let share = a.reduce(0, +) / 400
        XCTAssertEqual(share, 0.5, accuracy: 4 * (0.25 / 400.0).squareRoot())
        XCTAssertEqual(try draws(7), a)
        XCTAssertNotEqual(try draws(8), a)
        XCTAssertThrowsError(try aurocOverCalibrationDraws(calibration: calibration, clean: [[1]], triggered: [[50]], size: 5, draws: 1,
                                                          seed: 1, score: .contrastAbsZ))
    }

    // MARK: the oracle

    /// `inspect`'s quantities in f64 on all-MiniLM-L6-v2 with a seeded 2-class head against
    /// transformers + numpy (Fixtures/make_oracle_fixture.py): cosines, frac_above, p99,
    /// maxsim, importance and safety to 1e-9 relative, the same classes and alignment loss.
    func testOracleAgreesWithAnIndependentImplementation() throws {
        let base = try sharedData("all-MiniLM-L6-v2")
        let dir = temporaryDirectory(self) + "/minilm-cls"
        _ = try addClassifierHead(directory: base, labels: 2, seed: 7, to: dir)
        let model = try AnyModel.load(.directory(dir), precision: .f64, backend: .naive)
        let doc = try fixture("oracle_minilm_f64.json")
        let expected = doc["inputs"]!.array
        let inputs = expected.map { AnalysisInput(tokens: $0["ids"]!.array.map(\.int)) }
        let analyses = try model.analyze(inputs, settings: AnalysisSettings(view: .full))
        func close(_ a: [Double], _ b: JSONValue, _ what: String) {
            let e = b.array.map(\.double)
            XCTAssertEqual(a.count, e.count, what)
            let worst = zip(a, e).map { abs($0 - $1) / max(abs($1), 1e-12) }.max() ?? 0
            XCTAssertLessThanOrEqual(worst, 1e-9, what)
        }
        for (x, an) in analyses.enumerated() {
            let e = expected[x]
            XCTAssertEqual(an.label, e["label"]!.int)
            close(an.pairCosines, e["pair_cosines"]!, "cosines \(x)")
            close([an.fracAbove, an.p99], .array([e["frac_above"]!, e["p99"]!]), "frac_above/p99 \(x)")
            close(an.maxsim, e["maxsim"]!, "maxsim \(x)")
            close(an.importance, e["importance"]!, "importance \(x)")
            let r = safetyReport([an], alpha: 0.5, tau: 0.5, heads: 12)
            close(r.safety, e["safety"]!, "safety \(x)")
            XCTAssertEqual(r.classes.map(\.rawValue), e["classes"]!.array.map(\.stringValue))
            let split = (r.ids(.suspicious).map { $0.layer * 12 + $0.head }, r.ids(.safe).map { $0.layer * 12 + $0.head })
            close([alignmentLoss(an.views, suspicious: split.0, safe: split.1)], .array([e["align_loss"]!]), "align_loss \(x)")
        }
        let agg = safetyReport(analyses, alpha: 0.5, tau: 0.5, heads: 12)
        close(agg.safety, doc["aggregate"]!["safety"]!, "aggregate safety")
        XCTAssertEqual(agg.classes.map(\.rawValue), doc["aggregate"]!["classes"]!.array.map(\.stringValue))
    }

    /// The decoder path against transformers' LlamaForCausalLM + numpy (f64) on stories260K
    /// converted to the Hugging Face layout (Fixtures/make_oracle_stories_fixture.py): the same
    /// greedy generation, gen2prompt attention, cosines, frac_above, p99, maxsim, importance (the
    /// generation loss) and safety to 1e-9, the same classes. Exercises grouped-query attention.
    func testDecoderOracleAgreesWithAnIndependentImplementation() throws {
        let bin = try sharedData("llama2c-stories260K/stories260K.bin")
        let dir = temporaryDirectory(self) + "/stories"
        try AnyModel.load(.llama2c(model: bin, tokenizer: nil), precision: .f32, backend: .naive).convertedToRotateHalf().save(to: dir, dtype: .F32)
        let model = try AnyModel.load(.directory(dir), precision: .f64, backend: .naive)
        let doc = try fixture("oracle_stories260k_f64.json")
        let expected = doc["inputs"]!.array
        var settings = AnalysisSettings(view: .gen2prompt)
        settings.generate = 8
        let analyses = try model.analyze(expected.map { AnalysisInput(tokens: $0["prompt"]!.array.map(\.int)) }, settings: settings)
        func close(_ a: [Double], _ b: [Double], _ what: String) {
            XCTAssertEqual(a.count, b.count, what)
            let worst = zip(a, b).map { abs($0 - $1) / max(abs($1), 1e-12) }.max() ?? 0
            XCTAssertLessThanOrEqual(worst, 1e-9, what)
        }
        for (x, an) in analyses.enumerated() {
            let e = expected[x]
            XCTAssertEqual(an.tokens, e["tokens"]!.array.map(\.int))
            XCTAssertEqual(an.generatedLength, 8)
            for (h, v) in e["views"]!.array.enumerated() {
                let ev = v.array.map(\.double)
                XCTAssertLessThanOrEqual(zip(an.views[h], ev).map { abs($0 - $1) }.max() ?? 1, 1e-12, "view \(x) head \(h)")
            }
            close(an.pairCosines, e["pair_cosines"]!.array.map(\.double), "cosines \(x)")
            close([an.fracAbove, an.p99], [e["frac_above"]!.double, e["p99"]!.double], "frac_above/p99 \(x)")
            close(an.maxsim, e["maxsim"]!.array.map(\.double), "maxsim \(x)")
            close(an.importance, e["importance"]!.array.map(\.double), "importance \(x)")
            let r = safetyReport([an], alpha: 0.5, tau: 0.5, heads: 8)
            close(r.safety, e["safety"]!.array.map(\.double), "safety \(x)")
            XCTAssertEqual(r.classes.map(\.rawValue), e["classes"]!.array.map(\.stringValue))
        }
    }

    /// Same seed, same inputs: byte-identical dumps.
    func testInspectIsDeterministic() throws {
        var s = InspectSettings(view: .gen2prompt)
        s.analysis.generate = 3
        s.dumpAttention = true
        func dump() throws -> String {
            let m = try AnyModel.load(.preset("llama-tiny", seed: 4), precision: .f64, backend: .naive)
            return try m.inspect([AnalysisInput(tokens: [1, 7, 30, 2]), AnalysisInput(tokens: [1, 9])], settings: s, commandLine: "x").text
        }
        let a = try dump(), b = try dump()
        XCTAssertEqual(a, b)
        XCTAssertTrue(a.contains("\"generated_length\": 3"))
        XCTAssertNotNil(try JSONValue.parse(a)["aggregate"])
    }
}
