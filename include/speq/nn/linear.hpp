// speq/nn/linear.hpp: a fully connected layer (PyTorch's nn.Linear).
#pragma once

#include "speq/nn/init.hpp"
#include "speq/nn/module.hpp"
#include "speq/ops/linear.hpp"

namespace speq::nn {

// Parameters: weight [out, in], bias [out] (only when `bias` is true).
// forward: x [N, in] -> [N, out],  y = x W^T + b
class Linear : public UnaryModule {
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

    Var forward(const Var& x) override { return linear(x, weight_, bias_); }

    const Var& weight() const { return weight_; }
    const Var& bias() const { return bias_; }  // undefined Var when built without bias
    int in_features() const { return in_features_; }
    int out_features() const { return out_features_; }

private:
    int in_features_, out_features_;
    Var weight_, bias_;
};

}  // namespace speq::nn
