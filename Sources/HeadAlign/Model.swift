// Model.swift: the parameter layout (one flat buffer, named views, per-head slices) and the two
// model families, BERT (post-norm encoder) and Llama (pre-norm decoder), forward and backward
// over layers. Both share the attention block; they differ in norms, feed-forward and where the
// output is read. Checkpoint files are read and written elsewhere (names here are Hugging Face's).

// MARK: - Parameter layout

/// One named tensor inside the flat parameter buffer.
public struct ParameterTensor: Sendable, Equatable {
    public let name: String
    public let offset: Int
    public let shape: [Int]
    public var count: Int { shape.reduce(1, *) }
    public var range: Range<Int> { offset..<(offset + count) }
}

/// Names, shapes and offsets of every parameter, in a fixed order. Names are Hugging Face's
/// (`BertModel` without the `bert.` prefix, plus `classifier.*`; `LlamaForCausalLM`).
public struct ParameterLayout: Sendable {
    public private(set) var tensors: [ParameterTensor] = []
    public private(set) var total = 0
    private var index: [String: Int] = [:]

    @discardableResult
    mutating func add(_ name: String, _ shape: [Int]) -> ParameterTensor {
        precondition(index[name] == nil, "ParameterLayout: \(name) added twice")
        let t = ParameterTensor(name: name, offset: total, shape: shape)
        index[name] = tensors.count
        tensors.append(t)
        total += t.count
        return t
    }

    public subscript(name: String) -> ParameterTensor? { index[name].map { tensors[$0] } }

    /// The layout of a configuration.
    public init(config c: ModelConfig) {
        let d = c.hiddenSize, f = c.intermediateSize, hs = c.headSize
        let qDim = c.numAttentionHeads * hs, kvDim = c.numKeyValueHeads * hs
        switch c.family {
        case .bert:
            add("embeddings.word_embeddings.weight", [c.vocabSize, d])
            add("embeddings.position_embeddings.weight", [c.maxPositionEmbeddings, d])
            add("embeddings.token_type_embeddings.weight", [c.typeVocabSize, d])
            add("embeddings.LayerNorm.weight", [d])
            add("embeddings.LayerNorm.bias", [d])
            for l in 0..<c.numHiddenLayers {
                let p = "encoder.layer.\(l)."
                for (name, out) in [("query", qDim), ("key", qDim), ("value", qDim)] {
                    add(p + "attention.self.\(name).weight", [out, d])
                    add(p + "attention.self.\(name).bias", [out])
                }
                add(p + "attention.output.dense.weight", [d, qDim])
                add(p + "attention.output.dense.bias", [d])
                add(p + "attention.output.LayerNorm.weight", [d])
                add(p + "attention.output.LayerNorm.bias", [d])
                add(p + "intermediate.dense.weight", [f, d])
                add(p + "intermediate.dense.bias", [f])
                add(p + "output.dense.weight", [d, f])
                add(p + "output.dense.bias", [d])
                add(p + "output.LayerNorm.weight", [d])
                add(p + "output.LayerNorm.bias", [d])
            }
            add("pooler.dense.weight", [d, d])
            add("pooler.dense.bias", [d])
            if c.numLabels > 0 {
                add("classifier.weight", [c.numLabels, d])
                add("classifier.bias", [c.numLabels])
            }
        case .llama:
            add("model.embed_tokens.weight", [c.vocabSize, d])
            for l in 0..<c.numHiddenLayers {
                let p = "model.layers.\(l)."
                add(p + "self_attn.q_proj.weight", [qDim, d])
                add(p + "self_attn.k_proj.weight", [kvDim, d])
                add(p + "self_attn.v_proj.weight", [kvDim, d])
                add(p + "self_attn.o_proj.weight", [d, qDim])
                add(p + "mlp.gate_proj.weight", [f, d])
                add(p + "mlp.up_proj.weight", [f, d])
                add(p + "mlp.down_proj.weight", [d, f])
                add(p + "input_layernorm.weight", [d])
                add(p + "post_attention_layernorm.weight", [d])
            }
            add("model.norm.weight", [d])
            if c.numLabels > 0 {
                add("score.weight", [c.numLabels, d])
            } else if !c.tieWordEmbeddings {
                add("lm_head.weight", [c.vocabSize, d])
            }
        }
    }
}

// MARK: - Named views

/// `y = x W^T + b`; W `[O, I]`, b `[O]` (nil for Llama).
public struct Linear<S: Real> {
    public let weight: Tensor<S>
    public let bias: Tensor<S>?
    package init(weight: Tensor<S>, bias: Tensor<S>?) { self.weight = weight; self.bias = bias }
}

/// LayerNorm (weight and bias) or RMSNorm (weight only), `[D]`.
public struct Norm<S: Real> {
    public let weight: Tensor<S>
    public let bias: Tensor<S>?
    package init(weight: Tensor<S>, bias: Tensor<S>?) { self.weight = weight; self.bias = bias }
}

public struct AttentionWeights<S: Real> {
    public let query: Linear<S>  // [NH*HS, D]
    public let key: Linear<S>  // [NKV*HS, D]
    public let value: Linear<S>  // [NKV*HS, D]
    public let output: Linear<S>  // [D, NH*HS]
    package init(query: Linear<S>, key: Linear<S>, value: Linear<S>, output: Linear<S>) {
        self.query = query; self.key = key; self.value = value; self.output = output
    }
}

