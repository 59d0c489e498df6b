// speq/train/speq.hpp: the SPEQ teacher: the student's own network, run again with randomly
// raised activation precision (Boo et al., AAAI 2021). This is the only place the method lives.
//
// One SPEQ step (the trainer calls these in this order):
//   z_s = model(x)                                   student: every quantizer at its target bits
//   bits_t = draw_teacher_bits(...)                  per layer: n_H with probability u, else n_A
//   p_t = teacher_probabilities(model, x, bits_t)    same weights, no tape, BN stats untouched
//   loss = ce_weight * CE(z_s, y) + kd_weight * mean(1 - cos(softmax(z_s / T), p_t))
// (kd_weight optionally ramped up from 0 over the first epochs: distillation_weight_at).
// p_t is a constant: no gradient flows through the teacher, and it costs one forward pass.
#pragma once

#include <cmath>
#include <optional>
#include <vector>

#include "speq/core/rng.hpp"
#include "speq/io/config.hpp"
#include "speq/nn/batch_norm.hpp"
#include "speq/nn/quant_control.hpp"
#include "speq/ops/add.hpp"
#include "speq/ops/losses.hpp"
#include "speq/ops/scale.hpp"
#include "speq/ops/softmax.hpp"
#include "speq/train/evaluate.hpp"

