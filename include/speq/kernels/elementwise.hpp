// speq/kernels/elementwise.hpp: one SIMD loop that every elementwise op is written with.
//
//   map(n, out, f, a, b, ...)                      out[i] = f(a[i], b[i], ...)   for i in [0, n)
//   map_rows(rows, inner, out, f_of_row, a, ...)   the same over a [rows, inner] array, with the
//                                                  function f_of_row(r) for row r (a per-row scale)
//   map_serial(n, out, f, a, b, ...)               map on the calling thread (inside parallel loops)
//
//   map_into_grad(fresh, n, out, f, a, ...)        out[i] = f(out[i], a[i], ...), or f(0, a[i], ...)
//                                                  without reading out when `fresh` (a gradient
//                                                  just made by Var::grad_for_write); also
//                                                  map_serial_into_grad
//   prefetch_floats(p, n)                          a hint to bring p[0, n) into the cache
//
// f receives xsimd batches (8 floats with AVX2, 16 with AVX-512) and must use only arithmetic
// and xsimd functions, so the same lambda serves the body and the tail. The tail is copied into
// a small padded buffer, run as one batch, and copied back: no scalar duplicate of f to drift.
// `out` may alias an input (out[i] depends only on inputs at i), e.g. grad += ... in place.
//
// map and map_rows cut the work into fixed pieces of at most kChunk elements (RowPieces) and
// spread them over the threads; the pieces depend only on the sizes, so results do not depend on
// the thread count. kernels/reduce.hpp builds the ordered sums on the same pieces.
#pragma once

#include <xsimd/xsimd.hpp>

#include <algorithm>
#include <cstdint>

#include "speq/core/threads.hpp"

namespace speq::kernels {

using FloatBatch = xsimd::batch<float>;
inline constexpr int64_t kLanes = static_cast<int64_t>(FloatBatch::size);
inline constexpr int64_t kChunk = 1 << 14;  // 64 KiB of floats per input: fits in L2 with room

// Elements [i, n) of p, fewer than one batch, in a zero-padded batch: how the loops run their
// tail through the same f as their body.
inline FloatBatch load_tail(const float* p, int64_t i, int64_t n) {
    alignas(64) float buffer[kLanes] = {};
    std::copy(p + i, p + n, buffer);
    return FloatBatch::load_aligned(buffer);
}

// The rows of a [rows, inner] array, each row cut into pieces of at most kChunk elements: piece p
// is the elements [begin(p), end(p)) of the array, all in row(p). The pieces depend only on
// (rows, inner), never on the thread count, so per-piece partial results combined in piece order
// are thread-count independent.
struct RowPieces {
    int64_t rows, inner, per_row;
    RowPieces(int64_t rows_, int64_t inner_)
        : rows(rows_), inner(inner_), per_row(std::max<int64_t>(1, (inner_ + kChunk - 1) / kChunk)) {}
    int64_t count() const { return rows * per_row; }
    int64_t row(int64_t p) const { return p / per_row; }
    int64_t begin(int64_t p) const { return row(p) * inner + (p % per_row) * kChunk; }
    int64_t end(int64_t p) const { return std::min(begin(p) + kChunk, (row(p) + 1) * inner); }
};

// body(p) for every piece p, in parallel unless the whole array is small.
template <class Body>
void for_each_piece(const RowPieces& pieces, Body&& body) {
    parallel_for_if_large(0, pieces.count(), pieces.rows * pieces.inner, body);
}

template <class F, class... In>
void map_serial(int64_t n, float* out, F&& f, const In*... in) {
    int64_t i = 0;
    for (; i + kLanes <= n; i += kLanes) f(FloatBatch::load_unaligned(in + i)...).store_unaligned(out + i);
    if (i < n) {
        alignas(64) float tail_out[kLanes];
        f(load_tail(in, i, n)...).store_aligned(tail_out);
        std::copy(tail_out, tail_out + (n - i), out + i);
    }
}

template <class MakeF, class... In>
void map_rows(int64_t rows, int64_t inner, float* out, MakeF&& f_of_row, const In*... in) {
    const RowPieces pieces(rows, inner);
    for_each_piece(pieces, [&](int64_t p) {
        const int64_t b = pieces.begin(p);
        map_serial(pieces.end(p) - b, out + b, f_of_row(pieces.row(p)), (in + b)...);
    });
}

template <class F, class... In>
void map(int64_t n, float* out, F&& f, const In*... in) {
    map_rows(1, n, out, [&](int64_t) -> auto& { return f; }, in...);
}

// How a backward step writes a gradient it got from Var::grad_for_write: f takes the gradient's
// old value first. Fresh: out[i] = f(0, a[i], ...) and out (uninitialized) is never read;
// otherwise out[i] = f(out[i], a[i], ...).
template <class F, class... In>
void map_serial_into_grad(bool fresh, int64_t n, float* out, F&& f, const In*... in) {
    if (fresh)
        map_serial(n, out, [&f](auto... v) { return f(FloatBatch(0.0f), v...); }, in...);
    else
        map_serial(n, out, f, out, in...);
}
template <class F, class... In>
void map_into_grad(bool fresh, int64_t n, float* out, F&& f, const In*... in) {
    if (fresh)
        map(n, out, [&f](auto... v) { return f(FloatBatch(0.0f), v...); }, in...);
    else
        map(n, out, f, out, in...);
}

// Asks for the n floats at p to be brought into the cache ahead of a loop that will read them
// (a hint: no effect on results). On x86 it is an asm statement, not __builtin_prefetch: GCC 12
// at -O3 deleted loops of __builtin_prefetch as loops without side effects (C++ lets it assume
// such a loop ends, -ffinite-loops), so the prefetches of batch_norm_act's backward vanished.
inline void prefetch_floats([[maybe_unused]] const float* p, [[maybe_unused]] int64_t n) {
    constexpr int64_t kLineFloats = 64 / static_cast<int64_t>(sizeof(float));
#if defined(__GNUC__) && (defined(__x86_64__) || defined(__i386__))
    for (int64_t i = 0; i < n; i += kLineFloats) asm volatile("prefetcht0 %0" : : "m"(*reinterpret_cast<const char*>(p + i)));
#elif defined(__GNUC__)
    for (int64_t i = 0; i < n; i += kLineFloats) __builtin_prefetch(p + i);
#endif
}

// dst[i] += src[i]: how most backward steps hand a gradient on.
inline void accumulate(int64_t n, float* dst, const float* src) {
    map(n, dst, [](FloatBatch d, FloatBatch s) { return d + s; }, dst, src);
}

}  // namespace speq::kernels
