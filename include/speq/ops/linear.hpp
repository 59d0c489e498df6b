// speq/ops/linear.hpp: the fully connected layer, y = x W^T + b (PyTorch's weight layout).
#pragma once

#include <algorithm>
#include <cstdint>

#include "speq/core/tape.hpp"
#include "speq/core/threads.hpp"
#include "speq/kernels/gemm.hpp"

namespace speq {

namespace detail {
// Row blocks of at least 16 rows, at most 8 of them: a function of the row count only.
inline int64_t linear_row_pieces(int64_t rows) { return std::clamp<int64_t>((rows + 15) / 16, 1, 8); }
}  // namespace detail

// x: [N, in], weight: [out, in], bias: [out] or undefined Var -> [N, out]
//
//   y = x W^T + b
//
// Backward, with dy = dL/dy ([N, out]):
//   dx += dy W          (rows of x independent: split over N)
//   dW += dy^T x        (rows of W independent: split over out, each row summed over all of N)
//   db += sum_n dy[n, :]
// No partial sums are needed, so every split is by rows and the result is thread-count free.
inline Var linear(const Var& x, const Var& weight, const Var& bias) {
    SPEQ_CHECK(x.defined(), "linear: x is undefined");
    SPEQ_CHECK(weight.defined(), "linear: weight is undefined");
    const Shape& xs = x.shape();
    const Shape& ws = weight.shape();
    SPEQ_CHECK(xs.size() == 2, "linear: x must have rank 2 [N, in], got shape ", to_string(xs));
    SPEQ_CHECK(ws.size() == 2, "linear: weight must have rank 2 [out, in], got shape ", to_string(ws));
    if (xs[1] != ws[1]) shape_mismatch("linear", "x [N, in] vs weight [out, in] (in differs)", xs, ws);
    const int64_t N = xs[0], in = xs[1], out_features = ws[0];
    if (bias.defined() && bias.shape() != Shape{out_features})
        shape_mismatch("linear", "bias vs [out] of weight [out, in]", bias.shape(), Shape{out_features});

    Tensor y = Tensor::uninitialized({N, out_features});
    {
        const float* xp = x.value().data();
        const float* wp = weight.value().data();
        const float* bp = bias.defined() ? bias.value().data() : nullptr;
        float* yp = y.data();
        parallel_split(N, detail::linear_row_pieces(N), [&](int64_t, int64_t first, int64_t last) {
            float* y_rows = yp + first * out_features;
            kernels::gemm_nt(last - first, out_features, in, xp + first * in, wp, y_rows, false);
            if (bp)
                for (int64_t n = 0; n < last - first; ++n)
                    for (int64_t o = 0; o < out_features; ++o) y_rows[n * out_features + o] += bp[o];
        });
    }

    Var out = op_result(std::move(y), {&x, &weight, &bias});
    if (!out.requires_grad()) return out;
    tape().record([x, weight, bias, out, N, in, out_features] {
        if (!out.has_grad()) return;
        const float* dy = out.grad().data();
        if (x.requires_grad()) {  // dx += dy W
            float* dx = x.grad_for_accumulate().data();
            const float* wp = weight.value().data();
            const int64_t pieces = detail::linear_row_pieces(N);
            parallel_split(N, pieces, [&](int64_t, int64_t first, int64_t last) {
                kernels::gemm_nn(last - first, in, out_features, dy + first * out_features, wp,
                                 dx + first * in, true);
            });
        }
        if (!weight.requires_grad() && !bias.requires_grad()) return;
        // dy^T, so that each row of dW (and db) reads one contiguous row of it.
        Tensor dy_t = Tensor::uninitialized({out_features, N});
        for (int64_t n = 0; n < N; ++n)
            for (int64_t o = 0; o < out_features; ++o) dy_t[o * N + n] = dy[n * out_features + o];
        if (weight.requires_grad()) {  // dW += dy^T x
            float* dw = weight.grad_for_accumulate().data();
            const float* xp = x.value().data();
            parallel_split(out_features, detail::linear_row_pieces(out_features),
                           [&](int64_t, int64_t first, int64_t last) {
                               kernels::gemm_nn(last - first, in, N, dy_t.data() + first * N, xp,
                                                dw + first * in, true);
                           });
        }
        if (bias.requires_grad()) {  // db += sum_n dy[n, :]
            float* db = bias.grad_for_accumulate().data();
            for (int64_t o = 0; o < out_features; ++o) {
                float sum = 0.0f;
                for (int64_t n = 0; n < N; ++n) sum += dy_t[o * N + n];
                db[o] += sum;
            }
        }
    });
    return out;
}

}  // namespace speq
