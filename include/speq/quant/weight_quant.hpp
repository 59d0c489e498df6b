// speq/quant/weight_quant.hpp: symmetric uniform weight quantizer with a scale computed from the
// weights (not learned; see lsq.hpp for a learned step).
//
//   T = clip threshold (per tensor, or per output channel = dim 0 of [K, C, kh, kw] / [out, in])
//   s = T / limit                    (limit = largest level in units of s, see bits.hpp)
//   y = (code(w / s) + offset) * s   (codes on the narrow or mid_rise grid; outermost levels +-T)
//
// The threshold T, by ScaleMethod:
//   max_abs: T = max|w|. Nothing is clipped; coarse levels at low bits.
//   min_l2:  T minimizes E(T) = sum (w - Q_T(w))^2 over (0, max|w|], per tensor or per channel:
//            E at the 32 thresholds max|w| * k/32 (k = 1..32; k = 32 is max_abs), then 14 steps of
//            golden-section search between the grid neighbours of each of the 3 best ones; the
//            lowest E seen wins. A local search, not a global proof: on Gaussian weights it came
//            within 0.2% of a 4000-point scan at 1-5 bits; at 6-8 bits, where E(T) is jagged
//            near max|w|, it can miss by a few percent of an already small error.
//            A threshold below max|w| is kept only if it lowers E by more than 1e-5 relative to
//            max_abs (a margin over the float rounding of E), so min_l2 is never worse than max_abs.
//            Deterministic. Cost: ~80 passes over the weights per call (cheap next to the convs,
//            but a caller running several forwards on the same weights may want to reuse scales).
// A row whose threshold is 0 (all-zero weights) gets s = 0: its outputs are all 0.
#pragma once

#include <algorithm>
#include <cmath>
#include <numeric>
#include <utility>
#include <vector>

#include "speq/core/tape.hpp"
#include "speq/kernels/elementwise.hpp"
#include "speq/kernels/reduce.hpp"
#include "speq/quant/bits.hpp"
#include "speq/quant/golden_section.hpp"

