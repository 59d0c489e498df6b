// speq/io/safetensors.hpp: checkpoints in the safetensors format (Hugging Face), readable by
// PyTorch's safetensors.torch.load_file and written atomically.
//
// The format (https://github.com/huggingface/safetensors), byte by byte:
//   8 bytes     N, the header length, an unsigned 64-bit little-endian integer
//   N bytes     the header: UTF-8 JSON, one object, padded at the end with spaces
//               {"__metadata__": {"key": "string value", ...},
//                "name": {"dtype": "F32", "shape": [d0, d1, ...], "data_offsets": [begin, end]}, ...}
//   the rest    the data section: each tensor's elements, row-major, little-endian, at bytes
//               [begin, end) counted from the start of the data section
// speq writes only F32, in the order given (a model's state() order), back to back from offset
// 0, compact JSON with "__metadata__" first, the header padded to a multiple of 8 bytes as the
// reference writer does (so the data section starts 8-byte aligned). Metadata always includes
// "speq_format": "1", the version of what speq puts in a checkpoint.
//
// Reading checks everything before allocating anything: the header length against the file
// size, the JSON (valid, one object, no duplicate names, no deeper nesting than the format has),
// each entry (dtype, shape of non-negative integers, data_offsets of two integers), each byte
// range against its shape and the file size, and that the ranges tile the data section exactly
// with no overlap and no gap (the reference reader's rule; the order of entries in the header
// does not matter). A file with "speq_format" other than "1" is rejected; a plain safetensors
// file without it (exported from PyTorch, say) is read as tensors.
//
// dtypes: F32 is read as is. F64, F16, BF16 and the integer types (I8..I64, U8..U64, BOOL) are
// converted to float32 on reading (PyTorch's BatchNorm saves num_batches_tracked as I64);
// integers above 2^24 lose precision there. FP8 and other dtypes are rejected with a message.
#pragma once

#include <algorithm>
#include <cerrno>
#include <cstdint>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <map>
#include <set>
#include <string>
#include <utility>
#include <vector>

#include <nlohmann/json.hpp>

#include "speq/core/error.hpp"
#include "speq/core/tensor.hpp"
#include "speq/io/atomic_file.hpp"

#if !defined(__BYTE_ORDER__) || __BYTE_ORDER__ != __ORDER_LITTLE_ENDIAN__
#error "speq/io/safetensors.hpp copies floats as little-endian bytes: add byte swapping for this platform"
#endif

namespace speq::io {

inline constexpr const char* kFormatKey = "speq_format";  // metadata key of speq's format version
inline constexpr const char* kFormatVersion = "1";
inline constexpr uint64_t kMaxHeaderBytes = 100000000;  // the reference implementation's limit

// The tensors and metadata of one file. Tensors are in the order of their data in the file.
struct TensorFile {
    std::vector<std::pair<std::string, Tensor>> tensors;
    std::map<std::string, std::string> metadata;

