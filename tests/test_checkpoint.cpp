// Checkpoints: the safetensors bytes of a tiny file written out by hand, round trips, every
// hostile-file case with its message, assign_tensors' errors, and atomic writes (the old file
// survives a failing writer; no temporary is left behind; unwritable folders fail clearly).
#include <doctest/doctest.h>

#include <fcntl.h>
#include <unistd.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <string>
#include <vector>

#include "gradcheck.hpp"
#include "speq/io/atomic_file.hpp"
#include "speq/io/safetensors.hpp"

using namespace speq;
using namespace speq::io;
namespace fs = std::filesystem;

namespace {

// A fresh folder under the system temp dir, removed with everything in it at scope exit.
struct TempDir {
    fs::path path;
    TempDir() {
        static int counter = 0;
        path = fs::temp_directory_path() /
               ("speq_test_ckpt_" + std::to_string(getpid()) + "_" + std::to_string(counter++));
        fs::remove_all(path);
        fs::create_directories(path);
    }
    ~TempDir() {
        std::error_code ec;
        fs::remove_all(path, ec);
    }
    std::string operator/(const std::string& name) const { return (path / name).string(); }
    // Names of everything in the folder (to see leftovers such as temporaries).
    std::vector<std::string> listing() const {
        std::vector<std::string> names;
        for (const auto& e : fs::directory_iterator(path)) names.push_back(e.path().filename().string());
        std::sort(names.begin(), names.end());
        return names;
    }
};

void write_raw(const std::string& path, const std::string& bytes) {
    std::ofstream out(path, std::ios::binary);
    out.write(bytes.data(), static_cast<std::streamsize>(bytes.size()));
}

std::string read_raw(const std::string& path) {
    std::ifstream in(path, std::ios::binary);
    return std::string(std::istreambuf_iterator<char>(in), std::istreambuf_iterator<char>());
}

std::string le64(uint64_t n) {
    std::string s(8, '\0');
    for (int i = 0; i < 8; ++i) s[i] = static_cast<char>((n >> (8 * i)) & 0xff);
    return s;
}

// A safetensors file from header text and data bytes (no padding: readers must not need it).
std::string st_file(const std::string& header, const std::string& data = "") { return le64(header.size()) + header + data; }

std::string floats(std::initializer_list<float> values) {
    std::string s;
    for (float v : values) s.append(reinterpret_cast<const char*>(&v), 4);
    return s;
}

TensorFile parse(const std::string& bytes) {
    return parse_safetensors(reinterpret_cast<const uint8_t*>(bytes.data()), bytes.size(), "bad.safetensors");
}

// The message of the speq::Error that parsing `bytes` throws ("" if it does not throw).
std::string parse_error(const std::string& bytes) {
    try {
        parse(bytes);
    } catch (const Error& e) {
        return e.what();
    }
    return "";
}

void check_error_contains(const std::string& message, std::initializer_list<const char*> parts) {
    INFO("message: " << message);
    CHECK(!message.empty());
    for (const char* p : parts) CHECK(message.find(p) != std::string::npos);
}

bool same_bits(const Tensor& a, const Tensor& b) {
    return a.shape() == b.shape() &&
           (a.numel() == 0 || std::memcmp(a.data(), b.data(), sizeof(float) * a.numel()) == 0);
}

}  // namespace

