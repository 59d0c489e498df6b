// Data sets and batches: IDX and CIFAR-10 readers (on small files written here), augmentation
// checked by hand, and the batch loader's order, resume, threading and error behaviour.
#include <doctest/doctest.h>
#include <zlib.h>

#include <atomic>
#include <chrono>
#include <cmath>
#include <filesystem>
#include <fstream>
#include <memory>
#include <set>
#include <string>
#include <thread>
#include <vector>

#include <unistd.h>

#include "gradcheck.hpp"
#include "speq/io/augment.hpp"
#include "speq/io/cifar10.hpp"
#include "speq/io/dataset.hpp"
#include "speq/io/idx.hpp"
#include "speq/io/loader.hpp"

using namespace speq;
using namespace speq::io;
namespace fs = std::filesystem;
using Bytes = std::vector<uint8_t>;

namespace {

// A fresh folder under the system temp dir, removed with everything in it at scope exit.
struct TempDir {
    fs::path path;
    TempDir() {
        static int counter = 0;
        path = fs::temp_directory_path() /
               ("speq_test_data_" + std::to_string(getpid()) + "_" + std::to_string(counter++));
        fs::remove_all(path);
        fs::create_directories(path);
    }
    ~TempDir() {
        std::error_code ec;
        fs::remove_all(path, ec);
    }
    std::string operator/(const std::string& name) const { return (path / name).string(); }
};

void write_file(const std::string& path, const Bytes& bytes) {
    std::ofstream out(path, std::ios::binary);
    out.write(reinterpret_cast<const char*>(bytes.data()), static_cast<std::streamsize>(bytes.size()));
    REQUIRE(out.good());
}

void write_gz(const std::string& path, const Bytes& bytes) {
    gzFile f = gzopen(path.c_str(), "wb");
    REQUIRE(f != nullptr);
    REQUIRE(gzwrite(f, bytes.data(), static_cast<unsigned>(bytes.size())) == int(bytes.size()));
    REQUIRE(gzclose(f) == Z_OK);
}

void put_be32(Bytes& b, uint32_t v) {
    for (int shift = 24; shift >= 0; shift -= 8) b.push_back(static_cast<uint8_t>(v >> shift));
}

uint8_t idx_pixel(int i, int k) { return static_cast<uint8_t>(i * 31 + k * 7); }

Bytes idx_images(int n, int rows, int cols, uint32_t magic = kIdxImagesMagic) {
    Bytes b;
    put_be32(b, magic);
    put_be32(b, n);
    put_be32(b, rows);
    put_be32(b, cols);
    for (int i = 0; i < n; ++i)
        for (int k = 0; k < rows * cols; ++k) b.push_back(idx_pixel(i, k));
    return b;
}

Bytes idx_labels(const std::vector<int>& labels, uint32_t magic = kIdxLabelsMagic) {
    Bytes b;
    put_be32(b, magic);
    put_be32(b, static_cast<uint32_t>(labels.size()));
    for (int l : labels) b.push_back(static_cast<uint8_t>(l));
    return b;
}

std::vector<int> some_labels(int n) {
    std::vector<int> l;
    for (int i = 0; i < n; ++i) l.push_back((i * 3) % 10);
    return l;
}

// The message of the speq::Error that f throws ("" if it throws none).
template <class F>
std::string error_of(F&& f) {
    try {
        f();
    } catch (const Error& e) {
        return e.what();
    }
    return "";
}

bool contains(const std::string& s, const std::string& part) {
    return s.find(part) != std::string::npos;
}

// Every message must name the file and the problem.
#define CHECK_ERROR(expr, file, problem)                              \
    do {                                                              \
        const std::string message_ = error_of([&] { (void)(expr); }); \
        INFO("message: ", message_);                                  \
        CHECK(!message_.empty());                                     \
        CHECK(contains(message_, file));                              \
        CHECK(contains(message_, problem));                           \
    } while (0)

void check_idx_content(const Dataset& d, int n, int rows, int cols) {
    REQUIRE(d.size() == n);
    CHECK(d.channels == 1);
    CHECK(d.height == rows);
    CHECK(d.width == cols);
    CHECK(d.num_classes == 10);
    CHECK(d.labels == some_labels(n));
    int64_t wrong = 0;
    for (int i = 0; i < n; ++i)
        for (int k = 0; k < rows * cols; ++k) wrong += d.image(i)[k] != idx_pixel(i, k);
    CHECK(wrong == 0);
}

// CIFAR-like record files: label (file * 7 + r) % 10, pixel k of record r of file f = f*50 + r*3 + k.
uint8_t cifar_pixel(int f, int r, int k) { return static_cast<uint8_t>(f * 50 + r * 3 + k); }
int cifar_label(int f, int r) { return (f * 7 + r) % 10; }

Bytes cifar_file(int f, int records) {
    Bytes b;
    for (int r = 0; r < records; ++r) {
        b.push_back(static_cast<uint8_t>(cifar_label(f, r)));
        for (int k = 0; k < 3072; ++k) b.push_back(cifar_pixel(f, r, k));
    }
    return b;
}

// data_batch_1..5.bin (files 1-5) and test_batch.bin (file 0), `records` each.
void write_cifar(const std::string& dir, int records) {
    fs::create_directories(dir);
    for (int f = 1; f <= 5; ++f)
        write_file(dir + "/data_batch_" + std::to_string(f) + ".bin", cifar_file(f, records));
    write_file(dir + "/test_batch.bin", cifar_file(0, records));
}

// A data set whose image i says who it is: pixel 0 is i % 256, pixel 1 is i / 256.
Dataset numbered_dataset(int n, int channels = 1, int height = 2, int width = 2) {
    Dataset d;
    d.name = "numbered";
    d.channels = channels;
    d.height = height;
    d.width = width;
    d.num_classes = 10;
    d.pixels.resize(static_cast<size_t>(n) * channels * height * width);
    for (int i = 0; i < n; ++i) {
        uint8_t* p = d.pixels.data() + static_cast<size_t>(i) * d.image_bytes();
        for (int64_t k = 0; k < d.image_bytes(); ++k) p[k] = static_cast<uint8_t>(i * 13 + k * 5);
        p[0] = static_cast<uint8_t>(i % 256);
        p[1] = static_cast<uint8_t>(i / 256);
        d.labels.push_back(i % 10);
    }
    return d;
}

// Image i of a batch from numbered_dataset without normalization or augmentation: which i.
int64_t decode_number(const Batch& b, int64_t i) {
    const float* x = b.images.data() + i * (b.images.numel() / b.images.dim(0));
    return std::lround(x[0] * 255.0f) + 256 * std::lround(x[1] * 255.0f);
}

bool same_batch(const Batch& a, const Batch& b) {
    if (a.labels != b.labels || a.indices != b.indices || a.epoch != b.epoch || a.index != b.index)
        return false;
    if (a.images.shape() != b.images.shape()) return false;
    return std::memcmp(a.images.data(), b.images.data(), sizeof(float) * a.images.numel()) == 0;
}

std::vector<Batch> whole_epoch(BatchLoader& loader, int64_t epoch, int64_t first = 0) {
    loader.start_epoch(epoch, first);
    std::vector<Batch> out;
    Batch b;
    while (loader.next(b)) out.push_back(std::move(b));
    return out;
}

}  // namespace

