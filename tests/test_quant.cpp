// Quantizers: PACT activations, symmetric uniform weights (max_abs / min_l2), LSQ.
// Hand-computed values, integer codes, the surrogate gradients as written in the headers, smooth
// finite-difference checks, learnable parameters that move, errors, and thread independence.
#include <doctest/doctest.h>

#include <cmath>
#include <cstring>
#include <vector>

#include "gradcheck.hpp"
#include "speq/quant/act_quant.hpp"
#include "speq/quant/bits.hpp"
#include "speq/quant/lsq.hpp"
#include "speq/quant/weight_quant.hpp"

using namespace speq;
using namespace speq::quant;

namespace {

void check_exact(const Tensor& got, std::vector<float> want) {
    REQUIRE(got.numel() == static_cast<int64_t>(want.size()));
    for (size_t i = 0; i < want.size(); ++i) {
        INFO("element ", i);
        CHECK(got[i] == want[i]);
    }
}

bool bit_identical(const Tensor& a, const Tensor& b) {
    return a.shape() == b.shape() && std::memcmp(a.data(), b.data(), sizeof(float) * a.numel()) == 0;
}

// Every element equals its integer view, and every code is inside the stated range.
void check_codes(const Tensor& y, const IntegerCodes& c, int32_t min_code, int32_t max_code) {
    REQUIRE(c.shape == y.shape());
    REQUIRE(static_cast<int64_t>(c.codes.size()) == y.numel());
    CHECK(c.min_code == min_code);
    CHECK(c.max_code == max_code);
    int bad = 0;
    for (int64_t i = 0; i < y.numel(); ++i) {
        if (c.codes[i] < min_code || c.codes[i] > max_code) ++bad;
        if (y[i] != (static_cast<float>(c.codes[i]) + c.offset) * c.scale_of(i)) ++bad;
    }
    CHECK(bad == 0);
}

// Random weights nudged so that v = w / s stays 1e-3 steps away from every rounding threshold
// and from the clip ends, where the test's formula and the op could legitimately disagree.
Tensor away_from_thresholds(Tensor w, float step, const GridSpec& g) {
    for (int64_t i = 0; i < w.numel(); ++i) {
        for (int tries = 0; tries < 4; ++tries) {
            const float v = w[i] / step;
            const float t = g.offset == 0.0f ? v - 0.5f : v;  // thresholds: half-integers or integers
            const bool near_threshold = std::abs(t - std::round(t)) < 1e-3f;
            const bool near_clip = std::abs(std::abs(v) - g.limit) < 1e-3f;
            if (!near_threshold && !near_clip) break;
            w[i] += 0.01f * step;
        }
    }
    return w;
}

// The test's own level function (in steps), written from the grid definitions, for v away from
// thresholds: narrow = nearest integer in [-Qp, Qp]; mid_rise = nearest half-integer in [-L, L].
float expected_level(float v, int bits, Grid grid) {
    const float half = static_cast<float>(1 << (bits - 1));
    if (grid == Grid::narrow) return std::min(std::max(std::round(v), -(half - 1)), half - 1);
    return std::min(std::max(std::floor(v) + 0.5f, -(half - 0.5f)), half - 0.5f);
}

}  // namespace

// ---------------------------------------------------------------------------------------------
// Bit-widths and grids

TEST_CASE("quant bits: 1..8 and full precision are accepted, anything else names the value") {
    for (int b = 1; b <= 8; ++b) CHECK_NOTHROW(check_bits("t", b));
    CHECK_NOTHROW(check_bits("t", kFullPrecision));
    CHECK(is_full_precision(32));
    for (int b : {0, 9, 16, -1, 31, 33})
        CHECK_THROWS_WITH_AS(check_bits("myop", b),
                             ("myop: bits must be 1..8 or 32 (full precision), got " + std::to_string(b)).c_str(),
                             Error);
}

TEST_CASE("quant bits: grid ranges") {
    GridSpec n2 = grid_spec("t", 2, Grid::narrow);  // ternary
    CHECK((n2.min_code == -1 && n2.max_code == 1 && n2.offset == 0.0f && n2.limit == 1.0f));
    GridSpec n8 = grid_spec("t", 8, Grid::narrow);
    CHECK((n8.min_code == -127 && n8.max_code == 127 && n8.limit == 127.0f));
    GridSpec m1 = grid_spec("t", 1, Grid::mid_rise);  // sign: levels +-s/2
    CHECK((m1.min_code == -1 && m1.max_code == 0 && m1.offset == 0.5f && m1.limit == 0.5f));
    GridSpec m8 = grid_spec("t", 8, Grid::mid_rise);
    CHECK((m8.min_code == -128 && m8.max_code == 127 && m8.limit == 127.5f));
    CHECK_THROWS_WITH_AS(grid_spec("t", 1, Grid::narrow), doctest::Contains("narrow grid needs bits >= 2"), Error);
    CHECK_THROWS_WITH_AS(grid_spec("t", kFullPrecision, Grid::narrow), doctest::Contains("full precision"), Error);
}

// ---------------------------------------------------------------------------------------------
// PACT

