// Streaming.swift: a Llama too large to hold in Float32 (7B: 27 GB), run from its memory-mapped
// half-precision checkpoint one layer at a time. One layer's weights are resident in Float32 (a
// one-layer `Model`, the "shell", which also holds the embeddings, the final norm and the LM
// head); before a layer runs, its tensors are converted from the mapping into the shell's layer
// slot. The layers' math is the resident model's own (`layerForward`, `layerBackward`,
// `cachedLayerStep`), so the streamed numbers are the in-memory ones (tested to 1e-5 in f32).
// The checkpoint stays mapped for the whole run: the page cache keeps it between passes.

import HeadAlign
import Foundation

public final class StreamedLlama {
    public let config: ModelConfig  // the whole model's
    public let shell: Model<Float>  // the resident layer (slot 0), embeddings, final norm, LM head
    let files: [SafetensorsFile]
    let location: [String: (file: Int, entry: SafetensorsEntry)]  // checkpoint name -> where it is
    public private(set) var resident: Int? = nil  // the layer whose weights the shell holds
    /// Time spent converting weights, and how many layer loads it took.
    public private(set) var conversionSeconds = 0.0, layerLoads = 0

    /// Opens and checks a model directory before any long work: every tensor the configuration
    /// needs is in some shard with the right shape and a dtype the path can stream.
    public init(directory dir: String, backend: Backend) throws {
        config = try ModelConfig.load(contentsOf: URL(fileURLWithPath: dir + "/config.json"))
        guard config.family == .llama, config.hasLMHead else {
            throw HeadAlignError.usage("\(dir): streaming runs Llama models with an LM head (this is a \(config.architectures.joined()))")
        }
        files = try safetensorsFiles(in: dir).map { try SafetensorsFile(path: $0) }
        var where_: [String: (Int, SafetensorsEntry)] = [:]
        for (i, f) in files.enumerated() {
            for e in f.header.entries {
                guard where_[e.name] == nil else { throw HeadAlignError.badInput("\(f.path): tensor '\(e.name)' is also in another shard") }
                guard [.BF16, .F16, .F32].contains(e.dtype) else {
                    throw HeadAlignError.badInput("\(f.path): tensor '\(e.name)' is \(e.dtype); the streamed path reads BF16, F16 or F32")
                }
                where_[e.name] = (i, e)
            }
        }
        location = where_.mapValues { (file: $0.0, entry: $0.1) }
        // every tensor the index names must be in the shard it names
        let index = dir + "/model.safetensors.index.json"
        if let data = FileManager.default.contents(atPath: index),
           case .object(let map)? = (try? data.withUnsafeBytes { try JSONValue.parse($0.bindMemory(to: UInt8.self)) })?["weight_map"] {
            for (name, file) in map {
                guard let at = where_[name], case .string(let f) = file, files[at.0].path.hasSuffix("/" + f) else {
                    throw HeadAlignError.badInput("\(index): names tensor '\(name)', which its shard does not hold")
                }
            }
        }
        let full = ParameterLayout(config: config)
        for p in full.tensors {
            let name = checkpointName(forLayoutName: p.name, config: config)
            guard let at = location[name] else { throw HeadAlignError.badInput("\(dir): no shard holds tensor '\(name)'") }
            guard at.entry.shape == p.shape else {
                throw HeadAlignError.badInput("\(files[at.file].path): tensor '\(name)' has shape \(at.entry.shape), the config implies \(p.shape)")
            }
        }
        var one = config
        one.numHiddenLayers = 1
        shell = Model<Float>(config: one, backend: backend)
        for p in shell.layout.tensors where !p.name.hasPrefix("model.layers.") { try fill(p, from: p.name) }
    }

