// softmax / log_softmax with temperature, cross-entropy, cosine loss, Hinton's KD loss.
#include <doctest/doctest.h>

#include <cmath>

#include "gradcheck.hpp"
#include "speq/ops/losses.hpp"
#include "speq/ops/scale.hpp"
#include "speq/ops/softmax.hpp"

using namespace speq;

namespace {
bool all_finite(const Tensor& t) {
    for (int64_t i = 0; i < t.numel(); ++i)
        if (!std::isfinite(t[i])) return false;
    return true;
}
}  // namespace

TEST_CASE("softmax: rows sum to 1 and temperature flattens them") {
    Rng rng(51);
    Tensor z = randn({4, 7}, rng, 3.0f);
    for (float t : {0.5f, 1.0f, 4.0f}) {
        Var y = softmax(Var(z), t);
        for (int i = 0; i < 4; ++i) {
            double s = 0.0;
            for (int k = 0; k < 7; ++k) s += y.value()[i * 7 + k];
            CHECK(s == doctest::Approx(1.0).epsilon(1e-6));
        }
    }
    // softmax([0, ln 2]) = [1/3, 2/3]; at T = 2, softmax([0, ln 4] / 2) is the same.
    Var a = softmax(Var(Tensor::of({1, 2}, {0.0f, std::log(2.0f)})));
    Var b = softmax(Var(Tensor::of({1, 2}, {0.0f, std::log(4.0f)})), 2.0f);
    CHECK(a.value()[0] == doctest::Approx(1.0 / 3).epsilon(1e-6));
    CHECK(a.value()[1] == doctest::Approx(2.0 / 3).epsilon(1e-6));
    CHECK(b.value()[0] == doctest::Approx(1.0 / 3).epsilon(1e-6));
    // log_softmax is the log of softmax.
    Var l = log_softmax(Var(z), 2.0f), p = softmax(Var(z), 2.0f);
    for (int64_t j = 0; j < z.numel(); ++j) CHECK(l.value()[j] == doctest::Approx(std::log(p.value()[j])).epsilon(1e-5));
}

TEST_CASE("softmax, log_softmax: large logits stay finite") {
    Tensor z = Tensor::of({2, 3}, {1000.0f, 0.0f, -1000.0f, 1000.0f, 1000.0f, 999.0f});
    for (float t : {1.0f, 0.1f}) {
        Var y = softmax(Var(z), t), l = log_softmax(Var(z), t);
        CHECK(all_finite(y.value()));
        CHECK(all_finite(l.value()));
        CHECK(y.value()[0] == 1.0f);
        CHECK(std::abs(l.value()[0]) < 1e-6f);
    }
    Var l = log_softmax(Var(z));
    CHECK(l.value()[2] == doctest::Approx(-2000.0));
    CHECK(l.value()[3] == doctest::Approx(-std::log(2.0 + std::exp(-1.0))));
}

TEST_CASE("softmax, log_softmax: gradient checks") {
    Rng rng(53);
    for (float t : {1.0f, 2.5f, 0.7f}) {
        testing::check_gradients("softmax T=" + std::to_string(t),
                                 [t](std::vector<Var>& v) { return softmax(v[0], t); },
                                 {Var::parameter(randn({3, 5}, rng, 2.0f))});
        testing::check_gradients("log_softmax T=" + std::to_string(t),
                                 [t](std::vector<Var>& v) { return log_softmax(v[0], t); },
                                 {Var::parameter(randn({3, 5}, rng, 2.0f))});
    }
}

TEST_CASE("softmax: errors") {
    CHECK_THROWS_WITH_AS(softmax(Var(Tensor::zeros({2, 3, 4}))),
                         "softmax: logits must be [N, K] with K >= 1, got [2, 3, 4]", Error);
    CHECK_THROWS_WITH_AS(log_softmax(Var(Tensor::zeros({2, 3})), 0.0f), doctest::Contains("temperature"), Error);
    CHECK_THROWS_AS(softmax(Var(Tensor::zeros({2, 3})), -1.0f), Error);
}

