// speq/io/cifar10.hpp: CIFAR-10 (Krizhevsky 2009), binary version.
//
// The folder cifar-10-batches-bin/ (from cifar-10-binary.tar.gz; data/fetch_cifar10.sh fetches
// and verifies it) holds data_batch_1.bin .. data_batch_5.bin (training) and test_batch.bin.
// Each file is 10,000 records of 3,073 bytes: 1 label byte (0-9), then the 32x32 red plane,
// green plane and blue plane, each row-major. That is exactly the [C, H, W] layout of Dataset.
#pragma once

#include <cstdint>
#include <cstring>
#include <filesystem>
#include <string>
#include <vector>

#include "speq/core/error.hpp"
#include "speq/io/dataset.hpp"

namespace speq::io {

inline constexpr int64_t kCifar10ImageBytes = 3 * 32 * 32;
inline constexpr int64_t kCifar10RecordBytes = 1 + kCifar10ImageBytes;
inline constexpr int64_t kCifar10RecordsPerFile = 10000;

// CIFAR-10 training (50,000 images) or test set (10,000), images [3, 32, 32], labels 0-9.
// `dir` is the cifar-10-batches-bin folder or its parent. `records_per_file` is what each file
// must hold: 10000 for the real data; tests pass small numbers for small synthetic files.
inline Dataset load_cifar10(const std::string& dir, bool train,
                            int64_t records_per_file = kCifar10RecordsPerFile) {
    namespace fs = std::filesystem;
    SPEQ_CHECK(records_per_file >= 1, "load_cifar10: records_per_file must be >= 1, got ",
               records_per_file);
    std::error_code ec;
    SPEQ_CHECK(fs::is_directory(dir, ec), "load_cifar10: folder ", dir,
               " does not exist (data/fetch_cifar10.sh downloads and unpacks CIFAR-10)");
    fs::path folder = dir;
    if (fs::is_directory(folder / "cifar-10-batches-bin", ec)) folder /= "cifar-10-batches-bin";

    std::vector<std::string> files;
    if (train)
        for (int i = 1; i <= 5; ++i) files.push_back("data_batch_" + std::to_string(i) + ".bin");
    else
        files.push_back("test_batch.bin");
    // Check that every file is there before reading any: one clear message for a wrong folder.
    for (const std::string& f : files)
        SPEQ_CHECK(detail::is_regular_file((folder / f).string()), "load_cifar10: ",
                   (folder / f).string(), " not found (expected data_batch_1.bin .. "
                   "data_batch_5.bin and test_batch.bin from cifar-10-binary.tar.gz in ", dir,
                   " or ", dir, "/cifar-10-batches-bin; data/fetch_cifar10.sh fetches them)");

    Dataset data;
    data.name = train ? "cifar10-train" : "cifar10-test";
    data.channels = 3;
    data.height = 32;
    data.width = 32;
    data.num_classes = 10;
    data.class_names = {"airplane", "automobile", "bird", "cat",  "deer",
                        "dog",      "frog",       "horse", "ship", "truck"};
    const int64_t total = records_per_file * static_cast<int64_t>(files.size());
    data.pixels.resize(static_cast<size_t>(total * kCifar10ImageBytes));
    data.labels.resize(static_cast<size_t>(total));

    int64_t next = 0;  // index of the next image in data
    for (const std::string& f : files) {
        const std::string path = (folder / f).string();
        const std::vector<uint8_t> bytes = detail::read_plain_file(path);
        const int64_t size = static_cast<int64_t>(bytes.size());
        SPEQ_CHECK(size % kCifar10RecordBytes == 0, path, ": file has ", size,
                   " bytes, not a whole number of ", kCifar10RecordBytes,
                   "-byte records (1 label + 3072 pixels); the file is truncated or damaged");
        SPEQ_CHECK(size / kCifar10RecordBytes == records_per_file, path, ": file has ",
                   size / kCifar10RecordBytes, " records (", size, " bytes), expected ",
                   records_per_file, " (", records_per_file * kCifar10RecordBytes, " bytes)");
        for (int64_t r = 0; r < records_per_file; ++r, ++next) {
            const uint8_t* record = bytes.data() + r * kCifar10RecordBytes;
            SPEQ_CHECK(record[0] < 10, path, ": label ", int(record[0]), " at record ", r,
                       " is out of range [0, 10)");
            data.labels[next] = record[0];
            std::memcpy(data.pixels.data() + next * kCifar10ImageBytes, record + 1,
                        kCifar10ImageBytes);
        }
    }
    data.validate();
    return data;
}

}  // namespace speq::io
