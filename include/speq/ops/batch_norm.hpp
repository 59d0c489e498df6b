// speq/ops/batch_norm.hpp: batch normalization over the channels of an NCHW tensor.
#pragma once

#include <array>
#include <cmath>
#include <functional>
#include <string>
#include <vector>

#include "speq/core/tape.hpp"
#include "speq/kernels/elementwise.hpp"
#include "speq/kernels/reduce.hpp"

namespace speq {

struct BatchNormOptions {
    bool training = true;              // true: normalize with batch statistics; false: running stats
    bool update_running_stats = true;  // only in training: false keeps running stats untouched (SPEQ teacher)
    float momentum = 0.1f;             // running = (1 - momentum) * running + momentum * batch (PyTorch)
    float eps = 1e-5f;
    // Synchronized batch norm (data-parallel training): when set, training mode adds each
    // per-channel sum over the processes before using it (sums[i] = the sum over the ranks of
    // their sums[i], in place, the same on every rank), so every rank normalizes with the statistics
    // of the whole batch and its backward with the gradient sums of the whole batch. The trainer
    // sets it (train::Communicator); ops know nothing of processes.
    std::function<void(double* sums, int64_t n)> sum_over_ranks;
};

namespace detail {

// The per-channel parameters and options of a batch norm over C channels; `op` starts every
// message, `of` names where C comes from ("x" when the input is given, "weight" when a conv
// produces it: ops/conv2d_bn_act.hpp).
inline void check_batch_norm_parameters(const char* op, int64_t C, const char* of, const Var& gamma, const Var& beta,
                                        const Tensor& running_mean, const Tensor& running_var,
                                        const BatchNormOptions& options) {
    SPEQ_CHECK(gamma.defined() && beta.defined(), op, ": gamma and beta must both be defined");
    const Shape channels{C};
    auto check = [&](const char* name, const Shape& shape) {
        if (shape != channels) shape_mismatch(op, (std::string(name) + " vs [C] of " + of).c_str(), shape, channels);
    };
    check("gamma", gamma.shape());
    check("beta", beta.shape());
    check("running_mean", running_mean.shape());
    check("running_var", running_var.shape());
    SPEQ_CHECK(options.eps > 0.0f, op, ": eps must be > 0, got ", options.eps);
    SPEQ_CHECK(options.momentum >= 0.0f && options.momentum <= 1.0f, op, ": momentum must be in [0, 1], got ",
               options.momentum);
}

// The checks batch_norm2d and batch_norm_act share; `op` starts every message.
inline void check_batch_norm_inputs(const char* op, const Var& x, const Var& gamma, const Var& beta,
                                    const Tensor& running_mean, const Tensor& running_var,
                                    const BatchNormOptions& options) {
    SPEQ_CHECK(x.defined() && gamma.defined() && beta.defined(), op, ": x, gamma and beta must all be defined");
    SPEQ_CHECK(x.value().rank() == 4, op, ": x must be [N, C, H, W], got ", to_string(x.shape()));
    const int64_t N = x.shape()[0], C = x.shape()[1], M = N * x.shape()[2] * x.shape()[3];
    check_batch_norm_parameters(op, C, "x", gamma, beta, running_mean, running_var, options);
    SPEQ_CHECK(!options.training || M > 1, op, ": training needs more than 1 value per channel, x is ",
               to_string(x.shape()));
}

// The [N, C, H, W] layout as the ops walk it: plane (n, c) starts at (n * C + c) * HW, channel c
// is the N planes with that c.
struct ChannelPlanes {
    int64_t N, C, HW, M;
    explicit ChannelPlanes(const Shape& s) : N(s[0]), C(s[1]), HW(s[2] * s[3]), M(s[0] * s[2] * s[3]) {}
    int64_t plane(int64_t n, int64_t c) const { return (n * C + c) * HW; }

