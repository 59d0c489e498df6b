// The training configuration: defaults, every kind of bad value (each message names the source,
// the key, the value and what is allowed), unknown keys, rules across keys, --set overrides,
// the to_json round trip, and the generated Markdown reference.
#include <doctest/doctest.h>

#include <unistd.h>

#include <filesystem>
#include <fstream>
#include <iterator>
#include <string>
#include <vector>

#include "gradcheck.hpp"
#include "speq/io/config.hpp"

using namespace speq;
using namespace speq::io;
using json = nlohmann::json;
namespace fs = std::filesystem;

namespace {

std::string error_of(const std::function<void()>& fn) {
    try {
        fn();
    } catch (const Error& e) {
        return e.what();
    }
    return "";
}

std::string parse_error(const json& j) {
    return error_of([&] { config_from_json(j, "configs/x.json"); });
}

void check_contains(const std::string& message, std::initializer_list<std::string> parts) {
    INFO("message: " << message);
    CHECK(!message.empty());
    for (const std::string& p : parts) {
        INFO("expected: " << p);
        CHECK(message.find(p) != std::string::npos);
    }
}

// A config file in a fresh temp folder.
struct TempFile {
    std::string path;
    explicit TempFile(const std::string& text) {
        static int counter = 0;
        path = (fs::temp_directory_path() /
                ("speq_test_config_" + std::to_string(getpid()) + "_" + std::to_string(counter++) + ".json"))
                   .string();
        std::ofstream(path) << text;
    }
    ~TempFile() {
        std::error_code ec;
        fs::remove(path, ec);
    }
};

}  // namespace

TEST_CASE("config: an empty object gives the documented defaults") {
    const TrainConfig c = config_from_json(json::object(), "configs/x.json");
    CHECK(to_json(c) == to_json(TrainConfig{}));
    CHECK(c.method == Method::fp);
    CHECK(c.model == ModelKind::resnet20);
    CHECK(c.shortcut == Shortcut::A);
    CHECK(c.dataset == DatasetKind::cifar10);
    CHECK(c.data_dir == "data");
    CHECK(c.epochs == 15);
    CHECK(c.max_steps == 0);
    CHECK(c.batch_size == 128);
    CHECK(c.lr == 0.1);
    CHECK(c.lr_schedule == LrSchedule::onecycle);
    CHECK(c.lr_milestones.empty());
    CHECK(c.momentum == 0.9);
    CHECK(c.nesterov);
    CHECK(c.weight_decay == 5e-4);
    CHECK(c.weight_bits == 32);
    CHECK(c.act_bits == 32);
    CHECK(c.first_layer_bits == 8);
    CHECK(c.last_layer_bits == 8);
    CHECK(c.weight_quant.scale == WeightScale::min_l2);
    CHECK(c.weight_quant.per_channel);
    CHECK(c.weight_quant.grid == quant::Grid::mid_rise);
    CHECK(c.act_quant.alpha_init == 6.0);  // = nn::kDefaultAlphaInit
    CHECK(c.out_dir == "runs/default");
    CHECK(c.init_checkpoint.empty());
    CHECK(c.speq.high_bits == 8);
    CHECK(c.speq.u == 0.5);
    CHECK(c.speq.draw == BitsDraw::binary);
    CHECK(c.kd.loss == KdLoss::kl);
    CHECK(c.kd.temperature == 4.0);
    CHECK(config_warnings(c).empty());
    CHECK(std::string(name_of(Method::speq)) == "speq");
    CHECK(std::string(name_of(quant::Grid::narrow)) == "narrow");
}

