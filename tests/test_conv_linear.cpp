// conv2d and linear: hand-worked cases, the fast conv against the naive reference, gradient
// checks, thread-count determinism and shape errors.
#include <doctest/doctest.h>

#include <cmath>
#include <cstring>
#include <functional>
#include <string>
#include <vector>

#include "gradcheck.hpp"
#include "speq/kernels/conv_reference.hpp"
#include "speq/ops/conv2d.hpp"
#include "speq/ops/linear.hpp"

using namespace speq;

namespace {

void check_values(const Tensor& actual, std::initializer_list<float> expected) {
    REQUIRE(actual.numel() == static_cast<int64_t>(expected.size()));
    int64_t i = 0;
    for (float e : expected) {
        INFO("element ", i);
        CHECK(actual[i] == doctest::Approx(e).epsilon(1e-6));
        ++i;
    }
}

// |a - b| <= tol * (1 + |b|) for every element; reports the worst element.
void check_close(const Tensor& a, const Tensor& b, const std::string& what, double tol = 1e-4) {
    REQUIRE_MESSAGE(a.shape() == b.shape(), what, ": shapes ", to_string(a.shape()), " vs ",
                    to_string(b.shape()));
    double worst = 0.0;
    int64_t worst_i = 0;
    for (int64_t i = 0; i < a.numel(); ++i) {
        double err = std::abs(double(a[i]) - b[i]) / (1.0 + std::abs(double(b[i])));
        if (err > worst) worst = err, worst_i = i;
    }
    CHECK_MESSAGE(worst <= tol, what, ": element ", worst_i, " is ", a[worst_i], ", expected ",
                  b[worst_i]);
}

bool bit_identical(const Tensor& a, const Tensor& b) {
    return a.numel() > 0 && a.shape() == b.shape() &&
           std::memcmp(a.data(), b.data(), sizeof(float) * static_cast<size_t>(a.numel())) == 0;
}

std::string error_message(const std::function<void()>& f) {
    try {
        f();
    } catch (const Error& e) {
        return e.what();
    }
    return "(no error thrown)";
}

bool contains(const std::string& text, const std::string& part) {
    return text.find(part) != std::string::npos;
}

// The 3x3 image used by the hand-worked cases:
//   1 2 3
//   4 5 6
//   7 8 9
Tensor image_1_to_9() { return Tensor::of({1, 1, 3, 3}, {1, 2, 3, 4, 5, 6, 7, 8, 9}); }

// Two 3x3 kernels: k = 0 all ones (sums each neighbourhood); k = 1 picks the top-left pixel
// and twice the bottom-right one, so a flipped kernel (true convolution) would be caught:
//   1 0 0
//   0 0 0
//   0 0 2
Tensor two_kernels() {
    return Tensor::of({2, 1, 3, 3}, {1, 1, 1, 1, 1, 1, 1, 1, 1,  //
                                     1, 0, 0, 0, 0, 0, 0, 0, 2});
}

}  // namespace

TEST_CASE("conv2d: 3x3 kernel, padding 1, stride 1, worked by hand") {
    Var x(image_1_to_9()), w(two_kernels()), b(Tensor::of({2}, {0.0f, 0.5f}));
    Var y = conv2d(x, w, b, {1, 1});
    REQUIRE(y.shape() == Shape{1, 2, 3, 3});  // H' = (3 + 2 - 3) / 1 + 1 = 3
    // k = 0: the sum of each 3x3 neighbourhood, zeros outside:
    //   (0,0) 1+2+4+5 = 12     (0,1) 1+2+3+4+5+6 = 21     (0,2) 2+3+5+6 = 16
    //   (1,0) 1+2+4+5+7+8 = 27 (1,1) 1+...+9 = 45         (1,2) 2+3+5+6+8+9 = 33
    //   (2,0) 4+5+7+8 = 24     (2,1) 4+5+6+7+8+9 = 39     (2,2) 5+6+8+9 = 28
    // k = 1: y(r,c) = x(r-1,c-1) + 2 x(r+1,c+1) + 0.5:
    //   (0,0) 0 + 2*5 = 10     (0,1) 0 + 2*6 = 12          (0,2) 0 + 0 = 0
    //   (1,0) 0 + 2*8 = 16     (1,1) 1 + 2*9 = 19          (1,2) 2 + 0 = 2
    //   (2,0) 0 + 0 = 0        (2,1) 4 + 0 = 4             (2,2) 5 + 0 = 5
    check_values(y.value(), {12, 21, 16, 27, 45, 33, 24, 39, 28,  //
                             10.5f, 12.5f, 0.5f, 16.5f, 19.5f, 2.5f, 0.5f, 4.5f, 5.5f});
}

