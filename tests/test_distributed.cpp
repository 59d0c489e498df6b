// Data-parallel training as a user runs it: `mpirun --oversubscribe -np 2 speq-train ...` on a
// small data set the test writes. Two ranks are bit-identical run to run; SIGTERM to mpirun stops
// every rank at one step with one checkpoint, and --resume then equals an uninterrupted run; a rank
// that dies, ranks that read different configs, a batch that does not split, a non-finite loss and a
// resume on another number of processes all end the job with a message, never a hang.
// Built only with -DSPEQ_MPI=ON (examples/CMakeLists.txt sets SPEQ_MPIRUN and SPEQ_TRAIN_MPI_BIN);
// elsewhere these tests are skipped.
#include <doctest/doctest.h>

#include <signal.h>
#include <unistd.h>

#include <algorithm>
#include <cmath>
#include <cstdlib>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <string>
#include <vector>

#include "child_process.hpp"
#include "run_files.hpp"
#include "speq/speq.hpp"
#include "synthetic_mnist.hpp"

using namespace speq;
namespace fs = std::filesystem;

#if defined(SPEQ_MPIRUN) && defined(SPEQ_TRAIN_MPI_BIN)
namespace {

using testing::check_same_tensors;
using testing::Child;
using testing::lines_of;
using testing::timeless;
using testing::spawn;

struct TempDir {
    fs::path path;
    explicit TempDir(const std::string& name)
        : path(fs::temp_directory_path() / ("speq_dist_" + name + "_" + std::to_string(::getpid()))) {
        fs::remove_all(path);
        fs::create_directories(path);
    }
    ~TempDir() {
        std::error_code ec;
        fs::remove_all(path, ec);
    }
};

// 1,024 training and 128 test images; ResNet-20 (slow enough per step for a signal to land mid-run)
// at W2A2 with SPEQ, `epochs` epochs of 32 steps, batches of 32 (16 per rank), one thread per rank.
fs::path write_run(const TempDir& tmp, int epochs = 2) {
    testing::write_split(tmp.path, "train", 1024, 21);
    testing::write_split(tmp.path, "t10k", 128, 22);
    const nlohmann::json config = {
        {"method", "speq"}, {"model", "resnet20"}, {"dataset", "mnist"}, {"data_dir", tmp.path.string()},
        {"epochs", epochs}, {"batch_size", 32},    {"lr", 0.05},         {"lr_schedule", "cosine"},
        {"weight_bits", 2}, {"act_bits", 2},       {"log_every", 1},     {"threads", 1}};
    const fs::path file = tmp.path / "config.json";
    std::ofstream(file) << config.dump(2);
    return file;
}

// mpirun -np `ranks` speq-train --config `config` --set out_dir=`out` [more...]
std::vector<std::string> mpirun(int ranks, const fs::path& config, const fs::path& out,
                                const std::vector<std::string>& more = {}) {
    // Open MPI refuses root unless told (CI and these machines run as root).
    ::setenv("OMPI_ALLOW_RUN_AS_ROOT", "1", 1);
    ::setenv("OMPI_ALLOW_RUN_AS_ROOT_CONFIRM", "1", 1);
    // Open MPI 4's mpirun, on SIGTERM (or when a rank dies), waits odls_base_sigkill_timeout
    // seconds (default 1), sends the ranks SIGTERM, waits as long again, then sends SIGKILL: 3 s
    // leave time to finish the step and write the checkpoint, and keep the fault tests short.
    std::vector<std::string> args = {SPEQ_MPIRUN, "--oversubscribe", "--mca", "odls_base_sigkill_timeout", "3",
                                     "-np", std::to_string(ranks), SPEQ_TRAIN_MPI_BIN,
                                     "--config", config.string(), "--set", "out_dir=" + out.string()};
    args.insert(args.end(), more.begin(), more.end());
    return args;
}

int exit_code(int status) { return WIFEXITED(status) ? WEXITSTATUS(status) : 128 + WTERMSIG(status); }

// The two runs' metrics (without times) and every tensor of last.safetensors, bit for bit.
void check_same_run(const fs::path& a, const fs::path& b, size_t epochs) {
    const std::vector<std::string> ma = lines_of(a / "metrics.jsonl"), mb = lines_of(b / "metrics.jsonl");
    REQUIRE(ma.size() == epochs);
    REQUIRE(mb.size() == ma.size());
    for (size_t i = 0; i < ma.size(); ++i) CHECK(timeless(ma[i]) == timeless(mb[i]));
    const io::TensorFile fa = io::load_safetensors((a / "last.safetensors").string());
    check_same_tensors(fa, io::load_safetensors((b / "last.safetensors").string()));
    CHECK(fa.metadata.at("ranks") == "2");
}

// Runs to the end (a hang fails the test after `seconds`); returns the exit code.
int run_to_end(const std::vector<std::string>& args, std::string* output = nullptr, double seconds = 180) {
    Child c = spawn(args);
    const int status = c.finish(seconds);
    if (output) *output = c.output;
    return exit_code(status);
}

}  // namespace

