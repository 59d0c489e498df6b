// Global average pooling, reshape/flatten and scale: values, gradients, errors.
#include <doctest/doctest.h>

#include "gradcheck.hpp"
#include "speq/ops/pool.hpp"
#include "speq/ops/reshape.hpp"
#include "speq/ops/scale.hpp"

using namespace speq;

TEST_CASE("global_avg_pool: the mean of each plane") {
    // x: [N=1, C=2, H=2, W=2]: plane 0 = {1, 2, 3, 4} -> 2.5, plane 1 = {-4, 0, 0, 8} -> 1
    Var y = global_avg_pool(Var(Tensor::of({1, 2, 2, 2}, {1, 2, 3, 4, -4, 0, 0, 8})));
    CHECK(y.shape() == Shape{1, 2});
    CHECK(y.value()[0] == 2.5f);
    CHECK(y.value()[1] == 1.0f);
}

TEST_CASE("global_avg_pool: gradient check, and dx = dy / (H*W) spread over the plane") {
    Rng rng(41);
    for (Shape shape : {Shape{2, 3, 4, 4}, Shape{3, 2, 3, 5}}) {
        testing::check_gradients("global_avg_pool " + to_string(shape),
                                 [](std::vector<Var>& v) { return global_avg_pool(v[0]); },
                                 {Var::parameter(randn(shape, rng))});
    }
    Var x = Var::parameter(Tensor::zeros({1, 1, 2, 2}));
    Var y = global_avg_pool(x);
    backward(y, Tensor::of({1, 1}, {8.0f}));
    for (int i = 0; i < 4; ++i) CHECK(x.grad()[i] == 2.0f);
}

TEST_CASE("global_avg_pool: errors") {
    CHECK_THROWS_WITH_AS(global_avg_pool(Var(Tensor::zeros({2, 3}))),
                         "global_avg_pool: x must be [N, C, H, W], got [2, 3]", Error);
    CHECK_THROWS_WITH_AS(global_avg_pool(Var(Tensor::zeros({2, 3, 0, 4}))), doctest::Contains("no spatial"), Error);
}

TEST_CASE("reshape: same numbers in the same order, -1 inferred") {
    Tensor x = Tensor::of({2, 3, 2}, {0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11});
    Var y = reshape(Var(x), {-1, 6});
    CHECK(y.shape() == Shape{2, 6});
    for (int i = 0; i < 12; ++i) CHECK(y.value()[i] == static_cast<float>(i));
    CHECK(reshape(Var(x), {3, -1, 2}).shape() == Shape{3, 2, 2});
    CHECK(reshape(Var(x), {12}).shape() == Shape{12});
    CHECK(reshape(Var(Tensor::zeros({0, 4})), {-1, 2}).shape() == Shape{0, 2});
}

TEST_CASE("reshape: errors name the shapes") {
    Var x(Tensor::zeros({2, 3}));
    CHECK_THROWS_WITH_AS(reshape(x, {4, 2}), "reshape: cannot reshape [2, 3] (6 elements) to [4, 2] (8 elements)",
                         Error);
    CHECK_THROWS_WITH_AS(reshape(x, {-1, -1}), "reshape: only one dimension may be -1, got [-1, -1]", Error);
    CHECK_THROWS_WITH_AS(reshape(x, {4, -1}), doctest::Contains("the -1 dimension has no whole size"), Error);
    CHECK_THROWS_WITH_AS(reshape(x, {-2, 3}), doctest::Contains("dimension 0 of [-2, 3] is -2"), Error);
    CHECK_THROWS_WITH_AS(reshape(Var(Tensor::zeros({0, 3})), {0, -1}), doctest::Contains("[0, -1]"), Error);
}

TEST_CASE("flatten: [N, ...] -> [N, prod(...)]") {
    CHECK(flatten(Var(Tensor::zeros({4, 3, 2, 2}))).shape() == Shape{4, 12});
    CHECK(flatten(Var(Tensor::zeros({4, 5}))).shape() == Shape{4, 5});
    CHECK(flatten(Var(Tensor::zeros({4}))).shape() == Shape{4, 1});
    CHECK(flatten(Var(Tensor::zeros({0, 3, 2}))).shape() == Shape{0, 6});
    CHECK_THROWS_AS(flatten(Var(Tensor::zeros({}))), Error);
}

TEST_CASE("reshape, flatten, scale: gradient checks") {
    Rng rng(43);
    testing::check_gradients("reshape", [](std::vector<Var>& v) { return reshape(v[0], {3, -1}); },
                             {Var::parameter(randn({2, 3, 4}, rng))});
    testing::check_gradients("flatten", [](std::vector<Var>& v) { return flatten(v[0]); },
                             {Var::parameter(randn({2, 3, 2, 2}, rng))});
    testing::check_gradients("scale", [](std::vector<Var>& v) { return scale(v[0], -2.5f); },
                             {Var::parameter(randn({3, 37}, rng))});
}

TEST_CASE("scale: x * factor, dx = dy * factor") {
    Var x = Var::parameter(Tensor::of({3}, {1.0f, -2.0f, 0.5f}));
    Var y = scale(x, 3.0f);
    CHECK(y.value()[0] == 3.0f);
    CHECK(y.value()[1] == -6.0f);
    CHECK(y.value()[2] == 1.5f);
    backward(y, Tensor::of({3}, {1.0f, 2.0f, -1.0f}));
    CHECK(x.grad()[0] == 3.0f);
    CHECK(x.grad()[1] == 6.0f);
    CHECK(x.grad()[2] == -3.0f);
}