TEST_CASE("safetensors: the bytes of a tiny file match the format written out by hand") {
    const Tensor w = Tensor::of({2, 2}, {1.0f, -2.0f, 0.5f, 0.0f});
    const Tensor b = Tensor::of({1}, {3.0f});
    const std::string bytes = safetensors_bytes({{"w", &w}, {"b", &b}}, {{"epoch", "7"}});

    // 159 bytes of JSON + 1 space of padding = 160 = 0xa0, little-endian u64.
    const std::string header =
        "{\"__metadata__\":{\"epoch\":\"7\",\"speq_format\":\"1\"},"
        "\"w\":{\"dtype\":\"F32\",\"shape\":[2,2],\"data_offsets\":[0,16]},"
        "\"b\":{\"dtype\":\"F32\",\"shape\":[1],\"data_offsets\":[16,20]}} ";
    const unsigned char length[8] = {0xa0, 0, 0, 0, 0, 0, 0, 0};
    const unsigned char data[20] = {0x00, 0x00, 0x80, 0x3f,   // 1.0f
                                    0x00, 0x00, 0x00, 0xc0,   // -2.0f
                                    0x00, 0x00, 0x00, 0x3f,   // 0.5f
                                    0x00, 0x00, 0x00, 0x00,   // 0.0f
                                    0x00, 0x00, 0x40, 0x40};  // 3.0f
    const std::string expected = std::string(reinterpret_cast<const char*>(length), 8) + header +
                                 std::string(reinterpret_cast<const char*>(data), 20);
    CHECK(header.size() == 160);
    CHECK(bytes == expected);
    CHECK((bytes.size() - 20) % 8 == 0);  // the data section starts 8-byte aligned

    TempDir dir;
    save_safetensors(dir / "tiny.safetensors", {{"w", &w}, {"b", &b}}, {{"epoch", "7"}});
    CHECK(read_raw(dir / "tiny.safetensors") == expected);
}

TEST_CASE("safetensors: save then load gives the same tensors, order and metadata") {
    TempDir dir;
    Rng rng(3);
    Tensor conv = randn({16, 3, 3, 3}, rng);
    Tensor bias = randn({16}, rng);
    Tensor scalar = Tensor::full({}, -0.0f);
    Tensor empty = Tensor::zeros({0, 5});
    Tensor special = Tensor::of({4}, {INFINITY, -INFINITY, 1e-40f, 3.4e38f});
    const std::map<std::string, std::string> meta = {{"config", "{\"lr\": 0.1}"}, {"epoch", "12"}, {"ünïcode", "ok ✓"}};
    const NamedConstTensors tensors = {{"layer1.0.conv1.weight", &conv}, {"fc.bias", &bias}, {"step", &scalar},
                                       {"empty", &empty}, {"special", &special}};
    save_safetensors(dir / "a.safetensors", tensors, meta);

    const TensorFile f = load_safetensors(dir / "a.safetensors");
    REQUIRE(f.tensors.size() == tensors.size());
    for (size_t i = 0; i < tensors.size(); ++i) {
        CHECK(f.tensors[i].first == tensors[i].first);
        CHECK(same_bits(f.tensors[i].second, *tensors[i].second));
    }
    CHECK(f.find("fc.bias") != nullptr);
    CHECK(f.find("nope") == nullptr);
    CHECK(f.find("step")->shape() == Shape{});
    CHECK(std::signbit((*f.find("step"))[0]));
    CHECK(f.metadata.at("epoch") == "12");
    CHECK(f.metadata.at("config") == "{\"lr\": 0.1}");
    CHECK(f.metadata.at("ünïcode") == "ok ✓");
    CHECK(f.metadata.at(kFormatKey) == kFormatVersion);
    CHECK(dir.listing() == std::vector<std::string>{"a.safetensors"});

    // A model's mutable state() can be saved directly; overwriting replaces the file.
    NamedMutableTensors mutable_state = {{"fc.bias", &bias}};
    save_safetensors(dir / "a.safetensors", mutable_state, {});
    CHECK(load_safetensors(dir / "a.safetensors").tensors.size() == 1);
}

