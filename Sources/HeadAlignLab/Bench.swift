// Bench.swift: what `headalign bench` measures. For each case: median time per batch, GEMM
// throughput, the share of time inside gemm, and the time the same matrix products take when
// replayed alone through the same backend (so "ratio to raw gemm" = replay / run: 1.0 means
// nothing but matrix products). Peak resident memory from /proc (reset before each case).

import HeadAlign
import Foundation

public struct BenchCase: Sendable {
    public let name: String  // e.g. "minilm-l6 fwd+bwd"
    public let preset: String
    public let batch: Int
    public let tokens: Int
    public let backward: Bool
    /// Time one layer only (the 7B shape: a whole model does not fit the benchmark's purpose).
    public let singleLayer: Bool

    public init(preset: String, batch: Int, tokens: Int, backward: Bool, singleLayer: Bool = false) {
        self.preset = preset; self.batch = batch; self.tokens = tokens; self.backward = backward
        self.singleLayer = singleLayer
        name = "\(preset)\(singleLayer ? " 1 layer" : "") \(backward ? "fwd+bwd" : "fwd")"
    }
}

public struct BenchResult: Sendable {
    public let benchCase: BenchCase
    public let backend: String
    public let precision: Precision
    public let seconds: Double  // median per batch
    public let gemmSeconds: Double  // inside gemm, same run
    public let gemmFlops: Double
    public let replaySeconds: Double  // the same products alone
    public let peakResidentBytes: Int?

    public var gflops: Double { gemmFlops / seconds / 1e9 }
    public var gemmShare: Double { gemmSeconds / seconds }
    public var ratioToRawGemm: Double { replaySeconds / seconds }
}

/// The default suite: the tiny presets, a MiniLM-shaped training step at batch 32 x 64 tokens,
/// and one Llama-2-7B-shaped layer's forward at T = 64.
public func defaultBenchCases() -> [BenchCase] {
    [BenchCase(preset: "bert-tiny", batch: 32, tokens: 32, backward: false),
     BenchCase(preset: "bert-tiny", batch: 32, tokens: 32, backward: true),
     BenchCase(preset: "llama-tiny", batch: 32, tokens: 32, backward: false),
     BenchCase(preset: "llama-tiny", batch: 32, tokens: 32, backward: true),
     BenchCase(preset: "minilm-l6", batch: 32, tokens: 64, backward: false),
     BenchCase(preset: "minilm-l6", batch: 32, tokens: 64, backward: true),
     BenchCase(preset: "llama2-7b", batch: 1, tokens: 64, backward: false, singleLayer: true)]
}

/// Runs one case `repeats` times after one warm-up run.
public func runBench(_ c: BenchCase, backend: Backend, precision: Precision, repeats: Int, seed: UInt64 = 1) throws -> BenchResult {
    var config = try ModelConfig.preset(c.preset)
    if c.singleLayer {
        config.numHiddenLayers = 1
        config.vocabSize = 256  // the layer is what is timed; keep the embedding small
    }
    guard c.tokens <= config.maxPositionEmbeddings else {
        throw HeadAlignError.usage("--tokens \(c.tokens) exceeds \(c.preset)'s \(config.maxPositionEmbeddings) positions")
    }
    switch precision {
    case .f32: return run(Float.self, c, config, backend, precision, repeats, seed)
    case .f64: return run(Double.self, c, config, backend, precision, repeats, seed)
    }
}

