// speq/kernels/conv_weight_grad.hpp: the weight gradient of 3x3 convolutions, vectorized over
// output channels, without im2col.
//
//   dW[k, c, i, j] = sum over output pixels (oh, ow) of dy[k, oh, ow] * x[c, oh*s + i - 1, ow*s + j - 1]
//
// dy is first transposed so that the K values of a pixel are adjacent: a tile of KV batches of k
// is then one load per pixel, and each FMA is a broadcast input value times such a batch. Two
// kernels, both summing in registers over every pixel of an image and then adding to
// dwT [C*9, K] (dW transposed; ops/conv2d.hpp turns it back):
//
// - stride 1 (sliding_weight_grad_image): input pixel x[c, ih, m] meets output pixel
//   (ih + 1 - i, m + 1 - j) through tap (i, j), so
//
//     dW[k, c, i, j] = sum over oh, m of x[c, oh + i - 1, m] * dy[k, oh, m + 1 - j]
//
//   and one broadcast of x[c, oh + i - 1, m] serves the three taps j of its kernel row, with the
//   dy of pixels m + 1, m, m - 1: per input column 3 broadcasts and 3 loads of dy for 9 x KV
//   FMAs. It reads the image itself, no copies; dy is transposed into dyT_pad [H', W' + 2, K] with
//   a zero pixel at both ends of each row, so the first and last columns are not special, and the
//   rows above and below the image are left out at compile time (the first and last output rows
//   run a pass without kernel row 0, resp. 2).
// - any stride (direct_weight_grad_image): one broadcast per tap and pixel, from the tap copies
//   the image would have at stride 1 (the image shifted sideways, one memcpy per plane), walked
//   with the stride; dy is transposed into dyT [P, K]. The stride-2 convs use it.
//
// Both apply to 3x3 kernels with padding 1, K a multiple of the SIMD width, and enough taps
// (C*9 >= 4 batches) that the FMAs outweigh transposing dy: every ResNet-20 conv but the first
// (C = 3). ops/conv2d.hpp uses im2col + GEMM otherwise. Tested against kernels/conv_reference.hpp.
#pragma once

#include <algorithm>
#include <cstdint>

#include "speq/kernels/conv_direct.hpp"

#if defined(__GNUC__)
#define SPEQ_ALWAYS_INLINE __attribute__((always_inline))
#else
#define SPEQ_ALWAYS_INLINE
#endif