// ---------------------------------------------------------------------------------------------
// IDX

TEST_CASE("idx: plain and gzip'd files round trip") {
    TempDir dir;
    write_file(dir / "img", idx_images(7, 3, 4));
    write_file(dir / "lab", idx_labels(some_labels(7)));
    write_gz(dir / "img.gz", idx_images(7, 3, 4));
    write_gz(dir / "lab.gz", idx_labels(some_labels(7)));

    Dataset plain = load_idx(dir / "img", dir / "lab");
    check_idx_content(plain, 7, 3, 4);
    CHECK(plain.name == "img");
    check_idx_content(load_idx(dir / "img.gz", dir / "lab.gz"), 7, 3, 4);
    check_idx_content(load_idx(dir / "img.gz", dir / "lab"), 7, 3, 4);  // mixed is fine
    // The gzip magic decides, not the name.
    fs::copy_file(dir / "img.gz", dir / "gz_without_suffix");
    check_idx_content(load_idx(dir / "gz_without_suffix", dir / "lab"), 7, 3, 4);
}

TEST_CASE("idx: a data set larger than one gzip read chunk") {
    TempDir dir;
    // 300 images of 120x120 = 4.3 MB: more than the reader's 4 MiB chunk.
    write_gz(dir / "img.gz", idx_images(300, 120, 120));
    write_gz(dir / "lab.gz", idx_labels(some_labels(300)));
    check_idx_content(load_idx(dir / "img.gz", dir / "lab.gz"), 300, 120, 120);
}

