// The autodiff tape: recording, no-grad, accumulation, memory release.
#include <doctest/doctest.h>

#include <memory>

#include "gradcheck.hpp"
#include "speq/speq.hpp"

using namespace speq;

TEST_CASE("tape: each op records one step and backward empties the tape") {
    tape().clear();
    Var x = Var::parameter(Tensor::of({3}, {-1.0f, 2.0f, 3.0f}));
    Var h = relu(x);
    Var y = add(h, h);
    CHECK(tape().size() == 2);
    backward(y, Tensor::of({3}, {1.0f, 1.0f, 1.0f}));
    CHECK(tape().size() == 0);
    // y = 2 relu(x): dy/dx = 2 where x > 0, else 0.
    CHECK(x.grad()[0] == 0.0f);
    CHECK(x.grad()[1] == 2.0f);
    CHECK(x.grad()[2] == 2.0f);
}

TEST_CASE("tape: a value used twice receives both gradients") {
    Var x = Var::parameter(Tensor::of({2}, {1.0f, -2.0f}));
    Var a = relu(x);           // uses x
    Var y = add(a, x);         // uses x again: dy/dx = [x>0] + 1
    backward(y, Tensor::of({2}, {1.0f, 1.0f}));
    CHECK(x.grad()[0] == 2.0f);
    CHECK(x.grad()[1] == 1.0f);
}

TEST_CASE("tape: gradients accumulate across backward calls until zero_grad") {
    Var x = Var::parameter(Tensor::of({1}, {3.0f}));
    for (int i = 0; i < 3; ++i) {
        Var y = relu(x);
        backward(y);
    }
    CHECK(x.grad()[0] == 3.0f);
    x.zero_grad();
    CHECK(x.grad()[0] == 0.0f);
}

TEST_CASE("tape: no-grad records nothing and outputs do not require grad") {
    tape().clear();
    Var x = Var::parameter(Tensor::of({2}, {1.0f, 2.0f}));
    {
        NoGradGuard no_grad;
        Var y = add(relu(x), x);
        CHECK_FALSE(y.requires_grad());
        CHECK(tape().size() == 0);
        CHECK_THROWS_AS(backward(y), Error);
    }
    CHECK(grad_enabled());
    Var z = relu(x);
    CHECK(z.requires_grad());
    CHECK(tape().size() == 1);
    tape().clear();
}

TEST_CASE("tape: inputs that need no grad record nothing") {
    tape().clear();
    Var c(Tensor::of({2}, {1.0f, 2.0f}));  // a constant
    Var y = relu(c);
    CHECK_FALSE(y.requires_grad());
    CHECK(tape().size() == 0);
}

TEST_CASE("tape: intermediate values are freed after backward, parameters persist") {
    tape().clear();
    Var w = Var::parameter(Tensor::of({4}, {1, -1, 2, -2}));
    std::weak_ptr<Node> hidden_node;
    {
        Var hidden = relu(w);
        hidden_node = hidden.node();
        Var y = add(hidden, w);
        backward(y, Tensor::full({4}, 1.0f));
        // `hidden` and `y` are still in scope here, but the tape no longer holds them.
    }
    CHECK(hidden_node.expired());
    CHECK(w.has_grad());
    CHECK(w.value()[2] == 2.0f);
}

TEST_CASE("tape: an exception in backward still leaves the tape empty") {
    tape().clear();
    tape().record([] { throw Error("boom"); });
    Var x = Var::parameter(Tensor::of({1}, {1.0f}));
    Var y = relu(x);
    CHECK_THROWS_AS(backward(y), Error);
    CHECK(tape().size() == 0);
}

TEST_CASE("tape: backward needs a scalar loss or a seed of the output's shape") {
    Var x = Var::parameter(Tensor::of({2}, {1.0f, 2.0f}));
    Var y = relu(x);
    CHECK_THROWS_WITH_AS(backward(y), doctest::Contains("exactly one element"), Error);
    Var y2 = relu(x);
    CHECK_THROWS_WITH_AS(backward(y2, Tensor::zeros({3})), doctest::Contains("[3]"), Error);
    tape().clear();
}

TEST_CASE("gradcheck: relu and add") {
    Rng rng(7);
    // Keep relu inputs away from the kink at 0, where finite differences are meaningless.
    Tensor x = randn({2, 3, 4, 5}, rng);
    for (int64_t i = 0; i < x.numel(); ++i)
        if (std::abs(x[i]) < 0.1f) x[i] = 0.5f;
    testing::check_gradients("relu", [](std::vector<Var>& v) { return relu(v[0]); },
                             {Var::parameter(x)});
    testing::check_gradients("add", [](std::vector<Var>& v) { return add(v[0], v[1]); },
                             {Var::parameter(randn({3, 37}, rng)), Var::parameter(randn({3, 37}, rng))});
}

TEST_CASE("add: mismatched shapes name the op and both shapes") {
    Var a(Tensor::zeros({2, 3})), b(Tensor::zeros({3, 2}));
    CHECK_THROWS_WITH_AS(add(a, b), "add: a vs b: shapes [2, 3] and [3, 2] do not match", Error);
}
