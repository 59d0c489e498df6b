// speq/ops/reshape.hpp: new shapes for the same numbers (reshape, flatten).
#pragma once

#include "speq/core/tape.hpp"
#include "speq/kernels/elementwise.hpp"

namespace speq {

namespace detail {
// `to` with its one allowed -1 replaced by the size that keeps the element count of `from`.
inline Shape infer_shape(const Shape& from, Shape to) {
    const int64_t count = numel_of(from);
    int64_t known = 1, infer_at = -1;
    for (size_t i = 0; i < to.size(); ++i) {
        if (to[i] == -1) {
            SPEQ_CHECK(infer_at < 0, "reshape: only one dimension may be -1, got ", to_string(to));
            infer_at = static_cast<int64_t>(i);
        } else {
            SPEQ_CHECK(to[i] >= 0, "reshape: dimension ", i, " of ", to_string(to), " is ", to[i],
                       "; dimensions must be >= 0, or -1 to infer one");
            known *= to[i];
        }
    }
    if (infer_at >= 0) {
        SPEQ_CHECK(known > 0 && count % known == 0, "reshape: cannot reshape ", to_string(from), " (", count,
                   " elements) to ", to_string(to), ": the -1 dimension has no whole size");
        to[infer_at] = count / known;
    }
    SPEQ_CHECK(numel_of(to) == count, "reshape: cannot reshape ", to_string(from), " (", count, " elements) to ",
               to_string(to), " (", numel_of(to), " elements)");
    return to;
}
}  // namespace detail

// x: any shape S -> `shape` (same number of elements; one dimension may be -1 and is inferred).
// The numbers keep their row-major order (the output is a copy: a Var owns its storage).
//
// Backward: the identity on the flat numbers:   dx += dy   (viewed in x's shape)
inline Var reshape(const Var& x, Shape shape) {
    SPEQ_CHECK(x.defined(), "reshape: x is empty");
    Tensor y = Tensor(x.value()).reshaped(detail::infer_shape(x.shape(), std::move(shape)));
    Var out = op_result(std::move(y), {&x});
    if (out.requires_grad()) {
        tape().record([x, out] {
            if (!out.has_grad() || !x.requires_grad()) return;
            kernels::accumulate(out.numel(), x.grad_for_accumulate().data(), out.grad().data());
        });
    }
    return out;
}

// x: [N, ...] -> [N, prod(...)]   (a [N] tensor becomes [N, 1]). Backward as reshape.
inline Var flatten(const Var& x) {
    SPEQ_CHECK(x.defined() && x.value().rank() >= 1, "flatten: x must have a batch dimension, got shape ",
               x.defined() ? to_string(x.shape()) : std::string("(empty)"));
    int64_t rest = 1;
    for (int i = 1; i < x.value().rank(); ++i) rest *= x.shape()[i];
    return reshape(x, {x.shape()[0], rest});
}

}  // namespace speq
