// speq/core/rng.hpp: a small, fast, seedable random number generator whose whole state is two
// 64-bit numbers, so a checkpoint can save it and a resumed run draws the same numbers.
//
// The generator is PCG32 (O'Neill 2014): a 64-bit LCG whose output is permuted by a
// xorshift and a data-dependent rotation. Same seed, same stream, on every platform.
#pragma once

#include <cmath>
#include <cstdint>

#include "speq/core/tensor.hpp"

namespace speq {

class Rng {
public:
    explicit Rng(uint64_t seed = 0x853c49e6748fea9bULL, uint64_t stream = 0xda3e39cb94b95bdbULL) {
        state_ = 0;
        inc_ = (stream << 1u) | 1u;
        next_u32();
        state_ += seed;
        next_u32();
    }

    uint32_t next_u32() {
        uint64_t old = state_;
        state_ = old * 6364136223846793005ULL + inc_;
        uint32_t xorshifted = static_cast<uint32_t>(((old >> 18u) ^ old) >> 27u);
        uint32_t rot = static_cast<uint32_t>(old >> 59u);
        return (xorshifted >> rot) | (xorshifted << ((32u - rot) & 31u));
    }

    // Uniform in [0, 1) with 24 random bits (every float in the range is equally likely).
    float uniform() { return static_cast<float>(next_u32() >> 8) * (1.0f / 16777216.0f); }
    float uniform(float lo, float hi) { return lo + (hi - lo) * uniform(); }

    // Uniform integer in [0, n), without modulo bias (Lemire's method).
    uint32_t below(uint32_t n) {
        SPEQ_CHECK(n > 0, "Rng::below: n must be > 0");
        uint64_t m = static_cast<uint64_t>(next_u32()) * n;
        uint32_t low = static_cast<uint32_t>(m);
        if (low < n) {
            uint32_t threshold = (0u - n) % n;
            while (low < threshold) {
                m = static_cast<uint64_t>(next_u32()) * n;
                low = static_cast<uint32_t>(m);
            }
        }
        return static_cast<uint32_t>(m >> 32);
    }

    bool bernoulli(float p) { return uniform() < p; }

    // Standard normal by Box-Muller (one draw per call; simple and deterministic).
    float normal() {
        float u1 = uniform();
        float u2 = uniform();
        if (u1 < 1e-12f) u1 = 1e-12f;
        return std::sqrt(-2.0f * std::log(u1)) * std::cos(6.283185307179586f * u2);
    }

    // Fisher-Yates shuffle of any random-access range.
    template <class It>
    void shuffle(It first, It last) {
        for (auto n = last - first; n > 1; --n) {
            auto j = below(static_cast<uint32_t>(n));
            std::swap(first[n - 1], first[j]);
        }
    }

    // The whole state, for checkpoints.
    struct State {
        uint64_t state, inc;
    };
    State save() const { return {state_, inc_}; }
    void restore(State s) {
        state_ = s.state;
        inc_ = s.inc | 1u;
    }

private:
    uint64_t state_ = 0, inc_ = 1;
};

// Tensors filled with random numbers (used by initializers and tests).
inline Tensor randn(Shape shape, Rng& rng, float stddev = 1.0f) {
    Tensor t = Tensor::uninitialized(std::move(shape));
    for (int64_t i = 0; i < t.numel(); ++i) t[i] = stddev * rng.normal();
    return t;
}
inline Tensor rand_uniform(Shape shape, Rng& rng, float lo, float hi) {
    Tensor t = Tensor::uninitialized(std::move(shape));
    for (int64_t i = 0; i < t.numel(); ++i) t[i] = rng.uniform(lo, hi);
    return t;
}

}  // namespace speq
