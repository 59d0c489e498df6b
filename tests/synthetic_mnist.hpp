// tests/synthetic_mnist.hpp: a tiny MNIST-format data set for tests that run the trainer.
#pragma once

#include <cstdint>
#include <filesystem>
#include <fstream>
#include <string>

#include "speq/core/rng.hpp"

namespace speq::testing {

inline void put_u32_be(std::ofstream& out, uint32_t v) {
    const unsigned char b[4] = {uint8_t(v >> 24), uint8_t(v >> 16), uint8_t(v >> 8), uint8_t(v)};
    out.write(reinterpret_cast<const char*>(b), 4);
}

// Writes PREFIX-images-idx3-ubyte and PREFIX-labels-idx1-ubyte into `dir`: n 28x28 images whose
// class (0..3) is the quadrant holding a bright square, plus noise. Easy, but it must be learned.
inline void write_split(const std::filesystem::path& dir, const std::string& prefix, int n, uint64_t seed) {
    Rng rng(seed);
    std::ofstream images(dir / (prefix + "-images-idx3-ubyte"), std::ios::binary);
    std::ofstream labels(dir / (prefix + "-labels-idx1-ubyte"), std::ios::binary);
    put_u32_be(images, 2051), put_u32_be(images, n), put_u32_be(images, 28), put_u32_be(images, 28);
    put_u32_be(labels, 2049), put_u32_be(labels, n);
    for (int i = 0; i < n; ++i) {
        const int label = static_cast<int>(rng.below(4));
        for (int y = 0; y < 28; ++y)
            for (int x = 0; x < 28; ++x) {
                const bool inside = (y / 14) * 2 + (x / 14) == label && y % 14 > 3 && x % 14 > 3 && y % 14 < 11 && x % 14 < 11;
                images.put(static_cast<char>((inside ? 200 : 30) + static_cast<int>(rng.below(40))));
            }
        labels.put(static_cast<char>(label));
    }
}

}  // namespace speq::testing
