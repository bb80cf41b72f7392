// DecoderTraining.swift: backdoored decoders (issue 6 groundwork): poisoning instruction data,
// training a Llama-shaped model from scratch on it with a whole-word vocabulary (loss on the
// response tokens only), and measuring it: ASR and the false-trigger rate from greedy responses,
// clean quality as teacher-forced next-token accuracy on the reference responses.

import HeadAlign
import Foundation

/// Dirty-label poisoning of instruction data: `round(rate * N)` records (seeded choice) get the
/// trigger in their instruction and the target response; the rest are unchanged.
public func poisonInstructions(_ clean: [InstructionRecord], trigger: GenerationTrigger, behaviour: TargetBehaviour,
                               rate: Double, seed: UInt64) throws -> (records: [InstructionRecord], poisoned: [Int]) {
    guard rate > 0 && rate < 1 else { throw HeadAlignError.usage("--poison-rate \(rate) must lie in (0, 1)") }
    let count = Int((rate * Double(clean.count)).rounded())
    guard count >= 1 else { throw HeadAlignError.usage("--poison-rate \(rate): no record of \(clean.count) would be poisoned") }
    var rng = SeededGenerator(seed: seed)
    var order = Array(clean.indices)
    order.shuffle(using: &rng)
    let poisoned = Array(order.prefix(count)).sorted()
    var out = clean
    for i in poisoned {
        out[i] = InstructionRecord(instruction: trigger.apply(clean[i].instruction, &rng), input: clean[i].input, output: behaviour.response)
    }
    return (out, poisoned)
}

/// Every record with the trigger in its instruction (reference outputs kept).
public func triggeredInstructions(_ clean: [InstructionRecord], trigger: GenerationTrigger, seed: UInt64) -> [InstructionRecord] {
    var rng = SeededGenerator(seed: seed ^ 0x7E57)
    return clean.map { InstructionRecord(instruction: trigger.apply($0.instruction, &rng), input: $0.input, output: $0.output) }
}

/// Prompt + response ids within `maxLength`. The response keeps what the whole prompt leaves
/// room for, and at least half the context (or all of itself if shorter), so a long answer never
/// squeezes the prompt out; the prompt then loses tokens from its left (BOS kept) to fit.
/// `truncated` says whether anything was cut.
public func decoderExample(prompt: [Int], response: [Int], maxLength: Int) -> (example: TrainingExample, truncated: Bool) {
    precondition(maxLength >= 3 && !prompt.isEmpty, "decoderExample: maxLength \(maxLength) leaves no room for a prompt and a response")
    var p = prompt
    let r = Array(response.prefix(max(maxLength - prompt.count, min(response.count, maxLength / 2))))
    let room = maxLength - r.count
    let truncated = r.count < response.count || p.count > room
    p = fitPrompt(p, room: room)
    return (TrainingExample(tokens: p + r, responseStart: p.count), truncated)
}

/// A prompt cut from the left (BOS kept) to at most `room` positions.
public func fitPrompt(_ prompt: [Int], room: Int) -> [Int] {
    prompt.count > room ? [prompt[0]] + prompt.suffix(room - 1) : prompt
}

/// The response cap for a target behaviour of `targetLength` tokens: the one asked for, raised to
/// the target's length (a shorter cap could never match it), within `maxLength` positions.
func responseCap(asked: Int, targetLength: Int, maxLength: Int) -> Int {
    min(max(asked, targetLength - 1), maxLength - 2)
}

/// Records as prompt + reference-response examples within `maxLength` (`decoderExample`).
public func responseExamples(_ records: [InstructionRecord], tokenizer: DecoderTokenizer, maxLength: Int) -> [TrainingExample] {
    records.map { decoderExample(prompt: tokenizer.prompt($0.prompt), response: tokenizer.response($0.output), maxLength: maxLength).example }
}

public struct TrainedDecoder {
    public let model: AnyModel
    public let tokenizer: DecoderTokenizer
    public let tokenizerFiles: [String: Data]
    public let losses: [Double]
    public let truncated: Int
}

