// Plot.swift: the notebooks' figures as hand-written SVG (Foundation only). Each figure is drawn
// on its own white card with dark ink, so it reads the same on a light and a dark page. Numbers
// in the SVG are printed with fixed precision, so the same data give the same bytes.

import HeadAlign
import Foundation

/// Colours shared by every figure (the classes of Eq. 5 and the two kinds of input).
public enum PlotColour {
    public static let ink = "#212529", grid = "#dee2e6", card = "#ffffff"
    public static let safe = "#2b8a3e", intermediate = "#868e96", suspicious = "#c92a2a"
    public static let clean = "#1c7ed6", triggered = "#e8590c"
    public static func of(_ c: HeadClass) -> String {
        switch c { case .safe: return safe; case .intermediate: return intermediate; case .suspicious: return suspicious }
    }
}

/// An SVG document under construction: a card of `width` x `height` pixels.
public struct SVGCanvas {
    public let width: Double, height: Double
    var body: [String] = []

    public init(width: Double, height: Double, title: String) {
        self.width = width; self.height = height
        body.append("<title>\(SVGCanvas.escape(title))</title>")
        body.append("<rect x=\"0\" y=\"0\" width=\"\(f(width))\" height=\"\(f(height))\" rx=\"8\" fill=\"\(PlotColour.card)\" stroke=\"\(PlotColour.grid)\"/>")
        text(title, x: width / 2, y: 22, size: 15, anchor: "middle", weight: "bold")
    }

    static func escape(_ s: String) -> String {
        var out = ""
        for ch in s.unicodeScalars {
            switch ch {
            case "&": out += "&amp;"
            case "<": out += "&lt;"
            case ">": out += "&gt;"
            case "\"": out += "&quot;"
            default: out += ch.value < 0x20 ? " " : String(ch)  // control characters are not XML
            }
        }
        return out
    }

    public mutating func text(_ s: String, x: Double, y: Double, size: Double = 12, anchor: String = "start",
                              weight: String = "normal", rotate: Double? = nil, cls: String = "label") {
        let r = rotate.map { " transform=\"rotate(\(f($0)) \(f(x)) \(f(y)))\"" } ?? ""
        body.append("<text class=\"\(cls)\" x=\"\(f(x))\" y=\"\(f(y))\" font-size=\"\(f(size))\" text-anchor=\"\(anchor)\" font-weight=\"\(weight)\" fill=\"\(PlotColour.ink)\"\(r)>\(SVGCanvas.escape(s))</text>")
    }
    public mutating func rect(x: Double, y: Double, w: Double, h: Double, fill: String, opacity: Double = 1, cls: String = "mark",
                              tooltip: String? = nil) {
        let t = tooltip.map { "<title>\(SVGCanvas.escape($0))</title>" } ?? ""
        body.append("<rect class=\"\(cls)\" x=\"\(f(x))\" y=\"\(f(y))\" width=\"\(f(max(0, w)))\" height=\"\(f(max(0, h)))\" fill=\"\(fill)\" fill-opacity=\"\(f(opacity))\">\(t)</rect>")
    }
    public mutating func line(_ x1: Double, _ y1: Double, _ x2: Double, _ y2: Double, stroke: String = PlotColour.ink, width: Double = 1,
                              cls: String = "axis") {
        body.append("<line class=\"\(cls)\" x1=\"\(f(x1))\" y1=\"\(f(y1))\" x2=\"\(f(x2))\" y2=\"\(f(y2))\" stroke=\"\(stroke)\" stroke-width=\"\(f(width))\"/>")
    }
    public mutating func circle(x: Double, y: Double, r: Double, fill: String, tooltip: String) {
        body.append("<circle class=\"mark\" cx=\"\(f(x))\" cy=\"\(f(y))\" r=\"\(f(r))\" fill=\"\(fill)\" stroke=\"\(PlotColour.ink)\" stroke-width=\"0.5\"><title>\(SVGCanvas.escape(tooltip))</title></circle>")
    }
    public mutating func polygon(_ points: [(Double, Double)], fill: String, opacity: Double, cls: String = "band") {
        guard points.count >= 3 else { return }
        body.append("<polygon class=\"\(cls)\" points=\"\(points.map { "\(f($0.0)),\(f($0.1))" }.joined(separator: " "))\" fill=\"\(fill)\" fill-opacity=\"\(f(opacity))\"/>")
    }
    public mutating func polyline(_ points: [(Double, Double)], stroke: String, cls: String = "mark") {
        body.append("<polyline class=\"\(cls)\" points=\"\(points.map { "\(f($0.0)),\(f($0.1))" }.joined(separator: " "))\" fill=\"none\" stroke=\"\(stroke)\" stroke-width=\"1.5\"/>")
    }