TEST_CASE("safetensors: other dtypes are converted to float32 on reading, order in the header does not matter") {
    // Entries listed out of offset order, as another writer may do. F16 -1.5 = be00, smallest
    // normal 2^-14 = 0400, smallest subnormal 2^-24 = 0001; BF16 1.0 = 3f80; I64 7; F64 0.25.
    std::string data;
    const unsigned char f16[6] = {0x00, 0xbe, 0x00, 0x04, 0x01, 0x00};
    data.append(reinterpret_cast<const char*>(f16), 6);
    const unsigned char bf16[2] = {0x80, 0x3f};
    data.append(reinterpret_cast<const char*>(bf16), 2);
    const int64_t i64 = 7;
    data.append(reinterpret_cast<const char*>(&i64), 8);
    const double f64 = 0.25;
    data.append(reinterpret_cast<const char*>(&f64), 8);
    const std::string header =
        "{\"d\":{\"dtype\":\"F64\",\"shape\":[],\"data_offsets\":[16,24]},"
        "\"h\":{\"dtype\":\"F16\",\"shape\":[3],\"data_offsets\":[0,6]},"
        "\"n\":{\"dtype\":\"I64\",\"shape\":[1],\"data_offsets\":[8,16]},"
        "\"b\":{\"dtype\":\"BF16\",\"shape\":[1,1],\"data_offsets\":[6,8]}}";
    const TensorFile f = parse(st_file(header, data));
    REQUIRE(f.tensors.size() == 4);
    CHECK(f.tensors[0].first == "h");  // in data order
    CHECK(f.tensors[3].first == "d");
    CHECK((*f.find("h"))[0] == -1.5f);
    CHECK((*f.find("h"))[1] == std::ldexp(1.0f, -14));
    CHECK((*f.find("h"))[2] == std::ldexp(1.0f, -24));
    CHECK((*f.find("b"))[0] == 1.0f);
    CHECK((*f.find("n"))[0] == 7.0f);
    CHECK((*f.find("d"))[0] == 0.25f);
    CHECK(f.metadata.empty());  // a plain safetensors file (no speq_format) is fine

    CHECK(io::detail::half_to_float(0x7c00) == INFINITY);
    CHECK(std::isnan(io::detail::half_to_float(0x7e00)));
    CHECK(io::detail::half_to_float(0x3c00) == 1.0f);
    CHECK(io::detail::half_to_float(0x7bff) == 65504.0f);
}

