// speq/kernels/reduce.hpp: the ordered sums of speq (batch-norm statistics, pooling, the
// quantizers' scale gradients and thresholds).
//
//   sum_map(n, f, a, b, ...)            returns sum over i in [0, n) of f(a[i], b[i], ...), a double
//   map_and_sum(n, out, f, a, b, ...)   {o, r} = f(a[i], b[i], ...);  out[i] = o (skipped when out
//                                       is null);  returns the sum of r: a map fused with a sum
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
#include <cstdint>
#include <type_traits>
#include <utility>
#include <vector>

#include "speq/kernels/elementwise.hpp"

namespace speq::kernels {

// Float error grows with the block length; 1024 keeps it near 1e-6 relative, and the blocks'
// totals are summed in double, so long spans (N*H*W of a batch) lose nothing more.
inline constexpr int64_t kSumBlock = 1024;

// f returns a pair {o, r}: o is stored to out (unless out is null), r is summed. sum_map passes
// an f that returns r alone: then the loop has no stores and no pair, and compiles like a plain
// sum loop (a pair in between can change how the compiler fuses f's last multiply with the add).
template <class F, class... In>
double map_and_sum(int64_t n, float* out, F&& f, const In*... in) {
    using Result = decltype(f(FloatBatch::load_unaligned(in)...));
    constexpr bool has_output = !std::is_same_v<Result, FloatBatch>;
    auto summed_part = [](const Result& result) -> FloatBatch {
        if constexpr (has_output)
            return result.second;
        else
            return result;
    };
    double total = 0.0;
    for (int64_t begin = 0; begin < n; begin += kSumBlock) {
        const int64_t end = std::min(n, begin + kSumBlock);
        FloatBatch acc0(0.0f), acc1(0.0f), acc2(0.0f), acc3(0.0f);
        auto step = [&](int64_t i) {
            const Result result = f(FloatBatch::load_unaligned(in + i)...);
            if constexpr (has_output)
                if (out) result.first.store_unaligned(out + i);
            return summed_part(result);
        };
        int64_t i = begin;
        for (; i + 4 * kLanes <= end; i += 4 * kLanes) {
            acc0 += step(i);
            acc1 += step(i + kLanes);
            acc2 += step(i + 2 * kLanes);
            acc3 += step(i + 3 * kLanes);
        }
        for (; i + kLanes <= end; i += kLanes) acc0 += step(i);
        float block = xsimd::hadd((acc0 + acc1) + (acc2 + acc3));
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
            summed_part(result).store_aligned(lanes);
            for (int64_t j = 0; j < end - i; ++j) block += lanes[j];
        }
        total += static_cast<double>(block);
    }
    return total;
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
