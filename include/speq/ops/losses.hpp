// speq/ops/losses.hpp: the training losses: cross-entropy, cosine distance, Hinton's KD loss.
// Each returns a [1] tensor: the mean over the batch. Per-row terms are computed in double, in
// parallel over rows, and summed in row order (identical bits for any thread count).
#pragma once

#include <algorithm>
#include <cmath>
#include <vector>

#include "speq/core/tape.hpp"
#include "speq/core/threads.hpp"
#include "speq/ops/softmax.hpp"

namespace speq {

namespace detail {
inline double sum_in_order(const std::vector<double>& terms) {
    double s = 0.0;
    for (double t : terms) s += t;
    return s;
}
}  // namespace detail

// loss = mean over i of -log softmax(logits_i)[label_i].   logits: [N, K], labels: N values in [0, K) -> [1]
//
// Computed as log-sum-exp(logits_i) - logits_i[label_i], so huge logits stay finite.
// Backward (p = softmax(logits), saved):   dlogits_i += dloss * (p_i - onehot(label_i)) / N
inline Var cross_entropy(const Var& logits, const std::vector<int>& labels) {
    detail::check_rows("cross_entropy", "logits", logits);
    const int64_t N = logits.shape()[0], K = logits.shape()[1];
    SPEQ_CHECK(static_cast<int64_t>(labels.size()) == N, "cross_entropy: logits ", to_string(logits.shape()),
               " have ", N, " rows but there are ", labels.size(), " labels");
    SPEQ_CHECK(N > 0, "cross_entropy: the batch is empty");
    for (int64_t i = 0; i < N; ++i)
        SPEQ_CHECK(labels[i] >= 0 && labels[i] < K, "cross_entropy: label at index ", i, " is ", labels[i],
                   ", outside [0, ", K, ")");

    Tensor probs = Tensor::uninitialized(logits.shape());
    std::vector<double> row_loss(static_cast<size_t>(N));
    const float* z = logits.value().data();
    detail::for_each_row(N, K, [&](int64_t i, double* logp) {
        detail::log_softmax_row(z + i * K, K, 1.0, logp);
        for (int64_t k = 0; k < K; ++k) probs[i * K + k] = static_cast<float>(std::exp(logp[k]));
        row_loss[i] = -logp[labels[i]];
    });
    Tensor loss = Tensor::of({1}, {static_cast<float>(detail::sum_in_order(row_loss) / N)});

    Var out = op_result(std::move(loss), {&logits});
    if (out.requires_grad()) {
        tape().record([logits, out, labels, probs = std::move(probs), N, K] {
            if (!out.has_grad() || !logits.requires_grad()) return;
            float* dz = logits.grad_for_accumulate().data();
            const float g = out.grad()[0] / static_cast<float>(N);
            parallel_for(0, N, [&](int64_t i) {
                for (int64_t k = 0; k < K; ++k) {
                    const float target = k == labels[i] ? 1.0f : 0.0f;
                    dz[i * K + k] += g * (probs[i * K + k] - target);
                }
            });
        });
    }
    return out;
}

// loss = mean over i of 1 - cos(a_i, b_i),  cos = a_i.b_i / max(|a_i| |b_i|, eps).   a, b: [N, D] -> [1]
//
// Backward, with s = dloss / N and d = |a||b| per row:
//   d > eps:  da += -s * (b / d - cos * a / |a|^2),   db += -s * (a / d - cos * b / |b|^2)
//   d <= eps: the denominator is the constant eps:   da += -s * b / eps,  db += -s * a / eps
// (a zero vector lands in the second case: no division by |a|, so no NaN).
// Either input may be a constant (SPEQ passes the teacher's softmax as b).
inline Var cosine_loss(const Var& a, const Var& b, float eps = 1e-8f) {
    detail::check_rows("cosine_loss", "a", a);
    if (a.shape() != b.shape()) shape_mismatch("cosine_loss", "a vs b", a.shape(), b.shape());
    SPEQ_CHECK(eps > 0.0f, "cosine_loss: eps must be > 0, got ", eps);
    const int64_t N = a.shape()[0], D = a.shape()[1];
    SPEQ_CHECK(N > 0, "cosine_loss: the batch is empty");

    // Saved per row: cos, the denominator, |a|^2 and |b|^2.
    // The loss itself is computed as 1 - cos = |a/|a| - b/|b||^2 / 2 (the same number when the
    // denominator is not clamped): no cancellation when a and b nearly agree; equal rows give
    // exactly 0 (SPEQ with u = 0, where teacher and student coincide).
    std::vector<double> cos(N), denom(N), norm2_a(N), norm2_b(N), one_minus_cos(N);
    const float *ad = a.value().data(), *bd = b.value().data();
    parallel_for(0, N, [&](int64_t i) {
        double dot = 0.0, aa = 0.0, bb = 0.0;
        for (int64_t k = 0; k < D; ++k) {
            const double u = ad[i * D + k], v = bd[i * D + k];
            dot += u * v, aa += u * u, bb += v * v;
        }
        denom[i] = std::max(std::sqrt(aa) * std::sqrt(bb), static_cast<double>(eps));
        cos[i] = dot / denom[i];
        norm2_a[i] = aa, norm2_b[i] = bb;
        if (std::equal(ad + i * D, ad + (i + 1) * D, bd + i * D)) {
            one_minus_cos[i] = 0.0;  // exact, whatever FMA contraction does to the formula below
        } else if (denom[i] > eps) {
            const double inv_a = 1.0 / std::sqrt(aa), inv_b = 1.0 / std::sqrt(bb);
            double half_distance2 = 0.0;
            for (int64_t k = 0; k < D; ++k) {
                const double diff = ad[i * D + k] * inv_a - bd[i * D + k] * inv_b;
                half_distance2 += 0.5 * diff * diff;
            }
            one_minus_cos[i] = half_distance2;
        } else {
            one_minus_cos[i] = 1.0 - cos[i];
        }
    });
    double total = 0.0;
    for (int64_t i = 0; i < N; ++i) total += one_minus_cos[i];
    Tensor loss = Tensor::of({1}, {static_cast<float>(total / N)});

    Var out = op_result(std::move(loss), {&a, &b});
    if (out.requires_grad()) {
        tape().record([a, b, out, cos = std::move(cos), denom = std::move(denom), norm2_a = std::move(norm2_a),
                       norm2_b = std::move(norm2_b), N, D, eps] {
            if (!out.has_grad()) return;
            const double s = static_cast<double>(out.grad()[0]) / N;
            // d(1 - cos)/dx for x = a (y = b) or x = b (y = a); norm2_x is |x|^2 of that row.
            auto backward_one = [&](const Var& x, const Var& y, const std::vector<double>& norm2_x) {
                if (!x.requires_grad()) return;
                float* dx = x.grad_for_accumulate().data();
                const float *xd = x.value().data(), *yd = y.value().data();
                parallel_for(0, N, [&](int64_t i) {
                    const bool clamped = denom[i] <= eps;
                    const double over_d = 1.0 / denom[i];
                    const double along_x = clamped ? 0.0 : cos[i] / norm2_x[i];
                    for (int64_t k = 0; k < D; ++k)
                        dx[i * D + k] += static_cast<float>(-s * (yd[i * D + k] * over_d - along_x * xd[i * D + k]));
                });
            };
            backward_one(a, b, norm2_a);
            backward_one(b, a, norm2_b);
        });
    }
    return out;
}

// Hinton's distillation loss: T^2 * mean over i of KL(p_i || q_i),  p = softmax(teacher / T),
// q = softmax(student / T).   student_logits, teacher_logits: [N, K], temperature T > 0 -> [1]
//
// Backward, with s = dloss * T^2 / N and r = log p - log q per element, KL_i = sum_k p r:
//   dstudent += s / T * (q - p)
//   dteacher += s / T * p * (r - KL_i)      (only if the teacher requires grad)
// The T^2 keeps the gradient's size independent of T (Hinton et al. 2015).
inline Var kl_div_loss(const Var& student_logits, const Var& teacher_logits, float temperature) {
    detail::check_rows("kl_div_loss", "student_logits", student_logits);
    if (student_logits.shape() != teacher_logits.shape())
        shape_mismatch("kl_div_loss", "student_logits vs teacher_logits", student_logits.shape(),
                       teacher_logits.shape());
    detail::check_temperature("kl_div_loss", temperature);
    const int64_t N = student_logits.shape()[0], K = student_logits.shape()[1];
    SPEQ_CHECK(N > 0, "kl_div_loss: the batch is empty");
    const double T = temperature, inv_t = 1.0 / T;

    Tensor p = Tensor::uninitialized(student_logits.shape()), q = Tensor::uninitialized(student_logits.shape());
    Tensor log_ratio = Tensor::uninitialized(student_logits.shape());
    std::vector<double> kl(static_cast<size_t>(N));
    const float *sd = student_logits.value().data(), *td = teacher_logits.value().data();
    parallel_for(0, N, [&](int64_t i) {
        std::vector<double> logp(static_cast<size_t>(K)), logq(static_cast<size_t>(K));
        detail::log_softmax_row(td + i * K, K, inv_t, logp.data());
        detail::log_softmax_row(sd + i * K, K, inv_t, logq.data());
        double sum = 0.0;
        for (int64_t k = 0; k < K; ++k) {
            const double pk = std::exp(logp[k]), r = logp[k] - logq[k];
            sum += pk * r;  // p = 0 (underflow) contributes 0: r stays finite in log space
            p[i * K + k] = static_cast<float>(pk);
            q[i * K + k] = static_cast<float>(std::exp(logq[k]));
            log_ratio[i * K + k] = static_cast<float>(r);
        }
        kl[i] = sum;
    });
    Tensor loss = Tensor::of({1}, {static_cast<float>(T * T * detail::sum_in_order(kl) / N)});

    Var out = op_result(std::move(loss), {&student_logits, &teacher_logits});
    if (out.requires_grad()) {
        tape().record([student_logits, teacher_logits, out, p = std::move(p), q = std::move(q),
                       log_ratio = std::move(log_ratio), kl = std::move(kl), N, K, T] {
            if (!out.has_grad()) return;
            const double g = static_cast<double>(out.grad()[0]) * T / N;  // s / T
            if (student_logits.requires_grad()) {
                float* ds = student_logits.grad_for_accumulate().data();
                parallel_for(0, N * K, [&](int64_t j) { ds[j] += static_cast<float>(g * (q[j] - p[j])); });
            }
            if (teacher_logits.requires_grad()) {
                float* dt = teacher_logits.grad_for_accumulate().data();
                parallel_for(0, N, [&](int64_t i) {
                    for (int64_t k = 0; k < K; ++k) {
                        const int64_t j = i * K + k;
                        dt[j] += static_cast<float>(g * p[j] * (log_ratio[j] - kl[i]));
                    }
                });
            }
        });
    }
    return out;
}

}  // namespace speq