TEST_CASE("distributed: 2 ranks are bit-identical run to run, and rank 0 alone writes") {
    TempDir tmp("repeat");
    const fs::path config = write_run(tmp);
    std::string output;
    REQUIRE_MESSAGE(run_to_end(mpirun(2, config, tmp.path / "a"), &output) == 0, output);
    REQUIRE_MESSAGE(run_to_end(mpirun(2, config, tmp.path / "b"), &output) == 0, output);
    check_same_run(tmp.path / "a", tmp.path / "b", 2);
    size_t done = 0;  // one "done" line: rank 0's
    for (size_t at = output.find("done: test top-1"); at != std::string::npos; at = output.find("done: test top-1", at + 1))
        ++done;
    CHECK(done == 1);
    CHECK(fs::exists(tmp.path / "b" / "epoch_2.safetensors"));
}

TEST_CASE("distributed: SIGTERM to mpirun stops every rank at one step with one checkpoint, and --resume equals an uninterrupted run") {
    TempDir tmp("sigterm");
    const fs::path config = write_run(tmp, 6);  // 192 steps: still running when the ranks get SIGTERM
    std::string output;
    REQUIRE_MESSAGE(run_to_end(mpirun(2, config, tmp.path / "straight"), &output) == 0, output);

    Child c = spawn(mpirun(2, config, tmp.path / "stopped"));
    REQUIRE_MESSAGE(c.read_until("batch 2/32"), c.output);
    ::kill(c.pid, SIGTERM);  // mpirun: SIGTERM to the ranks 3 s later (its output ends here)
    const int status = c.finish(120);
    INFO(c.output);
    CHECK(exit_code(status) != 0);
    const fs::path last = tmp.path / "stopped" / "last.safetensors";
    REQUIRE(fs::exists(last));
    CHECK_FALSE(fs::exists(tmp.path / "stopped" / "summary.json"));  // it stopped before the end
    const int64_t step = std::stoll(io::load_safetensors(last.string()).metadata.at("step"));
    MESSAGE("stopped after step ", step, " of 192");
    CHECK(step > 0);
    CHECK(step < 192);

    REQUIRE_MESSAGE(run_to_end(mpirun(2, config, tmp.path / "stopped", {"--resume"}), &output) == 0, output);
    CHECK(output.find("resumed from") != std::string::npos);
    check_same_run(tmp.path / "straight", tmp.path / "stopped", 6);
}

// The largest |a - b| / (1 + |b|) over every model tensor of two checkpoints (momentum included).
double largest_difference(const fs::path& a, const fs::path& b) {
    const io::TensorFile fa = io::load_safetensors(a.string()), fb = io::load_safetensors(b.string());
    REQUIRE(fa.tensors.size() == fb.tensors.size());
    double worst = 0.0;
    std::string where;
    for (size_t i = 0; i < fa.tensors.size(); ++i) {
        REQUIRE(fa.tensors[i].first == fb.tensors[i].first);
        const Tensor &ta = fa.tensors[i].second, &tb = fb.tensors[i].second;
        for (int64_t j = 0; j < ta.numel(); ++j) {
            const double d = std::abs(static_cast<double>(ta[j]) - tb[j]) / (1.0 + std::abs(tb[j]));
            if (d > worst) worst = d, where = fa.tensors[i].first + "[" + std::to_string(j) + "]";
        }
    }
    MESSAGE("largest difference at ", where);
    return worst;
}

TEST_CASE("distributed: with sync_bn, 2 ranks compute what 1 process computes on the same global batch") {
    TempDir tmp("sync_bn");
    const fs::path config = write_run(tmp);
    // Full precision (a quantizer would turn a last-bit difference into a whole step now and then),
    // from a network trained for one epoch: from random weights the first steps are so ill-
    // conditioned that float rounding (1e-7 after 3 steps) grows to 1e-2 within 10 (measured on
    // CIFAR-10, lr 0.001), whatever computes them. 20 steps.
    std::string output;
    REQUIRE_MESSAGE(run_to_end(mpirun(1, config, tmp.path / "warm", {"--set", "method=fp", "--set", "weight_bits=32",
                                                                      "--set", "act_bits=32", "--set", "epochs=1"}),
                               &output) == 0,
                    output);
    const std::vector<std::string> fp = {"--set", "method=fp", "--set", "weight_bits=32", "--set", "act_bits=32",
                                         "--set", "init_checkpoint=" + (tmp.path / "warm" / "last.safetensors").string(),
                                         "--set", "lr=0.01", "--set", "max_steps=20", "--set", "sync_bn=true"};
    REQUIRE_MESSAGE(run_to_end(mpirun(1, config, tmp.path / "one", fp), &output) == 0, output);
    REQUIRE_MESSAGE(run_to_end(mpirun(2, config, tmp.path / "two", fp), &output) == 0, output);
    const double worst = largest_difference(tmp.path / "two" / "last.safetensors", tmp.path / "one" / "last.safetensors");
    MESSAGE("largest relative difference of any parameter, statistic or momentum after 20 steps: ", worst);
    CHECK(worst < 1e-5);  // measured 3.9e-7 (Zen 5)
    const nlohmann::json a = nlohmann::json::parse(lines_of(tmp.path / "one" / "metrics.jsonl").at(0));
    const nlohmann::json b = nlohmann::json::parse(lines_of(tmp.path / "two" / "metrics.jsonl").at(0));
    CHECK(b["train_loss"].get<double>() == doctest::Approx(a["train_loss"].get<double>()).epsilon(1e-5));
    CHECK(b["train_top1"] == a["train_top1"]);
    CHECK(b["test_top1"] == a["test_top1"]);

    // Without sync_bn each rank normalizes its own 16 images: not the same computation.
    std::vector<std::string> own = fp;
    own.back() = "sync_bn=false";
    REQUIRE_MESSAGE(run_to_end(mpirun(2, config, tmp.path / "own", own), &output) == 0, output);
    CHECK(largest_difference(tmp.path / "own" / "last.safetensors", tmp.path / "one" / "last.safetensors") > 1e-3);

    // With sync_bn the number of processes may change on --resume: 10 steps on 2, 10 more on 1.
    std::vector<std::string> first_half = fp;
    first_half[first_half.size() - 3] = "max_steps=10";
    REQUIRE_MESSAGE(run_to_end(mpirun(2, config, tmp.path / "switch", first_half), &output) == 0, output);
    std::vector<std::string> second_half = fp;
    second_half.push_back("--resume");
    REQUIRE_MESSAGE(run_to_end(mpirun(1, config, tmp.path / "switch", second_half), &output) == 0, output);
    CHECK(largest_difference(tmp.path / "switch" / "last.safetensors", tmp.path / "one" / "last.safetensors") < 1e-5);
}