TEST_CASE("quant pact: hand-computed values at 1, 2, 3 bits and full precision") {
    Var x(Tensor::of({6}, {-1.0f, 0.4f, 0.6f, 1.2f, 2.7f, 3.5f}));
    Var alpha3(Tensor::of({1}, {3.0f}));
    // 2 bits: s = 3 / 3 = 1; clip(x, 0, 3) = [0, .4, .6, 1.2, 2.7, 3] -> round -> [0, 0, 1, 1, 3, 3].
    check_exact(pact_quantize(x, alpha3, 2).value(), {0, 0, 1, 1, 3, 3});
    // 1 bit: s = 3 / 1 = 3; clip / 3 = [0, .133, .2, .4, .9, 1] -> [0, 0, 0, 0, 1, 1] -> * 3.
    check_exact(pact_quantize(x, alpha3, 1).value(), {0, 0, 0, 0, 3, 3});
    // Full precision: clip(x, 0, 3).
    check_exact(pact_quantize(x, alpha3, kFullPrecision).value(), {0.0f, 0.4f, 0.6f, 1.2f, 2.7f, 3.0f});
    // 3 bits: alpha = 3.5, s = 3.5 / 7 = 0.5; x = [-1, .2, .3, 1.2, 2.7, 4]:
    // clip / s = [0, .4, .6, 2.4, 5.4, 7] -> codes [0, 0, 1, 2, 5, 7] -> * 0.5.
    Var x3(Tensor::of({6}, {-1.0f, 0.2f, 0.3f, 1.2f, 2.7f, 4.0f}));
    Var alpha35(Tensor::of({1}, {3.5f}));
    Tensor y3 = pact_quantize(x3, alpha35, 3).value();
    check_exact(y3, {0.0f, 0.0f, 0.5f, 1.0f, 2.5f, 3.5f});
    IntegerCodes c3 = pact_codes(x3.value(), 3.5f, 3);
    CHECK(c3.codes == std::vector<int32_t>{0, 0, 1, 2, 5, 7});
    CHECK(c3.scales == std::vector<float>{0.5f});
    CHECK(pact_scale(3.5f, 3) == 0.5f);
}

TEST_CASE("quant pact: ties round half away from zero (up), and codes agree") {
    // alpha = 3, 2 bits, s = 1: 0.5 -> 1, 1.5 -> 2, 2.5 -> 3 (half-to-even would give 0, 2, 2).
    Var x(Tensor::of({3}, {0.5f, 1.5f, 2.5f}));
    Var alpha(Tensor::of({1}, {3.0f}));
    check_exact(pact_quantize(x, alpha, 2).value(), {1, 2, 3});
    CHECK(pact_codes(x.value(), 3.0f, 2).codes == std::vector<int32_t>{1, 2, 3});
}

TEST_CASE("quant pact: fast forward == scalar reference, and == scale * code, at every bit-width") {
    Rng rng(11);
    const int64_t n = 2 * kernels::kChunk + 37;  // several chunks and a SIMD tail
    Tensor xt = randn({n}, rng, 1.5f);
    Var x(xt);
    for (float a : {0.7f, 2.3f}) {
        Var alpha(Tensor::of({1}, {a}));
        for (int b : {1, 2, 3, 4, 5, 6, 7, 8, kFullPrecision}) {
            INFO("bits ", b, " alpha ", a);
            Tensor y = pact_quantize(x, alpha, b).value();
            CHECK(bit_identical(y, reference::pact_forward(xt, a, b)));
            if (b != kFullPrecision) check_codes(y, pact_codes(xt, a, b), 0, (1 << b) - 1);
        }
    }
}

TEST_CASE("quant pact: surrogate gradients as written, including the boundaries") {
    Rng rng(5);
    const float a = 1.25f;
    Tensor xt = rand_uniform({1000}, rng, -1.0f, 3.0f);
    xt[0] = 0.0f;  // boundary: no gradient to x
    xt[1] = a;     // boundary: gradient to alpha, not to x
    Tensor dy = randn({1000}, rng);
    for (int b : {1, 2, 3, kFullPrecision}) {
        INFO("bits ", b);
        Var x = Var::parameter(xt);
        Var alpha = Var::parameter(Tensor::of({1}, {a}));
        Tensor dx0 = randn({1000}, rng);  // existing gradients: backward must add to them
        x.grad_for_accumulate() = dx0;
        alpha.grad_for_accumulate()[0] = 0.5f;
        Var y = pact_quantize(x, alpha, b);
        backward(y, dy);
        // dx = dy * [0 < x < alpha];  dalpha = sum(dy * [x >= alpha])
        double dalpha = 0.0;
        int bad = 0;
        for (int64_t i = 0; i < 1000; ++i) {
            const float want = dx0[i] + ((xt[i] > 0.0f && xt[i] < a) ? dy[i] : 0.0f);
            if (x.grad()[i] != want) ++bad;
            if (xt[i] >= a) dalpha += dy[i];
        }
        CHECK(bad == 0);
        CHECK(x.grad()[0] == dx0[0]);
        CHECK(x.grad()[1] == dx0[1]);
        CHECK(alpha.grad()[0] == doctest::Approx(0.5 + dalpha).epsilon(1e-5));
        CHECK(std::abs(dalpha) > 0.1);  // alpha does receive gradient
    }
}