    /// Converts checkpoint tensor `name` into the shell's tensor `p`.
    /// Large tensors are converted in two halves at once (the machine's two cores share the work).
    func fill(_ p: ParameterTensor, from name: String) throws {
        let at = location[checkpointName(forLayoutName: name, config: config)]!
        let raw = files[at.file].bytes(of: at.entry), what = "\(files[at.file].path): tensor '\(at.entry.name)'"
        let out = shell.params.data + p.offset, bytes = at.entry.dtype.bits / 8
        let parts = p.count >= 1 << 20 ? 2 : 1, size = (p.count + parts - 1) / parts
        let failure = LockedError(), shared = SharedPointers(raw: raw, out: out)  // disjoint halves
        DispatchQueue.concurrentPerform(iterations: parts) { k in
            let lo = k * size, n = min(p.count, lo + size) - lo
            do {
                try convert(UnsafeRawBufferPointer(rebasing: shared.raw[(lo * bytes)..<((lo + n) * bytes)]), dtype: at.entry.dtype,
                            into: shared.out + lo, count: n, what: what)
            } catch { failure.set(error) }
        }
        if let e = failure.error { throw e }
    }

    /// Makes layer `l` the resident one: its tensors converted into the shell's slot 0.
    public func load(layer l: Int) {
        precondition(l >= 0 && l < config.numHiddenLayers, "StreamedLlama.load: layer \(l) of \(config.numHiddenLayers)")
        guard resident != l else { return }
        let start = monotonicSeconds()
        for p in shell.layout.tensors where p.name.hasPrefix("model.layers.0.") {
            // checked in init: the tensor exists with this shape and a streamable dtype
            try! fill(p, from: "model.layers.\(l)." + p.name.dropFirst("model.layers.0.".count))
        }
        // rows the alignment has moved replace the checkpoint's
        for slice in slices where slice.layer == l {
            (shell.params.data + shell.layout[slice.shellName]!.offset + slice.rows.lowerBound * config.hiddenSize)
                .update(from: slice.values.data, count: slice.values.count)
        }
        resident = l
        layerLoads += 1
        conversionSeconds += monotonicSeconds() - start
    }

    /// Every layer in turn: `body(l)` runs with layer l resident.
    func eachLayer(reversed: Bool = false, _ body: (Int) -> Void) {
        let order = Array(0..<config.numHiddenLayers)
        for l in reversed ? order.reversed() : order {
            load(layer: l)
            body(l)
        }
    }

    // MARK: Forward with every layer's cache (attention included)

    /// The forward pass of `Model.forward` for a decoder, streamed: the same `ForwardPass`, with
    /// each layer's cache (Eq. 1's A, H, and what the backward needs) and LM logits `[N, V]`.
    public func forward(_ batch: Batch) -> ForwardPass<Float> {
        let c = config, n = batch.tokenCount, d = c.hiddenSize, w = shell.weights
        let shape = c.attentionShape, qDim = shape.heads * shape.headSize, kvDim = shape.kvHeads * shape.headSize
        var x = Tensor<Float>([n, d])
        embeddingForward(x, w.tokenEmbedding, batch.allTokens)
        let embeddingSum = x
        var caches: [LayerCache<Float>] = []
        eachLayer { _ in
            let cache = LayerCache<Float>(n: n, d: d, f: c.intermediateSize, qDim: qDim, kvDim: kvDim, heads: shape.heads,
                                          squares: batch.squareCount, llama: true)
            cache.input.data.update(from: x.data, count: n * d)
            shell.layerForward(cache, w.layers[0], layer: 0, batch: batch, options: ForwardOptions())
            caches.append(cache)
            x = cache.output
        }
        let finalHidden = Tensor<Float>([n, d]), finalHat = Tensor<Float>([n, d]), finalRstd = Tensor<Float>([n])
        rmsNormForward(finalHidden, finalHat, finalRstd, x, w.finalNorm!.weight, eps: c.rmsNormEps)
        let output = Tensor<Float>([n, c.vocabSize])
        linearForward(output, finalHidden, w.lmHead ?? w.tokenEmbedding, nil, shell.backend)
        return ForwardPass(batch: batch, layers: caches, headGates: nil, embeddingSum: embeddingSum, embeddingHat: Tensor([0]),
                           embeddingRstd: Tensor([0]), finalHat: finalHat, finalRstd: finalRstd, finalHidden: finalHidden,
                           readRows: batch.sequences.indices.map { batch.rowOffset[$0] + batch.sequences[$0].lastRealIndex },
                           pooled: Tensor([0]), output: output)
    }