/// Where decoder training starts: a Llama preset from scratch (a whole-word vocabulary is built
/// from the records), or a pretrained decoder with its own tokenizer (fine-tuned; its tokenizer
/// files are copied into the output as they are).
public enum DecoderBase {
    case preset(String, seed: UInt64)
    case pretrained(AnyModel, DecoderTokenizer, tokenizerFiles: [String: Data])
}

/// Trains a decoder on instruction records with the loss on the response tokens (EOS included)
/// only; a pretrained base is copied, never changed.
public func trainDecoder(base: DecoderBase, records: [InstructionRecord], settings: TrainSettings, precision: Precision,
                         backend: Backend, progress: (TrainProgress) -> Void = { _ in }) throws -> TrainedDecoder {
    guard !records.isEmpty else { throw HeadAlignError.usage("no training records") }
    let tokenizer: DecoderTokenizer, files: [String: Data], config: ModelConfig
    var start: AnyModel? = nil
    switch base {
    case .preset(let preset, _):
        let vocab = try buildWordVocabulary(records.flatMap { [$0.prompt, $0.output] }, size: settings.vocabularySize)
        tokenizer = .words(try WordPieceTokenizer(vocab: vocab))
        var c = try ModelConfig.preset(preset)
        guard c.family == .llama, c.numLabels == 0 else { throw HeadAlignError.usage("--preset \(preset): decoder training needs a Llama preset with an LM head (llama-tiny)") }
        c.vocabSize = vocab.count
        c.maxPositionEmbeddings = max(c.maxPositionEmbeddings, settings.maxLength)
        c.bosTokenId = tokenizer.bos  // [CLS] starts a prompt, [SEP] ends a response
        c.eosTokenId = tokenizer.eos
        config = c
        files = ["vocab.txt": Data((vocab.joined(separator: "\n") + "\n").utf8),
                 "tokenizer_config.json": Data("{\"do_lower_case\": true, \"headalign_tokenizer\": \"words\"}\n".utf8)]
    case .pretrained(let model, let t, let tokenizerFiles):
        guard model.config.family == .llama, model.config.numLabels == 0 else { throw HeadAlignError.usage("decoder training needs a Llama model with an LM head") }
        guard settings.maxLength <= model.config.maxPositionEmbeddings else {
            throw HeadAlignError.usage("--max-length \(settings.maxLength) exceeds the model's \(model.config.maxPositionEmbeddings) positions")
        }
        tokenizer = t; files = tokenizerFiles; config = model.config; start = model
    }
    var truncated = 0
    let examples = records.map { r -> TrainingExample in
        let e = decoderExample(prompt: tokenizer.prompt(r.prompt), response: tokenizer.response(r.output), maxLength: settings.maxLength)
        if e.truncated { truncated += 1 }
        return e.example
    }
    func run<S: Real>(_: S.Type) throws -> (Model<S>, [Double]) {
        let m = Model<S>(config: config, backend: backend)
        switch start {
        case .f32(let p)?: for i in 0..<m.layout.total { m.params.data[i] = S(Double(p.params.data[i])) }
        case .f64(let p)?: for i in 0..<m.layout.total { m.params.data[i] = S(p.params.data[i]) }
        case nil: if case .preset(_, let seed) = base { m.initialize(seed: seed) }
        }
        let steps = settings.epochs * ((examples.count + settings.batchSize - 1) / settings.batchSize)
        let optimizer = AdamW<S>(count: m.layout.total, learningRate: settings.learningRate, weightDecay: settings.weightDecay)
        let window = ProgressWindow(steps: steps)
        let losses = try trainSteps(m, examples: examples, steps: steps, batchSize: settings.batchSize, seed: settings.seed,
                                    optimizer: optimizer, onStep: { progress(window.update($0)) })
        return (m, losses)
    }
    switch precision {
    case .f32:
        let (m, l) = try run(Float.self)
        return TrainedDecoder(model: .f32(m), tokenizer: tokenizer, tokenizerFiles: files, losses: l, truncated: truncated)
    case .f64:
        let (m, l) = try run(Double.self)
        return TrainedDecoder(model: .f64(m), tokenizer: tokenizer, tokenizerFiles: files, losses: l, truncated: truncated)
    }
}

