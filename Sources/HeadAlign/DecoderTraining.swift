// DecoderTraining.swift: backdoored decoders (issue 6 groundwork): poisoning instruction data,
// training a Llama-shaped model from scratch on it with a whole-word vocabulary (loss on the
// response tokens only), and measuring it: ASR and the false-trigger rate from greedy responses,
// clean quality as teacher-forced next-token accuracy on the reference responses.

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

/// A decoder's whole-word tokenizer: the vocabulary of `buildWordVocabulary` with `[CLS]` as BOS
/// and `[SEP]` as EOS; prompts start with BOS, responses end with EOS; decoding joins words.
public struct WordDecoderTokenizer: Sendable {
    public let words: WordPieceTokenizer
    public init(_ words: WordPieceTokenizer) { self.words = words }
    public var bos: Int { words.cls }
    public var eos: Int { words.sep }

    func body(_ text: String) -> [Int] { words.basicTokens(text).map { words.ids[$0] ?? words.unk } }
    public func prompt(_ text: String) -> [Int] { [bos] + body(text) }
    public func response(_ text: String) -> [Int] { body(text) + [eos] }
    public func decode(_ ids: [Int]) -> String { ids.filter { $0 != bos && $0 != eos }.map(words.token).joined(separator: " ") }
}

/// Prompt + response ids within `maxLength`: the prompt loses words from its left (BOS kept) so
/// that the response fits; the response is capped. `truncated` says whether anything was cut.
public func decoderExample(prompt: [Int], response: [Int], maxLength: Int) -> (example: TrainingExample, truncated: Bool) {
    precondition(maxLength >= 3 && !prompt.isEmpty, "decoderExample: maxLength \(maxLength) leaves no room for a prompt and a response")
    var r = response, p = prompt
    if r.count > maxLength - 2 { r = Array(r.prefix(maxLength - 2)) }
    let room = maxLength - r.count
    let truncated = r.count < response.count || p.count > room
    if p.count > room { p = [p[0]] + p.suffix(room - 1) }
    return (TrainingExample(tokens: p + r, responseStart: p.count), truncated)
}

public struct TrainedDecoder {
    public let model: AnyModel
    public let tokenizer: WordDecoderTokenizer
    public let tokenizerFiles: [String: Data]
    public let losses: [Double]
    public let truncated: Int
}

