// speq/kernels/conv_direct.hpp: direct convolution for stride 1 with "same" padding (every 3x3
// conv of a ResNet except the two downsampling ones), vectorized over output pixels, without im2col.
//
// im2col copies the image kh*kw times (9x for 3x3) and then multiplies; here the image is copied
// only kw times (3x), once per kernel column j, shifted sideways by j - padding with zeros where
// that leaves the image, and with `padding` zero rows above and below:
//
//   shifted[c, j][r*W + w] = x[c, r - padding, w + j - padding]     (0 outside the image)
//
// Then for output pixel p = oh*W + ow (stride 1, same size as the input) and tap (c, i, j)
//
//   x[c, oh + i - padding, ow + j - padding] = shifted[c, j][p + i*W]
//
// so the input values of a run of consecutive output pixels are one contiguous load, whatever
// row boundaries the run crosses (the sideways zeros are already in the copy). One tile of the
// output, KB channels x PV batches of pixels, is summed in registers over every tap:
//
//   y[k, p .. p+L) += w[k, c, i, j] * shifted[c, j][p + i*W .. + L)      for all (c, i, j)
//
// a broadcast weight times a loaded pixel batch, KB*PV fused multiply-adds per KB + PV loads.
// The weights are read as wt[(c*kh + i)*kw + j][k] (pack_weights_for_direct), so the KB weights
// of a tap are adjacent. The tile is then stored straight into the NCHW output rows.
//
// The same kernel gives the input gradient of such a convolution: dx is the convolution of dy
// with the flipped, transposed kernel (see ops/conv2d.hpp), so pack_weights_for_direct(w, flip)
// prepares that kernel and the op runs this code on dy.
//
// Applies when stride is 1, kh = kw = 2*padding + 1 and H*W is a multiple of the SIMD width
// (32x32, 16x16 and 8x8 images all are); ops/conv2d.hpp falls back to im2col + GEMM otherwise.
// kernels/conv_reference.hpp is the plain version the tests compare this one with.
#pragma once

#include <algorithm>
#include <cstdint>
#include <cstring>

#include "speq/core/tensor.hpp"
#include "speq/kernels/elementwise.hpp"
#include "speq/kernels/im2col.hpp"