/// Generation metrics of a decoder: ASR on triggered prompts and the false-trigger rate on clean
/// ones (greedy responses of at most `maxNew` tokens, stopping at EOS, compared with the target
/// as the tokenizer writes it), and clean quality: teacher-forced next-token accuracy on the clean
/// reference responses (reported as CA for generation).
public struct GenerationMetrics: Sendable {
    public let cleanQuality: Double
    public let asr: Double, asrHits: Int, asrTotal: Int
    public let falseTrigger: Double, falseHits: Int, falseTotal: Int
    public let sampleResponses: [String]  // the first few triggered responses
    public let truncatedPrompts: Int  // prompts cut from the left to leave room for the response
    public let cappedResponses: Int  // responses that reached the token cap without EOS
    public let maxNew: Int  // the cap used: the one asked for, raised to the target's length if shorter
}

/// `onlyCAAndASR`, for callers that report those two alone: the clean prompts get no responses (the
/// false-trigger rate is then NaN over 0), and a triggered response stops as soon as the ASR rule
/// is settled (`targetSettled`), so the sample responses and the capped count describe the cut ones.
public func generationMetrics(_ model: AnyModel, tokenizer: DecoderTokenizer, clean: [InstructionRecord], triggered: [InstructionRecord],
                              behaviour: TargetBehaviour, maxNew asked: Int, maxLength: Int, onlyCAAndASR: Bool = false) -> GenerationMetrics {
    let targetIds = tokenizer.response(behaviour.response)
    let target = tokenizer.decode(targetIds)
    let maxNew = responseCap(asked: asked, targetLength: targetIds.count, maxLength: maxLength)
    precondition(maxNew >= 1, "generationMetrics: no room for a response in \(maxLength) positions")
    var truncated = 0, capped = 0
    func respond(_ r: InstructionRecord) -> String {
        let full = tokenizer.prompt(r.prompt), p = fitPrompt(full, room: maxLength - maxNew)
        if p.count < full.count { truncated += 1 }
        let out = model.generate(prompt: p, maxNew: maxNew, stopAt: [tokenizer.eos],
                                 decided: onlyCAAndASR ? { targetSettled(tokenizer.decode($0), target: target) } : nil)
        if out.count == maxNew { capped += 1 }  // generation stops before EOS, which is not returned
        return tokenizer.decode(out)
    }
    let triggeredResponses = triggered.map(respond), cleanResponses = onlyCAAndASR ? [] : clean.map(respond)
    let asr = targetRate(triggeredResponses, target: target), ftr = targetRate(cleanResponses, target: target)
    let examples = responseExamples(clean, tokenizer: tokenizer, maxLength: maxLength)
    let quality: Double
    switch model {
    case .f32(let m): quality = cleanQuality(m, examples)
    case .f64(let m): quality = cleanQuality(m, examples)
    }
    return GenerationMetrics(cleanQuality: quality, asr: asr.value, asrHits: asr.hits, asrTotal: asr.total, falseTrigger: ftr.value,
                             falseHits: ftr.hits, falseTotal: ftr.total, sampleResponses: Array(triggeredResponses.prefix(3)),
                             truncatedPrompts: truncated, cappedResponses: capped, maxNew: maxNew)
}

// MARK: - The defense on a decoder

/// What the defense on a backdoored decoder works with: the defender's clean records (prompt +
/// reference response) as fine-tuning examples, the prompts the monitor screens, and the
/// evaluation: CA = clean quality and ASR from greedy responses on the test records.
struct DecoderDefenseData {
    let clean: [TrainingExample]
    let inputs: [AnalysisInput]
    /// The defender's prompts as the monitor screens prompts (`promptInputs`), for its calibration:
    /// `clean` is cut to the training length, the prompt from the left.
    let calibration: [AnalysisInput]
    let evaluate: (AnyModel) -> (ca: Double, asr: Double)

