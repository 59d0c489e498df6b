// Faults during training: signals (a real speq-train process gets SIGINT / SIGTERM mid-epoch,
// then --resume must give the metrics of an uninterrupted run), non-finite values (the last good
// checkpoint survives), an unwritable out_dir, and a write that fails part way (file-size limit).
// The process tests run the speq-train built beside this test (SPEQ_TRAIN_BIN, set by
// examples/CMakeLists.txt); without it they are skipped.
#include <doctest/doctest.h>

#include <poll.h>
#include <signal.h>
#include <spawn.h>
#include <sys/wait.h>
#include <unistd.h>

#include <chrono>
#include <csignal>
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <string>
#include <vector>

#include "speq/speq.hpp"
#include "child_process.hpp"
#include "run_files.hpp"
#include "synthetic_mnist.hpp"
#include "speq/train/interrupt.hpp"
#include "speq/train/trainer.hpp"


using namespace speq;
namespace fs = std::filesystem;

namespace {

using testing::check_same_tensors;
using testing::Child;
using testing::lines_of;
using testing::timeless;
using testing::run;
using testing::spawn;
using testing::write_split;

struct TempDir {
    fs::path path;
    explicit TempDir(const std::string& name)
        : path(fs::temp_directory_path() / ("speq_faults_" + name + "_" + std::to_string(::getpid()))) {
        fs::remove_all(path);
        fs::create_directories(path);
    }
    ~TempDir() {
        std::error_code ec;
        fs::remove_all(path, ec);
    }
};

std::string read_bytes(const fs::path& path) {
    std::ifstream in(path, std::ios::binary);
    return std::string(std::istreambuf_iterator<char>(in), std::istreambuf_iterator<char>());
}

std::vector<std::string> listing(const fs::path& dir) {
    std::vector<std::string> names;
    for (const auto& e : fs::directory_iterator(dir)) names.push_back(e.path().filename().string());
    std::sort(names.begin(), names.end());
    return names;
}

// The tiny run of these tests: SPEQ W2A2 small CNN, 2 epochs.
nlohmann::json tiny_config_json(const fs::path& data) {
    return {{"method", "speq"}, {"model", "small_cnn"}, {"dataset", "mnist"}, {"data_dir", data.string()},
            {"epochs", 2},      {"batch_size", 16},     {"lr", 0.05},         {"lr_schedule", "cosine"},
            {"weight_bits", 2}, {"act_bits", 2},        {"log_every", 1},     {"threads", 1}};
}

// The line after "prefix" in `text` (to the end of that line), or "".
[[maybe_unused]] std::string line_after(const std::string& text, const std::string& prefix) {
    const size_t at = text.find(prefix);
    if (at == std::string::npos) return "";
    const size_t begin = at + prefix.size();
    return text.substr(begin, text.find('\n', begin) - begin);
}

volatile std::sig_atomic_t test_handler_calls = 0;
void test_handler(int) { test_handler_calls = test_handler_calls + 1; }

}  // namespace

TEST_CASE("InterruptGuard: a signal sets the flag, the previous handlers come back, ignored stays ignored") {
    struct sigaction mine {}, saved_int{}, saved_term{}, now{};
    mine.sa_handler = test_handler;
    sigemptyset(&mine.sa_mask);
    ::sigaction(SIGINT, &mine, &saved_int);
    ::sigaction(SIGTERM, &mine, &saved_term);
    test_handler_calls = 0;
    {
        train::InterruptGuard guard;
        CHECK_FALSE(guard.requested());
        ::sigaction(SIGXFSZ, nullptr, &now);
        CHECK((now.sa_handler == SIG_IGN));  // a file-size limit becomes a write error, not a kill
        ::raise(SIGTERM);
        CHECK(guard.requested());
        CHECK(guard.signal() == SIGTERM);
        {
            train::InterruptGuard inner;  // nested: shares the flag, does not clear it
            CHECK(inner.requested());
        }
        CHECK(guard.requested());
        CHECK(test_handler_calls == 0);
    }
    ::sigaction(SIGINT, nullptr, &now);
    CHECK((now.sa_handler == test_handler));
    ::sigaction(SIGXFSZ, nullptr, &now);
    CHECK((now.sa_handler == SIG_DFL));
    ::raise(SIGINT);
    CHECK(test_handler_calls == 1);
    {
        train::InterruptGuard guard;  // a fresh outermost guard starts clear
        CHECK_FALSE(guard.requested());
    }

    struct sigaction ignore {};
    ignore.sa_handler = SIG_IGN;
    sigemptyset(&ignore.sa_mask);
    ::sigaction(SIGINT, &ignore, nullptr);
    {
        train::InterruptGuard guard;
        ::sigaction(SIGINT, nullptr, &now);
        CHECK((now.sa_handler == SIG_IGN));  // background job: Ctrl-C is not for it
        ::raise(SIGINT);
        CHECK_FALSE(guard.requested());
    }
    ::sigaction(SIGINT, &saved_int, nullptr);
    ::sigaction(SIGTERM, &saved_term, nullptr);
    CHECK(train::signal_name(SIGINT) == "SIGINT");
    CHECK(train::signal_name(SIGTERM) == "SIGTERM");
}