    // MARK: Activations-only backward (Eq. 4)

    /// A linear layer's backward that computes dL/dx only (the weight GEMMs skipped): the streamed
    /// backward keeps no weight gradients, Eq. 4 and Eq. 7 need none of them.
    let inputGradientOnly: LinearBackwardStep<Float> = { dx, _, _, dout, _, w, backend in linearBackwardInput(dx, dout, w, backend) }

    /// The gradient "weights" of a backward that keeps no weight gradients: scratch for the norms'
    /// (a few numbers), empty tensors for the linear layers, which `inputGradientOnly` never touches.
    func inputGradientsOnly() -> LayerWeights<Float> {
        let none = Linear<Float>(weight: Tensor([0]), bias: nil), d = config.hiddenSize
        return LayerWeights(attention: AttentionWeights(query: none, key: none, value: none, output: none),
                            norm1: Norm(weight: Tensor([d]), bias: nil), norm2: Norm(weight: Tensor([d]), bias: nil),
                            ffnUp: none, ffnGate: none, ffnDown: none)
    }

    /// dL/dH of every layer for `dOutput` at the logits, streamed from the last layer down. Only
    /// the activations' gradients are computed (no weight gradients): Eq. 4 needs nothing else.
    public func headOutputGradients(_ pass: ForwardPass<Float>, dOutput: Tensor<Float>) -> [Tensor<Float>] {
        let c = config, n = pass.batch.tokenCount, d = c.hiddenSize, w = shell.weights
        let dFinal = Tensor<Float>([n, d])
        linearBackwardInput(dFinal, dOutput, w.lmHead ?? w.tokenEmbedding, shell.backend)
        let scratch = inputGradientsOnly()
        var dx = Tensor<Float>([n, d])
        rmsNormBackward(dx, Tensor<Float>([d]), dFinal, pass.finalHat, pass.finalRstd, w.finalNorm!.weight)
        var dHeads: [Tensor<Float>] = []
        eachLayer(reversed: true) { l in
            let dInput = Tensor<Float>([n, d])
            let (dH, _) = shell.layerBackward(dInput, dOut: dx, pass.layers[l], w.layers[0], scratch, layer: 0, batch: pass.batch,
                                              gates: nil, dAttention: nil, linearBackward: inputGradientOnly)
            dHeads.append(dH)
            dx = dInput
        }
        return dHeads.reversed()
    }

    // MARK: Greedy generation with a key/value cache

    /// Greedy continuation as `generateGreedy` (one prompt of `generate(prompts:maxNew:)`).
    public func generate(prompt: [Int], maxNew: Int) -> [Int] {
        generate(prompts: [prompt], maxNew: maxNew)[0]
    }