TEST_CASE("conv2d: 3x3 kernel, padding 1, stride 2, worked by hand") {
    Var x(image_1_to_9()), w(two_kernels()), b(Tensor::of({2}, {0.0f, 0.5f}));
    Var y = conv2d(x, w, b, {2, 1});
    REQUIRE(y.shape() == Shape{1, 2, 2, 2});  // H' = (3 + 2 - 3) / 2 + 1 = 2
    // Windows centred on pixels (0,0), (0,2), (2,0), (2,2) of the image (the corners).
    // k = 0: 1+2+4+5 = 12, 2+3+5+6 = 16, 4+5+7+8 = 24, 5+6+8+9 = 28.
    // k = 1: centre (r,c) gives x(r-1,c-1) + 2 x(r+1,c+1) + 0.5:
    //   (0,0): 0 + 2*5 + 0.5 = 10.5   (0,2): 0 + 0 + 0.5 = 0.5
    //   (2,0): 0 + 0 + 0.5 = 0.5      (2,2): 5 + 0 + 0.5 = 5.5
    check_values(y.value(), {12, 16, 24, 28, 10.5f, 0.5f, 0.5f, 5.5f});
}

TEST_CASE("conv2d: channels are summed, worked by hand (1x1 kernel, no bias)") {
    // x: channel 0 = [1 2; 3 4], channel 1 = [10 20; 30 40]; weight [1, 2, 1, 1] = (2, -1):
    // y = 2 * x0 - x1 = [2-10, 4-20; 6-30, 8-40].
    Var x(Tensor::of({1, 2, 2, 2}, {1, 2, 3, 4, 10, 20, 30, 40}));
    Var w(Tensor::of({1, 2, 1, 1}, {2, -1}));
    Var y = conv2d(x, w, Var());
    check_values(y.value(), {-8, -16, -24, -32});
}

namespace {
struct ConvCase {
    int64_t n, c, h, w, k, kh, kw;
    int stride, padding;
};
}  // namespace

TEST_CASE("conv2d: im2col + GEMM matches the naive reference, forward and backward") {
    const std::vector<ConvCase> cases = {
        {2, 3, 5, 5, 4, 3, 3, 1, 1},    // the ResNet 3x3 case, small
        {2, 3, 7, 6, 5, 3, 3, 2, 1},    // stride 2, non-square, odd sizes
        {1, 4, 6, 6, 3, 1, 1, 2, 0},    // 1x1 stride 2 (ResNet shortcut), N = 1
        {3, 2, 5, 4, 2, 1, 1, 1, 0},    // 1x1 stride 1: the pointwise path (no im2col)
        {2, 2, 6, 5, 3, 3, 3, 1, 0},    // padding 0
        {1, 3, 9, 7, 2, 5, 5, 3, 2},    // bigger kernel, stride 3, padding 2
        {2, 2, 5, 6, 3, 3, 2, 1, 1},    // non-square kernel
        {2, 1, 4, 4, 2, 4, 4, 1, 0},    // kernel as big as the image: one output pixel
        {11, 3, 6, 6, 4, 3, 3, 1, 1},   // more images than groups, uneven groups
    };
    Rng rng(7);
    for (const ConvCase& t : cases) {
        INFO("x [", t.n, ", ", t.c, ", ", t.h, ", ", t.w, "], weight [", t.k, ", ", t.c, ", ", t.kh,
             ", ", t.kw, "], stride ", t.stride, ", padding ", t.padding);
        Var x = Var::parameter(randn({t.n, t.c, t.h, t.w}, rng));
        Var w = Var::parameter(randn({t.k, t.c, t.kh, t.kw}, rng));
        Var b = Var::parameter(randn({t.k}, rng));
        Var y = conv2d(x, w, b, {t.stride, t.padding});
        Tensor expected = kernels::conv2d_reference(x.value(), w.value(), b.value(), t.stride, t.padding);
        check_close(y.value(), expected, "forward");

        Tensor dy = randn(y.shape(), rng);
        kernels::ConvReferenceGrads ref =
            kernels::conv2d_reference_backward(x.value(), w.value(), dy, t.stride, t.padding);
        backward(y, dy);
        check_close(x.grad(), ref.dx, "dx");
        check_close(w.grad(), ref.dw, "dweight");
        check_close(b.grad(), ref.db, "dbias");
    }
}

