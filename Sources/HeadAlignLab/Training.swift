// Training.swift: training a classifier end to end: from scratch on a preset shape (whole-word
// vocabulary built from the training set) or fine-tuning a pretrained directory with a new head.

import HeadAlign
import Foundation

public struct TrainSettings: Sendable {
    public var epochs = 3
    public var batchSize = 32
    public var learningRate = 1e-3
    public var weightDecay = 0.01
    public var vocabularySize = 5000
    public var maxLength = 64
    public var seed: UInt64 = 1
    public init() {}

    /// Tokens per example for a decoder's instruction records (prompt + response), in training and
    /// in the defender's clean set: every decoder table in docs/RESULTS.md was made with it. It
    /// bounds a step's cost on 2 cores; BackdoorLLM's records are longer (57–60% of a 1,000-record
    /// training mix are cut, the prompt from the left, and `train` says how many).
    public static let decoderMaxLength = 128
}

/// Where training stands after a step: loss and batch accuracy averaged over the last 20 steps.
public struct TrainProgress: Sendable {
    public let step: Int, steps: Int
    public let loss: Double, accuracy: Double
    public let tokensPerSecond: Double
    public let elapsed: Double
    public var eta: Double { elapsed / Double(step) * Double(steps - step) }
    public init(step: Int, steps: Int, loss: Double, accuracy: Double, tokensPerSecond: Double, elapsed: Double) {
        (self.step, self.steps, self.loss, self.accuracy, self.tokensPerSecond, self.elapsed) = (step, steps, loss, accuracy, tokensPerSecond, elapsed)
    }
}

/// One progress line fitted to `width` columns (a terminal's; nil: a log line, no bar and no
/// limit). When it does not fit, fields go in a fixed order: tokens per second, elapsed time, the
/// bar shrinks to 10 then goes, then ETA, accuracy, loss, the label; what is left is cut to
/// `width - 1` columns (the last column would wrap on some terminals).
public func progressLine(label: String, _ p: TrainProgress, width: Int?) -> String {
    var showRate = true, showElapsed = true, showETA = true, showAccuracy = !p.accuracy.isNaN, showLoss = true, showLabel = true
    var barWidth = width == nil ? 0 : 24
    func compose() -> String {
        var head: [String] = []  // label and bar, one space apart
        if showLabel { head.append(label) }
        if barWidth > 0 {
            let filled = barWidth * min(p.step, p.steps) / max(1, p.steps)
            head.append("[" + String(repeating: "#", count: filled) + String(repeating: ".", count: barWidth - filled) + "]")
        }
        var fields = ["step \(p.step)/\(p.steps)"]  // two spaces apart
        if showLoss { fields.append(String(format: "loss %.4f", p.loss)) }
        if showAccuracy { fields.append(String(format: "acc %.3f", p.accuracy)) }
        if showRate { fields.append(String(format: "%.0f tok/s", p.tokensPerSecond)) }
        if showElapsed { fields.append(String(format: "%.1f s", p.elapsed)) }
        if showETA { fields.append(String(format: "ETA %.1f s", p.eta)) }
        return (head + [fields.joined(separator: "  ")]).joined(separator: " ")
    }
    guard let width else { return compose() }
    let limit = max(1, width - 1)
    let steps: [() -> Void] = [{ showRate = false }, { showElapsed = false }, { barWidth = min(barWidth, 10) }, { barWidth = 0 },
                               { showETA = false }, { showAccuracy = false }, { showLoss = false }, { showLabel = false }]
    var line = compose()
    for shorten in steps where line.count > limit {
        shorten()
        line = compose()
    }
    return line.count > limit ? String(line.prefix(limit)) : line
}

/// Turns each step's statistics into a `TrainProgress`: loss and batch accuracy over the last 20
/// steps (accuracy NaN when the objective has no labels), tokens per second since the start.
public final class ProgressWindow {
    let steps: Int
    let start = monotonicSeconds()
    var window: [StepStats] = []
    var tokens = 0

    public init(steps: Int) { self.steps = steps }

    public func update(_ stats: StepStats) -> TrainProgress {
        window.append(stats)
        tokens += stats.tokens
        if window.count > 20 { window.removeFirst() }
        let elapsed = monotonicSeconds() - start
        let counted = window.map(\.count).reduce(0, +), correct = window.map(\.correct).reduce(0, +)
        return TrainProgress(step: stats.step, steps: steps, loss: window.map(\.loss).reduce(0, +) / Double(window.count),
                             accuracy: window.contains { $0.labelled } ? Double(correct) / Double(max(1, counted)) : .nan,
                             tokensPerSecond: Double(tokens) / max(elapsed, 1e-9), elapsed: elapsed)
    }
}

