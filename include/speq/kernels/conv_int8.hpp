// speq/kernels/conv_int8.hpp: the forward convolution of quantized operands in integer arithmetic.
//
// When x holds PACT codes (x = a * s_x, a an integer in [0, 255]) and the weight holds signed codes
// (w[k] = m * s_w[k], m an integer in [-128, 127]), the convolution is an integer sum times one
// float per output channel:
//
//   y[k, p] = s_x * s_w[k] * sum over (c, i, j) of a[c, p + tap(i, j)] * m[k, c, i, j]   (+ bias[k])
//
// The sum is exact in int32 (|a*m| <= 255*128; 2^31 / 32640 = 65,793 products fit), so this is the
// exact convolution rounded once, where the float kernels round after every addition.
// On AVX-512 VNNI one instruction (vpdpbusd) does 16 x 4 of these products (unsigned bytes of x
// times signed bytes of w, 4 adjacent pairs summed into each 32-bit lane) where a float FMA does
// 16: the forward passes of SPEQ's student and teacher and of QAT run on this path
// (bench/README.md has the measurements). Without VNNI the path is not compiled
// (kInt8ConvCompiled is false) and ops/conv2d.hpp computes in float.
//
// Layout ("wide" output, as in kernels/conv_direct.hpp's tap copies, but one copy for all taps):
// the zero-padded image is split into its stride x stride phases, phase (r, c) holding the padded
// pixels (a*stride + r, b*stride + c); each phase is Hq x Wq, Wq = ceil((W + 2*padding) / stride).
// Four channels' codes share one uint32 (channel 4g + t in byte t), so a phase of group g is a
// plane of uint32. The output is computed on a grid Wq wide: output (oh, ow) is q = oh*Wq + ow, and
// tap (i, j) reads phase (i mod s, j mod s) at q + (i / s)*Wq + j / s, a constant offset, so 16
// consecutive q are one contiguous load whatever rows they cross. The Wq - W' columns past each
// output row are computed and dropped (6% of the work at 32x32, 25% at 8x8).
#pragma once

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <vector>

#include "speq/core/tape.hpp"
#include "speq/kernels/conv_direct.hpp"  // SPEQ_KERNEL_NOINLINE
#include "speq/kernels/im2col.hpp"

#if defined(__AVX512F__) && defined(__AVX512BW__) && defined(__AVX512VNNI__)
#include <immintrin.h>
#define SPEQ_INT8_CONV 1
#else
#define SPEQ_INT8_CONV 0
#endif

namespace speq::kernels {

// True when this build has the integer convolution (AVX-512 VNNI at compile time).
inline constexpr bool kInt8ConvCompiled = SPEQ_INT8_CONV == 1;

// Where each packed code and each tap's run of inputs lies (see the top of this file).
struct Int8ConvLayout {
    ConvGeometry g;
    int64_t groups = 0;                 // ceil(C / 4): channel groups, one uint32 per pixel each
    int64_t phase_h = 0, phase_w = 0;   // Hq, Wq
    int64_t wide = 0;                   // outputs on the wide grid: H' * Wq rounded up to 16
    int64_t plane = 0;                  // uint32 per (phase, group) plane, with zero slack
    std::vector<int64_t> tap_offset;    // per tap i*kw + j: where its run starts, for q = 0, group 0

