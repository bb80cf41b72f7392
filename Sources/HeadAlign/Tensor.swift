// Tensor.swift: the scalar type (Float or Double), row-major storage with shapes, and the
// naive matrix kernels. The BLAS kernels and the one switch between the two live in BLAS.swift.
//
// Dimension legend used in shape comments throughout the library:
//   B  sequences in a batch          N  packed tokens of a batch (sum of the sequences' T)
//   T  tokens of one sequence        D  hidden size (d_model)
//   NH query heads                   NKV key/value heads (grouped-query attention, NKV <= NH)
//   HS head size (d_head)            F  feed-forward (intermediate) size
//   V  vocabulary size               C  classes of a classifier head
//   L  layers

#if canImport(Glibc)
import Glibc
#elseif canImport(Darwin)
import Darwin
#endif

// MARK: - Scalar

/// The compute precision: `Float` (f32) or `Double` (f64). Everything numeric in the library is
/// generic over it; the command line picks one with `--precision`. Float's exp and erf are the
/// vectorisable approximations of FastMath.swift (error bounds there); Double keeps libm.
public protocol Real: BinaryFloatingPoint, Sendable, LosslessStringConvertible
where RawSignificand: FixedWidthInteger {
    static func exp(_ x: Self) -> Self
    static func log(_ x: Self) -> Self
    static func erf(_ x: Self) -> Self
    static func tanh(_ x: Self) -> Self
    /// `f32` or `f64`, as the command line spells it.
    static var precisionName: String { get }
}

extension Float: Real {
    @inline(__always) public static func exp(_ x: Float) -> Float { expInline(x) }
    @inline(__always) public static func log(_ x: Float) -> Float { logf(x) }
    @inline(__always) public static func erf(_ x: Float) -> Float { erfRational(x) }
    @inline(__always) public static func tanh(_ x: Float) -> Float { tanhf(x) }
    public static var precisionName: String { "f32" }
}

extension Double: Real {
    @inline(__always) public static func exp(_ x: Double) -> Double { Glibc.exp(x) }
    @inline(__always) public static func log(_ x: Double) -> Double { Glibc.log(x) }
    @inline(__always) public static func erf(_ x: Double) -> Double { Glibc.erf(x) }
    @inline(__always) public static func tanh(_ x: Double) -> Double { Glibc.tanh(x) }
    public static var precisionName: String { "f64" }
}

/// The precisions the command line accepts.
public enum Precision: String, CaseIterable, Sendable {
    case f32, f64
}

// MARK: - Tensor

/// Row-major, contiguous storage with a shape. A reference type on purpose: activations and
/// gradients are written in place by the forward/backward functions (llm.c style), and a view
/// (`Tensor(viewOf:offset:shape:)`) shares its base's memory, which is how the flat parameter
/// buffer hands out named tensors.
public final class Tensor<S: Real>: @unchecked Sendable {
    public let shape: [Int]
    public let count: Int
    /// First element. Hot loops index this pointer directly: bounds-checked `Array` subscripts
    /// stop the compiler from vectorising them.
    public let data: UnsafeMutablePointer<S>
    private let base: Tensor<S>?  // a view keeps the storage it points into alive

    /// A zero-filled tensor.
    @_specialize(exported: true, where S == Float)
    @_specialize(exported: true, where S == Double)
    public init(_ shape: [Int]) {
        precondition(shape.allSatisfy { $0 >= 0 }, "Tensor: negative dimension in shape \(shape)")
        self.shape = shape
        self.count = shape.reduce(1, *)
        self.data = UnsafeMutablePointer<S>.allocate(capacity: max(count, 1))
        self.data.initialize(repeating: 0, count: max(count, 1))
        self.base = nil
    }

    @_specialize(exported: true, where S == Float)
    @_specialize(exported: true, where S == Double)
    public convenience init(_ shape: [Int], _ values: [S]) {
        self.init(shape)
        precondition(values.count == count, "Tensor: \(values.count) values for shape \(shape)")
        values.withUnsafeBufferPointer { data.update(from: $0.baseAddress!, count: count) }
    }

    /// A tensor that aliases `count(shape)` elements of `base` starting at `offset`.
    @_specialize(exported: true, where S == Float)
    @_specialize(exported: true, where S == Double)
    public init(viewOf base: Tensor<S>, offset: Int, shape: [Int]) {
        let n = shape.reduce(1, *)
        precondition(offset >= 0 && offset + n <= base.count,
                     "Tensor view: [\(offset), \(offset + n)) outside a tensor of \(base.count) elements")
        self.shape = shape
        self.count = n
        self.data = base.data + offset
        self.base = base
    }

    deinit {
        if base == nil { data.deallocate() }
    }

    public subscript(i: Int) -> S {
        get { precondition(i >= 0 && i < count, "Tensor index \(i) outside \(shape)"); return data[i] }
        set { precondition(i >= 0 && i < count, "Tensor index \(i) outside \(shape)"); data[i] = newValue }
    }

    public var array: [S] { Array(UnsafeBufferPointer(start: data, count: count)) }

    @_specialize(exported: true, where S == Float)
    @_specialize(exported: true, where S == Double)
    public func copy() -> Tensor<S> {
        let t = Tensor<S>(shape)
        t.data.update(from: data, count: count)
        return t
    }

