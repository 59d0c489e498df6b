// speq/nn/quant_control.hpp: finding and setting the quantizers of a model: activation bit-widths
// (all at once, per layer, saved and restored around SPEQ's teacher pass), the quantization policy
// of a whole model (configure_quantization), and alpha calibration from one batch.
//
// Order: every list here is in registration order (Module::named_modules). The models of speq
// register their layers in forward order, so the i-th ActQuant is the i-th one a forward meets, the
// first weight layer is the first conv and the last one is the classifier.
//
// Typical use, QAT/SPEQ from a full-precision checkpoint:
//   auto model = nn::make_model("resnet20", 10, 3, nn::Shortcut::A, rng);
//   load the FP checkpoint (its alphas are the unused init constant)
//   nn::configure_quantization(*model, {/*weight_bits=*/2, /*act_bits=*/2});   // after loading:
//   nn::calibrate_act_alphas(*model, first_batch);                              // LSQ steps and
//   optim::SGD sgd(model->named_parameters(), ...);                             // alphas start from
//                                                                                 the trained weights
// Resuming instead: configure_quantization, then load the checkpoint (it holds alphas and steps).
#pragma once

#include <algorithm>
#include <string>
#include <utility>
#include <vector>

#include "speq/nn/act_quant.hpp"
#include "speq/nn/batch_norm.hpp"
#include "speq/nn/module.hpp"
#include "speq/nn/weight_quantizer.hpp"

