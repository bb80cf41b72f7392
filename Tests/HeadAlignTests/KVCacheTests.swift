import XCTest
import HeadAlign
import HeadAlignLab

/// The key/value cache computes the same function as the uncached forward.
final class KVCacheTests: XCTestCase {
    func model<S: Real>(_: S.Type, interleaved: Bool = false, seed: UInt64 = 3) -> Model<S> {
        var c = ModelConfig.llama(vocab: 37, d: 16, layers: 2, heads: 4, kvHeads: 2, ffn: 24, positions: 24, eps: 1e-5)
        c.initializerRange = 0.4  // peaked logits, so greedy choices are not near-ties
        c.ropeInterleaved = interleaved
        let m = Model<S>(config: c, backend: .naive)
        m.initialize(seed: seed)
        return m
    }

    func testCachedLogitsEqualTheFullForwardAtEveryPosition() {
        for interleaved in [false, true] {
            let m = model(Double.self, interleaved: interleaved)
            let tokens = [1, 5, 9, 30, 2, 17, 17, 4, 36, 0]
            let full = m.forward(Batch([tokens])).output  // [T, V]
            // the first 4 tokens as one prompt, then one token at a time
            let cache = KeyValueCache(m, capacity: tokens.count)
            var rows: [(position: Int, logits: [Double])] = [(3, cache.append(Array(tokens.prefix(4))))]
            for t in 4..<tokens.count { rows.append((t, cache.append([tokens[t]]))) }
            XCTAssertEqual(cache.length, tokens.count)
            for (t, logits) in rows {
                for j in 0..<37 {
                    XCTAssertEqual(logits[j], full.data[t * 37 + j], accuracy: 1e-12, "position \(t), logit \(j), interleaved \(interleaved)")
                }
            }
        }
    }

    func testGreedyGenerationMatchesTheUncachedReference() {
        for seed: UInt64 in [3, 4, 5] {
            let m32 = model(Float.self, seed: seed), m64 = model(Double.self, seed: seed)
            let prompt = [1, 7, 8, 9]
            let ref = generateGreedyUncached(m64, prompt: prompt, maxNew: 15)
            XCTAssertEqual(ref.count, 15)
            XCTAssertEqual(generateGreedy(m64, prompt: prompt, maxNew: 15), ref, "seed \(seed), f64")
            XCTAssertEqual(generateGreedy(m32, prompt: prompt, maxNew: 15), generateGreedyUncached(m32, prompt: prompt, maxNew: 15), "seed \(seed), f32")
            // stopping: at a stop token (not included), and when the 24-position context is full
            let stop = ref[5]
            let cut = ref.firstIndex(of: stop)!
            XCTAssertEqual(generateGreedy(m64, prompt: prompt, maxNew: 15, stopAt: [stop]), Array(ref.prefix(cut)))
            let long = Array(repeating: 3, count: 21)
            XCTAssertEqual(generateGreedy(m64, prompt: long, maxNew: 10), generateGreedyUncached(m64, prompt: long, maxNew: 10))
            XCTAssertEqual(generateGreedy(m64, prompt: long, maxNew: 10).count, 3, "positions 21, 22, 23")
            XCTAssertEqual(generateGreedy(m64, prompt: Array(repeating: 3, count: 24), maxNew: 10), [])
        }
    }
}
