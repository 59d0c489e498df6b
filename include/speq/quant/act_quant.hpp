// speq/quant/act_quant.hpp: PACT activation quantizer (Choi et al. 2018, "PACT: Parameterized
// Clipping Activation for Quantized Neural Networks") with a learnable clip value alpha.
//
//   y = clip(x, 0, alpha)                                  (full precision: a clipped ReLU)
//   y = s * round(clip(x, 0, alpha) / s),  s = alpha / (2^b - 1)      (b = 1..8 bits)
//
// Codes are 0..2^b-1 (unsigned: PACT follows a ReLU), rounding is half away from zero (bits.hpp).
// One alpha serves every bit-width: SPEQ's teacher changes `bits` between passes, alpha stays.
#pragma once

#include <cmath>
#include <utility>

#include "speq/core/tape.hpp"
#include "speq/kernels/elementwise.hpp"
#include "speq/kernels/reduce.hpp"
#include "speq/quant/bits.hpp"

namespace speq::quant {

namespace detail {
// The uniform grid of PACT: codes 0..levels, scale s = alpha / levels. The one place s and 1/s
// are computed, so forward, backward and pact_codes agree to the bit.
struct PactGrid {
    float levels, scale, inv_scale;
    PactGrid(float alpha, int bits)
        : levels(static_cast<float>((1 << bits) - 1)), scale(alpha / levels), inv_scale(levels / alpha) {}
    // What the quantized values are, for ops that compute on the codes (Var::grid).
    ValueGrid value_grid() const { return {{scale}, 0.0f, 0, static_cast<int32_t>(levels)}; }
};

inline float check_alpha(const char* op, const Var& alpha) {
    SPEQ_CHECK(alpha.defined(), op, ": alpha is an empty Var");
    SPEQ_CHECK(alpha.shape() == Shape{1}, op, ": alpha must have shape [1], got ", to_string(alpha.shape()));
    const float a = alpha.value()[0];
    SPEQ_CHECK(a > 0.0f && std::isfinite(a), op, ": alpha must be finite and > 0, got ", a);
    return a;
}
}  // namespace detail

// The PACT step size s = alpha / (2^b - 1) at a quantizing bit-width.
inline float pact_scale(float alpha, int bits) {
    check_bits("pact_scale", bits);
    SPEQ_CHECK(!is_full_precision(bits), "pact_scale: no step size at full precision (bits ", bits, ")");
    return detail::PactGrid(alpha, bits).scale;
}

// PACT fake quantization.   x: any shape, alpha: [1] (learnable, > 0) -> x's shape
//
// Backward (STE through the rounding; at full precision these are clip's exact derivatives):
//   dx     += dy * [0 < x < alpha]
//   dalpha += sum(dy * [x >= alpha])
// Boundaries: at x == 0 x gets no gradient (like relu); at x == alpha the gradient goes to alpha,
// not to x, so each dy reaches at most one of them. As in the PACT paper, the rounding's
// dependence on alpha (through s) is ignored: alpha learns only from clipped inputs (PACT adds
// weight decay on alpha to pull it in; speq makes that optional, act_quant.weight_decay). alpha is checked
// (> 0) on every forward, never clamped here.
inline Var pact_quantize(const Var& x, const Var& alpha, int bits) {
    using kernels::FloatBatch;
    check_bits("pact_quantize", bits);
    SPEQ_CHECK(x.defined(), "pact_quantize: x is an empty Var");
    const float a = detail::check_alpha("pact_quantize", alpha);
    const int64_t n = x.numel();
    Tensor y = Tensor::uninitialized(x.shape());
    if (is_full_precision(bits)) {
        const FloatBatch zero(0.0f), top(a);
        kernels::map(n, y.data(), [=](FloatBatch v) { return xsimd::clip(v, zero, top); }, x.value().data());
    } else {
        const detail::PactGrid g(a, bits);
        const FloatBatch zero(0.0f), top(g.levels), inv(g.inv_scale), s(g.scale);
        kernels::map(
            n, y.data(), [=](FloatBatch v) { return xsimd::round(xsimd::clip(v * inv, zero, top)) * s; },
            x.value().data());
    }
    Var out = op_result(std::move(y), {&x, &alpha});
    if (!is_full_precision(bits)) out.set_grid(detail::PactGrid(a, bits).value_grid());
    if (out.requires_grad()) {
        tape().record([x, alpha, out, a] {
            if (!out.has_grad()) return;
            const int64_t count = out.numel();
            const float* xv = x.value().data();
            const float* dy = out.grad().data();
            bool dx_fresh = false;
            float* dx = x.requires_grad() ? x.grad_for_write(dx_fresh).data() : nullptr;
            const FloatBatch zero(0.0f), top(a);
            // One fused pass: dx (if wanted) and the pieces of dalpha, added in piece order.
            auto step = [=](FloatBatch dx_, FloatBatch x_, FloatBatch dy_) {
                const auto inside = (x_ > zero) & (x_ < top);
                return std::make_pair(dx_ + xsimd::select(inside, dy_, zero), xsimd::select(x_ >= top, dy_, zero));
            };
            const std::vector<double> dalpha = kernels::row_sums(1, count, [&](int64_t, int64_t b, int64_t e) {
                if (dx && dx_fresh)  // dx is new: computed from 0, its uninitialized values never read
                    return kernels::map_and_sum(
                        e - b, dx + b, [&](FloatBatch x_, FloatBatch dy_) { return step(zero, x_, dy_); }, xv + b, dy + b);
                if (dx) return kernels::map_and_sum(e - b, dx + b, step, dx + b, xv + b, dy + b);
                return kernels::map_and_sum(e - b, nullptr, step, xv + b, xv + b, dy + b);  // no dx: x as filler
            });
            if (alpha.requires_grad()) alpha.grad_for_accumulate()[0] += static_cast<float>(dalpha[0]);
        });
    }
    return out;
}

// The integer codes behind pact_quantize (bits 1..8): codes in [0, 2^b - 1], one scale s, and
// pact_quantize(x, alpha, bits)[i] == codes.value(i) == float(codes[i]) * s exactly.
inline IntegerCodes pact_codes(const Tensor& x, float alpha, int bits) {
    check_bits("pact_codes", bits);
    SPEQ_CHECK(!is_full_precision(bits), "pact_codes: no integer codes at full precision (bits ", bits, ")");
    SPEQ_CHECK(alpha > 0.0f && std::isfinite(alpha), "pact_codes: alpha must be finite and > 0, got ", alpha);
    const detail::PactGrid g(alpha, bits);
    IntegerCodes out;
    out.shape = x.shape();
    out.scales = {g.scale};
    out.min_code = 0;
    out.max_code = (1 << bits) - 1;
    out.codes.resize(static_cast<size_t>(x.numel()));
    for (int64_t i = 0; i < x.numel(); ++i)
        out.codes[i] = static_cast<int32_t>(std::round(std::min(std::max(x[i] * g.inv_scale, 0.0f), g.levels)));
    return out;
}

namespace reference {
// Plain scalar PACT forward: what pact_quantize must match bit for bit.
inline Tensor pact_forward(const Tensor& x, float alpha, int bits) {
    Tensor y = Tensor::uninitialized(x.shape());
    if (is_full_precision(bits)) {
        for (int64_t i = 0; i < x.numel(); ++i) y[i] = std::min(std::max(x[i], 0.0f), alpha);
        return y;
    }
    const quant::detail::PactGrid g(alpha, bits);
    for (int64_t i = 0; i < x.numel(); ++i)
        y[i] = std::round(std::min(std::max(x[i] * g.inv_scale, 0.0f), g.levels)) * g.scale;
    return y;
}
}  // namespace reference

}  // namespace speq::quant
