// speq/nn/act_quant.hpp: ActQuant, the activation of a quantized network: ReLU at full precision,
// PACT (clip to [0, alpha], uniform 2^b - 1 steps, learnable alpha) at 1..8 bits.
//
// Full precision (bits 32) is a plain ReLU, NOT a clip to [0, alpha]: a full-precision model is then
// the standard ReLU network, its checkpoint maps onto PyTorch's (alpha is an extra, unused entry),
// and a model trained in full precision never depends on an alpha it never trained. The cost: a
// network switched from full precision to PACT sees its activations clipped for the first time,
// so alpha must be set sensibly first: calibrate_alpha (below; quant_control.hpp runs it over a
// whole model) picks it from real activations.
//
// alpha (parameter `alpha`, shape [1]) exists at every bit-width, so the state_dict does not
// change with the bits and SPEQ's teacher can switch bits between passes. It receives gradient only
// at 1..8 bits (PACT's gradient, quant/act_quant.hpp); nn::weight_decay_filter does not decay it.
#pragma once

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <vector>

#include "speq/core/tape.hpp"
#include "speq/nn/module.hpp"
#include "speq/ops/relu.hpp"
#include "speq/quant/act_quant.hpp"
#include "speq/quant/golden_section.hpp"
#include "speq/quant/bits.hpp"

namespace speq::nn {

// The constant alpha starts at (config `act_quant.alpha_init`), used when a model is quantized
// from scratch. Ours: 6, the clip of ReLU6, which BN-normalized pre-activations rarely exceed. It
// is coarse at low bits (for relu of N(0, 1) the MSE-optimal clip is about 2.0 at 2 bits, 2.9 at 4,
// 4.4 at 8: see calibrate_alpha); training from a full-precision checkpoint calibrates instead.
inline constexpr float kDefaultAlphaInit = 6.0f;

namespace detail {
// A histogram of the positive values of x: kBins equal bins over (0, top], top = max(x); each bin
// is represented by its centre. Counts are whole numbers in double, so sums are exact and
// deterministic.
struct PositiveHistogram {
    static constexpr int kBins = 4096;
    float top = 0.0f;
    std::vector<float> centre;   // non-empty bins only
    std::vector<double> count;

    explicit PositiveHistogram(const Tensor& x) {
        for (int64_t i = 0; i < x.numel(); ++i) {
            SPEQ_CHECK(std::isfinite(x[i]), "calibrate_alpha: the activations contain a non-finite value (", x[i],
                       " at element ", i, ")");
            top = std::max(top, x[i]);
        }
        if (!(top > 0.0f)) return;
        std::vector<double> bins(kBins, 0.0);
        const double to_bin = kBins / double(top);
        for (int64_t i = 0; i < x.numel(); ++i)
            if (x[i] > 0.0f) bins[std::min<int64_t>(static_cast<int64_t>(x[i] * to_bin), kBins - 1)] += 1.0;
        for (int b = 0; b < kBins; ++b)
            if (bins[b] > 0.0) {
                centre.push_back(static_cast<float>((b + 0.5) / to_bin));
                count.push_back(bins[b]);
            }
    }

