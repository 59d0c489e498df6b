// speq/kernels/reduce.hpp: the ordered sums of speq (batch-norm statistics, pooling, the
// quantizers' scale gradients and thresholds).
//
//   sum_map(n, f, a, b, ...)            returns sum over i in [0, n) of f(a[i], b[i], ...), a double
//   map_and_sum(n, out, f, a, b, ...)   {o, r} = f(a[i], b[i], ...);  out[i] = o (skipped when out
//                                       is null);  returns the sum of r: a map fused with a sum
//   sums_map(n, f, a, ...), map_and_sums(n, out, f, a, ...)   the same with r = K batches
//                                       (Batches<K>): K sums in one pass, an array of K doubles
//   row_sums(rows, inner, piece_sum)    per row of a [rows, inner] array, the sum over its fixed
//                                       pieces (RowPieces) of piece_sum(row, begin, end)
//   reduce_rows(rows, inner, init, piece_result, combine)   row_sums with any combine (e.g. max)
//
// f works on xsimd batches, exactly as in kernels::map. sum_map and map_and_sum run on the calling
// thread: the span is cut into blocks of kSumBlock elements; inside a block four float SIMD
// accumulators run side by side (so the adds pipeline), and each block's total is added to a
// double. row_sums runs its pieces in parallel, keeps one partial per piece, and adds the partials
// in piece order afterwards. The order of every addition depends only on the sizes, so the result
// is the same for any thread count.
#pragma once

#include <algorithm>
#include <array>
#include <cstdint>
#include <type_traits>
#include <utility>
#include <vector>

#include "speq/kernels/elementwise.hpp"

