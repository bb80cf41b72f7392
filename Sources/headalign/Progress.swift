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
        if isTerminal {
            guard p.step == p.steps || p.elapsed - lastDraw >= 0.1 else { return }
            lastDraw = p.elapsed
            let line = progressLine(label: label, p, width: terminalColumns())
            FileHandle.standardError.write(Data("\r\(line)\u{1B}[K".utf8))
            if p.step == p.steps { FileHandle.standardError.write(Data("\n".utf8)) }
        } else {
            let decile = 10 * p.step / max(1, p.steps)
            guard decile != lastDecile else { return }
            lastDecile = decile
            printError(progressLine(label: label, p, width: nil))
        }
    }
}

/// The width of the terminal on stderr (ioctl TIOCGWINSZ), read at each redraw so a resized
/// window is followed; 80 when it cannot be read.
func terminalColumns() -> Int {
    var ws = winsize()
    guard ioctl(2, UInt(TIOCGWINSZ), &ws) == 0, ws.ws_col > 0 else { return 80 }
    return Int(ws.ws_col)
}