    // sum over the histogram of count * (q(c) - c)^2 for the PACT quantizer q at (alpha, bits).
    double pact_l2_error(float alpha, int bits) const {
        const float s = quant::pact_scale(alpha, bits), inv = 1.0f / s;
        const float levels = static_cast<float>((1 << bits) - 1);
        double total = 0.0;
        for (size_t i = 0; i < centre.size(); ++i) {
            const double d = double(std::round(std::min(centre[i] * inv, levels)) * s) - centre[i];
            total += count[i] * d * d;
        }
        return total;
    }
};
}  // namespace detail

// The alpha that minimizes the mean squared error between relu(x) and its PACT quantization at
// `bits` (1..8), clipping error included.   x: any shape -> a scalar (0 if no element of x is > 0)
//
// Why MSE and not a fixed percentile: the best clip depends on the bit-width (at 2 bits it pays to
// clip much more than at 8), and the MSE criterion follows that, as post-training quantization does
// (e.g. ACIQ, Banner et al. 2019). Method: a histogram of the positive elements (4096 bins up to
// max(x); each bin counted at its centre, so alpha is resolved to about max / 4096), E(alpha) at
// max * k / 100 for k = 1..100, then 20 steps of golden-section search between the neighbours of
// the best one; the lowest E seen wins. Every element counts (a subsample would miss the rare
// large values that set the clip at high bits). Negative elements are left out: relu and PACT map
// them to 0 whatever alpha is. Deterministic; cost: two passes over x.
inline float calibrate_alpha(const Tensor& x, int bits) {
    quant::check_bits("calibrate_alpha", bits);
    SPEQ_CHECK(!quant::is_full_precision(bits), "calibrate_alpha: bits must be 1..8 (no clip to choose at full "
               "precision), got ", bits);
    const detail::PositiveHistogram histogram(x);
    const float top = histogram.top;
    if (!(top > 0.0f)) return 0.0f;

    constexpr int kGrid = 100, kRefine = 20;
    float best = top;
    double best_error = INFINITY;
    auto evaluate = [&](double a) {
        const float af = static_cast<float>(a);
        const double e = histogram.pact_l2_error(af, bits);
        if (e < best_error) best = af, best_error = e;
        return e;
    };
    int best_k = kGrid;
    for (int k = kGrid; k >= 1; --k) {  // from the top: ties keep the larger alpha
        const double before = best_error;
        evaluate(double(top) * k / kGrid);
        if (best_error < before) best_k = k;
    }
    double lo = double(top) * (best_k - 1) / kGrid, hi = double(top) * std::min(best_k + 1, kGrid) / kGrid;
    if (lo <= 0.0) lo = 0.5 * top / kGrid;
    quant::golden_section_search(lo, hi, kRefine, evaluate);
    return best;
}

// Parameter: alpha [1] = alpha_init.
// forward: x: any shape -> same shape;  relu(x) at 32 bits, quant::pact_quantize(x, alpha, bits)
// at 1..8 bits (values in {0, s, 2s, ..., alpha}, s = alpha / (2^bits - 1)).
class ActQuant : public UnaryModule {
public:
    explicit ActQuant(int bits = quant::kFullPrecision, float alpha_init = kDefaultAlphaInit) {
        set_bits(bits);
        SPEQ_CHECK(alpha_init > 0.0f && std::isfinite(alpha_init), "nn::ActQuant: alpha_init must be finite and > 0, got ",
                   alpha_init);
        alpha_ = register_parameter("alpha", Tensor::full({1}, alpha_init), /*weight_decay=*/false);
    }

    Var forward(const Var& x) override {
        if (calibrate_bits_ != 0) {
            const int bits = calibrate_bits_;
            calibrate_bits_ = 0;
            const float a = calibrate_alpha(x.value(), bits);
            if (a > 0.0f) set_alpha(a);  // no positive activation: keep alpha
        }
        if (quant::is_full_precision(bits_)) return relu(x);
        return quant::pact_quantize(x, alpha_, bits_);
    }

    void set_bits(int bits) {
        quant::check_bits("nn::ActQuant::set_bits", bits);
        bits_ = bits;
    }
    int bits() const { return bits_; }

    const Var& alpha() const { return alpha_; }
    float alpha_value() const { return alpha_.value()[0]; }
    void set_alpha(float alpha) {
        SPEQ_CHECK(alpha > 0.0f && std::isfinite(alpha), "nn::ActQuant::set_alpha: alpha must be finite and > 0, got ",
                   alpha);
        alpha_.value()[0] = alpha;
    }

    // The next forward first sets alpha = calibrate_alpha(its input, bits) (bits 1..8), then runs as
    // usual. So one forward pass calibrates a whole network layer by layer, each layer on the
    // (already quantized) inputs it will see. 0 cancels a pending calibration.
    void calibrate_on_next_forward(int bits) {
        SPEQ_CHECK(bits == 0 || (bits >= quant::kMinBits && bits <= quant::kMaxBits),
                   "nn::ActQuant::calibrate_on_next_forward: bits must be 1..8 (or 0 to cancel), got ", bits);
        calibrate_bits_ = bits;
    }
    bool calibration_pending() const { return calibrate_bits_ != 0; }

private:
    int bits_ = quant::kFullPrecision;
    int calibrate_bits_ = 0;  // 0: none pending
    Var alpha_;
};

}  // namespace speq::nn
