// A libFuzzer target for the safetensors header parser (not part of the package build).
// Build and run (see docs/FORMATS.md, "Fuzzing"; .ci/run builds it and runs 1,000 inputs):
//   swiftc -O -sanitize=fuzzer,address -parse-as-library -package-name headalign -module-name HeadAlign \
//       Fuzz/SafetensorsFuzzer.swift Sources/HeadAlign/*.swift Sources/HeadAlignKernels/*.swift -o .build/fuzz-safetensors
//   mkdir -p .build/fuzz-corpus && .build/fuzz-safetensors .build/fuzz-corpus -max_total_time=600
// Every input must either parse or throw; a trap, a crash or a sanitizer report is a bug.

@_cdecl("LLVMFuzzerTestOneInput")
public func fuzzSafetensors(_ data: UnsafePointer<UInt8>, _ size: Int) -> Int32 {
    let bytes = UnsafeRawBufferPointer(start: data, count: size)
    if let header = try? parseSafetensorsHeader(bytes, source: "fuzz") {
        // a header that validates must describe tensors inside the buffer
        for e in header.entries {
            precondition(header.dataStart + e.end <= size && e.begin <= e.end, "validated entry outside the buffer")
        }
    }
    return 0
}
