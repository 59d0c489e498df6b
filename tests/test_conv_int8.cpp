// The integer convolution (kernels/conv_int8.hpp): its packing by hand, its sums against plain
// integer loops (exactly: both are exact), and conv2d's integer path on quantized operands: the
// exact sum rounded once, taken only where every value is on its grid.
#include <doctest/doctest.h>

#include <cstdint>
#include <vector>

#include "gradcheck.hpp"
#include "speq/kernels/conv_int8.hpp"
#include "speq/kernels/conv_reference.hpp"
#include "speq/ops/conv2d.hpp"
#include "speq/quant/act_quant.hpp"
#include "speq/quant/weight_quant.hpp"

using namespace speq;

namespace {
int32_t byte_at(const std::vector<uint32_t>& words, int64_t word, int byte) {
    return static_cast<int32_t>((words[static_cast<size_t>(word)] >> (8 * byte)) & 0xFFu);
}

// Random codes: activations in [0, 255] and weights in [-128, 127], both ends included.
std::vector<int32_t> random_codes(int64_t n, int32_t lo, int32_t hi, Rng& rng) {
    std::vector<int32_t> codes(static_cast<size_t>(n));
    for (int32_t& c : codes) c = lo + static_cast<int32_t>(rng.below(static_cast<uint32_t>(hi - lo + 1)));
    codes[0] = hi, codes[static_cast<size_t>(n - 1)] = lo;
    return codes;
}
}  // namespace

TEST_CASE("conv int8: codes are packed 4 channels to a word, in stride phases, with zero padding") {
    // C = 5 (two groups, the second one channel), 2x3 image, padding 1, stride 2: padded 4x5, so
    // phases are 2x3 and padded pixel (hp, wp) goes to phase (hp % 2, wp % 2) at (hp / 2, wp / 2).
    const kernels::ConvGeometry g = kernels::ConvGeometry::make(5, 2, 3, 3, 3, 2, 1);
    const kernels::Int8ConvLayout l = kernels::Int8ConvLayout::of(g);
    CHECK(l.groups == 2);
    CHECK(l.phase_h == 2);
    CHECK(l.phase_w == 3);
    const float step = 0.25f;
    std::vector<float> x(5 * 2 * 3);
    for (size_t i = 0; i < x.size(); ++i) x[i] = static_cast<float>(i + 1) * step;  // codes 1..30
    std::vector<uint32_t> packed(static_cast<size_t>(l.image_words()), 0xDEADBEEFu);
    REQUIRE(kernels::pack_activation_codes(l, x.data(), step, packed.data()));
    // channel 2, pixel (1, 2): code 2*6 + 1*3 + 2 + 1 = 18, padded (2, 3): phase (0, 1), at (1, 1)
    const int64_t word = ((0 * 2 + 1) * l.groups + 0) * l.plane + 1 * l.phase_w + 1;
    CHECK(l.word_of(0, 2, 3) == word);
    CHECK(byte_at(packed, word, 2) == 18);
    CHECK(byte_at(packed, word, 0) == 6);   // channel 0, same pixel
    CHECK(byte_at(packed, l.word_of(1, 2, 3), 0) == 30);  // channel 4: the second group's first byte
    CHECK(byte_at(packed, l.word_of(1, 2, 3), 1) == 0);   // no channel 5
    CHECK(packed[static_cast<size_t>(l.word_of(0, 0, 0))] == 0u);  // padding
    CHECK(packed[static_cast<size_t>(l.word_of(1, 3, 4))] == 0u);
    // Tap (i, j) = (2, 1) reads phase (0, 1), one phase row down: output q = oh*Wq + ow is at +Wq.
    CHECK(l.tap_offset[2 * 3 + 1] == (0 * 2 + 1) * l.groups * l.plane + 1 * l.phase_w + 0);
}