TEST_CASE("quant pact: only the inputs that require grad receive it") {
    Var x(Tensor::of({3}, {-1.0f, 0.5f, 2.0f}));          // a constant input
    Var alpha = Var::parameter(Tensor::of({1}, {1.0f}));
    Var y = pact_quantize(x, alpha, 2);
    backward(y, Tensor::of({3}, {1.0f, 2.0f, 3.0f}));
    CHECK_FALSE(x.has_grad());
    CHECK(alpha.grad()[0] == 3.0f);                        // only x = 2 >= alpha

    Var x2 = Var::parameter(Tensor::of({3}, {-1.0f, 0.5f, 2.0f}));
    Var frozen(Tensor::of({1}, {1.0f}));                   // alpha not learned
    Var y2 = pact_quantize(x2, frozen, 2);
    backward(y2, Tensor::of({3}, {1.0f, 2.0f, 3.0f}));
    check_exact(x2.grad(), {0, 2, 0});
    CHECK_FALSE(frozen.has_grad());

    NoGradGuard no_grad;
    Var y3 = pact_quantize(x2, alpha, 2);
    CHECK_FALSE(y3.requires_grad());
    CHECK(tape().size() == 0);
}

TEST_CASE("quant pact: full precision is smooth away from 0 and alpha: finite differences") {
    Rng rng(9);
    const float a = 1.5f;
    Tensor xt = rand_uniform({4, 5, 3}, rng, -1.0f, 3.0f);
    for (int64_t i = 0; i < xt.numel(); ++i)  // keep 0.1 away from the kinks at 0 and alpha
        if (std::abs(xt[i]) < 0.1f || std::abs(xt[i] - a) < 0.1f) xt[i] += 0.25f;
    testing::GradCheckOptions tight;
    tight.rtol = 1e-3;  // piecewise linear: y is exact, so the differences are exact up to L's rounding
    tight.atol = 1e-4;
    testing::check_gradients("pact full precision",
                             [](std::vector<Var>& v) { return pact_quantize(v[0], v[1], kFullPrecision); },
                             {Var::parameter(xt), Var::parameter(Tensor::of({1}, {a}))}, tight);
}

TEST_CASE("quant pact: gradient descent moves alpha to the clip value of the target") {
    // Data x ~ U[0, 2], target min(x, 1) (a ReLU clipped at 1), loss = mean (pact(x) - t)^2 at
    // 4 bits. Starting at 0.3, alpha must grow to ~1 and stop there.
    Rng rng(3);
    const int64_t n = 512;
    Tensor xt = rand_uniform({n}, rng, 0.0f, 2.0f);
    Var x(xt);
    Var alpha = Var::parameter(Tensor::of({1}, {0.3f}));
    double first_loss = 0.0, loss = 0.0;
    for (int it = 0; it < 100; ++it) {
        Var y = pact_quantize(x, alpha, 4);
        Tensor seed({n});
        loss = 0.0;
        for (int64_t i = 0; i < n; ++i) {
            const float d = y.value()[i] - std::min(xt[i], 1.0f);
            loss += double(d) * d / n;
            seed[i] = 2.0f * d / n;  // dloss/dy
        }
        if (it == 0) first_loss = loss;
        alpha.zero_grad();
        backward(y, seed);
        alpha.value()[0] -= 0.5f * alpha.grad()[0];
    }
    CHECK(std::abs(alpha.value()[0] - 1.0f) < 0.02f);
    CHECK(loss < 0.01 * first_loss);
}

TEST_CASE("quant pact: bad alpha and bad bits give clear errors") {
    Var x(Tensor::zeros({2, 3}));
    CHECK_THROWS_WITH_AS(pact_quantize(x, Var(Tensor::of({2}, {1, 1})), 2),
                         "pact_quantize: alpha must have shape [1], got [2]", Error);
    CHECK_THROWS_WITH_AS(pact_quantize(x, Var(Tensor::of({1, 1}, {1})), 2), doctest::Contains("got [1, 1]"), Error);
    CHECK_THROWS_WITH_AS(pact_quantize(x, Var(Tensor::of({1}, {0.0f})), 2),
                         "pact_quantize: alpha must be finite and > 0, got 0", Error);
    CHECK_THROWS_WITH_AS(pact_quantize(x, Var(Tensor::of({1}, {-0.5f})), 2), doctest::Contains("got -0.5"), Error);
    CHECK_THROWS_AS(pact_quantize(x, Var(Tensor::of({1}, {NAN})), 2), Error);
    CHECK_THROWS_WITH_AS(pact_quantize(x, Var(Tensor::of({1}, {1.0f})), 9), doctest::Contains("got 9"), Error);
    CHECK_THROWS_WITH_AS(pact_quantize(x, Var(Tensor::of({1}, {1.0f})), 0), doctest::Contains("got 0"), Error);
    CHECK_THROWS_WITH_AS(pact_codes(x.value(), 1.0f, kFullPrecision), doctest::Contains("full precision"), Error);
}

// ---------------------------------------------------------------------------------------------
// Weights: max_abs / min_l2