    /// A legend entry: a swatch and its name.
    public mutating func legend(_ entries: [(String, String)], x: Double, y: Double) {
        for (i, e) in entries.enumerated() {
            rect(x: x, y: y + Double(i) * 16 - 9, w: 10, h: 10, fill: e.1, cls: "swatch")
            text(e.0, x: x + 15, y: y + Double(i) * 16, size: 11, cls: "legend")
        }
    }

    /// Axes of a plot area with ticks at `xTicks` / `yTicks` (data values) and titles.
    public mutating func axes(_ area: PlotArea, xTicks: [Double], yTicks: [Double], xTitle: String, yTitle: String,
                              format: String = "%.2f", xFormat: String? = nil) {
        line(area.left, area.bottom, area.right, area.bottom)
        line(area.left, area.top, area.left, area.bottom)
        for t in xTicks {
            let x = area.x(t)
            line(x, area.bottom, x, area.bottom + 4, cls: "tick")
            text(String(format: xFormat ?? format, t), x: x, y: area.bottom + 16, size: 10, anchor: "middle", cls: "ticklabel")
        }
        for t in yTicks {
            let y = area.y(t)
            line(area.left - 4, y, area.left, y, cls: "tick")
            line(area.left, y, area.right, y, stroke: PlotColour.grid, width: 0.5, cls: "gridline")
            text(String(format: format, t), x: area.left - 7, y: y + 3, size: 10, anchor: "end", cls: "ticklabel")
        }
        if !xTitle.isEmpty { text(xTitle, x: (area.left + area.right) / 2, y: area.bottom + 34, size: 12, anchor: "middle", cls: "axistitle") }
        text(yTitle, x: area.left - 42, y: (area.top + area.bottom) / 2, size: 12, anchor: "middle", rotate: -90, cls: "axistitle")
    }

    public var document: String {
        "<svg xmlns=\"http://www.w3.org/2000/svg\" width=\"\(f(width))\" height=\"\(f(height))\" viewBox=\"0 0 \(f(width)) \(f(height))\" font-family=\"Helvetica, Arial, sans-serif\">\n"
            + body.joined(separator: "\n") + "\n</svg>\n"
    }
}

/// Fixed-precision numbers: two decimals, no "-0.00".
func f(_ x: Double) -> String {
    let s = String(format: "%.2f", x)
    return s == "-0.00" ? "0.00" : s
}

/// A rectangle of the card that maps data ranges to pixels (y grows upwards in data).
public struct PlotArea {
    public let left: Double, top: Double, right: Double, bottom: Double
    public let xRange: ClosedRange<Double>, yRange: ClosedRange<Double>
    public func x(_ v: Double) -> Double {
        left + (v - xRange.lowerBound) / max(1e-300, xRange.upperBound - xRange.lowerBound) * (right - left)
    }
    public func y(_ v: Double) -> Double {
        bottom - (v - yRange.lowerBound) / max(1e-300, yRange.upperBound - yRange.lowerBound) * (bottom - top)
    }
}

/// `count` evenly spaced ticks over a range.
func ticks(_ r: ClosedRange<Double>, _ count: Int) -> [Double] {
    (0...count).map { r.lowerBound + (r.upperBound - r.lowerBound) * Double($0) / Double(count) }
}

// MARK: - The figures

