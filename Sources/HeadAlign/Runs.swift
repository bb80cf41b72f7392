// Runs.swift: the method's non-generic entry points for the command line (each switches on the
// precision once; all numeric code stays generic and specialised inside the library).

import Foundation

extension AnyModel {
    public func inspect(_ inputs: [AnalysisInput], settings: InspectSettings, commandLine: String) throws -> JSONOut {
        switch self {
        case .f32(let m): return try inspectDocument(m, inputs: inputs, settings: settings, commandLine: commandLine)
        case .f64(let m): return try inspectDocument(m, inputs: inputs, settings: settings, commandLine: commandLine)
        }
    }

    public func analyze(_ inputs: [AnalysisInput], settings: AnalysisSettings) throws -> [InputAnalysis] {
        switch self {
        case .f32(let m): return try HeadAlign.analyze(m, inputs, settings: settings)
        case .f64(let m): return try HeadAlign.analyze(m, inputs, settings: settings)
        }
    }

    public func defend(clean: [TrainingExample], inputs: [AnalysisInput], calibration: [AnalysisInput]? = nil, settings: DefenseSettings,
                       log: (String) -> Void) throws -> DefenseReport {
        switch self {
        case .f32(let m): return try HeadAlign.defend(m, clean: clean, inputs: inputs, calibration: calibration, settings: settings, log: log)
        case .f64(let m): return try HeadAlign.defend(m, clean: clean, inputs: inputs, calibration: calibration, settings: settings, log: log)
        }
    }
}
