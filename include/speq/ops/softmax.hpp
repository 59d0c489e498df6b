// speq/ops/softmax.hpp: softmax and log-softmax over the rows of a [N, K] tensor, with temperature.
#pragma once

#include <algorithm>
#include <cmath>
#include <limits>
#include <vector>

#include "speq/core/tape.hpp"
#include "speq/core/threads.hpp"

namespace speq {

namespace detail {
inline void check_rows(const char* op, const char* what, const Var& v) {
    SPEQ_CHECK(v.defined() && v.value().rank() == 2 && v.shape()[1] > 0, op, ": ", what,
               " must be [N, K] with K >= 1, got ", v.defined() ? to_string(v.shape()) : std::string("(empty)"));
}
inline void check_temperature(const char* op, float temperature) {
    SPEQ_CHECK(temperature > 0.0f && std::isfinite(temperature), op, ": temperature must be > 0, got ",
               temperature);
}

// out[k] = log softmax(z / T)[k] for one row of K logits, in double and stable: the largest
// u = z/T is subtracted before exp, so exp never overflows and log-sum-exp stays finite.
inline void log_softmax_row(const float* z, int64_t K, double inv_t, double* out) {
    double top = -std::numeric_limits<double>::infinity();
    for (int64_t k = 0; k < K; ++k) top = std::max(top, z[k] * inv_t);
    double sum = 0.0;
    for (int64_t k = 0; k < K; ++k) sum += std::exp(z[k] * inv_t - top);
    const double lse = top + std::log(sum);
    for (int64_t k = 0; k < K; ++k) out[k] = z[k] * inv_t - lse;
}

// Rows are independent; each is done whole by one thread (K is small: classes).
template <class Body>
void for_each_row(int64_t rows, int64_t K, Body&& body) {
    parallel_for(0, rows, [&](int64_t i) {
        std::vector<double> logp(static_cast<size_t>(K));
        body(i, logp.data());
    });
}

// y[i, k] = from_logp(log softmax(logits_i / T)[k]) for every row i of logits [N, K].
template <class FromLogp>
Tensor log_softmax_rows(const Tensor& logits, double inv_t, FromLogp from_logp) {
    const int64_t K = logits.shape()[1];
    Tensor y = Tensor::uninitialized(logits.shape());
    for_each_row(logits.shape()[0], K, [&](int64_t i, double* logp) {
        log_softmax_row(logits.data() + i * K, K, inv_t, logp);
        for (int64_t k = 0; k < K; ++k) y[i * K + k] = static_cast<float>(from_logp(logp[k]));
    });
    return y;
}
}  // namespace detail

// y = softmax(logits / T) along each row.   logits: [N, K] -> [N, K]
//
// Backward (u = logits / T, y = softmax(u)): dy/du is diag(y) - y y^T, so
//   dlogits += y * (dy - sum_k(dy * y)) / T
inline Var softmax(const Var& logits, float temperature = 1.0f) {
    detail::check_rows("softmax", "logits", logits);
    detail::check_temperature("softmax", temperature);
    const int64_t N = logits.shape()[0], K = logits.shape()[1];
    const double inv_t = 1.0 / temperature;
    Tensor y = detail::log_softmax_rows(logits.value(), inv_t, [](double logp) { return std::exp(logp); });
    Var out = op_result(std::move(y), {&logits});
    if (out.requires_grad()) {
        tape().record([logits, out, N, K, inv_t] {
            if (!out.has_grad() || !logits.requires_grad()) return;
            float* dz = logits.grad_for_accumulate().data();
            const float *y = out.value().data(), *dy = out.grad().data();
            parallel_for(0, N, [&](int64_t i) {
                const int64_t row = i * K;
                double dot = 0.0;
                for (int64_t k = 0; k < K; ++k) dot += static_cast<double>(dy[row + k]) * y[row + k];
                for (int64_t k = 0; k < K; ++k)
                    dz[row + k] += static_cast<float>(y[row + k] * (dy[row + k] - dot) * inv_t);
            });
        });
    }
    return out;
}

// y = log softmax(logits / T) = u - log sum_k exp(u_k), u = logits / T.   logits: [N, K] -> [N, K]
//
// Backward: dy/du is I - 1 softmax(u)^T, so with p = exp(y):
//   dlogits += (dy - p * sum_k(dy)) / T
inline Var log_softmax(const Var& logits, float temperature = 1.0f) {
    detail::check_rows("log_softmax", "logits", logits);
    detail::check_temperature("log_softmax", temperature);
    const int64_t N = logits.shape()[0], K = logits.shape()[1];
    const double inv_t = 1.0 / temperature;
    Tensor y = detail::log_softmax_rows(logits.value(), inv_t, [](double logp) { return logp; });
    Var out = op_result(std::move(y), {&logits});
    if (out.requires_grad()) {
        tape().record([logits, out, N, K, inv_t] {
            if (!out.has_grad() || !logits.requires_grad()) return;
            float* dz = logits.grad_for_accumulate().data();
            const float *y = out.value().data(), *dy = out.grad().data();
            parallel_for(0, N, [&](int64_t i) {
                const int64_t row = i * K;
                double total = 0.0;
                for (int64_t k = 0; k < K; ++k) total += dy[row + k];
                for (int64_t k = 0; k < K; ++k)
                    dz[row + k] += static_cast<float>((dy[row + k] - std::exp(static_cast<double>(y[row + k])) * total) * inv_t);
            });
        });
    }
    return out;
}

}  // namespace speq
