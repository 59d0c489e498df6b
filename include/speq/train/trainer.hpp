// speq/train/trainer.hpp: one training run as a config describes it: fp, qat, kd or speq.
//
//   io::TrainConfig config = io::load_config("configs/resnet20_w2a2_speq.json");
//   train::Trainer trainer(config, /*resume=*/false);
//   train::RunSummary summary = trainer.run();
//
// Writes into config.out_dir: config.json (the resolved config), metrics.jsonl (one JSON line
// per epoch), epoch_<N>.safetensors and last.safetensors (checkpoints), summary.json at the end.
//
// Faults:
//   - out_dir that cannot be written: an error before any data is read (io::check_writable_dir).
//   - SIGINT / SIGTERM while training (interrupt.hpp): the step in progress finishes,
//     last.safetensors is written at that mid-epoch position (no evaluation, to stop quickly),
//     then train::Interrupted is thrown; a run with resume = true continues exactly. A second
//     signal kills the process at once.
//   - A loss, gradient or updated parameter that is not finite: an error naming the step and the
//     first tensor, in model (state) order, that went bad; nothing is written after it, so the
//     last checkpoint stays the last good one (save_checkpoint also refuses non-finite tensors).
//   - A failed write (disk full, file-size limit): an error naming the file; the atomic writer
//     leaves the previous file under the real name intact.
#pragma once

#include <cmath>
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <memory>
#include <optional>
#include <string>

#include "speq/io/atomic_file.hpp"
#include "speq/io/config.hpp"
#include "speq/nn/models/make_model.hpp"
#include "speq/nn/quant_control.hpp"
#include "speq/optim/schedule.hpp"
#include "speq/optim/sgd.hpp"
#include "speq/train/checkpoint.hpp"
#include "speq/train/communicator.hpp"
#include "speq/train/data.hpp"
#include "speq/train/evaluate.hpp"
#include "speq/train/interrupt.hpp"
#include "speq/train/progress.hpp"
#include "speq/train/speq.hpp"

namespace speq::train {

struct RunSummary {
    double test_top1 = 0.0;
    double test_loss = 0.0;
    double wall_seconds = 0.0;
    int64_t steps = 0;
    int64_t epochs_done = 0;
};

// ---- building blocks, also used by speq-eval ----

inline nn::Shortcut to_nn(io::Shortcut s) { return s == io::Shortcut::A ? nn::Shortcut::A : nn::Shortcut::B; }
inline nn::WeightScale to_nn(io::WeightScale s) {
    return s == io::WeightScale::max_abs ? nn::WeightScale::max_abs
         : s == io::WeightScale::min_l2  ? nn::WeightScale::min_l2
                                         : nn::WeightScale::lsq;
}

inline std::shared_ptr<nn::UnaryModule> build_model(io::ModelKind kind, const io::TrainConfig& config,
                                                    const io::Dataset& data, uint64_t seed) {
    Rng rng(seed);
    return nn::make_model(io::name_of(kind), data.num_classes, data.channels, to_nn(config.shortcut), rng);
}

// The quantization policy of the config (first/last layers, weight quantizer options).
inline nn::QuantConfig quant_config(const io::TrainConfig& c) {
    nn::QuantConfig q;
    q.weight_bits = c.weight_bits;
    q.act_bits = c.act_bits;
    q.first_layer_bits = c.first_layer_bits;
    q.last_layer_bits = c.last_layer_bits;
    q.per_channel = c.weight_quant.per_channel;
    q.weight_scale = to_nn(c.weight_quant.scale);
    q.grid = c.weight_quant.grid;
    return q;
}

inline optim::Schedule make_schedule(const io::TrainConfig& c, int64_t steps_per_epoch) {
    const int64_t total = std::max<int64_t>(1, steps_per_epoch * c.epochs);
    const float lr = static_cast<float>(c.lr);
    optim::Schedule s = optim::constant_lr(lr);
    switch (c.lr_schedule) {
        case io::LrSchedule::constant: break;
        case io::LrSchedule::cosine: s = optim::cosine_annealing(lr, total); break;
        case io::LrSchedule::onecycle: s = optim::one_cycle(lr, total); break;
        case io::LrSchedule::step: {
            std::vector<int64_t> at;
            for (int e : c.lr_milestones) at.push_back(e * steps_per_epoch);
            s = optim::step_decay(lr, at, static_cast<float>(c.lr_gamma));
            break;
        }
    }
    if (c.warmup_epochs > 0) s = optim::linear_warmup(s, c.warmup_epochs * steps_per_epoch);
    return s;
}

// SGD over all of the model's parameters with the config's settings; batch norm's parameters
// (and the PACT alphas, unless act_quant.weight_decay) get no weight decay.
inline std::unique_ptr<optim::SGD> make_sgd(const io::TrainConfig& c, const nn::Module& model) {
    optim::SGDOptions o;
    o.lr = static_cast<float>(c.lr);
    o.momentum = static_cast<float>(c.momentum);
    o.nesterov = c.nesterov && c.momentum > 0;
    o.weight_decay = static_cast<float>(c.weight_decay);
    return std::make_unique<optim::SGD>(model.named_parameters(), o, nn::weight_decay_filter(model, c.act_quant.weight_decay));
}

// ---- finding where values stopped being finite ----

// The first parameter, in model order (state() order: registration order, which is forward
// order for speq's models), whose gradient holds nan or inf: {name, what is wrong}, or {"", ""}.
inline std::pair<std::string, std::string> first_non_finite_gradient(const nn::Module& model) {
    for (auto& [name, var] : model.named_parameters())
        if (var.has_grad()) {
            std::string bad = non_finite_summary(var.grad());
            if (!bad.empty()) return {name, bad};
        }
    return {"", ""};
}

// The first tensor of model.state() (parameters and buffers, such as batch norm's running
// statistics) holding nan or inf: {name, what is wrong}, or {"", ""}.
inline std::pair<std::string, std::string> first_non_finite_state(nn::Module& model) {
    for (auto& [name, t] : model.state()) {
        std::string bad = non_finite_summary(*t);
        if (!bad.empty()) return {name, bad};
    }
    return {"", ""};
}

// ---- the run ----

class Trainer {
public:
    // `ranks`: the processes of a data-parallel run (dist::MpiCommunicator under mpirun), which
    // must outlive the trainer; nullptr: this process alone.
    Trainer(io::TrainConfig config, bool resume, Communicator* ranks = nullptr)
        : config_(std::move(config)), resume_(resume), comm_(ranks ? ranks : &single_process_) {}