TEST_CASE("conv int8: a value off its grid or out of the code range refuses to pack") {
    const kernels::ConvGeometry g = kernels::ConvGeometry::make(3, 4, 20, 3, 3, 1, 1);  // 20: a 16-pixel run and a tail
    const kernels::Int8ConvLayout l = kernels::Int8ConvLayout::of(g);
    std::vector<uint32_t> packed(static_cast<size_t>(l.image_words()));
    std::vector<float> x(3 * 4 * 20, 0.5f);
    CHECK(kernels::pack_activation_codes(l, x.data(), 0.5f, packed.data()));
    for (size_t at : {size_t{0}, size_t{37}, x.size() - 1}) {  // first run, another row, the tail
        std::vector<float> bad = x;
        bad[at] = 0.5f + 1e-6f;
        CHECK_FALSE(kernels::pack_activation_codes(l, bad.data(), 0.5f, packed.data()));
        bad[at] = -0.5f;
        CHECK_FALSE(kernels::pack_activation_codes(l, bad.data(), 0.5f, packed.data()));
        bad[at] = 256 * 0.5f;
        CHECK_FALSE(kernels::pack_activation_codes(l, bad.data(), 0.5f, packed.data()));
    }
    const std::vector<float> w{0.5f, -64.0f, 63.5f, 1.0f};  // codes 1, -128, 127, 2 at step 0.5
    std::vector<int32_t> packed_w;
    std::vector<float> steps;
    const kernels::Int8ConvLayout l1 = kernels::Int8ConvLayout::of(kernels::ConvGeometry::make(1, 3, 3, 1, 1, 1, 0));
    CHECK(kernels::pack_weight_codes(l1, w.data(), 4, {0.5f}, packed_w, steps));
    CHECK(static_cast<int8_t>(packed_w[1] & 0xFF) == -128);  // one channel: byte 0 of each word
    CHECK(static_cast<int8_t>(packed_w[2] & 0xFF) == 127);
    CHECK_FALSE(kernels::pack_weight_codes(l1, std::vector<float>{0.5f, -64.5f, 0.0f, 0.0f}.data(), 4, {0.5f},
                                           packed_w, steps));  // code -129
    CHECK_FALSE(kernels::pack_weight_codes(l1, std::vector<float>{0.75f, 0.0f, 0.0f, 0.0f}.data(), 4, {0.5f},
                                           packed_w, steps));  // between two codes
    // The mid-rise grid: levels (c + 1/2) * s are the odd integers times s / 2.
    const ValueGrid mid_rise{{0.5f}, 0.5f, -2, 1};
    CHECK(kernels::integer_steps(mid_rise) == std::vector<float>{0.25f});
    CHECK(kernels::integer_steps(ValueGrid{{0.5f}, 0.25f, 0, 3}).empty());
}