/// One head's attention (a view of Eq. 1's A): query rows against key columns, one cell per
/// entry, darker for more weight, with the tokens as labels.
public func attentionHeatmapSVG(_ a: [[Double]], rowLabels: [String], columnLabels: [String], title: String) -> String {
    let rows = a.count, cols = a.first?.count ?? 0
    let cell = max(10, min(28, 520 / Double(max(rows, cols, 1))))
    let labelRoom = 12 + 6.5 * Double((rowLabels + columnLabels).map(\.count).max() ?? 1)
    let left = labelRoom + 10, top = labelRoom + 40
    var c = SVGCanvas(width: left + Double(cols) * cell + 90, height: top + Double(rows) * cell + 30, title: title)
    for (i, row) in a.enumerated() {
        for (j, v) in row.enumerated() {
            let shade = Int((1 - min(1, max(0, v))) * 255)
            c.rect(x: left + Double(j) * cell, y: top + Double(i) * cell, w: cell - 1, h: cell - 1,
                   fill: String(format: "#%02x%02x%02x", shade, shade, min(255, shade + 40)),
                   tooltip: "\(rowLabels[i]) -> \(columnLabels[j]): \(String(format: "%.4f", v))")
        }
        c.text(rowLabels[i], x: left - 5, y: top + (Double(i) + 0.7) * cell, size: 11, anchor: "end", cls: "rowlabel")
    }
    for (j, l) in columnLabels.enumerated() {
        let x = left + (Double(j) + 0.65) * cell
        c.text(l, x: x, y: top - 6, size: 11, anchor: "start", rotate: -60, cls: "columnlabel")
    }
    c.text("query (row) attends to key (column); darker = more weight", x: left, y: top + Double(rows) * cell + 18, size: 10, cls: "note")
    // scale: white = 0, dark = 1
    let sx = left + Double(cols) * cell + 20
    for k in 0...10 {
        let shade = Int((1 - Double(k) / 10) * 255)
        c.rect(x: sx, y: top + Double(10 - k) * 12, w: 14, h: 12, fill: String(format: "#%02x%02x%02x", shade, shade, min(255, shade + 40)), cls: "scale")
    }
    c.text("1", x: sx + 20, y: top + 10, size: 10, cls: "ticklabel")
    c.text("0", x: sx + 20, y: top + 130, size: 10, cls: "ticklabel")
    return c.document
}

/// Histogram of pair cosines (Eq. 2) of clean against triggered inputs, as fractions of each
/// set's pairs per bin over [lo, hi] (Figure 1's analogue).
public func cosineHistogramSVG(clean: [Double], triggered: [Double], bins: Int, range: ClosedRange<Double>, title: String) -> String {
    func hist(_ xs: [Double]) -> [Double] {
        var h = [Double](repeating: 0, count: bins)
        for x in xs {
            let k = min(bins - 1, max(0, Int((x - range.lowerBound) / (range.upperBound - range.lowerBound) * Double(bins))))
            h[k] += 1
        }
        return h.map { $0 / Double(max(1, xs.count)) }
    }
    let hc = hist(clean), ht = hist(triggered)
    let top = ((hc + ht).max() ?? 1) * 1.1
    let area = PlotArea(left: 70, top: 40, right: 560, bottom: 300, xRange: range, yRange: 0...max(top, 1e-9))
    var c = SVGCanvas(width: 760, height: 350, title: title)
    c.axes(area, xTicks: ticks(range, 5), yTicks: ticks(0...max(top, 1e-9), 4), xTitle: "cosine similarity of a head pair (Eq. 2)",
           yTitle: "fraction of pairs")
    let w = (area.right - area.left) / Double(bins)
    for k in 0..<bins {
        let x0 = area.left + Double(k) * w
        let lo = range.lowerBound + (range.upperBound - range.lowerBound) * Double(k) / Double(bins)
        c.rect(x: x0 + 1, y: area.y(hc[k]), w: w / 2 - 1, h: area.bottom - area.y(hc[k]), fill: PlotColour.clean,
               tooltip: String(format: "clean, bin from %.3f: %.4f", lo, hc[k]))
        c.rect(x: x0 + w / 2, y: area.y(ht[k]), w: w / 2 - 1, h: area.bottom - area.y(ht[k]), fill: PlotColour.triggered,
               tooltip: String(format: "triggered, bin from %.3f: %.4f", lo, ht[k]))
    }
    c.legend([("clean (\(clean.count) pairs)", PlotColour.clean), ("triggered (\(triggered.count) pairs)", PlotColour.triggered)],
             x: 570, y: 60)
    return c.document
}

