// speq/nn/linear.hpp: a fully connected layer (PyTorch's nn.Linear), with an optional weight
// quantizer (nn/weight_quantizer.hpp; full precision by default).
#pragma once

#include "speq/nn/init.hpp"
#include "speq/nn/module.hpp"
#include "speq/nn/weight_quantizer.hpp"
#include "speq/ops/linear.hpp"

namespace speq::nn {

// Parameters: weight [out, in], bias [out] (only when `bias` is true), weight_step (LSQ only).
// forward: x [N, in] -> [N, out],  y = x Q(W)^T + b   (Q: the weight quantizer; identity by default)
class Linear : public WeightQuantLayer {
public:
    Linear(int in_features, int out_features, bool bias, Rng& rng, WeightInit init = WeightInit::pytorch_default)
        : in_features_(in_features), out_features_(out_features) {
        SPEQ_CHECK(in_features >= 1 && out_features >= 1, "nn::Linear: features must be >= 1, got in_features ",
                   in_features, ", out_features ", out_features);
        Tensor w({out_features, in_features});
        Tensor b = bias ? Tensor({out_features}) : Tensor();
        init_weight_and_bias(w, bias ? &b : nullptr, rng, init);
        weight_ = register_parameter("weight", std::move(w));
        if (bias) bias_ = register_parameter("bias", std::move(b));
    }

    Var forward(const Var& x) override { return linear(x, effective_weight(), bias_); }
    const char* layer_kind() const override { return "nn::Linear"; }

    int in_features() const { return in_features_; }
    int out_features() const { return out_features_; }

private:
    int in_features_, out_features_;
};

}  // namespace speq::nn
