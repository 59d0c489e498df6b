// SPEQ's teacher (train/speq.hpp): what it may and may not touch, and how its bits are drawn.
#include <doctest/doctest.h>

#include <cstring>

#include "speq/speq.hpp"
#include "speq/nn/models/small_cnn.hpp"
#include "speq/train/speq.hpp"

using namespace speq;

namespace {

// A W2A2 small CNN on random 28x28 images, in training mode, as SPEQ trains it.
struct Setup {
    Rng rng{1};
    nn::SmallCnn model{1, 10, rng};
    Tensor images = randn({8, 1, 28, 28}, rng);
    std::vector<int> labels = {0, 1, 2, 3, 4, 5, 6, 7};
    Setup() {
        nn::configure_quantization(model, {/*weight_bits=*/2, /*act_bits=*/2});
        model.train();
    }
};

std::vector<Tensor> snapshot(nn::Module& m) {
    std::vector<Tensor> out;
    for (auto& [name, t] : m.state()) out.push_back(*t);
    return out;
}

bool identical(const std::vector<Tensor>& a, const std::vector<Tensor>& b) {
    if (a.size() != b.size()) return false;
    for (size_t i = 0; i < a.size(); ++i)
        if (a[i].shape() != b[i].shape() || std::memcmp(a[i].data(), b[i].data(), 4 * a[i].numel()) != 0) return false;
    return true;
}

}  // namespace

TEST_CASE("speq teacher: leaves parameters, running statistics, bit-widths and the tape untouched") {
    Setup s;
    const std::vector<Tensor> before = snapshot(s.model);  // parameters and BN running stats
    const std::vector<int> bits_before = nn::act_bits(s.model);
    tape().clear();
    std::vector<int> teacher_bits = bits_before;
    for (size_t l = 0; l + 1 < teacher_bits.size(); ++l) teacher_bits[l] = 8;
    Tensor p = train::teacher_probabilities(s.model, Var(s.images), teacher_bits, 1.0f);
    CHECK(tape().size() == 0);
    CHECK(identical(before, snapshot(s.model)));
    CHECK(nn::act_bits(s.model) == bits_before);
    CHECK(p.shape() == Shape{8, 10});
    for (int64_t i = 0; i < 8; ++i) {
        double row = 0;
        for (int64_t k = 0; k < 10; ++k) row += p[i * 10 + k];
        CHECK(row == doctest::Approx(1.0).epsilon(1e-5));
    }
    // The student pass, by contrast, does update the running statistics.
    s.model(Var(s.images));
    CHECK_FALSE(identical(before, snapshot(s.model)));
    tape().clear();
}

TEST_CASE("speq teacher: changing the teacher's bits changes its output") {
    Setup s;
    const std::vector<int> student = nn::act_bits(s.model);
    std::vector<int> high = student;
    for (size_t l = 0; l + 1 < high.size(); ++l) high[l] = 8;
    Tensor p_student = train::teacher_probabilities(s.model, Var(s.images), student, 1.0f);
    Tensor p_high = train::teacher_probabilities(s.model, Var(s.images), high, 1.0f);
    CHECK_FALSE(std::memcmp(p_student.data(), p_high.data(), 4 * p_high.numel()) == 0);
}

TEST_CASE("speq bits: only target-precision layers are drawn, patterns change per batch and follow u") {
    io::SpeqConfig c;
    c.high_bits = 8;
    const std::vector<int> student = {2, 2, 2, 2, 2, 2, 2, 2, 2, 2, 8};  // the last one feeds the classifier
    for (double u : {0.0, 0.3, 0.5, 1.0}) {
        c.u = u;
        Rng rng(9);
        int high = 0, total = 0, changed_patterns = 0;
        bool only_2_or_8 = true, last_kept = true;
        std::vector<int> previous;
        for (int batch = 0; batch < 2000; ++batch) {
            std::vector<int> t = train::draw_teacher_bits(student, 2, c, rng);
            REQUIRE(t.size() == student.size());
            last_kept &= t.back() == 8;  // not at the target precision: kept
            for (size_t l = 0; l + 1 < t.size(); ++l) {
                only_2_or_8 &= t[l] == 2 || t[l] == 8;
                high += t[l] == 8, ++total;
            }
            changed_patterns += !previous.empty() && t != previous;
            previous = t;
        }
        CHECK(only_2_or_8);
        CHECK(last_kept);
        const double fraction = static_cast<double>(high) / total;
        CHECK(std::abs(fraction - u) < 0.02);  // 20,000 draws: standard error <= 0.0035
        if (u > 0.0 && u < 1.0) CHECK(changed_patterns > 1900);
        if (u == 0.0 || u == 1.0) CHECK(changed_patterns == 0);
    }
}