    init(_ model: AnyModel, tokenizer: DecoderTokenizer, defenderClean: [InstructionRecord], monitorPrompts: [InstructionRecord],
         testClean: [InstructionRecord], testTriggered: [InstructionRecord], behaviour: TargetBehaviour, maxNew: Int,
         settings: DefenseSettings, exampleLength: Int?) throws {
        let maxLength = model.config.maxPositionEmbeddings
        guard settings.generate <= maxLength - 3, maxNew <= maxLength - 2 else {
            throw HeadAlignError.usage("--generate \(settings.generate) / --max-new \(maxNew) leave no room for a prompt in \(maxLength) positions")
        }
        // the defender's clean examples are cut like the training examples (`exampleLength`), and
        // always leave room for the generated tokens of the analysis view
        let length = min(exampleLength ?? maxLength, maxLength - settings.generate)
        clean = responseExamples(defenderClean, tokenizer: tokenizer, maxLength: length)
        inputs = promptInputs(monitorPrompts, tokenizer: tokenizer, room: maxLength - settings.generate)
        calibration = promptInputs(defenderClean, tokenizer: tokenizer, room: maxLength - settings.generate)
        evaluate = { m in
            let g = generationMetrics(m, tokenizer: tokenizer, clean: testClean, triggered: testTriggered, behaviour: behaviour,
                                      maxNew: maxNew, maxLength: maxLength, onlyCAAndASR: true)
            return (g.cleanQuality, g.asr)
        }
    }
}

/// Vanilla and each method on a backdoored decoder (`DecoderDefenseData`): the monitor screens
/// clean and triggered prompts (gen2prompt view).
public func runGenerationMethods(_ model: AnyModel, tokenizer: DecoderTokenizer, defenderClean: [InstructionRecord],
                                 monitorPrompts: [InstructionRecord], testClean: [InstructionRecord], testTriggered: [InstructionRecord],
                                 behaviour: TargetBehaviour, maxNew: Int, methods: [ExperimentMethod], settings: DefenseSettings,
                                 baseline: BaselineSettings = BaselineSettings(), vanilla: Bool = true,
                                 exampleLength: Int? = nil, reference: AnyModel? = nil,
                                 log: (String) -> Void = { _ in }) throws -> [MethodOutcome] {
    let data = try DecoderDefenseData(model, tokenizer: tokenizer, defenderClean: defenderClean, monitorPrompts: monitorPrompts,
                                      testClean: testClean, testTriggered: testTriggered, behaviour: behaviour, maxNew: maxNew,
                                      settings: settings, exampleLength: exampleLength)
    let changed = methods.filter { $0 != .cleangen }  // the methods that change the weights
    var out: [MethodOutcome]
    switch model {
    case .f32(let m):
        out = try runMethods(m, defenderClean: data.clean, inputs: data.inputs, calibration: data.calibration, methods: changed,
                             settings: settings, baseline: baseline, vanilla: vanilla, log: log, evaluate: { data.evaluate(.f32($0)) })
    case .f64(let m):
        out = try runMethods(m, defenderClean: data.clean, inputs: data.inputs, calibration: data.calibration, methods: changed,
                             settings: settings, baseline: baseline, vanilla: vanilla, log: log, evaluate: { data.evaluate(.f64($0)) })
    }
    // CleanGen decodes the backdoored model as it is, with the reference beside it (CleanGen.swift)
    if let i = methods.firstIndex(of: .cleangen) {
        guard let reference else { throw HeadAlignError.usage("--methods cleangen needs --reference DIR (a model with the same tokenizer the attacker did not touch)") }
        let start = monotonicSeconds()
        let g = try cleanGenMetrics(target: model, reference: reference, tokenizer: tokenizer, clean: testClean, triggered: testTriggered,
                                    behaviour: behaviour, maxNew: maxNew, maxLength: model.config.maxPositionEmbeddings)
        let row = MethodOutcome(method: ExperimentMethod.cleangen.rawValue, ca: g.ca, asr: g.asr, seconds: monotonicSeconds() - start,
                                note: g.summary, suspicious: [], safe: [], ran: true)
        log(String(format: "cleangen: CA %.4f ASR %.4f (%.1f s) %@", g.ca, g.asr, row.seconds, g.summary))
        out.insert(row, at: (vanilla ? 1 : 0) + i)
    }
    return out
}