    /// Greedy continuations of several prompts together, each layer attending to its own cache of
    /// keys and values per prompt. The prompts run layer by layer with each layer converted once
    /// (a product per prompt, as `generateGreedy` computes it); then each new token of every
    /// unfinished prompt runs in one step, x `[B, D]`, with the weights read in their stored
    /// precision where they lie (`halfLinearForward`): no layer is converted per token and B
    /// prompts share one read of the weights. A prompt's tokens do not depend on the other
    /// prompts (StreamingTests); they are `generateGreedy`'s unless two logits tie to within
    /// Float rounding (the decode sums in another order).
    public func generate(prompts: [[Int]], maxNew: Int) -> [[Int]] {
        guard prompts.count <= Self.decodeBatch else {
            return stride(from: 0, to: prompts.count, by: Self.decodeBatch).flatMap {
                generate(prompts: Array(prompts[$0..<min(prompts.count, $0 + Self.decodeBatch)]), maxNew: maxNew)
            }
        }
        let positions = config.maxPositionEmbeddings, kvDim = config.attentionShape.kvHeads * config.headSize, d = config.hiddenSize
        var generated = prompts.map { _ in [Int]() }
        let live = prompts.indices.filter { maxNew > 0 && !prompts[$0].isEmpty && prompts[$0].count < positions }
        guard !live.isEmpty else { return generated }
        let capacity = live.map { min(positions, prompts[$0].count + maxNew) }
        let keys = capacity.map { t in (0..<config.numHiddenLayers).map { _ in Tensor<Float>([t, kvDim]) } }  // [prompt][layer]
        let values = capacity.map { t in (0..<config.numHiddenLayers).map { _ in Tensor<Float>([t, kvDim]) } }
        // the prompts: every layer converted once, then a product per prompt
        var xs = live.map { b in
            let x = Tensor<Float>([prompts[b].count, d])
            embeddingForward(x, shell.weights.tokenEmbedding, prompts[b])
            return x
        }
        eachLayer { l in
            for a in live.indices {
                xs[a] = cachedLayerStepFloat(shell, shell.weights.layers[0], [CachedRows(keys: keys[a][l], values: values[a][l], start: 0, rows: xs[a].shape[0])],
                                             x: xs[a])
            }
        }
        for (a, b) in live.enumerated() { generated[b].append(argmax(lastRowLogitsFloat(shell, xs[a]))) }
        // the new tokens, all unfinished prompts in one step
        var length = live.map { prompts[$0].count }
        for _ in 1..<max(1, maxNew) {
            let active = live.indices.filter { a in prompts[live[a]].count + generated[live[a]].count < positions }
            if active.isEmpty { break }
            var x = Tensor<Float>([active.count, d])
            embeddingForward(x, shell.weights.tokenEmbedding, active.map { generated[live[$0]].last! })
            for l in 0..<config.numHiddenLayers {
                loadNorms(layer: l)
                let rows = active.map { CachedRows(keys: keys[$0][l], values: values[$0][l], start: length[$0], rows: 1) }
                x = cachedLayerStepFloat(shell, shell.weights.layers[0], rows, x: x, project: { out, input, which in
                    self.halfProduct(out, input, layer: l, which)
                })
            }
            let logits = decodeLogits(x)
            for (r, a) in active.enumerated() {
                length[a] += 1
                generated[live[a]].append(argmax(Array(UnsafeBufferPointer(start: logits.data + r * config.vocabSize, count: config.vocabSize))))
            }
        }
        return generated
    }

    /// Prompts decoded together at most. Why 16: each prompt keeps a key/value cache of every
    /// layer (at 7B and 72 positions, 75 MB), so 16 prompts hold 1.2 GB, inside the scan's 6 GiB of
    /// anonymous memory; and by 16 rows the decode's products are no longer bound by reading the
    /// weights (docs/SCALE.md), so larger groups would save little.
    public static let decodeBatch = 16

    /// The checkpoint names of a layer's linear maps.
    static func linearName(layer l: Int, _ which: LayerLinear) -> String {
        let p = "model.layers.\(l)."
        switch which {
        case .query: return p + "self_attn.q_proj.weight"
        case .key: return p + "self_attn.k_proj.weight"
        case .value: return p + "self_attn.v_proj.weight"
        case .output: return p + "self_attn.o_proj.weight"
        case .gate: return p + "mlp.gate_proj.weight"
        case .up: return p + "mlp.up_proj.weight"
        case .down: return p + "mlp.down_proj.weight"
        }
    }

    /// `out = input W^T` for layer l's linear map `which`, W read in its stored precision from the
    /// mapping; rows the alignment has trained (kept in Float32) replace the checkpoint's.
    func halfProduct(_ out: Tensor<Float>, _ input: Tensor<Float>, layer l: Int, _ which: LayerLinear) {
        let name = Self.linearName(layer: l, which)
        let at = location[name]!, raw = files[at.file].bytes(of: at.entry)  // checked in init
        let m = input.shape[0], k = input.shape[1], n = out.shape[1], threads = ProcessInfo.processInfo.activeProcessorCount
        halfLinearForward(out.data, input.data, m: m, k: k, n: n, weight: raw.baseAddress!, dtype: at.entry.dtype, threads: threads)
        for slice in slices where slice.layer == l && slice.name == name {
            let part = Tensor<Float>([m, slice.rows.count])
            halfLinearForward(part.data, input.data, m: m, k: k, n: slice.rows.count, weight: slice.values.data, dtype: .F32, threads: threads)
            for i in 0..<m {
                (out.data + i * n + slice.rows.lowerBound).update(from: part.data + i * slice.rows.count, count: slice.rows.count)
            }
        }
    }