TEST_CASE("speq bits: uniform draw covers [low, high] evenly") {
    io::SpeqConfig c;
    c.draw = io::BitsDraw::uniform;
    c.uniform_low = 2, c.uniform_high = 8;
    Rng rng(4);
    std::vector<int> counts(9, 0);
    for (int i = 0; i < 7000; ++i)
        for (int b : train::draw_teacher_bits({2, 2, 2, 2}, 2, c, rng)) ++counts[b];
    for (int b = 2; b <= 8; ++b) CHECK(std::abs(counts[b] - 4000) < 300);
    CHECK(counts[0] + counts[1] == 0);
}

TEST_CASE("speq loss: with u = 0 the teacher is the student and the KD term is exactly zero") {
    Setup s;
    io::SpeqConfig c;
    c.u = 0.0;
    Rng rng(3);
    Var x(s.images);
    // Two identical models: one for the student pass, one (a copy of its state) whose teacher
    // pass must reproduce the student's logits exactly.
    Var logits = s.model(x);
    train::SpeqLoss loss = train::speq_loss(s.model, x, logits, s.labels, 2, c, rng, c.kd_weight);
    CHECK(loss.kd == 0.0f);
    CHECK(loss.high_fraction == 0.0);
    CHECK(loss.total.value()[0] == doctest::Approx(loss.ce));
    tape().clear();
}

TEST_CASE("speq loss: with u = 1 the KD term is positive and sends gradient to the weights") {
    Setup s;
    io::SpeqConfig c;
    c.u = 1.0;
    c.ce_weight = 0.0;  // only the distillation term
    Rng rng(3);
    Var x(s.images);
    Var logits = s.model(x);
    train::SpeqLoss loss = train::speq_loss(s.model, x, logits, s.labels, 2, c, rng, c.kd_weight);
    CHECK(loss.kd > 0.0f);
    CHECK(loss.high_fraction == 1.0);
    backward(loss.total);
    double grad_norm = 0;
    for (auto& [name, p] : s.model.named_parameters())
        if (p.has_grad())
            for (int64_t i = 0; i < p.numel(); ++i) grad_norm += double(p.grad()[i]) * p.grad()[i];
    CHECK(grad_norm > 0.0);
}

TEST_CASE("speq loss: kd_warmup_epochs ramps the distillation weight linearly, per step") {
    io::SpeqConfig c;
    c.kd_weight = 4.0;
    // No warm-up: the full weight from the first step.
    CHECK(train::distillation_weight_at(c, 0, 10) == 4.0);
    // Two epochs of 10 steps: step s (from 0) gets 4 * (s + 1) / 20, then 4.
    c.kd_warmup_epochs = 2;
    CHECK(train::distillation_weight_at(c, 0, 10) == doctest::Approx(0.2));
    CHECK(train::distillation_weight_at(c, 4, 10) == doctest::Approx(1.0));
    CHECK(train::distillation_weight_at(c, 9, 10) == doctest::Approx(2.0));
    CHECK(train::distillation_weight_at(c, 18, 10) == doctest::Approx(3.8));
    CHECK(train::distillation_weight_at(c, 19, 10) == 4.0);
    CHECK(train::distillation_weight_at(c, 500, 10) == 4.0);

    // speq_loss weighs the KD term by the weight it is given, not by config.kd_weight.
    Setup s;
    c.u = 1.0;
    c.ce_weight = 0.5;
    Rng rng(3);
    Var x(s.images);
    Var logits = s.model(x);
    const train::SpeqLoss loss = train::speq_loss(s.model, x, logits, s.labels, 2, c, rng, 0.25);
    CHECK(loss.kd > 0.0f);
    CHECK(loss.total.value()[0] == doctest::Approx(0.5 * loss.ce + 0.25 * loss.kd));
    tape().clear();
}

