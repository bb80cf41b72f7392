// swift-tools-version: 6.0
// headalign: Foundation only, no package dependencies. OpenBLAS is loaded at run time (BLAS.swift).
import PackageDescription

let package = Package(
    name: "headalign",
    products: [
        .executable(name: "headalign", targets: ["headalign"]),
        .library(name: "HeadAlign", targets: ["HeadAlign"]),
    ],
    targets: [
        .target(name: "HeadAlign"),
        .executableTarget(name: "headalign", dependencies: ["HeadAlign"]),
        .testTarget(name: "HeadAlignTests", dependencies: ["HeadAlign"], exclude: ["Fixtures"]),  // read by path
    ]
)
