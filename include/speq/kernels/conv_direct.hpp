// speq/kernels/conv_direct.hpp: direct convolution, vectorized over output pixels, without im2col.
//
// im2col copies the image kh*kw times (9x for 3x3) and then multiplies. Here the image is copied
// into "tap copies", one per kernel column j and row phase r = i mod stride, each with exactly
// W' (output width) columns:
//
//   copy[c, j, r][rr*W' + ow] = x[c, rr*s + r - padding, ow*s + j - padding]     (0 outside)
//
// for rr in [0, H' + (kh-1)/s). Then for output pixel p = oh*W' + ow and tap (c, i, j), with
// i = q*s + r,
//
//   x[c, oh*s + i - padding, ow*s + j - padding] = copy[c, j, r][p + q*W']
//
// so the input values of a run of consecutive output pixels are one contiguous load, whatever
// row boundaries the run crosses (the sideways zeros are already in the copy). For stride 1 that
// is kw copies of the image shifted sideways (3x the image for 3x3), for stride 2 six copies of a
// quarter of it (1.5x). `TapLayout` says where each tap's run starts. One tile of the output,
// KB channels x PV batches of pixels, is summed in registers over every tap:
//
//   y[k, p .. p+L) += w[k, c, i, j] * copy[c, j, r][p + q*W' .. + L)      for all (c, i, j)
//
// a broadcast weight times a loaded pixel batch, KB*PV fused multiply-adds per KB + PV loads.
// The weights are read as wt[(c*kh + i)*kw + j][k] (pack_weights_for_direct), so the KB weights
// of a tap are adjacent. The tile is then stored straight into the NCHW output rows.
//
// The same kernel gives the input gradient of a stride-1 "same" convolution: dx is the
// convolution of dy with the flipped, transposed kernel (see ops/conv2d.hpp), so
// pack_weights_for_direct(w, flip) prepares that kernel and the op runs this code on dy.
//
// Applies when H'*W' is a multiple of the SIMD width (32x32, 16x16 and 8x8 outputs all are), kh is
// at most kMaxDirectKernel, and the conv is not pointwise (1x1, stride 1, no padding: that one is
// a plain GEMM on the image); ops/conv2d.hpp falls back to im2col + GEMM otherwise.
// kernels/conv_reference.hpp is the plain version the tests compare this one with.
#pragma once

#include <algorithm>
#include <cstdint>
#include <cstring>

#include "speq/core/tensor.hpp"
#include "speq/kernels/elementwise.hpp"
#include "speq/kernels/im2col.hpp"

// The conv tile below is kept out of line, so that its accumulators and loop get a function of
// their own instead of sharing registers with ops/conv2d.hpp's loops (in the profile of a build
// that inlined it, the conv ran slower; how much of that was inlining was not isolated).
#if defined(__GNUC__)
#define SPEQ_KERNEL_NOINLINE __attribute__((noinline))
#else
#define SPEQ_KERNEL_NOINLINE
#endif