TEST_CASE("idx: load_mnist and load_fashion_mnist find the standard names, plain or .gz") {
    TempDir dir;
    write_gz(dir / "train-images-idx3-ubyte.gz", idx_images(6, 28, 28));
    write_gz(dir / "train-labels-idx1-ubyte.gz", idx_labels(some_labels(6)));
    write_file(dir / "t10k-images-idx3-ubyte", idx_images(4, 28, 28));
    write_file(dir / "t10k-labels-idx1-ubyte", idx_labels(some_labels(4)));

    Dataset train = load_fashion_mnist(dir.path.string(), true);
    check_idx_content(train, 6, 28, 28);
    CHECK(train.name == "fashion-mnist-train");
    CHECK(train.class_names.size() == 10);
    CHECK(train.class_names[9] == "Ankle boot");
    Dataset test = load_mnist(dir.path.string(), false);
    check_idx_content(test, 4, 28, 28);
    CHECK(test.name == "mnist-test");
}

TEST_CASE("idx: every bad input names the file and the problem") {
    TempDir dir;
    const std::string img = dir / "images-idx3", lab = dir / "labels-idx1";
    write_file(lab, idx_labels(some_labels(5)));
    auto load = [&] { return load_idx(img, lab); };

    SUBCASE("wrong magic in the image file") {
        write_file(img, idx_images(5, 2, 2, kIdxLabelsMagic));
        CHECK_ERROR(load(), img, "magic number 2049 (0x00000801) is not 2051");
    }
    SUBCASE("wrong magic in the label file") {
        write_file(img, idx_images(5, 2, 2));
        write_file(lab, idx_labels(some_labels(5), 0x12345678));
        CHECK_ERROR(load(), lab, "magic number 305419896 (0x12345678) is not 2049");
    }
    SUBCASE("image file too short for its header") {
        write_file(img, Bytes{0, 0, 8, 3, 0});
        CHECK_ERROR(load(), img, "file has 5 bytes, too short for the 16-byte IDX image header");
    }
    SUBCASE("zero-sized images") {
        write_file(img, idx_images(5, 0, 2));
        CHECK_ERROR(load(), img, "images of 0x2 pixels");
    }
    SUBCASE("truncated image file") {
        Bytes b = idx_images(5, 2, 2);
        b.pop_back();
        write_file(img, b);
        CHECK_ERROR(load(), img, "file has 35 bytes, header says 5 images of 2x2 = 36 bytes");
        CHECK_ERROR(load(), img, "truncated");
    }
    SUBCASE("trailing bytes after the images, in a gzip'd file") {
        Bytes b = idx_images(5, 2, 2);
        b.push_back(0);
        write_gz(img, b);
        CHECK_ERROR(load(), img, "decompressed file has 37 bytes, header says 5 images");
        CHECK_ERROR(load(), img, "trailing bytes");
    }
    SUBCASE("truncated label file") {
        write_file(img, idx_images(5, 2, 2));
        Bytes b = idx_labels(some_labels(5));
        b.pop_back();
        write_file(lab, b);
        CHECK_ERROR(load(), lab, "file has 12 bytes, header says 5 labels = 13 bytes");
    }
    SUBCASE("trailing bytes after the labels") {
        write_file(img, idx_images(5, 2, 2));
        Bytes b = idx_labels(some_labels(5));
        b.push_back(1);
        write_file(lab, b);
        CHECK_ERROR(load(), lab, "trailing bytes");
    }
    SUBCASE("image and label counts differ") {
        write_file(img, idx_images(6, 2, 2));
        CHECK_ERROR(load(), lab, "holds 5 labels, but " + img + " holds 6 images");
    }
    SUBCASE("label out of range") {
        write_file(img, idx_images(5, 2, 2));
        write_gz(lab + ".gz", idx_labels({1, 2, 3, 12, 4}));
        CHECK_ERROR(load_idx(img, lab + ".gz"), lab + ".gz",
                    "label 12 at index 3 is out of range [0, 10)");
    }
    SUBCASE("missing files") {
        CHECK_ERROR(load(), img, "file not found");
        write_file(img, idx_images(5, 2, 2));
        CHECK_ERROR(load_idx(img, dir / "nope"), dir / "nope", "file not found");
    }
    SUBCASE("a folder where a file should be") {
        CHECK_ERROR(load_idx(dir.path.string(), lab), dir.path.string(), "is a folder");
    }
    SUBCASE("corrupt gzip stream") {
        write_gz(img, idx_images(50, 8, 8));
        Bytes gz = io::detail::read_plain_file(img);
        gz.resize(gz.size() / 2);
        write_file(img, gz);
        CHECK_ERROR(load(), img, "corrupt or truncated gzip data");
    }
}