/// One layer. BERT: `norm1` is the post-attention LayerNorm, `norm2` the post-FFN one, `ffnUp`
/// the intermediate dense, `ffnDown` the output dense. Llama: `norm1`/`norm2` are the pre-norms
/// `input_layernorm`/`post_attention_layernorm`, and SwiGLU adds `ffnGate`.
public struct LayerWeights<S: Real> {
    public let attention: AttentionWeights<S>
    public let norm1: Norm<S>
    public let norm2: Norm<S>
    public let ffnUp: Linear<S>  // [F, D]
    public let ffnGate: Linear<S>?  // [F, D], Llama
    public let ffnDown: Linear<S>  // [D, F]
    package init(attention: AttentionWeights<S>, norm1: Norm<S>, norm2: Norm<S>, ffnUp: Linear<S>, ffnGate: Linear<S>?, ffnDown: Linear<S>) {
        self.attention = attention; self.norm1 = norm1; self.norm2 = norm2; self.ffnUp = ffnUp; self.ffnGate = ffnGate; self.ffnDown = ffnDown
    }
}

/// Views over a flat buffer laid out by `ParameterLayout`: the parameters, or their gradients.
public struct Weights<S: Real> {
    public let tokenEmbedding: Tensor<S>  // [V, D]
    public let positionEmbedding: Tensor<S>?  // [P, D], BERT
    public let tokenTypeEmbedding: Tensor<S>?  // [types, D], BERT
    public let embeddingNorm: Norm<S>?  // BERT
    public let layers: [LayerWeights<S>]
    public let finalNorm: Norm<S>?  // Llama model.norm
    public let pooler: Linear<S>?  // BERT [D, D]
    public let classifier: Linear<S>?  // [C, D]; BERT classifier, Llama score (no bias)
    public let lmHead: Tensor<S>?  // [V, D], Llama; nil when tied (the token embedding is used)

    public init(layout: ParameterLayout, config c: ModelConfig, buffer: Tensor<S>) {
        precondition(buffer.count == layout.total, "Weights: buffer of \(buffer.count) for a layout of \(layout.total)")
        func t(_ name: String) -> Tensor<S> {
            guard let p = layout[name] else { preconditionFailure("Weights: no tensor \(name) in the layout") }
            return Tensor(viewOf: buffer, offset: p.offset, shape: p.shape)
        }
        func opt(_ name: String) -> Tensor<S>? { layout[name] == nil ? nil : t(name) }
        func lin(_ name: String) -> Linear<S> { Linear(weight: t(name + ".weight"), bias: opt(name + ".bias")) }
        func norm(_ name: String) -> Norm<S> { Norm(weight: t(name + ".weight"), bias: opt(name + ".bias")) }
        switch c.family {
        case .bert:
            tokenEmbedding = t("embeddings.word_embeddings.weight")
            positionEmbedding = t("embeddings.position_embeddings.weight")
            tokenTypeEmbedding = t("embeddings.token_type_embeddings.weight")
            embeddingNorm = norm("embeddings.LayerNorm")
            layers = (0..<c.numHiddenLayers).map { l in
                let p = "encoder.layer.\(l)."
                return LayerWeights(
                    attention: AttentionWeights(query: lin(p + "attention.self.query"), key: lin(p + "attention.self.key"),
                                                value: lin(p + "attention.self.value"),
                                                output: lin(p + "attention.output.dense")),
                    norm1: norm(p + "attention.output.LayerNorm"), norm2: norm(p + "output.LayerNorm"),
                    ffnUp: lin(p + "intermediate.dense"), ffnGate: nil, ffnDown: lin(p + "output.dense"))
            }
            finalNorm = nil
            pooler = lin("pooler.dense")
            classifier = layout["classifier.weight"] == nil ? nil : lin("classifier")
            lmHead = nil
        case .llama:
            tokenEmbedding = t("model.embed_tokens.weight")
            positionEmbedding = nil
            tokenTypeEmbedding = nil
            embeddingNorm = nil
            layers = (0..<c.numHiddenLayers).map { l in
                let p = "model.layers.\(l)."
                return LayerWeights(
                    attention: AttentionWeights(query: lin(p + "self_attn.q_proj"), key: lin(p + "self_attn.k_proj"),
                                                value: lin(p + "self_attn.v_proj"), output: lin(p + "self_attn.o_proj")),
                    norm1: norm(p + "input_layernorm"), norm2: norm(p + "post_attention_layernorm"),
                    ffnUp: lin(p + "mlp.up_proj"), ffnGate: lin(p + "mlp.gate_proj"), ffnDown: lin(p + "mlp.down_proj"))
            }
            finalNorm = norm("model.norm")
            pooler = nil
            classifier = layout["score.weight"] == nil ? nil : lin("score")
            lmHead = opt("lm_head.weight")
        }
    }
}

// MARK: - Forward state

/// Options of one forward pass.
public struct ForwardOptions<S: Real> {
    /// A multiplier on each head's output H before the output projection, `[L][NH]`; nil = 1.
    /// Eq. 4's importance is the derivative of the loss with respect to these gates at 1.
    public var headGates: [[S]]?
    /// Adds `delta` to one entry of one layer's head-output buffer `[N, NH*HS]`: a probe for
    /// finite-difference checks of dL/dH.
    public var headOutputNudge: (layer: Int, index: Int, delta: S)?

    public init(headGates: [[S]]? = nil, headOutputNudge: (layer: Int, index: Int, delta: S)? = nil) {
        self.headGates = headGates
        self.headOutputNudge = headOutputNudge
    }
}