TEST_CASE("save_checkpoint refuses a tensor that is not finite and leaves the old file") {
    TempDir tmp("nonfinite_save");
    Tensor t = Tensor::of({3}, {1, 2, 3});
    CHECK(train::all_finite(t));
    CHECK(train::non_finite_summary(t).empty());
    t[1] = std::numeric_limits<float>::infinity();
    CHECK_FALSE(train::all_finite(t));
    CHECK(train::non_finite_summary(t) == "inf at element 1; 1 of 3 elements are not finite");
    t[2] = std::nanf("");
    CHECK(train::non_finite_summary(t) == "inf at element 1; 2 of 3 elements are not finite");
    Tensor empty = Tensor::zeros({0});
    CHECK(train::all_finite(empty));

    Rng rng(1);
    auto model = nn::make_model("small_cnn", 4, 1, nn::Shortcut::A, rng);
    optim::SGD sgd(model->named_parameters(), optim::SGDOptions{});
    io::TrainConfig config;
    const std::string path = (tmp.path / "last.safetensors").string();
    train::save_checkpoint(path, *model, sgd, config, train::TrainingPosition{});
    const std::string before = read_bytes(path);
    Tensor* victim = model->state().back().second;
    (*victim)[0] = std::nanf("");
    std::string message;
    try {
        train::save_checkpoint(path, *model, sgd, config, train::TrainingPosition{});
    } catch (const Error& e) {
        message = e.what();
    }
    CHECK(message.find(path + ": not written: tensor '" + model->state().back().first + "' is not finite (nan at element 0") !=
          std::string::npos);
    CHECK(read_bytes(path) == before);
    CHECK(listing(tmp.path) == std::vector<std::string>{"last.safetensors"});
}

TEST_CASE("first_non_finite_gradient / _state name the first bad tensor in model order") {
    Rng rng(2);
    auto model = nn::make_model("small_cnn", 4, 1, nn::Shortcut::A, rng);
    CHECK(train::first_non_finite_gradient(*model).first.empty());  // no gradients yet
    Var x(randn({2, 1, 28, 28}, rng));
    Var loss = cross_entropy((*model)(x), {0, 3});
    backward(loss);
    CHECK(train::first_non_finite_gradient(*model).first.empty());
    CHECK(train::first_non_finite_state(*model).first.empty());
    const nn::NamedParameters params = model->named_parameters();
    REQUIRE(params.size() >= 4);
    params[3].second.grad_for_accumulate()[1] = std::numeric_limits<float>::infinity();
    params[1].second.grad_for_accumulate()[0] = std::nanf("");
    const auto [name, bad] = train::first_non_finite_gradient(*model);
    CHECK(name == params[1].first);
    CHECK(bad == "nan at element 0; 1 of " + std::to_string(params[1].second.numel()) + " elements are not finite");
    Tensor* last_buffer = model->named_buffers().back().second;
    (*last_buffer)[0] = -std::numeric_limits<float>::infinity();
    CHECK(train::first_non_finite_state(*model).first == model->named_buffers().back().first);
    CHECK(train::first_non_finite_state(*model).second.find("-inf at element 0") == 0);
}

TEST_CASE("trainer: a huge lr stops at the first non-finite step, naming it, and the last checkpoint is intact") {
    TempDir tmp("nan");
    write_split(tmp.path, "train", 64, 1);
    write_split(tmp.path, "t10k", 32, 2);
    io::TrainConfig c = io::config_from_json(tiny_config_json(tmp.path), "test");
    c.threads = 0;  // in this process: leave the thread setting of other tests alone
    c.method = io::Method::fp;
    c.weight_bits = c.act_bits = 32;
    c.lr = 1e30;
    c.lr_schedule = io::LrSchedule::constant;
    c.out_dir = (tmp.path / "run").string();
    c.max_steps = 1;  // one good step (finite gradient, huge update), then a checkpoint
    train::Trainer(c, false).run();
    const fs::path last = tmp.path / "run" / "last.safetensors";
    REQUIRE(fs::exists(last));
    const std::string before = read_bytes(last);

    c.max_steps = 0;
    std::string message;
    try {
        train::Trainer(c, true).run();
    } catch (const Error& e) {
        message = e.what();
    }
    MESSAGE(message);
    CHECK(message.find("train: ") == 0);
    CHECK(message.find("step 2 (epoch 1, batch 2)") != std::string::npos);
    CHECK(message.find("not finite") != std::string::npos);
    CHECK(message.find("'") != std::string::npos);  // names a tensor of the model
    CHECK(message.find(last.string() + ", which is intact") != std::string::npos);
    CHECK(read_bytes(last) == before);
    io::TensorFile file = io::load_safetensors(last.string());
    for (const auto& [name, t] : file.tensors) CHECK_MESSAGE(train::all_finite(t), name);
    CHECK_FALSE(fs::exists(tmp.path / "run" / "epoch_1.safetensors"));
}