TEST_CASE("conv int8: the kernel's sums equal plain integer loops, at every geometry") {
    if (!kernels::kInt8ConvCompiled) {
        MESSAGE("this build has no integer convolution (AVX-512 VNNI): conv2d computes in float");
        return;
    }
    Rng rng(5);
    struct Case {
        int64_t C, H, W, K, k, stride, padding;
    };
    // ResNet-20's shapes, then remainders: channels not a multiple of 4, channel tiles of 1-3,
    // odd sizes, stride 2 and 3, even and 1x1 kernels, no padding, stride-2 rows of odd width and
    // of more than 32 pixels (the stride-2 packing takes 32 at a time).
    for (const Case& c : {Case{16, 32, 32, 16, 3, 1, 1}, Case{32, 16, 16, 32, 3, 1, 1}, Case{64, 8, 8, 64, 3, 1, 1},
                          Case{16, 32, 32, 32, 3, 2, 1}, Case{32, 16, 16, 64, 1, 2, 0}, Case{5, 7, 9, 6, 3, 1, 1},
                          Case{3, 8, 8, 5, 5, 2, 2}, Case{7, 6, 6, 3, 2, 1, 0}, Case{4, 5, 5, 7, 3, 3, 1},
                          Case{1, 1, 1, 1, 1, 1, 0}, Case{5, 9, 9, 3, 3, 2, 1}, Case{4, 3, 40, 2, 3, 2, 1}}) {
        INFO("C ", c.C, " H ", c.H, " W ", c.W, " K ", c.K, " kernel ", c.k, " stride ", c.stride, " padding ", c.padding);
        const kernels::ConvGeometry g = kernels::ConvGeometry::make(c.C, c.H, c.W, c.k, c.k, c.stride, c.padding);
        const kernels::Int8ConvLayout l = kernels::Int8ConvLayout::of(g);
        const std::vector<int32_t> a = random_codes(c.C * c.H * c.W, 0, 255, rng);
        const std::vector<int32_t> m = random_codes(c.K * c.C * c.k * c.k, -128, 127, rng);
        const float step = 1.0f;  // values = codes
        std::vector<float> x(a.begin(), a.end()), w(m.begin(), m.end());
        std::vector<uint32_t> packed(static_cast<size_t>(l.image_words()));
        std::vector<int32_t> packed_w;
        std::vector<float> steps;
        REQUIRE(kernels::pack_activation_codes(l, x.data(), step, packed.data()));
        REQUIRE(kernels::pack_weight_codes(l, w.data(), c.K, {step}, packed_w, steps));
        std::vector<int32_t> got(static_cast<size_t>(c.K * l.wide)), expected(got.size());
        kernels::int8_conv_image(l, packed.data(), packed_w.data(), c.K, got.data());
        kernels::reference::int8_conv_image(l, a, m, c.K, expected.data());
        for (int64_t k = 0; k < c.K; ++k)
            for (int64_t oh = 0; oh < g.out_h; ++oh)
                for (int64_t ow = 0; ow < g.out_w; ++ow) {
                    const size_t at = static_cast<size_t>(k * l.wide + oh * l.phase_w + ow);
                    INFO("k ", k, " oh ", oh, " ow ", ow);
                    REQUIRE(got[at] == expected[at]);
                }
    }
}

namespace {
// conv2d on quantized operands against the exact sum of their codes, scaled once: bit for bit on
// the integer path; within float rounding of kernels::conv2d_reference either way.
void check_quantized_conv2d(int act_bits, const quant::WeightQuantOptions& wq, int stride, bool with_bias) {
    Rng rng(11);
    const int64_t N = 3, C = 6, H = 8, W = 8, K = 5;
    const float alpha = 2.5f;
    const Var x = quant::pact_quantize(Var(randn({N, C, H, W}, rng)), Var(Tensor::full({1}, alpha)), act_bits);
    const Var w = quant::quantize_weight(Var(randn({K, C, 3, 3}, rng)), wq);
    const Var b = with_bias ? Var(randn({K}, rng)) : Var();
    REQUIRE(x.grid() != nullptr);
    REQUIRE(w.grid() != nullptr);
    const int64_t before = detail::integer_conv_images();
    const Var y = conv2d(x, w, b, {stride, 1});
    const bool integer = detail::integer_conv_images() - before == N;
    CHECK(integer == kernels::kInt8ConvCompiled);
    const Tensor ref = kernels::conv2d_reference(x.value(), w.value(), with_bias ? b.value() : Tensor(), stride, 1);
    REQUIRE(y.shape() == ref.shape());
    for (int64_t i = 0; i < ref.numel(); ++i) REQUIRE(y.value()[i] == doctest::Approx(ref[i]).epsilon(1e-5));
    if (!integer) return;
    // Bit for bit: codes from the quantizers' own integer views, summed exactly, scaled once.
    const quant::IntegerCodes a = quant::pact_codes(x.value(), alpha, act_bits);
    const quant::IntegerCodes m = quant::weight_codes(w.value(), wq);
    const kernels::ConvGeometry g = kernels::ConvGeometry::make(C, H, W, 3, 3, stride, 1);
    const kernels::Int8ConvLayout l = kernels::Int8ConvLayout::of(g);
    const std::vector<float> steps = kernels::integer_steps(*w.grid());
    std::vector<int32_t> m2(m.codes.size());  // mid-rise: level c + 1/2 is (2c + 1) half steps
    for (size_t i = 0; i < m2.size(); ++i) m2[i] = m.offset == 0.0f ? m.codes[i] : 2 * m.codes[i] + 1;
    std::vector<int32_t> sums(static_cast<size_t>(K * l.wide));
    const int64_t P = g.out_h * g.out_w;
    for (int64_t n = 0; n < N; ++n) {
        const std::vector<int32_t> a_n(a.codes.begin() + n * C * H * W, a.codes.begin() + (n + 1) * C * H * W);
        kernels::reference::int8_conv_image(l, a_n, m2, K, sums.data());
        for (int64_t k = 0; k < K; ++k)
            for (int64_t oh = 0; oh < g.out_h; ++oh)
                for (int64_t ow = 0; ow < g.out_w; ++ow) {
                    const float scale = a.scales[0] * steps[steps.size() == 1 ? 0 : static_cast<size_t>(k)];
                    const float expected = static_cast<float>(sums[static_cast<size_t>(k * l.wide + oh * l.phase_w + ow)]) * scale;
                    const float got = y.value()[(n * K + k) * P + oh * g.out_w + ow];
                    if (with_bias)  // the compiler may fuse "* scale + bias" into one rounding
                        REQUIRE(got == doctest::Approx(expected + b.value()[k]).epsilon(1e-6));
                    else
                        REQUIRE(got == expected);
                }
    }
}
}  // namespace

