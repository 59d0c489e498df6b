// The trainer end to end on a tiny MNIST-format data set that the test writes itself:
// a resumed run reproduces an uninterrupted one, and runs write what they promise.
#include <doctest/doctest.h>

#include <cstdio>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <map>

#include "speq/speq.hpp"
#include "run_files.hpp"
#include "synthetic_mnist.hpp"
#include "speq/train/trainer.hpp"

using namespace speq;
namespace fs = std::filesystem;

namespace {

using testing::check_same_tensors;
using testing::lines_of;
using testing::timeless;
using testing::write_split;

struct TempDir {
    fs::path path;
    explicit TempDir(const std::string& name) : path(fs::temp_directory_path() / ("speq_test_" + name)) {
        fs::remove_all(path);
        fs::create_directories(path);
    }
    ~TempDir() { fs::remove_all(path); }
};

io::TrainConfig tiny_config(const fs::path& data, const fs::path& out) {
    io::TrainConfig c;
    c.method = io::Method::speq;
    c.model = io::ModelKind::small_cnn;
    c.dataset = io::DatasetKind::mnist;
    c.data_dir = data.string();
    c.out_dir = out.string();
    c.epochs = 2;
    c.batch_size = 32;
    c.lr = 0.05;
    c.lr_schedule = io::LrSchedule::cosine;
    c.weight_bits = 2;
    c.act_bits = 2;
    c.log_every = 1000;
    return c;
}

// A one-step run of tiny_config on its own small data set; returns its last.safetensors.
std::string one_step_checkpoint(const TempDir& tmp, uint64_t seed) {
    write_split(tmp.path, "train", 64, seed);
    write_split(tmp.path, "t10k", 32, seed + 1);
    io::TrainConfig c = tiny_config(tmp.path, tmp.path / "run");
    c.max_steps = 1;
    train::Trainer(c, false).run();
    return (tmp.path / "run" / "last.safetensors").string();
}

// Writes `file`'s tensors to `path` again, with `metadata` instead of its own.
void save_tensor_file(const io::TensorFile& file, const std::string& path,
                      const std::map<std::string, std::string>& metadata) {
    io::NamedConstTensors tensors;
    for (const auto& [name, t] : file.tensors) tensors.push_back({name, &t});
    io::save_safetensors(path, tensors, metadata);
}

}  // namespace

TEST_CASE("trainer: a run interrupted mid-epoch and resumed matches an uninterrupted run exactly") {
    TempDir tmp("resume");
    write_split(tmp.path, "train", 256, 1);
    write_split(tmp.path, "t10k", 64, 2);

    io::TrainConfig straight = tiny_config(tmp.path, tmp.path / "straight");
    train::Trainer(straight, false).run();

    io::TrainConfig interrupted = tiny_config(tmp.path, tmp.path / "interrupted");
    interrupted.max_steps = 11;  // 8 steps per epoch: stops in the middle of epoch 2
    train::Trainer(interrupted, false).run();
    interrupted.max_steps = 0;
    train::Trainer(interrupted, true).run();

    std::vector<std::string> a = lines_of(tmp.path / "straight" / "metrics.jsonl");
    std::vector<std::string> b = lines_of(tmp.path / "interrupted" / "metrics.jsonl");
    REQUIRE(a.size() == 2);
    REQUIRE(b.size() == 2);
    for (size_t i = 0; i < a.size(); ++i) CHECK(timeless(a[i]) == timeless(b[i]));

    check_same_tensors(io::load_safetensors((tmp.path / "straight" / "last.safetensors").string()),
                       io::load_safetensors((tmp.path / "interrupted" / "last.safetensors").string()));
    CHECK(fs::exists(tmp.path / "straight" / "epoch_1.safetensors"));
    CHECK(fs::exists(tmp.path / "straight" / "epoch_2.safetensors"));
    CHECK(fs::exists(tmp.path / "straight" / "summary.json"));
    CHECK(fs::exists(tmp.path / "straight" / "config.json"));
}