    /// Layer l's two RMSNorm weights into the shell (a few thousand numbers), for a decode step
    /// whose products read the checkpoint directly; the shell then holds no whole layer.
    func loadNorms(layer l: Int) {
        guard resident != l else { return }
        for p in shell.layout.tensors where p.name.hasPrefix("model.layers.0.") && p.name.hasSuffix("layernorm.weight") {
            try! fill(p, from: "model.layers.\(l)." + p.name.dropFirst("model.layers.0.".count))  // checked in init
        }
        resident = nil
    }

    /// The final RMSNorm and the LM head on every row of x `[B, D]`: logits `[B, V]`, the head's
    /// Float32 copy read by the same product as the layers (one read for all B rows).
    func decodeLogits(_ x: Tensor<Float>) -> Tensor<Float> {
        let w = shell.weights, m = x.shape[0], d = config.hiddenSize
        let row = Tensor<Float>([m, d]), hat = Tensor<Float>([m, d]), rstd = Tensor<Float>([m])
        rmsNormForward(row, hat, rstd, x, w.finalNorm!.weight, eps: config.rmsNormEps)
        let logits = Tensor<Float>([m, config.vocabSize])
        halfLinearForward(logits.data, row.data, m: m, k: d, n: config.vocabSize, weight: (w.lmHead ?? w.tokenEmbedding).data,
                          dtype: .F32, threads: ProcessInfo.processInfo.activeProcessorCount)
        return logits
    }

    // MARK: Alignment (Eq. 6–7) at scale

    /// The rows Eq. 7 trains, kept in Float32 with their AdamW state: a suspicious head's W_q rows,
    /// and W_k rows of a key/value head whose query heads are all suspicious (as
    /// `alignmentTrainableMask`; Llama has no attention biases).
    final class TrainedRows {
        let layer: Int, name: String, shellName: String, rows: Range<Int>
        let values: Tensor<Float>, gradient: Tensor<Float>
        let optimizer: AdamW<Float>
        init(layer: Int, name: String, rows: Range<Int>, values: Tensor<Float>, learningRate: Double) {
            self.layer = layer; self.name = "model.layers.\(layer).self_attn.\(name).weight"
            shellName = "model.layers.0.self_attn.\(name).weight"
            self.rows = rows; self.values = values
            gradient = Tensor(values.shape)
            optimizer = AdamW<Float>(count: values.count, learningRate: learningRate, weightDecay: 0)
        }
    }
    var slices: [TrainedRows] = []

    /// Sets up the rows Eq. 7 trains for these suspicious heads (their current values copied).
    public func prepareAlignment(suspicious: [HeadID], learningRate: Double) {
        let shape = config.attentionShape, hs = config.headSize, set = Set(suspicious)
        slices = []
        for l in Set(suspicious.map(\.layer)).sorted() {
            load(layer: l)
            func take(_ name: String, _ rows: Range<Int>) {
                let src = shell.params.data + shell.layout["model.layers.0.self_attn.\(name).weight"]!.offset + rows.lowerBound * config.hiddenSize
                let v = Tensor<Float>([rows.count * config.hiddenSize])
                v.data.update(from: src, count: v.count)
                slices.append(TrainedRows(layer: l, name: name, rows: rows, values: v, learningRate: learningRate))
            }
            for id in suspicious.filter({ $0.layer == l }).sorted(by: { $0.head < $1.head }) {
                take("q_proj", (id.head * hs)..<((id.head + 1) * hs))
                let g = shape.kvHead(of: id.head)
                if shape.queryHeads(of: g).first == id.head, shape.queryHeads(of: g).allSatisfy({ set.contains(HeadID(l, $0)) }) {
                    take("k_proj", (g * hs)..<((g + 1) * hs))
                }
            }
        }
        resident = nil  // reload so the slices are in place
    }