TEST_CASE("safetensors: every malformed file gets a clear error naming the file and the problem") {
    const std::string ok_entry = "\"a\":{\"dtype\":\"F32\",\"shape\":[2],\"data_offsets\":[0,8]}";
    const std::string two = floats({1, 2});
    CHECK(parse_error(st_file("{" + ok_entry + "}", two)).empty());

    struct Case {
        const char* what;
        std::string bytes;
        std::vector<const char*> expect;
    };
    const std::vector<Case> cases = {
        {"empty file", "", {"bad.safetensors", "shorter than the 8-byte header length"}},
        {"7 bytes", std::string(7, '\0'), {"7 bytes"}},
        {"header length past the end", le64(1000) + "{}", {"header length 1000", "larger than the rest of the file"}},
        {"absurd header length", le64(~uint64_t(0)) + "{}", {"header length 18446744073709551615", "larger"}},
        {"empty header", le64(0), {"does not start with '{'"}},
        {"header not an object", st_file("[1, 2]"), {"does not start with '{'"}},
        {"header not JSON", st_file("{\"a\": nope}"), {"not valid JSON"}},
        {"header truncated JSON", st_file("{\"a\": {\"dtype\""), {"not valid JSON"}},
        {"trailing junk after the object", st_file("{} x"), {"not valid JSON"}},
        {"invalid UTF-8", st_file("{\"\xff\xfe\": 1}"), {"not valid JSON"}},
        {"entry not an object", st_file("{\"a\": 3}"), {"tensor 'a'", "must be an object"}},
        {"missing dtype", st_file("{\"a\":{\"shape\":[2],\"data_offsets\":[0,8]}}", two), {"tensor 'a'", "missing 'dtype'"}},
        {"missing shape", st_file("{\"a\":{\"dtype\":\"F32\",\"data_offsets\":[0,8]}}", two), {"missing 'shape'"}},
        {"missing data_offsets", st_file("{\"a\":{\"dtype\":\"F32\",\"shape\":[2]}}", two), {"missing 'data_offsets'"}},
        {"extra field", st_file("{\"a\":{\"dtype\":\"F32\",\"shape\":[2],\"data_offsets\":[0,8],\"x\":1}}", two),
         {"unexpected field 'x'"}},
        {"dtype not a string", st_file("{\"a\":{\"dtype\":4,\"shape\":[2],\"data_offsets\":[0,8]}}", two),
         {"dtype must be a string"}},
        {"unsupported dtype", st_file("{\"a\":{\"dtype\":\"F8_E4M3\",\"shape\":[2],\"data_offsets\":[0,2]}}", "xx"),
         {"dtype 'F8_E4M3' is not supported"}},
        {"shape not an array", st_file("{\"a\":{\"dtype\":\"F32\",\"shape\":\"2\",\"data_offsets\":[0,8]}}", two),
         {"shape must be an array of integers"}},
        {"shape with a float", st_file("{\"a\":{\"dtype\":\"F32\",\"shape\":[2.0],\"data_offsets\":[0,8]}}", two),
         {"shape must be an array of integers"}},
        {"shape with a string", st_file("{\"a\":{\"dtype\":\"F32\",\"shape\":[\"2\"],\"data_offsets\":[0,8]}}", two),
         {"shape must be an array of integers"}},
        {"negative dimension", st_file("{\"a\":{\"dtype\":\"F32\",\"shape\":[-2],\"data_offsets\":[0,8]}}", two),
         {"negative dimension"}},
        {"shape that overflows", st_file("{\"a\":{\"dtype\":\"F32\",\"shape\":[4294967296,4294967296,0],\"data_offsets\":[0,0]}}"),
         {"too large"}},
        {"shape larger than the file", st_file("{\"a\":{\"dtype\":\"F32\",\"shape\":[1000000,1000000],\"data_offsets\":[0,8]}}", two),
         {"more than the data section has bytes"}},
        {"data_offsets not an array of two", st_file("{\"a\":{\"dtype\":\"F32\",\"shape\":[2],\"data_offsets\":[0]}}", two),
         {"data_offsets must be [begin, end]"}},
        {"negative offset", st_file("{\"a\":{\"dtype\":\"F32\",\"shape\":[2],\"data_offsets\":[-8,0]}}", two),
         {"data_offsets must be [begin, end]"}},
        {"offsets in the wrong order", st_file("{\"a\":{\"dtype\":\"F32\",\"shape\":[2],\"data_offsets\":[8,0]}}", two),
         {"end before they begin"}},
        {"offsets not matching the shape", st_file("{\"a\":{\"dtype\":\"F32\",\"shape\":[3],\"data_offsets\":[0,8]}}", two),
         {"span 8 bytes", "shape [3] of F32 needs 12"}},
        {"offsets past the end", st_file("{\"a\":{\"dtype\":\"F32\",\"shape\":[2],\"data_offsets\":[0,8]}}", "abc"),
         {"run past the end of the file", "3 bytes"}},
        {"overlapping ranges",
         st_file("{" + ok_entry + ",\"b\":{\"dtype\":\"F32\",\"shape\":[1],\"data_offsets\":[4,8]}}", two),
         {"'a' [0, 8)", "'b' [4, 8)", "overlap"}},
        {"gap between ranges",
         st_file("{\"a\":{\"dtype\":\"F32\",\"shape\":[1],\"data_offsets\":[4,8]}}", two),
         {"bytes [0, 4)", "belong to no tensor"}},
        {"trailing bytes", st_file("{" + ok_entry + "}", two + "zz"), {"bytes [8, 10)", "belong to no tensor"}},
        {"duplicate names", st_file("{" + ok_entry + "," + ok_entry + "}", two + two), {"names 'a' twice"}},
        {"metadata not an object", st_file("{\"__metadata__\":[1]," + ok_entry + "}", two), {"__metadata__ must be an object"}},
        {"metadata value not a string", st_file("{\"__metadata__\":{\"epoch\":3}," + ok_entry + "}", two),
         {"__metadata__ 'epoch' must be a string", "got 3"}},
        {"unknown speq format version", st_file("{\"__metadata__\":{\"speq_format\":\"2\"}," + ok_entry + "}", two),
         {"format version '2' is not supported", "reads version 1"}},
        {"nesting bomb", st_file("{\"a\":{\"shape\":[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[1]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]}}"),
         {"nests deeper"}},
    };
    for (const Case& c : cases) {
        INFO("case: " << c.what);
        const std::string message = parse_error(c.bytes);
        check_error_contains(message, {"bad.safetensors"});
        for (const char* e : c.expect) {
            INFO("expected: " << e << "\nmessage: " << message);
            CHECK(message.find(e) != std::string::npos);
        }
    }
}

