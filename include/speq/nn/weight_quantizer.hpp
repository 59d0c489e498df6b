// speq/nn/weight_quantizer.hpp: how a layer quantizes its weight, and WeightQuantLayer, the base
// of Conv2d and Linear.
//
// The quantizer sits inside the layer, so the state_dict keeps PyTorch's names (`weight`, `bias`):
// the stored weight is always the full-precision "latent" weight that SGD updates, and every
// forward quantizes it afresh (quantization-aware training). Three ways, by WeightScale:
//   max_abs, min_l2   quant::quantize_weight: the scale is computed from the weights on every
//                     forward (no state, no extra parameter);
//   lsq               quant::lsq_quantize: a learned step, registered on the layer as the parameter
//                     `weight_step` ([1] per tensor, [out] per channel; no weight decay).
// At full precision (bits 32, the default) forward uses the weight itself, whatever the scale.
//
// LSQ's step is registered the first time LSQ is switched on at 1..8 bits and initialised from the
// weights at that moment (quant::lsq_init_step). So, to start QAT from a trained model: load its
// weights FIRST, then switch LSQ on; to resume an LSQ run: switch LSQ on, then load the checkpoint
// (it holds `weight_step`). Configure quantization before building the optimizer: a parameter
// registered later is unknown to it. Once registered, `weight_step` stays (modules cannot drop a
// parameter); setting another config leaves it unused, and switching LSQ back on with the same
// bits / per_channel / grid / init keeps the learned value (anything else re-initialises it).
//
// Not done: reusing the quantized weight between SPEQ's student and teacher passes (same weights,
// no optimizer step in between). There is no cheap, obviously correct signal that the weights did
// not change, and the gain is small: min_l2 at 2 bits on all of ResNet-20's weights took 4-12 ms
// on one core (20-30 ms on two busy ones), against 1.5-2 s for a training step at batch 128.
#pragma once

#include <string>

#include "speq/core/tape.hpp"
#include "speq/nn/module.hpp"
#include "speq/quant/bits.hpp"
#include "speq/quant/lsq.hpp"
#include "speq/quant/weight_quant.hpp"

namespace speq::nn {

// Where a weight quantizer's step size comes from.
enum class WeightScale {
    max_abs,  // s = max|w| / limit, per forward
    min_l2,   // s minimizing the L2 quantization error, per forward (quant/weight_quant.hpp)
    lsq,      // s learned (LSQ), the parameter `weight_step`
};

inline const char* weight_scale_name(WeightScale scale) {
    switch (scale) {
        case WeightScale::max_abs: return "max_abs";
        case WeightScale::min_l2: return "min_l2";
        case WeightScale::lsq: return "lsq";
    }
    return "?";
}

// "max_abs" | "min_l2" | "lsq" -> WeightScale (for configs); anything else is an error.
inline WeightScale parse_weight_scale(const std::string& name) {
    for (WeightScale s : {WeightScale::max_abs, WeightScale::min_l2, WeightScale::lsq})
        if (name == weight_scale_name(s)) return s;
    fail("weight scale must be one of max_abs, min_l2, lsq; got '", name, "'");
}

// One layer's weight quantization. Defaults: full precision; otherwise as quant::WeightQuantOptions
// (per-tensor, min_l2, mid_rise: see weight_quant.hpp for why).
struct WeightQuantConfig {
    int bits = quant::kFullPrecision;             // 1..8, or 32 = full precision
    bool per_channel = false;                     // one scale per output channel
    WeightScale scale = WeightScale::min_l2;
    quant::Grid grid = quant::Grid::mid_rise;
    quant::StepInit step_init = quant::StepInit::lsq;  // the LSQ step's initial value (lsq only)

    bool quantizes() const { return !quant::is_full_precision(bits); }
    bool operator==(const WeightQuantConfig& o) const {
        return bits == o.bits && per_channel == o.per_channel && scale == o.scale && grid == o.grid &&
               step_init == o.step_init;
    }
    bool operator!=(const WeightQuantConfig& o) const { return !(*this == o); }
};

// "W2 min_l2 per-tensor mid_rise", "W32 (full precision)": for logs.
inline std::string describe(const WeightQuantConfig& c) {
    if (!c.quantizes()) return "W32 (full precision)";
    std::string s = "W" + std::to_string(c.bits) + " " + weight_scale_name(c.scale) +
                    (c.per_channel ? " per-channel " : " per-tensor ") + quant::grid_name(c.grid);
    return s;
}

// Throws unless `config` can quantize a weight of shape `weight_shape`; `who` names the layer.
inline void check_weight_quant(const std::string& who, const Shape& weight_shape, const WeightQuantConfig& config) {
    const std::string op = who + ": weight quantization";
    quant::check_bits(op.c_str(), config.bits);
    if (!config.quantizes()) return;
    quant::grid_spec(op.c_str(), config.bits, config.grid);  // throws for narrow at 1 bit
    SPEQ_CHECK(!config.per_channel || weight_shape.size() >= 2, op, ": per_channel needs a weight of rank >= 2, got ",
               to_string(weight_shape));
}

// The quantizer a weighted layer holds. Not a module: it registers `weight_step` on its owner.
class WeightQuantizer {
public:
    // Validates and applies `config` (see the top of this file for the LSQ step's life cycle).
    void configure(Module& owner, const std::string& who, const Var& weight, const WeightQuantConfig& config) {
        check_weight_quant(who, weight.shape(), config);
        config_ = config;
        if (!uses_step()) return;
        const bool same_init = step_.defined() && step_bits_ == config.bits &&
                               step_per_channel_ == config.per_channel && step_grid_ == config.grid &&
                               step_init_ == config.step_init;
        if (!same_init) reset_step(owner, weight);
    }

