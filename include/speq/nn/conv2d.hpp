// speq/nn/conv2d.hpp: a 2-D convolution layer (PyTorch's nn.Conv2d with square kernels), with an
// optional weight quantizer (nn/weight_quantizer.hpp; full precision by default).
#pragma once

#include "speq/nn/init.hpp"
#include "speq/nn/module.hpp"
#include "speq/nn/weight_quantizer.hpp"
#include "speq/ops/conv2d.hpp"

namespace speq::nn {

// Parameters: weight [out, in, k, k], bias [out] (only when `bias` is true), weight_step (LSQ only).
// forward: x [N, in, H, W] -> [N, out, (H + 2p - k) / s + 1, (W + 2p - k) / s + 1],
//          computed with the quantized weight (set_weight_quant) and the full-precision bias.
class Conv2d : public WeightQuantLayer {
public:
    Conv2d(int in_channels, int out_channels, int kernel_size, int stride, int padding, bool bias, Rng& rng,
           WeightInit init = WeightInit::pytorch_default)
        : in_channels_(in_channels), out_channels_(out_channels), kernel_size_(kernel_size),
          options_{stride, padding} {
        SPEQ_CHECK(in_channels >= 1 && out_channels >= 1, "nn::Conv2d: channels must be >= 1, got in_channels ",
                   in_channels, ", out_channels ", out_channels);
        SPEQ_CHECK(kernel_size >= 1, "nn::Conv2d: kernel_size must be >= 1, got ", kernel_size);
        SPEQ_CHECK(stride >= 1, "nn::Conv2d: stride must be >= 1, got ", stride);
        SPEQ_CHECK(padding >= 0, "nn::Conv2d: padding must be >= 0, got ", padding);
        Tensor w({out_channels, in_channels, kernel_size, kernel_size});
        Tensor b = bias ? Tensor({out_channels}) : Tensor();
        init_weight_and_bias(w, bias ? &b : nullptr, rng, init);
        weight_ = register_parameter("weight", std::move(w));
        if (bias) bias_ = register_parameter("bias", std::move(b));
    }

    Var forward(const Var& x) override { return conv2d(x, forward_weight(), bias_, options_); }
    // What forward passes to conv2d: the weight quantized as configured (recorded on the tape), and
    // the stride and padding (nn::conv_bn_act runs the conv through a fused op with them).
    Var forward_weight() const { return effective_weight(); }
    const Conv2dOptions& options() const { return options_; }
    const char* layer_kind() const override { return "nn::Conv2d"; }

    int in_channels() const { return in_channels_; }
    int out_channels() const { return out_channels_; }
    int kernel_size() const { return kernel_size_; }
    int stride() const { return options_.stride; }
    int padding() const { return options_.padding; }

private:
    int in_channels_, out_channels_, kernel_size_;
    Conv2dOptions options_;
};

}  // namespace speq::nn
