// speq/quant/lsq.hpp: learned step size quantization (Esser et al. 2020, "Learned Step Size
// Quantization", ICLR) for weights, on the signed grids of bits.hpp.
//
//   v = w / s;   y = (code(v) + offset) * s       (s > 0 learnable, per tensor [1] or per output
//                                                   channel [K]; codes clipped to the grid)
// In LSQ's notation y = round(clip(v, -Qn, Qp)) * s. Here the clip range in v is [-L, L] with
// L = limit of the grid (narrow: L = Qp = 2^(b-1) - 1; mid_rise: L = 2^(b-1) - 1/2, the outermost
// level), and "round" rounds to the grid's levels (integers, or half-integers for mid_rise).
// Adapting LSQ to mid_rise: Qp in the gradient scale and in the init is replaced by L (at 1 bit
// Qp = 0 would divide by zero; L = 1/2 is the level's distance in steps, which is what the
// formulas need).
#pragma once

#include <cmath>
#include <utility>
#include <vector>

#include "speq/core/tape.hpp"
#include "speq/kernels/elementwise.hpp"
#include "speq/kernels/reduce.hpp"
#include "speq/quant/bits.hpp"
#include "speq/quant/weight_quant.hpp"

namespace speq::quant {

namespace detail {
// Rows of w (one per step entry) after checking the step's shape and values.
inline int64_t check_step(const char* op, const Shape& w_shape, const Tensor& step, bool per_channel) {
    const int64_t rows = weight_rows(op, w_shape, per_channel);
    const Shape want{rows};
    SPEQ_CHECK(step.shape() == want, op, ": step must have shape ", to_string(want), " for w of shape ",
               to_string(w_shape), (per_channel ? " (per channel)" : " (per tensor)"), ", got ",
               to_string(step.shape()));
    for (int64_t k = 0; k < rows; ++k)
        SPEQ_CHECK(step[k] > 0.0f && std::isfinite(step[k]) && std::isfinite(1.0f / step[k]), op,
                   ": step must be finite and > 0 (and not denormal), got step[", k, "] = ", step[k]);
    return rows;
}

// The step and its reciprocal per row, as quantize_rows and signed_codes take them.
inline std::vector<RowScale> step_scales(const Tensor& step) {
    std::vector<RowScale> scales;
    for (int64_t k = 0; k < step.numel(); ++k) scales.push_back({step[k], 1.0f / step[k]});
    return scales;
}
}  // namespace detail

// LSQ's gradient scale g = 1 / sqrt(numel_per_step * L): keeps the step's update in proportion
// to the weights' updates however many weights share the step.
inline float lsq_grad_scale(int64_t numel_per_step, int bits, Grid grid) {
    const GridSpec g = grid_spec("lsq_grad_scale", bits, grid);
    SPEQ_CHECK(numel_per_step > 0, "lsq_grad_scale: numel_per_step must be > 0, got ", numel_per_step);
    return static_cast<float>(1.0 / std::sqrt(static_cast<double>(numel_per_step) * g.limit));
}

// LSQ fake quantization.   w: any shape (per_channel: rank >= 2), step: [1] or [w.dim(0)] -> w's shape
// Full precision returns w itself (no copy, nothing recorded; step receives no gradient).
//
// Backward (STE through the rounding), with v = w / s and q = code(v) + offset:
//   dw += dy * [-L <= v <= L]
//   ds += g * sum(dy * (q - v))   for -L <= v <= L    (q - v = the rounding error in steps)
//       + g * sum(dy * q)         outside, where q = -L or +L (the clipped level)
// i.e. ds += g * sum(dy * (q - v * [|v| <= L])), summed per step entry over its row.
// s is not clamped here: if an update drives it to <= 0, the next forward throws (an optimizer
// that may do so should clamp it, e.g. to 1e-8).
inline Var lsq_quantize(const Var& w, const Var& step, int bits, bool per_channel, Grid grid = Grid::mid_rise) {
    using kernels::FloatBatch;
    check_bits("lsq_quantize", bits);
    SPEQ_CHECK(w.defined() && step.defined(), "lsq_quantize: w or step is an empty Var");
    const int64_t rows = detail::check_step("lsq_quantize", w.shape(), step.value(), per_channel);
    if (is_full_precision(bits)) return w;
    const GridSpec g = grid_spec("lsq_quantize", bits, grid);
    std::vector<detail::RowScale> scales = detail::step_scales(step.value());
    Var out = op_result(detail::quantize_rows(w.value(), rows, g, scales), {&w, &step});
    out.set_grid(detail::rows_value_grid(g, scales));
    if (out.requires_grad()) {
        const float grad_scale = lsq_grad_scale(w.numel() / rows, bits, grid);
        tape().record([w, step, out, g, scales = std::move(scales), rows, grad_scale] {
            if (!out.has_grad()) return;
            const float* wv = w.value().data();
            const float* dy = out.grad().data();
            float* dw = w.requires_grad() ? w.grad_for_accumulate().data() : nullptr;
            // One fused pass per piece: dw (if wanted) and the piece's part of ds, added in piece order.
            auto piece_ds = [&](int64_t k, int64_t b, int64_t e) {
                const detail::SignedCoder coder(g);
                const FloatBatch inv(scales[k].inv_scale), offset(g.offset), limit(g.limit), zero(0.0f);
                auto fused = [=](FloatBatch dw_, FloatBatch w_, FloatBatch dy_) {
                    const FloatBatch v = w_ * inv;
                    const auto inside = xsimd::abs(v) <= limit;
                    const FloatBatch q = coder(v) + offset;
                    return std::make_pair(dw_ + xsimd::select(inside, dy_, zero),
                                          dy_ * (q - xsimd::select(inside, v, zero)));
                };
                if (dw) return kernels::map_and_sum(e - b, dw + b, fused, dw + b, wv + b, dy + b);
                return kernels::map_and_sum(e - b, nullptr, fused, wv + b, wv + b, dy + b);  // w as filler
            };
            const std::vector<double> ds = kernels::row_sums(rows, out.numel() / rows, piece_ds);
            if (!step.requires_grad()) return;
            Tensor& dstep = step.grad_for_accumulate();
            for (int64_t k = 0; k < rows; ++k) dstep[k] += static_cast<float>(grad_scale * ds[k]);
        });
    }
    return out;
}

enum class StepInit {
    lsq,      // s0 = 2 mean|w| / sqrt(L)   (LSQ paper, with Qp -> L)
    max_abs,  // s0 = max|w| / L             (weight_scales with ScaleMethod::max_abs)
    min_l2,   // s0 = the min-L2 scale       (weight_scales with ScaleMethod::min_l2)
};

// Initial step for lsq_quantize.   w: S -> [1] or [S[0]]
// A row of all-zero weights gets s0 = 1e-8 instead of 0 (lsq_quantize needs s > 0).
inline Tensor lsq_init_step(const Tensor& w, int bits, bool per_channel, Grid grid = Grid::mid_rise,
                            StepInit init = StepInit::lsq) {
    const GridSpec g = grid_spec("lsq_init_step", bits, grid);
    const int64_t rows = detail::weight_rows("lsq_init_step", w.shape(), per_channel);
    Tensor s({rows});
    if (init == StepInit::lsq) {
        const int64_t inner = w.numel() / rows;
        const std::vector<double> sum_abs = kernels::row_sums(rows, inner, [&](int64_t, int64_t b, int64_t e) {
            return kernels::sum_map(e - b, [](kernels::FloatBatch v) { return xsimd::abs(v); }, w.data() + b);
        });
        for (int64_t k = 0; k < rows; ++k)
            s[k] = static_cast<float>(2.0 * sum_abs[k] / double(inner) / std::sqrt(double(g.limit)));
    } else {
        const ScaleMethod method = init == StepInit::max_abs ? ScaleMethod::max_abs : ScaleMethod::min_l2;
        s = weight_scales(w, WeightQuantOptions{bits, per_channel, method, grid});
    }
    for (int64_t k = 0; k < rows; ++k)
        if (!(s[k] >= 1e-8f)) s[k] = 1e-8f;
    return s;
}

// The integer codes behind lsq_quantize (bits 1..8): lsq_quantize(w, step, ...)[i] == codes.value(i)
// exactly. step: [1] (per tensor) or [w.dim(0)] (per channel).
inline IntegerCodes lsq_codes(const Tensor& w, const Tensor& step, int bits, Grid grid = Grid::mid_rise) {
    const GridSpec g = grid_spec("lsq_codes", bits, grid);
    const bool per_channel = step.numel() != 1;
    detail::check_step("lsq_codes", w.shape(), step, per_channel);
    return detail::signed_codes(w, g, detail::step_scales(step));
}

namespace reference {
// Plain scalar LSQ forward and backward, written straight from the formulas above.
inline Tensor lsq_forward(const Tensor& w, const Tensor& step, const GridSpec& g) {
    return quantize_signed(w, step, g);
}
// Adds dw and ds for output gradient dy (ds includes the gradient scale).
inline void lsq_backward(const Tensor& w, const Tensor& step, const GridSpec& g, float grad_scale,
                         const Tensor& dy, Tensor& dw, Tensor& ds) {
    const int64_t inner = w.numel() / step.numel();
    std::vector<double> sums(static_cast<size_t>(step.numel()), 0.0);
    for (int64_t i = 0; i < w.numel(); ++i) {
        const float s = step[i / inner];
        const float v = w[i] * (1.0f / s);
        const float q = quant::detail::signed_code(v, g) + g.offset;
        const bool inside = std::abs(v) <= g.limit;
        if (inside) dw[i] += dy[i];
        sums[i / inner] += double(dy[i]) * (inside ? double(q) - double(v) : double(q));
    }
    for (int64_t k = 0; k < step.numel(); ++k) ds[k] += static_cast<float>(grad_scale * sums[k]);
}
}  // namespace reference

}  // namespace speq::quant