TEST_CASE("config: a full file sets nested members") {
    const json j = json::parse(R"({
        "method": "speq", "model": "resnet32", "shortcut": "B", "dataset": "fashion_mnist",
        "data_dir": "/data/fm", "epochs": 3, "max_steps": 20, "batch_size": 64, "lr": 0.05,
        "lr_schedule": "step", "lr_milestones": [1, 2], "lr_gamma": 0.2, "warmup_epochs": 1,
        "weight_bits": 2, "act_bits": 2, "seed": 1e3, "init_checkpoint": "runs/fp/last.safetensors",
        "weight_quant": {"scale": "lsq", "per_channel": false, "grid": "narrow"},
        "act_quant": {"alpha_init": 6},
        "speq": {"u": 0.4, "high_bits": 32, "temperature": 2, "draw": "uniform", "uniform_low": 3}
    })");
    const TrainConfig c = config_from_json(j, "configs/x.json");
    CHECK(c.method == Method::speq);
    CHECK(c.model == ModelKind::resnet32);
    CHECK(c.shortcut == Shortcut::B);
    CHECK(c.dataset == DatasetKind::fashion_mnist);
    CHECK(c.data_dir == "/data/fm");
    CHECK(c.epochs == 3);
    CHECK(c.max_steps == 20);
    CHECK(c.lr_milestones == std::vector<int>{1, 2});
    CHECK(c.seed == 1000);  // an integral number is an integer
    CHECK(c.weight_quant.scale == WeightScale::lsq);
    CHECK(!c.weight_quant.per_channel);
    CHECK(c.weight_quant.grid == quant::Grid::narrow);
    CHECK(c.act_quant.alpha_init == 6.0);
    CHECK(c.speq.u == 0.4);
    CHECK(c.speq.high_bits == 32);
    CHECK(c.speq.draw == BitsDraw::uniform);
    CHECK(c.speq.uniform_low == 3);
    CHECK(c.speq.uniform_high == 8);
}