namespace speq::nn {

using NamedActQuants = std::vector<std::pair<std::string, ActQuant*>>;
using NamedWeightLayers = std::vector<std::pair<std::string, WeightQuantLayer*>>;

// Every ActQuant of the model with its dotted name ("act", "layer1.0.act1", ...), in registration
// (= forward) order.
inline NamedActQuants named_act_quants(Module& model) {
    NamedActQuants out;
    for (auto& [name, m] : model.named_modules())
        if (auto* a = dynamic_cast<ActQuant*>(m)) out.push_back({name, a});
    return out;
}

// Every layer with a quantizable weight (Conv2d, Linear, ...) with its name, in registration order.
inline NamedWeightLayers named_weight_layers(Module& model) {
    NamedWeightLayers out;
    for (auto& [name, m] : model.named_modules())
        if (auto* w = dynamic_cast<WeightQuantLayer*>(m)) out.push_back({name, w});
    return out;
}

namespace detail {
template <class Named>
auto& find_named(Named named, const std::string& name, const char* what) {
    for (auto& [n, p] : named)
        if (n == name) return *p;
    std::string known;
    for (auto& [n, p] : named) known += (known.empty() ? "" : ", ") + n;
    fail(what, ": the model has no layer named '", name, "' (it has: ", known.empty() ? "none" : known, ")");
}
}  // namespace detail

// The ActQuant / weight layer of that name; an unknown name is an error listing the known ones.
inline ActQuant& act_quant(Module& model, const std::string& name) {
    return detail::find_named(named_act_quants(model), name, "act_quant");
}
inline WeightQuantLayer& weight_layer(Module& model, const std::string& name) {
    return detail::find_named(named_weight_layers(model), name, "weight_layer");
}

// ---- activation bit-widths ----

// Every ActQuant to `bits` (1..8 or 32).
inline void set_act_bits(Module& model, int bits) {
    quant::check_bits("set_act_bits", bits);
    for (auto& [name, a] : named_act_quants(model)) a->set_bits(bits);
}
// One ActQuant, by name.
inline void set_act_bits(Module& model, const std::string& name, int bits) { act_quant(model, name).set_bits(bits); }

// Every ActQuant but the last to `bits`: the body's activations. The last one feeds the classifier
// and keeps its bits (configure_quantization gives it max(last_layer_bits, act_bits)), whatever
// they are; speq-eval --act-bits uses this.
inline void set_body_act_bits(Module& model, int bits) {
    quant::check_bits("set_body_act_bits", bits);
    NamedActQuants acts = named_act_quants(model);
    for (size_t i = 0; i + 1 < acts.size(); ++i) acts[i].second->set_bits(bits);
}

// The bits of every ActQuant, in forward order.
inline std::vector<int> act_bits(Module& model) {
    std::vector<int> out;
    for (auto& [name, a] : named_act_quants(model)) out.push_back(a->bits());
    return out;
}
// bits[i] to the i-th ActQuant (SPEQ's teacher draws one per layer). All are checked first, so an
// error changes nothing.
inline void set_act_bits_per_layer(Module& model, const std::vector<int>& bits) {
    NamedActQuants acts = named_act_quants(model);
    SPEQ_CHECK(bits.size() == acts.size(), "set_act_bits_per_layer: the model has ", acts.size(),
               " activation quantizers, got ", bits.size(), " bit-widths");
    for (size_t i = 0; i < bits.size(); ++i) {
        const std::string who = "set_act_bits_per_layer: layer '" + acts[i].first + "'";
        quant::check_bits(who.c_str(), bits[i]);
    }
    for (size_t i = 0; i < bits.size(); ++i) acts[i].second->set_bits(bits[i]);
}

// Saves every ActQuant's bit-width; restores them when destroyed (also when an exception unwinds).
//   { nn::ActBitsGuard keep(model); nn::set_act_bits_per_layer(model, drawn); teacher = model(x); }
class ActBitsGuard {
public:
    explicit ActBitsGuard(Module& model) {
        for (auto& [name, a] : named_act_quants(model)) saved_.push_back({a, a->bits()});
    }
    ~ActBitsGuard() {
        for (auto& [a, bits] : saved_) a->set_bits(bits);
    }
    ActBitsGuard(const ActBitsGuard&) = delete;
    ActBitsGuard& operator=(const ActBitsGuard&) = delete;

private:
    std::vector<std::pair<ActQuant*, int>> saved_;
};

// ---- the quantization policy of a whole model ----

// What configure_quantization applies. All bit-widths: 1..8, or 32 = full precision.
//   weight_bits       every conv's weights except the first ("the body")
//   act_bits          every ActQuant except the last
//   first_layer_bits  the first weight layer (the first conv): its weights
//   last_layer_bits   the last weight layer (the classifier): its weights, and the last ActQuant,
//                     whose output (pooled) is the classifier's input
// First and last layers take the HIGHER precision of their own setting and the body's: with the
// defaults (8), W2A2 keeps them at 8 bits (common practice), while W32A32 is the full-precision
// model without touching first/last; to quantize them like the body, set them to the body's bits.
// The input image is never quantized (no ActQuant precedes the first conv).
struct QuantConfig {
    int weight_bits = quant::kFullPrecision;
    int act_bits = quant::kFullPrecision;
    int first_layer_bits = 8;
    int last_layer_bits = 8;
    // How weights are quantized (all weight layers alike):
    bool per_channel = false;
    WeightScale weight_scale = WeightScale::min_l2;
    quant::Grid grid = quant::Grid::mid_rise;
    quant::StepInit step_init = quant::StepInit::lsq;
};

// bits for a layer whose own setting is `layer` inside a body at `body` (32 is the highest).
inline int more_precise_bits(int layer, int body) { return std::max(layer, body); }

// Applies `config` to every weight layer and ActQuant of `model` (see QuantConfig). Everything is
// checked before anything changes. LSQ steps are initialised from the current weights.
inline void configure_quantization(Module& model, const QuantConfig& config) {
    quant::check_bits("configure_quantization: weight_bits", config.weight_bits);
    quant::check_bits("configure_quantization: act_bits", config.act_bits);
    quant::check_bits("configure_quantization: first_layer_bits", config.first_layer_bits);
    quant::check_bits("configure_quantization: last_layer_bits", config.last_layer_bits);
    NamedWeightLayers layers = named_weight_layers(model);
    NamedActQuants acts = named_act_quants(model);
    SPEQ_CHECK(!layers.empty(), "configure_quantization: the model has no weight layer (Conv2d or Linear)");

    std::vector<WeightQuantConfig> plan;
    for (size_t i = 0; i < layers.size(); ++i) {
        int bits = config.weight_bits;
        if (i == 0) bits = more_precise_bits(config.first_layer_bits, bits);
        if (i + 1 == layers.size()) bits = more_precise_bits(config.last_layer_bits, bits);
        WeightQuantConfig c;
        c.bits = bits;
        c.per_channel = config.per_channel;
        c.scale = config.weight_scale;
        c.grid = config.grid;
        c.step_init = config.step_init;
        check_weight_quant("configure_quantization: layer '" + layers[i].first + "' (" + layers[i].second->layer_kind() +
                               ")",
                           layers[i].second->weight().shape(), c);
        plan.push_back(c);
    }
    for (size_t i = 0; i < layers.size(); ++i) layers[i].second->set_weight_quant(plan[i]);
    for (size_t i = 0; i < acts.size(); ++i)
        acts[i].second->set_bits(i + 1 == acts.size() ? more_precise_bits(config.last_layer_bits, config.act_bits)
                                                      : config.act_bits);
}

// One line per quantizer: "conv1: W8 min_l2 per-tensor mid_rise", "act: A2 alpha 3.1", ... (logs).
inline std::vector<std::string> describe_quantization(Module& model) {
    std::vector<std::string> out;
    for (auto& [name, m] : model.named_modules()) {
        if (auto* w = dynamic_cast<WeightQuantLayer*>(m)) out.push_back(name + ": " + describe(w->weight_quant()));
        if (auto* a = dynamic_cast<ActQuant*>(m))
            out.push_back(name + ": A" + std::to_string(a->bits()) + " alpha " + std::to_string(a->alpha_value()));
    }
    return out;
}

// ---- alpha calibration ----

struct CalibrationOptions {
    // Bits to calibrate for: 0 = each ActQuant's own bit-width, with full-precision layers
    // calibrated as 8-bit (their alpha is unused until they are switched to 1..8 bits).
    int bits = 0;
};

// Sets every ActQuant's alpha from one forward pass over `batch` (nn::calibrate_alpha: the alpha
// minimizing the quantization MSE of that layer's inputs at its bits). Layers are calibrated in
// forward order within the one pass, each on the inputs it sees given the layers before it are
// already calibrated and quantized. The pass records nothing and leaves BatchNorm's running
// statistics alone; it runs in the model's current mode (training: batch statistics, as the
// quantized training forward will see them). Call it after configure_quantization (it uses the bits
// set there) and before building the optimizer.   batch: the model's input, e.g. [N, 3, 32, 32]
inline void calibrate_act_alphas(UnaryModule& model, const Tensor& batch, CalibrationOptions options = {}) {
    SPEQ_CHECK(options.bits == 0 || (options.bits >= quant::kMinBits && options.bits <= quant::kMaxBits),
               "calibrate_act_alphas: bits must be 1..8, or 0 for each layer's own, got ", options.bits);
    NamedActQuants acts = named_act_quants(model);
    // Clears pending calibrations however the pass ends.
    struct Pending {
        NamedActQuants& acts;
        ~Pending() {
            for (auto& [name, a] : acts) a->calibrate_on_next_forward(0);
        }
    } pending{acts};
    for (auto& [name, a] : acts) {
        const int own = quant::is_full_precision(a->bits()) ? 8 : a->bits();
        a->calibrate_on_next_forward(options.bits != 0 ? options.bits : own);
    }
    {
        NoGradGuard no_grad;
        FreezeRunningStats frozen(model);
        model.forward(Var(batch));
    }
    for (auto& [name, a] : acts)
        SPEQ_CHECK(!a->calibration_pending(), "calibrate_act_alphas: the activation quantizer '", name,
                   "' was not reached by the forward pass, so it was not calibrated");
}

}  // namespace speq::nn