private func run<S: Real>(_: S.Type, _ c: BenchCase, _ config: ModelConfig, _ backend: Backend, _ precision: Precision,
                          _ repeats: Int, _ seed: UInt64) -> BenchResult {
    resetPeakResident()
    let model = Model<S>(config: config, backend: backend)
    model.initialize(seed: seed)
    var rng = SeededGenerator(seed: seed)
    let batch = Batch((0..<c.batch).map { _ in (0..<c.tokens).map { _ in rng.int(below: config.vocabSize) } })
    let objective: Objective = config.numLabels > 0
        ? .classification(labels: (0..<c.batch).map { $0 % config.numLabels }) : .languageModeling(batch)

    // The single-layer case times the layer alone on a prepared input.
    var layerCache: LayerCache<S>? = nil
    if c.singleLayer {
        let cache = LayerCache<S>(n: batch.tokenCount, d: config.hiddenSize, f: config.intermediateSize,
                                  qDim: config.numAttentionHeads * config.headSize,
                                  kvDim: config.numKeyValueHeads * config.headSize, heads: config.numAttentionHeads,
                                  squares: batch.squareCount, llama: config.family == .llama)
        for i in 0..<cache.input.count { cache.input.data[i] = S(rng.normal()) }
        layerCache = cache
    }
    let stats = GemmStats.shared
    let grads = c.backward ? model.makeGradients() : nil  // one buffer, zeroed per step, as `trainSteps` does
    func once() {
        if let cache = layerCache {
            model.layerForward(cache, model.weights.layers[0], layer: 0, batch: batch, options: ForwardOptions())
            return
        }
        let pass = model.forward(batch)
        if let grads {
            let (_, d) = loss(pass, objective)
            grads.zero()
            model.backward(pass, dOutput: d, into: grads)
        }
    }
    once()  // warm-up
    var times: [Double] = []
    var gemmSeconds = 0.0, gemmFlops = 0.0
    var shapes: [GemmStats.Shape: Int] = [:]
    for r in 0..<repeats {
        stats.reset()
        stats.enabled = true
        let start = monotonicSeconds()
        once()
        times.append(monotonicSeconds() - start)
        stats.enabled = false
        gemmSeconds += stats.seconds
        gemmFlops = stats.flops
        if r == 0 { shapes = stats.shapes }
    }
    let median = times.sorted()[times.count / 2]
    let replay = replayGemm(S.self, shapes, backend: backend)
    return BenchResult(benchCase: c, backend: backend.description, precision: precision, seconds: median,
                       gemmSeconds: gemmSeconds / Double(repeats), gemmFlops: gemmFlops, replaySeconds: replay,
                       peakResidentBytes: peakResidentBytes())
}

/// Time of the recorded products alone (best of three with BLAS), on fresh random matrices.
func replayGemm<S: Real>(_: S.Type, _ shapes: [GemmStats.Shape: Int], backend: Backend) -> Double {
    let rounds = backend.isBLAS ? 3 : 1  // the naive replay of a MiniLM step takes seconds
    var rng = SeededGenerator(seed: 99)
    var best = Double.infinity
    let prepared = shapes.map { (shape, count) -> (GemmStats.Shape, Int, Tensor<S>, Tensor<S>, Tensor<S>) in
        let a: Tensor<S> = Tensor([shape.m * shape.k]), b: Tensor<S> = Tensor([shape.k * shape.n])
        for i in 0..<a.count { a.data[i] = S(rng.uniform() - 0.5) }
        for i in 0..<b.count { b.data[i] = S(rng.uniform() - 0.5) }
        return (shape, count, a, b, Tensor([shape.m * shape.n]))
    }
    for _ in 0..<rounds {
        let start = monotonicSeconds()
        for (s, count, a, b, c) in prepared {
            for _ in 0..<count {
                gemm(backend, transA: s.transA, transB: s.transB, m: s.m, n: s.n, k: s.k, a: a.data,
                     lda: s.transA ? s.m : s.k, b: b.data, ldb: s.transB ? s.k : s.n, beta: 1, c: c.data, ldc: s.n)
            }
        }
        best = min(best, monotonicSeconds() - start)
    }
    return best
}