    RunSummary run() {
        setup();
        return train_loop();
    }

    // The generator stream of the teacher's bit draws when it is measured after epoch e (0-based):
    // Rng(seed, kTeacherEvalStream + e).
    static constexpr uint64_t kTeacherEvalStream = 0x7eac0000;

private:
    std::string out(const std::string& file) const { return (std::filesystem::path(config_.out_dir) / file).string(); }

    void log(const std::string& text) {
        if (!writer()) return;
        progress_ ? progress_->message(text) : (void)std::fprintf(stderr, "%s\n", text.c_str());
    }

    // ---- several ranks ----

    // Every rank must run the same experiment on the same data: rank 0's config (as JSON) and a
    // fingerprint of its data go to all, and a rank that differs stops the job naming itself.
    void agree_on_setup() {
        SPEQ_CHECK(config_.batch_size % comm_->size() == 0, "batch_size ", config_.batch_size,
                   " does not split evenly over ", comm_->size(), " processes: each rank takes batch_size / ",
                   "processes images of every batch");
        const std::string mine = io::to_json(config_).dump() + "\ndata " + data_fingerprint();
        std::string rank0 = mine;
        comm_->broadcast(rank0, 0);
        std::vector<double> differs(static_cast<size_t>(comm_->size()), 0.0);
        differs[static_cast<size_t>(comm_->rank())] = rank0 != mine;
        comm_->sum(differs.data(), static_cast<int64_t>(differs.size()));
        std::string ranks;
        for (size_t r = 0; r < differs.size(); ++r)
            if (differs[r] > 0) ranks += (ranks.empty() ? "" : ", ") + std::to_string(r);
        if (ranks.empty()) return;
        std::string what = "its config or data differ from rank 0's";
        if (rank0 != mine) {  // say which keys, from this rank's point of view
            const nlohmann::json a = nlohmann::json::parse(rank0.substr(0, rank0.find('\n'))).flatten();
            const nlohmann::json b = io::to_json(config_).flatten();
            std::string keys;
            for (auto& [key, value] : b.items())
                if (!a.contains(key) || a[key] != value) keys += (keys.empty() ? "" : ", ") + key.substr(1);
            what = keys.empty() ? "the data differ from rank 0's (data_dir " + config_.data_dir + ")"
                                : "keys " + keys + " differ from rank 0's";
        }
        fail("the processes disagree: rank(s) ", ranks, " did not read the same experiment as rank 0 (this is rank ",
             comm_->rank(), ": ", rank0 != mine ? what : "agrees with rank 0", ")");
    }

