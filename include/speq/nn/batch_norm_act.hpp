// speq/nn/batch_norm_act.hpp: bn_act, a BatchNorm2d and the ActQuant after it (with the residual
// add in between, in a ResNet block) run as one fused op (ops/batch_norm_act.hpp); conv_bn_act,
// the same after a Conv2d, which in inference also folds the conv in (ops/conv2d_bn_act.hpp).
//
// The modules stay what they are: their parameters, buffers, names and state_dict do not change,
// and their settings (train/eval, FreezeRunningStats, the ActQuant's bits, changed between passes
// by SPEQ's teacher) are read on every call. Only the pass over memory is shared.
#pragma once

#include "speq/core/tape.hpp"
#include "speq/nn/act_quant.hpp"
#include "speq/nn/batch_norm.hpp"
#include "speq/nn/conv2d.hpp"
#include "speq/ops/add.hpp"
#include "speq/ops/batch_norm_act.hpp"
#include "speq/ops/conv2d_bn_act.hpp"

namespace speq::nn {

namespace detail {
inline bool& bn_act_fusion_enabled() {
    thread_local bool enabled = true;
    return enabled;
}
}  // namespace detail

// While alive, bn_act on this thread runs the modules one after the other, as before the fused op
// existed: the reference the tests compare the fused path with.
struct UnfusedBnActGuard : ScopedFlag {
    UnfusedBnActGuard() : ScopedFlag(detail::bn_act_fusion_enabled(), false) {}
};

// act(bn(x)), or act(bn(x) + *residual):  x [N, C, H, W] -> same shape (residual: same shape)
//
// Same values as act.forward(bn.forward(x)) (with add(., *residual) in between) bit for bit, and
// the same gradients up to the order of sums. The unfused modules run instead when the ActQuant
// has a calibration pending: calibrate_alpha needs the activation's input, which the fused op never
// writes out.
inline Var bn_act(BatchNorm2d& bn, ActQuant& act, const Var& x, const Var* residual = nullptr) {
    if (!detail::bn_act_fusion_enabled() || act.calibration_pending()) {
        Var h = bn.forward(x);
        if (residual) h = add(h, *residual);
        return act.forward(h);
    }
    return batch_norm_act(x, bn.weight(), bn.bias(), bn.running_mean(), bn.running_var(), bn.options(), act.alpha(),
                          act.bits(), residual);
}

// act(bn(conv(x))), or act(bn(conv(x)) + *residual): the same values as bn_act(bn, act,
// conv.forward(x), residual), bit for bit. In inference (eval-mode batch norm, nothing requiring
// grad: evaluation under NoGradGuard) the conv's tiles go through batch norm and the activation
// while still in cache (ops/conv2d_bn_act.hpp); otherwise, and for convs the direct kernel does
// not take, it is the conv, then bn_act.
inline Var conv_bn_act(Conv2d& conv, BatchNorm2d& bn, ActQuant& act, const Var& x, const Var* residual = nullptr) {
    const Var w = conv.forward_weight();
    if (detail::bn_act_fusion_enabled() && !act.calibration_pending() &&
        conv2d_bn_act_applies(x, w, conv.bias(), conv.options(), bn.weight(), bn.bias(), bn.options(), act.alpha(),
                              residual))
        return conv2d_bn_act_inference(x, w, conv.bias(), conv.options(), bn.weight(), bn.bias(), bn.running_mean(),
                                       bn.running_var(), bn.options(), act.alpha(), act.bits(), residual);
    return bn_act(bn, act, conv2d(x, w, conv.bias(), conv.options()), residual);
}

}  // namespace speq::nn