TEST_CASE("idx: a missing or incomplete MNIST folder names the folder and the expected files") {
    TempDir dir;
    CHECK_ERROR(load_mnist(dir / "absent", true), dir / "absent", "does not exist");
    CHECK_ERROR(load_fashion_mnist(dir.path.string(), true), dir.path.string(),
                "has neither train-images-idx3-ubyte nor train-images-idx3-ubyte.gz");
    write_file(dir / "t10k-images-idx3-ubyte", idx_images(4, 28, 28));
    CHECK_ERROR(load_mnist(dir.path.string(), false), "t10k-labels-idx1-ubyte",
                "expected the IDX files");
}

// ---------------------------------------------------------------------------------------------
// CIFAR-10

TEST_CASE("cifar10: reads the five training files in order and the test file") {
    TempDir dir;
    const std::string bin = dir / "cifar-10-batches-bin";
    write_cifar(bin, 3);
    for (const std::string& folder : {bin, dir.path.string()}) {  // the folder or its parent
        Dataset train = load_cifar10(folder, true, 3);
        REQUIRE(train.size() == 15);
        CHECK(train.channels == 3);
        CHECK(train.height == 32);
        CHECK(train.width == 32);
        CHECK(train.name == "cifar10-train");
        CHECK(train.class_names[3] == "cat");
        for (int f = 1; f <= 5; ++f)
            for (int r = 0; r < 3; ++r) {
                const int i = (f - 1) * 3 + r;
                CHECK(train.labels[i] == cifar_label(f, r));
                for (int k : {0, 1, 1023, 1024, 3071}) CHECK(train.image(i)[k] == cifar_pixel(f, r, k));
            }
        Dataset test = load_cifar10(folder, false, 3);
        REQUIRE(test.size() == 3);
        CHECK(test.labels[2] == cifar_label(0, 2));
        CHECK(test.image(2)[2000] == cifar_pixel(0, 2, 2000));
    }
}

TEST_CASE("cifar10: every bad input names the file and the problem") {
    TempDir dir;
    const std::string bin = dir.path.string();
    write_cifar(bin, 3);
    const std::string f3 = dir / "data_batch_3.bin";

    SUBCASE("default expects 10000 records per file") {
        CHECK_ERROR(load_cifar10(bin, false), dir / "test_batch.bin",
                    "file has 3 records (9219 bytes), expected 10000");
    }
    SUBCASE("missing file") {
        fs::remove(dir / "data_batch_4.bin");
        CHECK_ERROR(load_cifar10(bin, true, 3), dir / "data_batch_4.bin", "not found");
        CHECK(load_cifar10(bin, false, 3).size() == 3);  // the test set is still fine
    }
    SUBCASE("missing folder") {
        CHECK_ERROR(load_cifar10(dir / "absent", true, 3), dir / "absent", "does not exist");
    }
    SUBCASE("empty folder") {
        TempDir empty;
        CHECK_ERROR(load_cifar10(empty.path.string(), false, 3), empty / "test_batch.bin",
                    "not found (expected data_batch_1.bin");
    }
    SUBCASE("truncated file") {
        Bytes b = cifar_file(3, 3);
        b.resize(b.size() - 100);
        write_file(f3, b);
        CHECK_ERROR(load_cifar10(bin, true, 3), f3,
                    "file has 9119 bytes, not a whole number of 3073-byte records");
    }
    SUBCASE("wrong number of records") {
        write_file(f3, cifar_file(3, 2));
        CHECK_ERROR(load_cifar10(bin, true, 3), f3, "file has 2 records (6146 bytes), expected 3");
    }
    SUBCASE("label out of range") {
        Bytes b = cifar_file(3, 3);
        b[2 * kCifar10RecordBytes] = 10;
        write_file(f3, b);
        CHECK_ERROR(load_cifar10(bin, true, 3), f3, "label 10 at record 2 is out of range [0, 10)");
    }
}

// ---------------------------------------------------------------------------------------------
// Normalization and augmentation

