// speq/ops/relu.hpp: rectified linear unit.
#pragma once

#include "speq/core/tape.hpp"
#include "speq/kernels/elementwise.hpp"

namespace speq {

// relu(x) = max(x, 0).   x: any shape -> same shape
//
// Backward: dy/dx = 1 where x > 0, else 0 (we take 0 at x == 0, as PyTorch does), so
//   dx += dy * [y > 0]     (y > 0 exactly where x > 0, so the output serves as the mask)
inline Var relu(const Var& x) {
    using kernels::FloatBatch;
    const int64_t n = x.numel();
    Tensor y = Tensor::uninitialized(x.shape());
    kernels::map(n, y.data(), [](FloatBatch v) { return xsimd::max(v, FloatBatch(0.0f)); },
                 x.value().data());
    Var out = op_result(std::move(y), {&x});
    if (out.requires_grad()) {
        tape().record([x, out] {
            if (!out.has_grad() || !x.requires_grad()) return;
            bool fresh;
            float* dx = x.grad_for_write(fresh).data();
            kernels::map_into_grad(
                fresh, out.numel(), dx,
                [](FloatBatch dx_, FloatBatch y_, FloatBatch dy_) {
                    return dx_ + xsimd::select(y_ > FloatBatch(0.0f), dy_, FloatBatch(0.0f));
                },
                out.value().data(), out.grad().data());
        });
    }
    return out;
}

}  // namespace speq