    /// One step of Eq. 7 on `sequences`: streamed forward, the injection at the suspicious heads,
    /// a streamed backward from the highest suspicious layer down to the lowest (gradients for
    /// the trained rows only), an AdamW step on those rows. Returns the loss before the update.
    public func alignmentStep(sequences: [(tokens: [Int], promptLength: Int)], view: AnalysisView, suspicious: [HeadID],
                              safe: [HeadID]) -> Double {
        let pass = forward(Batch(sequences.map(\.tokens)))
        let (loss, dAttention) = alignmentInjection(pass, config: config, sequences: sequences, view: view, suspicious: suspicious, safe: safe)
        let c = config, n = pass.batch.tokenCount, d = c.hiddenSize, w = shell.weights
        let qDim = c.attentionShape.heads * c.headSize, kvDim = c.attentionShape.kvHeads * c.headSize
        let scratch = inputGradientsOnly()
        let layers = suspicious.map(\.layer), top = layers.max()!, bottom = layers.min()!
        var dx = Tensor<Float>([n, d])  // nothing above the top suspicious layer depends on Eq. 7
        for l in stride(from: top, through: bottom, by: -1) {
            load(layer: l)
            let dInput = Tensor<Float>([n, d])
            let attention = w.layers[0].attention
            _ = shell.layerBackward(dInput, dOut: dx, pass.layers[l], w.layers[0], scratch, layer: 0, batch: pass.batch, gates: nil,
                                    dAttention: dAttention[l], linearBackward: { dx, _, _, dout, x, weight, backend in
                // at the query (key) projection, dout is dL/dq (dL/dk) after rotary's inverse and x what W_q, W_k read
                let suffix = weight === attention.query.weight ? "q_proj.weight" : weight === attention.key.weight ? "k_proj.weight" : nil
                if let suffix {
                    let ld = suffix == "q_proj.weight" ? qDim : kvDim
                    for slice in self.slices where slice.layer == l && slice.name.hasSuffix(suffix) {
                        // dW[rows] = dout[:, rows]^T x: [rows, D]
                        gemm(backend, transA: true, m: slice.rows.count, n: d, k: n, a: dout.data + slice.rows.lowerBound, lda: ld,
                             b: x.data, ldb: d, c: slice.gradient.data, ldc: d)
                    }
                }
                linearBackwardInput(dx, dout, weight, backend)
            })
            dx = dInput
        }
        for slice in slices {
            slice.optimizer.update(slice.values, slice.gradient)
            if slice.layer == resident {  // keep the resident copy current
                (shell.params.data + shell.layout[slice.shellName]!.offset + slice.rows.lowerBound * d).update(from: slice.values.data, count: slice.values.count)
            }
        }
        return loss
    }

    /// Refuses, before any long work, an output that exists, has no parent, or would not fit on
    /// its disk (a copy of `source`).
    public static func checkRoom(copying source: String, to dir: String) throws {
        let fm = FileManager.default
        guard !fm.fileExists(atPath: dir) else { throw HeadAlignError.usage("--out \(dir) exists; give a new directory") }
        let parent = URL(fileURLWithPath: dir).deletingLastPathComponent().path
        guard fm.fileExists(atPath: parent) else { throw HeadAlignError.usage("--out \(dir): parent directory \(parent) does not exist") }
        let needed = try fm.contentsOfDirectory(atPath: source).reduce(0) { sum, name in
            sum + ((try? fm.attributesOfItem(atPath: source + "/" + name))?[.size] as? Int ?? 0)
        }
        if let free = (try? fm.attributesOfFileSystem(forPath: parent)[.systemFreeSize] as? NSNumber)??.int64Value, Int64(needed) > free {
            throw HeadAlignError.usage(String(format: "--out %@: not enough disk: %.2f GB needed, %.2f GB free", dir, Double(needed) / 1e9, Double(free) / 1e9))
        }
    }