TEST_CASE("config: every wrong type, range or choice names the source, the key, the value and what is allowed") {
    CHECK(parse_error({{"speq", {{"u", 1.5}}}}) == "configs/x.json: speq.u = 1.5 is out of range [0, 1]");
    struct Case {
        json j;
        std::vector<std::string> expect;
    };
    const std::vector<Case> cases = {
        {{{"epochs", "ten"}}, {"configs/x.json: epochs = \"ten\" must be an integer in 1..100000"}},
        {{{"epochs", 0}}, {"epochs = 0 is out of range 1..100000"}},
        {{{"epochs", 2.5}}, {"epochs = 2.5 must be an integer"}},
        {{{"epochs", nullptr}}, {"epochs = null must be an integer"}},
        {{{"max_steps", -1}}, {"max_steps = -1 must be >= 0"}},
        {{{"max_steps", json::parse("18446744073709551615")}}, {"max_steps = 18446744073709551615 must be an integer >= 0"}},
        {{{"batch_size", 65537}}, {"batch_size = 65537 is out of range 1..65536"}},
        {{{"lr", -0.1}}, {"lr = -0.1 must be > 0"}},
        {{{"lr", 0}}, {"lr = 0 must be > 0"}},
        {{{"lr", "0.1"}}, {"lr = \"0.1\" must be a number > 0"}},
        {{{"lr", true}}, {"lr = true must be a number > 0"}},
        {{{"momentum", 1.0}}, {"momentum = 1.0 is out of range [0, 1)"}},
        {{{"weight_decay", -1e-4}}, {"weight_decay = -0.0001 is out of range [0, 1)"}},
        {{{"lr_gamma", 0}}, {"lr_gamma = 0 is out of range (0, 1]"}},
        {{{"weight_bits", 9}}, {"weight_bits = 9 is not a bit-width: allowed are 1..8 or 32 (full precision)"}},
        {{{"act_bits", 0}}, {"act_bits = 0 is not a bit-width"}},
        {{{"act_bits", 16}}, {"act_bits = 16 is not a bit-width"}},
        {{{"first_layer_bits", "8"}}, {"first_layer_bits = \"8\" must be an integer bit-width"}},
        {{{"speq", {{"high_bits", 33}}}}, {"speq.high_bits = 33 is not a bit-width"}},
        {{{"speq", {{"uniform_low", 32}}}}, {"speq.uniform_low = 32 is out of range 1..8"}},
        {{{"speq", {{"temperature", 0}}}}, {"speq.temperature = 0 must be > 0"}},
        {{{"kd", {{"kd_weight", -1}}}}, {"kd.kd_weight = -1 must be >= 0"}},
        {{{"act_quant", {{"alpha_init", -3}}}}, {"act_quant.alpha_init = -3 must be > 0"}},
        {{{"method", "sqeq"}}, {"method = \"sqeq\" is not one of fp, qat, kd, speq (did you mean 'speq'?)"}},
        {{{"method", 3}}, {"method = 3 must be a string, one of fp, qat, kd, speq"}},
        {{{"shortcut", "a"}}, {"shortcut = \"a\" is not one of A, B (did you mean 'A'?)"}},
        {{{"model", "resnet"}}, {"model = \"resnet\" is not one of small_cnn, resnet20, resnet32, resnet56"}},
        {{{"dataset", "imagenet"}}, {"dataset = \"imagenet\" is not one of cifar10, fashion_mnist, mnist"}},
        {{{"weight_quant", {{"grid", "mid"}}}}, {"weight_quant.grid = \"mid\" is not one of narrow, mid_rise"}},
        {{{"speq", {{"draw", "mix"}}}}, {"speq.draw = \"mix\" is not one of binary, uniform"}},
        {{{"kd", {{"loss", "mse"}}}}, {"kd.loss = \"mse\" is not one of kl, cosine"}},
        {{{"nesterov", 1}}, {"nesterov = 1 must be true or false"}},
        {{{"augment", "yes"}}, {"augment = \"yes\" must be true or false"}},
        {{{"data_dir", ""}}, {"data_dir = \"\" must not be empty"}},
        {{{"out_dir", ""}}, {"out_dir = \"\" must not be empty"}},
        {{{"data_dir", 5}}, {"data_dir = 5 must be a string"}},
        {{{"lr_milestones", 5}}, {"lr_milestones = 5 must be an array of integers"}},
        {{{"lr_milestones", {5, "x"}}}, {"lr_milestones = [5,\"x\"] must be an array of integers"}},
        {{{"lr_milestones", {0}}}, {"lr_milestones = [0] has 0: each must be >= 1"}},
        {{{"threads", -1}}, {"threads = -1 is out of range 0..1024"}},
        {{{"log_every", 1e12}}, {"log_every = 1000000000000.0 is too large"}},
        {{{"lr_milestones", {4294967296}}}, {"lr_milestones = [4294967296] has 4294967296, too large"}},
        {{{"seed", -5}}, {"seed = -5 must be >= 0"}},
        {{{"speq", 3}}, {"'speq' must be an object of the keys speq.high_bits, speq.u", "got 3"}},
        {{{"weight_quant", {1, 2}}}, {"'weight_quant' must be an object"}},
    };
    for (const Case& c : cases) {
        INFO("config: " << c.j.dump());
        const std::string message = parse_error(c.j);
        check_contains(message, {"configs/x.json: "});
        for (const std::string& e : c.expect) check_contains(message, {e});
    }
    check_contains(error_of([] { config_from_json(json::array({1}), "configs/x.json"); }),
                   {"configs/x.json", "must be a JSON object"});
}

TEST_CASE("config: unknown keys, at the top and nested, with a suggestion when one is close") {
    check_contains(parse_error({{"epoch", 3}}), {"configs/x.json: unknown key 'epoch' (did you mean 'epochs'?)"});
    check_contains(parse_error({{"speq", {{"uu", 0.4}}}}), {"configs/x.json: unknown key 'speq.uu' (did you mean 'speq.u'?)"});
    check_contains(parse_error({{"kd", {{"temperatur", 2}}}}), {"unknown key 'kd.temperatur' (did you mean 'kd.temperature'?)"});
    check_contains(parse_error({{"u", 0.4}}), {"unknown key 'u' (did you mean 'speq.u'?)"});
    check_contains(parse_error({{"spec", {{"u", 0.4}}}}), {"unknown key 'spec' (did you mean 'speq'?)"});
    check_contains(parse_error({{"weight_quant", {{"bits", 2}}}}), {"unknown key 'weight_quant.bits'"});
    const std::string far = parse_error({{"completely_unrelated", 1}});
    check_contains(far, {"unknown key 'completely_unrelated'"});
    CHECK(far.find("did you mean") == std::string::npos);
    // Dotted keys belong on the command line; in a file they are nested objects.
    check_contains(parse_error({{"speq.u", 0.4}}), {"unknown key 'speq.u'", "write nested objects: {\"speq\": {\"u\": ...}}"});
}

