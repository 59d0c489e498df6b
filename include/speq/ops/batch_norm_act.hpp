// speq/ops/batch_norm_act.hpp: batch norm, an optional residual add and the activation of a
// quantized network (ReLU, or PACT fake quantization) as one op: y = act(bn(x) [+ residual]).
//
// The unfused chain batch_norm2d -> add -> relu / pact_quantize writes and reads two or three
// activation-sized tensors forward and as many backward; this op reads x (and the residual) and
// writes y, and its backward recomputes bn(x) from x instead of saving it. Its outputs are those
// of the chain bit for bit (the same statistics, the same expressions); its gradients are the
// chain's up to the order of the sums (dalpha is summed per channel here, in pieces there).
//
// The one op of ops/ that includes quant/: it applies PACT through quant's own grid and checks.
#pragma once

#include <array>
#include <cmath>
#include <utility>
#include <vector>

#include "speq/core/tape.hpp"
#include "speq/kernels/elementwise.hpp"
#include "speq/kernels/reduce.hpp"
#include "speq/ops/batch_norm.hpp"
#include "speq/quant/act_quant.hpp"
#include "speq/quant/bits.hpp"

namespace speq {

namespace detail {

// relu(z) = max(z, 0), as ops/relu.hpp; its gradient passes where z > 0.
struct ReluActivation {
    static constexpr bool kLearnsAlpha = false;
    void annotate(Var&) const {}  // ReLU's outputs are on no grid
    kernels::FloatBatch operator()(kernels::FloatBatch z) const { return xsimd::max(z, kernels::FloatBatch(0.0f)); }
    kernels::FloatBatch passed(kernels::FloatBatch z, kernels::FloatBatch dy) const {
        using kernels::FloatBatch;
        return xsimd::select(z > FloatBatch(0.0f), dy, FloatBatch(0.0f));
    }
};

// PACT at 1..8 bits, as quant::pact_quantize: s * round(clip(z / s, 0, 2^b - 1)); its gradient
// passes to z where 0 < z < alpha and goes to alpha where z >= alpha (straight through the rounding).
struct PactActivation {
    static constexpr bool kLearnsAlpha = true;
    float alpha;
    quant::detail::PactGrid grid;
    PactActivation(float alpha_, int bits) : alpha(alpha_), grid(alpha_, bits) {}
    void annotate(Var& y) const { y.set_grid(grid.value_grid()); }  // the codes, for the next conv
    kernels::FloatBatch operator()(kernels::FloatBatch z) const {
        using kernels::FloatBatch;
        return xsimd::round(xsimd::clip(z * FloatBatch(grid.inv_scale), FloatBatch(0.0f), FloatBatch(grid.levels))) *
               FloatBatch(grid.scale);
    }
    kernels::FloatBatch passed(kernels::FloatBatch z, kernels::FloatBatch dy) const {
        using kernels::FloatBatch;
        return xsimd::select((z > FloatBatch(0.0f)) & (z < FloatBatch(alpha)), dy, FloatBatch(0.0f));
    }
    kernels::FloatBatch clipped(kernels::FloatBatch z, kernels::FloatBatch dy) const {
        using kernels::FloatBatch;
        return xsimd::select(z >= FloatBatch(alpha), dy, FloatBatch(0.0f));
    }
};

// z = bn(x) [+ r] for one element: the residual pack r is empty or one batch (a left fold: with
// no residual, z is the affine value itself).
template <class... R>
kernels::FloatBatch bn_plus_residual(const ChannelAffine& affine, kernels::FloatBatch v, R... r) {
    return (affine(v) + ... + r);
}

// The forward pass and the recorded backward of batch_norm_act for one activation; `rd` is the
// residual's data, or nothing.
template <class Act, class... R>
Var batch_norm_act_with(const Var& x, const Var& gamma, const Var& beta, Tensor& running_mean, Tensor& running_var,
                        const BatchNormOptions& options, const Act& act, const Var& alpha, const Var& residual,
                        const R*... rd) {
    using kernels::FloatBatch;
    const ChannelPlanes at(x.shape());
    BatchNormStatistics stats = batch_norm_statistics(x.value(), running_mean, running_var, options);

    // The one pass that writes: y = act(bn(x) [+ r]), nothing in between is stored.
    Tensor y = Tensor::uninitialized(x.shape());
    kernels::map_rows(at.N * at.C, at.HW, y.data(),  // row p = plane (n, c), c = p % C
                      [&](int64_t p) {
                          const ChannelAffine affine(stats, gamma.value(), beta.value(), p % at.C);
                          return [affine, act](FloatBatch v, auto... r) { return act(bn_plus_residual(affine, v, r...)); };
                      },
                      x.value().data(), rd...);

    Var out = op_result(std::move(y), {&x, &gamma, &beta, &alpha, &residual});
    act.annotate(out);
    if (!out.requires_grad()) return out;
    // Backward, per channel c (z recomputed from x and r):
    //   dz = dy * [z passes]    relu: z > 0;  PACT: 0 < z < alpha
    //   dalpha += sum(dy * [z >= alpha])    (PACT only)
    //   dresidual += dz
    //   then batch norm's backward with dz for dy (detail::ChannelBackward):
    //   dgamma += inv_std * sum(dz * (x - mean)),  dbeta += sum(dz),  dx += k * (dz - ...)
    // Pass 1 reads (dy, x, r) once for all the sums and writes dresidual; pass 2 writes dx.
    // dalpha's per-channel sums are added in channel order: thread-count independent.
    // Synchronized batch norm: as batch_norm2d, dx's two sums are added over the ranks between
    // the passes, while dgamma, dbeta, dalpha and dresidual keep this rank's share.
    auto sum_over_ranks = options.training ? options.sum_over_ranks : nullptr;
    tape().record([x, gamma, beta, alpha, residual, out, stats = std::move(stats), act, training = options.training,
                   at, sum_over_ranks, rd...] {
        if (!out.has_grad()) return;
        const int64_t N = at.N, HW = at.HW;
        const float* xd = x.value().data();
        const float* dy = out.grad().data();
        // dresidual before dx: if the residual is x itself, dresidual takes the fresh gradient and
        // dx adds to it (channel by channel, after pass 1 has written that channel).
        bool dr_fresh = false, dx_fresh = false;
        float* dr = nullptr;
        if constexpr (sizeof...(R) == 1)
            if (residual.requires_grad()) dr = residual.grad_for_write(dr_fresh).data();
        float* dx = x.requires_grad() ? x.grad_for_write(dx_fresh).data() : nullptr;
        float* dgamma = gamma.requires_grad() ? gamma.grad_for_accumulate().data() : nullptr;
        float* dbeta = beta.requires_grad() ? beta.grad_for_accumulate().data() : nullptr;
        const bool wants_dalpha = Act::kLearnsAlpha && alpha.requires_grad();
        std::vector<double> dalpha_of_channel(static_cast<size_t>(at.C), 0.0);
        // Eval-mode dx needs no sums; skip pass 1 when nothing else needs it either.
        const bool needs_pass1 = training || dgamma || dbeta || wants_dalpha || dr;
        constexpr size_t K = Act::kLearnsAlpha ? 3 : 2;  // the sums of pass 1

        // Pass 1 of channel c: its sums (dz, dz * xc) and dalpha's share, dresidual written.
        auto pass1 = [&](int64_t c) {
            const ChannelAffine affine(stats, gamma.value(), beta.value(), c);
            const float m = affine.m;
            double sum_dz = 0.0, sum_dz_xc = 0.0, dalpha = 0.0;  // xc = x - mean
            // The sums of one element: dz, dz * xc and, for PACT, the clipped dy.
            auto sums_of = [=](FloatBatch g, FloatBatch v, auto... r) {
                const FloatBatch z = bn_plus_residual(affine, v, r...);
                const FloatBatch dz = act.passed(z, g);
                kernels::Batches<K> sums;
                sums[0] = dz;
                sums[1] = dz * (v - FloatBatch(m));
                if constexpr (Act::kLearnsAlpha) sums[2] = act.clipped(z, g);
                return std::make_pair(dz, sums);
            };
            for (int64_t n = 0; n < N && needs_pass1; ++n) {
                const int64_t p = at.plane(n, c);
                at.prefetch_ahead(n, c, dy, xd, rd...);  // small planes: see ChannelPlanes
                std::array<double, K> s;
                if (dr && dr_fresh)  // dresidual = dz, its uninitialized values never read
                    s = kernels::map_and_sums(HW, dr + p, sums_of, dy + p, xd + p, (rd + p)...);
                else if (dr)
                    s = kernels::map_and_sums(
                        HW, dr + p,
                        [&](FloatBatch d, FloatBatch g, FloatBatch v, auto... r) {
                            auto [dz, sums] = sums_of(g, v, r...);
                            return std::make_pair(d + dz, sums);
                        },
                        dr + p, dy + p, xd + p, (rd + p)...);
                else
                    s = kernels::sums_map(HW, [&](auto... in) { return sums_of(in...).second; }, dy + p, xd + p,
                                          (rd + p)...);
                sum_dz += s[0];
                sum_dz_xc += s[1];
                if constexpr (Act::kLearnsAlpha) dalpha += s[2];
            }
            dalpha_of_channel[static_cast<size_t>(c)] = dalpha;
            return std::array<double, 2>{sum_dz, sum_dz_xc};
        };
        // Pass 2 of channel c: dgamma, dbeta from this rank's sums, dx from the batch's.
        auto pass2 = [&](int64_t c, const std::array<double, 2>& own, const std::array<double, 2>& all) {
            const ChannelAffine affine(stats, gamma.value(), beta.value(), c);
            const ChannelBackward bn(stats, gamma.value(), c, all[0], all[1], training, stats.count);
            if (dgamma) dgamma[c] += static_cast<float>(stats.inv_std[c] * own[1]);
            if (dbeta) dbeta[c] += static_cast<float>(own[0]);
            if (!dx) return;
            for (int64_t n = 0; n < N; ++n) {
                const int64_t p = at.plane(n, c);
                kernels::map_serial_into_grad(
                    dx_fresh, HW, dx + p,
                    [&](FloatBatch d, FloatBatch g, FloatBatch v, auto... r) {
                        return d + bn.dx(act.passed(bn_plus_residual(affine, v, r...), g), v);
                    },
                    dy + p, xd + p, (rd + p)...);
            }
        };
        if (!sum_over_ranks) {  // one pass over the channels: each one's data is still in cache for pass 2
            parallel_for(0, at.C, [&](int64_t c) {
                const std::array<double, 2> own = pass1(c);
                pass2(c, own, own);
            });
        } else {
            std::vector<std::array<double, 2>> own(static_cast<size_t>(at.C));
            parallel_for(0, at.C, [&](int64_t c) { own[static_cast<size_t>(c)] = pass1(c); });
            std::vector<std::array<double, 2>> all = own;
            sum_over_ranks(all.data()->data(), 2 * at.C);
            parallel_for(0, at.C, [&](int64_t c) { pass2(c, own[static_cast<size_t>(c)], all[static_cast<size_t>(c)]); });
        }
        if (wants_dalpha) {
            double total = 0.0;
            for (double d : dalpha_of_channel) total += d;
            alpha.grad_for_accumulate()[0] += static_cast<float>(total);
        }
    });
    return out;
}

}  // namespace detail

// y = act(batch_norm2d(x, gamma, beta, running_mean, running_var, options) [+ *residual])
//   x: [N, C, H, W], gamma, beta, running_mean, running_var: [C], alpha: [1], residual: x's shape
//   act: relu at bits 32 (full precision: nn::ActQuant's activation, NOT pact_quantize's clip to
//        [0, alpha]; alpha is then unused and gets no gradient), pact_quantize(., alpha, bits) at
//        1..8 bits.
//
// Forward: the statistics of batch_norm2d (detail::batch_norm_statistics: the same two-pass sums,
// the same running-statistics update), then one pass z = (x - mean) * gamma * inv_std + beta
// [+ residual], y = act(z). Only y is written.
// Backward: written at detail::batch_norm_act_with. Saved: mean and inv_std per channel (C floats
// each) and the Vars x, residual; z is recomputed from them twice (once for the sums, once for dx).
inline Var batch_norm_act(const Var& x, const Var& gamma, const Var& beta, Tensor& running_mean, Tensor& running_var,
                          const BatchNormOptions& options, const Var& alpha, int bits, const Var* residual = nullptr) {
    detail::check_batch_norm_inputs("batch_norm_act", x, gamma, beta, running_mean, running_var, options);
    quant::check_bits("batch_norm_act", bits);
    if (residual) {
        SPEQ_CHECK(residual->defined(), "batch_norm_act: residual is an empty Var");
        if (residual->shape() != x.shape()) shape_mismatch("batch_norm_act", "residual vs x", residual->shape(), x.shape());
    }
    const Var none;  // stands for an input this call does not have
    const Var& res = residual ? *residual : none;
    auto run = [&](const auto& act, const Var& used_alpha) {
        if (residual)
            return detail::batch_norm_act_with(x, gamma, beta, running_mean, running_var, options, act, used_alpha, res,
                                               residual->value().data());
        return detail::batch_norm_act_with(x, gamma, beta, running_mean, running_var, options, act, used_alpha, res);
    };
    if (quant::is_full_precision(bits)) return run(detail::ReluActivation{}, none);
    const float a = quant::detail::check_alpha("batch_norm_act", alpha);
    return run(detail::PactActivation(a, bits), alpha);
}

}  // namespace speq