namespace speq::kernels {

// Kernels up to this size have their row offsets in TapLayout (ResNets use 3x3 and 1x1).
inline constexpr int64_t kMaxDirectKernel = 11;

// The register tiles below are sized to the vector register file: 32 registers with AVX-512
// (and on AArch64), 16 with AVX2 and SSE. A tile with more accumulators than fit spills them to
// the stack on every tap: on an AVX2 machine (AMD EPYC) the AVX-512 shapes ran the forward at
// 0.55-0.68x the speed of the AVX2 ones below, the backward at 0.71-0.91x. The macros let a new
// CPU be tuned without editing this file.
#if XSIMD_WITH_AVX512F || defined(__aarch64__)
inline constexpr int kVectorRegisters = 32;
#else
inline constexpr int kVectorRegisters = 16;
#endif
#ifndef SPEQ_DIRECT_TILE_CHANNELS
#define SPEQ_DIRECT_TILE_CHANNELS 6
#endif
#ifndef SPEQ_DIRECT_TILE_BATCHES
#define SPEQ_DIRECT_TILE_BATCHES (kVectorRegisters >= 32 ? 4 : 2)
#endif
#ifndef SPEQ_WGRAD_TILE_BATCHES
#define SPEQ_WGRAD_TILE_BATCHES (kVectorRegisters >= 32 ? 2 : 1)
#endif
// Forward / dx tile: kTileChannels output channels x kTileBatches batches of L pixels, held in
// registers beside the kTileBatches loaded pixel batches and one broadcast weight: 6 x 4 = 24
// accumulators + 5 with 32 registers, 6 x 2 = 12 + 3 with 16.
inline constexpr int kTileChannels = SPEQ_DIRECT_TILE_CHANNELS;
inline constexpr int kTileBatches = SPEQ_DIRECT_TILE_BATCHES;
// Weight-gradient tiles (kernels/conv_weight_grad.hpp): 9 taps x kWeightGradBatches batches of
// L output channels as accumulators (18 with 32 registers, 9 with 16), beside 1 or 3 loaded dy
// batches per batch and a broadcast input value.
inline constexpr int kWeightGradBatches = SPEQ_WGRAD_TILE_BATCHES;

namespace detail {
// With 16 registers GCC folds each loaded pixel batch into the KB FMAs that use it (a memory
// operand per FMA: KB loads instead of one), and the tile becomes load-bound. An empty asm
// statement that claims to modify the register makes the load happen once, into a register.
// Not applied with 32 registers: the AVX-512 tile was tuned and measured without it.
inline void keep_in_register([[maybe_unused]] FloatBatch& b) {
#if defined(__GNUC__) && (defined(__x86_64__) || defined(__i386__))
    if constexpr (kVectorRegisters < 32) __asm__("" : "+v"(b.data));
#endif
}
}  // namespace detail

inline bool direct_conv_applies(const ConvGeometry& g) {
    return !g.is_pointwise() && g.kernel_h <= kMaxDirectKernel && (g.out_h * g.out_w) % kLanes == 0;
}

// Offset of kernel row i = q*s + r within a channel's copies of column j: phase r's copy, row q.
inline int64_t tap_row_offset(int64_t i, int64_t stride, int64_t copy_size, int64_t out_w) {
    return (i % stride) * copy_size + (i / stride) * out_w;
}

// Where the tap copies of one image put tap (c, i, j) of output pixel p:
//   copies + c*channel_stride + row_offset[i] + j*column_stride + p
struct TapLayout {
    int64_t phases;      // row phases r kept: min(stride, kh)
    int64_t rows;        // rows per copy: H' + (kh-1)/s
    int64_t copy_size;   // rows * W'
    int64_t channel_stride, column_stride;
    int64_t row_offset[kMaxDirectKernel];  // tap_row_offset(i, ...)