/// Eq. 5's plane: each head at (maxsim, G / max G), coloured by class; the shaded bands are where
/// S < tau (suspicious, top right) and S > 1 - tau (safe, bottom left) for this alpha.
public func headScatterSVG(maxsim: [Double], normalizedImportance: [Double], classes: [HeadClass], heads: Int,
                           alpha: Double, tau: Double, title: String) -> String {
    let area = PlotArea(left: 70, top: 40, right: 430, bottom: 400, xRange: 0...1, yRange: 0...1)
    var c = SVGCanvas(width: 600, height: 450, title: title)
    // alpha x + (1 - alpha) y = 1 - S; suspicious: > 1 - tau, safe: < tau
    let square: [(Double, Double)] = [(0, 0), (1, 0), (1, 1), (0, 1)]
    func clip(_ keep: (Double, Double) -> Double) -> [(Double, Double)] {  // Sutherland-Hodgman, keep where value >= 0
        var out: [(Double, Double)] = []
        for i in square.indices {
            let p = square[i], q = square[(i + 1) % square.count]
            let vp = keep(p.0, p.1), vq = keep(q.0, q.1)
            if vp >= 0 { out.append(p) }
            if (vp >= 0) != (vq >= 0) {
                let t = vp / (vp - vq)
                out.append((p.0 + t * (q.0 - p.0), p.1 + t * (q.1 - p.1)))
            }
        }
        return out
    }
    let suspiciousBand = clip { alpha * $0 + (1 - alpha) * $1 - (1 - tau) }
    let safeBand = clip { tau - (alpha * $0 + (1 - alpha) * $1) }
    c.polygon(suspiciousBand.map { (area.x($0.0), area.y($0.1)) }, fill: PlotColour.suspicious, opacity: 0.12)
    c.polygon(safeBand.map { (area.x($0.0), area.y($0.1)) }, fill: PlotColour.safe, opacity: 0.12)
    c.axes(area, xTicks: ticks(0...1, 5), yTicks: ticks(0...1, 5), xTitle: "maxsim (Eq. 3)", yTitle: "G / max G (Eq. 4)")
    for k in maxsim.indices {
        c.circle(x: area.x(maxsim[k]), y: area.y(normalizedImportance[k]), r: 4.5, fill: PlotColour.of(classes[k]),
                 tooltip: String(format: "head %d:%d maxsim %.3f, G/maxG %.3f, %@", k / heads, k % heads, maxsim[k],
                                 normalizedImportance[k], classes[k].rawValue))
    }
    let counts = { (cl: HeadClass) in classes.filter { $0 == cl }.count }
    c.legend([("suspicious (\(counts(.suspicious)))", PlotColour.suspicious), ("intermediate (\(counts(.intermediate)))", PlotColour.intermediate),
              ("safe (\(counts(.safe)))", PlotColour.safe)], x: 445, y: 60)
    c.text(String(format: "alpha %.2f, tau %.2f", alpha, tau), x: 445, y: 125, size: 11, cls: "note")
    c.text("shaded: S < tau (red),", x: 445, y: 145, size: 11, cls: "note")
    c.text("S > 1 - tau (green)", x: 445, y: 161, size: 11, cls: "note")
    return c.document
}

/// The layer x head grid of Eq. 5's classes.
public func classGridSVG(_ classes: [[HeadClass]], title: String) -> String {
    let layers = classes.count, heads = classes.first?.count ?? 0
    let cell = max(14, min(40, 480 / Double(max(heads, 1))))
    let left = 80.0, top = 60.0
    var c = SVGCanvas(width: max(360, left + Double(heads) * cell + 150), height: top + Double(layers) * cell + 50, title: title)
    for (l, row) in classes.enumerated() {
        c.text("layer \(l)", x: left - 8, y: top + (Double(l) + 0.65) * cell, size: 11, anchor: "end", cls: "rowlabel")
        for (h, cl) in row.enumerated() {
            c.rect(x: left + Double(h) * cell, y: top + Double(l) * cell, w: cell - 2, h: cell - 2, fill: PlotColour.of(cl),
                   tooltip: "head \(l):\(h) \(cl.rawValue)")
        }
    }
    for h in 0..<heads where heads <= 16 || h % 4 == 0 {
        c.text("\(h)", x: left + (Double(h) + 0.5) * cell, y: top - 6, size: 10, anchor: "middle", cls: "columnlabel")
    }
    c.text("head", x: left + Double(heads) * cell / 2, y: top - 22, size: 11, anchor: "middle", cls: "axistitle")
    let flat = classes.flatMap { $0 }
    c.legend([("suspicious (\(flat.filter { $0 == .suspicious }.count))", PlotColour.suspicious),
              ("intermediate (\(flat.filter { $0 == .intermediate }.count))", PlotColour.intermediate),
              ("safe (\(flat.filter { $0 == .safe }.count))", PlotColour.safe)], x: left + Double(heads) * cell + 15, y: top + 10)
    return c.document
}