TEST_CASE("quant weight: hand-computed values (max_abs) at 1, 2, 3 bits on both grids") {
    WeightQuantOptions o;
    o.scale = ScaleMethod::max_abs;
    o.grid = Grid::narrow;
    o.bits = 2;
    // narrow 2 bits (ternary): T = max|w| = 1, s = T / 1 = 1; round(w) = [-1, 0, 1, 0, 1].
    Var w2(Tensor::of({5}, {-1.0f, -0.4f, 0.6f, 0.2f, 0.8f}));
    check_exact(quantize_weight(w2, o).value(), {-1, 0, 1, 0, 1});
    // narrow 3 bits: Qp = 3, T = 1.5, s = 0.5; w / s = [3, -1.4, .4, 1.8, -2.4] -> [3, -1, 0, 2, -2].
    o.bits = 3;
    Var w3(Tensor::of({5}, {1.5f, -0.7f, 0.2f, 0.9f, -1.2f}));
    check_exact(quantize_weight(w3, o).value(), {1.5f, -0.5f, 0.0f, 1.0f, -1.0f});
    CHECK(weight_codes(w3.value(), o).codes == std::vector<int32_t>{3, -1, 0, 2, -2});
    // mid_rise 1 bit (sign): L = 0.5, T = 0.5, s = 1; levels +-0.5 = +-T.
    o.grid = Grid::mid_rise;
    o.bits = 1;
    Var m1(Tensor::of({4}, {0.5f, -0.2f, 0.1f, -0.5f}));
    check_exact(quantize_weight(m1, o).value(), {0.5f, -0.5f, 0.5f, -0.5f});
    CHECK(weight_codes(m1.value(), o).codes == std::vector<int32_t>{0, -1, 0, -1});
    // mid_rise 2 bits: L = 1.5, T = 1.5, s = 1; levels +-0.5, +-1.5;
    // codes: floor(v) for v >= 0, -floor(-v) - 1 for v < 0, clipped to [-2, 1].
    o.bits = 2;
    Var m2(Tensor::of({6}, {1.5f, 0.9f, 0.2f, -0.3f, -1.2f, -1.5f}));
    check_exact(quantize_weight(m2, o).value(), {1.5f, 0.5f, 0.5f, -0.5f, -1.5f, -1.5f});
    CHECK(weight_codes(m2.value(), o).codes == std::vector<int32_t>{1, 0, 0, -1, -2, -2});
    // mid_rise 3 bits: L = 3.5, T = 3.5, s = 1; codes [3, 2, -1, 0, -4, -4].
    o.bits = 3;
    Var m3(Tensor::of({6}, {3.5f, 2.2f, -0.7f, 0.1f, -3.1f, -3.5f}));
    check_exact(quantize_weight(m3, o).value(), {3.5f, 2.5f, -0.5f, 0.5f, -3.5f, -3.5f});
}

TEST_CASE("quant weight: per-channel scales come from each output channel") {
    WeightQuantOptions o{2, true, ScaleMethod::max_abs, Grid::narrow};
    // row 0: T = 0.5, s = 0.5, w / s = [1, -.4, .6] -> [1, 0, 1];  row 1: T = 2, s = 2,
    // w / s = [-1, .45, .55] -> [-1, 0, 1].
    Var w(Tensor::of({2, 3}, {0.5f, -0.2f, 0.3f, -2.0f, 0.9f, 1.1f}));
    check_exact(quantize_weight(w, o).value(), {0.5f, 0.0f, 0.5f, -2.0f, 0.0f, 2.0f});
    check_exact(weight_scales(w.value(), o), {0.5f, 2.0f});
    // An all-zero channel quantizes to zeros (scale 0), on both grids.
    Var z(Tensor::of({2, 2}, {0.0f, 0.0f, 1.0f, -1.0f}));
    for (Grid g : {Grid::narrow, Grid::mid_rise}) {
        o.grid = g;
        Tensor y = quantize_weight(z, o).value();
        CHECK((y[0] == 0.0f && y[1] == 0.0f));
        check_codes(y, weight_codes(z.value(), o), grid_spec("t", 2, g).min_code, grid_spec("t", 2, g).max_code);
    }
}

TEST_CASE("quant weight: signed quantizers are odd functions, ties away from zero") {
    Rng rng(21);
    Tensor w = randn({257}, rng);
    Tensor neg = w;
    for (int64_t i = 0; i < neg.numel(); ++i) neg[i] = -w[i];
    for (Grid g : {Grid::narrow, Grid::mid_rise})
        for (int b : {2, 3, 4}) {
            WeightQuantOptions o{b, false, ScaleMethod::max_abs, g};
            Tensor y = quantize_weight(Var(w), o).value(), yn = quantize_weight(Var(neg), o).value();
            int bad = 0;
            for (int64_t i = 0; i < w.numel(); ++i) bad += (yn[i] != -y[i]);
            CHECK(bad == 0);
        }
    // Exact ties with step 1 (LSQ, so the step is fixed): narrow 3 bits rounds +-0.5 -> +-1, +-1.5 -> +-2,
    // +-2.5 -> +-3; mid_rise puts +-1 on +-1.5 and +-2 on +-2.5 (away from zero).
    Var step(Tensor::of({1}, {1.0f}));
    Var ties(Tensor::of({6}, {0.5f, -0.5f, 1.5f, -1.5f, 2.5f, -2.5f}));
    check_exact(lsq_quantize(ties, step, 3, false, Grid::narrow).value(), {1, -1, 2, -2, 3, -3});
    Var mid_ties(Tensor::of({5}, {1.0f, -1.0f, 2.0f, -2.0f, 0.0f}));
    check_exact(lsq_quantize(mid_ties, step, 3, false, Grid::mid_rise).value(), {1.5f, -1.5f, 2.5f, -2.5f, 0.5f});
}