namespace speq::kernels {

// 3x3, padding 1, stride 1 or 2, K a multiple of the SIMD width, C*9 >= 4 batches (see the top).
inline bool direct_weight_grad_applies(const ConvGeometry& g, int64_t K) {
    return g.kernel_h == 3 && g.kernel_w == 3 && g.padding == 1 && (g.stride == 1 || g.stride == 2) &&
           K % kLanes == 0 && g.channels * 9 >= 4 * kLanes;
}

// ---- Stride 1: the sliding window ----------------------------------------------------------

inline bool sliding_weight_grad_applies(const ConvGeometry& g, int64_t K) {
    return direct_weight_grad_applies(g, K) && g.stride == 1;
}

// Floats of dyT_pad for one image.
inline int64_t padded_dy_size(const ConvGeometry& g, int64_t K) { return g.out_h * (g.out_w + 2) * K; }

// dyT_pad[(oh*(W' + 2) + ow + 1)*K + k] = dy[k, oh*W' + ow], and 0 at ow = -1 and ow = W'.
inline void transpose_dy_padded(const ConvGeometry& g, int64_t K, const float* dy, float* dyT_pad) {
    const int64_t Ho = g.out_h, Wo = g.out_w, P = Ho * Wo, row = (Wo + 2) * K;
    for (int64_t oh = 0; oh < Ho; ++oh) {
        float* out = dyT_pad + oh * row;
        std::fill(out, out + K, 0.0f);
        std::fill(out + (Wo + 1) * K, out + row, 0.0f);
        for (int64_t k = 0; k < K; ++k)  // reads dy's rows in order (k inner was 2x slower at K = 16)
            for (int64_t ow = 0; ow < Wo; ++ow) out[(ow + 1) * K + k] = dy[k * P + oh * Wo + ow];
    }
}

namespace detail {

// One output row oh of the sum above into acc[i*3 + j][v], for the KV batches of k at d_row
// (dyT_pad's row oh, offset by k0). kTop / kBottom: kernel row 0 / 2 reads outside the image.
template <int KV, bool kTop, bool kBottom>
SPEQ_ALWAYS_INLINE inline void sliding_weight_grad_row(const float* x_c, int64_t W, int64_t oh, const float* d_row,
                                                       int64_t K, FloatBatch (&acc)[9][KV]) {
    for (int64_t m = 0; m < W; ++m) {
        FloatBatch d[3][KV];  // d[j]: dy of pixel (oh, m + 1 - j), at padded column m + 2 - j
        for (int j = 0; j < 3; ++j)
            for (int v = 0; v < KV; ++v) {
                d[j][v] = FloatBatch::load_unaligned(d_row + (m + 2 - j) * K + v * kLanes);
                keep_in_register(d[j][v]);
            }
        for (int i = 0; i < 3; ++i) {
            if ((i == 0 && kTop) || (i == 2 && kBottom)) continue;
            const FloatBatch xv(x_c[(oh + i - 1) * W + m]);
            for (int j = 0; j < 3; ++j)
                for (int v = 0; v < KV; ++v) acc[i * 3 + j][v] = xsimd::fma(xv, d[j][v], acc[i * 3 + j][v]);
        }
    }
}

// Taps of input channel c (image plane x_c) x the KV batches of k at k0, over the whole image.
template <int KV>
SPEQ_KERNEL_NOINLINE inline void sliding_weight_grad_tile(const ConvGeometry& g, const float* x_c, const float* dyT_pad,
                                                          int64_t K, int64_t k0, float* dwT_c) {
    const int64_t H = g.height, W = g.width, row = (W + 2) * K;  // stride 1, padding 1: H' = H, W' = W
    FloatBatch acc[9][KV];
    for (int t = 0; t < 9; ++t)
        for (int v = 0; v < KV; ++v) acc[t][v] = FloatBatch(0.0f);
    const float* d = dyT_pad + k0;
    if (H == 1) {
        sliding_weight_grad_row<KV, true, true>(x_c, W, 0, d, K, acc);
    } else {
        sliding_weight_grad_row<KV, true, false>(x_c, W, 0, d, K, acc);
        for (int64_t oh = 1; oh + 1 < H; ++oh) sliding_weight_grad_row<KV, false, false>(x_c, W, oh, d + oh * row, K, acc);
        sliding_weight_grad_row<KV, false, true>(x_c, W, H - 1, d + (H - 1) * row, K, acc);
    }
    for (int t = 0; t < 9; ++t)
        for (int v = 0; v < KV; ++v) {
            float* out = dwT_c + t * K + k0 + v * kLanes;
            (FloatBatch::load_unaligned(out) + acc[t][v]).store_unaligned(out);
        }
}

}  // namespace detail

// One image: dwT [C*9, K] += the weight gradient of a stride-1 3x3 conv g with padding 1, from
// the image [C, H, W] itself and dyT_pad (transpose_dy_padded). Tiles of kWeightGradBatches
// batches of k while they last, then single batches.
inline void sliding_weight_grad_image(const ConvGeometry& g, const float* image, const float* dyT_pad, int64_t K,
                                      float* dwT) {
    const int64_t HW = g.height * g.width;
    for (int64_t c = 0; c < g.channels; ++c) {
        const float* x_c = image + c * HW;
        float* dwT_c = dwT + c * 9 * K;
        int64_t k0 = 0;
        for (; k0 + kWeightGradBatches * kLanes <= K; k0 += kWeightGradBatches * kLanes)
            detail::sliding_weight_grad_tile<kWeightGradBatches>(g, x_c, dyT_pad, K, k0, dwT_c);
        for (; k0 < K; k0 += kLanes) detail::sliding_weight_grad_tile<1>(g, x_c, dyT_pad, K, k0, dwT_c);
    }
}

// ---- Any stride: tap copies ------------------------------------------------------------------
//
//   dW[k, c, i, j] = sum_p copy1[c, j][(oh*s + i)*W + ow*s] * dyT[p, k]      (p = oh*W' + ow)
//
// where copy1 are the tap copies of weight_grad_copies_geometry(g) (g at stride 1), which are
// faster to make than the stride-2 ones.

// The geometry whose tap copies direct_weight_grad_image reads: g at stride 1.
inline ConvGeometry weight_grad_copies_geometry(const ConvGeometry& g) {
    return ConvGeometry::make(g.channels, g.height, g.width, g.kernel_h, g.kernel_w, 1, g.padding);
}

namespace detail {

template <int KV>
inline void direct_weight_grad_tile(const ConvGeometry& g, const TapLayout& t1, const float* copies,
                                    const float* dyT, int64_t K, int64_t k0, int64_t c, float* dwT) {
    constexpr int kTaps = 9;  // 3x3
    const int64_t W = g.width, S = g.stride;  // t1: the stride-1 layout, whose rows are W wide
    const float* channel = copies + c * t1.channel_stride;
    const float* copy[3] = {channel, channel + t1.column_stride, channel + 2 * t1.column_stride};
    FloatBatch acc[kTaps][KV];
    for (int t = 0; t < kTaps; ++t)
        for (int v = 0; v < KV; ++v) acc[t][v] = FloatBatch(0.0f);
    for (int64_t oh = 0; oh < g.out_h; ++oh)
        for (int64_t ow = 0; ow < g.out_w; ++ow) {
            const int64_t at = oh * S * W + ow * S;  // copy[j][at + i*W] is tap (i, j) of pixel (oh, ow)
            const float* dy_p = dyT + (oh * g.out_w + ow) * K + k0;
            FloatBatch d[KV];
            for (int v = 0; v < KV; ++v) d[v] = FloatBatch::load_unaligned(dy_p + v * kLanes);
            for (int i = 0; i < 3; ++i)
                for (int j = 0; j < 3; ++j) {
                    const FloatBatch xv(copy[j][at + i * W]);
                    for (int v = 0; v < KV; ++v) acc[i * 3 + j][v] = xsimd::fma(xv, d[v], acc[i * 3 + j][v]);
                }
        }
    for (int t = 0; t < kTaps; ++t)
        for (int v = 0; v < KV; ++v) {
            float* out = dwT + (c * kTaps + t) * K + k0 + v * kLanes;
            (FloatBatch::load_unaligned(out) + acc[t][v]).store_unaligned(out);
        }
}

}  // namespace detail

// One image: dwT [C*9, K] += the weight gradient of a 3x3 conv g, from the image's tap copies at
// stride 1 (make_tap_copies(weight_grad_copies_geometry(g), ...)) and its output gradient
// transposed, dyT [H'*W', K]. Tiles of kWeightGradBatches batches of k (2 with AVX-512: 18
// accumulators; 1 with AVX2's 16 registers) while they last, then single batches.
inline void direct_weight_grad_image(const ConvGeometry& g, const float* copies, const float* dyT, int64_t K,
                                     float* dwT) {
    const TapLayout t1 = TapLayout::of(weight_grad_copies_geometry(g));
    for (int64_t c = 0; c < g.channels; ++c) {
        int64_t k0 = 0;
        for (; k0 + kWeightGradBatches * kLanes <= K; k0 += kWeightGradBatches * kLanes)
            detail::direct_weight_grad_tile<kWeightGradBatches>(g, t1, copies, dyT, K, k0, c, dwT);
        for (; k0 < K; k0 += kLanes) detail::direct_weight_grad_tile<1>(g, t1, copies, dyT, K, k0, c, dwT);
    }
}

}  // namespace speq::kernels
