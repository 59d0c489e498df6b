// speq/ops/conv2d_bn_act.hpp: inference only: y = act(batch_norm(conv2d(x, w, b)) [+ residual]),
// with batch norm, the residual add and the activation applied to each tile of output pixels
// right after the direct kernel has summed it, while the tile is still in L1. The conv output is
// never written to memory and read back, which is the separate pass batch_norm_act costs.
//
// Its values are those of batch_norm_act(conv2d(x, w, b), ...) in eval mode, bit for bit: the
// same kernel sums the conv, and the epilogue is the same expression (detail::ChannelAffine of
// the running statistics, + residual, then ReLU or PACT). It applies only where that expression
// is known before the conv runs and nothing needs a gradient: eval-mode batch norm (running
// statistics), no input requiring grad (or a NoGradGuard), and a conv the direct kernel takes
// (conv2d_bn_act_applies). nn::conv_bn_act checks that and runs the unfused ops otherwise.
#pragma once

#include <cstdint>
#include <vector>

#include "speq/core/tape.hpp"
#include "speq/ops/batch_norm.hpp"
#include "speq/ops/batch_norm_act.hpp"
#include "speq/ops/conv2d.hpp"
#include "speq/quant/bits.hpp"

namespace speq {

inline bool conv2d_bn_act_applies(const Var& x, const Var& weight, const Var& bias, Conv2dOptions options,
                                  const Var& gamma, const Var& beta, const BatchNormOptions& bn_options,
                                  const Var& alpha, const Var* residual) {
    const Var none;
    if (bn_options.training || needs_grad({&x, &weight, &bias, &gamma, &beta, &alpha, residual ? residual : &none}))
        return false;
    return kernels::direct_conv_applies(detail::conv2d_geometry(x, weight, bias, options));
}

namespace detail {

// The fused pass for one activation; `rd` is the residual's data, or nothing.
template <class Act, class... R>
Tensor conv2d_bn_act_with(const kernels::ConvGeometry& g, const Var& x, const Var& weight, const float* bias,
                          const BatchNormStatistics& stats, const Tensor& gamma, const Tensor& beta, const Act& act,
                          const R*... rd) {
    using kernels::FloatBatch;
    const int64_t N = x.shape()[0], K = weight.shape()[0], P = g.out_h * g.out_w;
    std::vector<ChannelAffine> affine;
    affine.reserve(static_cast<size_t>(K));
    for (int64_t k = 0; k < K; ++k) affine.emplace_back(stats, gamma, beta, k);
    Tensor y = Tensor::uninitialized({N, K, g.out_h, g.out_w});
    // y = act(bn(conv) [+ r]) on the tile just summed: pixels [p0, p0 + pixels) of every channel of image n
    auto epilogue = [&](int64_t n, int64_t p0, int64_t pixels) {
        float* y_n = y.data() + n * K * P;
        for (int64_t k = 0; k < K; ++k) {
            const int64_t at = k * P + p0;
            for (int64_t i = 0; i < pixels; i += kernels::kLanes) {
                const FloatBatch v = FloatBatch::load_unaligned(y_n + at + i);
                act(bn_plus_residual(affine[k], v, FloatBatch::load_unaligned(rd + n * K * P + at + i)...))
                    .store_unaligned(y_n + at + i);
            }
        }
    };
    // The same conv as conv2d's: in integers where the operands are quantized (then the epilogue
    // runs on each whole image, still in L2), else the direct kernel.
    if (!conv2d_integer(g, x, weight, bias, y.data(), [&](int64_t n) { epilogue(n, 0, P); }))
        conv2d_direct(g, x.value(), weight.value(), bias, y.data(), epilogue);
    return y;
}

}  // namespace detail

// act(batch_norm2d(conv2d(x, weight, bias, options), gamma, beta, running_mean, running_var,
// bn_options) [+ *residual]), inference only: conv2d_bn_act_applies must hold (checked).
//   x: [N, C, H, W], weight: [K, C, kh, kw], bias: [K] or undefined, gamma, beta, running_*: [K],
//   alpha: [1], residual: the output's shape. act: ReLU at bits 32, PACT at 1..8 bits (as batch_norm_act).
inline Var conv2d_bn_act_inference(const Var& x, const Var& weight, const Var& bias, Conv2dOptions options,
                                   const Var& gamma, const Var& beta, const Tensor& running_mean,
                                   const Tensor& running_var, const BatchNormOptions& bn_options, const Var& alpha,
                                   int bits, const Var* residual = nullptr) {
    const kernels::ConvGeometry g = detail::conv2d_geometry(x, weight, bias, options);
    SPEQ_CHECK(conv2d_bn_act_applies(x, weight, bias, options, gamma, beta, bn_options, alpha, residual),
               "conv2d_bn_act_inference: needs eval-mode batch norm, no input requiring grad and a conv the "
               "direct kernel takes (see conv2d_bn_act_applies)");
    const Shape out_shape{x.shape()[0], weight.shape()[0], g.out_h, g.out_w};
    detail::check_batch_norm_parameters("conv2d_bn_act_inference", weight.shape()[0], "weight", gamma, beta,
                                        running_mean, running_var, bn_options);
    if (residual && residual->shape() != out_shape)
        shape_mismatch("conv2d_bn_act_inference", "residual vs the conv's output", residual->shape(), out_shape);
    quant::check_bits("conv2d_bn_act_inference", bits);

    const detail::BatchNormStatistics stats =
        detail::batch_norm_eval_statistics(running_mean, running_var, bn_options.eps);
    const float* bp = bias.defined() ? bias.value().data() : nullptr;
    auto run = [&](const auto& act) {
        Var out(residual ? detail::conv2d_bn_act_with(g, x, weight, bp, stats, gamma.value(), beta.value(), act,
                                                      residual->value().data())
                         : detail::conv2d_bn_act_with(g, x, weight, bp, stats, gamma.value(), beta.value(), act),
                false);
        act.annotate(out);  // PACT's codes, for the next conv's integer path
        return out;
    };
    if (quant::is_full_precision(bits)) return run(detail::ReluActivation{});
    return run(detail::PactActivation(quant::detail::check_alpha("conv2d_bn_act_inference", alpha), bits));
}

}  // namespace speq