    // FNV-1a over the training and test images and labels: equal data, equal fingerprint.
    std::string data_fingerprint() const {
        uint64_t h = 0xcbf29ce484222325ULL;
        auto mix = [&h](const void* p, size_t n) {
            const auto* b = static_cast<const unsigned char*>(p);
            for (size_t i = 0; i < n; ++i) h = (h ^ b[i]) * 0x100000001b3ULL;
        };
        for (const io::Dataset* d : {&data_.train, &data_.test}) {
            mix(d->pixels.data(), d->pixels.size());
            mix(d->labels.data(), d->labels.size() * sizeof(int));
        }
        return std::to_string(h);
    }

    // Images [size * index / count, size * (index + 1) / count) of `data`: one rank's part of the test set.
    static io::Dataset shard_of(const io::Dataset& data, int index, int count) {
        io::Dataset part = data;
        const int64_t begin = data.size() * index / count, end = data.size() * (index + 1) / count;
        part.labels.assign(data.labels.begin() + begin, data.labels.begin() + end);
        part.pixels.assign(data.pixels.begin() + begin * data.image_bytes(), data.pixels.begin() + end * data.image_bytes());
        return part;
    }

    // An evaluation of each rank's part of the test set, made the whole set's on every rank.
    EvalResult add_up(EvalResult part) {
        if (!distributed()) return part;
        double totals[3] = {std::round(part.top1 * static_cast<double>(part.images)),
                            part.loss * static_cast<double>(part.images), static_cast<double>(part.images)};
        comm_->sum(totals, 3);
        EvalResult all;
        all.images = static_cast<int64_t>(totals[2]);
        if (all.images > 0) all.top1 = totals[0] / totals[2], all.loss = totals[1] / totals[2];
        return all;
    }

    // The gradients of every rank's slice, averaged: the gradient of the whole batch's mean loss
    // (each rank's loss is the mean over its batch_size / ranks images). One buffer, one sum;
    // `extra` rides along (per-step diagnostics to add up).
    void average_gradients(std::vector<float>& extra) {
        std::vector<Var> with_grad;
        int64_t total = 0;
        for (auto& [name, p] : model_->named_parameters())
            if (p.has_grad()) with_grad.push_back(p), total += p.grad().numel();
        std::vector<float> flat;
        flat.reserve(static_cast<size_t>(total) + extra.size());
        for (const Var& p : with_grad) flat.insert(flat.end(), p.grad().data(), p.grad().data() + p.grad().numel());
        flat.insert(flat.end(), extra.begin(), extra.end());
        comm_->sum(flat.data(), static_cast<int64_t>(flat.size()));
        const float inverse = 1.0f / static_cast<float>(comm_->size());
        const float* from = flat.data();
        for (const Var& p : with_grad) {
            Tensor& g = p.grad_for_accumulate();  // exists: the write goes to the same tensor
            for (int64_t i = 0; i < g.numel(); ++i) g[i] = from[i] * inverse;
            from += g.numel();
        }
        std::copy(from, from + extra.size(), extra.begin());
    }

    // Batch norm's running statistics of rank 0 to all ranks (each rank's come from its own
    // slice; PyTorch's DistributedDataParallel does the same), so every rank holds the same model.
    void share_running_statistics() {
        std::vector<float> flat;
        for (auto& [name, t] : model_->named_buffers()) flat.insert(flat.end(), t->data(), t->data() + t->numel());
        comm_->broadcast(flat.data(), static_cast<int64_t>(flat.size()), 0);
        const float* from = flat.data();
        for (auto& [name, t] : model_->named_buffers()) {
            std::copy(from, from + t->numel(), t->data());
            from += t->numel();
        }
    }

    // A signal seen by any rank, as all ranks agree at this point (one rank may get it later).
    bool agreed_stop() {
        double requested = interrupt_ && interrupt_->requested();
        comm_->sum(&requested, 1);
        return requested > 0;
    }

    // Rank 0 writes every file and prints; the other ranks compute alongside it.
    bool writer() const { return comm_->rank() == 0; }
    bool distributed() const { return comm_->size() > 1; }