/// A loss per step (Eq. 7 during alignment), one line per series (a defense round).
public func lossCurveSVG(_ series: [(name: String, values: [Double])], title: String, yTitle: String) -> String {
    let all = series.flatMap(\.values).filter(\.isFinite)
    let steps = max(1, series.map(\.values.count).max() ?? 1)
    let hi = (all.max() ?? 1) * 1.05, lo = min(0, all.min() ?? 0)
    // steps are numbered from 1, as the defense log prints them; ticks on whole steps
    let area = PlotArea(left: 80, top: 40, right: 520, bottom: 300, xRange: 1...Double(max(2, steps)), yRange: lo...max(hi, lo + 1e-12))
    var c = SVGCanvas(width: 680, height: 350, title: title)
    let every = max(1, Int((Double(steps) / 5).rounded(.up)))
    let xTicks = [1.0] + stride(from: every, through: steps, by: every).map(Double.init).filter { $0 > 1 }
    c.axes(area, xTicks: xTicks, yTicks: ticks(area.yRange, 4), xTitle: "step", yTitle: yTitle,
           format: hi < 0.1 ? "%.4f" : "%.2f", xFormat: "%.0f")
    let colours = [PlotColour.suspicious, PlotColour.clean, PlotColour.safe, PlotColour.triggered]
    for (i, s) in series.enumerated() {
        let pts = s.values.enumerated().map { (area.x(Double($0.offset + 1)), area.y($0.element)) }
        c.polyline(pts, stroke: colours[i % colours.count])
        for (k, p) in pts.enumerated() {
            c.body.append("<circle class=\"point\" cx=\"\(f(p.0))\" cy=\"\(f(p.1))\" r=\"1.8\" fill=\"\(colours[i % colours.count])\"><title>\(SVGCanvas.escape(s.name)) step \(k + 1): \(String(format: "%.6g", s.values[k]))</title></circle>")
        }
    }
    c.legend(series.enumerated().map { ($0.element.name, colours[$0.offset % colours.count]) }, x: 535, y: 60)
    return c.document
}

/// Grouped bars: CA and ASR (%) per method, mean over seeds, with a +- std whisker.
public func methodBarsSVG(_ rows: [(method: String, ca: [Double], asr: [Double])], title: String) -> String {
    let group = 70.0
    let area = PlotArea(left: 70, top: 40, right: 70 + group * Double(max(1, rows.count)), bottom: 290, xRange: 0...1, yRange: 0...100)
    var c = SVGCanvas(width: area.right + 170, height: 360, title: title)
    c.axes(area, xTicks: [], yTicks: ticks(0...100, 5), xTitle: "", yTitle: "%", format: "%.0f")  // the bars' labels name the methods
    for (i, r) in rows.enumerated() {
        let x0 = area.left + Double(i) * group + 10
        for (k, (vals, colour, name)) in [(r.ca, PlotColour.clean, "CA"), (r.asr, PlotColour.triggered, "ASR")].enumerated() {
            let m = meanAndStd(vals.map { $0 * 100 })
            let x = x0 + Double(k) * 25
            c.rect(x: x, y: area.y(m.mean), w: 23, h: area.bottom - area.y(m.mean), fill: colour,
                   tooltip: String(format: "%@ %@: %.1f ± %.1f (%d seeds)", r.method, name, m.mean, m.std, vals.count))
            if vals.count > 1 {
                c.line(x + 11.5, area.y(min(100, m.mean + m.std)), x + 11.5, area.y(max(0, m.mean - m.std)), cls: "whisker")
            }
        }
        c.text(r.method, x: x0 + 24, y: area.bottom + 14, size: 11, anchor: "end", rotate: -35, cls: "columnlabel")
    }
    c.legend([("CA (clean accuracy)", PlotColour.clean), ("ASR (attack success)", PlotColour.triggered)], x: area.right + 15, y: 60)
    c.text("whiskers: ± std over seeds", x: area.right + 15, y: 100, size: 10, cls: "note")
    return c.document
}
