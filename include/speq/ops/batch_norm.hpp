// speq/ops/batch_norm.hpp: batch normalization over the channels of an NCHW tensor.
#pragma once

#include <cmath>

#include "speq/core/tape.hpp"
#include "speq/kernels/elementwise.hpp"
#include "speq/kernels/reduce.hpp"

namespace speq {

struct BatchNormOptions {
    bool training = true;              // true: normalize with batch statistics; false: running stats
    bool update_running_stats = true;  // only in training: false keeps running stats untouched (SPEQ teacher)
    float momentum = 0.1f;             // running = (1 - momentum) * running + momentum * batch (PyTorch)
    float eps = 1e-5f;
};

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
inline Var batch_norm2d(const Var& x, const Var& gamma, const Var& beta, Tensor& running_mean,
                        Tensor& running_var, const BatchNormOptions& options = {}) {
    using kernels::FloatBatch;
    SPEQ_CHECK(x.defined() && gamma.defined() && beta.defined(),
               "batch_norm2d: x, gamma and beta must all be defined");
    SPEQ_CHECK(x.value().rank() == 4, "batch_norm2d: x must be [N, C, H, W], got ", to_string(x.shape()));
    const int64_t N = x.shape()[0], C = x.shape()[1], HW = x.shape()[2] * x.shape()[3], M = N * HW;
    const Shape channels{C};
    if (gamma.shape() != channels) shape_mismatch("batch_norm2d", "gamma vs [C] of x", gamma.shape(), channels);
    if (beta.shape() != channels) shape_mismatch("batch_norm2d", "beta vs [C] of x", beta.shape(), channels);
    if (running_mean.shape() != channels)
        shape_mismatch("batch_norm2d", "running_mean vs [C] of x", running_mean.shape(), channels);
    if (running_var.shape() != channels)
        shape_mismatch("batch_norm2d", "running_var vs [C] of x", running_var.shape(), channels);
    SPEQ_CHECK(options.eps > 0.0f, "batch_norm2d: eps must be > 0, got ", options.eps);
    SPEQ_CHECK(options.momentum >= 0.0f && options.momentum <= 1.0f,
               "batch_norm2d: momentum must be in [0, 1], got ", options.momentum);
    SPEQ_CHECK(!options.training || M > 1, "batch_norm2d: training needs more than 1 value per channel, x is ",
               to_string(x.shape()));

    const bool training = options.training;
    const float* xd = x.value().data();
    // Plane (n, c) starts at xd + (n * C + c) * HW; channel c is the N planes with that c.
    auto plane = [C, HW](int64_t n, int64_t c) { return (n * C + c) * HW; };

    Tensor mean = Tensor::uninitialized(channels), inv_std = Tensor::uninitialized(channels);
    if (training) {
        const bool update = options.update_running_stats;
        const float momentum = options.momentum;
        parallel_for(0, C, [&](int64_t c) {
            double sum = 0.0;
            for (int64_t n = 0; n < N; ++n)
                sum += kernels::sum_map(HW, [](FloatBatch v) { return v; }, xd + plane(n, c));
            const float m = static_cast<float>(sum / M);
            // Two passes (mean, then squared deviations): no cancellation when |mean| >> std.
            double squares = 0.0;
            for (int64_t n = 0; n < N; ++n)
                squares += kernels::sum_map(
                    HW, [m](FloatBatch v) { FloatBatch d = v - FloatBatch(m); return d * d; },
                    xd + plane(n, c));
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
        for (int64_t c = 0; c < C; ++c) {
            mean[c] = running_mean[c];
            inv_std[c] = static_cast<float>(1.0 / std::sqrt(static_cast<double>(running_var[c]) + options.eps));
        }
    }

    Tensor y = Tensor::uninitialized(x.shape());
    auto normalize_plane = [&](int64_t p) {  // plane p = (n, c) of x, c = p % C
        const int64_t c = p % C;
        const float m = mean[c], a = gamma.value()[c] * inv_std[c], b = beta.value()[c];
        return [m, a, b](FloatBatch v) { return (v - FloatBatch(m)) * FloatBatch(a) + FloatBatch(b); };
    };
    kernels::map_rows(N * C, HW, y.data(), normalize_plane, xd);

    Var out = op_result(std::move(y), {&x, &gamma, &beta});
    if (out.requires_grad()) {
        // Backward:  dgamma += sum(dy * xhat),  dbeta += sum(dy)
        //   training: dx += gamma * inv_std / M * (M*dy - sum(dy) - xhat * sum(dy * xhat))
        //             (mean and var are functions of x; this is the standard compact form)
        //   eval:     dx += dy * gamma * inv_std   (mean, var are constants: the op is affine)
        tape().record([x, gamma, beta, out, mean = std::move(mean), inv_std = std::move(inv_std), training,
                       N, C, HW, M, plane] {
            if (!out.has_grad()) return;
            const float* xd = x.value().data();
            const float* dy = out.grad().data();
            bool dx_fresh = false;  // dx is written whole (every channel, every image) below
            float* dx = x.requires_grad() ? x.grad_for_write(dx_fresh).data() : nullptr;
            float* dgamma = gamma.requires_grad() ? gamma.grad_for_accumulate().data() : nullptr;
            float* dbeta = beta.requires_grad() ? beta.grad_for_accumulate().data() : nullptr;
            parallel_for(0, C, [&](int64_t c) {
                const float m = mean[c], is = inv_std[c];
                double sum_dy = 0.0, sum_dy_xc = 0.0;  // xc = x - mean, so sum(dy * xhat) = is * sum_dy_xc
                // Eval-mode dx needs no sums; skip the passes when nothing else does either.
                for (int64_t n = 0; n < N && (training || dgamma || dbeta); ++n) {
                    const int64_t at = plane(n, c);
                    sum_dy += kernels::sum_map(HW, [](FloatBatch g) { return g; }, dy + at);
                    sum_dy_xc += kernels::sum_map(
                        HW, [m](FloatBatch g, FloatBatch v) { return g * (v - FloatBatch(m)); }, dy + at, xd + at);
                }
                const double sum_dy_xhat = is * sum_dy_xc;
                if (dgamma) dgamma[c] += static_cast<float>(sum_dy_xhat);
                if (dbeta) dbeta[c] += static_cast<float>(sum_dy);
                if (!dx) return;
                const float k = gamma.value()[c] * is;
                // dx = k * (dy - mean(dy) - xhat * mean(dy * xhat)); in eval both means drop out.
                const float mean_dy = training ? static_cast<float>(sum_dy / M) : 0.0f;
                const float mean_dy_xhat = training ? static_cast<float>(sum_dy_xhat / M) : 0.0f;
                for (int64_t n = 0; n < N; ++n) {
                    const int64_t at = plane(n, c);
                    kernels::map_serial_into_grad(
                        dx_fresh, HW, dx + at,
                        [=](FloatBatch d, FloatBatch g, FloatBatch v) {
                            FloatBatch xhat = (v - FloatBatch(m)) * FloatBatch(is);
                            return d + FloatBatch(k) * (g - FloatBatch(mean_dy) - xhat * FloatBatch(mean_dy_xhat));
                        },
                        dy + at, xd + at);
                }
            });
        });
    }
    return out;
}

}  // namespace speq