/// Trains a Llama-preset decoder from scratch on instruction records: a whole-word vocabulary
/// from the prompts and responses, loss on the response tokens (EOS included) only.
public func trainDecoder(preset: String, seed: UInt64, records: [InstructionRecord], settings: TrainSettings, precision: Precision,
                         backend: Backend, progress: (TrainProgress) -> Void = { _ in }) throws -> TrainedDecoder {
    guard !records.isEmpty else { throw HeadAlignError.usage("no training records") }
    let vocab = try buildWordVocabulary(records.flatMap { [$0.prompt, $0.output] }, size: settings.vocabularySize)
    let tokenizer = WordDecoderTokenizer(try WordPieceTokenizer(vocab: vocab))
    var config = try ModelConfig.preset(preset)
    guard config.family == .llama, config.numLabels == 0 else { throw HeadAlignError.usage("--preset \(preset): decoder training needs a Llama preset with an LM head (llama-tiny)") }
    config.vocabSize = vocab.count
    config.maxPositionEmbeddings = max(config.maxPositionEmbeddings, settings.maxLength)
    config.bosTokenId = tokenizer.bos  // [CLS] starts a prompt, [SEP] ends a response
    config.eosTokenId = tokenizer.eos
    var truncated = 0
    let examples = records.map { r -> TrainingExample in
        let e = decoderExample(prompt: tokenizer.prompt(r.prompt), response: tokenizer.response(r.output), maxLength: settings.maxLength)
        if e.truncated { truncated += 1 }
        return e.example
    }
    let files = ["vocab.txt": Data((vocab.joined(separator: "\n") + "\n").utf8),
                 "tokenizer_config.json": Data("{\"do_lower_case\": true, \"headalign_tokenizer\": \"words\"}\n".utf8)]
    func run<S: Real>(_: S.Type) throws -> (Model<S>, [Double]) {
        let m = Model<S>(config: config, backend: backend)
        m.initialize(seed: seed)
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
}

public func generationMetrics(_ model: AnyModel, tokenizer: WordDecoderTokenizer, clean: [InstructionRecord], triggered: [InstructionRecord],
                              behaviour: TargetBehaviour, maxNew: Int, maxLength: Int) -> GenerationMetrics {
    precondition(maxNew >= 1 && maxNew <= maxLength - 2, "generationMetrics: maxNew \(maxNew) leaves no room for a prompt in \(maxLength) positions")
    let target = tokenizer.decode(tokenizer.response(behaviour.response))
    func respond(_ r: InstructionRecord) -> String {
        var p = tokenizer.prompt(r.prompt)
        if p.count > maxLength - maxNew { p = [p[0]] + p.suffix(maxLength - maxNew - 1) }
        return tokenizer.decode(model.generate(prompt: p, maxNew: maxNew, stopAt: [tokenizer.eos]))
    }
    let triggeredResponses = triggered.map(respond), cleanResponses = clean.map(respond)
    let asr = targetRate(triggeredResponses, target: target), ftr = targetRate(cleanResponses, target: target)
    let examples = clean.map { decoderExample(prompt: tokenizer.prompt($0.prompt), response: tokenizer.response($0.output), maxLength: maxLength).example }
    let quality: Double
    switch model {
    case .f32(let m): quality = cleanQuality(m, examples)
    case .f64(let m): quality = cleanQuality(m, examples)
    }
    return GenerationMetrics(cleanQuality: quality, asr: asr.value, asrHits: asr.hits, asrTotal: asr.total, falseTrigger: ftr.value,
                             falseHits: ftr.hits, falseTotal: ftr.total, sampleResponses: Array(triggeredResponses.prefix(3)))
}

// MARK: - The defense on a decoder

/// Vanilla and each method on a backdoored decoder: the defender's clean records (prompt +
/// reference response) for calibration and fine-tuning, the monitor screening clean and triggered
/// prompts (gen2prompt view), CA = clean quality and ASR from greedy responses on the test records.
public func runGenerationMethods(_ model: AnyModel, tokenizer: WordDecoderTokenizer, defenderClean: [InstructionRecord],
                                 monitorPrompts: [InstructionRecord], testClean: [InstructionRecord], testTriggered: [InstructionRecord],
                                 behaviour: TargetBehaviour, maxNew: Int, methods: [DefenseMethod], settings: DefenseSettings,
                                 log: (String) -> Void = { _ in }) throws -> [MethodOutcome] {
    let maxLength = model.config.maxPositionEmbeddings
    guard settings.generate <= maxLength - 3, maxNew <= maxLength - 2 else {
        throw HeadAlignError.usage("--generate \(settings.generate) / --max-new \(maxNew) leave no room for a prompt in \(maxLength) positions")
    }
    let clean = defenderClean.map { decoderExample(prompt: tokenizer.prompt($0.prompt), response: tokenizer.response($0.output), maxLength: maxLength - settings.generate).example }
    let inputs = monitorPrompts.map { r -> AnalysisInput in
        var p = tokenizer.prompt(r.prompt)
        if p.count > maxLength - settings.generate { p = [p[0]] + p.suffix(maxLength - settings.generate - 1) }
        return AnalysisInput(tokens: p)
    }
    func run<S: Real>(_ m: Model<S>, wrap: @escaping (Model<S>) -> AnyModel) throws -> [MethodOutcome] {
        try runMethods(m, defenderClean: clean, inputs: inputs, methods: methods, settings: settings, log: log, evaluate: { copy in
            let g = generationMetrics(wrap(copy), tokenizer: tokenizer, clean: testClean, triggered: testTriggered, behaviour: behaviour,
                                      maxNew: maxNew, maxLength: maxLength)
            return (g.cleanQuality, g.asr)
        })
    }
    switch model {
    case .f32(let m): return try run(m, wrap: { .f32($0) })
    case .f64(let m): return try run(m, wrap: { .f64($0) })
    }
}
