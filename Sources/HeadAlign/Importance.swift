// Importance.swift: Eq. 4, the gradient importance of one head on one input: how strongly the
// loss reacts to the head's output, |<H, dL/dH>|. It equals the derivative of the loss with
// respect to a gate on the head's output at gate = 1 (Michel et al. 2019). The mean over inputs
// (G^{l,h}) is taken in Safety.swift; running the forward and backward is Analysis.swift's.

/// Eq. 4 for one input: `|sum_{t,d} H_{t,d} * dL/dH_{t,d}|` over the input's rows of head `h`.
/// `H`, `dH`: `[N, NH*HS]` of a packed batch (head h's columns are `h*HS ..< (h+1)*HS`);
/// `rows`: the input's rows in the batch. Accumulates in Double.
public func headImportance<S: Real>(H: Tensor<S>, dH: Tensor<S>, rows: Range<Int>, head h: Int, heads nh: Int,
                                    headSize hs: Int) -> Double {
    var inner = 0.0  // <H, dL/dH> over this input's rows of head h
    for r in rows {
        let o = r * nh * hs + h * hs
        for j in 0..<hs { inner += Double(H.data[o + j]) * Double(dH.data[o + j]) }
    }
    return abs(inner)
}
