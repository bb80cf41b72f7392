// Issue 15: the fine-tuning budget (held-out split, lowest held-out loss kept) and the
// evidence-sized head classes (robust outliers of Eq. 5's S).

import XCTest
@testable import HeadAlign

final class Issue15Tests: XCTestCase {
    // MARK: evidence-sized classes

    /// [1, 2, 3, 4, 100]: median 3, |x - 3| = [2, 1, 0, 1, 97], MAD 1, scale 1.4826:
    /// z = [-2, -1, 0, 1, 97] / 1.4826 = [-1.349, -0.674, 0, 0.674, 65.4].
    func testRobustZByHand() {
        let z = robustZ([1, 2, 3, 4, 100])
        assertAllClose(z.map(Float.init), [-2 / 1.4826, -1 / 1.4826, 0, 1 / 1.4826, 97 / 1.4826], rtol: 1e-6)
        // even count: median of the middle two; MAD 0 falls back to mean/sd; constant: all 0
        assertAllClose(robustZ([0, 0, 0, 4]).map(Float.init), [-1 / 3.0.squareRoot(), -1 / 3.0.squareRoot(), -1 / 3.0.squareRoot(), 3 / 3.0.squareRoot()], rtol: 1e-6)
        XCTAssertEqual(robustZ([2, 2, 2]), [0, 0, 0])
    }

    /// Safety scores of 9 typical heads near 0.6 and one far below: only that one is suspicious;
    /// a head ~2 robust sd low is intermediate; the rest are safe. No outlier: no suspicious head,
    /// reported as an empty class naming the rule.
    func testOutlierClassesFindFewHeadsWhenFewStandOut() {
        let s = [0.60, 0.62, 0.58, 0.61, 0.59, 0.60, 0.63, 0.57, 0.56, 0.10]
        // median (0.59 + 0.60) / 2 = 0.595; |s - m| sorted .005 .005 .005 .015 .015 .025 .025 .035 .035 .495:
        // MAD 0.02, scale 0.029652; z(0.10) = -16.7, z(0.56) = -1.18, z(0.57) = -0.84
        let c = classifyOutliers(s, z: 3)
        XCTAssertEqual(c, [.safe, .safe, .safe, .safe, .safe, .safe, .safe, .safe, .intermediate, .suspicious])
        XCTAssertEqual(classifyOutliers(s, z: 20)[9], .intermediate)  // below -1 but not past the cut
        // the fixed-tau rule on the same scores: 9 safe (S > 0.5), 1 suspicious, nothing in between
        XCTAssertEqual(classifyHeads(s, tau: 0.5).filter { $0 == .safe }.count, 9)
        let a = InputAnalysis(tokens: [1], promptLength: 1, views: [], pairCosines: [], maxsim: [0.5, 0.5, 0.5],
                              importance: [1, 1, 1], label: 0, fracAbove: 0, p99: 0)
        let r = safetyReport([a], alpha: 0.5, tau: 0.5, heads: 3, rule: .outliers(z: 3))
        XCTAssertEqual(r.classes, [.safe, .safe, .safe])
        XCTAssertTrue((r.emptyClassReport ?? "").contains("no suspicious (robust z < -3.0)"), r.emptyClassReport ?? "nil")
    }

    // MARK: the fine-tuning budget

    func testHeldOutSplitIsASeededPartition() {
        let clean = (0..<10).map { TrainingExample(tokens: [$0], label: $0 % 2) }
        let (train, held) = heldOutSplit(clean, holdout: 0.2, seed: 3)
        XCTAssertEqual(held.count, 2)
        XCTAssertEqual(Set((train + held).map { $0.tokens[0] }), Set(0..<10))
        XCTAssertEqual(heldOutSplit(clean, holdout: 0.2, seed: 3).heldOut.map(\.tokens), held.map(\.tokens))
        XCTAssertGreaterThan(Set((0..<8).map { heldOutSplit(clean, holdout: 0.2, seed: UInt64($0)).heldOut.map { $0.tokens[0] } }).count, 1)
        XCTAssertEqual(heldOutSplit(clean, holdout: 0, seed: 3).heldOut.count, 0)
        XCTAssertEqual(heldOutSplit([clean[0]], holdout: 0.5, seed: 3).heldOut.count, 0)
        XCTAssertEqual(heldOutSplit(Array(clean.prefix(2)), holdout: 0.9, seed: 3).train.count, 1)  // at least one to train on
    }