    // The tensor called `name`, or nullptr.
    const Tensor* find(const std::string& name) const {
        for (const auto& [n, t] : tensors)
            if (n == name) return &t;
        return nullptr;
    }
};

using NamedConstTensors = std::vector<std::pair<std::string, const Tensor*>>;
using NamedMutableTensors = std::vector<std::pair<std::string, Tensor*>>;

namespace detail {

// JSON text of a string; throws for invalid UTF-8 (which no reader would accept).
inline std::string json_quote(const std::string& s, const char* what) {
    try {
        return nlohmann::json(s).dump();
    } catch (const nlohmann::json::exception&) {
        fail("safetensors: ", what, " is not valid UTF-8: '", s, "'");
    }
}

// Calls emit(bytes, n) with the whole file in order. Shared by the file writer and
// safetensors_bytes(), so tests check exactly what save_safetensors writes.
template <class Emit>
void emit_safetensors(const NamedConstTensors& tensors, const std::map<std::string, std::string>& metadata,
                      Emit&& emit) {
    std::map<std::string, std::string> meta = metadata;
    auto version = meta.find(kFormatKey);
    SPEQ_CHECK(version == meta.end() || version->second == kFormatVersion, "save_safetensors: metadata '",
               kFormatKey, "' is set by speq (", kFormatVersion, "), got '", version->second, "'");
    meta[kFormatKey] = kFormatVersion;

    std::string header = "{\"__metadata__\":{";
    bool first = true;
    for (const auto& [key, value] : meta) {
        header += (first ? "" : ",") + json_quote(key, "metadata key") + ":" + json_quote(value, "metadata value");
        first = false;
    }
    header += "}";
    std::set<std::string> seen;
    uint64_t offset = 0;
    for (const auto& [name, tensor] : tensors) {
        SPEQ_CHECK(tensor != nullptr, "save_safetensors: tensor '", name, "' is a null pointer");
        SPEQ_CHECK(name != "__metadata__", "save_safetensors: '__metadata__' is reserved, not a tensor name");
        SPEQ_CHECK(seen.insert(name).second, "save_safetensors: tensor name '", name, "' appears twice");
        const uint64_t bytes = static_cast<uint64_t>(tensor->numel()) * sizeof(float);
        header += "," + json_quote(name, "tensor name") + ":{\"dtype\":\"F32\",\"shape\":[";
        for (size_t i = 0; i < tensor->shape().size(); ++i)
            header += (i ? "," : "") + std::to_string(tensor->shape()[i]);
        header += "],\"data_offsets\":[" + std::to_string(offset) + "," + std::to_string(offset + bytes) + "]}";
        offset += bytes;
    }
    header += "}";
    header.append((8 - header.size() % 8) % 8, ' ');

    unsigned char length[8];
    for (int i = 0; i < 8; ++i) length[i] = static_cast<unsigned char>(static_cast<uint64_t>(header.size()) >> (8 * i));
    emit(length, 8);
    emit(header.data(), header.size());
    for (const auto& [name, tensor] : tensors)
        if (tensor->numel() > 0) emit(tensor->data(), static_cast<size_t>(tensor->numel()) * sizeof(float));
}

// IEEE half -> float, exactly (every half is a float).
inline float half_to_float(uint16_t h) {
    const uint32_t sign = static_cast<uint32_t>(h & 0x8000u) << 16;
    uint32_t exponent = (h >> 10) & 0x1fu;
    uint32_t mantissa = h & 0x3ffu;
    uint32_t bits;
    if (exponent == 0x1f) {
        bits = sign | 0x7f800000u | (mantissa << 13);  // inf, nan
    } else if (exponent != 0) {
        bits = sign | ((exponent + 112) << 23) | (mantissa << 13);  // normal: rebias 15 -> 127
    } else if (mantissa == 0) {
        bits = sign;  // +-0
    } else {
        // subnormal half: shift the mantissa up until its leading 1 is the implicit bit
        exponent = 113;
        while ((mantissa & 0x400u) == 0) {
            mantissa <<= 1;
            --exponent;
        }
        bits = sign | (exponent << 23) | ((mantissa & 0x3ffu) << 13);
    }
    float f;
    std::memcpy(&f, &bits, 4);
    return f;
}

inline float bf16_to_float(uint16_t b) {
    const uint32_t bits = static_cast<uint32_t>(b) << 16;
    float f;
    std::memcpy(&f, &bits, 4);
    return f;
}

template <class T>
float load_as_float(const uint8_t* p) {
    T v;
    std::memcpy(&v, p, sizeof(T));
    return static_cast<float>(v);
}

struct DtypeInfo {
    const char* name;
    int size;
    float (*to_float)(const uint8_t*);
};

// The dtypes speq reads, with their element sizes; nullptr for anything else.
inline const DtypeInfo* find_dtype(const std::string& name) {
    static const DtypeInfo table[] = {
        {"F32", 4, load_as_float<float>},
        {"F64", 8, load_as_float<double>},
        {"F16", 2, [](const uint8_t* p) { uint16_t h; std::memcpy(&h, p, 2); return half_to_float(h); }},
        {"BF16", 2, [](const uint8_t* p) { uint16_t h; std::memcpy(&h, p, 2); return bf16_to_float(h); }},
        {"I64", 8, load_as_float<int64_t>},   {"I32", 4, load_as_float<int32_t>},
        {"I16", 2, load_as_float<int16_t>},   {"I8", 1, load_as_float<int8_t>},
        {"U64", 8, load_as_float<uint64_t>},  {"U32", 4, load_as_float<uint32_t>},
        {"U16", 2, load_as_float<uint16_t>},  {"U8", 1, load_as_float<uint8_t>},
        {"BOOL", 1, [](const uint8_t* p) { return *p ? 1.0f : 0.0f; }},
    };
    for (const DtypeInfo& d : table)
        if (name == d.name) return &d;
    return nullptr;
}

// nlohmann's parser keeps the last of two equal keys silently and nests as deep as the input
// does. This callback rejects both: a header has at most three levels (file, entry, shape).
struct StrictHeaderParse {
    std::vector<std::set<std::string>> keys;  // one set per open object
    std::string duplicate;                    // the first duplicate key found
    std::string file;

