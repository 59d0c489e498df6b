// speq/kernels/reduce.hpp: the sum loop that per-channel statistics (batch norm, pooling) use.
//
//   sum_map(n, f, a, b, ...)   returns   sum over i in [0, n) of f(a[i], b[i], ...)   as a double
//
// f works on xsimd batches, exactly as in kernels::map. The span is cut into blocks of kSumBlock
// elements; inside a block four float SIMD accumulators run side by side (so the adds pipeline),
// and each block's total is added to a double. The order of every addition depends only on n,
// so the result is the same for any thread count. It runs on the calling thread: callers
// parallelize over independent spans (channels, planes), never inside one sum.
#pragma once

#include <algorithm>
#include <cstdint>

#include "speq/kernels/elementwise.hpp"

namespace speq::kernels {

// Float error grows with the block length; 1024 keeps it near 1e-6 relative, and the blocks'
// totals are summed in double, so long spans (N*H*W of a batch) lose nothing more.
inline constexpr int64_t kSumBlock = 1024;

template <class F, class... In>
double sum_map(int64_t n, F&& f, const In*... in) {
    double total = 0.0;
    for (int64_t begin = 0; begin < n; begin += kSumBlock) {
        const int64_t end = std::min(n, begin + kSumBlock);
        FloatBatch acc0(0.0f), acc1(0.0f), acc2(0.0f), acc3(0.0f);
        int64_t i = begin;
        for (; i + 4 * kLanes <= end; i += 4 * kLanes) {
            acc0 += f(FloatBatch::load_unaligned(in + i)...);
            acc1 += f(FloatBatch::load_unaligned(in + i + kLanes)...);
            acc2 += f(FloatBatch::load_unaligned(in + i + 2 * kLanes)...);
            acc3 += f(FloatBatch::load_unaligned(in + i + 3 * kLanes)...);
        }
        for (; i + kLanes <= end; i += kLanes) acc0 += f(FloatBatch::load_unaligned(in + i)...);
        float block = xsimd::hadd((acc0 + acc1) + (acc2 + acc3));
        if (i < end) {
            // The tail runs as one padded batch; f(0, ...) need not be 0, so only the real
            // lanes are added.
            alignas(64) float tail[kLanes];
            auto load_tail = [&](const float* p) {
                alignas(64) float buffer[kLanes] = {};
                std::copy(p + i, p + end, buffer);
                return FloatBatch::load_aligned(buffer);
            };
            f(load_tail(in)...).store_aligned(tail);
            for (int64_t j = 0; j < end - i; ++j) block += tail[j];
        }
        total += static_cast<double>(block);
    }
    return total;
}

// The plain version the tests compare sum_map with: one element at a time, in double.
template <class F, class... In>
double sum_map_reference(int64_t n, F&& f, const In*... in) {
    double total = 0.0;
    for (int64_t i = 0; i < n; ++i) total += static_cast<double>(f(in[i]...));
    return total;
}

}  // namespace speq::kernels
