// The fast convolution kernels against their plain versions: im2col / col2im_add (shifted-copy
// path vs the general loops; exact equality: both only copy or add the same numbers), and the
// direct convolution (kernels/conv_direct.hpp) against kernels/conv_reference.hpp.
#include <doctest/doctest.h>

#include <cmath>
#include <cstring>
#include <vector>

#include "gradcheck.hpp"
#include "speq/kernels/conv_reference.hpp"
#include "speq/kernels/im2col.hpp"
#include "speq/ops/conv2d.hpp"

using namespace speq;

namespace {
// conv2d(x, w, b) and its backward against kernels/conv_reference.hpp (b may be undefined).
// The sums (up to a few hundred products of N(0, 1) numbers) run in another order than the
// reference's double sums: float rounding stays below 1e-4 relative.
void check_conv2d_against_reference(const Var& x, const Var& w, const Var& b, int stride, int padding, Rng& rng) {
    Var y = conv2d(x, w, b, {stride, padding});
    const Tensor expected = kernels::conv2d_reference(x.value(), w.value(), b.defined() ? b.value() : Tensor(), stride, padding);
    REQUIRE(y.shape() == expected.shape());
    for (int64_t i = 0; i < expected.numel(); ++i) {
        INFO("y element ", i);
        REQUIRE(y.value()[i] == doctest::Approx(expected[i]).epsilon(1e-4));
    }
    const Tensor dy = randn(y.shape(), rng);
    const kernels::ConvReferenceGrads ref = kernels::conv2d_reference_backward(x.value(), w.value(), dy, stride, padding);
    backward(y, dy);
    for (int64_t i = 0; i < ref.dw.numel(); ++i) {
        INFO("dw element ", i);
        REQUIRE(w.grad()[i] == doctest::Approx(ref.dw[i]).epsilon(1e-4));
    }
    for (int64_t i = 0; i < ref.dx.numel(); ++i) {
        INFO("dx element ", i);
        REQUIRE(x.grad()[i] == doctest::Approx(ref.dx[i]).epsilon(1e-4));
    }
}

// Same bits (NaN included), same shape.
bool same_bits(const Tensor& a, const Tensor& b) {
    return a.shape() == b.shape() && std::memcmp(a.data(), b.data(), sizeof(float) * a.numel()) == 0;
}

struct Geometry {
    int64_t c, h, w, kh, kw, stride, padding;
};
const std::vector<Geometry> kGeometries = {
    {3, 5, 5, 3, 3, 1, 1},   // ResNet 3x3, "same": the shifted-copy path
    {2, 7, 6, 3, 3, 1, 1},   // non-square image
    {2, 6, 5, 5, 5, 1, 2},   // 5x5 "same"
    {2, 6, 5, 5, 3, 1, 1},   // kh != kw: out_h != h, out_w == w
    {1, 4, 4, 3, 3, 1, 0},   // no padding: general path
    {2, 2, 2, 3, 3, 1, 1},   // image smaller than the kernel reach
    {2, 1, 3, 3, 3, 1, 1},   // one row
    {3, 7, 6, 3, 3, 2, 1},   // stride 2: general path
    {2, 5, 5, 1, 1, 1, 0},   // 1x1
};
}  // namespace

TEST_CASE("im2col and col2im_add: the fast path equals the general loops exactly") {
    Rng rng(11);
    for (const Geometry& t : kGeometries) {
        const auto g = kernels::ConvGeometry::make(t.c, t.h, t.w, t.kh, t.kw, t.stride, t.padding);
        INFO("image [", t.c, ", ", t.h, ", ", t.w, "], kernel ", t.kh, "x", t.kw, ", stride ", t.stride,
             ", padding ", t.padding, ", shifted copy: ", kernels::is_shifted_copy(g));
        Tensor image = randn({t.c, t.h, t.w}, rng);
        // Pre-filled with NaN: an entry the kernel forgets to write shows up.
        Tensor col = Tensor::full({g.col_rows(), g.col_cols()}, NAN), expected = col;
        kernels::im2col(g, image.data(), col.data());
        kernels::reference::im2col(g, image.data(), expected.data());
        CHECK(same_bits(col, expected));

        Tensor dcol = randn({g.col_rows(), g.col_cols()}, rng);
        Tensor dimage = randn({t.c, t.h, t.w}, rng), dimage_expected = dimage;
        kernels::col2im_add(g, dcol.data(), dimage.data());
        kernels::reference::col2im_add(g, dcol.data(), dimage_expected.data());
        CHECK(same_bits(dimage, dimage_expected));
    }
}

