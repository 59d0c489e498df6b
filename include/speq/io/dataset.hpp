// speq/io/dataset.hpp: an image classification data set held in memory, compactly.
//
// Pixels stay uint8 ([N, C, H, W], 1 byte each: CIFAR-10's 50,000 training images take 150 MB
// instead of 600 MB as floats); the batch loader (loader.hpp) turns a few of them at a time into
// normalized float tensors. The readers (idx.hpp, cifar10.hpp) build a Dataset from files.
#pragma once

#include <cerrno>
#include <cstdint>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <string>
#include <vector>

#include "speq/core/error.hpp"

namespace speq::io {

struct Dataset {
    std::string name;                      // "cifar10-train", "fashion-mnist-test", ...
    int64_t channels = 0, height = 0, width = 0;
    int num_classes = 0;
    std::vector<uint8_t> pixels;           // [N, C, H, W], row-major, one byte per pixel value
    std::vector<int> labels;               // [N], each in [0, num_classes)
    std::vector<std::string> class_names;  // [num_classes] or empty

    int64_t size() const { return static_cast<int64_t>(labels.size()); }
    int64_t image_bytes() const { return channels * height * width; }
    // Image i: image_bytes() bytes, channel planes one after another.
    const uint8_t* image(int64_t i) const { return pixels.data() + i * image_bytes(); }

    // Throws speq::Error if the fields disagree (sizes, label range); the readers call it last.
    void validate() const {
        SPEQ_CHECK(channels >= 1 && height >= 1 && width >= 1, "dataset '", name,
                   "': image shape [", channels, ", ", height, ", ", width, "] must be positive");
        SPEQ_CHECK(num_classes >= 1, "dataset '", name, "': num_classes must be >= 1, got ",
                   num_classes);
        SPEQ_CHECK(pixels.size() == labels.size() * static_cast<size_t>(image_bytes()), "dataset '",
                   name, "': ", pixels.size(), " pixel bytes do not hold ", labels.size(),
                   " images of ", image_bytes(), " bytes");
        SPEQ_CHECK(class_names.empty() || static_cast<int>(class_names.size()) == num_classes,
                   "dataset '", name, "': ", class_names.size(), " class names for ", num_classes,
                   " classes");
        for (size_t i = 0; i < labels.size(); ++i)
            SPEQ_CHECK(labels[i] >= 0 && labels[i] < num_classes, "dataset '", name, "': label ",
                       labels[i], " at index ", i, " is out of range [0, ", num_classes, ")");
    }
};

namespace detail {

// The whole file as bytes; errors name the file and the reason.
inline std::vector<uint8_t> read_plain_file(const std::string& path) {
    std::error_code ec;
    SPEQ_CHECK(std::filesystem::exists(path, ec), path, ": file not found");
    SPEQ_CHECK(!std::filesystem::is_directory(path, ec), path, ": is a folder, expected a file");
    std::ifstream in(path, std::ios::binary);
    if (!in) fail(path, ": cannot open: ", std::strerror(errno));
    in.seekg(0, std::ios::end);
    const std::streamoff size = in.tellg();
    in.seekg(0, std::ios::beg);
    SPEQ_CHECK(size >= 0, path, ": cannot determine the file size");
    std::vector<uint8_t> bytes(static_cast<size_t>(size));
    if (size > 0) in.read(reinterpret_cast<char*>(bytes.data()), size);
    SPEQ_CHECK(in.gcount() == size, path, ": read ", in.gcount(), " of ", size, " bytes");
    return bytes;
}

inline bool is_regular_file(const std::string& path) {
    std::error_code ec;
    return std::filesystem::is_regular_file(path, ec);
}

}  // namespace detail
}  // namespace speq::io