TEST_CASE("quant weight: fast forward == reference, == scale * code, for all settings") {
    Rng rng(4);
    Tensor w = randn({16, 8, 3, 3}, rng, 0.1f);
    for (Grid g : {Grid::narrow, Grid::mid_rise})
        for (int b = (g == Grid::narrow ? 2 : 1); b <= 8; ++b)
            for (bool pc : {false, true})
                for (ScaleMethod m : {ScaleMethod::max_abs, ScaleMethod::min_l2}) {
                    INFO("grid ", std::string(grid_name(g)), " bits ", b, " per_channel ", pc,
                         " min_l2 ", m == ScaleMethod::min_l2);
                    WeightQuantOptions o{b, pc, m, g};
                    Tensor y = quantize_weight(Var(w), o).value();
                    const GridSpec spec = grid_spec("t", b, g);
                    CHECK(bit_identical(y, reference::quantize_signed(w, weight_scales(w, o), spec)));
                    check_codes(y, weight_codes(w, o), spec.min_code, spec.max_code);
                }
}

TEST_CASE("quant weight: min_l2 beats max_abs at 2-4 bits, is never worse, and is near the best threshold") {
    Rng rng(8);
    Tensor w = randn({16, 8, 3, 3}, rng, 0.05f);
    auto error = [&](const Tensor& y) {
        double e = 0.0;
        for (int64_t i = 0; i < w.numel(); ++i) e += (double(w[i]) - y[i]) * (double(w[i]) - y[i]);
        return e;
    };
    for (Grid g : {Grid::narrow, Grid::mid_rise})
        for (int b = (g == Grid::narrow ? 2 : 1); b <= 8; ++b)
            for (bool pc : {false, true}) {
                INFO("grid ", std::string(grid_name(g)), " bits ", b, " per_channel ", pc);
                const double e_max = error(quantize_weight(Var(w), {b, pc, ScaleMethod::max_abs, g}).value());
                const double e_l2 = error(quantize_weight(Var(w), {b, pc, ScaleMethod::min_l2, g}).value());
                CHECK(e_l2 <= e_max);
                if (b >= 2 && b <= 4) CHECK(e_l2 < 0.9 * e_max);
                if (!pc && b <= 5) {
                    // Brute force over 4000 thresholds: the search should be within 0.2% of it.
                    const GridSpec spec = grid_spec("t", b, g);
                    float top = 0.0f;
                    for (int64_t i = 0; i < w.numel(); ++i) top = std::max(top, std::abs(w[i]));
                    double best = INFINITY;
                    for (int k = 1; k <= 4000; ++k)
                        best = std::min(best, reference::l2_error(w.data(), w.numel(), top * k / 4000.0f, spec));
                    CHECK(e_l2 <= best * 1.002);
                }
            }
}

TEST_CASE("quant weight: straight-through gradient, zero outside the clip threshold") {
    Rng rng(12);
    Tensor wt = randn({8, 50}, rng);
    Tensor dy = randn({8, 50}, rng);
    for (bool pc : {false, true})
        for (ScaleMethod m : {ScaleMethod::max_abs, ScaleMethod::min_l2}) {
            INFO("per_channel ", pc, " min_l2 ", m == ScaleMethod::min_l2);
            WeightQuantOptions o{2, pc, m, Grid::mid_rise};
            Var w = Var::parameter(wt);
            Tensor dw0 = randn({8, 50}, rng);
            w.grad_for_accumulate() = dw0;
            Var y = quantize_weight(w, o);
            backward(y, dy);
            Tensor s = weight_scales(wt, o);
            // dw = dy * [|w| <= T], T = s * L (compare only where |w| is clearly not at T).
            int bad = 0, clipped = 0;
            for (int64_t i = 0; i < wt.numel(); ++i) {
                const float t = s[pc ? i / 50 : 0] * 1.5f;
                if (std::abs(std::abs(wt[i]) - t) < 1e-4f * t) continue;
                const bool inside = std::abs(wt[i]) < t;
                clipped += !inside;
                bad += w.grad()[i] != dw0[i] + (inside ? dy[i] : 0.0f);
            }
            CHECK(bad == 0);
            if (m == ScaleMethod::max_abs) CHECK(clipped == 0);
            else CHECK(clipped > 0);  // at 2 bits min_l2 clips the tails of a Gaussian
        }
}

TEST_CASE("quant weight: full precision returns the weight itself") {
    Var w = Var::parameter(Tensor::of({2, 2}, {1, -2, 3, -4}));
    WeightQuantOptions o;  // default: full precision
    CHECK(o.bits == kFullPrecision);
    Var y = quantize_weight(w, o);
    CHECK(y.node() == w.node());
}