TEST_CASE("safetensors: load_safetensors names the path, random corruption never crashes") {
    TempDir dir;
    check_error_contains([&] {
        try { load_safetensors(dir / "missing.safetensors"); } catch (const Error& e) { return std::string(e.what()); }
        return std::string();
    }(), {"missing.safetensors", "not found"});
    check_error_contains([&] {
        try { load_safetensors(dir.path.string()); } catch (const Error& e) { return std::string(e.what()); }
        return std::string();
    }(), {"not a regular file"});
    write_raw(dir / "trunc.safetensors", le64(200) + "{}");
    check_error_contains([&] {
        try { load_safetensors(dir / "trunc.safetensors"); } catch (const Error& e) { return std::string(e.what()); }
        return std::string();
    }(), {"trunc.safetensors", "header length 200"});

    // Mutations of a valid file (byte flips, truncations): each either loads or throws speq::Error.
    Rng rng(11);
    Tensor a = randn({3, 4}, rng), b = randn({5}, rng);
    const std::string good = safetensors_bytes({{"a", &a}, {"b", &b}}, {{"k", "v"}});
    int loaded = 0, rejected = 0;
    for (int trial = 0; trial < 3000; ++trial) {
        std::string bytes = good;
        const int kind = static_cast<int>(rng.below(3));
        if (kind == 0) {
            bytes.resize(rng.below(static_cast<uint32_t>(bytes.size())));
        } else {
            const int flips = 1 + static_cast<int>(rng.below(4));
            for (int i = 0; i < flips; ++i) {
                // Mostly within the length field and the header, where the parser's logic is.
                const uint32_t limit = kind == 1 ? 8 + 120 : static_cast<uint32_t>(bytes.size());
                bytes[rng.below(limit)] = static_cast<char>(rng.below(256));
            }
        }
        try {
            parse(bytes);
            ++loaded;
        } catch (const Error&) {
            ++rejected;
        }
    }
    CHECK(rejected > 0);
    CHECK(loaded + rejected == 3000);
}

