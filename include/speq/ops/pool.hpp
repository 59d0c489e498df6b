// speq/ops/pool.hpp: global average pooling (the ResNet head).
#pragma once

#include "speq/core/tape.hpp"
#include "speq/kernels/elementwise.hpp"
#include "speq/kernels/reduce.hpp"

namespace speq {

// y[n, c] = mean over h, w of x[n, c, h, w].   x: [N, C, H, W] -> [N, C]
//
// Backward: every input of a plane contributes 1/(H*W) of its mean, so
//   dx[n, c, h, w] += dy[n, c] / (H*W)
inline Var global_avg_pool(const Var& x) {
    using kernels::FloatBatch;
    SPEQ_CHECK(x.defined() && x.value().rank() == 4, "global_avg_pool: x must be [N, C, H, W], got ",
               x.defined() ? to_string(x.shape()) : std::string("(empty)"));
    const int64_t N = x.shape()[0], C = x.shape()[1], HW = x.shape()[2] * x.shape()[3];
    SPEQ_CHECK(HW > 0, "global_avg_pool: x has no spatial positions to average, shape ", to_string(x.shape()));
    Tensor y = Tensor::uninitialized({N, C});
    const float* xd = x.value().data();
    parallel_for(0, N * C, [&](int64_t p) {
        y[p] = static_cast<float>(kernels::sum_map(HW, [](FloatBatch v) { return v; }, xd + p * HW) / HW);
    });
    Var out = op_result(std::move(y), {&x});
    if (out.requires_grad()) {
        tape().record([x, out, HW] {
            if (!out.has_grad() || !x.requires_grad()) return;
            float* dx = x.grad_for_accumulate().data();
            const float* dy = out.grad().data();
            auto add_share = [&](int64_t p) {  // to every input of plane p
                const FloatBatch share(dy[p] / static_cast<float>(HW));
                return [share](FloatBatch d) { return d + share; };
            };
            kernels::map_rows(out.numel(), HW, dx, add_share, dx);
        });
    }
    return out;
}

}  // namespace speq