TEST_CASE("config: rules across keys are errors or warnings") {
    check_contains(parse_error({{"method", "kd"}}), {"configs/x.json: method 'kd' needs kd.teacher_checkpoint"});
    CHECK(parse_error({{"method", "kd"}, {"kd", {{"teacher_checkpoint", "t.safetensors"}}}}).empty());
    check_contains(parse_error({{"speq", {{"uniform_low", 6}, {"uniform_high", 4}}}}),
                   {"speq.uniform_low = 6 is above speq.uniform_high = 4"});
    check_contains(parse_error({{"momentum", 0}}), {"nesterov = true needs momentum > 0"});
    CHECK(parse_error({{"momentum", 0}, {"nesterov", false}}).empty());
    check_contains(parse_error({{"lr_schedule", "step"}}), {"lr_schedule 'step' needs lr_milestones"});
    check_contains(parse_error({{"lr_schedule", "step"}, {"lr_milestones", {10, 5}}}),
                   {"lr_milestones must be strictly increasing, got [10,5]"});
    check_contains(parse_error({{"weight_bits", 2}}), {"method 'fp' trains at full precision, but weight_bits = 2"});
    check_contains(parse_error({{"warmup_epochs", 15}, {"lr_schedule", "cosine"}}), {"warmup_epochs = 15 leaves no epoch"});
    check_contains(parse_error({{"method", "speq"}, {"speq", {{"ce_weight", 0}, {"kd_weight", 0}}}}),
                   {"the loss would be zero"});

    auto warnings_of = [](const json& j) {
        std::string all;
        for (const std::string& w : config_warnings(config_from_json(j, "x"))) all += w + "\n";
        return all;
    };
    const json w2a2 = {{"method", "speq"}, {"weight_bits", 2}, {"act_bits", 2}, {"init_checkpoint", "fp.safetensors"}};
    CHECK(warnings_of(w2a2).empty());
    check_contains(warnings_of({{"method", "qat"}, {"weight_bits", 2}, {"act_bits", 2}}), {"starts from random weights"});
    check_contains(warnings_of({{"method", "qat"}, {"init_checkpoint", "a"}}), {"trains a full-precision model"});
    json u0 = w2a2;
    u0["speq"] = {{"u", 0}};
    check_contains(warnings_of(u0), {"speq.u = 0", "distillation term is zero"});
    json low = w2a2;
    low["speq"] = {{"high_bits", 2}};
    check_contains(warnings_of(low), {"speq.high_bits = 2 is not above act_bits = 2"});
    check_contains(warnings_of({{"lr_milestones", {5}}}), {"lr_milestones are ignored by lr_schedule 'onecycle'"});
    check_contains(warnings_of({{"lr_schedule", "step"}, {"lr_milestones", {5, 20}}}), {"reach past the last epoch"});
    check_contains(warnings_of({{"warmup_epochs", 2}}), {"warmup_epochs is ignored by lr_schedule 'onecycle'"});
    json long_ramp = w2a2;
    long_ramp["epochs"] = 3;
    long_ramp["speq"] = {{"kd_warmup_epochs", 4}};
    check_contains(warnings_of(long_ramp), {"speq.kd_warmup_epochs = 4 is more than epochs = 3"});
    check_contains(warnings_of({{"kd", {{"teacher_checkpoint", "t"}}}}), {"kd.teacher_checkpoint is ignored by method 'fp'"});
}

