// swift-tools-version: 6.0
// headalign: Foundation only, no package dependencies. OpenBLAS is loaded at run time (BLAS.swift).
// Two library wings and a thin CLI (plus one kernel compiled apart, below): HeadAlign is the
// textbook (the method, read in an afternoon), HeadAlignLab the lab (data, attacks, training,
// experiments, baselines, plots, bench, 7B streaming); the lab uses the textbook, never the
// reverse.
import PackageDescription

// The packed Float product's target alone is compiled for AVX-512 on x86-64 in release builds
// (HeadAlignKernels' header says why; a debug build has no AVX-512 code at all); HeadAlign calls
// that build only on a CPU that has it, and its own build of the same source everywhere else. (The
// manifest is compiled for the machine that builds, so this follows the build machine's
// architecture: a cross-compile from x86-64 to arm64 must drop it. And SwiftPM refuses
// `unsafeFlags` in a package used as a versioned dependency: the libraries are for this package's
// command line and tests, not meant to be depended on.)
#if arch(x86_64)
let wideKernelFlags: [SwiftSetting] = [.unsafeFlags(["-target-cpu", "skylake-avx512"], .when(configuration: .release))]
#else
let wideKernelFlags: [SwiftSetting] = []
#endif

let package = Package(
    name: "headalign",
    products: [
        .executable(name: "headalign", targets: ["headalign"]),
        .library(name: "HeadAlign", targets: ["HeadAlign"]),
        .library(name: "HeadAlignLab", targets: ["HeadAlignLab"]),
    ],
    targets: [
        // The textbook's public generic functions carry `@_specialize(exported: true, where S ==
        // Float/Double)`: the lab, the CLI and the tests call them from other modules, where an
        // unspecialised generic call runs every arithmetic operation through a witness table (the
        // demo took 1,125 s instead of 15 s before they were added). Not on a function that the
        // textbook itself calls from inside a closure (naiveGemm, generateGreedy, headImportance,
        // KVCache.swift): Swift 6.3 then references a prespecialised symbol it never emits, and
        // linking fails.
        .target(name: "HeadAlignKernels", swiftSettings: wideKernelFlags),
        .target(name: "HeadAlign", dependencies: ["HeadAlignKernels"]),
        .target(name: "HeadAlignLab", dependencies: ["HeadAlign"]),
        .executableTarget(name: "headalign", dependencies: ["HeadAlign", "HeadAlignLab"]),
        .testTarget(name: "HeadAlignTests", dependencies: ["HeadAlign", "HeadAlignLab"], exclude: ["Fixtures"]),  // read by path
    ]
)