TEST_CASE("conv2d: only inputs that require grad receive one") {
    Rng rng(3);
    Var x(randn({2, 2, 5, 5}, rng));  // data: no gradient wanted
    Var w = Var::parameter(randn({3, 2, 3, 3}, rng));
    Var y = conv2d(x, w, Var(), {1, 1});
    backward(y, randn(y.shape(), rng));
    CHECK_FALSE(x.has_grad());
    CHECK(w.has_grad());

    Var w_frozen(randn({3, 2, 3, 3}, rng));
    Var x2 = Var::parameter(randn({2, 2, 5, 5}, rng));
    Var y2 = conv2d(x2, w_frozen, Var(), {2, 1});
    backward(y2, randn(y2.shape(), rng));
    CHECK(x2.has_grad());
    CHECK_FALSE(w_frozen.has_grad());

    Var z = conv2d(Var(randn({1, 2, 4, 4}, rng)), w_frozen, Var());
    CHECK_FALSE(z.requires_grad());
}

TEST_CASE("conv2d: gradient check") {
    Rng rng(11);
    auto conv = [](Conv2dOptions options) {
        return [options](std::vector<Var>& v) { return conv2d(v[0], v[1], v[2], options); };
    };
    testing::check_gradients("conv2d 3x3 stride 1 padding 1",
                             conv({1, 1}),
                             {Var::parameter(randn({2, 2, 5, 4}, rng)),
                              Var::parameter(randn({3, 2, 3, 3}, rng)), Var::parameter(randn({3}, rng))});
    testing::check_gradients("conv2d 3x3 stride 2 padding 1",
                             conv({2, 1}),
                             {Var::parameter(randn({2, 2, 5, 6}, rng)),
                              Var::parameter(randn({2, 2, 3, 3}, rng)), Var::parameter(randn({2}, rng))});
    testing::check_gradients("conv2d 1x1 stride 2",
                             conv({2, 0}),
                             {Var::parameter(randn({2, 3, 4, 4}, rng)),
                              Var::parameter(randn({2, 3, 1, 1}, rng)), Var::parameter(randn({2}, rng))});
    testing::check_gradients("conv2d 1x1 stride 1 (pointwise)",
                             conv({1, 0}),
                             {Var::parameter(randn({2, 3, 3, 2}, rng)),
                              Var::parameter(randn({2, 3, 1, 1}, rng)), Var::parameter(randn({2}, rng))});
    testing::check_gradients(
        "conv2d without bias",
        [](std::vector<Var>& v) { return conv2d(v[0], v[1], Var(), {1, 1}); },
        {Var::parameter(randn({2, 2, 4, 4}, rng)), Var::parameter(randn({3, 2, 3, 3}, rng))});
}

TEST_CASE("linear: forward and backward worked by hand") {
    // x = [1 2 3; 4 5 6], W = [1 0 -1; 0.5 0.5 0.5], b = (1, -1):
    //   y[0] = (1 - 3 + 1, 0.5 * 6 - 1) = (-1, 2)
    //   y[1] = (4 - 6 + 1, 0.5 * 15 - 1) = (-1, 6.5)
    Var x = Var::parameter(Tensor::of({2, 3}, {1, 2, 3, 4, 5, 6}));
    Var w = Var::parameter(Tensor::of({2, 3}, {1, 0, -1, 0.5f, 0.5f, 0.5f}));
    Var b = Var::parameter(Tensor::of({2}, {1, -1}));
    Var y = linear(x, w, b);
    REQUIRE(y.shape() == Shape{2, 2});
    check_values(y.value(), {-1, 2, -1, 6.5f});
    // With dy = all ones: dx = dy W = each row (1.5, 0.5, -0.5); dW = dy^T x = each row the
    // column sums of x (5, 7, 9); db = (2, 2).
    backward(y, Tensor::full({2, 2}, 1.0f));
    check_values(x.grad(), {1.5f, 0.5f, -0.5f, 1.5f, 0.5f, -0.5f});
    check_values(w.grad(), {5, 7, 9, 5, 7, 9});
    check_values(b.grad(), {2, 2});
}

TEST_CASE("linear: gradient check") {
    Rng rng(5);
    testing::check_gradients(
        "linear", [](std::vector<Var>& v) { return linear(v[0], v[1], v[2]); },
        {Var::parameter(randn({3, 4}, rng)), Var::parameter(randn({5, 4}, rng)),
         Var::parameter(randn({5}, rng))});
    testing::check_gradients(
        "linear without bias, 20 rows (two row blocks)",
        [](std::vector<Var>& v) { return linear(v[0], v[1], Var()); },
        {Var::parameter(randn({20, 3}, rng)), Var::parameter(randn({18, 3}, rng))});
}

