// Analysis.swift: the per-input analysis pipeline that Eq. 5, the monitor and the oracle dump
// read: tokens (with the greedy generation for gen2prompt), each head's view of A (Eq. 2), the
// pair cosines (Eq. 3), maxsim, and Eq. 4's per-input inner product (Importance.swift).
// Eq. 5's aggregation is Safety.swift's; this file only gathers.

/// One input to analyse: token ids (a prompt, for generation) and, when known, its gold label.
public struct AnalysisInput: Sendable {
    public var tokens: [Int]
    public var label: Int?
    public init(tokens: [Int], label: Int? = nil) { self.tokens = tokens; self.label = label }
}

/// What the model is used for, which fixes the loss of Eq. 4 and the default views.
public enum ModelTask: String, Sendable {
    case classification  // a classifier head: CE of its logits against a label
    case generation  // an LM head: CE summed over the generated tokens, teacher-forced

    public static func of(_ config: ModelConfig) -> ModelTask { config.numLabels > 0 ? .classification : .generation }

    /// SPEC's defaults: the monitor's view and the view of Eq. 3 inside Eq. 5 and of Eq. 6–7.
    public func defaultViews(_ family: ModelFamily) -> (monitor: AnalysisView, defense: AnalysisView) {
        switch self {
        case .generation: return (.gen2prompt, .gen2prompt)
        case .classification: return (family == .bert ? .cls : .last, .full)
        }
    }
}

/// Which label Eq. 4's loss uses: the model's own prediction (label-free, the deployment
/// setting) or the dataset's.
public enum ImportanceLabels: String, CaseIterable, Sendable { case predicted, gold }

public struct AnalysisSettings: Sendable {
    public var view: AnalysisView
    public var scope: PairScope = .model
    public var threshold = 0.99  // frac_above's cosine threshold
    public var importanceLabels: ImportanceLabels = .predicted
    public var generate = 8  // T_g for gen2prompt
    public var batchSize = 16
    /// Eq. 4 needs a backward pass; the monitor reads only cosines and skips it (importance 0).
    public var importance = true

    public init(view: AnalysisView) { self.view = view }
}

/// Everything computed for one input, heads indexed `l * NH + h`.
public struct InputAnalysis: Sendable {
    public let tokens: [Int]  // prompt + generated tokens
    public let promptLength: Int  // T_p (all tokens when nothing is generated)
    public var generatedLength: Int { tokens.count - promptLength }
    public let views: [[Double]]  // Eq. 2 vec of each head's view
    public let pairCosines: [Double]  // Eq. 3, scope order
    public let maxsim: [Double]
    public let importance: [Double]  // Eq. 4 before the mean over inputs: |<H, dl/dH>|
    public let label: Int?  // the label Eq. 4 used (classification)
    public let fracAbove: Double
    public let p99: Double
    /// Each head's column focus over the whole T x T map, whatever the view (`columnFocus`); the
    /// `focus` monitor score reads it. Empty when not measured.
    public let columnFocus: [Double]

    public init(tokens: [Int], promptLength: Int, views: [[Double]], pairCosines: [Double], maxsim: [Double],
                importance: [Double], label: Int?, fracAbove: Double, p99: Double, columnFocus: [Double] = []) {
        self.tokens = tokens; self.promptLength = promptLength; self.views = views; self.pairCosines = pairCosines
        self.maxsim = maxsim; self.importance = importance; self.label = label; self.fracAbove = fracAbove; self.p99 = p99
        self.columnFocus = columnFocus
    }
}

/// The sequences to analyse: classification inputs as they are; generation prompts continued
/// greedily by exactly `generate` tokens (no early stop), as SPEC fixes T_g.
@_specialize(exported: true, where S == Float)
@_specialize(exported: true, where S == Double)
public func analysisSequences<S: Real>(_ model: Model<S>, _ inputs: [AnalysisInput], task: ModelTask, generate: Int) -> [(tokens: [Int], promptLength: Int)] {
    analysisSequences(config: model.config, inputs, task: task, generate: generate) { prompts, n in
        prompts.map { generateGreedy(model, prompt: $0, maxNew: n) }
    }
}

/// The same with any greedy generator of several prompts at once (a model run layer by layer
/// brings its own, which decodes the prompts together).
public func analysisSequences(config: ModelConfig, _ inputs: [AnalysisInput], task: ModelTask, generate: Int,
                       greedy: ([[Int]], Int) -> [[Int]]) -> [(tokens: [Int], promptLength: Int)] {
    switch task {
    case .classification: return inputs.map { ($0.tokens, $0.tokens.count) }
    case .generation:
        let room = config.maxPositionEmbeddings - generate
        let prompts = inputs.map { $0.tokens.count > room ? Array($0.tokens.suffix(room)) : $0.tokens }
        let continuations = greedy(prompts, generate)
        return zip(prompts, continuations).map { ($0 + $1, $0.count) }
    }
}

/// What the analysis needs from a model: its forward, dL/dH of a forward pass, greedy generation.
/// A resident `Model` gives all three. This is the public seam for a model that is not resident
/// (a 7B Llama run one layer at a time from its memory-mapped checkpoint): it hands the analysis
/// and the oracle dump these closures instead.
public struct AnalysisRunner<S: Real> {
    public let config: ModelConfig
    public let forward: (Batch) -> ForwardPass<S>
    public let headGradients: (ForwardPass<S>, Tensor<S>) -> [Tensor<S>]  // dL/dH [N, NH*HS] per layer, given dL/d(output)
    public let greedy: ([[Int]], Int) -> [[Int]]  // (prompts, T_g) -> each prompt's T_g generated tokens