TEST_CASE("config: --set overrides reach nested keys and arrays, the source of a bad value is named") {
    json j = json::object();
    apply_override(j, "speq.u=0.4");
    apply_override(j, "method=speq");                // not JSON: taken as text
    apply_override(j, "lr_schedule=\"step\"");        // JSON text works too
    apply_override(j, "lr_milestones=[5, 10]");
    apply_override(j, "nesterov=false");
    apply_override(j, "out_dir=2");                  // a string key keeps the text, not the number 2
    apply_override(j, "init_checkpoint=");           // empty text
    apply_override(j, "weight_quant.per_channel=false");
    apply_override(j, "speq.u=0.45");                // the last one wins
    CHECK(j["speq"]["u"] == 0.45);
    CHECK(j["out_dir"] == "2");
    CHECK(j["lr_milestones"] == json({5, 10}));
    const TrainConfig c = config_from_json(j, "x");
    CHECK(c.method == Method::speq);
    CHECK(c.speq.u == 0.45);
    CHECK(c.lr_schedule == LrSchedule::step);
    CHECK(c.lr_milestones == std::vector<int>{5, 10});
    CHECK(!c.nesterov);
    CHECK(c.out_dir == "2");
    CHECK(c.init_checkpoint.empty());
    CHECK(!c.weight_quant.per_channel);

    json k = json::object();
    check_contains(error_of([&] { apply_override(k, "speq.uu=1"); }),
                   {"--set speq.uu=1: unknown key 'speq.uu' (did you mean 'speq.u'?)"});
    check_contains(error_of([&] { apply_override(k, "speq=3"); }), {"--set speq=3: 'speq' is a group", "speq.u"});
    check_contains(error_of([&] { apply_override(k, "speq.u"); }), {"--set speq.u: expected key=value"});
    check_contains(error_of([&] { apply_override(k, "=3"); }), {"expected key=value"});
    json not_object = {{"speq", 3}};
    check_contains(error_of([&] { apply_override(not_object, "speq.u=0.4"); }), {"'speq' in the configuration is not an object"});
}

TEST_CASE("config: load_config reads a file, applies --set, and names the file or the --set in errors") {
    TempFile file(R"({"method": "speq", "weight_bits": 2, "act_bits": 2, "speq": {"u": 0.5, "high_bits": 8}})");
    const TrainConfig c = load_config(file.path, {"speq.u=0.6", "epochs=3", "act_quant.alpha_init=2.5"});
    CHECK(c.method == Method::speq);
    CHECK(c.speq.u == 0.6);
    CHECK(c.speq.high_bits == 8);
    CHECK(c.epochs == 3);
    CHECK(c.act_quant.alpha_init == 2.5);

    CHECK(error_of([&] { load_config(file.path, {"speq.u=1.5"}); }) ==
          "--set speq.u=1.5: speq.u = 1.5 is out of range [0, 1]");
    TempFile bad(R"({"speq": {"u": 2}})");
    CHECK(error_of([&] { load_config(bad.path); }) == bad.path + ": speq.u = 2 is out of range [0, 1]");
    CHECK(load_config(bad.path, {"speq.u=0.3"}).speq.u == 0.3);  // --set fixes what the file got wrong
    check_contains(error_of([&] { load_config(file.path, {"method=fp"}); }),
                   {file.path + " with --set overrides: method 'fp' trains at full precision"});

    check_contains(error_of([] { load_config("/nonexistent/speq.json"); }), {"/nonexistent/speq.json", "cannot open config file"});
    TempFile not_json(R"({"epochs": 3,})");
    check_contains(error_of([&] { load_config(not_json.path); }), {not_json.path, "not valid JSON"});
    TempFile twice(R"({"lr": 0.1, "speq": {"u": 0.1, "u": 0.2}})");
    check_contains(error_of([&] { load_config(twice.path); }), {twice.path, "key 'u' appears twice"});
    TempFile array("[1, 2]");
    check_contains(error_of([&] { load_config(array.path); }), {array.path, "must be a JSON object"});

    // No file: the defaults plus the overrides.
    CHECK(load_config("", {"epochs=2"}).epochs == 2);
    CHECK(to_json(load_config("")) == to_json(TrainConfig{}));
}