    /// Writes the aligned model into the new directory `dir`: every file copied as it is, then
    /// the W_q / W_k tensors with trained rows re-encoded in their stored dtype at their place.
    public func saveAligned(from source: String, to dir: String) throws {
        let fm = FileManager.default
        try StreamedLlama.checkRoom(copying: source, to: dir)
        removeStaleTemporaries(beside: dir)
    let tmp = dir + ".tmp-\(getpid())"
        try? fm.removeItem(atPath: tmp)
        do {
            try fm.createDirectory(atPath: tmp, withIntermediateDirectories: false)
            for name in try fm.contentsOfDirectory(atPath: source) { try fm.copyItem(atPath: source + "/" + name, toPath: tmp + "/" + name) }
            for name in Set(slices.map(\.name)).sorted() {
                let at = location[name]!, e = at.entry
                let full = Tensor<Float>(e.shape)
                try convert(files[at.file].bytes(of: e), dtype: e.dtype, into: full.data, count: full.count, what: name)
                for slice in slices where slice.name == name {
                    (full.data + slice.rows.lowerBound * config.hiddenSize).update(from: slice.values.data, count: slice.values.count)
                }
                let bytes = encodeValues(UnsafeBufferPointer(start: full.data, count: full.count), as: e.dtype)
                let file = tmp + "/" + URL(fileURLWithPath: files[at.file].path).lastPathComponent
                guard let h = FileHandle(forWritingAtPath: file) else { throw HeadAlignError.badInput("\(file): cannot open for writing") }
                try h.seek(toOffset: UInt64(files[at.file].header.dataStart + e.begin))
                try h.write(contentsOf: bytes)
                try h.close()
            }
            try fm.moveItem(atPath: tmp, toPath: dir)
        } catch {
            try? fm.removeItem(atPath: tmp)
            if let e = error as? HeadAlignError { throw e }
            throw HeadAlignError.badInput("\(dir): cannot write (\(error.localizedDescription))")
        }
    }

    /// What the analysis (Eq. 1–5, `analyze`) needs, streamed: forward, dL/dH, generation.
    var runner: AnalysisRunner<Float> {
        AnalysisRunner(config: config, forward: { self.forward($0) }, headGradients: { self.headOutputGradients($0, dOutput: $1) },
                       greedy: { self.generate(prompts: $0, maxNew: $1) })
    }

    /// The analysed sequences alone (prompts continued greedily by `settings.generate` tokens for a
    /// decoder view), without the forward and backward of `analyze`.
    public func analysisSequences(_ inputs: [AnalysisInput], settings: AnalysisSettings) -> [(tokens: [Int], promptLength: Int)] {
        HeadAlign.analysisSequences(config: config, inputs, task: ModelTask.of(config), generate: settings.generate, greedy: runner.greedy)
    }

    /// Eq. 1–5's analysis of decoder inputs (gen2prompt and the other views), streamed; at most
    /// `analysisGroup` sequences per forward pass.
    public func analyze(_ inputs: [AnalysisInput], settings: AnalysisSettings) throws -> [InputAnalysis] {
        var s = settings
        s.batchSize = min(s.batchSize, Self.analysisGroup)
        return try HeadAlign.analyze(runner, inputs, settings: s)
    }

    /// Sequences forwarded together when the analysis is streamed. Why 4: the backward keeps every
    /// layer's caches of the batch, ~0.6 GB per sequence of 72 positions at 7B (~19 MB a layer), so
    /// the analysis's usual 16 would hold ~10 GB beside the 13.5 GB checkpoint in the page cache;
    /// 4 keep the anonymous memory inside 6 GiB (docs/SCALE.md) and still share each layer's
    /// conversion four ways.
    public static let analysisGroup = 4

    /// The oracle dump (`headalign inspect --stream`), through the same seam.
    public func inspect(_ inputs: [AnalysisInput], settings: InspectSettings, commandLine: String) throws -> JSONOut {
        try inspectDocument(runner, inputs: inputs, settings: settings, commandLine: commandLine)
    }
}

/// The first error thrown by concurrent work.
final class LockedError: @unchecked Sendable {
    private let lock = NSLock()
    private var first: Error?
    var error: Error? { lock.lock(); defer { lock.unlock() }; return first }
    func set(_ e: Error) { lock.lock(); if first == nil { first = e }; lock.unlock() }
}

/// Pointers handed to concurrent workers that touch disjoint ranges of them.
struct SharedPointers: @unchecked Sendable {
    let raw: UnsafeRawBufferPointer
    let out: UnsafeMutablePointer<Float>
}
