// RandomCheckpoint.swift: a random-weight checkpoint of a real shape in the real layout (sharded
// safetensors + model.safetensors.index.json + config.json), written tensor by tensor without
// ever holding the model in memory, so the 7B path can be exercised and benchmarked without the
// real weights. Weights are uniform on [-a, a] with a = initializer_range * sqrt(3) (the standard
// deviation of Hugging Face's normal initialisation, cheaper to draw 7 billion times); norm
// weights are 1. Each tensor has its own seed (run seed and tensor index), so the values do not
// depend on the shard size.

import HeadAlign
import Foundation

/// Writes the checkpoint into the new directory `dir` (a temporary name renamed at the end).
/// Refuses before writing anything when `dir` exists or the disk has no room for it.
public func writeRandomCheckpoint(config: ModelConfig, dtype: SafetensorsDType, seed: UInt64, to dir: String,
                                  shardBytes: Int = 5 << 30, progress: (String) -> Void = { _ in }) throws {
    guard [.BF16, .F16, .F32].contains(dtype) else { throw HeadAlignError.usage("--dtype: \(dtype) is not one of BF16, F16, F32") }
    let fm = FileManager.default
    guard !fm.fileExists(atPath: dir) else { throw HeadAlignError.usage("--out \(dir) exists; give a new directory") }
    let parent = URL(fileURLWithPath: dir).deletingLastPathComponent().path
    guard fm.fileExists(atPath: parent) else { throw HeadAlignError.usage("--out \(dir): parent directory \(parent) does not exist") }
    let layout = ParameterLayout(config: config)
    let bytesPer = dtype.bits / 8, total = layout.total * bytesPer
    if let attrs = try? fm.attributesOfFileSystem(forPath: parent), let free = (attrs[.systemFreeSize] as? NSNumber)?.int64Value,
       Int64(total) + (64 << 20) > free {
        throw HeadAlignError.usage(String(format: "--out %@: not enough disk: the checkpoint needs %.2f GB, %.2f GB are free",
                                          dir, Double(total) / 1e9, Double(free) / 1e9))
    }
    // shards: tensors in layout order, a new shard when the next tensor would pass shardBytes
    var shards: [[ParameterTensor]] = [[]]
    var size = 0
    for p in layout.tensors {
        if size > 0 && size + p.count * bytesPer > shardBytes { shards.append([]); size = 0 }
        shards[shards.count - 1].append(p)
        size += p.count * bytesPer
    }
    let names = shards.indices.map { String(format: "model-%05d-of-%05d.safetensors", $0 + 1, shards.count) }
    removeStaleTemporaries(beside: dir)
    let tmp = dir + ".tmp-\(getpid())"
    try? fm.removeItem(atPath: tmp)
    do {
        try fm.createDirectory(atPath: tmp, withIntermediateDirectories: false)
        try writeConfigJSON(config, into: tmp)
        var weightMap: [String] = []
        let indexOf = Dictionary(uniqueKeysWithValues: layout.tensors.enumerated().map { ($0.element.name, $0.offset) })
        for (k, shard) in shards.enumerated() {
            progress("writing \(names[k]) (\(shard.count) tensors)")
            var parts: [String] = [], offset = 0
            for p in shard {
                let name = checkpointName(forLayoutName: p.name, config: config)
                parts.append("\(jsonQuoted(name)):{\"dtype\":\"\(dtype.rawValue)\",\"shape\":[\(p.shape.map(String.init).joined(separator: ","))],\"data_offsets\":[\(offset),\(offset + p.count * bytesPer)]}")
                offset += p.count * bytesPer
                weightMap.append("    \(jsonQuoted(name)): \(jsonQuoted(names[k]))")
            }
            var header = Array(("{\"__metadata__\":{\"format\":\"pt\"}," + parts.joined(separator: ",") + "}").utf8)
            header += [UInt8](repeating: 0x20, count: (8 - header.count % 8) % 8)
            let path = tmp + "/" + names[k]
            guard fm.createFile(atPath: path, contents: nil), let h = FileHandle(forWritingAtPath: path) else {
                throw HeadAlignError.badInput("\(path): cannot create")
            }
            defer { try? h.close() }
            var head = Data()
            withUnsafeBytes(of: UInt64(header.count).littleEndian) { head.append(contentsOf: $0) }
            head.append(contentsOf: header)
            try h.write(contentsOf: head)
            for p in shard { try writeRandomTensor(p, index: indexOf[p.name]!, config: config, dtype: dtype, seed: seed, to: h) }
        }
        let index = "{\n  \"metadata\": {\"total_size\": \(total)},\n  \"weight_map\": {\n" + weightMap.joined(separator: ",\n") + "\n  }\n}\n"
        try Data(index.utf8).write(to: URL(fileURLWithPath: tmp + "/model.safetensors.index.json"))
        try fm.moveItem(atPath: tmp, toPath: dir)
    } catch {
        try? fm.removeItem(atPath: tmp)
        if let e = error as? HeadAlignError { throw e }
        throw HeadAlignError.badInput("\(dir): cannot write (\(error.localizedDescription))")
    }
}

/// One tensor's values, drawn and stored in chunks of 1M elements.
func writeRandomTensor(_ p: ParameterTensor, index: Int, config: ModelConfig, dtype: SafetensorsDType, seed: UInt64,
                       to h: FileHandle) throws {
    var rng = SeededGenerator(seed: seed &* 0x9E37_79B9_7F4A_7C15 &+ UInt64(index))
    let isNorm = p.name.hasSuffix("norm.weight") || p.name.hasSuffix("LayerNorm.weight")
    let a = Float(config.initializerRange * 3.0.squareRoot())
    let chunk = 1 << 20
    var values = [Float](repeating: 0, count: chunk)
    var done = 0
    while done < p.count {
        let m = min(chunk, p.count - done)
        // uniform on [-a, a) from the top 24 bits; a norm weight is 1, a bias 0
        for i in 0..<m { values[i] = isNorm ? 1 : p.shape.count == 1 ? 0 : (Float(rng.next() >> 40) * 0x1p-23 - 1) * a }
        try values.withUnsafeBufferPointer { try h.write(contentsOf: encodeValues(UnsafeBufferPointer(rebasing: $0[0..<m]), as: dtype)) }
        done += m
    }
}
