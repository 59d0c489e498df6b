// libFuzzer harness: the JSON training config. The input is parsed as a config file
// (parse_json_text, then config_from_json); an accepted config must come back unchanged through
// to_json -> text -> parse -> config_from_json. Then each line of the input is applied as one
// "--set key=value" (apply_override) to an empty config, which is validated the same way.
// Only speq::Error may escape the library: anything else (a nlohmann exception) is a finding.
#include "speq/io/config.hpp"

using namespace speq;

namespace {

// to_json(config) -> text -> config again: must be the same configuration.
void check_round_trip(const io::TrainConfig& config) {
    const nlohmann::json j = io::to_json(config);
    const io::TrainConfig again =
        io::config_from_json(io::config_detail::parse_json_text(j.dump(), "round trip"), "round trip");
    if (io::to_json(again) != j) __builtin_trap();
    (void)io::config_warnings(again);
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
    const std::string text(reinterpret_cast<const char*>(data), size);
    try {
        check_round_trip(io::config_from_json(io::config_detail::parse_json_text(text, "fuzz.json"), "fuzz.json"));
    } catch (const Error&) {
    }
    try {
        nlohmann::json j = nlohmann::json::object();
        size_t start = 0;
        while (start <= text.size()) {
            size_t end = text.find('\n', start);
            if (end == std::string::npos) end = text.size();
            io::apply_override(j, text.substr(start, end - start));
            start = end + 1;
        }
        check_round_trip(io::config_from_json(j, "--set overrides"));
    } catch (const Error&) {
    }
    return 0;
}