namespace speq::train {

// The teacher's bit-width for every ActQuant of the model, in forward order.
// Only the layers the student runs at the target precision `act_bits` are drawn; the others
// (the 8-bit input of the classifier, full-precision layers) keep the student's bits.
//   binary:  n_H = high_bits with probability u, else act_bits   (the paper's best setting)
//   uniform: an integer drawn uniformly from [uniform_low, uniform_high] ("Mix" in the paper)
// Layers are drawn independently, and a new pattern is drawn for every batch.
inline std::vector<int> draw_teacher_bits(const std::vector<int>& student_bits, int act_bits,
                                          const io::SpeqConfig& config, Rng& rng) {
    std::vector<int> bits = student_bits;
    for (int& b : bits) {
        if (b != act_bits) continue;
        if (config.draw == io::BitsDraw::binary) {
            if (rng.bernoulli(static_cast<float>(config.u))) b = config.high_bits;
        } else {
            const int span = config.uniform_high - config.uniform_low + 1;
            b = config.uniform_low + static_cast<int>(rng.below(static_cast<uint32_t>(span)));
        }
    }
    return bits;
}

// model(x) with the ActQuants at `teacher_bits`, computed without recording anything, with its
// running statistics untouched. Batch norm: TeacherNorm::batch keeps the model's current mode (in
// training, the batch's statistics, as the student sees); TeacherNorm::running switches to eval
// mode for the pass (the running statistics, as at test time). Bit-widths and mode are restored
// afterwards, also if the forward pass throws.   -> logits [N, K]
inline Tensor teacher_logits(nn::UnaryModule& model, const Var& x, const std::vector<int>& teacher_bits,
                             io::TeacherNorm norm = io::TeacherNorm::batch) {
    std::optional<nn::ModeGuard> eval_mode;  // batch: the mode is left as it is
    if (norm == io::TeacherNorm::running) eval_mode.emplace(model, false);
    NoGradGuard no_grad;
    nn::FreezeRunningStats keep_running_stats(model);
    nn::ActBitsGuard keep_bits(model);
    nn::set_act_bits_per_layer(model, teacher_bits);
    return model(x).value();
}

// softmax(teacher_logits / T): the soft labels the student is trained on.   -> [N, K]
inline Tensor teacher_probabilities(nn::UnaryModule& model, const Var& x, const std::vector<int>& teacher_bits,
                                    float temperature, io::TeacherNorm norm = io::TeacherNorm::batch) {
    return softmax(Var(teacher_logits(model, x, teacher_bits, norm)), temperature).value();
}

// How good the teacher the student learns from is: test accuracy of the teacher pass exactly as
// training runs it (training-mode batch norm on batches of `batch_size`, running statistics
// untouched or, with config.teacher_bn = running, eval mode; a new bit pattern drawn for every
// batch), so that "the teacher knows more than the
// student" is measured rather than assumed. speq-eval --speq-teacher prints it.
inline EvalResult evaluate_teacher(nn::UnaryModule& model, const io::Dataset& data,
                                   const io::Normalization& normalization, int64_t batch_size, int act_bits,
                                   const io::SpeqConfig& config, Rng& rng) {
    nn::ModeGuard training_mode(model, true);
    const std::vector<int> student_bits = nn::act_bits(model);
    return evaluate_logits(data, normalization, batch_size, [&](const Var& x) {
        return teacher_logits(model, x, draw_teacher_bits(student_bits, act_bits, config, rng), config.teacher_bn);
    });
}

// The distillation term: mean over the batch of 1 - cos(softmax(z_s / T), p_t).   -> [1]
inline Var speq_kd_loss(const Var& student_logits, const Tensor& teacher_probs, float temperature) {
    return cosine_loss(softmax(student_logits, temperature), Var(teacher_probs));
}

// beta at optimizer step `step` (counted from 0): with kd_warmup_epochs = E > 0 it rises linearly,
//   beta(step) = kd_weight * min(1, (step + 1) / (E * steps_per_epoch)),
// else it is kd_weight throughout. Why a ramp: right after quantization the teacher is the same
// damaged network as the student (only its activations are finer), and pulling the student
// towards it as hard as towards the labels costs fitting early on (results/README.md).
inline double distillation_weight_at(const io::SpeqConfig& config, int64_t step, int64_t steps_per_epoch) {
    const int64_t ramp = static_cast<int64_t>(config.kd_warmup_epochs) * steps_per_epoch;
    if (ramp <= 0 || step + 1 >= ramp) return config.kd_weight;
    return config.kd_weight * static_cast<double>(step + 1) / static_cast<double>(ramp);
}

// The parts of one SPEQ loss, for logging.
struct SpeqLoss {
    Var total;        // what backward runs from
    float ce = 0.0f;  // cross-entropy of the student
    float kd = 0.0f;  // mean 1 - cos(p_s, p_t)
    double high_fraction = 0.0;  // share of drawn layers that the teacher ran at high_bits
};

// The whole SPEQ objective for one batch: student logits (already computed on the tape), the
// teacher pass, and the weighted sum, with beta = kd_weight (the trainer passes
// distillation_weight_at(...), which is config.kd_weight unless it warms up).
inline SpeqLoss speq_loss(nn::UnaryModule& model, const Var& x, const Var& student_logits,
                          const std::vector<int>& labels, int act_bits, const io::SpeqConfig& config, Rng& rng,
                          double kd_weight) {
    const float T = static_cast<float>(config.temperature);
    const std::vector<int> student_bits = nn::act_bits(model);
    const std::vector<int> teacher_bits = draw_teacher_bits(student_bits, act_bits, config, rng);

    SpeqLoss out;
    int drawn = 0, high = 0;
    for (size_t l = 0; l < student_bits.size(); ++l)
        if (student_bits[l] == act_bits) ++drawn, high += teacher_bits[l] == config.high_bits;
    out.high_fraction = drawn ? static_cast<double>(high) / drawn : 0.0;

    Var ce = cross_entropy(student_logits, labels);
    Var kd = speq_kd_loss(student_logits, teacher_probabilities(model, x, teacher_bits, T, config.teacher_bn), T);
    out.ce = ce.value()[0];
    out.kd = kd.value()[0];
    out.total = add(scale(ce, static_cast<float>(config.ce_weight)), scale(kd, static_cast<float>(kd_weight)));
    return out;
}

// How hard each term of a distillation loss pulls on the student, read after backward: the
// root-mean-square over the batch of each term's per-image gradient with respect to the
// student's logits z (the logits' gradient is the sum of the two terms'):
//   d(ce_weight * CE)/dz_i = ce_weight * (softmax(z_i) - onehot(y_i)) / N     (see cross_entropy)
//   d(kd_weight * KD)/dz   = dz (after backward) - d(ce_weight * CE)/dz
//   rms = sqrt(N) * |d term / dz|_F    (the per-image gradient is N times the batch-mean one)
// Their ratio says whether distillation can steer training at all: with confident softmax
// outputs the cosine term's gradient is far smaller than cross-entropy's.
struct LogitGradientNorms {
    double ce = 0.0, kd = 0.0;
};
inline LogitGradientNorms logit_gradient_norms(const Var& logits, const std::vector<int>& labels, float ce_weight) {
    SPEQ_CHECK(logits.has_grad(), "logit_gradient_norms: the logits have no gradient (call after backward)");
    const int64_t N = logits.shape()[0], K = logits.shape()[1];
    const Tensor probs = softmax(Var(logits.value()), 1.0f).value();
    const float* dz = logits.grad().data();
    double ce2 = 0.0, kd2 = 0.0;
    for (int64_t i = 0; i < N; ++i)
        for (int64_t k = 0; k < K; ++k) {
            const double g_ce = ce_weight * (probs[i * K + k] - (k == labels[i] ? 1.0 : 0.0)) / N;
            const double g_kd = dz[i * K + k] - g_ce;
            ce2 += g_ce * g_ce, kd2 += g_kd * g_kd;
        }
    const double rms = std::sqrt(static_cast<double>(N));
    return {rms * std::sqrt(ce2), rms * std::sqrt(kd2)};
}

}  // namespace speq::train
