// BenchCommand.swift: `headalign bench`, speed on each backend (see Bench.swift for what is measured).

import Foundation
import HeadAlign
import HeadAlignLab

enum BenchCommand: Command {
    static let spec = CommandSpec(
        name: "bench",
        summary: "time forward and backward on each backend",
        detail: """
            Time forward and forward+backward per batch for the presets, and one Llama-2-7B-shaped layer's
            forward at T=64, on each available backend. Columns: median seconds per batch; GFLOP/s of the
            matrix products over the whole time; share of the time inside gemm; ratio of the same products
            replayed alone to the whole time (1.0 = nothing but matrix products); peak resident memory.
            The first lines measure the naive backend's kernel (and the i-k-j reference) alone and BLAS on a few shapes.
            """,
        usage: "bench [--preset NAME]... [--backend naive|blas|all] [--precision f32|f64] [--repeat N] [--batch B] [--tokens T] [--threads N] [--peer FILE]",
        options: [
            OptionSpec(name: "--preset", value: "NAME", help: "only the cases of this preset (repeatable; default: all)", repeatable: true),
            OptionSpec(name: "--backend", value: "B", help: "naive, blas or all (default all: both when BLAS loads)"),
            OptionSpec(name: "--precision", value: "P", help: "f32 (default) or f64"),
            OptionSpec(name: "--repeat", value: "N", help: "timed runs per case after one warm-up (default 3)"),
            OptionSpec(name: "--batch", value: "B", help: "override the sequences per batch"),
            OptionSpec(name: "--tokens", value: "T", help: "override the tokens per sequence"),
            OptionSpec(name: "--threads", value: "N", help: "OpenBLAS threads (default: OpenBLAS's own choice)"),
            OptionSpec(name: "--peer", value: "FILE", help: "the peer's timings (python3 tools/pytorch_baseline.py --json FILE), printed beside ours with the ratio"),
            OptionSpec(name: "--stream", value: "DIR", help: "time the streamed scan of a Llama checkpoint (make-model --preset llama2-7b): generation, forward, Eq. 4 backward"),
            OptionSpec(name: "--generate", value: "N", help: "with --stream: tokens generated (default 8; --tokens is the prompt, default 64)"),
            OptionSpec(name: "--prompts", value: "B", help: "with --stream: prompts scanned together (default 1)"),
        ])