    void setup() {
        if (config_.threads > 0) set_num_threads(config_.threads);
        if (writer()) io::check_writable_dir(config_.out_dir);  // fail now, not after an hour of training
        data_ = load_data(config_);
        if (distributed()) agree_on_setup();
        test_ = distributed() ? &(test_shard_ = shard_of(data_.test, comm_->rank(), comm_->size())) : &data_.test;
        model_ = build_model(config_.model, config_, data_.train, static_cast<uint64_t>(config_.seed));

        io::LoaderOptions lo;
        lo.batch_size = config_.batch_size;
        lo.seed = static_cast<uint64_t>(config_.seed);
        lo.crop_pad = data_.crop_pad;
        lo.hflip = data_.hflip;
        lo.normalization = data_.normalization;
        lo.drop_last = true;  // batch norm on a 1-image batch is meaningless; a full batch each step
        lo.shard_index = comm_->rank(), lo.shard_count = comm_->size();  // this rank's slice of each batch
        loader_ = std::make_unique<io::BatchLoader>(data_.train, lo);
        steps_per_epoch_ = loader_->batches_per_epoch();
        SPEQ_CHECK(steps_per_epoch_ > 0, "train: batch_size ", config_.batch_size, " is larger than the ",
                   data_.train.size(), " training images");
        schedule_ = std::make_unique<optim::Schedule>(make_schedule(config_, steps_per_epoch_));

        const std::string last = out("last.safetensors");
        if (resume_) {
            SPEQ_CHECK(std::filesystem::exists(last), "--resume: no checkpoint to resume from: ", last, " does not exist");
            io::TensorFile file = io::load_safetensors(last);
            check_same_run(checkpoint_config(file, last), last);
            nn::configure_quantization(*model_, quant_config(config_));
            make_optimizer();
            at_ = load_checkpoint(file, last, *model_, *sgd_);
            SPEQ_CHECK(at_.ranks == comm_->size() || config_.sync_bn, "--resume: ", last, " was written by a run on ",
                       at_.ranks, " process(es), this one runs on ", comm_->size(), ": batch norm normalizes each ",
                       "rank's slice of a batch (batch_size / processes images), so that would be another run; resume ",
                       "it on ", at_.ranks, " (with sync_bn the number of processes may change)");
            at_.ranks = comm_->size();
            log("resumed from " + last + " at epoch " + std::to_string(at_.epoch + 1) + ", batch " +
                std::to_string(at_.batch) + " (step " + std::to_string(at_.step) + ")");
            if (writer()) trim_metrics(at_.epoch);
        } else {
            bool calibrate = false;
            if (!config_.init_checkpoint.empty()) {
                io::TensorFile file = io::load_safetensors(config_.init_checkpoint);
                load_model_state(file, *model_, config_.init_checkpoint);
                // Alphas of a full-precision run were never used: calibrate them on data.
                auto meta = file.metadata.find("config");
                calibrate = meta == file.metadata.end() ||
                            quant::is_full_precision(checkpoint_config(file, config_.init_checkpoint).act_bits);
                log("initialized from " + config_.init_checkpoint);
            }
            nn::configure_quantization(*model_, quant_config(config_));  // LSQ steps start from these weights
            // From scratch alphas start at alpha_init; a quantized checkpoint's learned alphas are kept.
            if (config_.init_checkpoint.empty())
                for (auto& [name, a] : nn::named_act_quants(*model_))
                    a->set_alpha(static_cast<float>(config_.act_quant.alpha_init));
            if (calibrate && !quant::is_full_precision(config_.act_bits)) calibrate_alphas();
            make_optimizer();
            at_.rng = Rng(static_cast<uint64_t>(config_.seed), /*stream=*/0x5be9).save();
            at_.ranks = comm_->size();
            if (writer()) std::ofstream(out("metrics.jsonl"), std::ios::trunc);
        }
        if (writer()) io::write_file_atomically(out("config.json"), io::to_json(config_).dump(2) + "\n");
        if (config_.method == io::Method::kd) load_teacher();
        if (distributed() && config_.sync_bn)  // after calibration, which sees the whole first batch on every rank
            nn::set_sum_over_ranks(*model_, [comm = comm_](double* sums, int64_t n) { comm->sum(sums, n); });
        for (const std::string& line : io::config_warnings(config_)) log("warning: " + line);
    }

    void make_optimizer() { sgd_ = make_sgd(config_, *model_); }

    // Alphas minimizing each layer's quantization error on the first training batch (the whole
    // batch on every rank, so that all ranks start from the same alphas).
    void calibrate_alphas() {
        io::LoaderOptions whole = loader_->options();
        whole.shard_index = 0, whole.shard_count = 1, whole.background = false;
        io::Batch first = io::BatchLoader(data_.train, whole).make_batch(0, 0);
        nn::calibrate_act_alphas(*model_, first.images);
        std::string text = "calibrated alphas:";
        for (auto& [name, a] : nn::named_act_quants(*model_)) {
            char buf[64];
            std::snprintf(buf, sizeof buf, " %.2f", a->alpha().value()[0]);
            text += buf;
        }
        log(text);
    }