    static Int8ConvLayout of(const ConvGeometry& g) {
        Int8ConvLayout l;
        l.g = g;
        const int64_t s = g.stride;
        l.groups = (g.channels + 3) / 4;
        l.phase_h = (g.height + 2 * g.padding + s - 1) / s;
        l.phase_w = (g.width + 2 * g.padding + s - 1) / s;
        l.wide = (g.out_h * l.phase_w + 15) / 16 * 16;
        const int64_t max_offset = ((g.kernel_h - 1) / s) * l.phase_w + (g.kernel_w - 1) / s;
        l.plane = (std::max(l.phase_h * l.phase_w, l.wide + max_offset) + 15) / 16 * 16;
        for (int64_t i = 0; i < g.kernel_h; ++i)
            for (int64_t j = 0; j < g.kernel_w; ++j)
                l.tap_offset.push_back(((i % s) * s + j % s) * l.groups * l.plane + (i / s) * l.phase_w + j / s);
        return l;
    }
    int64_t taps() const { return g.kernel_h * g.kernel_w; }
    int64_t image_words() const { return g.stride * g.stride * groups * plane; }  // one packed image
    // Where padded pixel (hp, wp) of channel group `group` goes.
    int64_t word_of(int64_t group, int64_t hp, int64_t wp) const {
        const int64_t s = g.stride;
        return (((hp % s) * s + wp % s) * groups + group) * plane + (hp / s) * phase_w + wp / s;
    }
};

// The integer step of each row of a quantized weight: w[i] = m[i] * step[row], m an integer.
// On the mid-rise grid (offset 1/2) m = 2*code + 1 and the step is half the grid's scale, which
// gives the same float: (code + 1/2) * s and (2*code + 1) * (s / 2) are one real number, rounded once.
// Empty when the grid has another offset.
inline std::vector<float> integer_steps(const ValueGrid& grid) {
    if (grid.offset != 0.0f && grid.offset != 0.5f) return {};
    std::vector<float> steps;
    for (float s : grid.scales) steps.push_back(grid.offset == 0.0f ? s : s * 0.5f);
    return steps;
}

// w [K, C, kh, kw] -> m as bytes, packed [K][tap][group] (4 channels' bytes per int32, 0 past C),
// and the step of each output channel (`steps` from integer_steps, one per tensor or per K).
// False, leaving `packed` unspecified, unless every w equals float(m) * step with m in [-128, 127].
inline bool pack_weight_codes(const Int8ConvLayout& l, const float* w, int64_t K, const std::vector<float>& steps,
                              std::vector<int32_t>& packed, std::vector<float>& channel_steps) {
    const int64_t C = l.g.channels, taps = l.taps();
    if (steps.empty() || (steps.size() != 1 && static_cast<int64_t>(steps.size()) != K)) return false;
    packed.assign(static_cast<size_t>(K * taps * l.groups), 0);
    channel_steps.resize(static_cast<size_t>(K));
    for (int64_t k = 0; k < K; ++k) {
        const float step = steps[steps.size() == 1 ? 0 : static_cast<size_t>(k)];
        channel_steps[static_cast<size_t>(k)] = step;
        const float inv = step > 0.0f ? 1.0f / step : 0.0f;
        for (int64_t c = 0; c < C; ++c)
            for (int64_t t = 0; t < taps; ++t) {
                const float v = w[(k * C + c) * taps + t];
                const float m = std::nearbyint(v * inv);
                if (!(m >= -128.0f && m <= 127.0f) || m * step != v) return false;
                auto* bytes = reinterpret_cast<int8_t*>(&packed[static_cast<size_t>((k * taps + t) * l.groups + c / 4)]);
                bytes[c % 4] = static_cast<int8_t>(m);
            }
    }
    return true;
}

// One image x [C, H, W] -> its codes a = x / step in the layout (l.image_words() uint32, zero
// padding included). False unless every x equals float(a) * step with a in [0, 255].
inline bool pack_activation_codes(const Int8ConvLayout& l, const float* x, float step, uint32_t* packed) {
    const ConvGeometry& g = l.g;
    if (!(step > 0.0f)) return false;
    const float inv = 1.0f / step;
    std::memset(packed, 0, sizeof(uint32_t) * static_cast<size_t>(l.image_words()));
#if SPEQ_INT8_CONV
    if (g.stride == 1 || g.stride == 2) {  // 16 pixels of 4 channels at a time (the rest below)
        const __m512 vinv = _mm512_set1_ps(inv), vstep = _mm512_set1_ps(step), top = _mm512_set1_ps(255.0f);
        __mmask16 bad = 0;
        // The words of 16 pixels of a row of `group` from w0 on (m: the ones inside the image).
        auto words = [&](int64_t group, int64_t h, int64_t w0, __mmask16 m) {
            __m512i word = _mm512_setzero_si512();
            for (int64_t t = 0; t < 4 && group * 4 + t < g.channels; ++t) {
                const __m512 v = _mm512_maskz_loadu_ps(m, x + ((group * 4 + t) * g.height + h) * g.width + w0);
                const __m512 a = _mm512_roundscale_ps(_mm512_mul_ps(v, vinv), _MM_FROUND_TO_NEAREST_INT);
                bad |= _mm512_mask_cmp_ps_mask(m, _mm512_mul_ps(a, vstep), v, _CMP_NEQ_UQ);  // off the grid
                bad |= _mm512_mask_cmp_ps_mask(m, a, _mm512_setzero_ps(), _CMP_LT_OQ);
                bad |= _mm512_mask_cmp_ps_mask(m, a, top, _CMP_GT_OQ);
                word = _mm512_or_si512(word, _mm512_slli_epi32(_mm512_cvtps_epi32(a), static_cast<unsigned>(8 * t)));
            }
            return word;
        };
        auto first = [](int64_t n) { return static_cast<__mmask16>(n >= 16 ? 0xFFFF : (1u << n) - 1); };
        // Stride 2: 32 pixels, their even and odd columns picked into the two column phases.
        const __m512i even = _mm512_setr_epi32(0, 2, 4, 6, 8, 10, 12, 14, 16, 18, 20, 22, 24, 26, 28, 30);
        const __m512i odd = _mm512_add_epi32(even, _mm512_set1_epi32(1));
        for (int64_t group = 0; group < l.groups; ++group)
            for (int64_t h = 0; h < g.height; ++h) {
                if (g.stride == 1) {
                    uint32_t* dst = packed + l.word_of(group, h + g.padding, g.padding);
                    for (int64_t w0 = 0; w0 < g.width; w0 += 16) {
                        const __mmask16 m = first(g.width - w0);
                        _mm512_mask_storeu_epi32(dst + w0, m, words(group, h, w0, m));
                    }
                    continue;
                }
                for (int64_t w0 = 0; w0 < g.width; w0 += 32) {
                    const int64_t n = std::min<int64_t>(32, g.width - w0);
                    const __m512i lo = words(group, h, w0, first(n)), hi = words(group, h, w0 + 16, first(std::max<int64_t>(n - 16, 0)));
                    const int64_t wp = w0 + g.padding;  // padded column of pixel w0 (w0 is even)
                    _mm512_mask_storeu_epi32(packed + l.word_of(group, h + g.padding, wp), first((n + 1) / 2),
                                             _mm512_permutex2var_epi32(lo, even, hi));
                    _mm512_mask_storeu_epi32(packed + l.word_of(group, h + g.padding, wp + 1), first(n / 2),
                                             _mm512_permutex2var_epi32(lo, odd, hi));
                }
            }
        return bad == 0;
    }
#endif
    auto* bytes = reinterpret_cast<uint8_t*>(packed);  // any stride, one code at a time
    bool ok = true;
    for (int64_t c = 0; c < g.channels && ok; ++c)
        for (int64_t h = 0; h < g.height; ++h)
            for (int64_t w = 0; w < g.width; ++w) {
                const float v = x[(c * g.height + h) * g.width + w];
                const float a = std::nearbyint(v * inv);
                ok &= a >= 0.0f && a <= 255.0f && a * step == v;
                bytes[4 * l.word_of(c / 4, h + g.padding, w + g.padding) + c % 4] = static_cast<uint8_t>(ok ? a : 0.0f);
            }
    return ok;
}

// The register tile: kInt8TileChannels output channels x kInt8TileRuns runs of 16 outputs.
// 6 x 4 (24 accumulators) was the fastest of 4x4, 6x4, 8x3 and 5x5 on an AVX-512 AMD EPYC
// (bench/README.md, 2026-12-07); -D SPEQ_INT8_TILE_CHANNELS= / _RUNS= set others for such a test.
#ifndef SPEQ_INT8_TILE_CHANNELS
#define SPEQ_INT8_TILE_CHANNELS 6
#endif
#ifndef SPEQ_INT8_TILE_RUNS
#define SPEQ_INT8_TILE_RUNS 4
#endif
inline constexpr int kInt8TileChannels = SPEQ_INT8_TILE_CHANNELS;
inline constexpr int kInt8TileRuns = SPEQ_INT8_TILE_RUNS;

#if SPEQ_INT8_CONV
// acc[KT channels][PV * 16 outputs] = the integer sums of outputs q0 .. q0 + 16*PV of channels
// k0 .. k0 + KT: per tap and channel group, PV loads of 16 inputs' 4 codes, KT broadcast weight
// words, KT * PV vpdpbusd (KT * PV accumulators + PV inputs + 1 weight of the 32 registers).
// Stored to wide[k][q].
template <int KT, int PV>
SPEQ_KERNEL_NOINLINE void int8_conv_tile(const Int8ConvLayout& l, const uint32_t* x, const int32_t* w, int64_t q0,
                                         int32_t* wide) {
    __m512i acc[KT][PV];
    for (int a = 0; a < KT; ++a)
        for (int v = 0; v < PV; ++v) acc[a][v] = _mm512_setzero_si512();
    const int64_t taps = l.taps(), groups = l.groups, stride_k = taps * groups;
    for (int64_t t = 0; t < taps; ++t) {
        const uint32_t* run = x + l.tap_offset[static_cast<size_t>(t)] + q0;
        for (int64_t group = 0; group < groups; ++group, run += l.plane) {
            __m512i in[PV];
            for (int v = 0; v < PV; ++v) in[v] = _mm512_loadu_si512(run + 16 * v);
            const int32_t* wt = w + t * groups + group;
            for (int a = 0; a < KT; ++a) {
                const __m512i b = _mm512_set1_epi32(wt[a * stride_k]);
                for (int v = 0; v < PV; ++v) acc[a][v] = _mm512_dpbusd_epi32(acc[a][v], in[v], b);
            }
        }
    }
    for (int a = 0; a < KT; ++a)
        for (int v = 0; v < PV; ++v) _mm512_storeu_si512(wide + a * l.wide + q0 + 16 * v, acc[a][v]);
}

template <int KT>
void int8_conv_channels(const Int8ConvLayout& l, const uint32_t* x, const int32_t* w, int32_t* wide) {
    int64_t q0 = 0;
    for (; q0 + 16 * kInt8TileRuns <= l.wide; q0 += 16 * kInt8TileRuns) int8_conv_tile<KT, kInt8TileRuns>(l, x, w, q0, wide);
    for (; q0 < l.wide; q0 += 16) int8_conv_tile<KT, 1>(l, x, w, q0, wide);
}

// Channels k .. K in tiles of KT, the last one narrower.
template <int KT>
void int8_conv_channel_tiles(const Int8ConvLayout& l, const uint32_t* x, const int32_t* w, int64_t k, int64_t K,
                             int32_t* wide) {
    const int64_t per_channel = l.taps() * l.groups;
    if constexpr (KT > 1) {
        for (; k + KT <= K; k += KT) int8_conv_channels<KT>(l, x, w + k * per_channel, wide + k * l.wide);
        if (k < K) int8_conv_channel_tiles<KT - 1>(l, x, w, k, K, wide);
    } else {
        for (; k < K; ++k) int8_conv_channels<1>(l, x, w + k * per_channel, wide + k * l.wide);
    }
}
#endif

// wide [K][l.wide] = the integer sums of one image on the wide grid, from its packed codes and the
// packed weights (pack_activation_codes, pack_weight_codes). Needs kInt8ConvCompiled.
inline void int8_conv_image(const Int8ConvLayout& l, const uint32_t* x, const int32_t* w, int64_t K, int32_t* wide) {
#if SPEQ_INT8_CONV
    int8_conv_channel_tiles<kInt8TileChannels>(l, x, w, 0, K, wide);
#else
    (void)l, (void)x, (void)w, (void)K, (void)wide;
    SPEQ_CHECK(false, "int8_conv_image: this build has no integer convolution (needs AVX-512 VNNI)");
#endif
}

// y [K, H', W'] = wide sums * (x_step * w_step[k]) (+ bias[k]): the valid columns of each row.
inline void finish_int8_image(const Int8ConvLayout& l, const int32_t* wide, int64_t K, float x_step,
                              const std::vector<float>& channel_steps, const float* bias, float* y) {
    const int64_t H = l.g.out_h, W = l.g.out_w;
    for (int64_t k = 0; k < K; ++k) {
        const float scale = x_step * channel_steps[static_cast<size_t>(k)], b = bias ? bias[k] : 0.0f;
        for (int64_t oh = 0; oh < H; ++oh) {
            const int32_t* src = wide + k * l.wide + oh * l.phase_w;
            float* dst = y + (k * H + oh) * W;
            for (int64_t ow = 0; ow < W; ++ow) dst[ow] = static_cast<float>(src[ow]) * scale + b;
        }
    }
}

namespace reference {
// The same integer sums by plain loops over the codes, for the tests: wide[k][oh*Wq + ow] (only
// the valid outputs are written). a: [C, H, W] codes, m: [K, C, kh, kw] codes.
inline void int8_conv_image(const Int8ConvLayout& l, const std::vector<int32_t>& a, const std::vector<int32_t>& m,
                            int64_t K, int32_t* wide) {
    const ConvGeometry& g = l.g;
    for (int64_t k = 0; k < K; ++k)
        for (int64_t oh = 0; oh < g.out_h; ++oh)
            for (int64_t ow = 0; ow < g.out_w; ++ow) {
                int64_t sum = 0;
                for (int64_t c = 0; c < g.channels; ++c)
                    for (int64_t i = 0; i < g.kernel_h; ++i)
                        for (int64_t j = 0; j < g.kernel_w; ++j) {
                            const int64_t h = oh * g.stride + i - g.padding, w = ow * g.stride + j - g.padding;
                            if (h < 0 || h >= g.height || w < 0 || w >= g.width) continue;
                            sum += int64_t{a[static_cast<size_t>((c * g.height + h) * g.width + w)]} *
                                   m[static_cast<size_t>(((k * g.channels + c) * g.kernel_h + i) * g.kernel_w + j)];
                        }
                wide[k * l.wide + oh * l.phase_w + ow] = static_cast<int32_t>(sum);
            }
}
}  // namespace reference

}  // namespace speq::kernels