TEST_CASE("conv2d: quantized operands take the integer path, exact sum rounded once") {
    using quant::Grid;
    using quant::ScaleMethod;
    SUBCASE("W2A2 per channel, mid-rise, min-L2") { check_quantized_conv2d(2, {2, true, ScaleMethod::min_l2, Grid::mid_rise}, 1, false); }
    SUBCASE("W2A8 per tensor, narrow, with bias") { check_quantized_conv2d(8, {2, false, ScaleMethod::max_abs, Grid::narrow}, 1, true); }
    SUBCASE("W4A1 stride 2") { check_quantized_conv2d(1, {4, true, ScaleMethod::min_l2, Grid::mid_rise}, 2, false); }
    SUBCASE("W7A3 (mid-rise 7 bits: half steps -127..127)") { check_quantized_conv2d(3, {7, true, ScaleMethod::max_abs, Grid::mid_rise}, 1, true); }
}

TEST_CASE("conv2d: the integer path is not taken where a value is off its grid, or a grid does not fit") {
    Rng rng(3);
    const Var w = quant::quantize_weight(Var(randn({4, 3, 3, 3}, rng)), {2, true, quant::ScaleMethod::min_l2, quant::Grid::mid_rise});
    auto integer_images = [&](const Var& x, const Var& weight) {
        const int64_t before = detail::integer_conv_images();
        const Var y = conv2d(x, weight, Var(), {1, 1});
        const Tensor ref = kernels::conv2d_reference(x.value(), weight.value(), Tensor(), 1, 1);
        for (int64_t i = 0; i < ref.numel(); ++i) REQUIRE(y.value()[i] == doctest::Approx(ref[i]).epsilon(1e-5));
        return detail::integer_conv_images() - before;
    };
    Var x = quant::pact_quantize(Var(randn({2, 3, 8, 8}, rng)), Var(Tensor::full({1}, 2.0f)), 2);
    CHECK(integer_images(x, w) == (kernels::kInt8ConvCompiled ? 2 : 0));
    x.value()[77] += 1e-3f;  // a stale annotation: the value changed after the quantizer ran
    CHECK(integer_images(x, w) == 0);
    const Var x8 = quant::pact_quantize(Var(randn({2, 3, 8, 8}, rng)), Var(Tensor::full({1}, 2.0f)), 8);
    const Var w8 = quant::quantize_weight(Var(randn({4, 3, 3, 3}, rng)), {8, true, quant::ScaleMethod::max_abs, quant::Grid::mid_rise});
    CHECK(integer_images(x8, w8) == 0);  // 8-bit mid-rise weights are 255 half steps: no signed byte
    CHECK(integer_images(Var(x8.value()), w) == 0);  // x without a grid
    CHECK(integer_images(x8, Var(w.value())) == 0);  // weight without a grid
}