TEST_CASE("normalization: statistics and table computed by hand") {
    Dataset d;
    d.name = "tiny";
    d.channels = 2;
    d.height = 1;
    d.width = 2;
    d.num_classes = 2;
    // Two images; channel 0 sees 0, 255, 255, 255; channel 1 sees 51 four times.
    d.pixels = {0, 255, 51, 51, 255, 255, 51, 51};
    d.labels = {0, 1};
    Normalization n = compute_normalization(d);
    // Channel 0: values 0, 1, 1, 1: mean 3/4, population variance 3/16, std sqrt(3)/4.
    CHECK(n.mean[0] == doctest::Approx(0.75).epsilon(1e-7));
    CHECK(n.stddev[0] == doctest::Approx(std::sqrt(3.0) / 4).epsilon(1e-7));
    CHECK(n.mean[1] == doctest::Approx(0.2).epsilon(1e-7));
    CHECK(n.stddev[1] == doctest::Approx(0.0).epsilon(1e-7));

    std::vector<float> t = normalization_table({{0.5f, 0.25f}, {0.5f, 0.25f}}, 2);
    CHECK(t[255] == doctest::Approx(1.0));           // (1 - 0.5) / 0.5
    CHECK(t[0] == doctest::Approx(-1.0));            // (0 - 0.5) / 0.5
    CHECK(t[256 + 51] == doctest::Approx(-0.2));     // (0.2 - 0.25) / 0.25
    CHECK(t[256 + 0] == doctest::Approx(-1.0));      // (0 - 0.25) / 0.25
    std::vector<float> id = normalization_table({}, 3);
    for (int c = 0; c < 3; ++c)
        for (int v = 0; v < 256; ++v)
            if (id[c * 256 + v] != static_cast<float>(v / 255.0)) FAIL("identity table at ", c, ", ", v);

    CHECK_THROWS_WITH_AS(normalization_table({{0.5f}, {0.5f}}, 3),
                         "normalization: 1 means and 1 standard deviations for images with 3 channels",
                         Error);
    CHECK_THROWS_WITH_AS(normalization_table({{0.5f}, {0.0f}}, 1), doctest::Contains("stddev must be > 0"),
                         Error);
}

TEST_CASE("augment: crop of the zero-padded image and flip, checked by hand") {
    // One channel, 3x3, values 1..9; a table that maps v to v (mean 0, "stddev" 1/255 in effect).
    const uint8_t img[9] = {1, 2, 3, 4, 5, 6, 7, 8, 9};
    std::vector<float> t(256);
    for (int v = 0; v < 256; ++v) t[v] = static_cast<float>(v);
    float out[9];
    auto run = [&](int pad, CropFlip cf) {
        decode_image(img, 1, 3, 3, t.data(), pad, cf, out);
        return std::vector<float>(out, out + 9);
    };
    using V = std::vector<float>;
    CHECK(run(0, {0, 0, false}) == V{1, 2, 3, 4, 5, 6, 7, 8, 9});
    CHECK(run(1, {1, 1, false}) == V{1, 2, 3, 4, 5, 6, 7, 8, 9});  // centered crop = unchanged
    CHECK(run(1, {0, 0, false}) == V{0, 0, 0, 0, 1, 2, 0, 4, 5});  // shifted down-right
    CHECK(run(1, {2, 2, false}) == V{5, 6, 0, 8, 9, 0, 0, 0, 0});  // shifted up-left
    CHECK(run(1, {2, 1, false}) == V{4, 5, 6, 7, 8, 9, 0, 0, 0});  // shifted up
    CHECK(run(0, {0, 0, true}) == V{3, 2, 1, 6, 5, 4, 9, 8, 7});   // mirrored
    // Crop first, then mirror the crop: crop {0,0} is [0 0 0; 0 1 2; 0 4 5], mirrored:
    CHECK(run(1, {0, 0, true}) == V{0, 0, 0, 2, 1, 0, 5, 4, 0});
    CHECK(run(2, {0, 4, false}) == V{0, 0, 0, 0, 0, 0, 3, 0, 0});  // pad 2, corner: one pixel left

    // Two channels use their own table rows; the padding is each channel's value of pixel 0.
    const uint8_t img2[8] = {1, 2, 3, 4, 10, 20, 30, 40};  // [2, 2, 2]
    std::vector<float> t2 = normalization_table({{0.0f, 0.5f}, {1.0f, 0.5f}}, 2);
    float out2[8];
    decode_image(img2, 2, 2, 2, t2.data(), 1, {1, 0, true}, out2);
    // Crop offset (dy, dx) = (1, 0) shifts right by one: channel 0 [0 1; 0 3] mirrored [1 0; 3 0].
    CHECK(out2[0] == t2[1]);
    CHECK(out2[1] == t2[0]);
    CHECK(out2[2] == t2[3]);
    CHECK(out2[3] == t2[0]);
    CHECK(out2[4] == t2[256 + 10]);
    CHECK(out2[5] == t2[256 + 0]);
    CHECK(out2[6] == t2[256 + 30]);
    CHECK(out2[7] == t2[256 + 0]);
}