TEST_CASE("trainer: an out_dir that cannot be a folder fails before any data is read") {
    TempDir tmp("outdir");
    std::ofstream(tmp.path / "a_file") << "x";
    io::TrainConfig c;
    c.data_dir = (tmp.path / "no_data_here").string();
    c.out_dir = (tmp.path / "a_file" / "run").string();
    std::string message;
    try {
        train::Trainer(c, false).run();
    } catch (const Error& e) {
        message = e.what();
    }
    CHECK(message == "output folder " + c.out_dir + ": cannot create it: " + (tmp.path / "a_file").string() +
                         " is a file, not a folder");
}

// Found by tests/fuzz/fuzz_config.cpp: a --set value that is not UTF-8 escaped as a nlohmann
// exception (not a speq::Error) with a message naming neither the key nor the --set.
TEST_CASE("config: a --set value that is not valid UTF-8 is a clear speq::Error") {
    nlohmann::json j = nlohmann::json::object();
    CHECK_THROWS_WITH_AS(io::apply_override(j, "speq.u=0.\xff"), "--set speq.u=0.\xEF\xBF\xBD: not valid UTF-8 text",
                         Error);
    CHECK_THROWS_WITH_AS(io::load_config("", {"out_dir=runs/\xc3"}), "--set out_dir=runs/\xEF\xBF\xBD: not valid UTF-8 text",
                         Error);
    // A JSON value built in code with such bytes: the message shows them replaced, no other exception.
    const nlohmann::json bad = {{"method", "\xff"}};
    CHECK_THROWS_AS(io::config_from_json(bad, "code"), Error);
}

#ifdef SPEQ_TRAIN_BIN

TEST_CASE("speq-train: SIGINT mid-epoch writes a checkpoint and prints the command, and resuming matches an uninterrupted run") {
    TempDir tmp("sigint");
    write_split(tmp.path, "train", 384, 1);  // 24 steps per epoch
    write_split(tmp.path, "t10k", 64, 2);
    const std::string config = (tmp.path / "config.json").string();
    std::ofstream(config) << tiny_config_json(tmp.path).dump(2);

    std::string output;
    REQUIRE(run({SPEQ_TRAIN_BIN, "--config", config, "--set", "out_dir=" + (tmp.path / "straight").string()}, &output) == 0);

    // An out_dir with a space: the printed command must quote it.
    const fs::path out = tmp.path / "inter rupted";
    Child child = spawn({SPEQ_TRAIN_BIN, "--config", config, "--set", "out_dir=" + out.string()});
    REQUIRE_MESSAGE(child.read_until("epoch 1/2  batch 2/24"), child.output);
    ::kill(child.pid, SIGINT);
    const int status = child.finish();
    INFO(child.output);
    REQUIRE(WIFEXITED(status));
    CHECK(WEXITSTATUS(status) == 130);
    CHECK(child.output.find("speq: SIGINT received: finishing this step") != std::string::npos);
    const std::string stopped = line_after(child.output, "speq-train: SIGINT received: stopped after step ");
    MESSAGE("stopped after step " << stopped);
    if (stopped.find("epoch 1, batch ") == std::string::npos) WARN_MESSAGE(false, "the signal did not land in the middle of epoch 1");
    CHECK(stopped.find("checkpoint " + (out / "last.safetensors").string() + " written") != std::string::npos);
    CHECK(fs::exists(out / "last.safetensors"));
    CHECK_FALSE(fs::exists(out / "summary.json"));

    const std::string resume = line_after(child.output, "speq-train: to resume: ");
    CHECK(resume == std::string(SPEQ_TRAIN_BIN) + " --config " + config + " --set 'out_dir=" + out.string() + "' --resume");
    std::string resumed_output;
    REQUIRE(run({"/bin/sh", "-c", resume}, &resumed_output) == 0);
    INFO(resumed_output);
    CHECK(resumed_output.find("resumed from") != std::string::npos);

    const std::vector<std::string> a = lines_of(tmp.path / "straight" / "metrics.jsonl");
    const std::vector<std::string> b = lines_of(out / "metrics.jsonl");
    REQUIRE(a.size() == 2);
    REQUIRE(b.size() == 2);
    for (size_t i = 0; i < a.size(); ++i) CHECK(timeless(a[i]) == timeless(b[i]));
    CHECK(fs::exists(out / "epoch_1.safetensors"));
    CHECK(fs::exists(out / "epoch_2.safetensors"));
    check_same_tensors(io::load_safetensors((tmp.path / "straight" / "last.safetensors").string()),
                       io::load_safetensors((out / "last.safetensors").string()));
}