namespace speq::quant {

enum class ScaleMethod { max_abs, min_l2 };

// Defaults (ours): full precision, so a default-constructed option quantizes nothing by surprise;
// per-tensor scales, as in the PACT/DoReFa-style ResNet-20 baselines we compare with; min_l2,
// because at 2-4 bits max_abs spends most levels on a few outlying weights; the mid_rise grid
// until an ablation settles it.
struct WeightQuantOptions {
    int bits = kFullPrecision;                // 1..8, or kFullPrecision: no quantization
    bool per_channel = false;                 // one scale per output channel (dim 0)
    ScaleMethod scale = ScaleMethod::min_l2;  // never worse than max_abs (see above)
    Grid grid = Grid::mid_rise;               // see bits.hpp for the trade-off
};

namespace detail {

// Rows of a weight tensor: one row per scale. Checks the shape for the op named `op`.
inline int64_t weight_rows(const char* op, const Shape& shape, bool per_channel) {
    const int64_t n = numel_of(shape);
    SPEQ_CHECK(n > 0, op, ": the weight tensor is empty (shape ", to_string(shape), ")");
    if (!per_channel) return 1;
    SPEQ_CHECK(shape.size() >= 2, op, ": per_channel needs a weight of rank >= 2 with output channels in dim 0 "
               "([out, in] or [K, C, kh, kw]), got shape ", to_string(shape));
    return shape[0];
}

// Step size and its reciprocal for clip threshold T. The one place both are computed, so the
// forward, the threshold search and the code export agree to the bit.
struct RowScale {
    float scale, inv_scale;
};
inline RowScale row_scale(float threshold, const GridSpec& g) {
    const float s = threshold / g.limit;
    const float inv = 1.0f / s;
    if (!(s > 0.0f) || !std::isfinite(inv)) return {0.0f, 0.0f};  // zero (or denormal) row: all outputs 0
    return {s, inv};
}

// The fake-quantized value of a batch: (code(w / s) + offset) * s.
struct SignedQuantizer {
    SignedCoder coder;
    FloatBatch inv, s, offset;
    SignedQuantizer(const GridSpec& g, RowScale r) : coder(g), inv(r.inv_scale), s(r.scale), offset(g.offset) {}
    FloatBatch operator()(FloatBatch w) const { return (coder(w * inv) + offset) * s; }
};

// Largest |w[i]| for i in [0, n), serially.
inline float max_abs_serial(const float* w, int64_t n) {
    FloatBatch m(0.0f);
    int64_t i = 0;
    for (; i + kLanes <= n; i += kLanes) m = xsimd::max(m, xsimd::abs(FloatBatch::load_unaligned(w + i)));
    alignas(64) float lanes[kLanes];
    m.store_aligned(lanes);
    float result = *std::max_element(lanes, lanes + kLanes);
    for (; i < n; ++i) result = std::max(result, std::abs(w[i]));
    return result;
}

// max|w| per row (max is exact, so the piece order does not even matter here).
inline std::vector<float> row_max_abs(const Tensor& w, int64_t rows) {
    return kernels::reduce_rows(
        rows, w.numel() / rows, 0.0f,
        [&](int64_t, int64_t begin, int64_t end) { return max_abs_serial(w.data() + begin, end - begin); },
        [](float a, float b) { return std::max(a, b); });
}

// E(T) = sum (w - Q_T(w))^2 over w[0, n), serially.
inline double l2_error(const float* w, int64_t n, float threshold, const GridSpec& g) {
    const SignedQuantizer q(g, row_scale(threshold, g));
    return kernels::sum_map(n, [&](FloatBatch x) {
        const FloatBatch d = x - q(x);
        return d * d;
    }, w);
}

// The min_l2 threshold of w[0, n) (see the header comment). The grid candidates run in parallel
// unless called from inside a parallel loop (per-channel search parallelizes over channels).
inline float min_l2_threshold(const float* w, int64_t n, float max_abs, const GridSpec& g) {
    if (!(max_abs > 0.0f)) return 0.0f;
    constexpr int kGrid = 32, kStarts = 3, kRefine = 14;
    const double top = max_abs;
    auto candidate = [&](int k) { return k == kGrid ? max_abs : static_cast<float>(top * k / kGrid); };
    std::vector<double> grid_error(kGrid + 1, INFINITY);
    parallel_for_if_large(1, kGrid + 1, n * kGrid,
                          [&](int64_t k) { grid_error[k] = l2_error(w, n, candidate(int(k)), g); });

    // The kStarts best grid points (ties to the smaller k), each refined by golden-section search
    // between its grid neighbours; the refinements are independent, so they run in parallel.
    std::vector<int> order(kGrid);
    std::iota(order.begin(), order.end(), 1);
    std::stable_sort(order.begin(), order.end(), [&](int a, int b) { return grid_error[a] < grid_error[b]; });
    std::vector<float> found(kStarts);
    std::vector<double> found_error(kStarts);
    parallel_for_if_large(0, kStarts, n * kRefine * kStarts, [&](int64_t j) {
        const int k = order[j];
        float best = candidate(k);
        double best_error = grid_error[k];
        auto evaluate = [&](double t) {
            const float tf = static_cast<float>(t);
            const double e = l2_error(w, n, tf, g);
            if (e < best_error) best = tf, best_error = e;
            return e;
        };
        double lo = top * std::max(k - 1, 0) / kGrid, hi = top * std::min(k + 1, kGrid) / kGrid;
        if (lo <= 0.0) lo = 0.5 * top / kGrid;
        golden_section_search(lo, hi, kRefine, evaluate);
        found[j] = best, found_error[j] = best_error;
    });
    int j_best = 0;
    for (int j = 1; j < kStarts; ++j)
        if (found_error[j] < found_error[j_best]) j_best = j;
    return found_error[j_best] < grid_error[kGrid] * (1.0 - 1e-5) ? found[j_best] : max_abs;
}

// Clip threshold T per row for the given method.
inline std::vector<float> weight_thresholds(const Tensor& w, int64_t rows, const GridSpec& g, ScaleMethod method) {
    std::vector<float> t = row_max_abs(w, rows);
    if (method == ScaleMethod::min_l2) {
        const int64_t inner = w.numel() / rows;
        parallel_for_if_large(0, rows, w.numel() * 32, [&](int64_t k) {
            t[k] = min_l2_threshold(w.data() + k * inner, inner, t[k], g);
        });
    }
    return t;
}

// y = Q(w) row by row with the given scales.
inline Tensor quantize_rows(const Tensor& w, int64_t rows, const GridSpec& g, const std::vector<RowScale>& scales) {
    Tensor y = Tensor::uninitialized(w.shape());
    kernels::map_rows(rows, w.numel() / rows, y.data(), [&](int64_t k) { return SignedQuantizer(g, scales[k]); },
                      w.data());
    return y;
}

inline std::vector<RowScale> row_scales(const std::vector<float>& thresholds, const GridSpec& g) {
    std::vector<RowScale> r;
    for (float t : thresholds) r.push_back(row_scale(t, g));
    return r;
}

// What quantize_rows(w, rows, g, scales) outputs are, for ops that compute on the codes (Var::grid).
inline ValueGrid rows_value_grid(const GridSpec& g, const std::vector<RowScale>& scales) {
    ValueGrid grid{{}, g.offset, g.min_code, g.max_code};
    for (const RowScale& r : scales) grid.scales.push_back(r.scale);
    return grid;
}

// The integer view of quantize_rows(w, rows, g, scales): the same codes, by the scalar coder.
inline IntegerCodes signed_codes(const Tensor& w, const GridSpec& g, const std::vector<RowScale>& scales) {
    IntegerCodes out;
    out.shape = w.shape();
    out.offset = g.offset;
    out.min_code = g.min_code;
    out.max_code = g.max_code;
    out.codes.resize(static_cast<size_t>(w.numel()));
    const int64_t rows = static_cast<int64_t>(scales.size()), inner = w.numel() / rows;
    for (int64_t k = 0; k < rows; ++k) {
        out.scales.push_back(scales[k].scale);
        for (int64_t i = k * inner; i < (k + 1) * inner; ++i)
            out.codes[i] = static_cast<int32_t>(signed_code(w[i] * scales[k].inv_scale, g));
    }
    return out;
}

}  // namespace detail

// The step sizes quantize_weight uses (computed from w, no gradient).   w: S -> [1] or [S[0]]
inline Tensor weight_scales(const Tensor& w, const WeightQuantOptions& options) {
    const GridSpec g = grid_spec("weight_scales", options.bits, options.grid);
    const int64_t rows = detail::weight_rows("weight_scales", w.shape(), options.per_channel);
    const auto scales = detail::row_scales(detail::weight_thresholds(w, rows, g, options.scale), g);
    Tensor out({rows});
    for (int64_t k = 0; k < rows; ++k) out[k] = scales[k].scale;
    return out;
}

// Symmetric uniform weight fake quantization.   w: any shape (per_channel: rank >= 2) -> w's shape
// Full precision returns w itself (no copy, nothing recorded).
//
// Backward (STE; the scale is a constant, no gradient flows through it):
//   dw += dy * [|w| <= T_row]       (max_abs: T = max|w|, so dw += dy everywhere)
inline Var quantize_weight(const Var& w, const WeightQuantOptions& options) {
    using kernels::FloatBatch;
    check_bits("quantize_weight", options.bits);
    SPEQ_CHECK(w.defined(), "quantize_weight: w is an empty Var");
    const int64_t rows = detail::weight_rows("quantize_weight", w.shape(), options.per_channel);
    if (is_full_precision(options.bits)) return w;
    const GridSpec g = grid_spec("quantize_weight", options.bits, options.grid);
    std::vector<float> thresholds = detail::weight_thresholds(w.value(), rows, g, options.scale);
    const std::vector<detail::RowScale> scales = detail::row_scales(thresholds, g);
    Var out = op_result(detail::quantize_rows(w.value(), rows, g, scales), {&w});
    out.set_grid(detail::rows_value_grid(g, scales));
    if (out.requires_grad()) {
        const bool clips = options.scale != ScaleMethod::max_abs;
        tape().record([w, out, thresholds = std::move(thresholds), rows, clips] {
            if (!out.has_grad() || !w.requires_grad()) return;
            float* dw = w.grad_for_accumulate().data();
            const float* dy = out.grad().data();
            if (!clips) return kernels::accumulate(out.numel(), dw, dy);
            auto ste_of_row = [&](int64_t k) {  // dy passes where |w| <= T of the row
                const FloatBatch t(thresholds[k]), zero(0.0f);
                return [=](FloatBatch g_, FloatBatch w_, FloatBatch dy_) {
                    return g_ + xsimd::select(xsimd::abs(w_) <= t, dy_, zero);
                };
            };
            kernels::map_rows(rows, out.numel() / rows, dw, ste_of_row, dw, w.value().data(), dy);
        });
    }
    return out;
}

// The integer codes behind quantize_weight (bits 1..8): quantize_weight(w, options)[i] ==
// codes.value(i) exactly, codes in [grid min_code, max_code], scales as weight_scales.
inline IntegerCodes weight_codes(const Tensor& w, const WeightQuantOptions& options) {
    const GridSpec g = grid_spec("weight_codes", options.bits, options.grid);
    const int64_t rows = detail::weight_rows("weight_codes", w.shape(), options.per_channel);
    return detail::signed_codes(w, g, detail::row_scales(detail::weight_thresholds(w, rows, g, options.scale), g));
}

namespace reference {
// Plain scalar quantization of w with the given per-row scales (from weight_scales).
inline Tensor quantize_signed(const Tensor& w, const Tensor& scales, const GridSpec& g) {
    Tensor y = Tensor::uninitialized(w.shape());
    const int64_t inner = w.numel() / scales.numel();
    for (int64_t i = 0; i < w.numel(); ++i) {
        const float s = scales[i / inner], inv = s > 0.0f ? 1.0f / s : 0.0f;
        y[i] = (quant::detail::signed_code(w[i] * inv, g) + g.offset) * s;
    }
    return y;
}

// E(T) = sum (w - Q_T(w))^2 in double, scalar: for brute-force threshold scans in tests.
inline double l2_error(const float* w, int64_t n, float threshold, const GridSpec& g) {
    const quant::detail::RowScale r = quant::detail::row_scale(threshold, g);
    double e = 0.0;
    for (int64_t i = 0; i < n; ++i) {
        const float q = (quant::detail::signed_code(w[i] * r.inv_scale, g) + g.offset) * r.scale;
        e += (double(w[i]) - q) * (double(w[i]) - q);
    }
    return e;
}
}  // namespace reference

}  // namespace speq::quant