/// GFLOP/s of one `m x k` by `k x n` product (alone, best of `repeats`), e.g. the naive
/// kernel's 64x384x384 target.
/// `reference` times naiveGemm itself (the i-k-j loop) instead of the backend's kernel.
public func gemmThroughput(precision: Precision, backend: Backend, m: Int, n: Int, k: Int, repeats: Int, reference: Bool = false) -> Double {
    func run<S: Real>(_: S.Type) -> Double {
        let a = Tensor<S>([m * k]), b = Tensor<S>([k * n]), c = Tensor<S>([m * n])
        var rng = SeededGenerator(seed: 5)
        for i in 0..<a.count { a.data[i] = S(rng.uniform()) }
        for i in 0..<b.count { b.data[i] = S(rng.uniform()) }
        var best = Double.infinity
        for _ in 0..<repeats {
            let start = monotonicSeconds()
            if reference {
                naiveGemm(transA: false, transB: false, m: m, n: n, k: k, alpha: 1, a: a.data, lda: k, b: b.data, ldb: n,
                          beta: 0, c: c.data, ldc: n)
            } else {
                gemm(backend, m: m, n: n, k: k, a: a.data, lda: k, b: b.data, ldb: n, c: c.data, ldc: n)
            }
            best = min(best, monotonicSeconds() - start)
        }
        return 2 * Double(m * n * k) / best / 1e9
    }
    return precision == .f32 ? run(Float.self) : run(Double.self)
}

// MARK: - Memory

/// /proc/self/status read with plain read(2) calls (a /proc file reports size 0).
func procStatus() -> String? {
    let fd = open("/proc/self/status", O_RDONLY)
    guard fd >= 0 else { return nil }
    defer { close(fd) }
    var bytes: [UInt8] = [], chunk = [UInt8](repeating: 0, count: 4096)
    while true {
        let n = chunk.withUnsafeMutableBytes { read(fd, $0.baseAddress, 4096) }
        if n < 0 && errno == EINTR { continue }
        if n <= 0 { break }
        bytes += chunk[0..<n]
    }
    return bytes.isEmpty ? nil : String(decoding: bytes, as: UTF8.self)
}

/// Peak resident set size (VmHWM) in bytes, Linux only.
public func peakResidentBytes() -> Int? {
    guard let status = procStatus() else { return nil }
    for line in status.split(separator: "\n") where line.hasPrefix("VmHWM:") {
        let kb = line.split(whereSeparator: { $0 == " " || $0 == "\t" }).compactMap { Int($0) }.first  // "VmHWM:\t15840284 kB"
        return kb.map { $0 * 1024 }
    }
    return nil
}

/// Resident memory now, from /proc/self/status (Linux): anonymous (the process's own buffers)
/// and file-backed (mapped checkpoint pages), in bytes; nil elsewhere.
public func residentBytes() -> (anonymous: Int, file: Int)? {
    guard let status = procStatus() else { return nil }
    func field(_ name: String) -> Int? {
        status.split(separator: "\n").first { $0.hasPrefix(name) }
            .flatMap { $0.split(whereSeparator: { $0 == " " || $0 == "\t" }).compactMap { Int($0) }.first }.map { $0 * 1024 }
    }
    guard let a = field("RssAnon:"), let f = field("RssFile:") else { return nil }
    return (a, f)
}

/// One phase of the streamed scan: wall time, time in GEMM and its GFLOP/s, weight conversion,
/// and the largest resident memory seen at the phase's end.
public struct StreamPhase: Sendable {
    public let name: String
    public let seconds: Double, gemmSeconds: Double, gemmFlops: Double, conversionSeconds: Double, layerLoads: Int
    public let halfSeconds: Double, halfBytes: Double  // in `halfLinearForward` (the decode), and the weight bytes it read
    public let anonymousBytes: Int, fileBytes: Int, peakBytes: Int
}

