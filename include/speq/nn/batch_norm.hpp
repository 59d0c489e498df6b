// speq/nn/batch_norm.hpp: batch normalization over the channels of NCHW images
// (PyTorch's nn.BatchNorm2d, affine, tracking running statistics).
//
// Three ways to run it:
//   training mode, updating stats   normalize with the batch's statistics and move the running
//                                   mean/var towards them (the usual training forward);
//   training mode, stats frozen     normalize with the batch's statistics, leave the running
//                                   statistics alone: SPEQ's teacher pass, which must see the same
//                                   kind of normalization as the student without counting the
//                                   batch twice. Use FreezeRunningStats (below) around it;
//   eval mode                       normalize with the running statistics.
#pragma once

#include <functional>
#include <utility>
#include <vector>

#include "speq/nn/module.hpp"
#include "speq/ops/batch_norm.hpp"

namespace speq::nn {

// Parameters: weight (gamma) [C] = 1, bias (beta) [C] = 0, both without weight decay.
// Buffers: running_mean [C] = 0, running_var [C] = 1.
// forward: x [N, C, H, W] -> same shape
class BatchNorm2d : public UnaryModule {
public:
    explicit BatchNorm2d(int channels, float momentum = 0.1f, float eps = 1e-5f)
        : channels_(channels), momentum_(momentum), eps_(eps) {
        SPEQ_CHECK(channels >= 1, "nn::BatchNorm2d: channels must be >= 1, got ", channels);
        SPEQ_CHECK(momentum >= 0.0f && momentum <= 1.0f, "nn::BatchNorm2d: momentum must be in [0, 1], got ", momentum);
        SPEQ_CHECK(eps > 0.0f, "nn::BatchNorm2d: eps must be > 0, got ", eps);
        weight_ = register_parameter("weight", Tensor::full({channels}, 1.0f), /*weight_decay=*/false);
        bias_ = register_parameter("bias", Tensor::zeros({channels}), /*weight_decay=*/false);
        running_mean_ = &register_buffer("running_mean", Tensor::zeros({channels}));
        running_var_ = &register_buffer("running_var", Tensor::full({channels}, 1.0f));
    }

    Var forward(const Var& x) override {
        return batch_norm2d(x, weight_, bias_, *running_mean_, *running_var_, options());
    }

    // The options a forward runs with now (mode, running-statistics setting, momentum, eps); also
    // what nn::bn_act hands the fused op.
    BatchNormOptions options() const {
        BatchNormOptions options;
        options.training = is_training();
        options.update_running_stats = is_training() && update_running_stats_;
        options.momentum = momentum_;
        options.eps = eps_;
        options.sum_over_ranks = sum_over_ranks_;
        return options;
    }

    // Synchronized batch norm over data-parallel ranks (ops' BatchNormOptions::sum_over_ranks);
    // an empty function: this process's batch alone (the default). set_sum_over_ranks (below)
    // sets it on a whole model.
    void set_sum_over_ranks(std::function<void(double*, int64_t)> sum) { sum_over_ranks_ = std::move(sum); }

    // false: training-mode forwards leave running_mean / running_var unchanged (default true).
    void set_update_running_stats(bool on) { update_running_stats_ = on; }
    bool updates_running_stats() const { return update_running_stats_; }

    const Var& weight() const { return weight_; }
    const Var& bias() const { return bias_; }
    Tensor& running_mean() { return *running_mean_; }
    const Tensor& running_mean() const { return *running_mean_; }
    Tensor& running_var() { return *running_var_; }
    const Tensor& running_var() const { return *running_var_; }
    int channels() const { return channels_; }
    float momentum() const { return momentum_; }
    float eps() const { return eps_; }

private:
    int channels_;
    float momentum_, eps_;
    bool update_running_stats_ = true;
    std::function<void(double*, int64_t)> sum_over_ranks_;
    Var weight_, bias_;
    Tensor* running_mean_ = nullptr;  // owned by Module's buffer list
    Tensor* running_var_ = nullptr;
};

// Every BatchNorm2d of `root`'s tree normalizes in training mode with the statistics of all ranks,
// added by `sum` (empty: each rank's own again).
inline void set_sum_over_ranks(Module& root, const std::function<void(double*, int64_t)>& sum) {
    root.apply([&](Module& m) {
        if (auto* bn = dynamic_cast<BatchNorm2d*>(&m)) bn->set_sum_over_ranks(sum);
    });
}

// While alive, no BatchNorm2d in `root`'s tree updates its running statistics; afterwards each
// one's previous setting is restored. Train/eval mode is not touched.
//
//   { NoGradGuard no_grad; nn::FreezeRunningStats frozen(model); teacher = model(x); }
class FreezeRunningStats {
public:
    explicit FreezeRunningStats(Module& root) {
        root.apply([this](Module& m) {
            if (auto* bn = dynamic_cast<BatchNorm2d*>(&m)) {
                saved_.push_back({bn, bn->updates_running_stats()});
                bn->set_update_running_stats(false);
            }
        });
    }
    ~FreezeRunningStats() {
        for (auto& [bn, previous] : saved_) bn->set_update_running_stats(previous);
    }
    FreezeRunningStats(const FreezeRunningStats&) = delete;
    FreezeRunningStats& operator=(const FreezeRunningStats&) = delete;

private:
    std::vector<std::pair<BatchNorm2d*, bool>> saved_;
};

}  // namespace speq::nn