    /// 40 separable bert-micro sequences split 30 / 10, with 1 of the 10 held-out labels flipped:
    /// the held-out loss falls while the model grows confident and rises once that one costs more
    /// than the rest gain, so its lowest is mid-run.
    func midRunMinimumData() -> (train: [TrainingExample], held: [TrainingExample]) {
        var rng = SeededGenerator(seed: 9)
        let data = (0..<40).map { _ -> TrainingExample in
            let label = rng.int(below: 2)
            return TrainingExample(tokens: [2] + (0..<5).map { _ in 4 + 2 * rng.int(below: 9) + label } + [3], label: label)
        }
        let (train, rightHeld) = heldOutSplit(data, holdout: 0.25, seed: 1)
        return (train, rightHeld.enumerated().map { i, e in i == 0 ? TrainingExample(tokens: e.tokens, label: 1 - e.label!) : e })
    }

    /// The kept parameters are those of the check with the lowest held-out loss: recomputing the
    /// held-out loss of the returned model gives exactly that check's value. With a learning rate
    /// that wrecks the model, step 0 is kept and the parameters come back bit for bit.
    func testTheLowestHeldOutLossIsKept() throws {
        let config = try ModelConfig.preset("bert-micro")
        let (train, held) = midRunMinimumData()
        for (rate, expectStepZero) in [(2e-2, false), (50.0, true)] {
            let model = Model<Double>(config: config)
            model.initialize(seed: 4)
            let before = model.params.array
            var budget = FinetuneBudget()
            budget.passes = 8; budget.every = 4; budget.patience = 100; budget.rule = .lowest
            let opt = headwiseOptimizer(model, rates: [Double](repeating: rate, count: model.layout.total), weightDecay: 0)
            let out = try finetuneWithHeldOut(model, train: train, heldOut: held, budget: budget, batchSize: 5, seed: 2, optimizer: opt)
            XCTAssertEqual(out.losses.count, 48)  // 8 passes over 30 in batches of 5
            XCTAssertEqual(out.heldOut.map(\.step), [0] + Array(stride(from: 4, through: 48, by: 4)))
            let best = out.heldOut.min { $0.loss < $1.loss }!
            XCTAssertEqual(out.chosenStep, best.step)
            XCTAssertEqual(heldOutLoss(model, held).mean, best.loss)
            XCTAssertEqual(out.chosenStep == 0, expectStepZero, "rate \(rate): held-out \(out.heldOut)")
            if !expectStepZero {  // the kept step is a mid-run one: later parameters were discarded
                XCTAssertLessThan(out.chosenStep, out.heldOut.last!.step, "\(out.heldOut)")
            }
            if expectStepZero { XCTAssertEqual(model.params.array, before) }
        }
    }

    /// latest-within-se keeps the latest check within one standard error of the lowest (a later
    /// one than the lowest here: the curve is flat past its minimum), its parameters restored.
    func testLatestWithinOneStandardErrorIsKept() throws {
        let config = try ModelConfig.preset("bert-micro")
        let (train, held) = midRunMinimumData()
        let model = Model<Double>(config: config)
        model.initialize(seed: 4)
        var budget = FinetuneBudget()
        budget.passes = 8; budget.every = 4; budget.patience = 100; budget.rule = .latestWithinSE
        let opt = headwiseOptimizer(model, rates: [Double](repeating: 2e-2, count: model.layout.total), weightDecay: 0)
        let out = try finetuneWithHeldOut(model, train: train, heldOut: held, budget: budget, batchSize: 5, seed: 2, optimizer: opt)
        let lowest = out.heldOut.min { $0.loss < $1.loss }!
        XCTAssertGreaterThan(out.lowestStandardError, 0)
        let within = out.heldOut.filter { $0.loss <= lowest.loss + out.lowestStandardError }
        XCTAssertEqual(out.chosenStep, within.last!.step)
        XCTAssertGreaterThan(out.chosenStep, lowest.step, "\(out.heldOut), se \(out.lowestStandardError)")
        XCTAssertEqual(heldOutLoss(model, held).mean, within.last!.loss)
    }