TEST_CASE("distributed: faults end the whole job with a message naming the rank or the key, never a hang") {
    TempDir tmp("faults");
    const fs::path config = write_run(tmp);
    std::string output;

    SUBCASE("ranks that read different configs are refused at start") {
        ::setenv("OMPI_ALLOW_RUN_AS_ROOT", "1", 1);
        ::setenv("OMPI_ALLOW_RUN_AS_ROOT_CONFIRM", "1", 1);
        const std::string out = "out_dir=" + (tmp.path / "mixed").string();
        const std::vector<std::string> args = {
            SPEQ_MPIRUN, "--oversubscribe", "-np", "1", SPEQ_TRAIN_MPI_BIN, "--config", config.string(), "--set", out,
            ":", "-np", "1", SPEQ_TRAIN_MPI_BIN, "--config", config.string(), "--set", out, "--set", "lr=0.1"};
        CHECK(run_to_end(args, &output) != 0);
        INFO(output);
        CHECK(output.find("the processes disagree: rank(s) 1") != std::string::npos);
        CHECK(output.find("keys lr differ from rank 0's") != std::string::npos);
    }
    SUBCASE("a batch that does not split evenly over the ranks") {
        CHECK(run_to_end(mpirun(2, config, tmp.path / "odd", {"--set", "batch_size=33"}), &output) != 0);
        CHECK_MESSAGE(output.find("batch_size 33 does not split evenly over 2 processes") != std::string::npos, output);
    }
    SUBCASE("a non-finite loss stops every rank, naming the step") {
        const std::vector<std::string> fp = {"--set", "method=fp", "--set", "weight_bits=32", "--set", "act_bits=32",
                                             "--set", "lr=1e30", "--set", "lr_schedule=constant"};
        CHECK(run_to_end(mpirun(2, config, tmp.path / "nan", fp), &output) != 0);
        INFO(output);
        CHECK(output.find("speq-train: rank 1: error: train: the loss is nan at step 2 (epoch 1, batch 2) on rank 1") !=
              std::string::npos);
    }
    SUBCASE("a rank that dies ends the job") {
        Child c = spawn(mpirun(2, config, tmp.path / "killed"));
        REQUIRE_MESSAGE(c.read_until("batch 3/32"), c.output);
        // The ranks are mpirun's children: kill the first speq-train among them.
        pid_t victim = -1;
        for (const auto& entry : fs::directory_iterator("/proc")) {
            std::ifstream stat(entry.path() / "stat");
            std::string pid, name, state;
            pid_t parent = 0;
            if (stat >> pid >> name >> state >> parent && parent == c.pid && name.find("speq-train") != std::string::npos) {
                victim = static_cast<pid_t>(std::stol(pid));
                break;
            }
        }
        REQUIRE_MESSAGE(victim > 0, "no speq-train child of mpirun found");
        ::kill(victim, SIGKILL);
        const int status = c.finish(120);  // a hang fails here
        CHECK(exit_code(status) != 0);
    }
    SUBCASE("--resume on another number of processes is refused") {
        CHECK(run_to_end(mpirun(2, config, tmp.path / "two", {"--set", "max_steps=3"}), &output) == 0);
        CHECK(run_to_end(mpirun(1, config, tmp.path / "two", {"--resume"}), &output) != 0);
        CHECK_MESSAGE(output.find("was written by a run on 2 process(es), this one runs on 1") != std::string::npos,
                      output);
    }
}
#endif