TEST_CASE("speq teacher: teacher_bn = running normalizes with the running statistics and keeps training mode") {
    Setup s;
    s.model(Var(s.images));  // one student pass: running statistics that differ from the batch's
    tape().clear();
    const std::vector<Tensor> before = snapshot(s.model);
    std::vector<int> teacher_bits = nn::act_bits(s.model);
    teacher_bits[0] = 8;
    const Tensor running = train::teacher_logits(s.model, Var(s.images), teacher_bits, io::TeacherNorm::running);
    const Tensor batch = train::teacher_logits(s.model, Var(s.images), teacher_bits, io::TeacherNorm::batch);
    CHECK(s.model.is_training());
    CHECK(identical(before, snapshot(s.model)));
    CHECK(tape().size() == 0);

    // The same passes by hand: eval mode, and training mode with the statistics frozen.
    Tensor by_hand_eval, by_hand_train;
    {
        NoGradGuard no_grad;
        nn::ActBitsGuard keep_bits(s.model);
        nn::set_act_bits_per_layer(s.model, teacher_bits);
        s.model.eval();
        by_hand_eval = s.model(Var(s.images)).value();
        s.model.train();
        nn::FreezeRunningStats frozen(s.model);
        by_hand_train = s.model(Var(s.images)).value();
    }
    REQUIRE(running.numel() == by_hand_eval.numel());
    CHECK(std::memcmp(running.data(), by_hand_eval.data(), 4 * running.numel()) == 0);
    CHECK(std::memcmp(batch.data(), by_hand_train.data(), 4 * batch.numel()) == 0);
    CHECK(std::memcmp(running.data(), batch.data(), 4 * batch.numel()) != 0);
}

TEST_CASE("speq teacher: evaluate_teacher with u = 0 and running statistics is the student's evaluate") {
    Setup s;
    s.model(Var(s.images));  // running statistics from one batch
    tape().clear();
    io::Dataset data;
    data.name = "random";
    data.channels = 1, data.height = 28, data.width = 28, data.num_classes = 10;
    Rng pixel_rng(9);
    for (int64_t i = 0; i < 40 * 28 * 28; ++i) data.pixels.push_back(static_cast<uint8_t>(pixel_rng.below(256)));
    for (int i = 0; i < 40; ++i) data.labels.push_back(i % 10);
    const io::Normalization norm = io::fashion_mnist_normalization();

    io::SpeqConfig c;
    c.u = 0.0;
    c.teacher_bn = io::TeacherNorm::running;
    Rng rng(5);
    const train::EvalResult student = train::evaluate(s.model, data, norm, 16);
    const train::EvalResult teacher = train::evaluate_teacher(s.model, data, norm, 16, 2, c, rng);
    CHECK(s.model.is_training());
    CHECK(teacher.images == 40);
    CHECK(teacher.top1 == student.top1);
    CHECK(teacher.loss == student.loss);
    // With batch statistics (batches of 16) the same network scores differently.
    c.teacher_bn = io::TeacherNorm::batch;
    const train::EvalResult on_batches = train::evaluate_teacher(s.model, data, norm, 16, 2, c, rng);
    CHECK(on_batches.loss != student.loss);
}

TEST_CASE("speq diagnostics: logit_gradient_norms splits the logits' gradient into its CE and KD parts") {
    // Logits, labels and a fixed teacher distribution, small enough to check against
    // each term differentiated on its own.
    const Tensor z = Tensor::of({2, 3}, {2.0f, -1.0f, 0.5f, 0.1f, 0.3f, -0.4f});
    const std::vector<int> labels = {0, 2};
    const Tensor teacher = Tensor::of({2, 3}, {0.5f, 0.2f, 0.3f, 0.1f, 0.1f, 0.8f});
    const float ce_weight = 0.7f, kd_weight = 3.0f, T = 2.0f;

    auto gradient_of = [&](bool with_ce, bool with_kd) {
        Var logits(z, /*requires_grad=*/true);
        Var ce = scale(cross_entropy(logits, labels), with_ce ? ce_weight : 0.0f);
        Var kd = scale(train::speq_kd_loss(logits, teacher, T), with_kd ? kd_weight : 0.0f);
        Var total = add(ce, kd);
        backward(total);
        return logits;
    };
    auto rms = [](const Tensor& g) {
        double s = 0;
        for (int64_t i = 0; i < g.numel(); ++i) s += double(g[i]) * g[i];
        return std::sqrt(2.0 * s);  // sqrt(N) * |g|_F, N = 2
    };
    const double ce_alone = rms(gradient_of(true, false).grad());
    const double kd_alone = rms(gradient_of(false, true).grad());
    REQUIRE(ce_alone > 0.0);
    REQUIRE(kd_alone > 0.0);

    const train::LogitGradientNorms both = train::logit_gradient_norms(gradient_of(true, true), labels, ce_weight);
    CHECK(both.ce == doctest::Approx(ce_alone).epsilon(1e-5));
    CHECK(both.kd == doctest::Approx(kd_alone).epsilon(1e-4));

    // Cross-entropy alone: nothing is left for the distillation part.
    const train::LogitGradientNorms ce_only = train::logit_gradient_norms(gradient_of(true, false), labels, ce_weight);
    CHECK(ce_only.kd < 1e-7);
}