/// A trained classifier and the files that go with it.
public struct TrainedClassifier {
    public let model: AnyModel
    public let tokenizer: AnyTokenizer  // WordPiece (BERT), or the llama2.c BPE of a Llama classifier
    public let tokenizerFiles: [String: Data]
    public let losses: [Double]
}

/// Trains a sequence classifier. `base`: a preset name (from scratch) or a model directory
/// (pretrained; a classifier head is added when it has none). Progress goes to `progress`.
public func trainClassifier(base: ModelSource, examples: [LabeledText], settings: TrainSettings, precision: Precision,
                            backend: Backend, progress: (TrainProgress) -> Void = { _ in }) throws -> TrainedClassifier {
    guard !examples.isEmpty else { throw HeadAlignError.usage("no training examples") }
    let labels = max(2, (examples.map(\.label).max() ?? 0) + 1)
    var tokenizer: AnyTokenizer
    var files: [String: Data]
    func build<S: Real>(_: S.Type) throws -> Model<S> {
        switch base {
        case .preset(let name, let seed):
            let vocab = try buildWordVocabulary(examples.map(\.text), size: settings.vocabularySize)
            tokenizer = .wordPiece(try WordPieceTokenizer(vocab: vocab))
            files = ["vocab.txt": Data((vocab.joined(separator: "\n") + "\n").utf8),
                     "tokenizer_config.json": Data("{\"do_lower_case\": true, \"tokenizer_class\": \"BertTokenizer\"}\n".utf8)]
            var config = try ModelConfig.preset(name).withClassifier(labels: labels)
            guard config.family == .bert else { throw HeadAlignError.usage("training from scratch is for BERT presets here (decoders: issue 6)") }
            config.vocabSize = vocab.count
            config.maxPositionEmbeddings = max(config.maxPositionEmbeddings, settings.maxLength)
            let m = Model<S>(config: config, backend: backend)
            m.initialize(seed: seed)
            return m
        case .directory(let dir):
            let baseConfig = try ModelConfig.load(contentsOf: URL(fileURLWithPath: dir + "/config.json"))
            tokenizer = try AnyModel.tokenizer(for: base, config: baseConfig)
            if case .none = tokenizer { throw HeadAlignError.badInput("\(dir): no tokenizer (vocab.txt, tokenizer.json or tokenizer.bin)") }
            files = tokenizerFiles(in: dir)
            let config = baseConfig.numLabels > 0 ? baseConfig : baseConfig.withClassifier(labels: labels)
            return try loadModel(directory: dir, backend: backend, config: config,
                                 allowMissing: { $0.hasPrefix("classifier.") || $0.hasPrefix("score.") }, seed: settings.seed)
        case .llama2c:
            throw HeadAlignError.usage("train: give --preset NAME or --model DIR")
        }
    }
    func run<S: Real>(_ model: Model<S>) throws -> [Double] {
        let data = try examples.map { TrainingExample(tokens: try tokenizer.encode($0.text, maxLength: settings.maxLength).ids, label: $0.label) }
        if let bad = examples.first(where: { $0.label >= model.config.numLabels }) {
            throw HeadAlignError.badInput("training label \(bad.label) is outside the model's \(model.config.numLabels) classes")
        }
        let steps = settings.epochs * ((data.count + settings.batchSize - 1) / settings.batchSize)
        let optimizer = AdamW<S>(count: model.layout.total, learningRate: settings.learningRate, weightDecay: settings.weightDecay)
        let window = ProgressWindow(steps: steps)
        return try trainSteps(model, examples: data, steps: steps, batchSize: settings.batchSize, seed: settings.seed,
                              optimizer: optimizer, onStep: { progress(window.update($0)) })
    }
    tokenizer = .none
    files = [:]
    switch precision {
    case .f32:
        let m = try build(Float.self)
        let losses = try run(m)
        return TrainedClassifier(model: .f32(m), tokenizer: tokenizer, tokenizerFiles: files, losses: losses)
    case .f64:
        let m = try build(Double.self)
        let losses = try run(m)
        return TrainedClassifier(model: .f64(m), tokenizer: tokenizer, tokenizerFiles: files, losses: losses)
    }
}