TEST_CASE("conv2d and linear: 1 and 2 threads give identical bits") {
    struct Run {
        std::vector<Tensor> tensors;  // outputs and gradients, in a fixed order
    };
    auto run = [](int threads) {
        set_num_threads(threads);
        Rng rng(99);
        Run r;
        // Conv: 16 images (8 groups of 2), one 3x3 conv, one stride-2 conv, one pointwise conv.
        Var x = Var::parameter(randn({16, 4, 8, 8}, rng));
        Var w1 = Var::parameter(randn({8, 4, 3, 3}, rng)), b1 = Var::parameter(randn({8}, rng));
        Var w2 = Var::parameter(randn({8, 8, 3, 3}, rng));
        Var w3 = Var::parameter(randn({6, 8, 1, 1}, rng));
        Var h = conv2d(conv2d(conv2d(x, w1, b1, {1, 1}), w2, Var(), {2, 1}), w3, Var());
        backward(h, randn(h.shape(), rng));
        // Linear: 64 rows (4 row blocks), 40 outputs (3 blocks of rows of W).
        Var a = Var::parameter(randn({64, 24}, rng));
        Var lw = Var::parameter(randn({40, 24}, rng)), lb = Var::parameter(randn({40}, rng));
        Var z = linear(a, lw, lb);
        backward(z, randn(z.shape(), rng));
        r.tensors = {h.value(), z.value()};
        for (const Var* v : {&x, &w1, &b1, &w2, &w3, &a, &lw, &lb}) r.tensors.push_back(v->grad());
        return r;
    };
    const int saved = num_threads();
    Run one = run(1), two = run(2);
    set_num_threads(saved);
    REQUIRE(one.tensors.size() == two.tensors.size());
    for (size_t i = 0; i < one.tensors.size(); ++i) {
        INFO("tensor ", i, " (0-1: outputs, then gradients of x, w1, b1, w2, w3, a, lw, lb)");
        CHECK(bit_identical(one.tensors[i], two.tensors[i]));
    }
}

TEST_CASE("conv2d: argument errors name the op and the shapes") {
    Var x(Tensor({2, 3, 5, 5})), w(Tensor({4, 3, 3, 3}));
    std::string m = error_message([&] { conv2d(Var(Tensor({2, 3, 5})), w, Var()); });
    CHECK(contains(m, "conv2d"));
    CHECK(contains(m, "rank 4"));
    CHECK(contains(m, "[2, 3, 5]"));

    m = error_message([&] { conv2d(x, Var(Tensor({4, 3, 3})), Var()); });
    CHECK(contains(m, "conv2d"));
    CHECK(contains(m, "[4, 3, 3]"));

    m = error_message([&] { conv2d(x, Var(Tensor({4, 2, 3, 3})), Var()); });
    CHECK(contains(m, "conv2d"));
    CHECK(contains(m, "[2, 3, 5, 5]"));
    CHECK(contains(m, "[4, 2, 3, 3]"));

    m = error_message([&] { conv2d(Var(Tensor({1, 3, 2, 2})), Var(Tensor({4, 3, 5, 5})), Var(), {1, 1}); });
    CHECK(contains(m, "conv2d"));
    CHECK(contains(m, "larger than the padded input 4x4"));
    CHECK(contains(m, "[4, 3, 5, 5]"));

    m = error_message([&] { conv2d(x, w, Var(), {0, 1}); });
    CHECK(contains(m, "conv2d: stride must be >= 1, got 0"));
    m = error_message([&] { conv2d(x, w, Var(), {1, -1}); });
    CHECK(contains(m, "conv2d: padding must be >= 0, got -1"));

    m = error_message([&] { conv2d(x, w, Var(Tensor({3})), {1, 1}); });
    CHECK(contains(m, "conv2d"));
    CHECK(contains(m, "bias"));
    CHECK(contains(m, "[3]"));
    CHECK(contains(m, "[4]"));

    CHECK(contains(error_message([&] { conv2d(Var(), w, Var()); }), "conv2d: x is undefined"));
}

TEST_CASE("linear: argument errors name the op and the shapes") {
    Var x(Tensor({2, 3})), w(Tensor({4, 3}));
    std::string m = error_message([&] { linear(x, Var(Tensor({4, 5})), Var()); });
    CHECK(contains(m, "linear"));
    CHECK(contains(m, "[2, 3]"));
    CHECK(contains(m, "[4, 5]"));

    m = error_message([&] { linear(Var(Tensor({2, 3, 1})), w, Var()); });
    CHECK(contains(m, "linear"));
    CHECK(contains(m, "rank 2"));
    CHECK(contains(m, "[2, 3, 1]"));

    m = error_message([&] { linear(x, w, Var(Tensor({3}))); });
    CHECK(contains(m, "linear"));
    CHECK(contains(m, "bias"));
    CHECK(contains(m, "[3]"));
    CHECK(contains(m, "[4]"));
}