/// What one layer's forward keeps for the backward (and for the defense to read).
public final class LayerCache<S: Real> {
    public let input: Tensor<S>  // [N, D] layer input x
    let norm1Hat: Tensor<S>, norm1Rstd: Tensor<S>  // [N, D], [N]
    let attnIn: Tensor<S>  // [N, D] input of q/k/v: x (BERT) or RMSNorm(x) (Llama)
    public let q: Tensor<S>  // [N, NH*HS] after rotary
    public let k: Tensor<S>  // [N, NKV*HS] after rotary
    public let v: Tensor<S>  // [N, NKV*HS]
    /// Eq. 1's A for every sequence and head: `[sum_b NH*T_b*T_b]`.
    public let attention: Tensor<S>
    /// H = A V for every head, `[N, NH*HS]` (before gates and the output projection).
    public let headOutput: Tensor<S>
    let gatedHeadOutput: Tensor<S>  // [N, NH*HS] what the output projection reads
    let mid: Tensor<S>  // [N, D] BERT: LN1 output; Llama: x + attention
    let norm2Hat: Tensor<S>, norm2Rstd: Tensor<S>
    let ffnIn: Tensor<S>  // [N, D] input of the feed-forward: mid (BERT) or RMSNorm(mid) (Llama)
    let ffnPre: Tensor<S>  // [N, F] BERT: pre-GELU; Llama: gate pre-activation
    let ffnUpOut: Tensor<S>  // [N, F] Llama up projection (unused for BERT)
    package let ffnAct: Tensor<S>  // [N, F] GELU(pre) or silu(gate) * up
    public let output: Tensor<S>  // [N, D]

    package init(n: Int, d: Int, f: Int, qDim: Int, kvDim: Int, heads: Int, squares: Int, llama: Bool) {
        input = Tensor([n, d]); norm1Hat = Tensor([n, d]); norm1Rstd = Tensor([n])
        attnIn = llama ? Tensor([n, d]) : input
        q = Tensor([n, qDim]); k = Tensor([n, kvDim]); v = Tensor([n, kvDim])
        attention = Tensor([heads * squares]); headOutput = Tensor([n, qDim]); gatedHeadOutput = Tensor([n, qDim])
        mid = Tensor([n, d]); norm2Hat = Tensor([n, d]); norm2Rstd = Tensor([n])
        ffnIn = llama ? Tensor([n, d]) : mid
        ffnPre = Tensor([n, f]); ffnUpOut = llama ? Tensor([n, f]) : Tensor([0]); ffnAct = Tensor([n, f])
        output = Tensor([n, d])
    }
}

/// The result of a forward pass: the output and everything the backward needs.
public final class ForwardPass<S: Real> {
    public let batch: Batch
    public let layers: [LayerCache<S>]
    public let headGates: [[S]]?
    let embeddingSum: Tensor<S>  // [N, D] BERT: summed embeddings before LayerNorm
    let embeddingHat: Tensor<S>, embeddingRstd: Tensor<S>
    package let finalHat: Tensor<S>, finalRstd: Tensor<S>  // Llama final norm
    let finalHidden: Tensor<S>  // [N, D] Llama: model.norm output; BERT: last layer output
    let readRows: [Int]  // rows the classifier reads: [CLS] (BERT) or the last real token (Llama)
    let pooled: Tensor<S>  // [B, D] BERT: tanh(pooler); Llama classifier: gathered rows
    /// Classifier logits `[B, C]`, LM logits `[N, V]`, or (BERT without a classifier) the last
    /// hidden states `[N, D]`.
    public let output: Tensor<S>

    package init(batch: Batch, layers: [LayerCache<S>], headGates: [[S]]?, embeddingSum: Tensor<S>, embeddingHat: Tensor<S>,
         embeddingRstd: Tensor<S>, finalHat: Tensor<S>, finalRstd: Tensor<S>, finalHidden: Tensor<S>, readRows: [Int],
         pooled: Tensor<S>, output: Tensor<S>) {
        self.batch = batch; self.layers = layers; self.headGates = headGates; self.embeddingSum = embeddingSum
        self.embeddingHat = embeddingHat; self.embeddingRstd = embeddingRstd; self.finalHat = finalHat
        self.finalRstd = finalRstd; self.finalHidden = finalHidden; self.readRows = readRows; self.pooled = pooled
        self.output = output
    }

    /// Head h's attention probabilities for sequence b in layer l: `[T, T]` (a view).
    public func attention(layer l: Int, sequence b: Int, head h: Int) -> Tensor<S> {
        let t = batch.sequences[b].count, nh = layers[l].attention.count / batch.squareCount
        return Tensor(viewOf: layers[l].attention, offset: attentionBlockOffset(batch, b, h, heads: nh), shape: [t, t])
    }

    /// Head h's output H = A V for sequence b in layer l: `[T, HS]` (a copy; H is strided).
    public func headOutput(layer l: Int, sequence b: Int, head h: Int) -> Tensor<S> {
        let t = batch.sequences[b].count, ld = layers[l].headOutput.shape[1]
        let nh = layers[l].attention.count / batch.squareCount, hs = ld / nh
        let out = Tensor<S>([t, hs])
        for i in 0..<t {
            let src = layers[l].headOutput.data + (batch.rowOffset[b] + i) * ld + h * hs
            for j in 0..<hs { out.data[i * hs + j] = src[j] }
        }
        return out
    }
}

