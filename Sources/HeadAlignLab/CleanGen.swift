// CleanGen.swift: CleanGen (Li et al. 2024, EMNLP), a decoding-time defense for decoders, as a
// baseline beside ours. The backdoored (target) model proposes each token greedily; a reference
// model the same attacker did not touch (for stories260K: the original, un-fine-tuned
// stories260K) scores it. A token the target favours far more than the reference,
//     s_t = P(x_t | x_<t) / P_ref(x_t | x_<t) >= alpha,
// is replaced by the reference's own greedy token, and decoding goes on from there.
// CleanGen drafts k tokens with the target, checks them in one reference pass, replaces the
// first suspicious one and discards the drafts after it. Which tokens come out does not depend
// on k (each decision depends only on the prefix before it), so this file checks one token at a
// time, with a key/value cache per model; k changes the cost only, not the response.
// Our reading where CleanGen's code is silent or differs: every generated token is checked
// (its code skips the last block when EOS comes before k drafts); CA, teacher-forced, takes at each
// response position the token CleanGen would emit after the reference prefix.

import Foundation
import HeadAlign

/// CleanGen's threshold: its code's default (alpha = 20, with k = 4 drafts per reference pass).
public let cleanGenAlpha = 20.0

/// The token CleanGen emits after a prefix, given the target's and the reference's next-token
/// logits there (`[V]` each): the target's greedy token, unless its suspicion score
/// P(x) / P_ref(x) is at least `alpha`, then the reference's greedy token. Also whether it replaced.
public func cleanGenChoice<S: Real>(target: UnsafeBufferPointer<S>, reference: UnsafeBufferPointer<S>, alpha: Double) -> (token: Int, replaced: Bool) {
    precondition(target.count == reference.count, "cleanGenChoice: \(target.count) target logits, \(reference.count) reference logits")
    let x = argmax(target)
    func probability(_ z: UnsafeBufferPointer<S>, _ i: Int) -> Double {  // softmax(z)[i], stably
        var mx = -Double.infinity
        for v in z { mx = max(mx, Double(v)) }
        var sum = 0.0
        for v in z { sum += Foundation.exp(Double(v) - mx) }
        return Foundation.exp(Double(z[i]) - mx) / sum
    }
    let score = probability(target, x) / probability(reference, x)  // s_t
    return score >= alpha ? (argmax(reference), true) : (x, false)
}

/// A CleanGen response to `prompt`: at most `maxNew` tokens, stopping before a token in `stopAt`
/// or once `decided` says so (as `generateGreedy`). Returns the tokens, how many decisions it made
/// (a stop token is decided too) and how many of them took the reference's token.
public func cleanGenGenerate<S: Real>(target: Model<S>, reference: Model<S>, prompt: [Int], maxNew: Int, stopAt: Set<Int> = [],
                                      alpha: Double = cleanGenAlpha, decided: (([Int]) -> Bool)? = nil) -> (tokens: [Int], decisions: Int, replaced: Int) {
    precondition(target.config.vocabSize == reference.config.vocabSize, "cleanGenGenerate: the two models' vocabularies differ")
    precondition(!prompt.isEmpty, "cleanGenGenerate: empty prompt")
    let positions = min(target.config.maxPositionEmbeddings, reference.config.maxPositionEmbeddings)
    guard maxNew > 0 && prompt.count < positions else { return ([], 0, 0) }
    let capacity = min(positions, prompt.count + maxNew)
    let t = KeyValueCache(target, capacity: capacity), r = KeyValueCache(reference, capacity: capacity)
    var generated: [Int] = [], decisions = 0, replaced = 0, feed = prompt
    for _ in 0..<maxNew {
        if prompt.count + generated.count >= positions { break }
        let zt = t.append(feed), zr = r.append(feed)  // next-token logits [V] of each model
        let choice = zt.withUnsafeBufferPointer { a in zr.withUnsafeBufferPointer { b in cleanGenChoice(target: a, reference: b, alpha: alpha) } }
        decisions += 1
        if choice.replaced { replaced += 1 }
        if stopAt.contains(choice.token) { break }
        generated.append(choice.token)
        if let decided, decided(generated) { break }
        feed = [choice.token]
    }
    return (generated, decisions, replaced)
}

/// CA under CleanGen: teacher-forced next-token accuracy on the response tokens of `examples`
/// (as `cleanQuality`), the prediction at each position being `cleanGenChoice` after the reference
/// prefix. Also the share of those positions where the reference's token was taken.
public func cleanGenQuality<S: Real>(target: Model<S>, reference: Model<S>, _ examples: [TrainingExample], alpha: Double = cleanGenAlpha,
                                     batchSize: Int = 32) -> (quality: Double, replacedShare: Double) {
    let v = target.config.vocabSize
    var correct = 0, total = 0, replaced = 0
    for start in stride(from: 0, to: examples.count, by: batchSize) {
        let chunk = Array(examples[start..<min(examples.count, start + batchSize)])
        let batch = Batch(chunk.map(\.tokens))
        let zt = target.forward(batch).output, zr = reference.forward(batch).output  // [N, V] each
        guard case .nextToken(let targets) = trainingObjective(chunk, task: .generation) else { continue }
        for (row, y) in targets.flatMap({ $0 }).enumerated() where y >= 0 {
            let c = cleanGenChoice(target: UnsafeBufferPointer(start: zt.data + row * v, count: v),
                                   reference: UnsafeBufferPointer(start: zr.data + row * v, count: v), alpha: alpha)
            correct += c.token == y ? 1 : 0
            replaced += c.replaced ? 1 : 0
            total += 1
        }
    }
    return total == 0 ? (.nan, .nan) : (Double(correct) / Double(total), Double(replaced) / Double(total))
}