TEST_CASE("conv2d: dx by the flipped-kernel convolution (stride 1, same padding) matches the reference") {
    Rng rng(5);
    struct Case {
        int64_t n, c, h, w, k, ksize, padding;
    };
    for (const Case& t : {Case{2, 3, 5, 6, 4, 3, 1}, Case{3, 5, 6, 4, 2, 5, 2}, Case{1, 2, 1, 3, 3, 3, 1}}) {
        INFO("x [", t.n, ", ", t.c, ", ", t.h, ", ", t.w, "], ", t.k, " kernels ", t.ksize, "x", t.ksize);
        Var x = Var::parameter(randn({t.n, t.c, t.h, t.w}, rng));
        Var w = Var::parameter(randn({t.k, t.c, t.ksize, t.ksize}, rng));
        Var y = conv2d(x, w, Var(), {1, static_cast<int>(t.padding)});
        Tensor dy = randn(y.shape(), rng);
        kernels::ConvReferenceGrads ref = kernels::conv2d_reference_backward(x.value(), w.value(), dy, 1, t.padding);
        x.grad_for_accumulate().fill(1.0f);  // backward must add to what is there
        backward(y, dy);
        for (int64_t i = 0; i < ref.dx.numel(); ++i) {
            INFO("dx element ", i);
            REQUIRE(x.grad()[i] == doctest::Approx(1.0f + ref.dx[i]).epsilon(1e-5));
        }
    }
}

TEST_CASE("conv2d: the direct kernel (stride 1, same padding) matches the reference, forward and backward") {
    struct Case {
        int64_t n, c, h, w, k, ksize;
    };
    // H*W a multiple of 16 so that the direct path applies with AVX2 (8 lanes) and AVX-512 (16),
    // but for the 40-pixel case, direct with 8 lanes only.
    const std::vector<Case> cases = {
        {2, 3, 4, 8, 16, 3},   // K = 16: channel tiles of 6, 6, 4
        {1, 5, 8, 8, 7, 3},    // K = 7: tiles of 6 and 1
        {2, 4, 10, 8, 13, 3},  // 80 pixels: a 4-batch pixel tile, then single batches (with 16 lanes)
        {1, 3, 5, 8, 9, 3},    // 40 pixels: two 2-batch pixel tiles, then a single batch (with 8 lanes)
        {1, 2, 16, 1, 3, 3},   // one column: every sideways shift leaves the image
        {1, 8, 16, 1, 16, 3},  // the same with C = 8, K = 16: the direct weight gradient too
        {1, 8, 1, 16, 16, 3},  // one row: the weight gradient's kernel rows 0 and 2 both outside
        {1, 3, 4, 4, 5, 5},    // 5x5, padding 2, image barely bigger than the kernel
        {3, 16, 8, 8, 32, 3},  // a ResNet stage-3-like shape, small (K = 32: direct weight gradient)
        {2, 8, 8, 8, 48, 3},   // K = 48: weight-gradient tiles of 2 batches and of 1 (16 lanes)
    };
    // Sums of up to 288 products of N(0, 1) numbers (|terms| ~ 17) in another order than the
    // reference's double sums: float rounding reaches ~2e-5, whatever the compiler contracts.
    const double kTolerance = 1e-4;
    Rng rng(17);
    for (const Case& t : cases) {
        INFO("x [", t.n, ", ", t.c, ", ", t.h, ", ", t.w, "], ", t.k, " kernels ", t.ksize, "x", t.ksize);
        const int padding = static_cast<int>(t.ksize / 2);
        const auto g = kernels::ConvGeometry::make(t.c, t.h, t.w, t.ksize, t.ksize, 1, padding);
        REQUIRE(kernels::direct_conv_applies(g) == (t.h * t.w % kernels::kLanes == 0));
        INFO("direct weight gradient: ", kernels::direct_weight_grad_applies(g, t.k));
        Var x = Var::parameter(randn({t.n, t.c, t.h, t.w}, rng));
        Var w = Var::parameter(randn({t.k, t.c, t.ksize, t.ksize}, rng));
        Var b = Var::parameter(randn({t.k}, rng));
        Var y = conv2d(x, w, b, {1, padding});
        const Tensor expected = kernels::conv2d_reference(x.value(), w.value(), b.value(), 1, padding);
        for (int64_t i = 0; i < expected.numel(); ++i) {
            INFO("y element ", i);
            REQUIRE(y.value()[i] == doctest::Approx(expected[i]).epsilon(kTolerance));
        }
        const Tensor dy = randn(y.shape(), rng);
        const kernels::ConvReferenceGrads ref = kernels::conv2d_reference_backward(x.value(), w.value(), dy, 1, padding);
        x.grad_for_accumulate().fill(1.0f);  // the direct dx adds to what is there
        backward(y, dy);
        for (int64_t i = 0; i < ref.dx.numel(); ++i) {
            INFO("dx element ", i);
            REQUIRE(x.grad()[i] == doctest::Approx(1.0f + ref.dx[i]).epsilon(kTolerance));
        }
        for (int64_t i = 0; i < ref.dw.numel(); ++i) {
            INFO("dw element ", i);
            REQUIRE(w.grad()[i] == doctest::Approx(ref.dw[i]).epsilon(kTolerance));
        }
    }
}