    void load_teacher() {
        SPEQ_CHECK(!config_.kd.teacher_checkpoint.empty(), "method kd needs kd.teacher_checkpoint");
        teacher_ = build_model(config_.kd.teacher_model, config_, data_.train, 0);
        io::TensorFile file = io::load_safetensors(config_.kd.teacher_checkpoint);
        load_model_state(file, *teacher_, config_.kd.teacher_checkpoint);
        teacher_->eval();  // a trained teacher: running statistics, full precision
    }

    // A resumed run must be the same experiment; only how long and how it runs may change.
    void check_same_run(io::TrainConfig saved, const std::string& path) {
        saved.epochs = config_.epochs, saved.max_steps = config_.max_steps;
        saved.threads = config_.threads, saved.log_every = config_.log_every;
        saved.out_dir = config_.out_dir, saved.data_dir = config_.data_dir;
        saved.speq.eval_teacher = config_.speq.eval_teacher;  // a measurement, not part of training
        const nlohmann::json was = io::to_json(saved).flatten(), now = io::to_json(config_).flatten();
        if (was == now) return;
        std::string diff;
        for (auto& [key, value] : now.items())
            if (!was.contains(key) || was[key] != value)
                diff += (diff.empty() ? "" : ", ") + key.substr(1) + " (checkpoint " +
                        (was.contains(key) ? was[key].dump() : "absent") + ", now " + value.dump() + ")";
        fail("--resume: ", path, " was written with a different config: ", diff);
    }

    // Drops metrics lines of epochs after the checkpoint (written before an interruption).
    void trim_metrics(int64_t epochs_done) {
        std::ifstream in(out("metrics.jsonl"));
        std::string kept, line;
        while (std::getline(in, line))
            if (!line.empty() && nlohmann::json::parse(line, nullptr, false).value("epoch", int64_t(1) << 40) <= epochs_done)
                kept += line + "\n";
        io::write_file_atomically(out("metrics.jsonl"), kept);
    }

    // One optimizer step on one batch (this rank's slice of it); records losses and accuracy
    // of the whole batch.
    void step(io::Batch& batch, Rng& rng) {
        sgd_->set_lr(static_cast<float>(schedule_->lr_at(at_.step)));
        sgd_->zero_grad();
        Var x(std::move(batch.images));
        Var logits = (*model_)(x);
        Var loss;
        float ce = 0.0f, kd = 0.0f;
        double high_fraction = 0.0;
        switch (config_.method) {
            case io::Method::fp:
            case io::Method::qat:
                loss = cross_entropy(logits, batch.labels);
                ce = loss.value()[0];
                break;
            case io::Method::speq: {
                const double kd_weight = distillation_weight_at(config_.speq, at_.step, steps_per_epoch_);
                SpeqLoss s = speq_loss(*model_, x, logits, batch.labels, config_.act_bits, config_.speq, rng, kd_weight);
                loss = s.total, ce = s.ce, kd = s.kd, high_fraction = s.high_fraction;
                break;
            }
            case io::Method::kd: {
                const float T = static_cast<float>(config_.kd.temperature);
                Tensor teacher_logits;
                {
                    NoGradGuard no_grad;
                    teacher_logits = (*teacher_)(x).value();
                }
                Var ce_var = cross_entropy(logits, batch.labels);
                Var kd_var = config_.kd.loss == io::KdLoss::kl
                                 ? kl_div_loss(logits, Var(teacher_logits), T)
                                 : speq_kd_loss(logits, softmax(Var(teacher_logits), T).value(), T);
                ce = ce_var.value()[0], kd = kd_var.value()[0];
                loss = add(scale(ce_var, static_cast<float>(config_.kd.ce_weight)),
                           scale(kd_var, static_cast<float>(config_.kd.kd_weight)));
                break;
            }
        }
        const float value = loss.value()[0];
        const int64_t n = batch.size();
        // What the ranks must agree on before any of them acts: the batch's sums, whether a signal
        // came, and which ranks' losses are not finite (one slot per rank). One process: as is.
        std::vector<double> shared = {value * static_cast<float>(n), ce * static_cast<float>(n),
                                      kd * static_cast<float>(n), high_fraction * static_cast<double>(n),
                                      static_cast<double>(count_correct(logits.value(), batch.labels)),
                                      static_cast<double>(n), interrupt_ && interrupt_->requested() ? 1.0 : 0.0};
        shared.resize(shared.size() + static_cast<size_t>(comm_->size()), 0.0);
        shared[7 + static_cast<size_t>(comm_->rank())] = std::isfinite(value) ? 0.0 : 1.0;
        comm_->sum(shared.data(), static_cast<int64_t>(shared.size()));
        if (!std::isfinite(value)) non_finite_loss(value, logits.value());
        for (int r = 0; r < comm_->size(); ++r)
            if (shared[7 + static_cast<size_t>(r)] > 0)
                fail("train: the loss of rank ", r, " is not finite at ", where_now(), "; every rank stopped",
                     nothing_written());
        stop_agreed_ = shared[6] > 0;

        backward(loss);
        std::vector<float> diagnostics = {0.0f, 0.0f};  // the logits' gradient norms, times n
        if (config_.method == io::Method::speq || config_.method == io::Method::kd) {
            const float ce_weight = static_cast<float>(config_.method == io::Method::speq ? config_.speq.ce_weight
                                                                                            : config_.kd.ce_weight);
            const LogitGradientNorms g = logit_gradient_norms(logits, batch.labels, ce_weight);
            diagnostics = {static_cast<float>(g.ce * static_cast<double>(n)), static_cast<float>(g.kd * static_cast<double>(n))};
            if (!distributed()) at_.ce_grad_sum += g.ce * n, at_.kd_grad_sum += g.kd * n;  // as before, in double
        }
        if (distributed()) {
            average_gradients(diagnostics);
            at_.ce_grad_sum += diagnostics[0], at_.kd_grad_sum += diagnostics[1];
        }
        check_gradients(value);
        sgd_->step();
        if (distributed() && !config_.sync_bn) share_running_statistics();  // with sync_bn they agree already
        check_state();
        at_.loss_sum += shared[0], at_.ce_sum += shared[1], at_.kd_sum += shared[2], at_.high_sum += shared[3];
        at_.correct += static_cast<int64_t>(shared[4]);
        at_.seen += static_cast<int64_t>(shared[5]);
    }