TEST_CASE("trainer: fp then speq from its checkpoint learns the task, and speq-eval's path reads it back") {
    TempDir tmp("learn");
    write_split(tmp.path, "train", 512, 3);
    write_split(tmp.path, "t10k", 128, 4);

    io::TrainConfig fp = tiny_config(tmp.path, tmp.path / "fp");
    fp.method = io::Method::fp;
    fp.weight_bits = fp.act_bits = 32;
    train::RunSummary fp_result = train::Trainer(fp, false).run();
    MESSAGE("fp test top-1: ", fp_result.test_top1);
    CHECK(fp_result.test_top1 > 0.9);  // chance is 0.25

    io::TrainConfig q = tiny_config(tmp.path, tmp.path / "speq");
    q.init_checkpoint = (tmp.path / "fp" / "last.safetensors").string();
    q.lr = 0.01;
    train::RunSummary q_result = train::Trainer(q, false).run();
    MESSAGE("speq W2A2 test top-1: ", q_result.test_top1);
    CHECK(q_result.test_top1 > 0.9);

    // Rebuild from the checkpoint alone, as speq-eval does.
    const std::string path = (tmp.path / "speq" / "last.safetensors").string();
    io::TensorFile file = io::load_safetensors(path);
    io::TrainConfig saved = train::checkpoint_config(file, path);
    CHECK(saved.act_bits == 2);
    train::DataSets data = train::load_data(saved);
    auto model = train::build_model(saved.model, saved, data.train, 0);
    nn::configure_quantization(*model, train::quant_config(saved));
    train::load_model_state(file, *model, path);
    CHECK(train::evaluate(*model, data.test, data.normalization).top1 == doctest::Approx(q_result.test_top1));
}

TEST_CASE("trainer: resuming with a different experiment config is refused, naming the keys") {
    TempDir tmp("mismatch");
    write_split(tmp.path, "train", 64, 5);
    write_split(tmp.path, "t10k", 32, 6);
    io::TrainConfig c = tiny_config(tmp.path, tmp.path / "run");
    c.max_steps = 1;
    train::Trainer(c, false).run();
    c.speq.u = 0.25;
    CHECK_THROWS_WITH_AS(train::Trainer(c, true).run(), doctest::Contains("speq/u"), Error);
    io::TrainConfig fresh = tiny_config(tmp.path, tmp.path / "nothing_here");
    CHECK_THROWS_WITH_AS(train::Trainer(fresh, true).run(), doctest::Contains("no checkpoint to resume from"), Error);
}

TEST_CASE("trainer: --resume from a safetensors file that is not a speq checkpoint names what is missing") {
    TempDir tmp("not_a_checkpoint");
    const std::string last = one_step_checkpoint(tmp, 7);
    const io::TensorFile good = io::load_safetensors(last);
    io::TrainConfig c = tiny_config(tmp.path, tmp.path / "run");  // the run one_step_checkpoint made
    c.max_steps = 1;

    // Same tensors, metadata edited: each case must be refused with the file and the key named.
    auto resume_with = [&](const std::map<std::string, std::string>& metadata) {
        save_tensor_file(good, last, metadata);
        train::Trainer(c, true).run();
    };
    std::map<std::string, std::string> meta = good.metadata;
    CHECK_THROWS_WITH_AS(resume_with({}), doctest::Contains("it has no 'config' metadata"), Error);
    meta.erase("epoch");
    CHECK_THROWS_WITH_AS(resume_with(meta), doctest::Contains("metadata 'epoch' is missing"), Error);
    meta = good.metadata;
    meta["step"] = "twelve";
    CHECK_THROWS_WITH_AS(resume_with(meta), doctest::Contains("metadata 'step' = 'twelve' is not a whole number"),
                         Error);
    meta = good.metadata;
    meta["config"] = "{not json";
    CHECK_THROWS_WITH_AS(resume_with(meta), doctest::Contains("metadata 'config'"), Error);
}