/// Which gradients a backward pass computes. Every scope gives bit for bit the values `.all`
/// gives where it computes them (BackwardScopeTests); the narrower ones skip the matrix products
/// whose results the caller discards.
public enum BackwardScope: Sendable, Equatable {
    /// Every parameter's gradient (training).
    case all
    /// dL/dH and the gate gradients only, no parameter gradients (Eq. 4 reads nothing else): the
    /// weight products are skipped, half of the backward's work.
    case headOutputs
    /// Eq. 7's case: `dOutput` is zero and `dAttention` is zero outside `layers`; only the query and
    /// key weights and biases of `layers` are wanted (what the alignment trains). Backpropagation
    /// starts at the highest of `layers` (above it every gradient is exactly zero), stops at the
    /// lowest, and skips every other weight product; `BackwardResult` is empty.
    case queriesAndKeys(ClosedRange<Int>)
}

/// What the backward returns besides the parameter gradients.
public struct BackwardResult<S: Real> {
    /// dL/dH per layer, `[N, NH*HS]` (the gradient at H = A V, before gates): Eq. 4 reads it.
    public let headOutputGradients: [Tensor<S>]
    /// dL/d(gate) per layer and head at the gates used in the forward, `[L][NH]`.
    public let gateGradients: [[S]]
}

// MARK: - Model

public final class Model<S: Real> {
    public let config: ModelConfig
    public let layout: ParameterLayout
    /// Every parameter, `[layout.total]`.
    public let params: Tensor<S>
    public let weights: Weights<S>
    public var backend: Backend
    let rotary: RotaryTable<S>?

    @_specialize(exported: true, where S == Float)
    @_specialize(exported: true, where S == Double)
    public init(config: ModelConfig, backend: Backend = .naive) {
        self.config = config
        self.layout = ParameterLayout(config: config)
        self.params = Tensor([layout.total])
        self.weights = Weights(layout: layout, config: config, buffer: params)
        self.backend = backend
        self.rotary = config.family == .llama
            ? RotaryTable(headSize: config.headSize, positions: config.maxPositionEmbeddings, theta: config.ropeTheta)
            : nil
    }

    /// A zeroed buffer for gradients, laid out like `params`.
    @_specialize(exported: true, where S == Float)
    @_specialize(exported: true, where S == Double)
    public func makeGradients() -> Tensor<S> { Tensor([layout.total]) }

    /// Views over a gradient buffer.
    @_specialize(exported: true, where S == Float)
    @_specialize(exported: true, where S == Double)
    public func gradientViews(_ grads: Tensor<S>) -> Weights<S> { Weights(layout: layout, config: config, buffer: grads) }

    /// Hugging Face's initialisation: weights and embeddings N(0, initializer_range), biases 0,
    /// norm weights 1. Deterministic in the seed; tensors are filled in layout order.
    @_specialize(exported: true, where S == Float)
    @_specialize(exported: true, where S == Double)
    public func initialize(seed: UInt64) {
        var rng = SeededGenerator(seed: seed)
        let std = config.initializerRange
        for p in layout.tensors {
            let isNormWeight = p.name.hasSuffix("LayerNorm.weight") || p.name.hasSuffix("norm.weight")
            for i in p.range {
                if isNormWeight { params.data[i] = 1 }
                else if p.shape.count == 1 { params.data[i] = 0 }
                else { params.data[i] = S(std * rng.normal()) }
            }
        }
    }

    @_specialize(exported: true, where S == Float)
    @_specialize(exported: true, where S == Double)
    public func tensor(_ name: String) -> Tensor<S>? {
        layout[name].map { Tensor(viewOf: params, offset: $0.offset, shape: $0.shape) }
    }

    // MARK: Forward

