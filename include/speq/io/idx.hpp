// speq/io/idx.hpp: MNIST and Fashion-MNIST, read from IDX files, plain or gzip'd.
//
// IDX (LeCun et al.): a big-endian header, then raw bytes.
//   images: int32 magic 2051 (0x00000803: unsigned bytes, 3 dimensions), int32 count, rows, cols,
//           then count * rows * cols pixel bytes, row-major;
//   labels: int32 magic 2049 (0x00000801: unsigned bytes, 1 dimension), int32 count,
//           then count label bytes.
// A file starting with the gzip magic bytes 1f 8b is decompressed with zlib first; every size
// check then applies to the decompressed bytes.
#pragma once

#include <zlib.h>

#include <climits>
#include <cstdint>
#include <filesystem>
#include <fstream>
#include <string>
#include <vector>

#include "speq/core/error.hpp"
#include "speq/io/dataset.hpp"

namespace speq::io {

inline constexpr uint32_t kIdxImagesMagic = 2051;
inline constexpr uint32_t kIdxLabelsMagic = 2049;

namespace detail {

inline bool has_gzip_magic(const std::string& path) {
    std::ifstream in(path, std::ios::binary);
    unsigned char magic[2] = {0, 0};
    in.read(reinterpret_cast<char*>(magic), 2);
    return in.gcount() == 2 && magic[0] == 0x1f && magic[1] == 0x8b;
}

inline std::vector<uint8_t> read_gzip_file(const std::string& path) {
    gzFile file = gzopen(path.c_str(), "rb");
    SPEQ_CHECK(file != nullptr, path, ": cannot open for gzip reading");
    gzbuffer(file, 1 << 17);
    std::vector<uint8_t> bytes;
    const size_t chunk = size_t(1) << 22;
    for (;;) {
        const size_t old = bytes.size();
        bytes.resize(old + chunk);
        const int got = gzread(file, bytes.data() + old, static_cast<unsigned>(chunk));
        int errnum = Z_OK;
        const char* message = gzerror(file, &errnum);
        if (got < 0 || (errnum != Z_OK && errnum != Z_STREAM_END)) {
            std::string why = message ? message : "unknown error";
            gzclose(file);
            fail(path, ": corrupt or truncated gzip data (", why, ")");
        }
        bytes.resize(old + static_cast<size_t>(got));
        if (got == 0) break;
    }
    gzclose(file);
    return bytes;
}

// The file's bytes, decompressed if it starts with the gzip magic 1f 8b.
inline std::vector<uint8_t> read_maybe_gzip_file(const std::string& path, bool* was_gzip = nullptr) {
    std::error_code ec;
    SPEQ_CHECK(std::filesystem::exists(path, ec), path, ": file not found");
    const bool gz = !std::filesystem::is_directory(path, ec) && has_gzip_magic(path);
    if (was_gzip) *was_gzip = gz;
    return gz ? read_gzip_file(path) : read_plain_file(path);
}

inline uint32_t read_be32(const uint8_t* p) {
    return (uint32_t(p[0]) << 24) | (uint32_t(p[1]) << 16) | (uint32_t(p[2]) << 8) | uint32_t(p[3]);
}

// "magic number 2049 (0x00000801)"
inline std::string describe_magic(uint32_t magic) {
    static const char* hex = "0123456789abcdef";
    std::string h = "0x";
    for (int shift = 28; shift >= 0; shift -= 4) h += hex[(magic >> shift) & 15u];
    return std::to_string(magic) + " (" + h + ")";
}

}  // namespace detail

// Reads an IDX image file and its IDX label file into a Dataset of [N, 1, rows, cols] images.
// Each file may be plain or gzip'd. Checks the magic numbers, the dimensions, that each file's
// size is exactly what its header says, that both files hold the same count, and the labels.
inline Dataset load_idx(const std::string& images_path, const std::string& labels_path,
                        int num_classes = 10, std::string name = "") {
    SPEQ_CHECK(num_classes >= 1, "load_idx: num_classes must be >= 1, got ", num_classes);
    Dataset data;
    data.name = name.empty() ? std::filesystem::path(images_path).filename().string() : name;
    data.num_classes = num_classes;

    // Images.
    bool gz = false;
    std::vector<uint8_t> bytes = detail::read_maybe_gzip_file(images_path, &gz);
    const char* has = gz ? ": decompressed file has " : ": file has ";
    SPEQ_CHECK(bytes.size() >= 16, images_path, has, bytes.size(),
               " bytes, too short for the 16-byte IDX image header");
    const uint32_t magic = detail::read_be32(bytes.data());
    if (magic != kIdxImagesMagic)
        fail(images_path, ": magic number ", detail::describe_magic(magic), " is not ",
             detail::describe_magic(kIdxImagesMagic), ", IDX images",
             magic == kIdxLabelsMagic ? " (this is an IDX label file)" : "");
    const uint64_t count = detail::read_be32(bytes.data() + 4);
    const uint64_t rows = detail::read_be32(bytes.data() + 8);
    const uint64_t cols = detail::read_be32(bytes.data() + 12);
    SPEQ_CHECK(rows >= 1 && cols >= 1 && rows <= 65536 && cols <= 65536, images_path,
               ": header says images of ", rows, "x", cols, " pixels; expected 1 to 65536 each");
    const uint64_t expected = 16 + count * rows * cols;  // < 2^32 * 2^32 = 2^64: no overflow
    if (bytes.size() != expected)
        fail(images_path, has, bytes.size(), " bytes, header says ", count, " images of ", rows,
             "x", cols, " = ", expected, " bytes (16 header + ", count * rows * cols, " pixels); ",
             bytes.size() < expected ? "the file is truncated" : "the file has trailing bytes");
    data.channels = 1;
    data.height = static_cast<int64_t>(rows);
    data.width = static_cast<int64_t>(cols);
    bytes.erase(bytes.begin(), bytes.begin() + 16);
    data.pixels = std::move(bytes);

    // Labels.
    bytes = detail::read_maybe_gzip_file(labels_path, &gz);
    has = gz ? ": decompressed file has " : ": file has ";
    SPEQ_CHECK(bytes.size() >= 8, labels_path, has, bytes.size(),
               " bytes, too short for the 8-byte IDX label header");
    const uint32_t label_magic = detail::read_be32(bytes.data());
    if (label_magic != kIdxLabelsMagic)
        fail(labels_path, ": magic number ", detail::describe_magic(label_magic), " is not ",
             detail::describe_magic(kIdxLabelsMagic), ", IDX labels",
             label_magic == kIdxImagesMagic ? " (this is an IDX image file)" : "");
    const uint64_t label_count = detail::read_be32(bytes.data() + 4);
    if (bytes.size() != 8 + label_count)
        fail(labels_path, has, bytes.size(), " bytes, header says ", label_count, " labels = ",
             8 + label_count, " bytes (8 header + ", label_count, " labels); ",
             bytes.size() < 8 + label_count ? "the file is truncated" : "the file has trailing bytes");
    SPEQ_CHECK(label_count == count, labels_path, ": holds ", label_count, " labels, but ",
               images_path, " holds ", count, " images");
    data.labels.resize(count);
    for (uint64_t i = 0; i < count; ++i) {
        const int label = bytes[8 + i];
        SPEQ_CHECK(label < num_classes, labels_path, ": label ", label, " at index ", i,
                   " is out of range [0, ", num_classes, ")");
        data.labels[i] = label;
    }
    data.validate();
    return data;
}

namespace detail {

// dir/stem or dir/stem.gz, whichever exists (plain first); errors list what was looked for.
inline std::string find_idx_file(const std::string& dir, const std::string& stem,
                                 const char* what) {
    namespace fs = std::filesystem;
    std::error_code ec;
    SPEQ_CHECK(fs::is_directory(dir, ec), what, ": folder ", dir, " does not exist");
    const std::string plain = (fs::path(dir) / stem).string();
    if (is_regular_file(plain)) return plain;
    if (is_regular_file(plain + ".gz")) return plain + ".gz";
    fail(what, ": ", dir, " has neither ", stem, " nor ", stem,
         ".gz (expected the IDX files train-images-idx3-ubyte, train-labels-idx1-ubyte, "
         "t10k-images-idx3-ubyte, t10k-labels-idx1-ubyte, plain or .gz)");
}

inline Dataset load_idx_pair(const std::string& dir, bool train, const char* what,
                             const std::string& name, std::vector<std::string> class_names) {
    const std::string prefix = train ? "train" : "t10k";
    const std::string images = find_idx_file(dir, prefix + "-images-idx3-ubyte", what);
    const std::string labels = find_idx_file(dir, prefix + "-labels-idx1-ubyte", what);
    Dataset data = load_idx(images, labels, 10, name + (train ? "-train" : "-test"));
    data.class_names = std::move(class_names);
    return data;
}

}  // namespace detail

// MNIST from a folder holding the four standard IDX files (plain or .gz): 60,000 training or
// 10,000 test images of [1, 28, 28], labels 0-9.
inline Dataset load_mnist(const std::string& dir, bool train) {
    return detail::load_idx_pair(dir, train, "load_mnist", "mnist",
                                 {"0", "1", "2", "3", "4", "5", "6", "7", "8", "9"});
}

// Fashion-MNIST: same files and format as MNIST (Debian: /usr/share/datasets/fashion-mnist).
inline Dataset load_fashion_mnist(const std::string& dir, bool train) {
    return detail::load_idx_pair(dir, train, "load_fashion_mnist", "fashion-mnist",
                                 {"T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal",
                                  "Shirt", "Sneaker", "Bag", "Ankle boot"});
}

}  // namespace speq::io