    // (Re)initialises the LSQ step from the weight's current values (LSQ at 1..8 bits only).
    void reset_step(Module& owner, const Var& weight) {
        SPEQ_CHECK(uses_step(), "WeightQuantizer::reset_step: the layer does not use LSQ at 1..8 bits (",
                   describe(config_), ")");
        Tensor s = quant::lsq_init_step(weight.value(), config_.bits, config_.per_channel, config_.grid,
                                        config_.step_init);
        if (!step_.defined()) {
            step_ = owner.register_parameter("weight_step", std::move(s), /*weight_decay=*/false);
        } else {
            step_.value() = std::move(s);  // the shape may change (per_channel switched)
            step_.drop_grad();
        }
        step_bits_ = config_.bits, step_per_channel_ = config_.per_channel;
        step_grid_ = config_.grid, step_init_ = config_.step_init;
    }

    // The weight the layer computes with. Recorded on the tape like any op.  weight: S -> S
    Var operator()(const Var& weight) const {
        if (!config_.quantizes()) return weight;
        if (config_.scale == WeightScale::lsq)
            return quant::lsq_quantize(weight, step_, config_.bits, config_.per_channel, config_.grid);
        const quant::ScaleMethod method =
            config_.scale == WeightScale::max_abs ? quant::ScaleMethod::max_abs : quant::ScaleMethod::min_l2;
        return quant::quantize_weight(weight, quant::WeightQuantOptions{config_.bits, config_.per_channel, method,
                                                                       config_.grid});
    }

    // The integer codes behind operator()(weight) (1..8 bits): value(i) equals its output exactly.
    quant::IntegerCodes codes(const Tensor& weight) const {
        SPEQ_CHECK(config_.quantizes(), "WeightQuantizer::codes: no integer codes at full precision");
        if (config_.scale == WeightScale::lsq) return quant::lsq_codes(weight, step_.value(), config_.bits, config_.grid);
        const quant::ScaleMethod method =
            config_.scale == WeightScale::max_abs ? quant::ScaleMethod::max_abs : quant::ScaleMethod::min_l2;
        return quant::weight_codes(weight, quant::WeightQuantOptions{config_.bits, config_.per_channel, method,
                                                                    config_.grid});
    }

    const WeightQuantConfig& config() const { return config_; }
    // The LSQ step (undefined until LSQ is first switched on at 1..8 bits).
    const Var& step() const { return step_; }
    bool uses_step() const { return config_.quantizes() && config_.scale == WeightScale::lsq; }

private:
    WeightQuantConfig config_;
    Var step_;
    // The settings step_ was initialised for.
    int step_bits_ = 0;
    bool step_per_channel_ = false;
    quant::Grid step_grid_ = quant::Grid::mid_rise;
    quant::StepInit step_init_ = quant::StepInit::lsq;
};

// The base of layers with a quantizable weight (Conv2d, Linear): parameters `weight`, optional
// `bias` (never quantized), and `weight_step` once LSQ is used. Subclasses register weight and bias
// in their constructor (in that order, as PyTorch) and call effective_weight() in forward.
class WeightQuantLayer : public UnaryModule {
public:
    void set_weight_quant(const WeightQuantConfig& config) { quantizer_.configure(*this, layer_kind(), weight_, config); }
    // Changes only the bit-width, keeping the other settings.
    void set_weight_bits(int bits) {
        WeightQuantConfig c = quantizer_.config();
        c.bits = bits;
        set_weight_quant(c);
    }
    const WeightQuantConfig& weight_quant() const { return quantizer_.config(); }
    int weight_bits() const { return quantizer_.config().bits; }

    // The weight forward computes with, without recording anything (a copy).  -> weight's shape
    Tensor quantized_weight() const {
        NoGradGuard no_grad;
        return Tensor(quantizer_(weight_).value());
    }
    // Its integer codes (1..8 bits; full precision throws): codes.value(i) == quantized_weight()[i].
    quant::IntegerCodes weight_codes() const { return quantizer_.codes(weight_.value()); }
    // Re-initialises the LSQ step from the current weights (e.g. after loading new weights).
    void reset_weight_step() { quantizer_.reset_step(*this, weight_); }

    const Var& weight() const { return weight_; }
    const Var& bias() const { return bias_; }  // undefined Var when built without bias
    const Var& weight_step() const { return quantizer_.step(); }  // undefined unless LSQ was used

    // "nn::Conv2d", "nn::Linear": names the layer kind in error messages.
    virtual const char* layer_kind() const = 0;

protected:
    // The weight to compute with: quantized as configured, recorded on the tape.
    Var effective_weight() const { return quantizer_(weight_); }

    Var weight_, bias_;

private:
    WeightQuantizer quantizer_;
};

}  // namespace speq::nn