    static func run(_ args: ParsedArguments) throws -> Int32 {
        let presets = args.strings("--preset")
        for p in presets where !ModelConfig.presetNames.contains(p) {
            throw HeadAlignError.usage("--preset: unknown preset '\(p)' (one of \(ModelConfig.presetNames.joined(separator: ", ")))")
        }
        let which = try args.choice("--backend", ["naive", "blas", "all"], default: "all")
        var backends: [Backend] = []
        if which != "blas" { backends.append(.naive) }
        if which == "blas" { backends.append(try Backend.named("blas")) }
        if which == "all", let lib = BLASLibrary.shared { backends.append(.blas(lib)) }
        let precision = try args.precision(default: .f32)
        let repeats = try args.int("--repeat", default: 3, range: 1...1000)
        let batchOverride = args.has("--batch") ? try args.int("--batch", default: 1, range: 1...4096) : nil
        let tokensOverride = args.has("--tokens") ? try args.int("--tokens", default: 1, range: 1...8192) : nil
        if args.has("--threads") {
            let n = try args.int("--threads", default: 1, range: 1...256)
            guard let lib = BLASLibrary.shared else { throw HeadAlignError.usage("--threads: no BLAS library is loaded") }
            lib.setThreadCount(n)
        }
        let peer = try args.string("--peer").map(Peer.load)  // checked before the work
        if peer != nil, args.has("--stream") { throw HeadAlignError.usage("--peer: the peer times no streamed scan; use it without --stream") }
        if let dir = args.string("--stream") { return try streamed(args, directory: dir, backends: backends) }
        var cases = defaultBenchCases().filter { presets.isEmpty || presets.contains($0.preset) }
        if presets.contains("bert-base") {
            cases += [BenchCase(preset: "bert-base", batch: 32, tokens: 64, backward: false),
                      BenchCase(preset: "bert-base", batch: 32, tokens: 64, backward: true)]
        }
        cases = cases.map {
            BenchCase(preset: $0.preset, batch: batchOverride ?? $0.batch, tokens: tokensOverride ?? $0.tokens,
                      backward: $0.backward, singleLayer: $0.singleLayer)
        }

        print("headalign bench --precision \(precision) --repeat \(repeats)\(presets.map { " --preset \($0)" }.joined())")
        print("machine: \(machineDescription())")
        if let lib = BLASLibrary.shared {
            print(blasLine(lib))
        } else {
            print("blas: not found (naive kernels only)")
        }
        print(String(format: "naive backend, 64x384x384, one thread: %.1f GFLOP/s (the i-k-j reference naiveGemm: %.1f; 136x136x8, a per-head product: %.1f and %.1f)"
                     + (precision == .f32 ? "; Float's large products: the packed kernel's \(FloatKernel.chosen.rawValue) build" : ""),
                     gemmThroughput(precision: precision, backend: .naive, m: 64, n: 384, k: 384, repeats: 20),
                     gemmThroughput(precision: precision, backend: .naive, m: 64, n: 384, k: 384, repeats: 20, reference: true),
                     gemmThroughput(precision: precision, backend: .naive, m: 136, n: 136, k: 8, repeats: 50),
                     gemmThroughput(precision: precision, backend: .naive, m: 136, n: 136, k: 8, repeats: 50, reference: true)))
        if let lib = BLASLibrary.shared {
            print(String(format: "blas gemm, 64x384x384: %.1f GFLOP/s; 2048x384x384: %.1f GFLOP/s; 64x4096x4096: %.1f GFLOP/s",
                         gemmThroughput(precision: precision, backend: .blas(lib), m: 64, n: 384, k: 384, repeats: 20),
                         gemmThroughput(precision: precision, backend: .blas(lib), m: 2048, n: 384, k: 384, repeats: 5),
                         gemmThroughput(precision: precision, backend: .blas(lib), m: 64, n: 4096, k: 4096, repeats: 5)))
        }
        if let peer { print("peer: \(peer.name), measured \(peer.measured) (\(peer.age))") }
        print("")
        print("| case | backend | batch x tokens | s / batch | GFLOP/s | in gemm | ratio to raw gemm | peak RSS |" + (peer == nil ? "" : " peer s / batch | ratio to peer |"))
        print("|---|---|---|---:|---:|---:|---:|---:|" + (peer == nil ? "" : "---:|---:|"))
        for c in cases {
            for backend in backends {
                let r = try runBench(c, backend: backend, precision: precision, repeats: repeats)
                let rss = r.peakResidentBytes.map { String(format: "%.0f MiB", Double($0) / 1_048_576) } ?? "n/a"
                var line = String(format: "| %@ | %@ | %d x %d | %.4f | %.1f | %.0f%% | %.2f | %@ |", c.name,
                                  backend.isBLAS ? "blas" : "naive", c.batch, c.tokens, r.seconds, r.gflops,
                                  100 * r.gemmShare, r.ratioToRawGemm, rss)
                if let peer {
                    let theirs = peer.seconds["\(c.name) \(c.batch) x \(c.tokens)"]
                    line += theirs.map { String(format: " %.4f | %.2fx |", $0, r.seconds / $0) } ?? " - | - |"
                }
                print(line)
            }
        }
        if let peer {
            print("\n(ratio to peer: our seconds over the peer's on the same case; below 1 we are faster. Peer measured \(peer.age).)")
        }
        return 0
    }

    /// The library, its threads and its kernels, as both tables' headers print them.
    static func blasLine(_ lib: BLASLibrary) -> String {
        "blas: \(lib.name), \(lib.threads.map { "\($0) threads" } ?? "threads unknown")\(lib.coreDescription.map { ", " + $0 } ?? "")"
    }

    /// The peer's timings: `tools/pytorch_baseline.py --json FILE`, version 1.
    struct Peer {
        let name: String, measured: String, age: String
        let seconds: [String: Double]  // case name ("minilm-l6 fwd+bwd 32 x 64") -> median seconds per batch