TEST_CASE("quant weight: bad bits, bad shapes, empty weights give clear errors") {
    Var w(Tensor::zeros({4}));
    CHECK_THROWS_WITH_AS(quantize_weight(w, {9, false, ScaleMethod::max_abs, Grid::mid_rise}),
                         "quantize_weight: bits must be 1..8 or 32 (full precision), got 9", Error);
    CHECK_THROWS_WITH_AS(quantize_weight(w, {4, true, ScaleMethod::max_abs, Grid::mid_rise}),
                         doctest::Contains("per_channel needs a weight of rank >= 2"), Error);
    CHECK_THROWS_WITH_AS(quantize_weight(Var(Tensor::zeros({0, 3})), {4, false, ScaleMethod::max_abs, Grid::mid_rise}),
                         doctest::Contains("the weight tensor is empty (shape [0, 3])"), Error);
    CHECK_THROWS_WITH_AS(quantize_weight(w, {1, false, ScaleMethod::max_abs, Grid::narrow}),
                         doctest::Contains("narrow grid needs bits >= 2"), Error);
}

// ---------------------------------------------------------------------------------------------
// LSQ

TEST_CASE("quant lsq: hand-computed values and gradients at 1, 2, 3 bits") {
    SUBCASE("narrow, 2 bits, step 1") {
        // v = w = [.3, -.8, 1.4, -2, .6]; Qp = L = 1; q = round(clip(v)) = [0, -1, 1, -1, 1].
        // dw = [|v| <= 1] = [1, 1, 0, 0, 1];  sum over dy = 1: inside (q - v) = -.3 - .2 + .4 = -.1,
        // outside q = 1 - 1 = 0  ->  ds = -0.1 * g,  g = 1 / sqrt(5 * 1).
        Var w = Var::parameter(Tensor::of({5}, {0.3f, -0.8f, 1.4f, -2.0f, 0.6f}));
        Var s = Var::parameter(Tensor::of({1}, {1.0f}));
        Var y = lsq_quantize(w, s, 2, false, Grid::narrow);
        check_exact(y.value(), {0, -1, 1, -1, 1});
        backward(y, Tensor::full({5}, 1.0f));
        check_exact(w.grad(), {1, 1, 0, 0, 1});
        CHECK(s.grad()[0] == doctest::Approx(-0.1 / std::sqrt(5.0)).epsilon(1e-5));
    }
    SUBCASE("mid_rise, 1 bit, step 0.5") {
        // L = 0.5; v = w / 0.5 = [.2, -.4, .8, -.6]; codes [0, -1, 0, -1], q = [.5, -.5, .5, -.5],
        // y = q * 0.5. Inside |v| <= .5: first two; ds = (.5 - .2) + (-.5 + .4) + (.5) + (-.5) = 0.2,
        // g = 1 / sqrt(4 * 0.5)  ->  ds = 0.2 / sqrt(2).
        Var w = Var::parameter(Tensor::of({4}, {0.1f, -0.2f, 0.4f, -0.3f}));
        Var s = Var::parameter(Tensor::of({1}, {0.5f}));
        Var y = lsq_quantize(w, s, 1, false, Grid::mid_rise);
        check_exact(y.value(), {0.25f, -0.25f, 0.25f, -0.25f});
        backward(y, Tensor::full({4}, 1.0f));
        check_exact(w.grad(), {1, 1, 0, 0});
        CHECK(s.grad()[0] == doctest::Approx(0.2 / std::sqrt(2.0)).epsilon(1e-5));
    }
    SUBCASE("narrow, 3 bits, per channel, steps [0.5, 0.25]") {
        // Qp = L = 3, g = 1 / sqrt(2 * 3).
        // row 0: v = [1.4, -3.2] -> q = [1, -3] (clipped), y = [.5, -1.5]; ds0 = (1 - 1.4) + (-3) = -3.4.
        // row 1: v = [1.04, 3.6] -> q = [1, 3] (clipped), y = [.25, .75]; ds1 = (1 - 1.04) + 3 = 2.96.
        Var w = Var::parameter(Tensor::of({2, 2}, {0.7f, -1.6f, 0.26f, 0.9f}));
        Var s = Var::parameter(Tensor::of({2}, {0.5f, 0.25f}));
        Var y = lsq_quantize(w, s, 3, true, Grid::narrow);
        check_exact(y.value(), {0.5f, -1.5f, 0.25f, 0.75f});
        backward(y, Tensor::full({2, 2}, 1.0f));
        check_exact(w.grad(), {1, 0, 1, 0});
        CHECK(s.grad()[0] == doctest::Approx(-3.4 / std::sqrt(6.0)).epsilon(1e-5));
        CHECK(s.grad()[1] == doctest::Approx(2.96 / std::sqrt(6.0)).epsilon(1e-5));
    }
}

