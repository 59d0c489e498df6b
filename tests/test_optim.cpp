// optim: SGD against PyTorch's update rule worked out by hand, momentum buffers for checkpoints,
// learning-rate schedules at chosen steps, and a few training steps of a small CNN.
#include <doctest/doctest.h>

#include <cmath>
#include <cstring>
#include <memory>
#include <string>
#include <vector>

#include "gradcheck.hpp"
#include "speq/nn/batch_norm.hpp"
#include "speq/nn/conv2d.hpp"
#include "speq/nn/linear.hpp"
#include "speq/nn/sequential.hpp"
#include "speq/nn/stateless.hpp"
#include "speq/ops/losses.hpp"
#include "speq/optim/schedule.hpp"
#include "speq/optim/sgd.hpp"

using namespace speq;

namespace {

// PyTorch's SGD for one scalar, in double: the reference the vector updates are compared with.
std::vector<double> sgd_reference(double p, const std::vector<double>& grads, double lr, double momentum,
                                  double dampening, bool nesterov, double wd) {
    std::vector<double> out;
    double buf = 0.0;
    bool first = true;
    for (double g : grads) {
        if (wd != 0.0) g += wd * p;
        if (momentum != 0.0) {
            buf = first ? g : momentum * buf + (1.0 - dampening) * g;
            first = false;
            g = nesterov ? g + momentum * buf : buf;
        }
        p -= lr * g;
        out.push_back(p);
    }
    return out;
}

// Runs SGD for three steps on a 37-element parameter (SIMD body and tail) with per-step gradients
// g_t[i] = grads[t] * (1 + i / 37) and starting values p[i] = p0 * (1 - i / 50); returns element 0
// after each step and checks every element against the reference.
std::vector<float> run_sgd(float p0, const std::vector<double>& grads, optim::SGDOptions options) {
    const int64_t n = 37;
    Tensor start({n});
    for (int64_t i = 0; i < n; ++i) start[i] = p0 * (1.0f - float(i) / 50.0f);
    Var p = Var::parameter(start);
    optim::SGD sgd({{"p", p}}, options);
    std::vector<float> first;
    for (size_t t = 0; t < grads.size(); ++t) {
        Tensor& g = p.grad_for_accumulate();
        for (int64_t i = 0; i < n; ++i) g[i] = static_cast<float>(grads[t] * (1.0 + double(i) / n));
        sgd.step();
        first.push_back(p.value()[0]);
    }
    for (int64_t i = 0; i < n; ++i) {
        std::vector<double> gi;
        for (double g : grads) gi.push_back(static_cast<float>(g * (1.0 + double(i) / n)));
        auto ref = sgd_reference(start[i], gi, options.lr, options.momentum, options.dampening, options.nesterov,
                                 options.weight_decay);
        CHECK(p.value()[i] == doctest::Approx(ref.back()).epsilon(1e-6));
    }
    return first;
}

}  // namespace

TEST_CASE("SGD: plain step p -= lr * grad") {
    Var a = Var::parameter(Tensor::of({2}, {1.0f, -2.0f}));
    a.grad_for_accumulate() = Tensor::of({2}, {0.5f, 0.25f});
    optim::SGD sgd({{"a", a}}, {0.1f});
    sgd.step();
    CHECK(a.value()[0] == doctest::Approx(0.95f));
    CHECK(a.value()[1] == doctest::Approx(-2.025f));
    CHECK(sgd.momentum_buffers().empty());  // no momentum, no buffers
}