    /// fewest-flagged-within-se keeps, among the checks within one standard error of the final
    /// lowest from that lowest on, the one whose flagged agreement is smallest (the latest on a
    /// tie), its parameters restored; without flagged inputs it is latest-within-se. The agreement
    /// here is a made-up function of the model (of its held-out loss), recorded at every call.
    func testFewestFlaggedWithinStandardErrorIsKept() throws {
        let config = try ModelConfig.preset("bert-micro")
        let (train, held) = midRunMinimumData()
        func run(_ rule: HeldOutRule, flagged: Bool) throws -> (out: FinetuneOutcome, model: Model<Double>, seen: [Double: Double]) {
            let model = Model<Double>(config: config)
            model.initialize(seed: 4)
            var budget = FinetuneBudget()
            budget.passes = 8; budget.every = 4; budget.patience = 100; budget.rule = rule
            let opt = headwiseOptimizer(model, rates: [Double](repeating: 2e-2, count: model.layout.total), weightDecay: 0)
            var seen: [Double: Double] = [:]  // held-out loss -> the agreement returned there
            let agreement = { () -> Double in
                let l = heldOutLoss(model, held).mean, a = (l * 1e3).truncatingRemainder(dividingBy: 1)
                seen[l] = a
                return a
            }
            let out = try finetuneWithHeldOut(model, train: train, heldOut: held, budget: budget, batchSize: 5, seed: 2,
                                              optimizer: opt, flaggedAgreement: flagged ? agreement : nil)
            return (out, model, seen)
        }
        let (out, model, seen) = try run(.fewestFlaggedWithinSE, flagged: true)
        let lowest = out.heldOut.min { $0.loss < $1.loss }!
        let band = lowest.loss + out.lowestStandardError
        let candidates = out.heldOut.filter { $0.step >= lowest.step && $0.loss <= band }
        XCTAssertGreaterThan(candidates.count, 2, "\(out.heldOut)")  // a choice to make
        let agreements = try candidates.map { c in try XCTUnwrap(seen[c.loss], "step \(c.step) was not asked") }
        let kept = try XCTUnwrap(out.heldOut.first { $0.step == out.chosenStep })
        XCTAssertLessThanOrEqual(kept.loss, band)
        let keptAgreement = try XCTUnwrap(seen[kept.loss])
        XCTAssertLessThanOrEqual(keptAgreement, agreements.min()!, "kept step \(out.chosenStep): \(zip(candidates.map(\.step), agreements).map { $0 })")
        XCTAssertEqual(heldOutLoss(model, held).mean, kept.loss)  // its parameters were restored
        // nothing flagged: the same as latest-within-se, bit for bit
        let (plain, plainModel, _) = try run(.fewestFlaggedWithinSE, flagged: false)
        let (latest, latestModel, _) = try run(.latestWithinSE, flagged: true)
        XCTAssertEqual(plain.chosenStep, latest.chosenStep)
        XCTAssertEqual(plainModel.params.array, latestModel.params.array)
        XCTAssertNotEqual(out.chosenStep, latest.chosenStep, "the agreement changed nothing here: \(zip(candidates.map(\.step), agreements).map { $0 })")
    }

    /// The standard error by hand: two held-out examples, per-example losses a and b: mean (a+b)/2,
    /// sample variance (a-b)^2/2, SE = |a-b|/2.
    func testHeldOutStandardErrorByHand() throws {
        let model = Model<Double>(config: try ModelConfig.preset("bert-micro"))
        model.initialize(seed: 4)
        let e = [TrainingExample(tokens: [2, 5, 3], label: 0), TrainingExample(tokens: [2, 8, 9, 3], label: 1)]
        let a = heldOutLoss(model, [e[0]]).mean, b = heldOutLoss(model, [e[1]]).mean
        let both = heldOutLoss(model, e)
        XCTAssertEqual(both.mean, (a + b) / 2, accuracy: 1e-15)
        XCTAssertEqual(both.standardError, abs(a - b) / 2, accuracy: 1e-14)
        XCTAssertEqual(heldOutLoss(model, [e[0]]).standardError, 0)
    }