/// Times the 7B scan streamed from `dir` for `prompts` random prompts of `tokens` tokens: greedy
/// generation of `generate` tokens (key/value cache, the prompts decoded together), the forward
/// of prompt + generation with the attention captured, and Eq. 4's activations-only backward
/// (one phase each for one prompt; for several, forward and backward together in groups of
/// `StreamedLlama.analysisGroup`, as the streamed analysis runs them).
public func benchStreamedScan(directory dir: String, backend: Backend, tokens: Int, generate: Int, prompts count: Int = 1) throws -> [StreamPhase] {
    let model = try StreamedLlama(directory: dir, backend: backend)
    var rng = SeededGenerator(seed: 11)
    let prompts = (0..<count).map { _ in
        [model.config.bosTokenId ?? 1] + (1..<tokens).map { _ in 3 + Int(rng.next() % UInt64(model.config.vocabSize - 3)) }
    }
    let stats = GemmStats.shared
    stats.enabled = true
    defer { stats.enabled = false }
    var phases: [StreamPhase] = []
    func phase<T>(_ name: String, _ body: () -> T) -> T {
        stats.reset()
        let convert0 = model.conversionSeconds, loads0 = model.layerLoads, start = monotonicSeconds()
        let out = body()
        let mem = residentBytes() ?? (0, 0)
        phases.append(StreamPhase(name: name, seconds: monotonicSeconds() - start, gemmSeconds: stats.seconds, gemmFlops: stats.flops,
                                  conversionSeconds: model.conversionSeconds - convert0, layerLoads: model.layerLoads - loads0,
                                  halfSeconds: stats.halfSeconds, halfBytes: stats.halfBytes,
                                  anonymousBytes: mem.anonymous, fileBytes: mem.file, peakBytes: peakResidentBytes() ?? 0))
        return out
    }
    let what = count == 1 ? "" : " x \(count) prompts"
    let generated = phase("generate \(generate) tokens (T_p = \(tokens), KV cache)\(what)") { model.generate(prompts: prompts, maxNew: generate) }
    let sequences = zip(prompts, generated).map { $0 + $1 }
    func backward(_ pass: ForwardPass<Float>) -> [Tensor<Float>] {
        let targets = pass.batch.sequences.map { generationTargets($0.tokens, promptLength: tokens) }
        let (_, dOut) = loss(pass, .nextToken(targets: targets))
        return model.headOutputGradients(pass, dOutput: dOut)
    }
    if count == 1 {
        let pass = phase("forward T = \(sequences[0].count), attention captured") { model.forward(Batch(sequences)) }
        _ = phase("Eq. 4 backward (activations only)") { backward(pass) }
    } else {
        // as the streamed analysis groups them (StreamedLlama.analysisGroup: memory)
        phase("forward T = \(sequences[0].count) + Eq. 4 backward\(what), in groups of \(StreamedLlama.analysisGroup)") {
            for g in stride(from: 0, to: count, by: StreamedLlama.analysisGroup) {
                _ = backward(model.forward(Batch(Array(sequences[g..<min(count, g + StreamedLlama.analysisGroup)]))))
            }
        }
    }
    return phases
}

/// Resets VmHWM to the current resident size (Linux >= 4.0; silently does nothing elsewhere).
public func resetPeakResident() {
    if let h = FileHandle(forWritingAtPath: "/proc/self/clear_refs") {
        h.write(Data("5".utf8))
        try? h.close()
    }
}

/// The CPU model and core count, for the results table.
public func machineDescription() -> String {
    var model = "unknown CPU"
    if let info = try? String(contentsOfFile: "/proc/cpuinfo", encoding: .utf8),
       let line = info.split(separator: "\n").first(where: { $0.hasPrefix("model name") }),
       let colon = line.firstIndex(of: ":") {
        model = line[line.index(after: colon)...].trimmingCharacters(in: .whitespaces)
    }
    let gib = Double(ProcessInfo.processInfo.physicalMemory) / Double(1 << 30)
    return "\(model), \(ProcessInfo.processInfo.activeProcessorCount) cores, \(String(format: "%.0f", gib)) GiB"
}
