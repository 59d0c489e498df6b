// Test helper: reading what a training run wrote (metrics.jsonl lines, checkpoints) and comparing
// two runs, for the tests that resume, interrupt or distribute runs and expect the same result.
#pragma once

#include <cstring>
#include <filesystem>
#include <fstream>
#include <string>
#include <vector>

#include <doctest/doctest.h>
#include <nlohmann/json.hpp>

#include "speq/io/safetensors.hpp"

namespace speq::testing {

inline std::vector<std::string> lines_of(const std::filesystem::path& file) {
    std::ifstream in(file);
    std::vector<std::string> out;
    for (std::string line; std::getline(in, line);) out.push_back(line);
    return out;
}

// A metrics line without the fields that measure time.
inline nlohmann::json timeless(const std::string& line) {
    nlohmann::json j = nlohmann::json::parse(line);
    j.erase("wall_seconds");
    j.erase("images_per_second");
    return j;
}

// The same tensor names, in the same order, with the same bits.
inline void check_same_tensors(const io::TensorFile& a, const io::TensorFile& b) {
    REQUIRE(a.tensors.size() == b.tensors.size());
    for (size_t i = 0; i < a.tensors.size(); ++i) {
        INFO(a.tensors[i].first);
        CHECK(a.tensors[i].first == b.tensors[i].first);
        REQUIRE(a.tensors[i].second.numel() == b.tensors[i].second.numel());
        CHECK(std::memcmp(a.tensors[i].second.data(), b.tensors[i].second.data(),
                          sizeof(float) * static_cast<size_t>(a.tensors[i].second.numel())) == 0);
    }
}

}  // namespace speq::testing