    public init(_ model: Model<S>) {
        config = model.config
        forward = { model.forward($0) }
        headGradients = { model.backward($0, dOutput: $1, into: model.makeGradients(), scope: .headOutputs).headOutputGradients }
        greedy = { prompts, n in prompts.map { generateGreedy(model, prompt: $0, maxNew: n) } }
    }

    public init(config: ModelConfig, forward: @escaping (Batch) -> ForwardPass<S>,
                headGradients: @escaping (ForwardPass<S>, Tensor<S>) -> [Tensor<S>], greedy: @escaping ([[Int]], Int) -> [[Int]]) {
        self.config = config; self.forward = forward; self.headGradients = headGradients; self.greedy = greedy
    }
}

/// Runs the analysis of every input: forward, views, cosines, and Eq. 4's backward.
/// `G^{l,h}(x) = |sum_{t,d} H_{t,d} dl/dH_{t,d}|` with l the input's own loss (the batch loss is a
/// mean, so its gradient is scaled back by the batch size).
@_specialize(exported: true, where S == Float)
@_specialize(exported: true, where S == Double)
public func analyze<S: Real>(_ model: Model<S>, _ inputs: [AnalysisInput], settings: AnalysisSettings) throws -> [InputAnalysis] {
    try analyze(AnalysisRunner(model), inputs, settings: settings)
}

@_specialize(exported: true, where S == Float)
@_specialize(exported: true, where S == Double)
public func analyze<S: Real>(_ model: AnalysisRunner<S>, _ inputs: [AnalysisInput], settings: AnalysisSettings) throws -> [InputAnalysis] {
    let c = model.config, task = ModelTask.of(c)
    let nh = c.numAttentionHeads, heads = c.numHiddenLayers * nh, hs = c.headSize
    if settings.view == .gen2prompt && task != .generation {
        throw HeadAlignError.usage("--view gen2prompt needs a model with an LM head (a decoder that generates)")
    }
    if settings.importanceLabels == .gold && task == .classification, let i = inputs.firstIndex(where: { $0.label == nil }) {
        throw HeadAlignError.usage("--importance-labels gold: input \(i + 1) has no label")
    }
    guard c.numLabels > 0 || c.hasLMHead else {
        throw HeadAlignError.usage("Eq. 4 needs a loss: this encoder has neither a classifier head nor an LM head (add one, e.g. 'headalign convert --model DIR --labels 2')")
    }
    guard !inputs.isEmpty else { throw HeadAlignError.usage("no inputs to analyse") }
    let pairs = headPairs(layers: c.numHiddenLayers, heads: nh, scope: settings.scope)
    let sequences = analysisSequences(config: c, inputs, task: task, generate: settings.generate, greedy: model.greedy)
    var results: [InputAnalysis] = []
    for start in stride(from: 0, to: inputs.count, by: settings.batchSize) {
        let range = start..<min(inputs.count, start + settings.batchSize)
        let batch = Batch(range.map { sequences[$0].tokens })
        let pass = model.forward(batch)
        var labels: [Int] = []
        let objective: Objective
        switch task {
        case .classification:
            labels = range.enumerated().map { b, i in
                if settings.importanceLabels == .gold { return inputs[i].label! }
                let row = pass.output.data + b * c.numLabels
                var best = 0
                for k in 1..<c.numLabels where row[k] > row[best] { best = k }
                return best
            }
            objective = .classification(labels: labels)
        case .generation:  // position t predicts token t+1, for the generated tokens only
            objective = .nextToken(targets: range.map { i in
                generationTargets(sequences[i].tokens, promptLength: sequences[i].promptLength)
            })
        }
        var headGradients: [Tensor<S>]? = nil
        if settings.importance {
            let (_, dOut) = loss(pass, objective)
            headGradients = model.headGradients(pass, dOut)
        }
        for (b, i) in range.enumerated() {
            let (tokens, tp) = sequences[i]
            let t = tokens.count, row0 = batch.rowOffset[b]
            var views: [[Double]] = []
            var importance: [Double] = []
            var focusByHead: [Double] = []
            for l in 0..<c.numHiddenLayers {
                let H = pass.layers[l].headOutput, dH = headGradients?[l]
                for h in 0..<nh {
                    let map = pass.attention(layer: l, sequence: b, head: h).data  // [T, T]
                    views.append(flattenedView(map, tokens: t, view: settings.view, promptLength: tp))
                    focusByHead.append(columnFocus(map, tokens: t, family: c.family))
                    // Eq. 4, one input (the batch loss is a mean: scale its gradient back by B)
                    let g = dH.map { headImportance(H: H, dH: $0, rows: row0..<(row0 + t), head: h, heads: nh, headSize: hs) } ?? 0
                    importance.append(g * Double(batch.count))
                }
            }
            let cos = pairCosines(views, pairs: pairs)
            results.append(InputAnalysis(tokens: tokens, promptLength: tp, views: views, pairCosines: cos,
                                         maxsim: maxSimilarity(cos, pairs: pairs, headCount: heads),
                                         importance: importance, label: task == .classification ? labels[b] : nil,
                                         fracAbove: fractionAbove(cos, threshold: settings.threshold),
                                         p99: cos.isEmpty ? 0 : quantile(cos, 0.99), columnFocus: focusByHead))
        }
    }
    return results
}