TEST_CASE("speq-train: SIGTERM stops after the step with exit code 143, a second SIGINT stops at once") {
    TempDir tmp("sigterm");
    write_split(tmp.path, "train", 512, 3);
    write_split(tmp.path, "t10k", 32, 4);
    nlohmann::json j = tiny_config_json(tmp.path);
    j["model"] = "resnet20";  // slower steps, so that the second signal lands inside one
    j["batch_size"] = 64;
    const std::string config = (tmp.path / "config.json").string();
    std::ofstream(config) << j.dump(2);

    {
        Child child = spawn({SPEQ_TRAIN_BIN, "--config", config, "--set", "out_dir=" + (tmp.path / "term").string()});
        REQUIRE_MESSAGE(child.read_until("batch 1/8"), child.output);
        ::kill(child.pid, SIGTERM);
        const int status = child.finish();
        INFO(child.output);
        REQUIRE(WIFEXITED(status));
        CHECK(WEXITSTATUS(status) == 143);
        CHECK(child.output.find("speq-train: SIGTERM received: stopped after step ") != std::string::npos);
        CHECK(child.output.find("--resume") != std::string::npos);
        io::TensorFile file = io::load_safetensors((tmp.path / "term" / "last.safetensors").string());
        CHECK(std::stoll(file.metadata.at("step")) >= 1);
    }
    {
        const fs::path out = tmp.path / "twice";
        Child child = spawn({SPEQ_TRAIN_BIN, "--config", config, "--set", "out_dir=" + out.string()});
        REQUIRE_MESSAGE(child.read_until("batch 1/8"), child.output);
        ::kill(child.pid, SIGINT);
        REQUIRE_MESSAGE(child.read_until("SIGINT received: finishing"), child.output);  // the first was handled
        ::kill(child.pid, SIGINT);
        const int status = child.finish();
        INFO(child.output);
        REQUIRE(WIFSIGNALED(status));
        CHECK(WTERMSIG(status) == SIGINT);
        CHECK(child.output.find("second interrupt, stopping now") != std::string::npos);
        CHECK_FALSE(fs::exists(out / "last.safetensors"));  // killed inside step 2: nothing written
    }
}

TEST_CASE("speq-train: a checkpoint write that fails part way (file-size limit) is an error and the old checkpoint stays") {
    TempDir tmp("fsize");
    write_split(tmp.path, "train", 384, 5);
    write_split(tmp.path, "t10k", 32, 6);
    const std::string config = (tmp.path / "config.json").string();
    std::ofstream(config) << tiny_config_json(tmp.path).dump(2);
    const fs::path out = tmp.path / "run";
    std::string output;
    REQUIRE(run({SPEQ_TRAIN_BIN, "--config", config, "--set", "out_dir=" + out.string(), "--set", "max_steps=3"}, &output) == 0);
    const std::string before = read_bytes(out / "last.safetensors");
    REQUIRE(before.size() > 16 * 1024);

    // ulimit -f counts 512- or 1024-byte blocks (shells differ): either way room for config.json
    // and metrics.jsonl, not for a checkpoint.
    const std::string limited = "ulimit -f " + std::to_string(before.size() / 2048) + " && exec " + SPEQ_TRAIN_BIN +
                                " --config " + config + " --set out_dir=" + out.string() + " --resume";
    const int code = run({"/bin/sh", "-c", limited}, &output);
    INFO(output);
    CHECK(code == 1);
    CHECK(output.find("speq-train: error: " + (out / "epoch_1.safetensors").string() + ": write failed: File too large") !=
          std::string::npos);
    CHECK(read_bytes(out / "last.safetensors") == before);
    // summary.json is from the first (max_steps) run; no epoch_1.safetensors, no temporary.
    CHECK(listing(out) == std::vector<std::string>{"config.json", "last.safetensors", "metrics.jsonl", "summary.json"});
}

#endif  // SPEQ_TRAIN_BIN