TEST_CASE("quant lsq: surrogate gradients as written, on random inputs away from thresholds") {
    Rng rng(31);
    for (Grid g : {Grid::narrow, Grid::mid_rise})
        for (int b : {1, 2, 3, 4, 8})
            for (bool pc : {false, true}) {
                if (g == Grid::narrow && b == 1) continue;
                INFO("grid ", std::string(grid_name(g)), " bits ", b, " per_channel ", pc);
                const GridSpec spec = grid_spec("t", b, g);
                const int64_t rows = 3, inner = 700;
                Tensor steps = pc ? Tensor::of({3}, {0.3f, 0.2f, 0.45f}) : Tensor::of({1}, {0.3f});
                Tensor wt = randn({rows, inner}, rng, 0.3f * spec.limit * 0.7f);  // some clipped, most inside
                for (int64_t k = 0; k < rows; ++k) {
                    Tensor row = Tensor::uninitialized({inner});
                    std::copy(wt.data() + k * inner, wt.data() + (k + 1) * inner, row.data());
                    row = away_from_thresholds(std::move(row), steps[pc ? k : 0], spec);
                    std::copy(row.data(), row.data() + inner, wt.data() + k * inner);
                }
                Tensor dy = randn({rows, inner}, rng);
                Var w = Var::parameter(wt);
                Var s = Var::parameter(steps);
                Var y = lsq_quantize(w, s, b, pc, g);
                backward(y, dy);
                // The test's own formulas: v = w / s, q = level(v), gscale = 1 / sqrt(n_per_step * L),
                // dw = dy [|v| <= L], ds = gscale * sum dy (q - v) inside, dy q outside.
                const double gscale = 1.0 / std::sqrt(double(pc ? inner : rows * inner) * spec.limit);
                std::vector<double> ds(pc ? rows : 1, 0.0);
                int bad = 0, clipped = 0;
                for (int64_t i = 0; i < wt.numel(); ++i) {
                    const int64_t k = pc ? i / inner : 0;
                    const float v = wt[i] / steps[k];
                    const float q = expected_level(v, b, g);
                    const bool inside = std::abs(v) <= spec.limit;
                    clipped += !inside;
                    if (y.value()[i] != q * steps[k]) ++bad;
                    if (w.grad()[i] != (inside ? dy[i] : 0.0f)) ++bad;
                    ds[k] += double(dy[i]) * (inside ? double(q) - v : double(q));
                }
                CHECK(bad == 0);
                CHECK(clipped > 0);
                for (size_t k = 0; k < ds.size(); ++k) {
                    CHECK(s.grad()[k] == doctest::Approx(gscale * ds[k]).epsilon(1e-4).scale(1e-3));
                    CHECK(s.grad()[k] != 0.0f);  // the step is learned
                }
                // The header's scalar reference agrees too (same formula, independent code path).
                Tensor rdw({rows, inner}), rds(steps.shape());
                reference::lsq_backward(wt, steps, spec, lsq_grad_scale(pc ? inner : rows * inner, b, g), dy, rdw, rds);
                CHECK(bit_identical(rdw, w.grad()));
                for (int64_t k = 0; k < rds.numel(); ++k)
                    CHECK(rds[k] == doctest::Approx(s.grad()[k]).epsilon(1e-4).scale(1e-3));
            }
}

TEST_CASE("quant lsq: forward == reference and == scale * code, full precision returns w") {
    Rng rng(41);
    Tensor w = randn({6, 5, 3, 3}, rng, 0.2f);
    Tensor steps = rand_uniform({6}, rng, 0.02f, 0.2f);
    for (Grid g : {Grid::narrow, Grid::mid_rise})
        for (int b = (g == Grid::narrow ? 2 : 1); b <= 8; ++b) {
            INFO("grid ", std::string(grid_name(g)), " bits ", b);
            const GridSpec spec = grid_spec("t", b, g);
            Tensor y = lsq_quantize(Var(w), Var(steps), b, true, g).value();
            CHECK(bit_identical(y, reference::lsq_forward(w, steps, spec)));
            check_codes(y, lsq_codes(w, steps, b, g), spec.min_code, spec.max_code);
        }
    Var wv = Var::parameter(w);
    CHECK(lsq_quantize(wv, Var(steps), kFullPrecision, true).node() == wv.node());
}

TEST_CASE("quant lsq: init helpers") {
    Tensor w = Tensor::of({2, 3}, {0.1f, -0.2f, 0.3f, 1.0f, -2.0f, 0.0f});
    // lsq: 2 mean|w| / sqrt(L); 3 bits mid_rise L = 3.5. Row means: 0.2 and 1.0.
    Tensor s = lsq_init_step(w, 3, true, Grid::mid_rise, StepInit::lsq);
    CHECK(s[0] == doctest::Approx(2 * 0.2 / std::sqrt(3.5)));
    CHECK(s[1] == doctest::Approx(2 * 1.0 / std::sqrt(3.5)));
    Tensor s1 = lsq_init_step(w, 3, false, Grid::narrow);  // per tensor, mean |w| = 3.6 / 6, L = 3
    CHECK(s1.shape() == Shape{1});
    CHECK(s1[0] == doctest::Approx(2 * 0.6 / std::sqrt(3.0)));
    // max_abs: max|w| / L;  min_l2: the weight quantizer's scale.
    Tensor sm = lsq_init_step(w, 3, true, Grid::mid_rise, StepInit::max_abs);
    CHECK(sm[0] == doctest::Approx(0.3 / 3.5));
    CHECK(sm[1] == doctest::Approx(2.0 / 3.5));
    CHECK(bit_identical(lsq_init_step(w, 2, true, Grid::mid_rise, StepInit::min_l2),
                        weight_scales(w, {2, true, ScaleMethod::min_l2, Grid::mid_rise})));
    // All-zero weights still give a usable (positive) step.
    CHECK(lsq_init_step(Tensor::zeros({4}), 2, false)[0] > 0.0f);
}

