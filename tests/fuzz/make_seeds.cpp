// Writes the seed corpora and dictionaries of the fuzz harnesses into a folder (run.sh calls it):
// small valid inputs made with speq's own writers, so they follow the formats as the code has
// them today, plus a few near misses. Usage: make_seeds OUT_DIR
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <string>
#include <vector>

#include "fuzz_io_common.hpp"
#include "speq/io/config.hpp"
#include "speq/io/safetensors.hpp"

using namespace speq;
namespace fs = std::filesystem;

namespace {

void put(const fs::path& path, const std::string& bytes) {
    fs::create_directories(path.parent_path());
    std::ofstream(path, std::ios::binary) << bytes;
}

std::string be32(uint32_t v) { return {char(v >> 24), char(v >> 16), char(v >> 8), char(v)}; }
std::string le16(uint16_t v) { return {char(v & 255), char(v >> 8)}; }

// The harness's input: flags, the image file's length, the image file, the label file.
std::string idx_input(uint8_t flags, const std::string& images, const std::string& labels) {
    return std::string(1, char(flags)) + le16(static_cast<uint16_t>(images.size())) + images + labels;
}

std::string gz(const std::string& s) {
    std::vector<uint8_t> z = fuzz::gzip(reinterpret_cast<const uint8_t*>(s.data()), s.size());
    return std::string(z.begin(), z.end());
}

// A safetensors file with a hand-written header (for dtypes speq does not write).
std::string raw_safetensors(const std::string& header, const std::string& data) {
    std::string h = header;
    h.append((8 - h.size() % 8) % 8, ' ');
    std::string out;
    for (int i = 0; i < 8; ++i) out += char((h.size() >> (8 * i)) & 255);
    return out + h + data;
}

}  // namespace

int main(int argc, char** argv) {
    if (argc != 2) {
        std::fprintf(stderr, "usage: make_seeds OUT_DIR\n");
        return 2;
    }
    const fs::path out = argv[1];

    // safetensors
    const Tensor a = Tensor::of({2, 2}, {1, 2, 3, 4}), b = Tensor::of({1}, {5}), empty = Tensor::zeros({0, 3});
    put(out / "safetensors/two", io::safetensors_bytes({{"w", &a}, {"b", &b}}, {{"config", "{\"epochs\": 1}"}}));
    put(out / "safetensors/empty_tensor", io::safetensors_bytes({{"e", &empty}, {"s", &b}}));
    put(out / "safetensors/no_tensors", io::safetensors_bytes({}));
    put(out / "safetensors/dtypes",
        raw_safetensors("{\"h\":{\"dtype\":\"F16\",\"shape\":[2],\"data_offsets\":[0,4]},"
                        "\"n\":{\"dtype\":\"I64\",\"shape\":[],\"data_offsets\":[4,12]},"
                        "\"u\":{\"dtype\":\"BOOL\",\"shape\":[1,1],\"data_offsets\":[12,13]}}",
                        std::string("\x00\x3c\x00\xc0", 4) + std::string("\x07\0\0\0\0\0\0\0", 8) + "\x01"));

    // config: the defaults, a small speq config, --set lines
    put(out / "config/defaults.json", io::to_json(io::TrainConfig{}).dump(2));
    put(out / "config/small.json", "{\"method\": \"speq\", \"weight_bits\": 2, \"act_bits\": 2, \"lr_milestones\": [5, 10],"
                                   " \"speq\": {\"u\": 0.4, \"draw\": \"uniform\"}, \"out_dir\": \"runs/x\"}");
    put(out / "config/overrides", "speq.u=0.4\nepochs=3\nmethod=speq\nlr_schedule=step\nlr_milestones=[1,2]\nout_dir=a b");

    // IDX: 2 images of 3x4 pixels and their labels
    const std::string images = be32(2051) + be32(2) + be32(3) + be32(4) + std::string(24, '\x80');
    const std::string labels = be32(2049) + be32(2) + std::string("\x01\x03", 2);
    put(out / "idx/plain", idx_input(0x90, images, labels));
    put(out / "idx/gzip_here", idx_input(0x93, images, labels));
    put(out / "idx/gzip_raw", idx_input(0x90, gz(images), gz(labels)));
    put(out / "idx/mnist_folder", idx_input(0x94, images, labels));
    put(out / "idx/swapped", idx_input(0x90, labels, images));

    // CIFAR: one record of the test set, and one record per training file
    std::string record(1 + 3072, '\x40');
    record[0] = 7;
    put(out / "cifar/test_one", std::string(1, '\0') + record);
    put(out / "cifar/train_one", std::string(1, '\1') + record);
    put(out / "cifar/bad_label", std::string(1, '\0') + std::string(1, '\x0a') + record.substr(1));

    // Dictionaries (libFuzzer -dict): the words of each format.
    std::string dict;
    for (const io::ConfigField& f : io::config_fields()) {
        dict += "\"\\\"" + f.key.substr(f.key.rfind('.') + 1) + "\\\"\"\n";
        dict += "\"" + f.key + "=\"\n";
        for (const std::string& c : f.choices) dict += "\"\\\"" + c + "\\\"\"\n";
    }
    put(out / "config.dict", dict);
    std::string st;
    for (const char* w : {"__metadata__", "dtype", "shape", "data_offsets", "speq_format", "F32", "F64", "F16", "BF16",
                          "I64", "I32", "I16", "I8", "U64", "U32", "U16", "U8", "BOOL", "F8_E4M3"})
        st += "\"\\\"" + std::string(w) + "\\\"\"\n";
    put(out / "safetensors.dict", st);
    std::printf("seeds written to %s\n", out.c_str());
    return 0;
}
