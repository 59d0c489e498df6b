// speq/quant/bits.hpp: bit-widths, the integer grids of the weight quantizers, the integer view
// of a fake-quantized tensor, and the rounding to codes.
//
// A bit-width is a plain int: 1..8 quantize, kFullPrecision (32) means "no quantization". A
// layer's bit-width can change between two forward passes (SPEQ's teacher draws them at random),
// so every quantizer takes `bits` per call and checks it.
//
// Rounding (all quantizers): to the nearest level, exact ties AWAY FROM ZERO (std::round). With
// this rule every signed quantizer is an exact odd function, q(-w) = -q(w), on both grids (also
// mid_rise, where half-to-even would break the symmetry at ties). PyTorch's fake_quantize rounds
// half to even; the two differ only at exact ties, which training data essentially never hits.
//
// The signed grids (weights, LSQ). A code c is an integer; its level is (c + offset) * s:
//   narrow:   c in [-(2^(b-1)-1), 2^(b-1)-1], offset 0.    Zero is a level (a pruned weight stays
//             exactly zero; 2 bits = ternary {-s, 0, s}), but one of the 2^b codes is unused, and
//             1 bit would leave only {0}, so narrow needs b >= 2.
//   mid_rise: c in [-2^(b-1), 2^(b-1)-1],      offset 1/2. All 2^b levels are used and symmetric
//             (+-s/2, +-3s/2, ...; 1 bit = sign, {-s/2, +s/2}), but zero is not a level.
//             For integer kernels use the odd integers 2c+1 with scale s/2.
//   Trade-off: at 2-3 bits, mid_rise has 33% (4 vs 3) or 14% (8 vs 7) more levels, which tends
//   to lower the quantization error of bell-shaped weights; narrow keeps exact zeros and
//   sparsity. Which trains better is left to an ablation (default: mid_rise).
// `limit` is the largest level in units of s (narrow: Qp; mid_rise: 2^(b-1) - 1/2); a clip
// threshold T maps to s = T / limit, so the outermost levels are exactly +-T.
#pragma once

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <vector>

#include "speq/core/error.hpp"
#include "speq/core/tensor.hpp"
#include "speq/kernels/elementwise.hpp"

namespace speq::quant {

inline constexpr int kMinBits = 1;
inline constexpr int kMaxBits = 8;
inline constexpr int kFullPrecision = 32;  // "no quantization"

inline bool is_full_precision(int bits) { return bits == kFullPrecision; }

// Throws unless bits is 1..8 or kFullPrecision. `op` names the caller in the message.
inline void check_bits(const char* op, int bits) {
    SPEQ_CHECK((bits >= kMinBits && bits <= kMaxBits) || bits == kFullPrecision, op,
               ": bits must be ", kMinBits, "..", kMaxBits, " or ", kFullPrecision,
               " (full precision), got ", bits);
}

enum class Grid { narrow, mid_rise };

inline const char* grid_name(Grid grid) { return grid == Grid::narrow ? "narrow" : "mid_rise"; }

// The integer grid of a signed quantizer at a quantizing bit-width (not full precision).
struct GridSpec {
    int32_t min_code, max_code;  // codes c in [min_code, max_code]
    float offset;                // level of code c is (c + offset) * s
    float limit;                 // largest level / s = max_code + offset (= -(min_code + offset))
};

inline GridSpec grid_spec(const char* op, int bits, Grid grid) {
    check_bits(op, bits);
    SPEQ_CHECK(!is_full_precision(bits), op, ": no integer grid at full precision (bits ", bits, ")");
    const int32_t half = int32_t(1) << (bits - 1);
    if (grid == Grid::narrow) {
        SPEQ_CHECK(bits >= 2, op, ": the narrow grid needs bits >= 2 (at 1 bit its only level is 0); "
                   "use Grid::mid_rise for 1-bit (sign) weights");
        return {-(half - 1), half - 1, 0.0f, static_cast<float>(half - 1)};
    }
    return {-half, half - 1, 0.5f, static_cast<float>(half) - 0.5f};
}

// The integer view of a fake-quantized tensor: the quantizer's output at element i equals
// value(i) = (float(codes[i]) + offset) * scales[row(i)] EXACTLY (same float operations).
// scales has one entry (per tensor) or shape[0] entries (per output channel, row = i / inner).
struct IntegerCodes {
    Shape shape;
    std::vector<int32_t> codes;  // one per element, in the tensor's row-major order
    std::vector<float> scales;
    float offset = 0.0f;         // 0 for PACT and narrow, 1/2 for mid_rise
    int32_t min_code = 0, max_code = 0;

    float scale_of(int64_t i) const {
        const int64_t inner = static_cast<int64_t>(codes.size()) / static_cast<int64_t>(scales.size());
        return scales[static_cast<size_t>(i / inner)];
    }
    float value(int64_t i) const { return (static_cast<float>(codes[i]) + offset) * scale_of(i); }
};

namespace detail {

using kernels::FloatBatch;
using kernels::kLanes;

// The code of v = w / s on a signed grid, as a float holding an integer (ties away from zero):
//   narrow:   c = round(clamp(v, -Qp, Qp))
//   mid_rise: c = clamp(v >= 0 ? floor(v) : -floor(-v) - 1, Qn, Qp)   (level c + 1/2 nearest to v)
struct SignedCoder {
    FloatBatch lo, hi;
    bool mid_rise;
    explicit SignedCoder(const GridSpec& g)
        : lo(static_cast<float>(g.min_code)), hi(static_cast<float>(g.max_code)), mid_rise(g.offset != 0.0f) {}
    FloatBatch operator()(FloatBatch v) const {
        if (!mid_rise) return xsimd::round(xsimd::clip(v, lo, hi));
        const FloatBatch a = xsimd::floor(xsimd::abs(v));
        return xsimd::clip(xsimd::select(v >= FloatBatch(0.0f), a, -a - FloatBatch(1.0f)), lo, hi);
    }
};

// Scalar twin of SignedCoder, for the reference implementations and the code export.
inline float signed_code(float v, const GridSpec& g) {
    const float lo = static_cast<float>(g.min_code), hi = static_cast<float>(g.max_code);
    if (g.offset == 0.0f) return std::round(std::min(std::max(v, lo), hi));
    const float a = std::floor(std::abs(v));
    return std::min(std::max(v >= 0.0f ? a : -a - 1.0f, lo), hi);
}

}  // namespace detail
}  // namespace speq::quant