    /// Runs the model on a batch. Token ids and lengths are the caller's to check
    /// (`validate(_:)` throws a readable error for bad ones).
    @_specialize(exported: true, where S == Float)
    @_specialize(exported: true, where S == Double)
    public func forward(_ batch: Batch, options: ForwardOptions<S> = ForwardOptions()) -> ForwardPass<S> {
        let c = config, w = weights, n = batch.tokenCount, d = c.hiddenSize
        let shape = c.attentionShape, qDim = shape.heads * shape.headSize, kvDim = shape.kvHeads * shape.headSize
        let llama = c.family == .llama
        precondition(batch.sequences.allSatisfy { $0.count <= c.maxPositionEmbeddings },
                     "Model.forward: a sequence is longer than max_position_embeddings \(c.maxPositionEmbeddings)")

        // Embeddings -> x0 [N, D]
        let ids = batch.allTokens
        let embeddingSum = Tensor<S>([n, d])
        embeddingForward(embeddingSum, w.tokenEmbedding, ids)
        var x = embeddingSum
        let embeddingHat = Tensor<S>(llama ? [0] : [n, d]), embeddingRstd = Tensor<S>(llama ? [0] : [n])
        if !llama {
            let positions = batch.sequences.flatMap { Array(0..<$0.count) }
            embeddingForward(embeddingSum, w.positionEmbedding!, positions)
            let types = batch.sequences.flatMap { $0.tokenTypes ?? [Int](repeating: 0, count: $0.count) }
            embeddingForward(embeddingSum, w.tokenTypeEmbedding!, types)
            x = Tensor([n, d])
            let norm = w.embeddingNorm!
            layerNormForward(x, embeddingHat, embeddingRstd, embeddingSum, norm.weight, norm.bias!, eps: c.layerNormEps)
        }

        var caches: [LayerCache<S>] = []
        for (l, lw) in w.layers.enumerated() {
            let cache = LayerCache<S>(n: n, d: d, f: c.intermediateSize, qDim: qDim, kvDim: kvDim,
                                      heads: shape.heads, squares: batch.squareCount, llama: llama)
            cache.input.data.update(from: x.data, count: n * d)
            layerForward(cache, lw, layer: l, batch: batch, options: options)
            caches.append(cache)
            x = cache.output
        }

        // Output head
        let finalHat = Tensor<S>(llama ? [n, d] : [0]), finalRstd = Tensor<S>(llama ? [n] : [0])
        var finalHidden = x
        if llama {
            finalHidden = Tensor([n, d])
            rmsNormForward(finalHidden, finalHat, finalRstd, x, w.finalNorm!.weight, eps: c.rmsNormEps)
        }
        let readRows = batch.sequences.indices.map { b in
            batch.rowOffset[b] + (llama ? batch.sequences[b].lastRealIndex : 0)
        }
        var pooled = Tensor<S>([0])
        let output: Tensor<S>
        if let classifier = w.classifier {
            let gathered = gatherRows(finalHidden, readRows)  // [B, D]
            if let pooler = w.pooler {  // BERT: tanh(W h_[CLS] + b)
                let pre = Tensor<S>([batch.count, d])
                linearForward(pre, gathered, pooler.weight, pooler.bias, backend)
                pooled = Tensor([batch.count, d])
                tanhForward(pooled, pre)
            } else {
                pooled = gathered
            }
            output = Tensor([batch.count, c.numLabels])
            linearForward(output, pooled, classifier.weight, classifier.bias, backend)
        } else if llama {
            output = Tensor([n, c.vocabSize])
            linearForward(output, finalHidden, w.lmHead ?? w.tokenEmbedding, nil, backend)
        } else {
            output = finalHidden
        }
        return ForwardPass(batch: batch, layers: caches, headGates: options.headGates, embeddingSum: embeddingSum,
                           embeddingHat: embeddingHat, embeddingRstd: embeddingRstd, finalHat: finalHat,
                           finalRstd: finalRstd, finalHidden: finalHidden, readRows: readRows, pooled: pooled,
                           output: output)
    }

    /// One transformer layer. BERT (post-norm): `mid = LN1(x + Attn(x))`, `out = LN2(mid + FFN(mid))`.
    /// Llama (pre-norm): `mid = x + Attn(RMS1(x))`, `out = mid + SwiGLU(RMS2(mid))`.
    @_specialize(exported: true, where S == Float)
    @_specialize(exported: true, where S == Double)
    package func layerForward(_ cache: LayerCache<S>, _ lw: LayerWeights<S>, layer l: Int, batch: Batch,
                      options: ForwardOptions<S>) {
        let c = config, n = batch.tokenCount, d = c.hiddenSize
        let llama = c.family == .llama, x = cache.input
        if llama {
            rmsNormForward(cache.attnIn, cache.norm1Hat, cache.norm1Rstd, x, lw.norm1.weight, eps: c.rmsNormEps)
        }
        attentionBlockForward(cache, lw.attention, layer: l, batch: batch, options: options)
        let proj = Tensor<S>([n, d])  // attention output projection
        linearForward(proj, cache.gatedHeadOutput, lw.attention.output.weight, lw.attention.output.bias, backend)
        let sum = Tensor<S>([n, d])
        for i in 0..<(n * d) { sum.data[i] = x.data[i] + proj.data[i] }
        if llama {
            cache.mid.data.update(from: sum.data, count: n * d)
            rmsNormForward(cache.ffnIn, cache.norm2Hat, cache.norm2Rstd, cache.mid, lw.norm2.weight, eps: c.rmsNormEps)
            linearForward(cache.ffnPre, cache.ffnIn, lw.ffnGate!.weight, nil, backend)
            linearForward(cache.ffnUpOut, cache.ffnIn, lw.ffnUp.weight, nil, backend)
            swigluForward(cache.ffnAct, cache.ffnPre, cache.ffnUpOut)
            linearForward(proj, cache.ffnAct, lw.ffnDown.weight, nil, backend)
            for i in 0..<(n * d) { cache.output.data[i] = cache.mid.data[i] + proj.data[i] }
        } else {
            layerNormForward(cache.mid, cache.norm1Hat, cache.norm1Rstd, sum, lw.norm1.weight, lw.norm1.bias!,
                             eps: c.layerNormEps)
            linearForward(cache.ffnPre, cache.mid, lw.ffnUp.weight, lw.ffnUp.bias, backend)
            geluForward(cache.ffnAct, cache.ffnPre)
            linearForward(proj, cache.ffnAct, lw.ffnDown.weight, lw.ffnDown.bias, backend)
            for i in 0..<(n * d) { sum.data[i] = cache.mid.data[i] + proj.data[i] }
            layerNormForward(cache.output, cache.norm2Hat, cache.norm2Rstd, sum, lw.norm2.weight, lw.norm2.bias!,
                             eps: c.layerNormEps)
        }
    }