        static func load(_ path: String) throws -> Peer {
            guard let data = FileManager.default.contents(atPath: path) else { throw HeadAlignError.usage("--peer \(path): cannot read the file") }
            let doc: JSONValue
            do { doc = try data.withUnsafeBytes { try JSONValue.parse($0.bindMemory(to: UInt8.self)) } } catch {
                throw HeadAlignError.badInput("--peer \(path): not JSON (\(error))")
            }
            guard doc["version"] == .integer(1) else {
                throw HeadAlignError.badInput("--peer \(path): \"version\" is not 1 (write it with python3 tools/pytorch_baseline.py --json FILE)")
            }
            guard case .string(let name)? = doc["peer"], case .string(let measured)? = doc["measured"],
                  case .object(let members)? = doc["cases"], !members.isEmpty else {
                throw HeadAlignError.badInput("--peer \(path): needs \"peer\" and \"measured\" strings and a non-empty \"cases\" object")
            }
            var seconds: [String: Double] = [:]
            for (key, value) in members {
                let x: Double
                switch value {
                case .float(let f): x = f
                case .integer(let i): x = Double(i)
                default: throw HeadAlignError.badInput("--peer \(path): case '\(key)' is \(value.described), not seconds")
                }
                guard x.isFinite, x > 0 else { throw HeadAlignError.badInput("--peer \(path): case '\(key)' has \(x) seconds; a time is positive") }
                seconds[key] = x
            }
            var age = "at an unknown time"
            if let date = ISO8601DateFormatter().date(from: measured) {
                let minutes = Date().timeIntervalSince(date) / 60
                age = minutes < 0 ? "in the future by this clock" : String(format: "%.0f minutes before this run", minutes)
            }
            return Peer(name: name, measured: measured, age: age, seconds: seconds)
        }
    }

    /// `bench --stream DIR`: the 7B scan's phases, their time in GEMM against raw sgemm on the
    /// largest product shape, weight conversion and memory.
    static func streamed(_ args: ParsedArguments, directory dir: String, backends: [Backend]) throws -> Int32 {
        guard let backend = backends.last else { throw HeadAlignError.usage("--stream: no backend") }
        let tokens = try args.int("--tokens", default: 64, range: 2...4000), generate = try args.int("--generate", default: 8, range: 1...4000)
        let prompts = try args.int("--prompts", default: 1, range: 1...256)
        print("headalign bench --stream \(dir) --tokens \(tokens) --generate \(generate) --prompts \(prompts)")
        print("machine: \(machineDescription())")
        if let lib = BLASLibrary.shared { print(blasLine(lib)) }
        let start = monotonicSeconds()
        let phases = try benchStreamedScan(directory: dir, backend: backend, tokens: tokens, generate: generate, prompts: prompts)
        let config = try ModelConfig.load(contentsOf: URL(fileURLWithPath: dir + "/config.json"))
        let raw = gemmThroughput(precision: .f32, backend: backend, m: tokens + generate, n: config.intermediateSize, k: config.hiddenSize, repeats: 3)
        print(String(format: "raw sgemm [%d x %d] x [%d x %d]: %.1f GFLOP/s", tokens + generate, config.hiddenSize, config.hiddenSize,
                     config.intermediateSize, raw))
        print("")
        print("| phase | seconds | in GEMM | GEMM GFLOP/s | vs raw sgemm | in half-precision products | their weight reads | converting weights | layer loads | anonymous | file-backed | peak resident |")
        print("|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
        func gib(_ b: Int) -> String { String(format: "%.2f GiB", Double(b) / Double(1 << 30)) }
        for p in phases {
            let gflops = p.gemmSeconds > 0 ? p.gemmFlops / p.gemmSeconds / 1e9 : 0
            let reads = p.halfSeconds > 0 ? String(format: "%.1f GB at %.1f GB/s", p.halfBytes / 1e9, p.halfBytes / p.halfSeconds / 1e9) : "-"
            print(String(format: "| %@ | %.1f | %.0f%% | %.1f | %.0f%% | %.0f%% | %@ | %.1f s | %d | %@ | %@ | %@ |", p.name, p.seconds,
                         100 * p.gemmSeconds / p.seconds, gflops, 100 * gflops / raw, 100 * p.halfSeconds / p.seconds, reads,
                         p.conversionSeconds, p.layerLoads, gib(p.anonymousBytes), gib(p.fileBytes), gib(p.peakBytes)))
        }
        let total = phases.reduce(0) { $0 + $1.seconds }
        let products = phases.reduce(0) { $0 + $1.gemmSeconds + $1.halfSeconds }
        print(String(format: "\nscan (the phases above): %.1f s (%.0f%% in GEMM and half-precision products); with opening the checkpoint: %.1f s",
                     total, 100 * products / total, monotonicSeconds() - start))
        return 0
    }
}
