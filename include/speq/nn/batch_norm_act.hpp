// speq/nn/batch_norm_act.hpp: bn_act, a BatchNorm2d and the ActQuant after it (with the residual
// add in between, in a ResNet block) run as one fused op (ops/batch_norm_act.hpp).
//
// The modules stay what they are: their parameters, buffers, names and state_dict do not change,
// and their settings (train/eval, FreezeRunningStats, the ActQuant's bits, changed between passes
// by SPEQ's teacher) are read on every call. Only the pass over memory is shared.
#pragma once

#include "speq/core/tape.hpp"
#include "speq/nn/act_quant.hpp"
#include "speq/nn/batch_norm.hpp"
#include "speq/ops/add.hpp"
#include "speq/ops/batch_norm_act.hpp"

namespace speq::nn {

namespace detail {
inline bool& bn_act_fusion_enabled() {
    thread_local bool enabled = true;
    return enabled;
}
}  // namespace detail

// While alive, bn_act on this thread runs the modules one after the other, as before the fused op
// existed: the reference the tests compare the fused path with.
class UnfusedBnActGuard {
public:
    UnfusedBnActGuard() : previous_(detail::bn_act_fusion_enabled()) { detail::bn_act_fusion_enabled() = false; }
    ~UnfusedBnActGuard() { detail::bn_act_fusion_enabled() = previous_; }
    UnfusedBnActGuard(const UnfusedBnActGuard&) = delete;
    UnfusedBnActGuard& operator=(const UnfusedBnActGuard&) = delete;

private:
    bool previous_;
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

}  // namespace speq::nn