    /// Projections, rotary (Llama), Eq. 1 attention, gates: fills q, k, v, attention, headOutput
    /// and gatedHeadOutput of the cache from `cache.attnIn`.
    func attentionBlockForward(_ cache: LayerCache<S>, _ aw: AttentionWeights<S>, layer l: Int, batch: Batch,
                               options: ForwardOptions<S>) {
        let shape = config.attentionShape
        linearForward(cache.q, cache.attnIn, aw.query.weight, aw.query.bias, backend)
        linearForward(cache.k, cache.attnIn, aw.key.weight, aw.key.bias, backend)
        linearForward(cache.v, cache.attnIn, aw.value.weight, aw.value.bias, backend)
        if let rotary {
            for (b, seq) in batch.sequences.enumerated() {
                let r = batch.rowOffset[b]
                ropeApply(cache.q.data + r * cache.q.shape[1], rows: seq.count, heads: shape.heads, startPosition: 0,
                          table: rotary, interleaved: config.ropeInterleaved, inverse: false)
                ropeApply(cache.k.data + r * cache.k.shape[1], rows: seq.count, heads: shape.kvHeads, startPosition: 0,
                          table: rotary, interleaved: config.ropeInterleaved, inverse: false)
            }
        }
        attentionForward(headOut: cache.headOutput, att: cache.attention, q: cache.q, k: cache.k, v: cache.v,
                         batch: batch, shape: shape, backend: backend)
        if let nudge = options.headOutputNudge, nudge.layer == l {
            cache.headOutput.data[nudge.index] += nudge.delta
        }
        cache.gatedHeadOutput.data.update(from: cache.headOutput.data, count: cache.headOutput.count)
        if let gates = options.headGates?[l] {
            applyGates(cache.gatedHeadOutput, gates, headSize: shape.headSize)
        }
    }

    // MARK: Backward

    /// Backpropagates `dOutput` (same shape as `pass.output`) and, optionally, an extra gradient
    /// at each layer's attention probabilities (`dAttention[l]`, laid out like
    /// `pass.layers[l].attention`; Eq. 7). Parameter gradients are *accumulated* into `grads`;
    /// `scope` says which are wanted (`BackwardScope`).
    @discardableResult
    @_specialize(exported: true, where S == Float)
    @_specialize(exported: true, where S == Double)
    public func backward(_ pass: ForwardPass<S>, dOutput: Tensor<S>, dAttention: [Tensor<S>?]? = nil,
                         into grads: Tensor<S>, scope: BackwardScope = .all) -> BackwardResult<S> {
        let c = config, w = weights, g = gradientViews(grads), batch = pass.batch
        let n = batch.tokenCount, d = c.hiddenSize, llama = c.family == .llama
        precondition(dOutput.shape == pass.output.shape, "Model.backward: dOutput \(dOutput.shape) vs output \(pass.output.shape)")
        precondition(dAttention == nil || dAttention!.count == c.numHiddenLayers, "Model.backward: dAttention needs one entry per layer")
        if case .queriesAndKeys(let layers) = scope {
            return backwardQueriesAndKeys(pass, dAttention: dAttention, layers: layers, grads: g)
        }
        // .headOutputs: every linear layer's backward gives dL/d(input) only
        let linearStep: LinearBackwardStep<S> = scope == .all ? { HeadAlign.linearBackward($0, $1, $2, $3, $4, $5, $6) }
            : { dx, _, _, dOut, x, W, backend in HeadAlign.linearBackward(dx, nil, nil, dOut, x, W, backend) }

        // Output head -> dFinal [N, D]
        let dFinal = Tensor<S>([n, d])
        if let classifier = w.classifier {
            let dPooled = Tensor<S>([batch.count, d])
            linearBackward(dPooled, g.classifier!.weight, g.classifier!.bias, dOutput, pass.pooled, classifier.weight, backend)
            var dGathered = dPooled
            if let pooler = w.pooler {
                let dPre = Tensor<S>([batch.count, d])
                tanhBackward(dPre, dPooled, pass.pooled)
                dGathered = Tensor([batch.count, d])
                linearBackward(dGathered, g.pooler!.weight, g.pooler!.bias, dPre,
                               gatherRows(pass.finalHidden, pass.readRows), pooler.weight, backend)
            }
            scatterAddRows(dFinal, dGathered, pass.readRows)
        } else if llama {
            linearStep(dFinal, g.lmHead ?? g.tokenEmbedding, nil, dOutput, pass.finalHidden, w.lmHead ?? w.tokenEmbedding, backend)
        } else {
            dFinal.add(dOutput)
        }
        var dx = dFinal  // dL/d(last layer output)
        if llama {
            dx = Tensor([n, d])
            rmsNormBackward(dx, g.finalNorm!.weight, dFinal, pass.finalHat, pass.finalRstd, w.finalNorm!.weight)
        }

        var dHeads = [Tensor<S>](), gateGrads = [[S]]()
        for l in stride(from: c.numHiddenLayers - 1, through: 0, by: -1) {
            let dInput = Tensor<S>([n, d])
            let (dH, dGate) = layerBackward(dInput, dOut: dx, pass.layers[l], w.layers[l], g.layers[l], layer: l,
                                            batch: batch, gates: pass.headGates?[l], dAttention: dAttention?[l], linearBackward: linearStep)
            dHeads.append(dH)
            gateGrads.append(dGate)
            dx = dInput
        }
        guard scope == .all else { return BackwardResult(headOutputGradients: dHeads.reversed(), gateGradients: gateGrads.reversed()) }

        // Embeddings
        let ids = batch.allTokens
        if llama {
            embeddingBackward(g.tokenEmbedding, dx, ids)
        } else {
            let dSum = Tensor<S>([n, d])
            let norm = w.embeddingNorm!, gnorm = g.embeddingNorm!
            layerNormBackward(dSum, gnorm.weight, gnorm.bias!, dx, pass.embeddingHat, pass.embeddingRstd, norm.weight)
            embeddingBackward(g.tokenEmbedding, dSum, ids)
            embeddingBackward(g.positionEmbedding!, dSum, batch.sequences.flatMap { Array(0..<$0.count) })
            embeddingBackward(g.tokenTypeEmbedding!, dSum,
                              batch.sequences.flatMap { $0.tokenTypes ?? [Int](repeating: 0, count: $0.count) })
        }
        return BackwardResult(headOutputGradients: dHeads.reversed(), gateGradients: gateGrads.reversed())
    }