namespace speq::kernels {

inline bool direct_conv_applies(const ConvGeometry& g) {
    return g.stride == 1 && g.kernel_h == g.kernel_w && g.kernel_h == 2 * g.padding + 1 &&
           (g.height * g.width) % kLanes == 0;
}

// Floats of the kw shifted copies of one image (see the top of this file).
inline int64_t shifted_copies_size(const ConvGeometry& g) {
    return g.channels * g.kernel_w * (g.height + 2 * g.padding) * g.width;
}

// shifted[(c*kw + j)*(H + 2*padding)*W + r*W + w] = x[c, r - padding, w + j - padding], 0 outside.
// Rows have the same stride W in the image and in the copy, so the whole plane is one copy at a
// constant offset (shift = j - padding); what that carries across row ends lands in the edge
// columns, which are then zeroed. (A copy per row costs a library call per 8..32 floats.)
inline void make_shifted_copies(const ConvGeometry& g, const float* image, float* shifted) {
    const int64_t H = g.height, W = g.width, pad = g.padding, HW = H * W;
    const int64_t plane = (H + 2 * pad) * W;
    for (int64_t c = 0; c < g.channels; ++c) {
        const float* x = image + c * HW;
        for (int64_t j = 0; j < g.kernel_w; ++j) {
            float* out = shifted + (c * g.kernel_w + j) * plane;
            std::fill(out, out + pad * W, 0.0f);                // rows above
            std::fill(out + (H + pad) * W, out + plane, 0.0f);  // rows below
            float* body = out + pad * W;                        // body[r*W + w] = x[r, w + shift]
            const int64_t shift = j - pad;
            const int64_t q0 = std::clamp<int64_t>(-shift, 0, HW), q1 = std::clamp<int64_t>(HW - shift, q0, HW);
            std::fill(body, body + q0, 0.0f);
            if (q1 > q0) std::memcpy(body + q0, x + q0 + shift, sizeof(float) * (q1 - q0));
            std::fill(body + q1, body + HW, 0.0f);
            // Columns whose input column w + shift is outside [0, W): [0, w_lo) and [w_hi, W).
            const int64_t w_lo = std::clamp<int64_t>(-shift, 0, W), w_hi = std::clamp<int64_t>(W - shift, w_lo, W);
            for (int64_t r = 0; r < H; ++r) {
                for (int64_t w = 0; w < w_lo; ++w) body[r * W + w] = 0.0f;
                for (int64_t w = w_hi; w < W; ++w) body[r * W + w] = 0.0f;
            }
        }
    }
}

// w: [K, C, kh, kw] -> wt[(c*kh + i)*kw + j][k] = w[k, c, i, j], a [C*kh*kw, K] array.
// With flip = true it packs instead the kernel of the input gradient, which maps K channels to C:
// wt[(k*kh + i)*kw + j][c] = w[k, c, kh-1-i, kw-1-j], a [K*kh*kw, C] array.
inline Tensor pack_weights_for_direct(const Tensor& w, bool flip) {
    const int64_t K = w.dim(0), C = w.dim(1), kh = w.dim(2), kw = w.dim(3);
    Tensor wt = Tensor::uninitialized({K * C * kh * kw});
    for (int64_t k = 0; k < K; ++k)
        for (int64_t c = 0; c < C; ++c)
            for (int64_t i = 0; i < kh; ++i)
                for (int64_t j = 0; j < kw; ++j) {
                    const float v = w[((k * C + c) * kh + i) * kw + j];
                    if (flip)
                        wt[((k * kh + (kh - 1 - i)) * kw + (kw - 1 - j)) * C + c] = v;
                    else
                        wt[((c * kh + i) * kw + j) * K + k] = v;
                }
    return wt;
}

namespace detail {

// One output tile: channels [k0, k0 + KB) x pixels [p0, p0 + PV*L) of one image, summed in registers
// over the taps of input channels [c_begin, c_end), then stored into y[K, P]. The tile starts from
// what y holds when `from_output` (a later channel block, or accumulate), else from zero; the bias
// (may be null) is added with the first channel block.
template <int KB, int PV, int KS>
inline void direct_conv_tile(const ConvGeometry& g, const float* shifted, const float* wt, int64_t K,
                             int64_t k0, int64_t p0, int64_t c_begin, int64_t c_end, const float* bias,
                             float* y, bool from_output) {
    const int64_t W = g.width, P = g.height * g.width;
    const int64_t plane = (g.height + 2 * g.padding) * W;
    const int64_t kh = KS > 0 ? KS : g.kernel_h, kw = KS > 0 ? KS : g.kernel_w;
    FloatBatch acc[KB][PV];
    for (int kb = 0; kb < KB; ++kb) {
        const float* out = y + (k0 + kb) * P + p0;
        const FloatBatch b(bias && c_begin == 0 ? bias[k0 + kb] : 0.0f);
        for (int v = 0; v < PV; ++v)
            acc[kb][v] = from_output ? FloatBatch::load_unaligned(out + v * kLanes) + b : b;
    }
    for (int64_t c = c_begin; c < c_end; ++c)
        for (int64_t i = 0; i < kh; ++i)
            for (int64_t j = 0; j < kw; ++j) {
                const float* src = shifted + (c * kw + j) * plane + i * W + p0;
                const float* wk = wt + ((c * kh + i) * kw + j) * K + k0;
                FloatBatch xv[PV];
                for (int v = 0; v < PV; ++v) xv[v] = FloatBatch::load_unaligned(src + v * kLanes);
                for (int kb = 0; kb < KB; ++kb) {
                    const FloatBatch wv(wk[kb]);
                    for (int v = 0; v < PV; ++v) acc[kb][v] = xsimd::fma(wv, xv[v], acc[kb][v]);
                }
            }
    for (int kb = 0; kb < KB; ++kb)
        for (int v = 0; v < PV; ++v) acc[kb][v].store_unaligned(y + (k0 + kb) * P + p0 + v * kLanes);
}

// Every output channel for pixels [p0, p0 + PV*L) and input channels [c_begin, c_end).
// 6 channels x 4 pixel batches = 24 accumulators: as many as the 32 vector registers of AVX-512
// hold beside the 4 loaded batches and a weight. Then 4, 2, 1 for the rest of K.
template <int PV, int KS>
inline void direct_conv_pixels(const ConvGeometry& g, const float* shifted, const float* wt, int64_t K,
                               int64_t p0, int64_t c_begin, int64_t c_end, const float* bias, float* y,
                               bool from_output) {
    int64_t k0 = 0;
    for (; k0 + 6 <= K; k0 += 6) direct_conv_tile<6, PV, KS>(g, shifted, wt, K, k0, p0, c_begin, c_end, bias, y, from_output);
    for (; k0 + 4 <= K; k0 += 4) direct_conv_tile<4, PV, KS>(g, shifted, wt, K, k0, p0, c_begin, c_end, bias, y, from_output);
    for (; k0 + 2 <= K; k0 += 2) direct_conv_tile<2, PV, KS>(g, shifted, wt, K, k0, p0, c_begin, c_end, bias, y, from_output);
    for (; k0 < K; ++k0) direct_conv_tile<1, PV, KS>(g, shifted, wt, K, k0, p0, c_begin, c_end, bias, y, from_output);
}

// Input channels per block: the block's part of the shifted copies that one pixel tile reads
// (kw copies x (tile + (kh-1) rows)) should stay in L1 (~16 KiB) while every output channel
// is computed from it; otherwise each channel tile streams the whole input from L2 again.
inline int64_t direct_conv_channel_block(const ConvGeometry& g) {
    const int64_t floats_per_channel = g.kernel_w * (4 * kLanes + (g.kernel_h - 1) * g.width);
    return std::clamp<int64_t>(4096 / floats_per_channel, 1, g.channels);
}

}  // namespace detail

// One image: y[K, H*W] (+)= conv(x) (+ bias), from its shifted copies (make_shifted_copies) and the
// packed weights wt [C*kh*kw, K] (pack_weights_for_direct). bias may be null. With accumulate the
// result is added to y (how the input gradient accumulates).
// Loop order: pixel tiles (4 batches, then single ones), then blocks of input channels, then
// tiles of output channels.
inline void direct_conv_image(const ConvGeometry& g, const float* shifted, const float* wt, int64_t K,
                              const float* bias, float* y, bool accumulate) {
    const int64_t P = g.height * g.width, C = g.channels;
    const int64_t block = detail::direct_conv_channel_block(g);
    // 3x3 (every ResNet conv) gets its tap loops unrolled at compile time; other sizes loop.
    const bool three_by_three = g.kernel_h == 3;
    for (int64_t p0 = 0; p0 < P;) {
        const bool four = p0 + 4 * kLanes <= P;
        for (int64_t c0 = 0; c0 < C; c0 += block) {
            const int64_t c1 = std::min(C, c0 + block);
            const bool from_output = accumulate || c0 > 0;
            if (three_by_three && four)
                detail::direct_conv_pixels<4, 3>(g, shifted, wt, K, p0, c0, c1, bias, y, from_output);
            else if (three_by_three)
                detail::direct_conv_pixels<1, 3>(g, shifted, wt, K, p0, c0, c1, bias, y, from_output);
            else if (four)
                detail::direct_conv_pixels<4, 0>(g, shifted, wt, K, p0, c0, c1, bias, y, from_output);
            else
                detail::direct_conv_pixels<1, 0>(g, shifted, wt, K, p0, c0, c1, bias, y, from_output);
        }
        p0 += four ? 4 * kLanes : kLanes;
    }
}

// ---- Weight gradient ----------------------------------------------------------------------
//
//   dW[k, c, i, j] = sum_p dy[k, p] * x[c, oh*s + i - padding, ow*s + j - padding]
//                  = sum_p shifted[c, j][(oh*s + i)*W + ow*s] * dyT[p, k]      (p = oh*W' + ow)
//
// vectorized over output channels k: dy is first transposed to dyT [P, K] so that the K values of
// a pixel are adjacent. One tile is the kh*kw taps of one input channel c times KV batches of k,
// summed in registers over every output pixel of the image (a broadcast input value times a loaded
// dyT batch), then added to dwT [C*kh*kw, K]. Applies to 3x3 kernels with padding 1, stride 1 or 2
// (the downsampling convs too: the shifted copies are of the input, whatever the stride), K a
// multiple of the SIMD width, and enough taps (C*9 >= 4 batches) that the FMAs outweigh
// transposing dy: every ResNet-20 conv but the first (C = 3). ops/conv2d.hpp uses im2col + GEMM
// otherwise.

inline bool direct_weight_grad_applies(const ConvGeometry& g, int64_t K) {
    return g.kernel_h == 3 && g.kernel_w == 3 && g.padding == 1 && (g.stride == 1 || g.stride == 2) &&
           K % kLanes == 0 && g.channels * 9 >= 4 * kLanes;
}

namespace detail {

template <int KV>
inline void direct_weight_grad_tile(const ConvGeometry& g, const float* shifted, const float* dyT, int64_t K,
                                    int64_t k0, int64_t c, float* dwT) {
    constexpr int kTaps = 9;  // 3x3
    const int64_t W = g.width, S = g.stride;
    const int64_t plane = (g.height + 2 * g.padding) * W;
    const float* copy[3] = {shifted + (c * 3 + 0) * plane, shifted + (c * 3 + 1) * plane,
                            shifted + (c * 3 + 2) * plane};
    FloatBatch acc[kTaps][KV];
    for (int t = 0; t < kTaps; ++t)
        for (int v = 0; v < KV; ++v) acc[t][v] = FloatBatch(0.0f);
    for (int64_t oh = 0; oh < g.out_h; ++oh)
        for (int64_t ow = 0; ow < g.out_w; ++ow) {
            const int64_t at = oh * S * W + ow * S;  // shifted[c, j][at + i*W] is tap (i, j) of pixel (oh, ow)
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

// One image: dwT [C*9, K] += the weight gradient of a 3x3 conv, from the image's shifted copies
// (make_shifted_copies) and its output gradient transposed, dyT [H'*W', K].
// Tiles of 2 batches of k (18 accumulators) while they last, then single batches.
inline void direct_weight_grad_image(const ConvGeometry& g, const float* shifted, const float* dyT, int64_t K,
                                     float* dwT) {
    for (int64_t c = 0; c < g.channels; ++c) {
        int64_t k0 = 0;
        for (; k0 + 2 * kLanes <= K; k0 += 2 * kLanes) detail::direct_weight_grad_tile<2>(g, shifted, dyT, K, k0, c, dwT);
        for (; k0 < K; k0 += kLanes) detail::direct_weight_grad_tile<1>(g, shifted, dyT, K, k0, c, dwT);
    }
}

}  // namespace speq::kernels