    /// Patience ends the run after that many checks without a new lowest loss.
    func testPatienceStopsEarly() throws {
        let config = try ModelConfig.preset("bert-micro")
        let data = (0..<20).map { TrainingExample(tokens: [2, 5 + $0 % 7, 3], label: $0 % 2) }
        let model = Model<Double>(config: config)
        model.initialize(seed: 4)
        var budget = FinetuneBudget()
        budget.passes = 50; budget.every = 1; budget.patience = 3; budget.rule = .lowest
        let opt = headwiseOptimizer(model, rates: [Double](repeating: 50, count: model.layout.total), weightDecay: 0)
        let out = try finetuneWithHeldOut(model, train: Array(data.prefix(15)), heldOut: Array(data.suffix(5)), budget: budget,
                                          batchSize: 5, seed: 2, optimizer: opt)
        let firstBest = out.heldOut.firstIndex { $0.step == out.chosenStep }!
        XCTAssertEqual(out.heldOut.count - 1 - firstBest, 3)
        XCTAssertLessThan(out.losses.count, 150)
    }

    // MARK: the flags

    /// Contradictory budget and class flags are refused before any work, naming the flag.
    func testContradictoryFlagsAreRefused() throws {
        let base = ["experiment", "--preset", "bert-tiny", "--corpus", "sentiment", "--attack", "badnets", "--seeds", "1"]
        try assertUsageError(base + ["--ft-steps", "20", "--ft-holdout", "0.2"], mentions: "--ft-steps")
        try assertUsageError(base + ["--ft-steps", "20", "--ft-passes", "3"], mentions: "--ft-passes")
        try assertUsageError(base + ["--ft-holdout", "0", "--ft-patience", "3"], mentions: "--ft-patience")
        try assertUsageError(base + ["--ft-holdout", "0.95"], mentions: "--ft-holdout")
        try assertUsageError(base + ["--classes", "outliers", "--tau", "0.4"], mentions: "--tau")
        try assertUsageError(base + ["--classes", "tau", "--outlier-z", "2"], mentions: "--outlier-z")
        try assertUsageError(base + ["--classes", "median"], mentions: "--classes")
        try assertUsageError(base + ["--ft-keep", "best"], mentions: "--ft-keep")
        try assertUsageError(base + ["--ft-steps", "20", "--ft-keep", "lowest"], mentions: "--ft-keep")
        try assertUsageError(base + ["--fpr-budget", "0.05", "--quantile", "0.9"], mentions: "--fpr-budget")
        try assertUsageError(base + ["--fpr-budget", "0"], mentions: "--fpr-budget")
        try assertUsageError(base + ["--fpr-budget", "1"], mentions: "--fpr-budget")
        try assertUsageError(base + ["--lr-safe-when-removed", "-1"], mentions: "--lr-safe-when-removed")
        try assertUsageError(base + ["--lr-safe-when-removed", "5e-5", "--methods", "align-only,finetune"], mentions: "--lr-safe-when-removed")
        try assertUsageError(["defend", "--preset", "bert-tiny", "--clean", "x.tsv", "--inputs", "y.tsv", "--no-write", "--method", "ft-only",
                              "--lr-safe-when-removed", "5e-5"], mentions: "--lr-safe-when-removed")
    }

    // MARK: the safe heads' rate after the alignment's self-check

    /// `safeRate`: the gentle rate only when fewer than a third of the flagged inputs are still
    /// answered as before (a third exactly is not fewer); `eta_high` when the rule is off or nothing was measured.
    func testSafeRateByHand() {
        var s = DefenseSettings(task: .classification, family: .bert)
        XCTAssertEqual(s.safeRate(afterAlignment: 0.1), s.rates.safe)  // off: the paper's eta_high
        s.safeRateWhenRemoved = 5e-5
        XCTAssertEqual(s.safeRate(afterAlignment: 0.1), 5e-5)
        XCTAssertEqual(s.safeRate(afterAlignment: 0.33), 5e-5)
        XCTAssertEqual(s.safeRate(afterAlignment: 1.0 / 3), 2e-4)
        XCTAssertEqual(s.safeRate(afterAlignment: 0.45), 2e-4)  // W's seeds 1 and 3 (§18), gentle under a half
        XCTAssertEqual(s.safeRate(afterAlignment: 0.9), 2e-4)
        XCTAssertEqual(s.safeRate(afterAlignment: nil), 2e-4)
    }