TEST_CASE("augment: draws cover every offset and flip about half the time") {
    Rng rng(5);
    const Rng::State before = rng.save();
    CropFlip none = draw_crop_flip(rng, 0, false);
    CHECK(none.dy == 0);
    CHECK(none.dx == 0);
    CHECK_FALSE(none.flip);
    CHECK(rng.save().state == before.state);  // nothing drawn
    std::set<int> dys, dxs;
    int flips = 0;
    for (int i = 0; i < 2000; ++i) {
        CropFlip cf = draw_crop_flip(rng, 4, true);
        dys.insert(cf.dy);
        dxs.insert(cf.dx);
        flips += cf.flip;
    }
    CHECK(dys == std::set<int>{0, 1, 2, 3, 4, 5, 6, 7, 8});
    CHECK(dxs == dys);
    CHECK(flips > 900);
    CHECK(flips < 1100);
}

// ---------------------------------------------------------------------------------------------
// Batch loader

TEST_CASE("loader: every image exactly once per epoch, labels and pixels travel together") {
    Dataset d = numbered_dataset(37);
    for (bool background : {false, true}) {
        LoaderOptions o;
        o.batch_size = 8;
        o.seed = 11;
        o.background = background;
        BatchLoader loader(d, o);
        CHECK(loader.batches_per_epoch() == 5);
        for (int64_t epoch = 0; epoch < 3; ++epoch) {
            std::vector<Batch> batches = whole_epoch(loader, epoch);
            REQUIRE(batches.size() == 5);
            std::vector<int64_t> seen;
            for (size_t b = 0; b < batches.size(); ++b) {
                const Batch& batch = batches[b];
                CHECK(batch.epoch == epoch);
                CHECK(batch.index == int64_t(b));
                CHECK(batch.images.shape() == Shape{b < 4 ? 8 : 5, 1, 2, 2});
                for (int64_t i = 0; i < batch.size(); ++i) {
                    CHECK(decode_number(batch, i) == batch.indices[i]);
                    CHECK(batch.labels[i] == d.labels[batch.indices[i]]);
                    seen.push_back(batch.indices[i]);
                }
            }
            CHECK(seen == loader.epoch_order(epoch));
            std::sort(seen.begin(), seen.end());
            for (int i = 0; i < 37; ++i) CHECK(seen[i] == i);
        }
    }
}

TEST_CASE("loader: shards of a batch are its consecutive slices, pixels and augmentation alike") {
    Dataset d = numbered_dataset(37);
    LoaderOptions o;
    o.batch_size = 8;
    o.seed = 5;
    o.crop_pad = 1;  // augmented: each shard must draw exactly the crops the whole batch draws
    o.hflip = true;
    BatchLoader whole(d, o);
    for (int count : {2, 3}) {
        std::vector<std::unique_ptr<BatchLoader>> shards;
        for (int s = 0; s < count; ++s) {
            LoaderOptions so = o;
            so.shard_index = s, so.shard_count = count;
            shards.push_back(std::make_unique<BatchLoader>(d, so));
            CHECK(shards.back()->batches_per_epoch() == whole.batches_per_epoch());
        }
        for (int64_t b = 0; b < whole.batches_per_epoch(); ++b) {  // the last batch has 5 images
            const Batch full = whole.make_batch(1, b);
            std::vector<float> joined;
            std::vector<int64_t> indices;
            for (auto& shard : shards) {
                const Batch part = shard->make_batch(1, b);
                joined.insert(joined.end(), part.images.data(), part.images.data() + part.images.numel());
                indices.insert(indices.end(), part.indices.begin(), part.indices.end());
            }
            INFO("shards ", count, ", batch ", b);
            CHECK(indices == full.indices);
            CHECK(joined == std::vector<float>(full.images.data(), full.images.data() + full.images.numel()));
        }
    }
    o.shard_count = 2, o.shard_index = 2;
    CHECK_THROWS_WITH_AS(BatchLoader(d, o), doctest::Contains("shard 2 of 2 does not exist"), Error);
    o.shard_index = 0;
    o.transform = [](Batch&, Rng&) {};
    CHECK_THROWS_WITH_AS(BatchLoader(d, o), doctest::Contains("cannot be combined with shards"), Error);
}

TEST_CASE("loader: order depends on (seed, epoch) only") {
    Dataset d = numbered_dataset(100);
    LoaderOptions o;
    o.seed = 3;
    BatchLoader a(d, o), b(d, o);
    CHECK(a.epoch_order(0) != a.epoch_order(1));
    CHECK(a.epoch_order(1) != a.epoch_order(2));
    CHECK(a.epoch_order(5) == b.epoch_order(5));
    o.seed = 4;
    BatchLoader c(d, o);
    CHECK(c.epoch_order(0) != a.epoch_order(0));
    o.shuffle = false;
    BatchLoader ordered(d, o);
    std::vector<int64_t> identity(100);
    std::iota(identity.begin(), identity.end(), int64_t(0));
    CHECK(ordered.epoch_order(7) == identity);
}