TEST_CASE("SGD: momentum and weight decay over three steps, by hand") {
    // lr 0.1, momentum 0.9, wd 0.01, p = 1, grads 0.5, -0.25, 1:
    //   step 1: g = 0.5 + 0.01 = 0.51;            buf = 0.51;                          p = 1 - 0.051 = 0.949
    //   step 2: g = -0.25 + 0.00949 = -0.24051;   buf = 0.459 - 0.24051 = 0.21849;     p = 0.927151
    //   step 3: g = 1 + 0.00927151 = 1.00927151;  buf = 0.196641 + 1.00927151 = 1.20591251; p = 0.806559749
    optim::SGDOptions o;
    o.lr = 0.1f, o.momentum = 0.9f, o.weight_decay = 0.01f;
    auto p = run_sgd(1.0f, {0.5, -0.25, 1.0}, o);
    CHECK(p[0] == doctest::Approx(0.949).epsilon(1e-6));
    CHECK(p[1] == doctest::Approx(0.927151).epsilon(1e-6));
    CHECK(p[2] == doctest::Approx(0.806559749).epsilon(1e-6));
}

TEST_CASE("SGD: Nesterov momentum with weight decay, by hand") {
    //   step 1: g = 0.51; buf = 0.51; g = 0.51 + 0.9 * 0.51 = 0.969; p = 1 - 0.0969 = 0.9031
    //   step 2: g = -0.25 + 0.009031 = -0.240969; buf = 0.459 - 0.240969 = 0.218031;
    //           g = -0.240969 + 0.1962279 = -0.0447411; p = 0.9031 + 0.00447411 = 0.90757411
    optim::SGDOptions o;
    o.lr = 0.1f, o.momentum = 0.9f, o.nesterov = true, o.weight_decay = 0.01f;
    auto p = run_sgd(1.0f, {0.5, -0.25, 1.0}, o);
    CHECK(p[0] == doctest::Approx(0.9031).epsilon(1e-6));
    CHECK(p[1] == doctest::Approx(0.90757411).epsilon(1e-6));
    CHECK(p[2] == doctest::Approx(0.698189208).epsilon(1e-6));
}

TEST_CASE("SGD: dampening applies from the second step on") {
    //   step 1: buf = 0.5 (no dampening on the first step); p = -2 - 0.05 = -2.05
    //   step 2: buf = 0.45 + 0.5 * -0.25 = 0.325;  p = -2.0825
    //   step 3: buf = 0.2925 + 0.5 = 0.7925;       p = -2.16175
    optim::SGDOptions o;
    o.lr = 0.1f, o.momentum = 0.9f, o.dampening = 0.5f;
    auto p = run_sgd(-2.0f, {0.5, -0.25, 1.0}, o);
    CHECK(p[0] == doctest::Approx(-2.05).epsilon(1e-6));
    CHECK(p[1] == doctest::Approx(-2.0825).epsilon(1e-6));
    CHECK(p[2] == doctest::Approx(-2.16175).epsilon(1e-6));
}

TEST_CASE("SGD: the decay filter skips chosen parameters, parameters without gradient are skipped") {
    Var w = Var::parameter(Tensor::of({1}, {2.0f}));
    Var gamma = Var::parameter(Tensor::of({1}, {2.0f}));
    Var unused = Var::parameter(Tensor::of({1}, {5.0f}));
    optim::SGDOptions o;
    o.lr = 0.5f, o.momentum = 0.9f, o.weight_decay = 0.1f;
    optim::SGD sgd({{"conv.weight", w}, {"bn.weight", gamma}, {"unused", unused}}, o,
                   [](const std::string& name) { return name != "bn.weight"; });
    CHECK(sgd.decays("conv.weight"));
    CHECK_FALSE(sgd.decays("bn.weight"));
    w.grad_for_accumulate()[0] = 1.0f;
    gamma.grad_for_accumulate()[0] = 1.0f;
    sgd.step();
    CHECK(w.value()[0] == doctest::Approx(2.0 - 0.5 * (1.0 + 0.2)));  // decayed: 1.4
    CHECK(gamma.value()[0] == doctest::Approx(2.0 - 0.5 * 1.0));       // not decayed: 1.5
    CHECK(unused.value()[0] == 5.0f);
    CHECK(sgd.momentum_buffer("unused") == nullptr);
    REQUIRE(sgd.momentum_buffer("conv.weight") != nullptr);
    CHECK((*sgd.momentum_buffer("conv.weight"))[0] == doctest::Approx(1.2f));
    auto buffers = sgd.momentum_buffers();
    REQUIRE(buffers.size() == 2);
    CHECK(buffers[0].first == "conv.weight");
    CHECK(buffers[1].first == "bn.weight");

    sgd.zero_grad();
    CHECK(w.grad()[0] == 0.0f);
    CHECK_FALSE(unused.has_grad());
}