    bool operator()(int depth, nlohmann::ordered_json::parse_event_t event, nlohmann::ordered_json& parsed) {
        using E = nlohmann::ordered_json::parse_event_t;
        if (event == E::object_start || event == E::array_start) {
            if (depth >= 3) fail(file, ": safetensors header nests deeper than the format allows");
            if (event == E::object_start) keys.emplace_back();
        } else if (event == E::object_end) {
            keys.pop_back();
        } else if (event == E::key && !keys.empty()) {
            const std::string& key = parsed.get_ref<const std::string&>();
            if (!keys.back().insert(key).second && duplicate.empty()) duplicate = key;
        }
        return true;
    }
};

// Reads a JSON number that is a non-negative integer; false for anything else.
inline bool as_u64(const nlohmann::ordered_json& v, uint64_t& out) {
    if (!v.is_number_unsigned()) return false;
    out = v.get<uint64_t>();
    return true;
}

struct Entry {
    std::string name;
    const DtypeInfo* dtype;
    Shape shape;
    int64_t numel;
    uint64_t begin, end;
};

}  // namespace detail

// The bytes of a safetensors file holding `tensors` (F32) and `metadata` (plus speq_format).
// Shape contract: any tensors; names unique, not "__metadata__", valid UTF-8.
inline std::string safetensors_bytes(const NamedConstTensors& tensors,
                                     const std::map<std::string, std::string>& metadata = {}) {
    std::string bytes;
    detail::emit_safetensors(tensors, metadata, [&](const void* p, size_t n) {
        bytes.append(static_cast<const char*>(p), n);
    });
    return bytes;
}

// Writes a safetensors file atomically (temporary file, fsync, rename): an existing file under
// `path` stays intact if anything fails. Errors name the path and the reason (disk full...).
inline void save_safetensors(const std::string& path, const NamedConstTensors& tensors,
                             const std::map<std::string, std::string>& metadata = {}) {
    // Validate names and metadata before the file is created, so those errors leave no trace.
    detail::emit_safetensors(tensors, metadata, [](const void*, size_t) {});
    write_file_atomically(path, [&](FileWriter& out) {
        detail::emit_safetensors(tensors, metadata, [&](const void* p, size_t n) { out.write(p, n); });
    });
}

// The same for a mutable state (model.state() of a non-const model).
inline void save_safetensors(const std::string& path, const NamedMutableTensors& tensors,
                             const std::map<std::string, std::string>& metadata = {}) {
    NamedConstTensors view(tensors.begin(), tensors.end());
    save_safetensors(path, view, metadata);
}

// Parses the bytes of a safetensors file (see the top of this file for what is checked). `file`
// names the source in every message. Never reads outside [data, data + size).
inline TensorFile parse_safetensors(const uint8_t* data, size_t size, const std::string& file) {
    using json = nlohmann::ordered_json;
    SPEQ_CHECK(size >= 8, file, ": not a safetensors file: ", size,
               " bytes, shorter than the 8-byte header length that starts the format");
    uint64_t header_len = 0;
    for (int i = 0; i < 8; ++i) header_len |= static_cast<uint64_t>(data[i]) << (8 * i);
    SPEQ_CHECK(header_len <= size - 8, file, ": header length ", header_len, " is larger than the rest of the file (",
               size - 8, " bytes): the file is truncated or not a safetensors file");
    SPEQ_CHECK(header_len <= kMaxHeaderBytes, file, ": header length ", header_len, " exceeds the format's limit of ",
               kMaxHeaderBytes, " bytes");
    const char* header_begin = reinterpret_cast<const char*>(data + 8);
    const char* header_end = header_begin + header_len;
    SPEQ_CHECK(header_len > 0 && header_begin[0] == '{', file,
               ": the header does not start with '{': not a safetensors file");

    json header;
    detail::StrictHeaderParse strict{{}, {}, file};
    try {
        header = json::parse(header_begin, header_end, std::ref(strict));
    } catch (const json::exception& e) {
        fail(file, ": the header is not valid JSON (", e.what(), ")");
    }
    SPEQ_CHECK(header.is_object(), file, ": the header is not a JSON object");
    SPEQ_CHECK(strict.duplicate.empty(), file, ": the header names '", strict.duplicate, "' twice");

    const uint64_t data_size = size - 8 - header_len;
    const uint8_t* section = data + 8 + header_len;
    TensorFile out;

    // Metadata first: a newer speq format may lay out everything else differently.
    if (header.contains("__metadata__")) {
        const json& meta = header.at("__metadata__");
        SPEQ_CHECK(meta.is_object(), file, ": __metadata__ must be an object of strings, got ", meta.dump());
        for (const auto& [key, value] : meta.items()) {
            SPEQ_CHECK(value.is_string(), file, ": __metadata__ '", key, "' must be a string, got ", value.dump());
            out.metadata[key] = value.get<std::string>();
        }
    }
    auto version = out.metadata.find(kFormatKey);
    SPEQ_CHECK(version == out.metadata.end() || version->second == kFormatVersion, file,
               ": speq checkpoint format version '", version->second, "' is not supported (this build reads version ",
               kFormatVersion, "; was it written by a newer speq?)");

    std::vector<detail::Entry> entries;
    for (const auto& [name, info] : header.items()) {
        if (name == "__metadata__") continue;
        const std::string where = file + ": tensor '" + name + "'";
        SPEQ_CHECK(info.is_object(), where, ": entry must be an object with dtype, shape and data_offsets, got ",
                   info.dump());
        for (const auto& [field, ignored] : info.items()) {
            (void)ignored;
            SPEQ_CHECK(field == "dtype" || field == "shape" || field == "data_offsets", where, ": unexpected field '",
                       field, "'");
        }
        SPEQ_CHECK(info.contains("dtype"), where, ": missing 'dtype'");
        SPEQ_CHECK(info.contains("shape"), where, ": missing 'shape'");
        SPEQ_CHECK(info.contains("data_offsets"), where, ": missing 'data_offsets'");

        detail::Entry e;
        e.name = name;
        const json& dtype = info.at("dtype");
        SPEQ_CHECK(dtype.is_string(), where, ": dtype must be a string, got ", dtype.dump());
        e.dtype = detail::find_dtype(dtype.get<std::string>());
        SPEQ_CHECK(e.dtype != nullptr, where, ": dtype '", dtype.get<std::string>(),
                   "' is not supported (speq reads F32, F64, F16, BF16, I8..I64, U8..U64 and BOOL)");

        // numel, without overflow: dimensions multiply to at most INT64_MAX (leaving out zeros,
        // so Tensor's own product never overflows either), and a tensor cannot hold more
        // elements than the data section has bytes.
        const json& shape = info.at("shape");
        SPEQ_CHECK(shape.is_array(), where, ": shape must be an array of integers, got ", shape.dump());
        uint64_t nonzero_product = 1;
        bool has_zero = false;
        for (const json& d : shape) {
            uint64_t dim = 0;
            SPEQ_CHECK(!(d.is_number_integer() && !d.is_number_unsigned()), where, ": shape ", shape.dump(),
                       " has a negative dimension");
            SPEQ_CHECK(detail::as_u64(d, dim), where, ": shape must be an array of integers, got ", shape.dump());
            if (dim == 0) {
                has_zero = true;
            } else {
                SPEQ_CHECK(nonzero_product <= static_cast<uint64_t>(INT64_MAX) / dim, where, ": shape ", shape.dump(),
                           " is too large");
                nonzero_product *= dim;
            }
            e.shape.push_back(static_cast<int64_t>(dim));
        }
        const uint64_t numel = has_zero ? 0 : nonzero_product;
        SPEQ_CHECK(numel <= data_size, where, ": shape ", to_string(e.shape), " has ", numel,
                   " elements, more than the data section has bytes (", data_size, ")");

        const json& offsets = info.at("data_offsets");
        SPEQ_CHECK(offsets.is_array() && offsets.size() == 2 && detail::as_u64(offsets[0], e.begin) &&
                       detail::as_u64(offsets[1], e.end),
                   where, ": data_offsets must be [begin, end] with non-negative integers, got ", offsets.dump());
        SPEQ_CHECK(e.begin <= e.end, where, ": data_offsets [", e.begin, ", ", e.end, "] end before they begin");
        SPEQ_CHECK(e.end <= data_size, where, ": data_offsets [", e.begin, ", ", e.end,
                   "] run past the end of the file (the data section has ", data_size, " bytes)");
        const uint64_t need = numel * static_cast<uint64_t>(e.dtype->size);
        SPEQ_CHECK(e.end - e.begin == need, where, ": data_offsets [", e.begin, ", ", e.end, "] span ",
                   e.end - e.begin, " bytes, but shape ", to_string(e.shape), " of ", e.dtype->name, " needs ", need);
        e.numel = static_cast<int64_t>(numel);
        entries.push_back(std::move(e));
    }

    // The byte ranges must tile the data section: sorted by offset, each starts where the last ended.
    std::stable_sort(entries.begin(), entries.end(), [](const detail::Entry& a, const detail::Entry& b) {
        return a.begin != b.begin ? a.begin < b.begin : a.end < b.end;
    });
    uint64_t expected = 0;
    for (size_t i = 0; i < entries.size(); ++i) {
        const detail::Entry& e = entries[i];
        if (e.begin < expected)
            fail(file, ": tensors '", entries[i - 1].name, "' [", entries[i - 1].begin, ", ", entries[i - 1].end,
                 ") and '", e.name, "' [", e.begin, ", ", e.end, ") overlap in the data section");
        SPEQ_CHECK(e.begin == expected, file, ": bytes [", expected, ", ", e.begin,
                   ") of the data section belong to no tensor (a gap before '", e.name, "')");
        expected = e.end;
    }
    SPEQ_CHECK(expected == data_size, file, ": bytes [", expected, ", ", data_size,
               ") at the end of the data section belong to no tensor (trailing bytes or a wrong offset)");

    for (const detail::Entry& e : entries) {
        Tensor t = Tensor::uninitialized(e.shape);
        const uint8_t* src = section + e.begin;
        if (e.numel > 0) {
            if (e.dtype == detail::find_dtype("F32")) {  // the common case: one copy
                std::memcpy(t.data(), src, static_cast<size_t>(e.numel) * 4);
            } else {
                for (int64_t i = 0; i < e.numel; ++i) t[i] = e.dtype->to_float(src + i * e.dtype->size);
            }
        }
        out.tensors.emplace_back(e.name, std::move(t));
    }
    return out;
}

// Reads a safetensors file (checks as parse_safetensors). Errors name the path.
inline TensorFile load_safetensors(const std::string& path) {
    namespace fs = std::filesystem;
    std::error_code ec;
    SPEQ_CHECK(fs::exists(path, ec), path, ": checkpoint file not found");
    SPEQ_CHECK(fs::is_regular_file(path, ec), path, ": is not a regular file");
    std::ifstream in(path, std::ios::binary);
    if (!in) fail(path, ": cannot open: ", std::strerror(errno));
    const uintmax_t size = fs::file_size(path, ec);
    SPEQ_CHECK(!ec, path, ": cannot determine the file size: ", ec.message());
    std::vector<uint8_t> bytes(static_cast<size_t>(size));
    if (size > 0) in.read(reinterpret_cast<char*>(bytes.data()), static_cast<std::streamsize>(size));
    SPEQ_CHECK(static_cast<uintmax_t>(in.gcount()) == size, path, ": read only ", in.gcount(), " of ", size, " bytes");
    return parse_safetensors(bytes.data(), bytes.size(), path);
}

namespace detail {
inline std::string first_names(const std::vector<std::string>& names, size_t limit = 5) {
    std::string out;
    for (size_t i = 0; i < names.size() && i < limit; ++i) out += (i ? ", " : "") + names[i];
    if (names.size() > limit) out += ", ... (" + std::to_string(names.size() - limit) + " more)";
    return out;
}
}  // namespace detail

// Copies the file's tensors into `destinations` (a model's state()): every destination must be
// in the file with the same shape. Names in the file that no destination asks for are an error
// unless allow_extra. With a `prefix`, only file names starting with it take part, matched with
// the prefix removed ("model." selects the model's tensors of a file that also holds others).
// Nothing is written unless everything matches; the message lists missing and unexpected names
// (the first few) and every shape mismatch with both shapes, naming `path_for_messages`.
inline void assign_tensors(const TensorFile& file, const NamedMutableTensors& destinations,
                           const std::string& path_for_messages, bool allow_extra = false,
                           const std::string& prefix = "") {
    std::map<std::string, const Tensor*> available;
    for (const auto& [name, tensor] : file.tensors)
        if (name.compare(0, prefix.size(), prefix) == 0) available[name.substr(prefix.size())] = &tensor;

    std::set<std::string> wanted;
    std::vector<std::string> missing, unexpected, mismatched;
    for (const auto& [name, dst] : destinations) {
        SPEQ_CHECK(dst != nullptr, "assign_tensors: destination '", name, "' is a null pointer");
        SPEQ_CHECK(wanted.insert(name).second, "assign_tensors: destination '", name, "' appears twice");
        auto it = available.find(name);
        if (it == available.end()) missing.push_back(prefix + name);
        else if (it->second->shape() != dst->shape())
            mismatched.push_back(prefix + name + " is " + to_string(it->second->shape()) + " in the file, " +
                                 to_string(dst->shape()) + " in the model");
    }
    if (!allow_extra)
        for (const auto& [name, tensor] : file.tensors)
            if (name.compare(0, prefix.size(), prefix) == 0 && !wanted.count(name.substr(prefix.size())))
                unexpected.push_back(name);

    if (!missing.empty() || !unexpected.empty() || !mismatched.empty()) {
        std::string message = path_for_messages + ": the checkpoint does not match the model:";
        if (!missing.empty())
            message += " missing " + std::to_string(missing.size()) + " tensor(s): " + detail::first_names(missing) + ";";
        if (!unexpected.empty())
            message += " unexpected " + std::to_string(unexpected.size()) +
                       " tensor(s) not in the model: " + detail::first_names(unexpected) + ";";
        for (const std::string& m : mismatched) message += " shape mismatch: " + m + ";";
        message.pop_back();
        throw Error(message);
    }
    for (const auto& [name, dst] : destinations) {
        const Tensor& src = *available.at(name);
        if (src.numel() > 0) std::memcpy(dst->data(), src.data(), static_cast<size_t>(src.numel()) * sizeof(float));
    }
}

}  // namespace speq::io
