// speq/ops/scale.hpp: multiplication by a constant (loss weights).
#pragma once

#include "speq/core/tape.hpp"
#include "speq/kernels/elementwise.hpp"

namespace speq {

// y = x * factor.   x: any shape -> same shape
//
// Backward: dx += dy * factor
inline Var scale(const Var& x, float factor) {
    using kernels::FloatBatch;
    SPEQ_CHECK(x.defined(), "scale: x is empty");
    Tensor y = Tensor::uninitialized(x.shape());
    const FloatBatch f(factor);
    kernels::map(y.numel(), y.data(), [f](FloatBatch v) { return v * f; }, x.value().data());
    Var out = op_result(std::move(y), {&x});
    if (out.requires_grad()) {
        tape().record([x, out, factor] {
            if (!out.has_grad() || !x.requires_grad()) return;
            float* dx = x.grad_for_accumulate().data();
            const FloatBatch f(factor);
            kernels::map(out.numel(), dx, [f](FloatBatch d, FloatBatch g) { return d + g * f; }, dx,
                         out.grad().data());
        });
    }
    return out;
}

}  // namespace speq
