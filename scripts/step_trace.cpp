// scripts/step_trace.cpp: the first training steps of a config, made deterministic, for
// scripts/pytorch_step_check.py to repeat in PyTorch.
//
//   step_trace CONFIG STEPS OUT_DIR [--set key=value]...
//
// Builds the config's model, optimizer and learning-rate schedule exactly as speq-train does
// (train::build_model, train::make_sgd, train::make_schedule, 390 steps per epoch for CIFAR-10)
// and takes STEPS optimizer steps of cross-entropy on the training images in file order, without
// augmentation or shuffling, so that nothing random is left but the initial weights, which it
// saves. Writes OUT_DIR/init.safetensors (before step 1), OUT_DIR/final.safetensors (after the
// last step, with the momentum buffers) and OUT_DIR/steps.jsonl (per step: lr and loss).
// Full precision only (method fp): the check is about the optimizer and the model's math.
#include <cstdio>
#include <fstream>
#include <string>
#include <vector>

#include <speq/speq.hpp>

using namespace speq;

int main(int argc, char** argv) try {
    SPEQ_CHECK(argc >= 4, "usage: step_trace CONFIG STEPS OUT_DIR [--set key=value]...");
    std::vector<std::string> overrides;
    for (int i = 4; i + 1 < argc; i += 2) {
        SPEQ_CHECK(std::string(argv[i]) == "--set", "step_trace: expected --set, got '", argv[i], "'");
        overrides.push_back(argv[i + 1]);
    }
    const io::TrainConfig config = io::load_config(argv[1], overrides);
    SPEQ_CHECK(config.method == io::Method::fp, "step_trace: only method fp is traced");
    const int64_t steps = std::stoll(argv[2]);
    const std::string out = argv[3];
    io::check_writable_dir(out);
    if (config.threads > 0) set_num_threads(config.threads);

    train::DataSets data = train::load_data(config);
    auto model = train::build_model(config.model, config, data.train, static_cast<uint64_t>(config.seed));
    auto sgd = train::make_sgd(config, *model);

    io::LoaderOptions lo;
    lo.batch_size = config.batch_size;
    lo.shuffle = false;  // file order, no crop, no flip: the same batches on both sides
    lo.drop_last = true;
    lo.normalization = data.normalization;
    lo.background = false;
    io::BatchLoader loader(data.train, lo);
    const optim::Schedule schedule = train::make_schedule(config, loader.batches_per_epoch());
    SPEQ_CHECK(steps > 0 && steps <= loader.batches_per_epoch(), "step_trace: STEPS must be in 1..",
               loader.batches_per_epoch(), ", got ", steps);

    auto save = [&](const std::string& name) {
        io::NamedConstTensors tensors;
        for (auto& [n, t] : model->state()) tensors.push_back({n, t});
        for (auto& [n, t] : sgd->momentum_buffers()) tensors.push_back({train::kMomentumPrefix + n, t});
        io::save_safetensors(out + "/" + name, tensors);
    };
    save("init.safetensors");

    std::ofstream log(out + "/steps.jsonl", std::ios::trunc);
    model->train();
    loader.start_epoch(0);
    io::Batch batch;
    for (int64_t s = 0; s < steps && loader.next(batch); ++s) {
        const float lr = schedule.lr_at(s);
        sgd->set_lr(lr);
        sgd->zero_grad();
        Var loss = cross_entropy((*model)(Var(std::move(batch.images))), batch.labels);
        backward(loss);
        sgd->step();
        log << nlohmann::json{{"step", s + 1}, {"lr", lr}, {"loss", loss.value()[0]}}.dump() << "\n";
    }
    save("final.safetensors");
    std::printf("step_trace: %lld steps, files in %s\n", static_cast<long long>(steps), out.c_str());
    return 0;
} catch (const std::exception& e) {
    std::fprintf(stderr, "step_trace: %s\n", e.what());
    return 1;
}