TEST_CASE("trainer: starting from a quantized checkpoint keeps its learned PACT alphas") {
    auto is_model_alpha = [](const std::string& name) {
        return name.rfind("optimizer.", 0) != 0 && name.size() > 6 && name.compare(name.size() - 6, 6, ".alpha") == 0;
    };
    TempDir tmp("keep_alphas");
    const std::string path = one_step_checkpoint(tmp, 9);

    // Give every alpha a value that neither alpha_init (6) nor calibration would produce.
    io::TensorFile file = io::load_safetensors(path);
    int alphas = 0;
    for (auto& [name, t] : file.tensors)
        if (is_model_alpha(name)) t.fill(2.5f), ++alphas;
    REQUIRE(alphas > 0);
    save_tensor_file(file, path, file.metadata);

    io::TrainConfig next = tiny_config(tmp.path, tmp.path / "qat");
    next.method = io::Method::qat;
    next.init_checkpoint = path;
    next.lr = 1e-9;  // one step that moves nothing measurably
    next.max_steps = 1;
    train::Trainer(next, false).run();
    for (const auto& [name, t] : io::load_safetensors((tmp.path / "qat" / "last.safetensors").string()).tensors)
        if (is_model_alpha(name)) {
            INFO(name);
            CHECK(t[0] == doctest::Approx(2.5f).epsilon(1e-5));
        }
}

TEST_CASE("trainer: a checkpoint that lacks a model tensor is refused by name, by speq-eval's path and by --resume") {
    TempDir tmp("missing_tensor");
    write_split(tmp.path, "train", 64, 11);
    write_split(tmp.path, "t10k", 32, 12);
    io::TrainConfig c = tiny_config(tmp.path, tmp.path / "run");
    c.weight_quant.scale = io::WeightScale::lsq;  // learned steps: conv2.weight_step and the others
    c.max_steps = 1;
    train::Trainer(c, false).run();
    const std::string last = (tmp.path / "run" / "last.safetensors").string();
    const io::TensorFile good = io::load_safetensors(last);
    REQUIRE(good.find("conv2.weight_step") != nullptr);

    for (const std::string dropped : {"conv2.weight_step", "act1.alpha", "bn1.running_mean"}) {
        INFO(dropped);
        io::TensorFile file;
        file.metadata = good.metadata;
        for (const auto& [name, t] : good.tensors)
            if (name != dropped) file.tensors.push_back({name, t});
        REQUIRE(file.tensors.size() + 1 == good.tensors.size());
        save_tensor_file(file, last, file.metadata);

        // As speq-eval loads it: the model configured from the checkpoint's config, then loaded.
        const io::TensorFile reread = io::load_safetensors(last);
        const io::TrainConfig saved = train::checkpoint_config(reread, last);
        train::DataSets data = train::load_data(saved);
        auto model = train::build_model(saved.model, saved, data.train, 0);
        nn::configure_quantization(*model, train::quant_config(saved));
        const std::string message = "missing 1 tensor(s): " + dropped;
        CHECK_THROWS_WITH_AS(train::load_model_state(reread, *model, last), doctest::Contains(message.c_str()), Error);
        CHECK_THROWS_WITH_AS(train::Trainer(c, true).run(), doctest::Contains(message.c_str()), Error);
    }
}

