// speq/io/augment.hpp: from stored uint8 pixels to the float inputs of a network, one image at a
// time: optional random crop of the zero-padded image, optional horizontal flip, per-channel
// normalization. The batch loader (loader.hpp) calls these; they are separate so tests can check
// them by hand and other loaders can reuse them.
#pragma once

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <vector>

#include "speq/core/error.hpp"
#include "speq/core/rng.hpp"
#include "speq/io/dataset.hpp"

namespace speq::io {

// Per-channel mean and standard deviation of the pixel values scaled to [0, 1]; the network sees
// (pixel / 255 - mean[c]) / stddev[c]. Empty vectors mean 0 and 1: pixels scaled to [0, 1].
struct Normalization {
    std::vector<float> mean, stddev;
};

// CIFAR-10 training set, population statistics (compute_normalization gives these digits).
inline Normalization cifar10_normalization() {
    return {{0.4914f, 0.4822f, 0.4465f}, {0.2470f, 0.2435f, 0.2616f}};
}
inline Normalization fashion_mnist_normalization() { return {{0.2860f}, {0.3530f}}; }
inline Normalization mnist_normalization() { return {{0.1307f}, {0.3081f}}; }

// Mean and population standard deviation of every channel over the whole data set. Exact: it
// counts each byte value per channel first, then sums in double.
inline Normalization compute_normalization(const Dataset& data) {
    SPEQ_CHECK(data.size() > 0, "compute_normalization: dataset '", data.name, "' is empty");
    const int64_t plane = data.height * data.width;
    std::vector<uint64_t> counts(static_cast<size_t>(data.channels) * 256, 0);
    for (int64_t i = 0; i < data.size(); ++i)
        for (int64_t c = 0; c < data.channels; ++c) {
            const uint8_t* p = data.image(i) + c * plane;
            uint64_t* h = counts.data() + c * 256;
            for (int64_t k = 0; k < plane; ++k) ++h[p[k]];
        }
    Normalization norm;
    const double n = static_cast<double>(data.size() * plane);
    for (int64_t c = 0; c < data.channels; ++c) {
        double s1 = 0, s2 = 0;  // sums of v and v^2 (integers, exact in double below 2^53)
        for (int v = 0; v < 256; ++v) {
            s1 += double(v) * double(counts[c * 256 + v]);
            s2 += double(v) * double(v) * double(counts[c * 256 + v]);
        }
        const double mean = s1 / n, var = std::max(0.0, s2 / n - mean * mean);
        norm.mean.push_back(static_cast<float>(mean / 255.0));
        norm.stddev.push_back(static_cast<float>(std::sqrt(var) / 255.0));
    }
    return norm;
}

// The normalized float value of every byte value of every channel: table[c * 256 + v] =
// (v / 255 - mean[c]) / stddev[c], computed in double. Normalizing is then one load per pixel,
// which costs less than the arithmetic and gives the same bits on every machine.
inline std::vector<float> normalization_table(const Normalization& norm, int64_t channels) {
    const bool identity = norm.mean.empty() && norm.stddev.empty();
    SPEQ_CHECK(identity || (static_cast<int64_t>(norm.mean.size()) == channels &&
                            static_cast<int64_t>(norm.stddev.size()) == channels),
               "normalization: ", norm.mean.size(), " means and ", norm.stddev.size(),
               " standard deviations for images with ", channels, " channels");
    std::vector<float> table(static_cast<size_t>(channels) * 256);
    for (int64_t c = 0; c < channels; ++c) {
        const double mean = identity ? 0.0 : norm.mean[c];
        const double stddev = identity ? 1.0 : norm.stddev[c];
        SPEQ_CHECK(std::isfinite(mean) && std::isfinite(stddev) && stddev > 0, "normalization: ",
                   "channel ", c, " has mean ", mean, " and stddev ", stddev,
                   "; stddev must be > 0");
        for (int v = 0; v < 256; ++v)
            table[c * 256 + v] = static_cast<float>((v / 255.0 - mean) / stddev);
    }
    return table;
}

// Where one image is cut from its padded copy and whether it is mirrored. The padded image is
// the original with `pad` zero (black) pixels added on every side, as torchvision's
// RandomCrop(size, padding=pad) does before Normalize; the crop is H x W at offset (dy, dx),
// each in [0, 2 pad]. dy = dx = pad and no flip is the image unchanged.
struct CropFlip {
    int dy = 0, dx = 0;
    bool flip = false;
};

// Draws the crop offsets (uniform in [0, 2 pad]) and then the flip (probability 1/2), in that
// order, from rng. pad = 0 gives no crop; hflip = false gives no flip and draws nothing for it.
inline CropFlip draw_crop_flip(Rng& rng, int pad, bool hflip) {
    CropFlip cf{pad, pad, false};
    if (pad > 0) {
        cf.dy = static_cast<int>(rng.below(2u * pad + 1u));
        cf.dx = static_cast<int>(rng.below(2u * pad + 1u));
    }
    if (hflip) cf.flip = rng.bernoulli(0.5f);
    return cf;
}

// image: [C, H, W] bytes -> out: [C, H, W] floats.
//   out[c, y, x] = table[c, padded(y + dy, x' + dx)],  x' = W - 1 - x if flipped, else x,
// where padded(i, j) = image[c, i - pad, j - pad] inside the image and 0 outside.
// (torchvision order: crop first, then flip the crop.)
inline void decode_image(const uint8_t* image, int64_t channels, int64_t height, int64_t width,
                         const float* table, int pad, const CropFlip& cf, float* out) {
    const int64_t oy = cf.dy - pad, ox = cf.dx - pad;  // source = destination + offset
    for (int64_t c = 0; c < channels; ++c) {
        const float* t = table + c * 256;
        const float zero = t[0];
        const uint8_t* plane = image + c * height * width;
        for (int64_t y = 0; y < height; ++y) {
            float* row = out + (c * height + y) * width;
            const int64_t sy = y + oy;
            if (sy < 0 || sy >= height) {
                for (int64_t x = 0; x < width; ++x) row[x] = zero;
                continue;
            }
            const uint8_t* src = plane + sy * width;
            if (oy == 0 && ox == 0 && !cf.flip) {  // the common case without augmentation
                for (int64_t x = 0; x < width; ++x) row[x] = t[src[x]];
                continue;
            }
            for (int64_t x = 0; x < width; ++x) {
                const int64_t sx = (cf.flip ? width - 1 - x : x) + ox;
                row[x] = (sx >= 0 && sx < width) ? t[src[sx]] : zero;
            }
        }
    }
}

}  // namespace speq::io