    // ---- non-finite values: stop before anything bad is saved ----

    // "step 12 (epoch 2, batch 4)": the step being taken now.
    std::string where_now() const {
        return "step " + std::to_string(at_.step + 1) + " (epoch " + std::to_string(at_.epoch + 1) + ", batch " +
               std::to_string(at_.batch + 1) + ")" + (distributed() ? " on rank " + std::to_string(comm_->rank()) : "");
    }

    // What the user still has, for the end of every non-finite message.
    std::string nothing_written() const {
        const std::string last = out("last.safetensors");
        return std::filesystem::exists(last) ? "; nothing was written after the last checkpoint, " + last +
                                                   ", which is intact. Lower lr or check the data"
                                             : "; no checkpoint was written. Lower lr or check the data";
    }

    // The loss is nan/inf: the forward pass overflowed. Batch norm's running statistics were
    // updated by this forward pass, so the first non-finite one names the layer where it happened.
    [[noreturn]] void non_finite_loss(float value, const Tensor& logits) {
        std::string where = all_finite(logits) ? "the logits are finite (check the labels and the loss settings)"
                                               : "the logits are not finite";
        const auto [name, bad] = first_non_finite_state(*model_);
        if (!name.empty()) where += "; the first non-finite tensor of the model is '" + name + "' (" + bad + ")";
        fail("train: the loss is ", value, " at ", where_now(), ": ", where, nothing_written());
    }

    // Before the update: the first parameter, in model order, whose gradient is not finite.
    void check_gradients(float loss) {
        const auto [name, bad] = first_non_finite_gradient(*model_);
        if (!name.empty())
            fail("train: at ", where_now(), " the gradient of '", name, "' is not finite (", bad,
                 "), the first such parameter in model order; the loss was ", loss, ". Stopped before the update",
                 nothing_written());
    }

    // After the update: a finite gradient times a huge lr can still overflow a weight, and a
    // forward pass whose loss stayed finite can still overflow batch norm's running statistics.
    void check_state() {
        const auto [name, bad] = first_non_finite_state(*model_);
        if (!name.empty())
            fail("train: after ", where_now(), " '", name, "' is not finite (", bad,
                 ") although the loss and every gradient were: lr ", sgd_->lr(), " is probably too large",
                 nothing_written());
    }

    // ---- interruption ----