    /// End to end (an explicit split, so that the tiny model has both sets): with
    /// `--lr-safe-when-removed R`, `ours` logs the self-check and the rate it picked, and its
    /// fine-tuning losses and CA / ASR equal the run with that rate given as `--lr-safe` (the check
    /// itself changes nothing), and differ from the run at the rate it did not pick (the pick is used).
    func testTheSelfCheckPicksTheRateAndChangesNothingElse() throws {
        let dir = temporaryDirectory(self)
        func run(_ name: String, _ extra: [String]) throws -> (row: String, losses: String, err: String) {
            let r = try runHeadalign(smallExperimentArguments(methods: "ours", json: dir + "/\(name).json", markdown: dir + "/\(name).md")
                                     + ["--quantile", "0.5", "--suspicious", "1:0", "--safe", "0:0,0:1"] + extra)
            XCTAssertEqual(r.status, 0, r.err)
            let md = try String(contentsOfFile: dir + "/\(name).md", encoding: .utf8)
            let row = md.split(separator: "\n").first { $0.hasPrefix("| ours |") }.map(String.init) ?? ""
            let losses = r.err.split(separator: "\n").first { $0.contains("fine-tuning: loss") }.map(String.init) ?? ""
            return (row, losses, r.err)
        }
        func numbers(_ row: String) -> [String] { Array(row.split(separator: "|").map { $0.trimmingCharacters(in: .whitespaces) }.prefix(3)) }
        let gentle = "0.0005"  // far from eta_high (2e-4), so that the two branches' losses differ
        let auto = try run("auto", ["--lr-safe-when-removed", gentle])
        let line = auto.err.split(separator: "\n").first { $0.contains("after the alignment") }.map(String.init) ?? ""
        XCTAssertTrue(line.contains("safe heads fine-tune at"), auto.err)
        let picked = line.contains("at \(gentle)") ? gentle : "0.0002", other = picked == gentle ? "0.0002" : gentle
        XCTAssertTrue(auto.row.contains("safe heads at \(picked)"), auto.row)
        let fixed = try run("fixed", ["--lr-safe", picked]), unpicked = try run("other", ["--lr-safe", other])
        XCTAssertFalse(auto.losses.isEmpty, auto.err)
        XCTAssertEqual(auto.losses, fixed.losses)
        XCTAssertEqual(numbers(auto.row), numbers(fixed.row), "\(auto.row) vs \(fixed.row)")
        XCTAssertNotEqual(auto.losses, unpicked.losses)
    }

    /// The other branch, on the shipped teaching model (40 defender sentences, 20 + 20 screened):
    /// there the alignment removes the backdoor on most flagged inputs, the gentle rate is picked,
    /// and the run equals the one with that rate as `--lr-safe` (which differs from `eta_high`'s:
    /// were the pick not used, `auto` would be the default run).
    func testTheGentleRateIsUsedWhereTheAlignmentRemovedIt() throws {
        let root = URL(fileURLWithPath: #filePath).deletingLastPathComponent().deletingLastPathComponent().deletingLastPathComponent().path
        let model = root + "/tiny-models/minilm-l3-sst2-badnets"
        guard FileManager.default.fileExists(atPath: model + "/model.safetensors") else { throw XCTSkip("\(model) not found") }
        let dir = temporaryDirectory(self)
        func head(_ name: String, _ lines: Int) throws -> String {
            let text = try String(contentsOfFile: model + "/demo/" + name, encoding: .utf8)
            let path = dir + "/" + name
            try (text.split(separator: "\n").prefix(lines).joined(separator: "\n") + "\n").write(toFile: path, atomically: true, encoding: .utf8)
            return path
        }
        let files = ["--defense-clean", try head("defense.tsv", 41), "--clean-test", try head("test_clean.tsv", 21),
                     "--triggered-test", try head("test_triggered.csv", 21)]
        func run(_ extra: [String]) throws -> (losses: String, err: String) {
            let r = try runHeadalign(["experiment", "--backdoored", model, "--attack", "file", "--seeds", "1", "--methods", "ours",
                                      "--ft-steps", "3", "--backend", "naive"] + files + extra)
            XCTAssertEqual(r.status, 0, r.err)
            return (r.err.split(separator: "\n").first { $0.contains("fine-tuning: loss") }.map(String.init) ?? "", r.err)
        }
        let auto = try run(["--lr-safe-when-removed", "0.0005"]), fixed = try run(["--lr-safe", "0.0005"])
        XCTAssertTrue(auto.err.contains("safe heads fine-tune at 0.0005 (fewer than a third: the alignment removed it, keep it)"), auto.err)
        XCTAssertFalse(auto.losses.isEmpty, auto.err)
        XCTAssertEqual(auto.losses, fixed.losses)
    }
}
