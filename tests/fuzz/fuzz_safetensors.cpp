// libFuzzer harness: io::parse_safetensors on arbitrary bytes, from memory.
// Any speq::Error is a correct rejection. An accepted file must survive a round trip: written
// back (as F32) and parsed again it gives the same names, shapes, bits and metadata. Then its
// tensors are assigned to a fixed small "model" (matching names and shapes, or a clear error).
#include <cstring>

#include "speq/io/safetensors.hpp"

using namespace speq;

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
    io::TensorFile file;
    try {
        file = io::parse_safetensors(data, size, "fuzz.safetensors");
    } catch (const Error&) {
        return 0;
    }
    io::NamedConstTensors view;
    for (const auto& [name, t] : file.tensors) view.push_back({name, &t});
    const std::string bytes = io::safetensors_bytes(view, file.metadata);
    const io::TensorFile again =
        io::parse_safetensors(reinterpret_cast<const uint8_t*>(bytes.data()), bytes.size(), "round trip");
    if (again.tensors.size() != file.tensors.size()) __builtin_trap();
    for (size_t i = 0; i < file.tensors.size(); ++i) {
        const Tensor &a = file.tensors[i].second, &b = again.tensors[i].second;
        if (file.tensors[i].first != again.tensors[i].first || a.shape() != b.shape()) __builtin_trap();
        if (a.numel() > 0 && std::memcmp(a.data(), b.data(), static_cast<size_t>(a.numel()) * 4) != 0) __builtin_trap();
    }
    std::map<std::string, std::string> meta = file.metadata;
    meta[io::kFormatKey] = io::kFormatVersion;
    if (again.metadata != meta) __builtin_trap();

    Tensor w = Tensor::zeros({2, 2}), b = Tensor::zeros({1});
    try {
        io::assign_tensors(file, {{"w", &w}, {"b", &b}}, "fuzz.safetensors", /*allow_extra=*/size % 2 == 0);
    } catch (const Error&) {
    }
    return 0;
}
