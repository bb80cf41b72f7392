// GradCheckCommand.swift: `headalign gradcheck`, finite differences against the backward.

import Foundation
import HeadAlign
import HeadAlignLab

enum GradCheckCommand: Command {
    static let spec = CommandSpec(
        name: "gradcheck",
        summary: "check the backward against central finite differences",
        detail: """
            Check the hand-written backward against central finite differences: every parameter tensor
            (every entry of small ones, a seeded sample of large ones), dL/dH, head gates, and the gradient
            injected at the attention probabilities (Eq. 7's path). Exit 1 when an error is over tolerance.
            """,
        usage: "gradcheck --preset NAME [--precision f64|f32] [--backend naive|blas|auto] [--seed N] [--samples N] [--labels N]",
        options: [
            OptionSpec(name: "--preset", value: "NAME", help: "model shape: \(ModelConfig.presetNames.joined(separator: ", ")) (default bert-tiny)"),
            OptionSpec(name: "--precision", value: "P", help: "f64 (default; tolerance 1e-6) or f32 (tolerance 5e-2)"),
            OptionSpec(name: "--backend", value: "B", help: "naive, blas or auto (default auto: blas when it loads)"),
            OptionSpec(name: "--seed", value: "N", help: "seed for weights, batch and samples (default 1)"),
            OptionSpec(name: "--samples", value: "N", help: "entries checked per large tensor (default 24)"),
            OptionSpec(name: "--labels", value: "N", help: "give the model a sequence-classification head with N classes"),
        ])

    static func run(_ args: ParsedArguments) throws -> Int32 {
        let name = try args.choice("--preset", ModelConfig.presetNames, default: "bert-tiny")
        var config = try ModelConfig.preset(name)
        if args.has("--labels") {
            config = config.withClassifier(labels: try args.int("--labels", default: 2, range: 2...1000))
        }
        guard !["bert-base", "llama2-7b"].contains(name) else {
            throw HeadAlignError.usage("--preset \(name): too large for a finite-difference check; use bert-tiny, llama-tiny or minilm-l6")
        }
        let precision = try args.precision(default: .f64)
        let backend = try args.backend()
        let seed = try args.uint64("--seed", default: 1)
        let samples = try args.int("--samples", default: 24, range: 1...100_000)

        let start = monotonicSeconds()
        let report = runGradCheck(config: config, name: name, precision: precision, backend: backend, seed: seed,
                                  samples: samples)
        let seconds = monotonicSeconds() - start
        print("headalign gradcheck --preset \(name) --precision \(precision) --backend \(args.string("--backend") ?? "auto") --seed \(seed) --samples \(samples)")
        print("backend \(report.backend); step \(report.step); relative error |a-n|/max(|a|,|n|,\(String(format: "%.2e", report.floor))); tolerance \(report.tolerance)")
        print("")
        let width = max(44, report.rows.map(\.name.count).max()! + 2)
        print("section".padding(toLength: 12, withPad: " ", startingAt: 0) + "tensor".padding(toLength: width, withPad: " ", startingAt: 0)
              + "checked   max|grad|    max rel err")
        for r in report.rows {
            let flag = r.maxRelativeError > report.tolerance ? "  OVER" : ""
            print(r.section.padding(toLength: 12, withPad: " ", startingAt: 0) + r.name.padding(toLength: width, withPad: " ", startingAt: 0)
                  + String(format: "%7d   %9.3e    %9.3e", r.checked, r.maxAbsGradient, r.maxRelativeError) + flag)
        }
        print("")
        print(String(format: "max relative error %.3e (tolerance %.0e) over %d rows in %.1f s: %@", report.maxRelativeError,
                     report.tolerance, report.rows.count, seconds, report.passed ? "OK" : "FAILED"))
        return report.passed ? 0 : 1
    }
}
