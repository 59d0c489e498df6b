// The fast convolution kernels against their plain versions: im2col / col2im_add (shifted-copy
// path vs the general loops). Exact equality: both only copy or add the same numbers.
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