    @_specialize(exported: true, where S == Float)
    @_specialize(exported: true, where S == Double)
    public func zero() { data.update(repeating: 0, count: count) }

    /// Element-wise `self += other`.
    @_specialize(exported: true, where S == Float)
    @_specialize(exported: true, where S == Double)
    public func add(_ other: Tensor<S>) {
        precondition(other.count == count, "Tensor.add: shapes \(shape) and \(other.shape)")
        for i in 0..<count { data[i] += other.data[i] }
    }

    /// The same values in another precision (rounded to nearest when narrowing).
    public func converted<R: Real>(to: R.Type) -> Tensor<R> {
        let t = Tensor<R>(shape)
        for i in 0..<count { t.data[i] = R(data[i]) }
        return t
    }
}

// MARK: - Where freed tensors go

/// Keep freed tensors' memory in the process's heap instead of returning it to the system.
/// A MiniLM training step at 32 x 64 allocates about 0.5 GB of activations afresh, mostly in
/// chunks of 0.1 - 13 MB. glibc returns chunks above its mmap threshold at once and trims the
/// heap's top, so every step page-faults all of it in again and the kernel zeroes each page
/// before `Tensor.init` zeroes it once more. Serving chunks below 32 MiB from the heap and never
/// trimming it keeps the pages. Why 32 MiB: it is the largest value glibc's own sliding threshold
/// reaches, so the heap gets no chunk glibc would not have put there itself; larger ones stay
/// mapped and returned (the one a step used to allocate, MiniLM's 91 MB flat gradient, is now
/// allocated once per `trainSteps`). Measured with `bench --preset minilm-l6 --backend blas
/// --repeat 5`, two sets of five alternating pairs on the Intel machine of docs/BENCHMARK.md:
/// fwd+bwd's time outside GEMM 0.44 -> 0.39 s and 0.47 -> 0.40 s (medians), page faults over a
/// `--repeat 3` run 455k -> 263k; the forward alone moved less than the machine's noise.
/// The cost: the heap keeps the process's peak, which it had reached anyway. Called once by the
/// command line before any work (glibc only; a no-op elsewhere). Results do not change, only
/// where the bytes live.
public func keepFreedMemoryInHeap() {
    #if canImport(Glibc)
    // Swift's Glibc module leaves out malloc.h: the function by name, its constants as written there.
    typealias Mallopt = @convention(c) (Int32, Int32) -> Int32
    guard let symbol = dlsym(dlopen(nil, RTLD_NOW), "mallopt") else { return }
    let mallopt = unsafeBitCast(symbol, to: Mallopt.self)
    let mTrimThreshold: Int32 = -1, mMmapThreshold: Int32 = -3
    _ = mallopt(mMmapThreshold, 32 << 20)
    _ = mallopt(mTrimThreshold, Int32.max)
    #endif
}

// MARK: - Naive kernels

/// `C = beta * C` on an `[m, n]` block with leading dimension `ldc`, the first step of every
/// product (beta 0 overwrites, so stale NaNs never leak in).
@inline(__always)
func scaleByBeta<S: Real>(_ c: UnsafeMutablePointer<S>, m: Int, n: Int, ldc: Int, beta: S) {
    for i in 0..<m {
        let ci = c + i * ldc
        if beta == 0 {
            ci.update(repeating: 0, count: n)
        } else if beta != 1 {
            for j in 0..<n { ci[j] *= beta }
        }
    }
}

/// `C[m,n] = alpha * op(A) * op(B) + beta * C`, row-major with leading dimensions, where
/// `op(A)` is `[m,k]` (stored `[k,m]` when `transA`) and `op(B)` is `[k,n]` (stored `[n,k]` when
/// `transB`). Loops run i-k-j so that the innermost loop walks a row of B and a row of C with
/// stride 1 and vectorises; `op(B) = B^T` is first transposed into a scratch buffer for that reason.
@_specialize(exported: true, where S == Float)
@_specialize(exported: true, where S == Double)
public func naiveGemm<S: Real>(transA: Bool, transB: Bool, m: Int, n: Int, k: Int, alpha: S,
                               a: UnsafePointer<S>, lda: Int, b: UnsafePointer<S>, ldb: Int,
                               beta: S, c: UnsafeMutablePointer<S>, ldc: Int) {
    scaleByBeta(c, m: m, n: n, ldc: ldc, beta: beta)
    if m == 0 || n == 0 || k == 0 { return }

    // B^T: copy into a [k, n] scratch so the inner loop is contiguous.
    var scratch: UnsafeMutablePointer<S>? = nil
    var bRows = b, bStride = ldb
    if transB {
        let t = UnsafeMutablePointer<S>.allocate(capacity: k * n)  // [k, n]
        for j in 0..<n {
            let bj = b + j * ldb
            for p in 0..<k { t[p * n + j] = bj[p] }
        }
        scratch = t
        bRows = UnsafePointer(t)
        bStride = n
    }
    defer { scratch?.deallocate() }

    for i in 0..<m {
        let ci = c + i * ldc
        for p in 0..<k {
            let aip = alpha * (transA ? a[p * lda + i] : a[i * lda + p])
            if aip == 0 { continue }
            let bp = bRows + p * bStride
            for j in 0..<n { ci[j] += aip * bp[j] }
        }
    }
}
