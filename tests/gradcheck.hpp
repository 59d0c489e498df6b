// tests/gradcheck.hpp: the one gradient checker every op and every parameter goes through.
//
// For an op y = f(x1, x2, ...), pick a random direction r with y's shape and look at the scalar
// L = sum(r * y). One backward pass seeded with dL/dy = r gives dL/dx for every input at once
// (a vector-Jacobian product); central finite differences give the same numbers one element at
// a time: dL/dx_j ~ (L(x + h e_j) - L(x - h e_j)) / 2h. We compare the two for every element.
//
// Float32 forward passes make finite differences noisy: the rounding error of L is about
// 1e-7 |L| / h, the truncation error about h^2 |f'''|. So we try a few step sizes h and accept
// an element if any of them agrees within  |analytic - fd| <= atol + rtol * max(|analytic|, |fd|)
// (the same rule as dlib's test_layer). L itself is summed in double.
//
// Two traps for backward code are set as well:
//   - every input's gradient is pre-filled with random numbers ("poison"), and the checker
//     compares grad_after - grad_before: a backward that assigns (=) instead of adding (+=), or
//     forgets an element, is caught;
//   - the tape must be empty after backward (nothing leaks into the next step).
#pragma once

#include <doctest/doctest.h>

#include <cmath>
#include <functional>
#include <sstream>
#include <string>
#include <vector>

#include "speq/speq.hpp"

namespace speq::testing {

struct GradCheckOptions {
    double rtol = 1e-2;
    double atol = 1e-3;
    std::vector<float> steps = {1e-2f, 3e-3f, 1e-3f, 3e-2f};
    uint64_t seed = 1234;
};

// Sum of r * y in double.
inline double project(const Tensor& y, const Tensor& r) {
    double s = 0.0;
    for (int64_t i = 0; i < y.numel(); ++i) s += static_cast<double>(y[i]) * r[i];
    return s;
}

// Checks backward of `f` against finite differences for every input that requires grad.
// `inputs` are modified during the check and restored afterwards. Returns the number of
// elements that failed (also reported through doctest CHECKs with the op name and index).
inline int check_gradients(const std::string& name, const std::function<Var(std::vector<Var>&)>& f,
                           std::vector<Var> inputs, GradCheckOptions options = {}) {
    Rng rng(options.seed);
    INFO("gradient check of ", name);

    // 1. Analytic gradients, on top of poisoned (random) existing gradients.
    std::vector<Tensor> poison(inputs.size());
    for (size_t k = 0; k < inputs.size(); ++k) {
        if (!inputs[k].requires_grad()) continue;
        poison[k] = randn(inputs[k].shape(), rng);
        inputs[k].grad_for_accumulate() = poison[k];
    }
    Var y = f(inputs);
    Tensor direction = randn(y.shape(), rng);
    backward(y, direction);
    CHECK_MESSAGE(tape().size() == 0, name, ": the tape is not empty after backward");

    int failures = 0;
    for (size_t k = 0; k < inputs.size(); ++k) {
        if (!inputs[k].requires_grad()) continue;
        REQUIRE_MESSAGE(inputs[k].has_grad(), name, ": input ", k, " received no gradient");
        Tensor analytic = inputs[k].grad();
        analytic.vec() -= poison[k].vec();

        // 2. Finite differences, element by element, under no-grad.
        NoGradGuard no_grad;
        Tensor& x = inputs[k].value();
        for (int64_t j = 0; j < x.numel(); ++j) {
            const float saved = x[j];
            double best_error = INFINITY, best_fd = 0.0;
            bool ok = false;
            for (float h : options.steps) {
                x[j] = saved + h;
                double plus = project(f(inputs).value(), direction);
                x[j] = saved - h;
                double minus = project(f(inputs).value(), direction);
                x[j] = saved;
                // Divide by the step actually taken (saved +- h is rounded to float).
                double taken = static_cast<double>(saved + h) - static_cast<double>(saved - h);
                double fd = (plus - minus) / taken;
                double err = std::abs(fd - analytic[j]);
                double allowed = options.atol + options.rtol * std::max(std::abs(fd), std::abs(double(analytic[j])));
                if (err <= allowed) {
                    ok = true;
                    break;
                }
                if (err < best_error) best_error = err, best_fd = fd;
            }
            if (!ok) {
                ++failures;
                if (failures <= 5) {
                    std::ostringstream msg;
                    msg << name << ": input " << k << " element " << j << ": backward gives "
                        << analytic[j] << ", finite differences give " << best_fd;
                    FAIL_CHECK(msg.str());
                }
            }
        }
    }
    CHECK_MESSAGE(failures == 0, name, ": ", failures, " gradient elements disagree");
    return failures;
}

}  // namespace speq::testing
