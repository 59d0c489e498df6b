// speq/nn/init.hpp: parameter initializers, as PyTorch's torch.nn.init, drawing from speq::Rng
// so that one seed gives the same model on every machine and thread count.
//
// Fans of a weight [out, in, k1, k2, ...]: fan_in = in * k1 * k2 * ..., fan_out = out * k1 * k2 * ...
// (Linear [out, in]: fan_in = in, fan_out = out.)
//
// Layers take a WeightInit:
//   pytorch_default         PyTorch's nn.Conv2d / nn.Linear reset_parameters():
//                           weight ~ kaiming_uniform(a = sqrt(5)) = U(-1/sqrt(fan_in), 1/sqrt(fan_in)),
//                           bias   ~ U(-1/sqrt(fan_in), 1/sqrt(fan_in)).
//   kaiming_normal_fan_out  torchvision's ResNets for conv layers: weight ~ N(0, 2 / fan_out)
//                           (kaiming_normal_, mode="fan_out", nonlinearity="relu"), bias = 0.
//   kaiming_normal_fan_in   the common CIFAR ResNet-20 code (kaiming_normal_ with defaults):
//                           weight ~ N(0, 2 / fan_in), bias = 0.
// Weights are drawn before biases, each in row-major order.
#pragma once

#include <cmath>

#include "speq/core/rng.hpp"

namespace speq::nn {

enum class WeightInit { pytorch_default, kaiming_normal_fan_out, kaiming_normal_fan_in };

namespace init {

enum class FanMode { fan_in, fan_out };

struct Fans {
    int64_t fan_in, fan_out;
};

// weight: [out, in, ...] (rank >= 2).
inline Fans fans_of(const Shape& weight_shape) {
    SPEQ_CHECK(weight_shape.size() >= 2, "init: fans need a weight of rank >= 2 ([out, in, ...]), got ",
               to_string(weight_shape));
    int64_t receptive = 1;
    for (size_t i = 2; i < weight_shape.size(); ++i) receptive *= weight_shape[i];
    return {weight_shape[1] * receptive, weight_shape[0] * receptive};
}

inline int64_t fan(const Shape& weight_shape, FanMode mode) {
    Fans f = fans_of(weight_shape);
    int64_t n = mode == FanMode::fan_in ? f.fan_in : f.fan_out;
    SPEQ_CHECK(n > 0, "init: fan of weight ", to_string(weight_shape), " is 0");
    return n;
}

inline void constant(Tensor& t, float value) { t.fill(value); }

inline void uniform(Tensor& t, Rng& rng, float lo, float hi) { t = rand_uniform(t.shape(), rng, lo, hi); }

// N(0, (gain / sqrt(fan))^2); gain sqrt(2) is PyTorch's gain for ReLU.
inline void kaiming_normal(Tensor& w, Rng& rng, FanMode mode = FanMode::fan_in, float gain = std::sqrt(2.0f)) {
    const float stddev = gain / std::sqrt(static_cast<float>(fan(w.shape(), mode)));
    w = randn(w.shape(), rng, stddev);
}

// U(-b, b) with b = gain * sqrt(3 / fan), gain = sqrt(2 / (1 + a^2)) (leaky-ReLU slope a).
inline void kaiming_uniform(Tensor& w, Rng& rng, float a, FanMode mode = FanMode::fan_in) {
    const float gain = std::sqrt(2.0f / (1.0f + a * a));
    const float bound = gain * std::sqrt(3.0f / static_cast<float>(fan(w.shape(), mode)));
    uniform(w, rng, -bound, bound);
}

}  // namespace init

// Initializes a layer's weight and (if non-null) bias according to `how` (see the top of this file).
inline void init_weight_and_bias(Tensor& weight, Tensor* bias, Rng& rng, WeightInit how) {
    switch (how) {
        case WeightInit::pytorch_default: {
            init::kaiming_uniform(weight, rng, std::sqrt(5.0f));
            if (bias) {
                const float bound = 1.0f / std::sqrt(static_cast<float>(init::fan(weight.shape(), init::FanMode::fan_in)));
                init::uniform(*bias, rng, -bound, bound);
            }
            return;
        }
        case WeightInit::kaiming_normal_fan_out:
        case WeightInit::kaiming_normal_fan_in: {
            auto mode = how == WeightInit::kaiming_normal_fan_out ? init::FanMode::fan_out : init::FanMode::fan_in;
            init::kaiming_normal(weight, rng, mode);
            if (bias) init::constant(*bias, 0.0f);
            return;
        }
    }
    fail("init: unknown WeightInit value ", static_cast<int>(how));
}

}  // namespace speq::nn
