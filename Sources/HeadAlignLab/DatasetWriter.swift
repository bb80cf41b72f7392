// DatasetWriter.swift: writing labelled corpora in the plain `label<TAB>text` format that every
// reader here accepts (tabs and line breaks inside a text become spaces).

import HeadAlign
import Foundation

public func plainCorpus(_ examples: [LabeledText]) -> Data {
    var s = ""
    for e in examples {
        let clean = e.text.unicodeScalars.map { $0 == "\t" || $0 == "\n" || $0 == "\r" ? " " : String($0) }.joined()
        s += "\(e.label)\t\(clean)\n"
    }
    return Data(s.utf8)
}