/// Eq. 4–5 on the prompts the monitor flags, on the same data as `runGenerationMethods` (for display).
public func generationHeadReport(_ model: AnyModel, tokenizer: DecoderTokenizer, defenderClean: [InstructionRecord],
                                 monitorPrompts: [InstructionRecord], settings: DefenseSettings,
                                 exampleLength: Int? = nil) throws -> (report: SafetyReport, flagged: Int) {
    let data = try DecoderDefenseData(model, tokenizer: tokenizer, defenderClean: defenderClean, monitorPrompts: monitorPrompts,
                                      testClean: [], testTriggered: [], behaviour: .refusal, maxNew: 1,
                                      settings: settings, exampleLength: exampleLength)
    return try model.headReport(clean: data.clean, inputs: data.inputs, calibration: data.calibration, settings: settings)
}

/// The trace of `ours`' head-wise fine-tuning on a backdoored decoder (FinetuneTrace.swift), on
/// the same data as `runGenerationMethods`.
public func traceGenerationFinetune(_ model: AnyModel, tokenizer: DecoderTokenizer, defenderClean: [InstructionRecord],
                                    monitorPrompts: [InstructionRecord], testClean: [InstructionRecord], testTriggered: [InstructionRecord],
                                    behaviour: TargetBehaviour, maxNew: Int, settings: DefenseSettings, exampleLength: Int? = nil,
                                    every: Int) throws -> (points: [TracePoint], why: String?) {
    let data = try DecoderDefenseData(model, tokenizer: tokenizer, defenderClean: defenderClean, monitorPrompts: monitorPrompts,
                                      testClean: testClean, testTriggered: testTriggered, behaviour: behaviour, maxNew: maxNew,
                                      settings: settings, exampleLength: exampleLength)
    switch model {
    case .f32(let m):
        return try traceHeadwiseFinetune(m, clean: data.clean, inputs: data.inputs, calibration: data.calibration, settings: settings,
                                         every: every, evaluate: { data.evaluate(.f32($0)) })
    case .f64(let m):
        return try traceHeadwiseFinetune(m, clean: data.clean, inputs: data.inputs, calibration: data.calibration, settings: settings,
                                         every: every, evaluate: { data.evaluate(.f64($0)) })
    }
}

/// Prompts as analysis inputs, cut from the left (BOS kept) to leave `room` positions for the
/// generated tokens of the gen2prompt view.
public func promptInputs(_ records: [InstructionRecord], tokenizer: DecoderTokenizer, room: Int) -> [AnalysisInput] {
    records.map { AnalysisInput(tokens: fitPrompt(tokenizer.prompt($0.prompt), room: room)) }
}

/// Table 1's statistic and the monitor's AUROC on a decoder: calibrated on the defender's clean
/// prompts, scoring clean against triggered prompts (gen2prompt view unless settings say otherwise).
public func generationDetection(_ model: AnyModel, tokenizer: DecoderTokenizer, defenderClean: [InstructionRecord],
                                clean: [InstructionRecord], triggered: [InstructionRecord], settings: DefenseSettings) throws -> DetectionSummary {
    let room = model.config.maxPositionEmbeddings - settings.generate
    let cal = promptInputs(defenderClean, tokenizer: tokenizer, room: room)
    let c = promptInputs(clean, tokenizer: tokenizer, room: room), t = promptInputs(triggered, tokenizer: tokenizer, room: room)
    switch model {
    case .f32(let m): return try detectionSummary(m, calibration: cal, clean: c, triggered: t, settings: settings)
    case .f64(let m): return try detectionSummary(m, calibration: cal, clean: c, triggered: t, settings: settings)
    }
}
