// speq/train/checkpoint.hpp: what a training checkpoint holds, and loading it back.
//
// One safetensors file (io/safetensors.hpp) per checkpoint:
//   tensors   the model's state() under PyTorch state_dict names ("layer1.0.conv1.weight", ...)
//             and the optimizer's momentum buffers as "optimizer.momentum.<parameter name>"
//   metadata  speq_format, the resolved config (JSON), the position in training (epoch, batch,
//             global step), the running sums of the unfinished epoch, and the SPEQ RNG state
// So a resumed run continues bit for bit where the checkpoint was written. To load the model in
// PyTorch: {k: v for k, v in load_file(path).items() if not k.startswith("optimizer.")}.
#pragma once

#include <cmath>
#include <cstring>
#include <string>

#include "speq/core/rng.hpp"
#include "speq/io/config.hpp"
#include "speq/io/safetensors.hpp"
#include "speq/nn/module.hpp"
#include "speq/optim/sgd.hpp"

namespace speq::train {

inline constexpr const char* kMomentumPrefix = "optimizer.momentum.";

// Where training stands; everything besides tensors that a resumed run needs.
struct TrainingPosition {
    int64_t epoch = 0;  // the epoch in progress (0-based)
    int64_t batch = 0;  // batches of that epoch already done
    int64_t step = 0;   // optimizer steps done in the whole run
    // Running sums of the epoch in progress (so its averages come out as without interruption).
    double loss_sum = 0.0, ce_sum = 0.0, kd_sum = 0.0, high_sum = 0.0;
    double ce_grad_sum = 0.0, kd_grad_sum = 0.0;  // logit_gradient_norms of distillation runs
    int64_t correct = 0, seen = 0;
    Rng::State rng{0, 1};
    double wall_seconds = 0.0;  // training time spent so far, over all resumptions
    int ranks = 1;              // processes of the run (data-parallel; each takes a slice of every batch)
};

namespace detail {
inline std::string u64_text(uint64_t v) { return std::to_string(v); }
inline uint64_t parse_u64(const std::map<std::string, std::string>& meta, const std::string& key,
                          const std::string& path) {
    auto it = meta.find(key);
    SPEQ_CHECK(it != meta.end(), path, ": not a speq training checkpoint: metadata '", key, "' is missing");
    try {
        size_t used = 0;
        uint64_t v = std::stoull(it->second, &used);
        SPEQ_CHECK(used == it->second.size(), "");
        return v;
    } catch (...) {
        fail(path, ": metadata '", key, "' = '", it->second, "' is not a whole number");
    }
}
inline double parse_double(const std::map<std::string, std::string>& meta, const std::string& key,
                           const std::string& path) {
    auto it = meta.find(key);
    SPEQ_CHECK(it != meta.end(), path, ": not a speq training checkpoint: metadata '", key, "' is missing");
    try {
        return std::stod(it->second);
    } catch (...) {
        fail(path, ": metadata '", key, "' = '", it->second, "' is not a number");
    }
}
inline std::string double_text(double v) {
    char buf[64];
    std::snprintf(buf, sizeof buf, "%.17g", v);  // round-trips exactly
    return buf;
}
}  // namespace detail

// True when no element is nan or +-inf. One pass of integer ops (exponent bits all ones means
// inf or nan), which the compiler vectorizes.
inline bool all_finite(const Tensor& t) {
    const float* p = t.data();
    uint32_t bad = 0;
    for (int64_t i = 0; i < t.numel(); ++i) {
        uint32_t bits;
        std::memcpy(&bits, p + i, 4);
        bad |= static_cast<uint32_t>((bits & 0x7f800000u) == 0x7f800000u);
    }
    return bad == 0;
}

// "" when `t` is finite, else "nan at element 17; 3 of 432 elements are not finite".
inline std::string non_finite_summary(const Tensor& t) {
    if (all_finite(t)) return "";
    int64_t count = 0, first = -1;
    for (int64_t i = 0; i < t.numel(); ++i)
        if (!std::isfinite(t[i])) {
            if (first < 0) first = i;
            ++count;
        }
    const float v = t[first];
    return std::string(std::isnan(v) ? "nan" : v > 0 ? "inf" : "-inf") + " at element " + std::to_string(first) +
           "; " + std::to_string(count) + " of " + std::to_string(t.numel()) + " elements are not finite";
}

// Writes model + optimizer + position atomically to `path`. A tensor holding nan or inf is an
// error and nothing is written: a checkpoint is always one that training can continue from.
inline void save_checkpoint(const std::string& path, nn::Module& model, const optim::SGD& sgd,
                            const io::TrainConfig& config, const TrainingPosition& at) {
    io::NamedConstTensors tensors;
    for (auto& [name, t] : model.state()) tensors.push_back({name, t});
    for (auto& [name, t] : sgd.momentum_buffers()) tensors.push_back({kMomentumPrefix + name, t});
    for (const auto& [name, t] : tensors) {
        const std::string bad = non_finite_summary(*t);
        if (!bad.empty())
            fail(path, ": not written: tensor '", name, "' is not finite (", bad,
                 "); the file already there, if any, is left as it was");
    }
    std::map<std::string, std::string> meta = {
        {"config", io::to_json(config).dump()},
        {"epoch", std::to_string(at.epoch)},
        {"batch", std::to_string(at.batch)},
        {"step", std::to_string(at.step)},
        {"loss_sum", detail::double_text(at.loss_sum)},
        {"ce_sum", detail::double_text(at.ce_sum)},
        {"kd_sum", detail::double_text(at.kd_sum)},
        {"high_sum", detail::double_text(at.high_sum)},
        {"ce_grad_sum", detail::double_text(at.ce_grad_sum)},
        {"kd_grad_sum", detail::double_text(at.kd_grad_sum)},
        {"correct", std::to_string(at.correct)},
        {"seen", std::to_string(at.seen)},
        {"rng_state", detail::u64_text(at.rng.state)},
        {"rng_inc", detail::u64_text(at.rng.inc)},
        {"wall_seconds", detail::double_text(at.wall_seconds)},
        {"ranks", std::to_string(at.ranks)},
    };
    io::save_safetensors(path, tensors, meta);
}

// The trained network alone, for publishing: the model's tensors of a training checkpoint (its
// optimizer.* tensors dropped, about a third of the file) with the metadata kept, so the file
// still says how it was trained (config) and how far (epoch, step, wall_seconds), and speq-eval
// and load_model_state read it like the checkpoint. Written atomically.
inline void save_model_only(const io::TensorFile& checkpoint, const std::string& checkpoint_path,
                            const std::string& out_path) {
    SPEQ_CHECK(checkpoint.metadata.count("config"), checkpoint_path,
               ": not a speq training checkpoint: it has no 'config' metadata");
    io::NamedConstTensors model;
    for (const auto& [name, t] : checkpoint.tensors)
        if (name.compare(0, std::strlen(kMomentumPrefix), kMomentumPrefix) != 0) model.push_back({name, &t});
    SPEQ_CHECK(!model.empty(), checkpoint_path, ": holds no model tensors");
    std::map<std::string, std::string> meta;
    for (const char* key : {"config", "epoch", "batch", "step", "wall_seconds", "ranks"})
        if (auto it = checkpoint.metadata.find(key); it != checkpoint.metadata.end()) meta[key] = it->second;
    meta["content"] = "model";  // no optimizer state: evaluate or start a new run from it, not --resume
    io::save_safetensors(out_path, model, meta);
}

// The config a speq checkpoint was trained with.
inline io::TrainConfig checkpoint_config(const io::TensorFile& file, const std::string& path) {
    auto it = file.metadata.find("config");
    SPEQ_CHECK(it != file.metadata.end(), path, ": not a speq training checkpoint: it has no 'config' metadata");
    return io::config_from_json(io::config_detail::parse_json_text(it->second, path + " (metadata 'config')"),
                                path + " (metadata 'config')");
}

// Loads only the model's tensors (optimizer state is ignored). Every tensor the model holds must be
// in the file: a missing one is an error naming it, never a value left from initialisation. The
// model's tensors are those its quantization has registered so far, so the rule for LSQ's
// `weight_step` follows from the order of calls: the trainer loads an init_checkpoint (an FP run
// has no steps) BEFORE configure_quantization registers the steps and initialises them from the
// loaded weights; a trained model is configured first and then loaded, so its steps must be there.
inline void load_model_state(const io::TensorFile& file, nn::Module& model, const std::string& path) {
    io::NamedMutableTensors wanted;
    for (auto& [name, t] : model.state()) wanted.push_back({name, t});
    // The file may hold optimizer state besides the model: only unprefixed names must match.
    io::TensorFile model_part;
    for (const auto& [name, t] : file.tensors)
        if (name.compare(0, std::strlen(kMomentumPrefix), kMomentumPrefix) != 0) model_part.tensors.push_back({name, t});
    io::assign_tensors(model_part, wanted, path);
}

// Restores everything save_checkpoint wrote; the model must already be built and configured
// exactly as when it was saved.
inline TrainingPosition load_checkpoint(const io::TensorFile& file, const std::string& path, nn::Module& model,
                                        optim::SGD& sgd) {
    if (auto it = file.metadata.find("content"); it != file.metadata.end() && it->second == "model")
        fail(path, ": a model-only file (published, without optimizer state) cannot be resumed; start a new run "
                   "from it with init_checkpoint, or evaluate it with speq-eval");
    io::NamedMutableTensors everything;
    for (auto& [name, t] : model.state()) everything.push_back({name, t});
    io::assign_tensors(file, everything, path, /*allow_extra=*/true);
    sgd.clear_momentum_buffers();
    const size_t prefix = std::strlen(kMomentumPrefix);
    for (const auto& [name, t] : file.tensors)
        if (name.compare(0, prefix, kMomentumPrefix) == 0) sgd.set_momentum_buffer(name.substr(prefix), t);

    const auto& m = file.metadata;
    TrainingPosition at;
    at.epoch = static_cast<int64_t>(detail::parse_u64(m, "epoch", path));
    at.batch = static_cast<int64_t>(detail::parse_u64(m, "batch", path));
    at.step = static_cast<int64_t>(detail::parse_u64(m, "step", path));
    at.loss_sum = detail::parse_double(m, "loss_sum", path);
    at.ce_sum = detail::parse_double(m, "ce_sum", path);
    at.kd_sum = detail::parse_double(m, "kd_sum", path);
    at.high_sum = detail::parse_double(m, "high_sum", path);
    // Added after format 1 shipped: a diagnostic only, so older checkpoints resume without it.
    if (m.count("ce_grad_sum")) at.ce_grad_sum = detail::parse_double(m, "ce_grad_sum", path);
    if (m.count("kd_grad_sum")) at.kd_grad_sum = detail::parse_double(m, "kd_grad_sum", path);
    at.correct = static_cast<int64_t>(detail::parse_u64(m, "correct", path));
    at.seen = static_cast<int64_t>(detail::parse_u64(m, "seen", path));
    at.rng = {detail::parse_u64(m, "rng_state", path), detail::parse_u64(m, "rng_inc", path)};
    at.wall_seconds = detail::parse_double(m, "wall_seconds", path);
    // Added with data-parallel training: a checkpoint without it was written by one process.
    if (m.count("ranks")) at.ranks = static_cast<int>(detail::parse_u64(m, "ranks", path));
    return at;
}

}  // namespace speq::train