TEST_CASE("loader: drop_last keeps only full batches") {
    Dataset d = numbered_dataset(37);
    LoaderOptions o;
    o.batch_size = 8;
    o.drop_last = true;
    BatchLoader loader(d, o);
    CHECK(loader.batches_per_epoch() == 4);
    std::vector<Batch> batches = whole_epoch(loader, 0);
    REQUIRE(batches.size() == 4);
    std::set<int64_t> seen;
    for (const Batch& b : batches) {
        CHECK(b.size() == 8);
        seen.insert(b.indices.begin(), b.indices.end());
    }
    CHECK(seen.size() == 32);
}

TEST_CASE("loader: a run resumed at (epoch, batch) sees the same batches, on any threads") {
    Dataset d = numbered_dataset(45, 3, 4, 4);
    LoaderOptions o;
    o.batch_size = 10;
    o.seed = 99;
    o.crop_pad = 2;
    o.hflip = true;
    o.normalization = {{0.4f, 0.5f, 0.6f}, {0.2f, 0.25f, 0.3f}};
    o.transform = [](Batch& b, Rng& rng) { b.images[0] += rng.uniform(); };

    BatchLoader first(d, o);
    std::vector<std::vector<Batch>> run;
    for (int64_t e = 0; e < 3; ++e) run.push_back(whole_epoch(first, e));
    CHECK(run[0].size() == 5);

    BatchLoader resumed(d, o);
    std::vector<Batch> rest = whole_epoch(resumed, 1, 2);
    REQUIRE(rest.size() == 3);
    for (int b = 0; b < 3; ++b) CHECK(same_batch(rest[b], run[1][b + 2]));
    std::vector<Batch> next_epoch = whole_epoch(resumed, 2);
    for (int b = 0; b < 5; ++b) CHECK(same_batch(next_epoch[b], run[2][b]));
    CHECK(same_batch(resumed.make_batch(0, 4), run[0][4]));
    CHECK(whole_epoch(resumed, 1, 5).empty());  // starting at the end: nothing left

    // Without the background thread, and with 1 or 2 threads for speq: the same bits.
    LoaderOptions sync = o;
    sync.background = false;
    const int threads = num_threads();
    for (int t : {1, 2}) {
        set_num_threads(t);
        BatchLoader s(d, sync);
        std::vector<Batch> e1 = whole_epoch(s, 1);
        for (int b = 0; b < 5; ++b) CHECK(same_batch(e1[b], run[1][b]));
    }
    set_num_threads(threads);
}

TEST_CASE("loader: augmentation is one of the crops/flips of the image, and varies") {
    Dataset d = numbered_dataset(20, 2, 5, 5);
    LoaderOptions o;
    o.batch_size = 20;
    o.crop_pad = 1;
    o.hflip = true;
    o.normalization = {{0.1f, 0.2f}, {0.3f, 0.4f}};
    BatchLoader loader(d, o);
    const std::vector<float> t = normalization_table(o.normalization, 2);
    std::set<std::vector<int>> used;  // (dy, dx, flip) seen
    for (int64_t epoch = 0; epoch < 3; ++epoch) {
        Batch b = loader.make_batch(epoch, 0);
        for (int64_t i = 0; i < b.size(); ++i) {
            const float* got = b.images.data() + i * 50;
            bool matched = false;
            for (int dy = 0; dy <= 2; ++dy)
                for (int dx = 0; dx <= 2; ++dx)
                    for (bool flip : {false, true}) {
                        float want[50];
                        decode_image(d.image(b.indices[i]), 2, 5, 5, t.data(), 1, {dy, dx, flip}, want);
                        if (!matched && std::memcmp(want, got, sizeof want) == 0) {
                            matched = true;
                            used.insert({dy, dx, int(flip)});
                        }
                    }
            CHECK(matched);
        }
    }
    CHECK(used.size() >= 12);  // 60 draws over 18 choices
}

TEST_CASE("loader: normalization of whole batches, by hand") {
    Dataset d;
    d.name = "two-pixels";
    d.channels = 2;
    d.height = 1;
    d.width = 1;
    d.num_classes = 1;
    d.pixels = {255, 51, 0, 255};  // image 0: (255, 51), image 1: (0, 255)
    d.labels = {0, 0};
    LoaderOptions o;
    o.batch_size = 2;
    o.shuffle = false;
    o.normalization = {{0.5f, 0.25f}, {0.5f, 0.25f}};
    BatchLoader loader(d, o);
    loader.start_epoch(0);
    Batch b;
    REQUIRE(loader.next(b));
    CHECK(b.images.shape() == Shape{2, 2, 1, 1});
    CHECK(b.images[0] == doctest::Approx(1.0));   // (255/255 - 0.5) / 0.5
    CHECK(b.images[1] == doctest::Approx(-0.2));  // (51/255 - 0.25) / 0.25
    CHECK(b.images[2] == doctest::Approx(-1.0));  // (0 - 0.5) / 0.5
    CHECK(b.images[3] == doctest::Approx(3.0));   // (1 - 0.25) / 0.25
    CHECK_FALSE(loader.next(b));
}