TEST_CASE("trainer: speq runs log the teacher's test top-1 each epoch, and measuring it changes nothing") {
    TempDir tmp("teacher_metrics");
    write_split(tmp.path, "train", 128, 13);
    write_split(tmp.path, "t10k", 64, 14);
    io::TrainConfig measured = tiny_config(tmp.path, tmp.path / "measured");
    train::Trainer(measured, false).run();
    io::TrainConfig silent = tiny_config(tmp.path, tmp.path / "silent");
    silent.speq.eval_teacher = false;
    train::Trainer(silent, false).run();
    io::TrainConfig qat = tiny_config(tmp.path, tmp.path / "qat");
    qat.method = io::Method::qat;
    train::Trainer(qat, false).run();

    const std::vector<std::string> with = lines_of(tmp.path / "measured" / "metrics.jsonl");
    const std::vector<std::string> without = lines_of(tmp.path / "silent" / "metrics.jsonl");
    REQUIRE(with.size() == 2);
    REQUIRE(without.size() == 2);
    for (size_t i = 0; i < with.size(); ++i) {
        nlohmann::json a = timeless(with[i]);
        REQUIRE(a.contains("teacher_top1"));
        const double t = a["teacher_top1"];
        CHECK(t >= 0.0);
        CHECK(t <= 1.0);
        CHECK(a["teacher_test_loss"].get<double>() > 0.0);
        a.erase("teacher_top1");
        a.erase("teacher_test_loss");
        CHECK(a == timeless(without[i]));  // the same training, line for line
    }
    for (const std::string& line : lines_of(tmp.path / "qat" / "metrics.jsonl"))
        CHECK_FALSE(nlohmann::json::parse(line).contains("teacher_top1"));

    // Every parameter bit for bit.
    check_same_tensors(io::load_safetensors((tmp.path / "measured" / "last.safetensors").string()),
                       io::load_safetensors((tmp.path / "silent" / "last.safetensors").string()));

    // The teacher's number is the one speq-eval --speq-teacher gives for the same draw.
    const std::string last = (tmp.path / "measured" / "last.safetensors").string();
    const io::TensorFile file = io::load_safetensors(last);
    const io::TrainConfig saved = train::checkpoint_config(file, last);
    train::DataSets data = train::load_data(saved);
    auto model = train::build_model(saved.model, saved, data.train, 0);
    nn::configure_quantization(*model, train::quant_config(saved));
    train::load_model_state(file, *model, last);
    Rng draws(static_cast<uint64_t>(saved.seed), train::Trainer::kTeacherEvalStream + 1);  // epoch 2
    const train::EvalResult t = train::evaluate_teacher(*model, data.test, data.normalization, saved.batch_size,
                                                        saved.act_bits, saved.speq, draws);
    CHECK(timeless(with[1])["teacher_top1"].get<double>() == t.top1);
}

TEST_CASE("trainer: save_model_only keeps the model and the config, drops the optimizer, and cannot be resumed") {
    TempDir tmp("model_only");
    const std::string last = one_step_checkpoint(tmp, 15);
    const io::TensorFile full = io::load_safetensors(last);
    const std::string published = (tmp.path / "model.safetensors").string();
    train::save_model_only(full, last, published);

    const io::TensorFile model_only = io::load_safetensors(published);
    size_t model_tensors = 0;
    for (const auto& [name, t] : full.tensors)
        if (name.rfind(train::kMomentumPrefix, 0) != 0) {
            ++model_tensors;
            INFO(name);
            const Tensor* kept = model_only.find(name);
            REQUIRE(kept != nullptr);
            CHECK(std::memcmp(kept->data(), t.data(), static_cast<size_t>(t.numel()) * sizeof(float)) == 0);
        }
    CHECK(model_only.tensors.size() == model_tensors);
    CHECK(model_tensors < full.tensors.size());  // there was optimizer state to drop
    CHECK(model_only.metadata.at("config") == full.metadata.at("config"));
    CHECK(model_only.metadata.at("step") == "1");
    CHECK(model_only.metadata.at("content") == "model");

    // Evaluates exactly as the checkpoint does.
    const io::TrainConfig saved = train::checkpoint_config(model_only, published);
    train::DataSets data = train::load_data(saved);
    auto evaluate_file = [&](const io::TensorFile& file, const std::string& path) {
        auto model = train::build_model(saved.model, saved, data.train, 0);
        nn::configure_quantization(*model, train::quant_config(saved));
        train::load_model_state(file, *model, path);
        return train::evaluate(*model, data.test, data.normalization);
    };
    const train::EvalResult a = evaluate_file(full, last), b = evaluate_file(model_only, published);
    CHECK(a.top1 == b.top1);
    CHECK(a.loss == b.loss);

    // As last.safetensors of a run it is refused: resuming without momentum would be silently different.
    io::TrainConfig c = tiny_config(tmp.path, tmp.path / "run");
    c.max_steps = 2;
    std::filesystem::copy_file(published, last, std::filesystem::copy_options::overwrite_existing);
    CHECK_THROWS_WITH_AS(train::Trainer(c, true).run(), doctest::Contains("model-only file"), Error);
    CHECK_THROWS_WITH_AS(train::save_model_only(io::TensorFile{}, "empty.safetensors", published),
                         doctest::Contains("empty.safetensors: not a speq training checkpoint"), Error);
}