    /// `BackwardScope.queriesAndKeys`: from the highest of `layers` down to the lowest, with dL/d(output)
    /// zero, only the query and key weight products of those layers; the lowest layer's dL/d(input)
    /// is not formed (nothing below it is wanted).
    private func backwardQueriesAndKeys(_ pass: ForwardPass<S>, dAttention: [Tensor<S>?]?, layers: ClosedRange<Int>,
                                        grads g: Weights<S>) -> BackwardResult<S> {
        let n = pass.batch.tokenCount, d = config.hiddenSize
        precondition(layers.lowerBound >= 0 && layers.upperBound < config.numHiddenLayers, "Model.backward: layers \(layers)")
        var dOut = Tensor<S>([n, d])  // zero above the highest layer: no loss reads the output
        for l in layers.reversed() {
            let a = weights.layers[l].attention, lowest = l == layers.lowerBound
            let step: LinearBackwardStep<S> = { dx, dW, db, dY, x, W, backend in
                let queryOrKey = W === a.query.weight || W === a.key.weight
                let projection = queryOrKey || W === a.value.weight  // reads the layer's input
                switch (queryOrKey, lowest && projection) {
                case (true, _): HeadAlign.linearBackward(lowest ? nil : dx, dW, db, dY, x, W, backend)
                case (false, true): break  // the value projection of the lowest layer: nothing below is wanted
                case (false, false): HeadAlign.linearBackward(dx, nil, nil, dY, x, W, backend)
                }
            }
            let dInput = Tensor<S>([n, d])
            _ = layerBackward(dInput, dOut: dOut, pass.layers[l], weights.layers[l], g.layers[l], layer: l, batch: pass.batch,
                              gates: pass.headGates?[l], dAttention: dAttention?[l], linearBackward: step)
            dOut = dInput
        }
        return BackwardResult(headOutputGradients: [], gateGradients: [])
    }