    // A walk over channel c reads plane after plane: pieces of HW floats, C*HW floats apart. The
    // hardware prefetchers follow that when a piece is many cache lines (32x32: 4 KiB), not when it
    // is a few (8x8: 256 bytes), and the walk then waits for memory at every plane. A walk calls
    // this at plane n to ask for plane n + kAhead of each array. Measured on batch_norm_act's
    // backward (batch 128, 2 threads, Zen 5; bench/README.md): 1.7x faster at 8x8 planes, ~1.1x at
    // 16x16, when the machine was in its slow state; about 1.07x at 8x8 in its fast one. At 32x32 it
    // was slower, hence the cut-off. 2, 4 and 8 planes ahead measured alike. batch_norm2d's own
    // walks (two arrays, not three) measured no different with it, so only batch_norm_act uses it.
    static constexpr int64_t kAhead = 2, kMaxPrefetchedPlane = 256;
    template <class... Data>
    void prefetch_ahead(int64_t n, int64_t c, const Data*... data) const {
        if (HW > kMaxPrefetchedPlane || n + kAhead >= N) return;
        const int64_t p = plane(n + kAhead, c);
        (kernels::prefetch_floats(data + p, HW), ...);
    }
};

struct BatchNormStatistics {
    Tensor mean, inv_std;  // [C] each
    double count = 0.0;    // training: the values per channel they are over, all ranks' (M, or N * M)
};

// Eval mode: the running statistics, inv_std = 1 / sqrt(running_var + eps) (in double).
inline BatchNormStatistics batch_norm_eval_statistics(const Tensor& running_mean, const Tensor& running_var, double eps) {
    const int64_t C = running_mean.numel();
    BatchNormStatistics stats{Tensor::uninitialized({C}), Tensor::uninitialized({C})};
    for (int64_t c = 0; c < C; ++c) {
        stats.mean[c] = running_mean[c];
        stats.inv_std[c] = static_cast<float>(1.0 / std::sqrt(static_cast<double>(running_var[c]) + eps));
    }
    return stats;
}

// The mean and 1 / sqrt(var + eps) every element of channel c is normalized with (batch_norm2d's
// forward, above it), and the running-statistics update of training mode. Per channel in a fixed
// order (SIMD blocks, double across blocks), channels in parallel: the same bits for any thread
// count, and for every op that normalizes through this function.
inline BatchNormStatistics batch_norm_statistics(const Tensor& x, Tensor& running_mean, Tensor& running_var,
                                                 const BatchNormOptions& options);

// The same over several ranks (options.sum_over_ranks): the per-channel sums of each pass are
// added over the ranks between the passes, so the mean, the variance (two passes, as above) and
// the running statistics are those of all ranks' values together, on every rank.
inline BatchNormStatistics synchronized_batch_norm_statistics(const Tensor& x, Tensor& running_mean,
                                                              Tensor& running_var, const BatchNormOptions& options) {
    using kernels::FloatBatch;
    const ChannelPlanes at(x.shape());
    const int64_t N = at.N, C = at.C, HW = at.HW;
    const float* xd = x.data();
    BatchNormStatistics stats{Tensor::uninitialized({C}), Tensor::uninitialized({C})};
    std::vector<double> sums(static_cast<size_t>(C) + 1);  // per channel, then the count
    parallel_for(0, C, [&](int64_t c) {
        double sum = 0.0;
        for (int64_t n = 0; n < N; ++n) sum += kernels::sum_map(HW, [](FloatBatch v) { return v; }, xd + at.plane(n, c));
        sums[static_cast<size_t>(c)] = sum;
    });
    sums[static_cast<size_t>(C)] = static_cast<double>(at.M);
    options.sum_over_ranks(sums.data(), C + 1);
    const double M = sums[static_cast<size_t>(C)];
    stats.count = M;
    for (int64_t c = 0; c < C; ++c) stats.mean[c] = static_cast<float>(sums[static_cast<size_t>(c)] / M);
    parallel_for(0, C, [&](int64_t c) {
        const float m = stats.mean[c];
        double squares = 0.0;
        for (int64_t n = 0; n < N; ++n)
            squares += kernels::sum_map(
                HW, [m](FloatBatch v) { FloatBatch d = v - FloatBatch(m); return d * d; }, xd + at.plane(n, c));
        sums[static_cast<size_t>(c)] = squares;
    });
    options.sum_over_ranks(sums.data(), C);
    for (int64_t c = 0; c < C; ++c) {
        const double var = sums[static_cast<size_t>(c)] / M;
        stats.inv_std[c] = static_cast<float>(1.0 / std::sqrt(var + options.eps));
        if (options.update_running_stats) {
            const float unbiased = static_cast<float>(var * M / (M - 1));
            running_mean[c] = (1.0f - options.momentum) * running_mean[c] + options.momentum * stats.mean[c];
            running_var[c] = (1.0f - options.momentum) * running_var[c] + options.momentum * unbiased;
        }
    }
    return stats;
}

inline BatchNormStatistics batch_norm_statistics(const Tensor& x, Tensor& running_mean, Tensor& running_var,
                                                 const BatchNormOptions& options) {
    using kernels::FloatBatch;
    if (options.training && options.sum_over_ranks)
        return synchronized_batch_norm_statistics(x, running_mean, running_var, options);
    const ChannelPlanes at(x.shape());
    const int64_t N = at.N, C = at.C, HW = at.HW, M = at.M;
    const float* xd = x.data();
    BatchNormStatistics stats{Tensor::uninitialized({C}), Tensor::uninitialized({C})};
    stats.count = static_cast<double>(M);
    Tensor& mean = stats.mean;
    Tensor& inv_std = stats.inv_std;
    if (options.training) {
        const bool update = options.update_running_stats;
        const float momentum = options.momentum;
        parallel_for(0, C, [&](int64_t c) {
            double sum = 0.0;
            for (int64_t n = 0; n < N; ++n)
                sum += kernels::sum_map(HW, [](FloatBatch v) { return v; }, xd + at.plane(n, c));
            const float m = static_cast<float>(sum / M);
            // Two passes (mean, then squared deviations): no cancellation when |mean| >> std.
            double squares = 0.0;
            for (int64_t n = 0; n < N; ++n)
                squares += kernels::sum_map(
                    HW, [m](FloatBatch v) { FloatBatch d = v - FloatBatch(m); return d * d; },
                    xd + at.plane(n, c));
            const double var = squares / M;
            mean[c] = m;
            inv_std[c] = static_cast<float>(1.0 / std::sqrt(var + options.eps));
            if (update) {
                const float unbiased = static_cast<float>(var * M / (M - 1));
                running_mean[c] = (1.0f - momentum) * running_mean[c] + momentum * m;
                running_var[c] = (1.0f - momentum) * running_var[c] + momentum * unbiased;
            }
        });
    } else {
        stats = batch_norm_eval_statistics(running_mean, running_var, options.eps);
    }
    return stats;
}

// y = gamma * xhat + beta for channel c, as (x - mean) * a + b with a = gamma * inv_std: the one
// expression every batch-norm op (and its backward, where it recomputes y) normalizes with.
struct ChannelAffine {
    float m, a, b;
    ChannelAffine(const BatchNormStatistics& s, const Tensor& gamma, const Tensor& beta, int64_t c)
        : m(s.mean[c]), a(gamma[c] * s.inv_std[c]), b(beta[c]) {}
    kernels::FloatBatch operator()(kernels::FloatBatch v) const {
        using kernels::FloatBatch;
        return (v - FloatBatch(m)) * FloatBatch(a) + FloatBatch(b);
    }
};

// Batch norm's backward for channel c once its two sums over dy are known (dy being the gradient
// at y = gamma * xhat + beta):
//   dgamma += sum(dy * xhat),  dbeta += sum(dy)
//   training: dx = k * (dy - mean(dy) - xhat * mean(dy * xhat)),  k = gamma * inv_std
//             (mean and var are functions of x; this is the standard compact form)
//   eval:     dx = k * dy   (mean, var are constants: the op is affine)
// sum_dy_xc is sum(dy * (x - mean)), so sum(dy * xhat) = inv_std * sum_dy_xc.
struct ChannelBackward {
    float m, is, k, mean_dy, mean_dy_xhat;
    double sum_dy_xhat;
    ChannelBackward(const BatchNormStatistics& s, const Tensor& gamma, int64_t c, double sum_dy, double sum_dy_xc,
                    bool training, double M)
        : m(s.mean[c]), is(s.inv_std[c]), k(gamma[c] * s.inv_std[c]) {
        sum_dy_xhat = is * sum_dy_xc;
        // In eval both means drop out.
        mean_dy = training ? static_cast<float>(sum_dy / M) : 0.0f;
        mean_dy_xhat = training ? static_cast<float>(sum_dy_xhat / M) : 0.0f;
    }
    // dx's share of one element: g = dy, v = x.
    kernels::FloatBatch dx(kernels::FloatBatch g, kernels::FloatBatch v) const {
        using kernels::FloatBatch;
        const FloatBatch xhat = (v - FloatBatch(m)) * FloatBatch(is);
        return FloatBatch(k) * (g - FloatBatch(mean_dy) - xhat * FloatBatch(mean_dy_xhat));
    }
};

}  // namespace detail

// x: [N, C, H, W], gamma: [C], beta: [C], running_mean/var: [C] -> [N, C, H, W]
//
// Forward, per channel c over its M = N*H*W values:
//   training: mean, var = the batch mean and biased variance; if update_running_stats,
//             running_mean = (1 - momentum) * running_mean + momentum * mean
//             running_var  = (1 - momentum) * running_var  + momentum * var * M / (M - 1)
//             (the unbiased variance, as PyTorch does)
//   eval:     mean, var = running_mean, running_var
//   inv_std = 1 / sqrt(var + eps),   xhat = (x - mean) * inv_std,   y = gamma * xhat + beta
//
// Saved for backward: mean and inv_std per channel (xhat is recomputed from x: C floats, not a
// copy of the activations). Statistics are summed per channel in a fixed order (SIMD blocks,
// double across blocks), channels run in parallel: identical bits for any thread count.
// ops/batch_norm_act.hpp fuses this op with the activation that follows it.
inline Var batch_norm2d(const Var& x, const Var& gamma, const Var& beta, Tensor& running_mean,
                        Tensor& running_var, const BatchNormOptions& options = {}) {
    using kernels::FloatBatch;
    detail::check_batch_norm_inputs("batch_norm2d", x, gamma, beta, running_mean, running_var, options);
    const detail::ChannelPlanes at(x.shape());
    const int64_t C = at.C;
    detail::BatchNormStatistics stats = detail::batch_norm_statistics(x.value(), running_mean, running_var, options);

    Tensor y = Tensor::uninitialized(x.shape());
    kernels::map_rows(at.N * C, at.HW, y.data(),  // row p = plane (n, c) of x, c = p % C
                      [&](int64_t p) { return detail::ChannelAffine(stats, gamma.value(), beta.value(), p % C); },
                      x.value().data());

    Var out = op_result(std::move(y), {&x, &gamma, &beta});
    if (out.requires_grad()) {
        // Backward: detail::ChannelBackward (the math is written there). One pass over (dy, x)
        // per channel for both sums, one pass writing dx.
        // Synchronized: the two sums of every channel are added over the ranks before dx (whose
        // means are over the whole batch); dgamma and dbeta keep this rank's own share, as every
        // parameter gradient does until the trainer averages them.
        auto sum_over_ranks = options.training ? options.sum_over_ranks : nullptr;
        tape().record([x, gamma, beta, out, stats = std::move(stats), training = options.training, at, sum_over_ranks] {
            if (!out.has_grad()) return;
            const int64_t N = at.N, HW = at.HW;
            const float* xd = x.value().data();
            const float* dy = out.grad().data();
            bool dx_fresh = false;  // dx is written whole (every channel, every image) below
            float* dx = x.requires_grad() ? x.grad_for_write(dx_fresh).data() : nullptr;
            float* dgamma = gamma.requires_grad() ? gamma.grad_for_accumulate().data() : nullptr;
            float* dbeta = beta.requires_grad() ? beta.grad_for_accumulate().data() : nullptr;
            // Pass 1 of channel c: sum(dy) and sum(dy * (x - mean)).
            auto channel_sums = [&](int64_t c) {
                const float m = stats.mean[c];
                double sum_dy = 0.0, sum_dy_xc = 0.0;  // xc = x - mean
                // Eval-mode dx needs no sums; skip the pass when nothing else does either.
                for (int64_t n = 0; n < N && (training || dgamma || dbeta); ++n) {
                    const int64_t p = at.plane(n, c);
                    const auto sums = kernels::sums_map(
                        HW, [m](FloatBatch g, FloatBatch v) { return kernels::Batches<2>{g, g * (v - FloatBatch(m))}; },
                        dy + p, xd + p);
                    sum_dy += sums[0];
                    sum_dy_xc += sums[1];
                }
                return std::array<double, 2>{sum_dy, sum_dy_xc};
            };
            // Pass 2 of channel c: dgamma, dbeta from this rank's sums, dx from the batch's.
            auto channel_grads = [&](int64_t c, const std::array<double, 2>& own, const std::array<double, 2>& all) {
                const detail::ChannelBackward bn(stats, gamma.value(), c, all[0], all[1], training, stats.count);
                if (dgamma) dgamma[c] += static_cast<float>(stats.inv_std[c] * own[1]);
                if (dbeta) dbeta[c] += static_cast<float>(own[0]);
                if (!dx) return;
                for (int64_t n = 0; n < N; ++n) {
                    const int64_t p = at.plane(n, c);
                    kernels::map_serial_into_grad(
                        dx_fresh, HW, dx + p, [&bn](FloatBatch d, FloatBatch g, FloatBatch v) { return d + bn.dx(g, v); },
                        dy + p, xd + p);
                }
            };
            if (!sum_over_ranks) {  // one pass over the channels: each one's data is still in cache for pass 2
                parallel_for(0, at.C, [&](int64_t c) {
                    const std::array<double, 2> own = channel_sums(c);
                    channel_grads(c, own, own);
                });
                return;
            }
            std::vector<std::array<double, 2>> own(static_cast<size_t>(at.C));
            parallel_for(0, at.C, [&](int64_t c) { own[static_cast<size_t>(c)] = channel_sums(c); });
            std::vector<std::array<double, 2>> all = own;  // contiguous: C pairs of doubles
            sum_over_ranks(all.data()->data(), 2 * at.C);
            parallel_for(0, at.C, [&](int64_t c) { channel_grads(c, own[static_cast<size_t>(c)], all[static_cast<size_t>(c)]); });
        });
    }
    return out;
}

}  // namespace speq