TEST_CASE("loader: destroying or restarting mid-epoch does not hang") {
    Dataset d = numbered_dataset(200, 3, 8, 8);
    const auto start = std::chrono::steady_clock::now();
    {
        LoaderOptions o;
        o.batch_size = 1;
        o.prefetch = 1;
        BatchLoader loader(d, o);
        loader.start_epoch(0);
        Batch b;
        REQUIRE(loader.next(b));
        std::this_thread::sleep_for(std::chrono::milliseconds(20));  // the worker is now waiting
    }
    {
        // The worker is busy in a slow transform when the loader goes away.
        std::atomic<int> calls{0};
        LoaderOptions o;
        o.batch_size = 4;
        o.transform = [&calls](Batch&, Rng&) {
            ++calls;
            std::this_thread::sleep_for(std::chrono::milliseconds(30));
        };
        BatchLoader loader(d, o);
        loader.start_epoch(0);
        Batch b;
        REQUIRE(loader.next(b));
        loader.start_epoch(1, 3);  // restart elsewhere mid-epoch
        REQUIRE(loader.next(b));
        CHECK(b.epoch == 1);
        CHECK(b.index == 3);
        CHECK(calls.load() < 20);  // it stopped instead of preparing the whole epoch
    }
    {
        LoaderOptions o;
        BatchLoader never_started(d, o);  // no worker to stop
    }
    const double seconds =
        std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
    CHECK(seconds < 5.0);
}

TEST_CASE("loader: an exception in the worker reaches next(), after the batches before it") {
    Dataset d = numbered_dataset(30);
    for (bool background : {true, false}) {
        LoaderOptions o;
        o.batch_size = 5;
        o.background = background;
        o.transform = [](Batch& b, Rng&) {
            if (b.index == 2) fail("transform: batch ", b.index, " is cursed");
        };
        BatchLoader loader(d, o);
        loader.start_epoch(0);
        Batch b;
        REQUIRE(loader.next(b));
        REQUIRE(loader.next(b));
        CHECK(b.index == 1);
        CHECK_THROWS_WITH_AS(loader.next(b), "transform: batch 2 is cursed", Error);
        CHECK_FALSE(loader.next(b));  // the epoch is over
        loader.start_epoch(1, 3);  // usable again afterwards
        REQUIRE(loader.next(b));
        CHECK(b.index == 3);
    }
}

TEST_CASE("loader: bad options and calls are errors") {
    Dataset d = numbered_dataset(10);
    LoaderOptions o;
    o.batch_size = 0;
    CHECK_THROWS_WITH_AS(BatchLoader(d, o), "BatchLoader: batch_size must be >= 1, got 0", Error);
    o.batch_size = 11;
    o.drop_last = true;
    CHECK_THROWS_WITH_AS(BatchLoader(d, o), doctest::Contains("gives no batches"), Error);
    o = LoaderOptions{};
    o.normalization = {{0.5f, 0.5f}, {0.2f, 0.2f}};
    CHECK_THROWS_WITH_AS(BatchLoader(d, o), doctest::Contains("for images with 1 channels"), Error);
    o = LoaderOptions{};
    o.batch_size = 4;
    BatchLoader loader(d, o);
    Batch b;
    CHECK_THROWS_WITH_AS(loader.next(b), doctest::Contains("call start_epoch"), Error);
    CHECK_THROWS_WITH_AS(loader.start_epoch(0, 4),
                         "BatchLoader::start_epoch: batch 4 is out of range [0, 3] (3 batches per epoch)",
                         Error);
    CHECK_THROWS_WITH_AS(loader.start_epoch(-1), doctest::Contains("epoch must be >= 0"), Error);
    CHECK_THROWS_WITH_AS(loader.make_batch(0, 3), doctest::Contains("out of range [0, 2]"), Error);
    Dataset broken = d;
    broken.labels[4] = 10;
    CHECK_THROWS_WITH_AS(BatchLoader(broken, o),
                         "dataset 'numbered': label 10 at index 4 is out of range [0, 10)", Error);
}