TEST_CASE("SGD: nn::weight_decay_filter leaves BatchNorm parameters undecayed") {
    Rng rng(3);
    nn::Sequential model;
    auto conv = model.emplace_back<nn::Conv2d>(1, 1, 1, 1, 0, false, rng);
    auto bn = model.emplace_back<nn::BatchNorm2d>(1);
    optim::SGDOptions o;
    o.lr = 1.0f, o.weight_decay = 0.5f;
    optim::SGD sgd(model.named_parameters(), o, nn::weight_decay_filter(model));
    CHECK(sgd.parameter_names() == std::vector<std::string>{"0.weight", "1.weight", "1.bias"});
    for (auto& [name, p] : model.named_parameters()) p.grad_for_accumulate().fill(0.0f);
    const float w0 = conv->weight().value()[0];
    sgd.step();
    CHECK(conv->weight().value()[0] == doctest::Approx(w0 * 0.5f));  // p -= 1 * 0.5 p
    CHECK(bn->weight().value()[0] == 1.0f);
}

TEST_CASE("SGD: saving and restoring momentum buffers resumes exactly") {
    auto make = [] { return Var::parameter(Tensor::of({3}, {1.0f, -1.0f, 0.5f})); };
    auto grad_at = [](int t) { return Tensor::of({3}, {0.1f * t, -0.2f, 0.3f - 0.05f * t}); };
    optim::SGDOptions o;
    o.lr = 0.05f, o.momentum = 0.9f, o.nesterov = true, o.weight_decay = 1e-3f;

    Var a = make();
    optim::SGD straight({{"w", a}}, o);
    for (int t = 0; t < 4; ++t) {
        a.grad_for_accumulate() = grad_at(t);
        straight.step();
    }

    Var b = make();
    Tensor saved_value, saved_buffer;
    {
        optim::SGD first({{"w", b}}, o);
        for (int t = 0; t < 2; ++t) {
            b.grad_for_accumulate() = grad_at(t);
            first.step();
        }
        saved_value = b.value();
        saved_buffer = *first.momentum_buffer("w");
    }
    Var c = Var::parameter(saved_value);
    optim::SGD resumed({{"w", c}}, o);
    resumed.set_momentum_buffer("w", saved_buffer);
    for (int t = 2; t < 4; ++t) {
        c.grad_for_accumulate() = grad_at(t);
        resumed.step();
    }
    for (int i = 0; i < 3; ++i) CHECK(c.value()[i] == a.value()[i]);

    CHECK_THROWS_WITH_AS(resumed.set_momentum_buffer("w", Tensor::zeros({4})), doctest::Contains("[4]"), Error);
    CHECK_THROWS_WITH_AS(resumed.set_momentum_buffer("v", Tensor::zeros({3})), doctest::Contains("'v'"), Error);
    resumed.clear_momentum_buffers();
    CHECK(resumed.momentum_buffer("w") == nullptr);
}

TEST_CASE("SGD: options and parameters are checked") {
    Var p = Var::parameter(Tensor::zeros({2}));
    optim::SGDOptions nesterov_without_momentum;
    nesterov_without_momentum.nesterov = true;
    CHECK_THROWS_WITH_AS(optim::SGD({{"p", p}}, nesterov_without_momentum), doctest::Contains("nesterov"), Error);
    optim::SGDOptions negative;
    negative.lr = -1.0f;
    CHECK_THROWS_AS(optim::SGD({{"p", p}}, negative), Error);
    CHECK_THROWS_WITH_AS(optim::SGD({{"p", p}, {"p", p}}, {}), doctest::Contains("appears twice"), Error);
    CHECK_THROWS_WITH_AS(optim::SGD({{"p", p}, {"q", p}}, {}), doctest::Contains("same tensor"), Error);
    CHECK_THROWS_AS(optim::SGD({{"c", Var(Tensor::zeros({1}))}}, {}), Error);  // no grad
    optim::SGD sgd({{"p", p}}, {});
    sgd.set_lr(0.25f);
    CHECK(sgd.lr() == 0.25f);
    CHECK_THROWS_AS(sgd.set_lr(-0.1f), Error);
}