TEST_CASE("cross_entropy: a 2x3 example by hand") {
    // Row 0: logits [1, 2, 3], label 2: loss = log(e^1 + e^2 + e^3) - 3 = 0.40760596
    // Row 1: logits [1, 1, 1], label 0: loss = log(3) = 1.09861229
    // Mean: 0.75310913
    // Gradient: (softmax - onehot) / 2:
    //   softmax row 0 = [0.09003057, 0.24472847, 0.66524096], row 1 = [1/3, 1/3, 1/3]
    Var z = Var::parameter(Tensor::of({2, 3}, {1, 2, 3, 1, 1, 1}));
    Var loss = cross_entropy(z, {2, 0});
    CHECK(loss.shape() == Shape{1});
    CHECK(loss.value()[0] == doctest::Approx(0.75310913).epsilon(1e-6));
    backward(loss);
    const double want[6] = {0.09003057 / 2, 0.24472847 / 2, (0.66524096 - 1) / 2,
                            (1.0 / 3 - 1) / 2, 1.0 / 6, 1.0 / 6};
    for (int j = 0; j < 6; ++j) CHECK(z.grad()[j] == doctest::Approx(want[j]).epsilon(1e-6));
}

TEST_CASE("cross_entropy: huge logits stay finite, gradient check") {
    Var z = Var::parameter(Tensor::of({2, 3}, {1e4f, -1e4f, 0.0f, 3e4f, 3e4f, -3e4f}));
    Var loss = cross_entropy(z, {1, 0});
    // Row 0: lse = 1e4, loss 2e4. Row 1: lse = 3e4 + log 2, loss log 2. Mean: 1e4 + log(2)/2.
    CHECK(std::isfinite(loss.value()[0]));
    CHECK(loss.value()[0] == doctest::Approx(1e4 + std::log(2.0) / 2));
    backward(loss);
    CHECK(all_finite(z.grad()));

    Rng rng(57);
    testing::check_gradients("cross_entropy", [](std::vector<Var>& v) { return cross_entropy(v[0], {3, 0, 4}); },
                             {Var::parameter(randn({3, 5}, rng, 2.0f))});
}

TEST_CASE("cross_entropy: bad labels name the index and the value") {
    Var z(Tensor::zeros({2, 3}));
    CHECK_THROWS_WITH_AS(cross_entropy(z, {0, 3}), "cross_entropy: label at index 1 is 3, outside [0, 3)", Error);
    CHECK_THROWS_WITH_AS(cross_entropy(z, {-1, 0}), "cross_entropy: label at index 0 is -1, outside [0, 3)", Error);
    CHECK_THROWS_WITH_AS(cross_entropy(z, {0}), doctest::Contains("2 rows but there are 1 labels"), Error);
}

TEST_CASE("cosine_loss: 0 for equal, 1 for orthogonal, 2 for opposite, scale-invariant") {
    Var a(Tensor::of({3, 2}, {1, 2, 1, 0, 3, -1}));
    Var same(Tensor::of({3, 2}, {1, 2, 1, 0, 3, -1}));
    CHECK(cosine_loss(a, same).value()[0] == doctest::Approx(0.0).scale(1.0).epsilon(1e-6));
    Var orthogonal(Tensor::of({3, 2}, {-2, 1, 0, 5, 1, 3}));
    CHECK(cosine_loss(a, orthogonal).value()[0] == doctest::Approx(1.0).epsilon(1e-6));
    Var opposite(Tensor::of({3, 2}, {-1, -2, -1, 0, -3, 1}));
    CHECK(cosine_loss(a, opposite).value()[0] == doctest::Approx(2.0).epsilon(1e-6));

    Rng rng(59);
    Tensor x = randn({4, 6}, rng), y = randn({4, 6}, rng);
    float base = cosine_loss(Var(x), Var(y)).value()[0];
    Tensor x3 = x, y_half = y;
    x3.vec() *= 3.0f;
    y_half.vec() *= 0.5f;
    CHECK(cosine_loss(Var(x3), Var(y_half)).value()[0] == doctest::Approx(base).epsilon(1e-6));
}

TEST_CASE("cosine_loss: gradient check for both inputs, and for a constant b") {
    Rng rng(61);
    testing::check_gradients("cosine_loss (a, b)", [](std::vector<Var>& v) { return cosine_loss(v[0], v[1]); },
                             {Var::parameter(randn({3, 5}, rng)), Var::parameter(randn({3, 5}, rng))});
    // SPEQ's use: the teacher's softmax is a constant b.
    Var teacher = softmax(Var(randn({3, 5}, rng)));
    testing::check_gradients(
        "cosine_loss (softmax(a), constant b)",
        [teacher](std::vector<Var>& v) { return cosine_loss(softmax(v[0]), teacher); },
        {Var::parameter(randn({3, 5}, rng))});
}

