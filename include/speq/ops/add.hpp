// speq/ops/add.hpp: elementwise sum of two tensors of the same shape (the ResNet shortcut).
#pragma once

#include "speq/core/tape.hpp"
#include "speq/kernels/elementwise.hpp"

namespace speq {

// add(a, b) = a + b.   a: S, b: S -> S   (no broadcasting: a shape mismatch is an error)
//
// Backward: d(a+b)/da = d(a+b)/db = 1, so   da += dy,  db += dy.
inline Var add(const Var& a, const Var& b) {
    using kernels::FloatBatch;
    if (a.shape() != b.shape()) shape_mismatch("add", "a vs b", a.shape(), b.shape());
    Tensor y = Tensor::uninitialized(a.shape());
    kernels::map(y.numel(), y.data(), [](FloatBatch u, FloatBatch v) { return u + v; },
                 a.value().data(), b.value().data());
    Var out = op_result(std::move(y), {&a, &b});
    if (out.requires_grad()) {
        tape().record([a, b, out] {
            if (!out.has_grad()) return;
            auto accumulate = [&](const Var& input) {
                if (!input.requires_grad()) return;
                bool fresh;
                float* d = input.grad_for_write(fresh).data();
                kernels::map_into_grad(fresh, out.numel(), d, [](FloatBatch d_, FloatBatch dy_) { return d_ + dy_; },
                                       out.grad().data());
            };
            accumulate(a);
            accumulate(b);
        });
    }
    return out;
}

}  // namespace speq
