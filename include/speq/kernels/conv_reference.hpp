// speq/kernels/conv_reference.hpp: the plain, obviously-correct 2-D convolution, forward and
// backward, written as nested loops straight from the definition. Slow; tests and benchmarks
// compare the fast path (im2col + GEMM, speq/ops/conv2d.hpp) against it. Sums are kept in double.
//
//   y[n, k, oh, ow] = b[k] + sum_{c, i, j} w[k, c, i, j] * x[n, c, oh*s - p + i, ow*s - p + j]
//
// with x taken as 0 outside the image (zero padding).
#pragma once

#include <cstdint>
#include <vector>

#include "speq/core/tensor.hpp"

namespace speq::kernels {

// x: [N, C, H, W], w: [K, C, kh, kw], b: [K] or empty -> [N, K, H', W']. Shapes must be valid.
inline Tensor conv2d_reference(const Tensor& x, const Tensor& w, const Tensor& b, int64_t stride,
                               int64_t padding) {
    const int64_t N = x.dim(0), C = x.dim(1), H = x.dim(2), W = x.dim(3);
    const int64_t K = w.dim(0), kh = w.dim(2), kw = w.dim(3);
    const int64_t Ho = (H + 2 * padding - kh) / stride + 1, Wo = (W + 2 * padding - kw) / stride + 1;
    Tensor y({N, K, Ho, Wo});
    for (int64_t n = 0; n < N; ++n)
        for (int64_t k = 0; k < K; ++k)
            for (int64_t oh = 0; oh < Ho; ++oh)
                for (int64_t ow = 0; ow < Wo; ++ow) {
                    double sum = b.empty() ? 0.0 : b[k];
                    for (int64_t c = 0; c < C; ++c)
                        for (int64_t i = 0; i < kh; ++i)
                            for (int64_t j = 0; j < kw; ++j) {
                                const int64_t ih = oh * stride - padding + i, iw = ow * stride - padding + j;
                                if (ih < 0 || ih >= H || iw < 0 || iw >= W) continue;
                                sum += double(w[((k * C + c) * kh + i) * kw + j]) *
                                       x[((n * C + c) * H + ih) * W + iw];
                            }
                    y[((n * K + k) * Ho + oh) * Wo + ow] = static_cast<float>(sum);
                }
    return y;
}

struct ConvReferenceGrads {
    Tensor dx, dw, db;  // shapes of x, w and [K]
};

// The gradients of sum(dy * y) for y = conv2d_reference(x, w, b): the same loops, each
// multiply-add of the forward turned into two (dx gets w * dy, dw gets x * dy).
inline ConvReferenceGrads conv2d_reference_backward(const Tensor& x, const Tensor& w,
                                                    const Tensor& dy, int64_t stride,
                                                    int64_t padding) {
    const int64_t N = x.dim(0), C = x.dim(1), H = x.dim(2), W = x.dim(3);
    const int64_t K = w.dim(0), kh = w.dim(2), kw = w.dim(3);
    const int64_t Ho = dy.dim(2), Wo = dy.dim(3);
    std::vector<double> dx(x.numel(), 0.0), dw(w.numel(), 0.0), db(K, 0.0);
    for (int64_t n = 0; n < N; ++n)
        for (int64_t k = 0; k < K; ++k)
            for (int64_t oh = 0; oh < Ho; ++oh)
                for (int64_t ow = 0; ow < Wo; ++ow) {
                    const double g = dy[((n * K + k) * Ho + oh) * Wo + ow];
                    db[k] += g;
                    for (int64_t c = 0; c < C; ++c)
                        for (int64_t i = 0; i < kh; ++i)
                            for (int64_t j = 0; j < kw; ++j) {
                                const int64_t ih = oh * stride - padding + i, iw = ow * stride - padding + j;
                                if (ih < 0 || ih >= H || iw < 0 || iw >= W) continue;
                                const int64_t xi = ((n * C + c) * H + ih) * W + iw;
                                const int64_t wi = ((k * C + c) * kh + i) * kw + j;
                                dx[xi] += g * w[wi];
                                dw[wi] += g * x[xi];
                            }
                }
    auto to_tensor = [](const std::vector<double>& v, const Shape& shape) {
        Tensor t(shape);
        for (int64_t i = 0; i < t.numel(); ++i) t[i] = static_cast<float>(v[i]);
        return t;
    };
    return {to_tensor(dx, x.shape()), to_tensor(dw, w.shape()), to_tensor(db, {K})};
}

}  // namespace speq::kernels