TEST_CASE("SGD: identical bits for 1 and 2 threads") {
    auto run = [](int threads) {
        set_num_threads(threads);
        Rng rng(5);
        Var p = Var::parameter(randn({70001}, rng));
        optim::SGDOptions o;
        o.lr = 0.1f, o.momentum = 0.9f, o.nesterov = true, o.weight_decay = 5e-4f;
        optim::SGD sgd({{"p", p}}, o);
        for (int t = 0; t < 3; ++t) {
            p.grad_for_accumulate() = randn(p.shape(), rng);
            sgd.step();
        }
        return p.value();
    };
    const int before = num_threads();
    Tensor one = run(1), two = run(2);
    set_num_threads(before);
    CHECK(std::memcmp(one.data(), two.data(), sizeof(float) * one.numel()) == 0);
}

TEST_CASE("schedules: step decay, cosine, warm-up, one-cycle at chosen steps") {
    auto steps = optim::step_decay(0.1f, {3, 6}, 0.1f);
    CHECK(steps.lr_at(0) == doctest::Approx(0.1));
    CHECK(steps.lr_at(2) == doctest::Approx(0.1));
    CHECK(steps.lr_at(3) == doctest::Approx(0.01));
    CHECK(steps.lr_at(5) == doctest::Approx(0.01));
    CHECK(steps.lr_at(6) == doctest::Approx(0.001));
    CHECK(steps.lr_at(1000) == doctest::Approx(0.001));

    // 0.1 (1 + cos(pi t / 10)) / 2:  t = 3 -> 0.05 (1 + 0.587785) = 0.0793893
    auto cosine = optim::cosine_annealing(0.1f, 10);
    CHECK(cosine.lr_at(0) == doctest::Approx(0.1));
    CHECK(cosine.lr_at(3) == doctest::Approx(0.0793893));
    CHECK(cosine.lr_at(5) == doctest::Approx(0.05));
    CHECK(cosine.lr_at(10) == doctest::Approx(0.0));
    CHECK(cosine.lr_at(25) == doctest::Approx(0.0));
    CHECK(optim::cosine_annealing(0.1f, 10, 0.01f).lr_at(5) == doctest::Approx(0.055));

    // Warm-up multiplies: 0.25 -> 1 over 4 steps.
    auto warm = optim::linear_warmup(optim::constant_lr(0.1f), 4, 0.25f);
    CHECK(warm.lr_at(0) == doctest::Approx(0.025));
    CHECK(warm.lr_at(1) == doctest::Approx(0.04375));
    CHECK(warm.lr_at(2) == doctest::Approx(0.0625));
    CHECK(warm.lr_at(4) == doctest::Approx(0.1));
    // ... and the schedule after it sees the absolute step (milestones count from step 0).
    auto warm_steps = optim::linear_warmup(optim::step_decay(0.1f, {3}), 4, 0.5f);
    CHECK(warm_steps.lr_at(2) == doctest::Approx(0.1 * 0.75));
    CHECK(warm_steps.lr_at(3) == doctest::Approx(0.01 * 0.875));
    CHECK(warm_steps.lr_at(4) == doctest::Approx(0.01));
    auto warm_cos = optim::linear_warmup(optim::cosine_annealing(0.1f, 10), 2, 0.0f);
    CHECK(warm_cos.lr_at(0) == doctest::Approx(0.0));
    CHECK(warm_cos.lr_at(1) == doctest::Approx(0.5 * 0.1 * (1 + std::cos(optim::kPi / 10)) / 2));
    CHECK(warm_cos.lr_at(5) == doctest::Approx(0.05));

    // OneCycleLR(max_lr=1, total_steps=100): initial 1/25 = 0.04, final 0.04/1e4 = 4e-6,
    // phase 1 ends at step 0.3 * 100 - 1 = 29.
    auto cycle = optim::one_cycle(1.0f, 100);
    CHECK(cycle.lr_at(0) == doctest::Approx(0.04));
    CHECK(cycle.lr_at(10) == doctest::Approx(1.0 + (0.04 - 1.0) / 2 * (std::cos(optim::kPi * 10 / 29) + 1)));  // 0.295164
    CHECK(cycle.lr_at(10) == doctest::Approx(0.29516394846));
    CHECK(cycle.lr_at(29) == doctest::Approx(1.0));
    CHECK(cycle.lr_at(30) == doctest::Approx(0.99949653528));
    CHECK(cycle.lr_at(64) == doctest::Approx(0.500002));  // halfway through phase 2
    CHECK(cycle.lr_at(99) == doctest::Approx(4e-6));
    CHECK(cycle.lr_at(150) == doctest::Approx(4e-6));
    // Pure functions: asking out of order changes nothing.
    CHECK(cycle.lr_at(10) == cycle.lr_at(10));
}