TEST_CASE("assign_tensors: copies into the destinations, missing, extra and mismatched names are listed") {
    Tensor w = Tensor::of({2, 2}, {1, 2, 3, 4}), b = Tensor::of({2}, {5, 6}), extra = Tensor::of({1}, {9});
    TensorFile f;
    f.tensors.emplace_back("fc.weight", w);
    f.tensors.emplace_back("fc.bias", b);

    Tensor dw({2, 2}), db({2});
    const float* storage = dw.data();
    assign_tensors(f, {{"fc.weight", &dw}, {"fc.bias", &db}}, "m.safetensors");
    CHECK(same_bits(dw, w));
    CHECK(same_bits(db, b));
    CHECK(dw.data() == storage);  // copied in place: the model's storage stays where it was

    auto message_of = [](auto&& fn) {
        try {
            fn();
        } catch (const Error& e) {
            return std::string(e.what());
        }
        return std::string();
    };
    Tensor other({2}), wrong({3, 2});
    SUBCASE("missing") {
        const std::string m = message_of([&] {
            assign_tensors(f, {{"fc.weight", &dw}, {"fc.bias", &db}, {"bn.running_mean", &other}}, "m.safetensors");
        });
        check_error_contains(m, {"m.safetensors", "missing 1 tensor(s): bn.running_mean"});
    }
    SUBCASE("extra names are an error unless allowed") {
        const std::string m = message_of([&] { assign_tensors(f, {{"fc.weight", &dw}}, "m.safetensors"); });
        check_error_contains(m, {"m.safetensors", "unexpected 1 tensor(s) not in the model: fc.bias"});
        Tensor fresh({2, 2});
        assign_tensors(f, {{"fc.weight", &fresh}}, "m.safetensors", /*allow_extra=*/true);
        CHECK(same_bits(fresh, w));
    }
    SUBCASE("shape mismatch: both shapes, and nothing is written") {
        Tensor keep = Tensor::full({2}, 7.0f);
        const std::string m = message_of([&] {
            assign_tensors(f, {{"fc.bias", &keep}, {"fc.weight", &wrong}}, "m.safetensors");
        });
        check_error_contains(m, {"m.safetensors", "shape mismatch: fc.weight is [2, 2] in the file, [3, 2] in the model"});
        CHECK(keep[0] == 7.0f);  // no partial assignment
    }
    SUBCASE("many problems: the first few names, and how many more") {
        NamedMutableTensors dst;
        std::vector<Tensor> many(8, Tensor({1}));
        for (int i = 0; i < 8; ++i) dst.push_back({"x" + std::to_string(i), &many[i]});
        const std::string m = message_of([&] { assign_tensors(f, dst, "m.safetensors"); });
        check_error_contains(m, {"missing 8 tensor(s): x0, x1, x2, x3, x4, ... (3 more)", "unexpected 2 tensor(s)"});
    }
    SUBCASE("prefix selects part of a file") {
        TensorFile g;
        g.tensors.emplace_back("model.fc.bias", b);
        g.tensors.emplace_back("optim.fc.bias.momentum", extra);
        Tensor d({2});
        assign_tensors(g, {{"fc.bias", &d}}, "g.safetensors", false, "model.");
        CHECK(same_bits(d, b));
        const std::string m = message_of([&] { assign_tensors(g, {{"fc.weight", &dw}}, "g.safetensors", false, "model."); });
        check_error_contains(m, {"missing 1 tensor(s): model.fc.weight", "unexpected 1 tensor(s) not in the model: model.fc.bias"});
    }
    SUBCASE("duplicate destinations") {
        const std::string m = message_of([&] { assign_tensors(f, {{"fc.bias", &db}, {"fc.bias", &other}}, "m"); });
        check_error_contains(m, {"'fc.bias' appears twice"});
    }
}

TEST_CASE("save_safetensors: bad names and metadata are rejected before any file is made") {
    TempDir dir;
    Tensor t({2});
    auto message_of = [](auto&& fn) {
        try {
            fn();
        } catch (const Error& e) {
            return std::string(e.what());
        }
        return std::string();
    };
    check_error_contains(message_of([&] { save_safetensors(dir / "x", NamedConstTensors{{"a", &t}, {"a", &t}}); }),
                         {"'a' appears twice"});
    check_error_contains(message_of([&] { save_safetensors(dir / "x", NamedConstTensors{{"__metadata__", &t}}); }),
                         {"reserved"});
    check_error_contains(message_of([&] { save_safetensors(dir / "x", NamedConstTensors{{"bad\xff", &t}}); }),
                         {"not valid UTF-8"});
    check_error_contains(message_of([&] { save_safetensors(dir / "x", NamedConstTensors{{"a", nullptr}}); }),
                         {"null pointer"});
    check_error_contains(message_of([&] { save_safetensors(dir / "x", NamedConstTensors{}, {{kFormatKey, "9"}}); }),
                         {"speq_format", "set by speq"});
    CHECK(dir.listing().empty());
}

