// libFuzzer harness: the IDX reader (MNIST / Fashion-MNIST), plain and gzip'd.
// Input: 1 flag byte, 2 bytes (little-endian) giving the length of the image file, the image
// file, then the label file. Flags: bit 0 / bit 1 gzip the image / label file here first (to
// reach the IDX checks behind valid gzip), bit 2 reads the pair through load_mnist(folder)
// instead of load_idx(paths), bits 4-7 give num_classes - 1. Raw inputs that start with the gzip
// magic 1f 8b test the decompression of damaged streams. See fuzz_io_common.hpp for the cost of
// going through files.
#include "fuzz_io_common.hpp"
#include "speq/io/idx.hpp"

using namespace speq;

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
    if (size < 3) return 0;
    const uint8_t flags = data[0];
    size_t split = static_cast<size_t>(data[1]) | (static_cast<size_t>(data[2]) << 8);
    data += 3, size -= 3;
    if (split > size) split = size;
    std::vector<uint8_t> images(data, data + split), labels(data + split, data + size);
    if (flags & 1) images = fuzz::gzip(images.data(), images.size());
    if (flags & 2) labels = fuzz::gzip(labels.data(), labels.size());

    const std::filesystem::path& dir = fuzz::work_dir("idx");
    const std::filesystem::path image_path = dir / "train-images-idx3-ubyte", label_path = dir / "train-labels-idx1-ubyte";
    fuzz::write_file(image_path, images.data(), images.size());
    fuzz::write_file(label_path, labels.data(), labels.size());
    try {
        io::Dataset d = (flags & 4) ? io::load_mnist(dir.string(), /*train=*/true)
                                    : io::load_idx(image_path.string(), label_path.string(), 1 + (flags >> 4));
        // What was accepted is consistent (validate() throws otherwise) and every label is in range.
        d.validate();
        if (d.size() > 0 && d.image(d.size() - 1) + d.image_bytes() != d.pixels.data() + d.pixels.size())
            __builtin_trap();
    } catch (const Error&) {
    }
    return 0;
}