    static TapLayout of(const ConvGeometry& g) {
        TapLayout t{};
        t.phases = std::min(g.stride, g.kernel_h);
        t.rows = g.out_h + (g.kernel_h - 1) / g.stride;
        t.copy_size = t.rows * g.out_w;
        t.column_stride = t.phases * t.copy_size;
        t.channel_stride = g.kernel_w * t.column_stride;
        for (int64_t i = 0; i < g.kernel_h && i < kMaxDirectKernel; ++i)
            t.row_offset[i] = tap_row_offset(i, g.stride, t.copy_size, g.out_w);
        return t;
    }
};

// Floats of the tap copies of one image (see the top of this file).
inline int64_t tap_copies_size(const ConvGeometry& g) { return g.channels * TapLayout::of(g).channel_stride; }

namespace detail {
// out[i] = in[2*i] for i < n, when n is one of the row widths with a fixed-size loop; false if not.
template <int N>
inline void gather_even_fixed(const float* in, float* out) {
    for (int i = 0; i < N; ++i) out[i] = in[2 * i];
}
inline bool gather_even(const float* in, float* out, int64_t n) {
    switch (n) {
        case 8: gather_even_fixed<8>(in, out); return true;
        case 16: gather_even_fixed<16>(in, out); return true;
        case 32: gather_even_fixed<32>(in, out); return true;
        default: return false;
    }
}
}  // namespace detail

// copies[c, j, r][rr*W' + ow] = x[c, rr*s + r - padding, ow*s + j - padding], 0 outside the image.
inline void make_tap_copies(const ConvGeometry& g, const float* image, float* copies) {
    const TapLayout t = TapLayout::of(g);
    const int64_t H = g.height, W = g.width, Wo = g.out_w, pad = g.padding, s = g.stride, HW = H * W;
    for (int64_t c = 0; c < g.channels; ++c) {
        const float* x = image + c * HW;
        for (int64_t j = 0; j < g.kernel_w; ++j) {
            int64_t first, last;  // output columns whose input column lies in the image
            g.valid_out_cols(j, first, last);
            for (int64_t r = 0; r < t.phases; ++r) {
                float* out = copies + c * t.channel_stride + j * t.column_stride + r * t.copy_size;
                // Copy rows rr whose input row rr*s + r - pad lies in the image: [rr_lo, rr_hi).
                const int64_t rr_lo = std::clamp<int64_t>((pad - r + s - 1) / s, 0, t.rows);
                const int64_t rr_hi = std::clamp<int64_t>((H + pad - r + s - 1) / s, rr_lo, t.rows);
                std::fill(out, out + rr_lo * Wo, 0.0f);                // rows above
                std::fill(out + rr_hi * Wo, out + t.copy_size, 0.0f);  // rows below
                if (s == 1 && Wo == W) {
                    // Rows have the same stride W in the image and in the copy, so all of them are
                    // one copy at a constant offset; what that carries across row ends lands in the
                    // edge columns, zeroed next. (A copy per row is a library call per 8..32 floats.)
                    float* body = out + rr_lo * W;  // body[q] = x[q + shift]
                    const int64_t shift = (rr_lo - pad) * W + j - pad, n = (rr_hi - rr_lo) * W;
                    const int64_t q0 = std::clamp<int64_t>(-shift, 0, n), q1 = std::clamp<int64_t>(HW - shift, q0, n);
                    std::fill(body, body + q0, 0.0f);
                    if (q1 > q0) std::memcpy(body + q0, x + q0 + shift, sizeof(float) * (q1 - q0));
                    std::fill(body + q1, body + n, 0.0f);
                    for (int64_t q = 0; q < n; q += W) {
                        for (int64_t ow = 0; ow < first; ++ow) body[q + ow] = 0.0f;
                        for (int64_t ow = last; ow < W; ++ow) body[q + ow] = 0.0f;
                    }
                    continue;
                }
                for (int64_t rr = rr_lo; rr < rr_hi; ++rr) {
                    float* row = out + rr * Wo;
                    // x[ih, ow*s + j - pad] is image[at + ow*s]
                    const int64_t at = c * HW + (rr * s + r - pad) * W + j - pad;  // may be < 0 (ow = 0 in the padding)
                    // Stride 2 with a whole row inside the image's buffer: gather all of it, a
                    // compile-time trip count the compiler vectorizes (loads and permutes), and
                    // zero the edge columns after (they hold neighbouring rows' pixels).
                    if (s == 2 && at >= 0 && at + 2 * (Wo - 1) < g.channels * HW && detail::gather_even(image + at, row, Wo)) {
                        for (int64_t ow = 0; ow < first; ++ow) row[ow] = 0.0f;
                        for (int64_t ow = last; ow < Wo; ++ow) row[ow] = 0.0f;
                        continue;
                    }
                    for (int64_t ow = 0; ow < first; ++ow) row[ow] = 0.0f;  // edges: a float or two
                    for (int64_t ow = first; ow < last; ++ow) row[ow] = image[at + ow * s];
                    for (int64_t ow = last; ow < Wo; ++ow) row[ow] = 0.0f;
                }
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
// (may be null) is added with the first channel block. KS (kernel size) and S (stride), when not
// 0, are known at compile time, so the offset of kernel row i is two multiplications the
// compiler keeps out of the loop; this loop is short of issue slots, not of FMA units, so every
// address computation or reload inside it costs time.
template <int KB, int PV, int KS, int S>
SPEQ_KERNEL_NOINLINE inline void direct_conv_tile(const ConvGeometry& g, const TapLayout& t, const float* copies, const float* wt,
                             int64_t K, int64_t k0, int64_t p0, int64_t c_begin, int64_t c_end, const float* bias,
                             float* y, bool from_output) {
    const int64_t P = g.out_h * g.out_w, Wo = g.out_w, copy_size = t.copy_size;
    const int64_t channel_stride = t.channel_stride, column_stride = t.column_stride;
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
                const int64_t row_offset = S > 0 ? tap_row_offset(i, S, copy_size, Wo) : t.row_offset[i];
                const float* src = copies + c * channel_stride + row_offset + j * column_stride + p0;
                const float* wk = wt + ((c * kh + i) * kw + j) * K + k0;
                FloatBatch xv[PV];
                for (int v = 0; v < PV; ++v) {
                    xv[v] = FloatBatch::load_unaligned(src + v * kLanes);
                    detail::keep_in_register(xv[v]);
                }
                for (int kb = 0; kb < KB; ++kb) {
                    const FloatBatch wv(wk[kb]);
                    for (int v = 0; v < PV; ++v) acc[kb][v] = xsimd::fma(wv, xv[v], acc[kb][v]);
                }
            }
    for (int kb = 0; kb < KB; ++kb)
        for (int v = 0; v < PV; ++v) acc[kb][v].store_unaligned(y + (k0 + kb) * P + p0 + v * kLanes);
}

// Every output channel for pixels [p0, p0 + PV*L) and input channels [c_begin, c_end), in tiles
// of kTileChannels channels, then 4, 2, 1 for the rest of K (with AVX-512, splitting a remainder
// of 2 as 4 + 4 instead of 6 + 2 measured no faster at K = 32).
template <int PV, int KS, int S>
inline void direct_conv_pixels(const ConvGeometry& g, const TapLayout& t, const float* copies, const float* wt,
                               int64_t K, int64_t p0, int64_t c_begin, int64_t c_end, const float* bias, float* y,
                               bool from_output) {
    int64_t k0 = 0;
    for (; k0 + kTileChannels <= K; k0 += kTileChannels)
        direct_conv_tile<kTileChannels, PV, KS, S>(g, t, copies, wt, K, k0, p0, c_begin, c_end, bias, y, from_output);
    for (; kTileChannels > 4 && k0 + 4 <= K; k0 += 4)
        direct_conv_tile<4, PV, KS, S>(g, t, copies, wt, K, k0, p0, c_begin, c_end, bias, y, from_output);
    for (; k0 + 2 <= K; k0 += 2)
        direct_conv_tile<2, PV, KS, S>(g, t, copies, wt, K, k0, p0, c_begin, c_end, bias, y, from_output);
    for (; k0 < K; ++k0)
        direct_conv_tile<1, PV, KS, S>(g, t, copies, wt, K, k0, p0, c_begin, c_end, bias, y, from_output);
}

// The pixel loop of one channel block, at kTileBatches batches or 1, for 3x3 at stride 1 or 2 with the tap
// loops unrolled at compile time, other kernels with loops.
template <int PV>
inline void direct_conv_pixels_any(const ConvGeometry& g, const TapLayout& t, const float* copies, const float* wt,
                                   int64_t K, int64_t p0, int64_t c_begin, int64_t c_end, const float* bias, float* y,
                                   bool from_output) {
    const bool three_by_three = g.kernel_h == 3 && g.kernel_w == 3;
    if (three_by_three && g.stride == 1)
        direct_conv_pixels<PV, 3, 1>(g, t, copies, wt, K, p0, c_begin, c_end, bias, y, from_output);
    else if (three_by_three && g.stride == 2)
        direct_conv_pixels<PV, 3, 2>(g, t, copies, wt, K, p0, c_begin, c_end, bias, y, from_output);
    else
        direct_conv_pixels<PV, 0, 0>(g, t, copies, wt, K, p0, c_begin, c_end, bias, y, from_output);
}

// Input channels per block: the block's part of the tap copies that one pixel tile reads
// (kw copies x phases x (tile + rows below)) should stay in L1 (~16 KiB) while every output
// channel is computed from it; otherwise each channel tile streams the whole input from L2 again.
inline int64_t direct_conv_channel_block(const ConvGeometry& g, const TapLayout& t) {
    const int64_t floats_per_channel =
        g.kernel_w * t.phases * (kTileBatches * kLanes + (g.kernel_h - 1) / g.stride * g.out_w);
    return std::clamp<int64_t>(4096 / floats_per_channel, 1, g.channels);
}

}  // namespace detail

// What direct_conv_image runs on each finished pixel tile: nothing, unless the caller passes an
// epilogue (ops/conv2d_bn_act.hpp applies batch norm and the activation there, while the tile's
// K x (up to kTileBatches*L) outputs are still in L1).
struct NoTileEpilogue {
    void operator()(int64_t /*p0*/, int64_t /*pixels*/) const {}
};

// One image: y[K, H'*W'] (+)= conv(x) (+ bias), from its tap copies (make_tap_copies) and the
// packed weights wt [C*kh*kw, K] (pack_weights_for_direct). bias may be null. With accumulate the
// result is added to y (how the input gradient accumulates). after_tile(p0, pixels) is called once
// pixels [p0, p0 + pixels) of every output channel are final.
// Loop order: pixel tiles (kTileBatches batches, then single ones), then blocks of input
// channels, then tiles of output channels.
template <class TileEpilogue = NoTileEpilogue>
inline void direct_conv_image(const ConvGeometry& g, const float* copies, const float* wt, int64_t K,
                              const float* bias, float* y, bool accumulate, const TileEpilogue& after_tile = {}) {
    const TapLayout t = TapLayout::of(g);
    const int64_t P = g.out_h * g.out_w, C = g.channels;
    const int64_t block = detail::direct_conv_channel_block(g, t);
    for (int64_t p0 = 0; p0 < P;) {
        const bool whole_tile = p0 + kTileBatches * kLanes <= P;
        for (int64_t c0 = 0; c0 < C; c0 += block) {
            const int64_t c1 = std::min(C, c0 + block);
            const bool from_output = accumulate || c0 > 0;
            if (whole_tile)
                detail::direct_conv_pixels_any<kTileBatches>(g, t, copies, wt, K, p0, c0, c1, bias, y, from_output);
            else
                detail::direct_conv_pixels_any<1>(g, t, copies, wt, K, p0, c0, c1, bias, y, from_output);
        }
        const int64_t pixels = whole_tile ? kTileBatches * kLanes : kLanes;
        after_tile(p0, pixels);
        p0 += pixels;
    }
}

}  // namespace speq::kernels