namespace speq::kernels {

// Float error grows with the block length; 1024 keeps it near 1e-6 relative, and the blocks'
// totals are summed in double, so long spans (N*H*W of a batch) lose nothing more.
inline constexpr int64_t kSumBlock = 1024;

// K float batches summed side by side: what f returns to sums_map / map_and_sums for K sums at once.
template <size_t K>
using Batches = std::array<FloatBatch, K>;

namespace detail {
template <class T>
struct IsPair : std::false_type {};
template <class A, class B>
struct IsPair<std::pair<A, B>> : std::true_type {};

inline Batches<1> as_batches(const FloatBatch& r) { return {r}; }
template <size_t K>
const Batches<K>& as_batches(const Batches<K>& r) { return r; }

// The summed part of f's result ({o, r} or r alone) as K batches.
template <class Result>
auto summed_part(const Result& result) {
    if constexpr (IsPair<Result>::value)
        return as_batches(result.second);
    else
        return as_batches(result);
}
}  // namespace detail

// f returns a pair {o, r}: o is stored to out (unless out is null), r is summed; or r alone (no
// store). r is one batch, or Batches<K> for K sums over the same pass (the two sums of batch
// norm's backward read dy once): the result is then an array of K doubles. Each of the K sums is
// added exactly as if it were summed alone, so a sum keeps its bits whether it has company or not.
// sum_map passes an f that returns r alone: then the loop has no stores and no pair, and compiles
// like a plain sum loop (a pair in between can change how the compiler fuses f's last multiply
// with the add).
template <class F, class... In>
auto map_and_sums(int64_t n, float* out, F&& f, const In*... in) {
    using Result = decltype(f(FloatBatch::load_unaligned(in)...));
    constexpr bool has_output = detail::IsPair<Result>::value;
    using Summed = std::decay_t<decltype(detail::summed_part(std::declval<Result>()))>;
    constexpr size_t K = std::tuple_size<Summed>::value;
    std::array<double, K> total{};
    for (int64_t begin = 0; begin < n; begin += kSumBlock) {
        const int64_t end = std::min(n, begin + kSumBlock);
        Summed acc0, acc1, acc2, acc3;
        for (size_t k = 0; k < K; ++k) acc0[k] = acc1[k] = acc2[k] = acc3[k] = FloatBatch(0.0f);
        auto add = [](Summed& acc, const Summed& r) {
            for (size_t k = 0; k < K; ++k) acc[k] += r[k];
        };
        auto step = [&](int64_t i) {
            const Result result = f(FloatBatch::load_unaligned(in + i)...);
            if constexpr (has_output)
                if (out) result.first.store_unaligned(out + i);
            return detail::summed_part(result);
        };
        int64_t i = begin;
        for (; i + 4 * kLanes <= end; i += 4 * kLanes) {
            add(acc0, step(i));
            add(acc1, step(i + kLanes));
            add(acc2, step(i + 2 * kLanes));
            add(acc3, step(i + 3 * kLanes));
        }
        for (; i + kLanes <= end; i += kLanes) add(acc0, step(i));
        std::array<float, K> block;
        for (size_t k = 0; k < K; ++k) block[k] = xsimd::hadd((acc0[k] + acc1[k]) + (acc2[k] + acc3[k]));
        if (i < end) {
            // The tail runs as one padded batch; f(0, ...) need not be 0, so only the real
            // lanes are stored and added.
            const Result result = f(load_tail(in, i, end)...);
            alignas(64) float lanes[kLanes];
            if constexpr (has_output) {
                if (out) {
                    result.first.store_aligned(lanes);
                    std::copy(lanes, lanes + (end - i), out + i);
                }
            }
            const Summed tail = detail::summed_part(result);
            for (size_t k = 0; k < K; ++k) {
                tail[k].store_aligned(lanes);
                for (int64_t j = 0; j < end - i; ++j) block[k] += lanes[j];
            }
        }
        for (size_t k = 0; k < K; ++k) total[k] += static_cast<double>(block[k]);
    }
    return total;
}

// The sums of f's K batches, no store: one pass over the inputs for K reductions.
template <class F, class... In>
auto sums_map(int64_t n, F&& f, const In*... in) {
    return map_and_sums(n, nullptr, f, in...);
}

// One sum (f returns {o, r} or r as one batch).
template <class F, class... In>
double map_and_sum(int64_t n, float* out, F&& f, const In*... in) {
    const auto total = map_and_sums(n, out, f, in...);
    static_assert(std::tuple_size<decltype(total)>::value == 1, "map_and_sum sums one batch: use map_and_sums");
    return total[0];
}

template <class F, class... In>
double sum_map(int64_t n, F&& f, const In*... in) {
    return map_and_sum(n, nullptr, f, in...);
}

// The plain version the tests compare sum_map with: one element at a time, in double.
template <class F, class... In>
double sum_map_reference(int64_t n, F&& f, const In*... in) {
    double total = 0.0;
    for (int64_t i = 0; i < n; ++i) total += static_cast<double>(f(in[i]...));
    return total;
}

// result[r] = combine(...combine(combine(init, x_0), x_1)..., x_last) over the pieces of row r in
// order, where x_p = piece_result(r, begin(p), end(p)); the pieces run in parallel.
template <class T, class PieceResult, class Combine>
std::vector<T> reduce_rows(int64_t rows, int64_t inner, T init, PieceResult&& piece_result, Combine&& combine) {
    const RowPieces pieces(rows, inner);
    std::vector<T> partial(static_cast<size_t>(pieces.count()));
    for_each_piece(pieces, [&](int64_t p) {
        partial[static_cast<size_t>(p)] = piece_result(pieces.row(p), pieces.begin(p), pieces.end(p));
    });
    std::vector<T> result(static_cast<size_t>(rows), init);
    for (int64_t p = 0; p < pieces.count(); ++p) {
        T& r = result[static_cast<size_t>(pieces.row(p))];
        r = combine(r, partial[static_cast<size_t>(p)]);
    }
    return result;
}

// Per-row sums of piece_sum(row, begin, end) (a double per piece), added in piece order.
template <class PieceSum>
std::vector<double> row_sums(int64_t rows, int64_t inner, PieceSum&& piece_sum) {
    return reduce_rows(rows, inner, 0.0, piece_sum, [](double a, double b) { return a + b; });
}

}  // namespace speq::kernels
