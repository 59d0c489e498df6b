// Backward steps that write a whole gradient (Var::grad_for_write) must overwrite a new gradient
// completely and add to an existing one. A new gradient's storage is uninitialized; here it is
// made to come from a block the allocator cache just got back full of NaN, so an element a step
// forgets to write shows up. Shapes are 64 KiB or more so that the cache serves them.
#include <doctest/doctest.h>

#include <cmath>
#include <cstring>
#include <functional>
#include <string>
#include <vector>

#include "gradcheck.hpp"
#include "speq/ops/add.hpp"
#include "speq/ops/batch_norm.hpp"
#include "speq/ops/conv2d.hpp"
#include "speq/ops/relu.hpp"
#include "speq/quant/act_quant.hpp"

using namespace speq;

namespace {
// Frees NaN-filled blocks of `shape`'s size, so the next allocations of that size reuse them
// (backward makes a few gradients of that size before it reaches x's).
void leave_nan_blocks(const Shape& shape) { std::vector<Tensor> poison(8, Tensor::full(shape, NAN)); }

bool same_bits(const Tensor& a, const Tensor& b) {
    return a.shape() == b.shape() && std::memcmp(a.data(), b.data(), sizeof(float) * a.numel()) == 0;
}

// Runs y = f(x) and backward(y, seed) twice without clearing x's gradient: the first backward
// makes the gradient (fresh), the second adds the same numbers to it. Exactly, for elementwise
// steps; convolutions add the old gradient inside their sums (in another order), so only closely.
void check_fresh_then_added(const std::string& name, const std::function<Var(const Var&)>& f,
                            bool exact = true) {
    INFO(name);
    Rng rng(3);
    Var x = Var::parameter(randn({4, 16, 16, 16}, rng));  // 16384 floats = 64 KiB
    const Tensor seed = randn(f(x).shape(), rng);
    tape().clear();
    Var y = f(x);
    leave_nan_blocks(x.shape());
    backward(y, seed);
    const Tensor once = x.grad();
    bool finite = true;
    for (int64_t i = 0; i < once.numel(); ++i) finite = finite && std::isfinite(once[i]);
    CHECK(finite);
    Var y2 = f(x);
    backward(y2, seed);
    Tensor twice_expected = once;
    for (int64_t i = 0; i < once.numel(); ++i) twice_expected[i] = once[i] + once[i];
    if (exact) {
        CHECK(same_bits(x.grad(), twice_expected));
        return;
    }
    for (int64_t i = 0; i < once.numel(); ++i) {
        INFO("element ", i);
        REQUIRE(x.grad()[i] == doctest::Approx(twice_expected[i]).epsilon(1e-5));
    }
}
}  // namespace

TEST_CASE("backward steps overwrite a new gradient whole and add to an existing one") {
    Rng rng(5);
    Var gamma = Var::parameter(randn({16}, rng)), beta = Var::parameter(randn({16}, rng));
    Tensor running_mean = Tensor::zeros({16}), running_var = Tensor::full({16}, 1.0f);
    Var weight = Var::parameter(randn({16, 16, 3, 3}, rng));
    Var alpha = Var::parameter(Tensor::full({1}, 1.5f));
    check_fresh_then_added("relu", [](const Var& x) { return relu(x); });
    check_fresh_then_added("add (x + x: both inputs are x)", [](const Var& x) { return add(x, x); });
    check_fresh_then_added("batch_norm2d, training", [&](const Var& x) {
        return batch_norm2d(x, gamma, beta, running_mean, running_var, BatchNormOptions{});
    });
    check_fresh_then_added("batch_norm2d, eval", [&](const Var& x) {
        BatchNormOptions eval;
        eval.training = false;
        return batch_norm2d(x, gamma, beta, running_mean, running_var, eval);
    });
    check_fresh_then_added("pact_quantize, 2 bits", [&](const Var& x) { return quant::pact_quantize(x, alpha, 2); });
    check_fresh_then_added("conv2d 3x3, stride 1 (direct)", [&](const Var& x) { return conv2d(x, weight, Var(), {1, 1}); }, false);
    check_fresh_then_added("conv2d 3x3, stride 2 (im2col, col2im)", [&](const Var& x) { return conv2d(x, weight, Var(), {2, 1}); }, false);
    Var pointwise = Var::parameter(randn({8, 16, 1, 1}, rng));
    check_fresh_then_added("conv2d 1x1 (pointwise)", [&](const Var& x) { return conv2d(x, pointwise, Var()); }, false);
}