TEST_CASE("schedules: bad arguments are errors") {
    CHECK_THROWS_WITH_AS(optim::step_decay(0.1f, {5, 3}), doctest::Contains("ascending"), Error);
    CHECK_THROWS_AS(optim::cosine_annealing(0.1f, 0), Error);
    CHECK_THROWS_AS(optim::cosine_annealing(0.1f, 10, 0.2f), Error);
    CHECK_THROWS_AS(optim::linear_warmup(optim::constant_lr(0.1f), 0), Error);
    CHECK_THROWS_AS(optim::one_cycle(1.0f, 3, 0.3), Error);  // phase 1 would end before step 0
    CHECK_THROWS_AS(optim::one_cycle(1.0f, 100, 1.0), Error);
    CHECK_THROWS_AS(optim::constant_lr(0.1f).lr_at(-1), Error);
}

TEST_CASE("SGD trains a small CNN: the loss on a fixed batch falls") {
    Rng rng(21);
    nn::Sequential model;
    model.emplace_back<nn::Conv2d>(3, 8, 3, 1, 1, false, rng, nn::WeightInit::kaiming_normal_fan_out);
    model.emplace_back<nn::BatchNorm2d>(8);
    model.emplace_back<nn::ReLU>();
    model.emplace_back<nn::GlobalAvgPool>();
    model.emplace_back<nn::Flatten>();
    model.emplace_back<nn::Linear>(8, 4, true, rng);
    // A learnable task: class k < 3 brightens channel k, class 3 darkens every channel.
    Tensor images = randn({16, 3, 6, 6}, rng);
    std::vector<int> labels;
    for (int i = 0; i < 16; ++i) {
        labels.push_back(i % 4);
        for (int c = 0; c < 3; ++c)
            for (int j = 0; j < 36; ++j) images[(i * 3 + c) * 36 + j] += i % 4 == 3 ? -1.0f : (i % 4 == c ? 1.5f : 0.0f);
    }
    Var x(std::move(images));

    optim::SGDOptions o;
    o.lr = 0.1f, o.momentum = 0.9f, o.weight_decay = 5e-4f;
    optim::SGD sgd(model.named_parameters(), o, nn::weight_decay_filter(model));
    auto schedule = optim::linear_warmup(optim::cosine_annealing(0.1f, 30), 3);
    float first = 0.0f, last = 0.0f;
    for (int step = 0; step < 30; ++step) {
        sgd.zero_grad();
        Var loss = cross_entropy(model.forward(x), labels);
        backward(loss);
        sgd.set_lr(schedule.lr_at(step));
        sgd.step();
        (step == 0 ? first : last) = loss.value()[0];
    }
    CHECK(last < 0.5f * first);
}
