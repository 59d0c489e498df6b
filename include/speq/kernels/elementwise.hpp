// speq/kernels/elementwise.hpp: one SIMD loop that every elementwise op is written with.
//
//   map(n, out, f, a, b, ...)   computes   out[i] = f(a[i], b[i], ...)   for i in [0, n)
//
// f receives xsimd batches (8 floats with AVX2, 16 with AVX-512) and must use only arithmetic
// and xsimd functions, so the same lambda serves the body and the tail. The tail is copied into
// a small padded buffer, run as one batch, and copied back: no scalar duplicate of f to drift.
// `out` may alias an input (out[i] depends only on inputs at i), e.g. grad += ... in place.
//
// Work is cut into fixed chunks of kChunk elements and spread over the threads; the chunking
// depends only on n, so results do not depend on the thread count.
#pragma once

#include <xsimd/xsimd.hpp>

#include <algorithm>
#include <cstdint>

#include "speq/core/threads.hpp"

namespace speq::kernels {

using FloatBatch = xsimd::batch<float>;
inline constexpr int64_t kLanes = static_cast<int64_t>(FloatBatch::size);
inline constexpr int64_t kChunk = 1 << 14;  // 64 KiB of floats per input: fits in L2 with room

template <class F, class... In>
void map_serial(int64_t n, float* out, F&& f, const In*... in) {
    int64_t i = 0;
    for (; i + kLanes <= n; i += kLanes) f(FloatBatch::load_unaligned(in + i)...).store_unaligned(out + i);
    if (i < n) {
        const int64_t rest = n - i;
        alignas(64) float tail_out[kLanes];
        auto load_tail = [&](const float* p) {
            alignas(64) float buffer[kLanes] = {};
            std::copy(p + i, p + n, buffer);
            return FloatBatch::load_aligned(buffer);
        };
        f(load_tail(in)...).store_aligned(tail_out);
        std::copy(tail_out, tail_out + rest, out + i);
    }
}

template <class F, class... In>
void map(int64_t n, float* out, F&& f, const In*... in) {
    const int64_t chunks = (n + kChunk - 1) / kChunk;
    parallel_for(0, chunks, [&](int64_t c) {
        const int64_t begin = c * kChunk;
        const int64_t len = std::min(kChunk, n - begin);
        map_serial(len, out + begin, f, (in + begin)...);
    });
}

// Convenience: a batch holding the same value in every lane.
inline FloatBatch splat(float v) { return FloatBatch(v); }

}  // namespace speq::kernels

namespace speq::kernels {
// dst[i] += src[i]: how most backward steps hand a gradient on.
inline void accumulate(int64_t n, float* dst, const float* src) {
    map(n, dst, [](FloatBatch d, FloatBatch s) { return d + s; }, dst, src);
}
}  // namespace speq::kernels
