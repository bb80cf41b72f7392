// Progress.swift: a progress bar on standard error (loss, accuracy, tokens/s, ETA), redrawn in
// place when stderr is a terminal and written as a line every tenth of the run when it is not
// (logs and CI stay readable).

import Foundation
import HeadAlign
import HeadAlignLab

final class ProgressBar {
    let label: String
    let isTerminal = isatty(2) != 0
    private var lastDraw = -1.0
    private var lastDecile = -1

    init(label: String) { self.label = label }

    func update(_ p: TrainProgress) {
        let accuracy = p.accuracy.isNaN ? "" : String(format: "  acc %.3f", p.accuracy)  // decoders: no labels
        let text = String(format: "step %d/%d  loss %.4f", p.step, p.steps, p.loss) + accuracy
            + String(format: "  %.0f tok/s  %.1f s  ETA %.1f s", p.tokensPerSecond, p.elapsed, p.eta)
        if isTerminal {
            guard p.step == p.steps || p.elapsed - lastDraw >= 0.1 else { return }
            lastDraw = p.elapsed
            let width = 24, filled = width * p.step / max(1, p.steps)
            let bar = String(repeating: "#", count: filled) + String(repeating: ".", count: width - filled)
            FileHandle.standardError.write(Data("\r\(label) [\(bar)] \(text)\u{1B}[K".utf8))
            if p.step == p.steps { FileHandle.standardError.write(Data("\n".utf8)) }
        } else {
            let decile = 10 * p.step / max(1, p.steps)
            guard decile != lastDecile else { return }
            lastDecile = decile
            printError("\(label) \(text)")
        }
    }
}