TEST_CASE("quant lsq: gradient descent moves the step to a low-error value from either side") {
    // loss = mean (lsq(w, s) - w)^2 with fixed Gaussian w, 3 bits mid_rise. The min-L2 scale is
    // about 0.55; LSQ's surrogate settles a few percent above it.
    Rng rng(3);
    const int64_t n = 512;
    Tensor wt = randn({n}, rng);
    Var w(wt);
    const float s_opt = weight_scales(wt, {3, false, ScaleMethod::min_l2, Grid::mid_rise})[0];
    for (float init : {0.03f, 3.0f}) {
        INFO("initial step ", init);
        Var s = Var::parameter(Tensor::of({1}, {init}));
        double first_loss = 0.0, loss = 0.0;
        for (int it = 0; it < 200; ++it) {
            Var y = lsq_quantize(w, s, 3, false, Grid::mid_rise);
            Tensor seed({n});
            loss = 0.0;
            for (int64_t i = 0; i < n; ++i) {
                const float d = y.value()[i] - wt[i];
                loss += double(d) * d / n;
                seed[i] = 2.0f * d / n;
            }
            if (it == 0) first_loss = loss;
            s.zero_grad();
            backward(y, seed);
            s.value()[0] -= 5.0f * s.grad()[0];
        }
        CHECK(std::abs(s.value()[0] - s_opt) < 0.1f * s_opt);
        CHECK(loss < 0.1 * first_loss);
    }
}

TEST_CASE("quant lsq: bad step, bad bits, bad shapes give clear errors") {
    Var w(Tensor::zeros({3, 4}));
    CHECK_THROWS_WITH_AS(lsq_quantize(w, Var(Tensor::of({1}, {0.1f})), 3, true),
                         "lsq_quantize: step must have shape [3] for w of shape [3, 4] (per channel), got [1]", Error);
    CHECK_THROWS_WITH_AS(lsq_quantize(w, Var(Tensor::of({3}, {0.1f, 0.1f, 0.1f})), 3, false),
                         doctest::Contains("step must have shape [1]"), Error);
    CHECK_THROWS_WITH_AS(lsq_quantize(w, Var(Tensor::of({3}, {0.1f, -0.1f, 0.1f})), 3, true),
                         doctest::Contains("got step[1] = -0.1"), Error);
    CHECK_THROWS_WITH_AS(lsq_quantize(w, Var(Tensor::of({1}, {0.0f})), 3, false), doctest::Contains("step[0] = 0"),
                         Error);
    CHECK_THROWS_WITH_AS(lsq_quantize(w, Var(Tensor::of({1}, {0.1f})), 12, false), doctest::Contains("got 12"), Error);
    CHECK_THROWS_WITH_AS(lsq_quantize(w, Var(Tensor::of({1}, {0.1f})), 1, false, Grid::narrow),
                         doctest::Contains("narrow grid needs bits >= 2"), Error);
    CHECK_THROWS_WITH_AS(lsq_init_step(Tensor::zeros({5}), 3, true), doctest::Contains("rank >= 2"), Error);
}

// ---------------------------------------------------------------------------------------------
// Thread independence

TEST_CASE("quant: 1 thread and 2 threads give bit-identical outputs and gradients") {
    const int saved = num_threads();
    Rng rng(77);
    const int64_t n = 3 * kernels::kChunk + 77;
    Tensor x = randn({n}, rng, 2.0f);
    Tensor dy = randn({n}, rng);
    Tensor w = randn({3, kernels::kChunk + 45}, rng, 0.1f);  // rows longer than a chunk
    Tensor dyw = randn(w.shape(), rng);
    auto run = [&](int threads) {
        set_num_threads(threads);
        std::vector<Tensor> out;
        Var xv = Var::parameter(x), alpha = Var::parameter(Tensor::of({1}, {1.1f}));
        Var y = pact_quantize(xv, alpha, 3);
        backward(y, dy);
        out.push_back(y.value());
        out.push_back(xv.grad());
        out.push_back(alpha.grad());
        for (bool pc : {false, true}) {
            Var wv = Var::parameter(w);
            Var yw = quantize_weight(wv, {2, pc, ScaleMethod::min_l2, Grid::mid_rise});
            backward(yw, dyw);
            out.push_back(yw.value());
            out.push_back(wv.grad());
            Var wl = Var::parameter(w);
            Var s = Var::parameter(lsq_init_step(w, 3, pc));
            Var yl = lsq_quantize(wl, s, 3, pc);
            backward(yl, dyw);
            out.push_back(yl.value());
            out.push_back(wl.grad());
            out.push_back(s.grad());
        }
        return out;
    };
    std::vector<Tensor> one = run(1), two = run(2);
    set_num_threads(saved);
    REQUIRE(one.size() == two.size());
    for (size_t i = 0; i < one.size(); ++i) {
        INFO("result ", i);
        CHECK(bit_identical(one[i], two[i]));
    }
}