    /// Backward of one layer: accumulates parameter gradients into `gw`, writes dL/d(input) into
    /// `dInput`, returns dL/dH `[N, NH*HS]` and the gate gradients `[NH]`. Every linear layer's
    /// backward goes through `linearBackward` (see `LinearBackwardStep`: the lab's seam).
    @_specialize(exported: true, where S == Float)
    @_specialize(exported: true, where S == Double)
    package func layerBackward(_ dInput: Tensor<S>, dOut: Tensor<S>, _ cache: LayerCache<S>, _ lw: LayerWeights<S>,
                               _ gw: LayerWeights<S>, layer l: Int, batch: Batch, gates: [S]?, dAttention: Tensor<S>?,
                               linearBackward: LinearBackwardStep<S> = { HeadAlign.linearBackward($0, $1, $2, $3, $4, $5, $6) }) -> (Tensor<S>, [S]) {
        let c = config, n = batch.tokenCount, d = c.hiddenSize, f = c.intermediateSize
        let llama = c.family == .llama
        let dMid = Tensor<S>([n, d])  // dL/d(mid)
        let dProj: Tensor<S>  // dL/d(attention output projection)
        let dAct = Tensor<S>([n, f]), dPre = Tensor<S>([n, f])
        if llama {
            // out = mid + down(swiglu(gate(ffnIn), up(ffnIn))), ffnIn = RMS2(mid)
            dMid.add(dOut)
            linearBackward(dAct, gw.ffnDown.weight, nil, dOut, cache.ffnAct, lw.ffnDown.weight, backend)
            let dUp = Tensor<S>([n, f])
            swigluBackward(dPre, dUp, dAct, cache.ffnPre, cache.ffnUpOut)
            let dFfnIn = Tensor<S>([n, d])
            linearBackward(dFfnIn, gw.ffnGate!.weight, nil, dPre, cache.ffnIn, lw.ffnGate!.weight, backend)
            linearBackward(dFfnIn, gw.ffnUp.weight, nil, dUp, cache.ffnIn, lw.ffnUp.weight, backend)
            rmsNormBackward(dMid, gw.norm2.weight, dFfnIn, cache.norm2Hat, cache.norm2Rstd, lw.norm2.weight)
            // mid = x + proj  ->  dx = dMid, dproj = dMid
            dInput.add(dMid)
            dProj = dMid
        } else {
            // out = LN2(mid + down(gelu(up(mid))))
            let dSum2 = Tensor<S>([n, d])
            layerNormBackward(dSum2, gw.norm2.weight, gw.norm2.bias!, dOut, cache.norm2Hat, cache.norm2Rstd, lw.norm2.weight)
            dMid.add(dSum2)
            linearBackward(dAct, gw.ffnDown.weight, gw.ffnDown.bias, dSum2, cache.ffnAct, lw.ffnDown.weight, backend)
            geluBackward(dPre, dAct, cache.ffnPre)
            linearBackward(dMid, gw.ffnUp.weight, gw.ffnUp.bias, dPre, cache.mid, lw.ffnUp.weight, backend)
            // mid = LN1(x + proj)  ->  dx = dproj = dSum1
            let dSum1 = Tensor<S>([n, d])
            layerNormBackward(dSum1, gw.norm1.weight, gw.norm1.bias!, dMid, cache.norm1Hat, cache.norm1Rstd, lw.norm1.weight)
            dInput.add(dSum1)
            dProj = dSum1
        }

        // proj = gatedH Wo^T + bo
        let shape = c.attentionShape, qDim = shape.heads * shape.headSize, kvDim = shape.kvHeads * shape.headSize
        let dGated = Tensor<S>([n, qDim])
        linearBackward(dGated, gw.attention.output.weight, gw.attention.output.bias, dProj, cache.gatedHeadOutput,
                       lw.attention.output.weight, backend)
        // gatedH = gate * H  ->  dH = gate * dGated, dgate = <H, dGated>
        let dH = dGated.copy()
        var dGate = [S](repeating: 0, count: shape.heads)
        for r in 0..<n {
            for h in 0..<shape.heads {
                let o = r * qDim + h * shape.headSize
                var s: S = 0
                for j in 0..<shape.headSize { s += cache.headOutput.data[o + j] * dGated.data[o + j] }
                dGate[h] += s
            }
        }
        if let gates { applyGates(dH, gates, headSize: shape.headSize) }

        // Eq. 1 backward, then the projections
        let dq = Tensor<S>([n, qDim]), dk = Tensor<S>([n, kvDim]), dv = Tensor<S>([n, kvDim])
        attentionBackward(dq: dq, dk: dk, dv: dv, dHeadOut: dH, dAttExtra: dAttention, att: cache.attention,
                          q: cache.q, k: cache.k, v: cache.v, batch: batch, shape: shape, backend: backend)
        if let rotary {
            for (b, seq) in batch.sequences.enumerated() {
                let r = batch.rowOffset[b]
                ropeApply(dq.data + r * qDim, rows: seq.count, heads: shape.heads, startPosition: 0, table: rotary,
                          interleaved: config.ropeInterleaved, inverse: true)
                ropeApply(dk.data + r * kvDim, rows: seq.count, heads: shape.kvHeads, startPosition: 0, table: rotary,
                          interleaved: config.ropeInterleaved, inverse: true)
            }
        }
        let a = lw.attention, ga = gw.attention
        let dAttnIn = llama ? Tensor<S>([n, d]) : dInput  // BERT: q/k/v read x itself
        linearBackward(dAttnIn, ga.query.weight, ga.query.bias, dq, cache.attnIn, a.query.weight, backend)
        linearBackward(dAttnIn, ga.key.weight, ga.key.bias, dk, cache.attnIn, a.key.weight, backend)
        linearBackward(dAttnIn, ga.value.weight, ga.value.bias, dv, cache.attnIn, a.value.weight, backend)
        if llama {
            rmsNormBackward(dInput, gw.norm1.weight, dAttnIn, cache.norm1Hat, cache.norm1Rstd, lw.norm1.weight)
        }
        return (dH, dGate)
    }
}

// MARK: - The seam for a model run one layer at a time

/// How `layerBackward` runs one linear layer's backward: `(dx, dW, db, dOut, x, W, backend)`,
/// as `linearBackward` in Ops.swift. This file always passes `linearBackward` itself. A 7B Llama
/// run one layer at a time from its checkpoint (outside this library) passes a step that skips
/// the weight GEMMs (`linearBackwardInput`) and, for Eq. 7, reads dL/dq and dL/dk where the query
/// and key projections' backward receives them. Together with `layerForward`, `cachedLayerStep`
/// and the initialisers of the layer caches and weight views (all `package`), this is the whole
/// of what such code reaches inside the model.
public typealias LinearBackwardStep<S: Real> = (_ dx: Tensor<S>, _ dW: Tensor<S>, _ db: Tensor<S>?, _ dOut: Tensor<S>,
                                                _ x: Tensor<S>, _ W: Tensor<S>, _ backend: Backend) -> Void

// MARK: - Small helpers

/// `out[i] = x[rows[i]]`: `[rows.count, D]`.
func gatherRows<S: Real>(_ x: Tensor<S>, _ rows: [Int]) -> Tensor<S> {
    let d = x.shape[1]
    let out = Tensor<S>([rows.count, d])
    for (i, r) in rows.enumerated() { (out.data + i * d).update(from: x.data + r * d, count: d) }
    return out
}

/// `dx[rows[i]] += dout[i]`.
func scatterAddRows<S: Real>(_ dx: Tensor<S>, _ dout: Tensor<S>, _ rows: [Int]) {
    let d = dx.shape[1]
    for (i, r) in rows.enumerated() {
        for j in 0..<d { dx.data[r * d + j] += dout.data[i * d + j] }
    }
}

/// Multiplies head h's columns of `x` `[N, NH*HS]` by `gates[h]`.
func applyGates<S: Real>(_ x: Tensor<S>, _ gates: [S], headSize: Int) {
    let ld = x.shape[1], n = x.shape[0]
    precondition(gates.count * headSize == ld, "applyGates: \(gates.count) gates for \(ld) columns")
    for r in 0..<n {
        for (h, gate) in gates.enumerated() {
            let row = x.data + r * ld + h * headSize
            for j in 0..<headSize { row[j] *= gate }
        }
    }
}