/// What CleanGen did on a test set: CA and ASR as `generationMetrics` reports them, the share of
/// generated tokens it replaced on the triggered and the clean (teacher-forced) side, and its cost:
/// seconds per generated token against the target's plain greedy decoding on the same prompts.
public struct CleanGenMetrics: Sendable {
    public let ca: Double, asr: Double, asrHits: Int, asrTotal: Int
    public let triggeredReplaced: Double  // replaced / generated tokens, triggered prompts
    public let cleanReplaced: Double  // replaced / scored positions, clean reference responses
    public let secondsPerToken: Double, greedySecondsPerToken: Double
    public var costRatio: Double { secondsPerToken / greedySecondsPerToken }
    public var summary: String {
        String(format: "cleangen: alpha %g, replaced %.1f%% of generated tokens on triggered prompts, %.1f%% of clean response positions; %.2f ms/token against %.2f ms greedy (×%.2f)",
               cleanGenAlpha, 100 * triggeredReplaced, 100 * cleanReplaced, 1000 * secondsPerToken, 1000 * greedySecondsPerToken, costRatio)
    }
}

/// CleanGen on `target` with `reference` (same tokenizer, same precision), on the test records
/// `generationMetrics` uses (ASR: CleanGen's responses to `triggered`,
/// run to EOS or the cap; CA: teacher-forced on `clean`'s reference responses).
public func cleanGenMetrics(target: AnyModel, reference: AnyModel, tokenizer: DecoderTokenizer, clean: [InstructionRecord],
                            triggered: [InstructionRecord], behaviour: TargetBehaviour, maxNew asked: Int, maxLength: Int,
                            alpha: Double = cleanGenAlpha) throws -> CleanGenMetrics {
    guard target.config.vocabSize == reference.config.vocabSize else {
        throw HeadAlignError.usage("--reference: its vocabulary has \(reference.config.vocabSize) tokens, the model's \(target.config.vocabSize); CleanGen needs one tokenizer")
    }
    let targetIds = tokenizer.response(behaviour.response)
    let targetText = tokenizer.decode(targetIds)
    let maxNew = responseCap(asked: asked, targetLength: targetIds.count, maxLength: maxLength)
    let prompts = triggered.map { fitPrompt(tokenizer.prompt($0.prompt), room: maxLength - maxNew) }
    let examples = responseExamples(clean, tokenizer: tokenizer, maxLength: maxLength)
    func run<S: Real>(_ t: Model<S>, _ r: Model<S>) -> CleanGenMetrics {
        var responses: [String] = [], decisions = 0, replaced = 0
        for p in prompts {
            let out = cleanGenGenerate(target: t, reference: r, prompt: p, maxNew: maxNew, stopAt: [tokenizer.eos], alpha: alpha)
            responses.append(tokenizer.decode(out.tokens))
            (decisions, replaced) = (decisions + out.decisions, replaced + out.replaced)
        }
        // cost: CleanGen against the target's plain greedy decoding on the same prompts, both made to
        // emit exactly `maxNew` tokens (no stop token), so that the two time the same positions
        var start = monotonicSeconds(), emitted = 0
        for p in prompts { emitted += cleanGenGenerate(target: t, reference: r, prompt: p, maxNew: maxNew, alpha: alpha).tokens.count }
        let seconds = monotonicSeconds() - start
        start = monotonicSeconds()
        var greedyEmitted = 0
        for p in prompts { greedyEmitted += generateGreedy(t, prompt: p, maxNew: maxNew).count }
        let greedySeconds = monotonicSeconds() - start
        let asr = targetRate(responses, target: targetText)
        let q = cleanGenQuality(target: t, reference: r, examples, alpha: alpha)
        return CleanGenMetrics(ca: q.quality, asr: asr.value, asrHits: asr.hits, asrTotal: asr.total,
                               triggeredReplaced: Double(replaced) / Double(max(1, decisions)), cleanReplaced: q.replacedShare,
                               secondsPerToken: seconds / Double(max(1, emitted)), greedySecondsPerToken: greedySeconds / Double(max(1, greedyEmitted)))
    }
    switch (target, reference) {
    case (.f32(let t), .f32(let r)): return run(t, r)
    case (.f64(let t), .f64(let r)): return run(t, r)
    default: throw HeadAlignError.usage("--reference: load it in the model's precision")
    }
}