TEST_CASE("direct convolution: shifted copies hold the image moved sideways, zeros outside") {
    // A 2x3 image, 3x3 kernel, padding 1: copy j is the image moved by j - 1 columns, between one
    // zero row above and one below.
    const auto g = kernels::ConvGeometry::make(1, 2, 3, 3, 3, 1, 1);
    const float image[] = {1, 2, 3,
                           4, 5, 6};
    std::vector<float> shifted(kernels::tap_copies_size(g), NAN);
    kernels::make_tap_copies(g, image, shifted.data());
    const std::vector<float> expected = {
        0, 0, 0,  0, 1, 2,  0, 4, 5,  0, 0, 0,   // j = 0: x[r, w - 1]
        0, 0, 0,  1, 2, 3,  4, 5, 6,  0, 0, 0,   // j = 1: x[r, w]
        0, 0, 0,  2, 3, 0,  5, 6, 0,  0, 0, 0,   // j = 2: x[r, w + 1]
    };
    CHECK(shifted == expected);
}

TEST_CASE("direct convolution: at stride 2 the tap copies hold every other column, one per row phase") {
    // A 4x4 image, 3x3 kernel, stride 2, padding 1: output 2x2; copy (j, r) row rr holds
    // x[2*rr + r - 1, 2*ow + j - 1] for ow = 0, 1 (0 outside), rr = 0, 1, 2.
    const auto g = kernels::ConvGeometry::make(1, 4, 4, 3, 3, 2, 1);
    const float image[] = { 1,  2,  3,  4,
                            5,  6,  7,  8,
                            9, 10, 11, 12,
                           13, 14, 15, 16};
    std::vector<float> copies(kernels::tap_copies_size(g), NAN);
    kernels::make_tap_copies(g, image, copies.data());
    const std::vector<float> expected = {
        0, 0,  0,  6,  0, 14,   // j = 0, r = 0: rows -1, 1, 3; columns -1, 1
        0, 2,  0, 10,  0,  0,   // j = 0, r = 1: rows 0, 2, 4
        0, 0,  5,  7, 13, 15,   // j = 1, r = 0: columns 0, 2
        1, 3,  9, 11,  0,  0,   // j = 1, r = 1
        0, 0,  6,  8, 14, 16,   // j = 2, r = 0: columns 1, 3
        2, 4, 10, 12,  0,  0,   // j = 2, r = 1
    };
    CHECK(copies == expected);
    // Tap (i, j) of output pixel p is copy (j, i mod 2) at p + (i div 2)*W': pixel (1, 1), tap (2, 2)
    // is x[3, 3] = 16.
    const kernels::TapLayout t = kernels::TapLayout::of(g);
    CHECK(copies[2 * t.column_stride + t.row_offset[2] + 3] == 16.0f);
}