TEST_CASE("config: to_json round-trips, and every row of the table fills its own member") {
    const TrainConfig defaults;
    const json base = to_json(defaults);
    json all_changed = base;
    int rows = 0;
    for (const ConfigField& f : config_fields()) {
        ++rows;
        std::string pointer = "/" + f.key;
        std::replace(pointer.begin(), pointer.end(), '.', '/');
        const json::json_pointer ptr(pointer);
        REQUIRE(base.contains(ptr));
        // A valid value other than the default: the first candidate the row accepts.
        const json old = base[ptr];
        std::vector<json> candidates;
        if (old.is_boolean()) candidates = {!old.get<bool>()};
        if (!f.choices.empty())
            for (const std::string& choice : f.choices) candidates.push_back(choice);
        if (old.is_string() && f.choices.empty()) candidates = {"some/path"};
        if (old.is_array()) candidates = {json({3, 7})};
        if (old.is_number()) candidates = {2, 1, 3, 4, 0.25, 0.75, 7, 12};
        bool changed = false;
        for (const json& v : candidates) {
            if (v == old) continue;
            TrainConfig c;
            if (!f.set(c, v).empty()) continue;
            const json after = to_json(c);
            json expected = base;
            expected[ptr] = v;
            INFO("key " << f.key << " = " << v.dump());
            CHECK(after == expected);  // exactly this key changed, to exactly this value
            all_changed[ptr] = v;
            changed = true;
            break;
        }
        INFO("key " << f.key);
        CHECK(changed);
    }
    CHECK(rows == static_cast<int>(config_fields().size()));

    // Everything at once (keys that break cross-field rules are fixed up) survives a round trip.
    all_changed["method"] = "speq";
    all_changed["lr_schedule"] = "step";
    all_changed["speq"]["uniform_low"] = 2;
    all_changed["speq"]["uniform_high"] = 7;
    all_changed["warmup_epochs"] = 1;
    const TrainConfig c = config_from_json(all_changed, "x");
    CHECK(to_json(c) == all_changed);
    CHECK(to_json(config_from_json(to_json(c), "x")) == to_json(c));
    TempFile dumped(to_json(c).dump(2));
    CHECK(to_json(load_config(dumped.path)) == to_json(c));
    // Keys in to_json are exactly the table's keys.
    CHECK(to_json(defaults).flatten().size() == config_fields().size());  // [] flattens to one null leaf
}

TEST_CASE("config: the Markdown reference lists every key, its default and what is allowed, and every rule") {
    const std::string md = config_reference_markdown();
    for (const ConfigField& f : config_fields()) {
        INFO("key " << f.key);
        CHECK(md.find("| `" + f.key + "` | " + f.type + " | `" + f.get(TrainConfig{}).dump() + "` |") != std::string::npos);
        CHECK(!f.description.empty());
        CHECK(f.description.find('\n') == std::string::npos);
    }
    for (const ConfigRule& r : config_rules()) CHECK(md.find("- " + r.text + "\n") != std::string::npos);
    CHECK(md.find("| `speq.u` | number | `0.5` | [0, 1] |") != std::string::npos);
    CHECK(md.find("| `method` | string | `\"fp\"` | `fp`, `qat`, `kd`, `speq` |") != std::string::npos);
    CHECK(md.find("| `weight_bits` | integer | `32` | 1..8 or 32 (full precision) |") != std::string::npos);
    // Table rows = keys (no row lost to a stray newline or pipe).
    size_t rows = 0;
    for (size_t at = md.find("\n| `"); at != std::string::npos; at = md.find("\n| `", at + 1)) ++rows;
    CHECK(rows == config_fields().size());
}

TEST_CASE("config: docs/config-reference.md is the generated reference, unchanged") {
    const std::filesystem::path file = std::filesystem::path(SPEQ_SOURCE_DIR) / "docs" / "config-reference.md";
    std::ifstream in(file, std::ios::binary);
    REQUIRE_MESSAGE(in.good(), "cannot read ", file.string());
    const std::string text((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
    INFO("docs/config-reference.md differs from the code; regenerate it with "
         "./build/speq-train --print-config-reference > docs/config-reference.md");
    CHECK(text == config_reference_markdown());
}

TEST_CASE("config: every ready-made config in configs/ is valid") {
    namespace fs = std::filesystem;
    const fs::path dir = fs::path(SPEQ_SOURCE_DIR) / "configs";
    REQUIRE(fs::is_directory(dir));
    int count = 0;
    for (const auto& entry : fs::directory_iterator(dir)) {
        if (entry.path().extension() != ".json") continue;
        INFO("config file: ", entry.path().string());
        CHECK_NOTHROW(io::load_config(entry.path().string()));
        ++count;
    }
    CHECK(count >= 10);
}