    // Writes last.safetensors at the current (mid-epoch) position and throws Interrupted.
    [[noreturn]] void stop_interrupted(int sig, bool save) {
        const std::string last = out("last.safetensors");
        if (save && writer()) {
            log(signal_name(sig) + ": stopping after step " + std::to_string(at_.step) + ", writing " + last);
            save_checkpoint(last, *model_, *sgd_, config_, at_);
        }
        const std::string position = at_.batch == 0 ? "at the end of epoch " + std::to_string(at_.epoch)
                                                    : "epoch " + std::to_string(at_.epoch + 1) + ", batch " +
                                                          std::to_string(at_.batch) + " of " +
                                                          std::to_string(steps_per_epoch_);
        throw Interrupted(signal_name(sig) + " received: stopped after step " + std::to_string(at_.step) + " (" +
                              position + "); checkpoint " + last + " written; continue with --resume",
                          sig, last);
    }

    RunSummary train_loop() {
        InterruptGuard interrupt;  // from the first step on, Ctrl-C means "checkpoint, then stop"
        interrupt_ = &interrupt;
        struct Forget {  // the guard dies with this function
            const InterruptGuard*& p;
            ~Forget() { p = nullptr; }
        } forget{interrupt_};
        // A signal stops one process before its next step. Ranks stop together: after the step
        // in which their sum saw it (stop_agreed_), and between epochs when they agree so.
        auto stop_requested = [&] { return distributed() ? stop_agreed_ : interrupt.requested(); };
        auto stop_signal = [&] { return interrupt.signal() != 0 ? interrupt.signal() : SIGTERM; };
        const int64_t total_steps = steps_per_epoch_ * config_.epochs;
        const int64_t stop_at = config_.max_steps > 0 ? std::min<int64_t>(config_.max_steps, total_steps) : total_steps;
        progress_ = std::make_unique<Progress>(stop_at, config_.log_every, writer() ? stderr : nullptr);
        const double wall_before = at_.wall_seconds;
        Rng rng;
        rng.restore(at_.rng);
        const int64_t steps_at_start = at_.step;
        EvalResult last_eval;
        bool evaluated_last = false;

        while (at_.epoch < config_.epochs && at_.step < stop_at) {
            model_->train();
            loader_->start_epoch(at_.epoch, at_.batch);
            io::Batch batch;
            while (at_.step < stop_at && !stop_requested() && loader_->next(batch)) {
                step(batch, rng);
                ++at_.step, ++at_.batch;
                at_.rng = rng.save();
                progress_->update(at_.epoch, config_.epochs, at_.batch - 1, steps_per_epoch_, at_.step - steps_at_start,
                                  at_.step, config_.batch_size, static_cast<float>(at_.loss_sum / at_.seen),
                                  static_cast<float>(at_.correct) / at_.seen);
            }
            const bool epoch_done = at_.batch >= steps_per_epoch_;
            at_.wall_seconds = wall_before + progress_->elapsed();
            if (stop_requested() && !epoch_done && at_.step < stop_at) stop_interrupted(stop_signal(), true);
            last_eval = add_up(evaluate(*model_, *test_, data_.normalization));
            evaluated_last = true;
            const std::optional<EvalResult> teacher = evaluate_teacher_now();
            write_metrics(last_eval, teacher, epoch_done);
            if (epoch_done) {
                at_.epoch += 1, at_.batch = 0;
                at_.loss_sum = at_.ce_sum = at_.kd_sum = at_.high_sum = at_.ce_grad_sum = at_.kd_grad_sum = 0.0;
                at_.correct = at_.seen = 0;
                if (writer())
                    save_checkpoint(out("epoch_" + std::to_string(at_.epoch) + ".safetensors"), *model_, *sgd_, config_, at_);
            }
            if (writer()) save_checkpoint(out("last.safetensors"), *model_, *sgd_, config_, at_);
            log_epoch(last_eval, teacher, epoch_done);
            // A signal during the evaluation or the writes: the checkpoint above is current.
            const bool stop_now = distributed() ? agreed_stop() : interrupt.requested();
            if (stop_now && at_.epoch < config_.epochs && at_.step < stop_at) stop_interrupted(stop_signal(), false);
        }
        if (!evaluated_last) last_eval = add_up(evaluate(*model_, *test_, data_.normalization));

        RunSummary s;
        s.test_top1 = last_eval.top1, s.test_loss = last_eval.loss;
        s.wall_seconds = wall_before + progress_->elapsed();
        s.steps = at_.step, s.epochs_done = at_.epoch;
        nlohmann::json j = {{"test_top1", s.test_top1}, {"test_loss", s.test_loss}, {"wall_seconds", s.wall_seconds},
                            {"steps", s.steps}, {"epochs_done", s.epochs_done}, {"method", io::name_of(config_.method)},
                            {"weight_bits", config_.weight_bits}, {"act_bits", config_.act_bits}};
        if (writer()) io::write_file_atomically(out("summary.json"), j.dump(2) + "\n");
        return s;
    }