TEST_CASE("write_file_atomically: the old file survives a failing writer, and no temporary is left") {
    TempDir dir;
    const std::string path = dir / "last.safetensors";
    write_file_atomically(path, std::string("old contents"));
    CHECK(read_raw(path) == "old contents");

    CHECK_THROWS_WITH_AS(write_file_atomically(path,
                                               [](FileWriter& out) {
                                                   out.write(std::string(100000, 'x'));
                                                   throw Error("simulated failure halfway");
                                               }),
                         "simulated failure halfway", Error);
    CHECK(read_raw(path) == "old contents");
    CHECK(dir.listing() == std::vector<std::string>{"last.safetensors"});

    // Non-speq exceptions are cleaned up the same way.
    CHECK_THROWS_AS(write_file_atomically(path, [](FileWriter& out) {
                        out.write("partial");
                        throw std::runtime_error("boom");
                    }),
                    std::runtime_error);
    CHECK(dir.listing() == std::vector<std::string>{"last.safetensors"});

    // A successful write replaces the file; bytes_written counts.
    uint64_t counted = 0;
    write_file_atomically(path, [&](FileWriter& out) {
        out.write("new ");
        out.write("contents");
        counted = out.bytes_written();
    });
    CHECK(counted == 12);
    CHECK(read_raw(path) == "new contents");
    CHECK(dir.listing() == std::vector<std::string>{"last.safetensors"});

    // A new file in a folder given by a relative-looking path works too.
    write_file_atomically(dir / "b.bin", std::string());
    CHECK(fs::file_size(dir / "b.bin") == 0);
}

TEST_CASE("write_file_atomically: unwritable places and a full disk give clear errors") {
    TempDir dir;
    write_raw(dir / "a_file", "x");
    // The parent "folder" is a regular file (tests run as root, so permissions would not stop us).
    std::string message;
    try {
        write_file_atomically(dir / "a_file/ckpt.safetensors", std::string("data"));
    } catch (const Error& e) {
        message = e.what();
    }
    check_error_contains(message, {"a_file/ckpt.safetensors", "cannot create a file in folder", "Not a directory"});

    message.clear();
    try {
        write_file_atomically(dir.path.string(), std::string("data"));
    } catch (const Error& e) {
        message = e.what();
    }
    check_error_contains(message, {"is a folder"});

    Tensor t({2});
    CHECK_THROWS_AS(save_safetensors(dir / "a_file/x.safetensors", NamedConstTensors{{"t", &t}}), Error);

    // Disk full: /dev/full fails every write with ENOSPC.
    const int fd = ::open("/dev/full", O_WRONLY);
    if (fd >= 0) {
        message.clear();
        try {
            io::detail::write_all(fd, "abc", 3, "runs/x/last.safetensors");
        } catch (const Error& e) {
            message = e.what();
        }
        ::close(fd);
        check_error_contains(message, {"runs/x/last.safetensors", "write failed", "No space left on device"});
    }
    CHECK(dir.listing() == std::vector<std::string>{"a_file"});
}

TEST_CASE("check_writable_dir: creates the folder, or says why it cannot") {
    TempDir dir;
    check_writable_dir(dir / "runs/new/deep");
    CHECK(fs::is_directory(dir / "runs/new/deep"));
    CHECK(fs::is_empty(dir / "runs/new/deep"));  // the probe file is gone
    check_writable_dir(dir / "runs/new/deep");   // existing: fine

    write_raw(dir / "a_file", "x");
    std::string message;
    try {
        check_writable_dir(dir / "a_file/out");
    } catch (const Error& e) {
        message = e.what();
    }
    check_error_contains(message, {"output folder", "a_file/out", "a_file is a file, not a folder"});

    message.clear();
    try {
        check_writable_dir(dir / "a_file");
    } catch (const Error& e) {
        message = e.what();
    }
    check_error_contains(message, {"a_file"});

    message.clear();
    try {
        check_writable_dir(dir / "ok", ~uint64_t(0));
    } catch (const Error& e) {
        message = e.what();
    }
    check_error_contains(message, {"bytes free, need at least"});
}