TEST_CASE("cosine_loss: a zero vector gives no NaN") {
    Var a = Var::parameter(Tensor::of({2, 3}, {0, 0, 0, 1, 2, 3}));
    Var b = Var::parameter(Tensor::of({2, 3}, {1, 1, 1, 1, 2, 3}));
    Var loss = cosine_loss(a, b);
    // Row 0: cos = 0 / eps = 0 -> 1; row 1: equal -> 0. Mean 0.5.
    CHECK(loss.value()[0] == doctest::Approx(0.5).epsilon(1e-6));
    backward(loss);
    CHECK(all_finite(a.grad()));
    CHECK(all_finite(b.grad()));
    CHECK_THROWS_WITH_AS(cosine_loss(a, Var(Tensor::zeros({3, 2}))),
                         "cosine_loss: a vs b: shapes [2, 3] and [3, 2] do not match", Error);
}

TEST_CASE("kl_div_loss: 0 for equal logits, a hand-computed value") {
    Rng rng(67);
    Tensor z = randn({3, 4}, rng);
    CHECK(kl_div_loss(Var(z), Var(z), 3.0f).value()[0] == doctest::Approx(0.0).scale(1.0).epsilon(1e-6));
    // Teacher [0, ln 3] -> p = [1/4, 3/4]; student [0, 0] -> q = [1/2, 1/2].
    // KL(p || q) = 1/4 ln(1/2) + 3/4 ln(3/2) = 0.13081204.
    Var s(Tensor::of({1, 2}, {0.0f, 0.0f}));
    CHECK(kl_div_loss(s, Var(Tensor::of({1, 2}, {0.0f, std::log(3.0f)})), 1.0f).value()[0] ==
          doctest::Approx(0.13081204).epsilon(1e-6));
    // At T = 2 the teacher [0, 2 ln 3] gives the same p; the loss carries the factor T^2 = 4.
    CHECK(kl_div_loss(s, Var(Tensor::of({1, 2}, {0.0f, 2 * std::log(3.0f)})), 2.0f).value()[0] ==
          doctest::Approx(4 * 0.13081204).epsilon(1e-6));
    CHECK_THROWS_WITH_AS(kl_div_loss(s, s, 0.0f), doctest::Contains("temperature"), Error);
}

TEST_CASE("kl_div_loss: gradient checks (student only, and student and teacher)") {
    Rng rng(71);
    for (float t : {1.0f, 4.0f}) {
        Var teacher(randn({3, 5}, rng, 2.0f));
        testing::check_gradients("kl_div_loss student T=" + std::to_string(t),
                                 [teacher, t](std::vector<Var>& v) { return kl_div_loss(v[0], teacher, t); },
                                 {Var::parameter(randn({3, 5}, rng, 2.0f))});
        testing::check_gradients("kl_div_loss both T=" + std::to_string(t),
                                 [t](std::vector<Var>& v) { return kl_div_loss(v[0], v[1], t); },
                                 {Var::parameter(randn({3, 5}, rng, 2.0f)), Var::parameter(randn({3, 5}, rng, 2.0f))});
    }
}

TEST_CASE("losses: weighted sum through scale reaches the logits") {
    Var z = Var::parameter(Tensor::of({1, 3}, {1, 2, 3}));
    Var loss = scale(cross_entropy(z, {2}), 0.5f);
    backward(loss);
    // (softmax - onehot) * 0.5
    CHECK(z.grad()[2] == doctest::Approx((0.66524096 - 1) * 0.5).epsilon(1e-6));
}

TEST_CASE("cosine_loss: exactly zero for identical rows, accurate for nearly identical ones") {
    Rng rng(5);
    Tensor p = randn({4, 10}, rng);
    CHECK(cosine_loss(Var(p), Var(p)).value()[0] == 0.0f);  // SPEQ with u = 0 relies on this

    // Nearly parallel rows: 1 - cos is about 1e-9 here, which 1 - dot / (|a||b|) in double would
    // still get, but in float would round to 0; compare with a long-double reference.
    Tensor a = randn({1, 10}, rng), b = a;
    for (int64_t k = 0; k < 10; ++k) b[k] += (k % 2 ? 3e-5f : -3e-5f);
    long double dot = 0, aa = 0, bb = 0;
    for (int64_t k = 0; k < 10; ++k) dot += (long double)a[k] * b[k], aa += (long double)a[k] * a[k], bb += (long double)b[k] * b[k];
    const double expected = static_cast<double>(1.0L - dot / std::sqrt(aa * bb));
    REQUIRE(expected > 0.0);
    CHECK(cosine_loss(Var(a), Var(b)).value()[0] == doctest::Approx(expected).epsilon(1e-3));
}