    // SPEQ's teacher on the test set as training runs it (speq.eval_teacher), else nothing. Its bit
    // draws come from their own generator, seeded by the run's seed and the epoch, so measuring
    // changes nothing in training and a resumed run measures the same.
    std::optional<EvalResult> evaluate_teacher_now() {
        if (config_.method != io::Method::speq || !config_.speq.eval_teacher) return std::nullopt;
        Rng draws(static_cast<uint64_t>(config_.seed), kTeacherEvalStream + static_cast<uint64_t>(at_.epoch));
        // Each rank measures its part of the test set on its own batches (a diagnostic): synchronized
        // batch norm would need the same number of batches on every rank.
        if (distributed() && config_.sync_bn) nn::set_sum_over_ranks(*model_, nullptr);
        const EvalResult part = evaluate_teacher(*model_, *test_, data_.normalization, config_.batch_size,
                                                 config_.act_bits, config_.speq, draws);
        if (distributed() && config_.sync_bn)
            nn::set_sum_over_ranks(*model_, [comm = comm_](double* sums, int64_t n) { comm->sum(sums, n); });
        return add_up(part);
    }

    void write_metrics(const EvalResult& eval, const std::optional<EvalResult>& teacher, bool epoch_done) {
        if (!writer()) return;
        const double n = std::max<int64_t>(at_.seen, 1);
        nlohmann::json j = {
            {"epoch", at_.epoch + 1}, {"complete", epoch_done}, {"step", at_.step},
            {"lr", schedule_->lr_at(std::max<int64_t>(at_.step - 1, 0))},
            {"train_loss", at_.loss_sum / n}, {"train_ce", at_.ce_sum / n}, {"train_top1", at_.correct / n},
            {"test_top1", eval.top1}, {"test_loss", eval.loss},
            {"method", io::name_of(config_.method)}, {"weight_bits", config_.weight_bits}, {"act_bits", config_.act_bits},
            {"images_per_second", progress_->images_per_second()}, {"wall_seconds", at_.wall_seconds}};
        if (config_.method == io::Method::speq || config_.method == io::Method::kd) {
            j["train_kd"] = at_.kd_sum / n;
            // RMS per-image gradient of each weighted term w.r.t. the student's logits, and their ratio.
            j["logit_grad_ce"] = at_.ce_grad_sum / n;
            j["logit_grad_kd"] = at_.kd_grad_sum / n;
            if (at_.ce_grad_sum > 0) j["kd_ce_grad_ratio"] = at_.kd_grad_sum / at_.ce_grad_sum;
        }
        if (config_.method == io::Method::speq) j["teacher_high_fraction"] = at_.high_sum / n;
        if (teacher) j["teacher_top1"] = teacher->top1, j["teacher_test_loss"] = teacher->loss;
        std::ofstream metrics(out("metrics.jsonl"), std::ios::app);
        metrics << j.dump() << "\n";
        SPEQ_CHECK(metrics.flush(), out("metrics.jsonl"), ": cannot write: ", std::strerror(errno));
    }

    void log_epoch(const EvalResult& e, const std::optional<EvalResult>& teacher, bool epoch_done) {
        char line[256], teacher_text[64] = "";
        if (teacher) std::snprintf(teacher_text, sizeof teacher_text, " (teacher %.2f%%)", 100.0 * teacher->top1);
        std::snprintf(line, sizeof line, "epoch %lld%s: test top-1 %.2f%%%s, test loss %.4f, %.0f img/s, %s elapsed",
                      static_cast<long long>(epoch_done ? at_.epoch : at_.epoch + 1), epoch_done ? "" : " (partial)",
                      100.0 * e.top1, teacher_text, e.loss, progress_->images_per_second(),
                      format_duration(at_.wall_seconds).c_str());
        log(line);
    }

    io::TrainConfig config_;
    bool resume_;
    SingleProcess single_process_;
    Communicator* comm_;
    const io::Dataset* test_ = nullptr;  // the test set, or this rank's part of it
    io::Dataset test_shard_;
    const InterruptGuard* interrupt_ = nullptr;  // while train_loop runs
    bool stop_agreed_ = false;                   // the ranks saw a signal at the last step
    DataSets data_;
    std::shared_ptr<nn::UnaryModule> model_, teacher_;
    std::unique_ptr<io::BatchLoader> loader_;
    std::unique_ptr<optim::SGD> sgd_;
    std::unique_ptr<optim::Schedule> schedule_;
    std::unique_ptr<Progress> progress_;
    int64_t steps_per_epoch_ = 0;
    TrainingPosition at_;
};

}  // namespace speq::train