TEST_CASE("conv2d: the direct kernels at other strides, paddings and kernel sizes match the reference") {
    struct Case {
        int64_t c, h, w, k, ksize, stride, padding;
    };
    // Every output has 16 or 64 pixels, so the direct path applies with 8 or 16 lanes.
    const std::vector<Case> cases = {
        {3, 8, 8, 16, 1, 2, 0},    // 1x1 stride 2 (ResNet's option-B shortcut)
        {2, 8, 8, 5, 5, 2, 2},     // 5x5 stride 2
        {4, 10, 10, 7, 3, 1, 0},   // 3x3 without padding: output narrower than the input
        {3, 12, 12, 6, 3, 3, 1},   // stride 3
        {2, 8, 8, 9, 2, 2, 0},     // even kernel
        {4, 16, 15, 16, 3, 2, 1},  // odd width at stride 2: the last column's taps reach the padding
    };
    Rng rng(29);
    for (const Case& t : cases) {
        INFO("x [2, ", t.c, ", ", t.h, ", ", t.w, "], ", t.k, " kernels ", t.ksize, "x", t.ksize, " stride ", t.stride,
             " padding ", t.padding);
        REQUIRE(kernels::direct_conv_applies(
            kernels::ConvGeometry::make(t.c, t.h, t.w, t.ksize, t.ksize, t.stride, t.padding)));
        Var x = Var::parameter(randn({2, t.c, t.h, t.w}, rng));
        Var w = Var::parameter(randn({t.k, t.c, t.ksize, t.ksize}, rng));
        Var b = Var::parameter(randn({t.k}, rng));
        INFO("direct weight gradient: ", kernels::direct_weight_grad_applies(
                                             kernels::ConvGeometry::make(t.c, t.h, t.w, t.ksize, t.ksize, t.stride, t.padding), t.k));
        check_conv2d_against_reference(x, w, b, static_cast<int>(t.stride), static_cast<int>(t.padding), rng);
    }
}

TEST_CASE("conv2d: stride-2 3x3 convs (direct forward and weight gradient) match the reference") {
    struct Case {
        int64_t n, c, h, w, k;
    };
    // Even and odd sizes (the last output pixel's taps reach the bottom/right padding or not).
    // {2, 8, 8, 8, 16} and {1, 8, 16, 15, 16} also run the forward through the direct kernel (16 and
    // 64 output pixels), the others through im2col + GEMM.
    const std::vector<Case> cases = {{2, 8, 8, 8, 16}, {1, 16, 7, 9, 32}, {3, 8, 6, 5, 48}, {1, 8, 16, 15, 16}};
    Rng rng(23);
    for (const Case& t : cases) {
        INFO("x [", t.n, ", ", t.c, ", ", t.h, ", ", t.w, "], ", t.k, " kernels 3x3, stride 2");
        REQUIRE(kernels::direct_weight_grad_applies(kernels::ConvGeometry::make(t.c, t.h, t.w, 3, 3, 2, 1), t.k));
        Var x = Var::parameter(randn({t.n, t.c, t.h, t.w}, rng));
        Var w = Var::parameter(randn({t.k, t.c, 3, 3}, rng));
        check_conv2d_against_reference(x, w, Var(), 2, 1, rng);
    }
}
