// nn modules: names and order of parameters and buffers, registration errors, modes, BatchNorm's
// frozen statistics, deterministic initialization, gradients of a small stack.
#include <doctest/doctest.h>

#include <algorithm>
#include <cmath>
#include <memory>
#include <string>
#include <vector>

#include "gradcheck.hpp"
#include "speq/nn/batch_norm.hpp"
#include "speq/nn/conv2d.hpp"
#include "speq/nn/init.hpp"
#include "speq/nn/linear.hpp"
#include "speq/nn/module.hpp"
#include "speq/nn/sequential.hpp"
#include "speq/nn/stateless.hpp"
#include "speq/nn/weight_quantizer.hpp"

using namespace speq;

namespace {

std::vector<std::string> names_of(const nn::NamedParameters& params) {
    std::vector<std::string> out;
    for (auto& [name, var] : params) out.push_back(name);
    return out;
}
template <class T>
std::vector<std::string> names_of(const std::vector<std::pair<std::string, T*>>& tensors) {
    std::vector<std::string> out;
    for (auto& [name, t] : tensors) out.push_back(name);
    return out;
}

// A ResNet-shaped toy: conv1, bn1, layer1 = Sequential of two blocks, fc.
struct Block : nn::UnaryModule {
    std::shared_ptr<nn::Conv2d> conv1;
    std::shared_ptr<nn::BatchNorm2d> bn1;
    Block(int channels, Rng& rng) {
        conv1 = register_module("conv1", std::make_shared<nn::Conv2d>(channels, channels, 3, 1, 1, false, rng));
        bn1 = register_module("bn1", std::make_shared<nn::BatchNorm2d>(channels));
    }
    Var forward(const Var& x) override { return relu(add(bn1->forward(conv1->forward(x)), x)); }
};

struct ToyNet : nn::UnaryModule {
    std::shared_ptr<nn::Conv2d> conv1;
    std::shared_ptr<nn::BatchNorm2d> bn1;
    std::shared_ptr<nn::Sequential> layer1;
    std::shared_ptr<nn::Linear> fc;
    explicit ToyNet(Rng& rng) {
        conv1 = register_module("conv1", std::make_shared<nn::Conv2d>(3, 4, 3, 1, 1, false, rng));
        bn1 = register_module("bn1", std::make_shared<nn::BatchNorm2d>(4));
        layer1 = register_module("layer1", std::make_shared<nn::Sequential>());
        layer1->push_back(std::make_shared<Block>(4, rng));
        layer1->push_back(std::make_shared<Block>(4, rng));
        fc = register_module("fc", std::make_shared<nn::Linear>(4, 10, true, rng));
    }
    Var forward(const Var& x) override {
        Var h = relu(bn1->forward(conv1->forward(x)));
        h = layer1->forward(h);
        return fc->forward(flatten(global_avg_pool(h)));
    }
};

// ReLU has a kink at 0 where finite differences are meaningless. This moves each channel's BN
// shift (beta) so that no ReLU input of the check lies within 0.05 of 0: 0 goes into the middle of
// the gap, at least 0.1 wide, between consecutive pre-activations that is nearest to it.
void keep_relu_inputs_off_zero(nn::Sequential& model, nn::BatchNorm2d& bn, const Tensor& x) {
    NoGradGuard no_grad;
    nn::FreezeRunningStats frozen(model);
    Var pre = model[1](model[0](Var(x)));
    const int64_t n = pre.shape()[0], c_count = pre.shape()[1], hw = pre.numel() / (n * c_count);
    Var beta = bn.bias();
    for (int64_t c = 0; c < c_count; ++c) {
        std::vector<double> v = {-1e9, 1e9};
        for (int64_t i = 0; i < n; ++i)
            for (int64_t j = 0; j < hw; ++j) v.push_back(pre.value()[(i * c_count + c) * hw + j]);
        std::sort(v.begin(), v.end());
        double best = 1e9;
        for (size_t i = 0; i + 1 < v.size(); ++i) {
            if (v[i + 1] - v[i] < 0.1) continue;
            double mid = v[i] == -1e9 ? v[i + 1] - 0.05 : v[i + 1] == 1e9 ? v[i] + 0.05 : (v[i] + v[i + 1]) / 2;
            if (std::abs(mid) < std::abs(best)) best = mid;
        }
        beta.value()[c] -= static_cast<float>(best);
    }
}

}  // namespace

TEST_CASE("nn: nested names follow PyTorch's state_dict, in registration order") {
    Rng rng(1);
    ToyNet net(rng);
    CHECK(names_of(net.named_parameters()) ==
          std::vector<std::string>{"conv1.weight", "bn1.weight", "bn1.bias", "layer1.0.conv1.weight",
                                   "layer1.0.bn1.weight", "layer1.0.bn1.bias", "layer1.1.conv1.weight",
                                   "layer1.1.bn1.weight", "layer1.1.bn1.bias", "fc.weight", "fc.bias"});
    CHECK(names_of(net.named_buffers()) ==
          std::vector<std::string>{"bn1.running_mean", "bn1.running_var", "layer1.0.bn1.running_mean",
                                   "layer1.0.bn1.running_var", "layer1.1.bn1.running_mean",
                                   "layer1.1.bn1.running_var"});
    CHECK(names_of(net.state()) ==
          std::vector<std::string>{"conv1.weight", "bn1.weight", "bn1.bias", "bn1.running_mean", "bn1.running_var",
                                   "layer1.0.conv1.weight", "layer1.0.bn1.weight", "layer1.0.bn1.bias",
                                   "layer1.0.bn1.running_mean", "layer1.0.bn1.running_var",
                                   "layer1.1.conv1.weight", "layer1.1.bn1.weight", "layer1.1.bn1.bias",
                                   "layer1.1.bn1.running_mean", "layer1.1.bn1.running_var", "fc.weight", "fc.bias"});
    std::vector<std::string> modules;
    for (auto& [name, m] : net.named_modules()) modules.push_back(name);
    CHECK(modules == std::vector<std::string>{"", "conv1", "bn1", "layer1", "layer1.0", "layer1.0.conv1",
                                              "layer1.0.bn1", "layer1.1", "layer1.1.conv1", "layer1.1.bn1", "fc"});
    CHECK(net.num_parameters() == 3 * 4 * 9 + 2 * 4 + 2 * (4 * 4 * 9 + 2 * 4) + 4 * 10 + 10);
    // Shapes as PyTorch.
    CHECK(net.conv1->weight().shape() == Shape{4, 3, 3, 3});
    CHECK_FALSE(net.conv1->bias().defined());
    CHECK(net.fc->weight().shape() == Shape{10, 4});
    CHECK(net.fc->bias().shape() == Shape{10});
    CHECK(net.bn1->running_var().shape() == Shape{4});

    // Forward runs end to end.
    Var y = net.forward(Var(randn({2, 3, 5, 5}, rng)));
    CHECK(y.shape() == Shape{2, 10});
    tape().clear();
}

TEST_CASE("nn: a module's own parameters and buffers come before its children in state()") {
    Rng rng(2);
    nn::Module m;
    m.register_module("child", std::make_shared<nn::Linear>(2, 3, true, rng));
    m.register_parameter("scale", Tensor::full({1}, 2.0f));
    m.register_buffer("count", Tensor::zeros({1}));
    CHECK(names_of(m.state()) == std::vector<std::string>{"scale", "count", "child.weight", "child.bias"});
    CHECK(names_of(m.named_parameters()) == std::vector<std::string>{"scale", "child.weight", "child.bias"});
}

TEST_CASE("nn: state() writes through to parameters and buffers, the const view reads the same") {
    Rng rng(3);
    nn::Sequential seq;
    auto bn = seq.push_back(std::make_shared<nn::BatchNorm2d>(2));
    for (auto& [name, t] : seq.state()) t->fill(name == "0.running_var" ? 7.0f : 3.0f);
    CHECK(bn->weight().value()[1] == 3.0f);
    CHECK(bn->bias().value()[0] == 3.0f);
    CHECK(bn->running_mean()[0] == 3.0f);
    CHECK(bn->running_var()[1] == 7.0f);
    const nn::Sequential& view = seq;
    auto state = view.state();
    REQUIRE(state.size() == 4);
    CHECK(state[3].first == "0.running_var");
    CHECK((*state[3].second)[0] == 7.0f);
}

TEST_CASE("nn: registration rejects duplicate, dotted and empty names") {
    Rng rng(4);
    nn::Module m;
    m.register_parameter("w", Tensor::zeros({2}));
    CHECK_THROWS_WITH_AS(m.register_parameter("w", Tensor::zeros({2})),
                         "Module::register_parameter: name 'w' is already registered in this module as a parameter",
                         Error);
    CHECK_THROWS_WITH_AS(m.register_buffer("w", Tensor::zeros({2})), doctest::Contains("as a parameter"), Error);
    m.register_buffer("b", Tensor::zeros({2}));
    CHECK_THROWS_WITH_AS(m.register_module("b", std::make_shared<nn::ReLU>()), doctest::Contains("as a buffer"), Error);
    m.register_module("c", std::make_shared<nn::ReLU>());
    CHECK_THROWS_WITH_AS(m.register_parameter("c", Tensor::zeros({1})), doctest::Contains("as a child module"), Error);
    CHECK_THROWS_WITH_AS(m.register_parameter("a.b", Tensor::zeros({1})), doctest::Contains("contains '.'"), Error);
    CHECK_THROWS_WITH_AS(m.register_module("", std::make_shared<nn::ReLU>()), doctest::Contains("empty"), Error);
    CHECK_THROWS_AS(m.register_module("null", std::shared_ptr<nn::ReLU>()), Error);
    nn::Sequential seq;
    seq.push_back("conv", std::make_shared<nn::Conv2d>(1, 1, 1, 1, 0, true, rng));
    CHECK_THROWS_AS(seq.push_back("conv", std::make_shared<nn::ReLU>()), Error);
    CHECK(seq.size() == 1);
}

TEST_CASE("nn: layer arguments are checked") {
    Rng rng(5);
    CHECK_THROWS_WITH_AS(nn::Conv2d(3, 8, 3, 0, 1, false, rng), "nn::Conv2d: stride must be >= 1, got 0", Error);
    CHECK_THROWS_AS(nn::Conv2d(3, 8, 0, 1, 1, false, rng), Error);
    CHECK_THROWS_AS(nn::Conv2d(3, 8, 3, 1, -1, false, rng), Error);
    CHECK_THROWS_AS(nn::Linear(0, 8, true, rng), Error);
    CHECK_THROWS_AS(nn::BatchNorm2d(0), Error);
    CHECK_THROWS_AS(nn::BatchNorm2d(4, 1.5f), Error);
}

TEST_CASE("nn: train/eval propagates through the tree") {
    Rng rng(6);
    ToyNet net(rng);
    for (auto& [name, m] : net.named_modules()) CHECK(m->is_training());
    net.eval();
    for (auto& [name, m] : net.named_modules()) CHECK_FALSE(m->is_training());
    net.layer1->train();
    CHECK_FALSE(net.is_training());
    CHECK(static_cast<Block&>((*net.layer1)[1]).bn1->is_training());
    net.train(true);
    for (auto& [name, m] : net.named_modules()) CHECK(m->is_training());
}

TEST_CASE("nn: BatchNorm2d updates running stats in training, uses them in eval, and can freeze them") {
    Rng rng(7);
    nn::Sequential model;
    auto bn = model.push_back(std::make_shared<nn::BatchNorm2d>(3, 0.1f, 1e-5f));
    Tensor x = randn({4, 3, 2, 2}, rng);
    for (int64_t i = 0; i < x.numel(); ++i) x[i] = 2.0f * x[i] + 1.0f;

    // Frozen: same output as an updating forward, running stats untouched; restored afterwards.
    Var frozen_out;
    {
        nn::FreezeRunningStats frozen(model);
        CHECK_FALSE(bn->updates_running_stats());
        frozen_out = model.forward(Var(x));
        for (int c = 0; c < 3; ++c) {
            CHECK(bn->running_mean()[c] == 0.0f);
            CHECK(bn->running_var()[c] == 1.0f);
        }
    }
    CHECK(bn->updates_running_stats());
    Var out = model.forward(Var(x));
    for (int64_t i = 0; i < x.numel(); ++i) CHECK(out.value()[i] == frozen_out.value()[i]);

    // One update: running = 0.9 running + 0.1 batch (unbiased variance, as PyTorch).
    for (int c = 0; c < 3; ++c) {
        double sum = 0, sq = 0;
        for (int n = 0; n < 4; ++n)
            for (int i = 0; i < 4; ++i) sum += x[(n * 3 + c) * 4 + i];
        const double mean = sum / 16;
        for (int n = 0; n < 4; ++n)
            for (int i = 0; i < 4; ++i) sq += std::pow(x[(n * 3 + c) * 4 + i] - mean, 2);
        CHECK(bn->running_mean()[c] == doctest::Approx(0.1 * mean).epsilon(1e-5));
        CHECK(bn->running_var()[c] == doctest::Approx(0.9 + 0.1 * sq / 15).epsilon(1e-5));
    }

    // A guard leaves a BN that was already frozen frozen.
    bn->set_update_running_stats(false);
    { nn::FreezeRunningStats frozen(model); }
    CHECK_FALSE(bn->updates_running_stats());
    bn->set_update_running_stats(true);

    // Eval: y = (x - running_mean) / sqrt(running_var + eps) * gamma + beta, and stats stay.
    model.eval();
    const float mean0 = bn->running_mean()[0], var0 = bn->running_var()[0];
    Var y = model.forward(Var(x));
    CHECK(y.value()[0] == doctest::Approx((x[0] - mean0) / std::sqrt(var0 + 1e-5f)).epsilon(1e-5));
    CHECK(bn->running_mean()[0] == mean0);
}

TEST_CASE("nn: the same seed gives the same model, another seed a different one") {
    auto flat = [](uint64_t seed) {
        Rng rng(seed);
        ToyNet net(rng);
        std::vector<float> v;
        for (auto& [name, t] : net.state())
            for (int64_t i = 0; i < t->numel(); ++i) v.push_back((*t)[i]);
        return v;
    };
    CHECK(flat(42) == flat(42));
    CHECK(flat(42) != flat(43));
}

TEST_CASE("nn: initializers follow PyTorch's distributions") {
    Rng rng(8);
    // PyTorch default: weight and bias uniform in +-1/sqrt(fan_in); fan_in = 16 * 3 * 3.
    nn::Conv2d conv(16, 64, 3, 1, 1, true, rng);
    const float bound = 1.0f / std::sqrt(144.0f);
    double sum_sq = 0.0;
    float max_abs = 0.0f;
    const Tensor& w = conv.weight().value();
    for (int64_t i = 0; i < w.numel(); ++i) {
        max_abs = std::max(max_abs, std::abs(w[i]));
        sum_sq += double(w[i]) * w[i];
    }
    CHECK(max_abs <= bound);
    CHECK(max_abs > 0.95f * bound);
    CHECK(std::sqrt(sum_sq / w.numel()) == doctest::Approx(bound / std::sqrt(3.0)).epsilon(0.03));
    for (int64_t i = 0; i < 64; ++i) CHECK(std::abs(conv.bias().value()[i]) <= bound);

    // torchvision ResNet conv: N(0, 2 / fan_out), fan_out = 64 * 3 * 3; bias 0.
    nn::Conv2d resnet_conv(64, 64, 3, 1, 1, true, rng, nn::WeightInit::kaiming_normal_fan_out);
    const Tensor& v = resnet_conv.weight().value();
    double mean = 0.0, sq = 0.0;
    for (int64_t i = 0; i < v.numel(); ++i) mean += v[i], sq += double(v[i]) * v[i];
    mean /= v.numel();
    CHECK(std::abs(mean) < 0.005);
    CHECK(std::sqrt(sq / v.numel()) == doctest::Approx(std::sqrt(2.0 / 576.0)).epsilon(0.02));
    CHECK(resnet_conv.bias().value()[3] == 0.0f);

    // Linear fans: [out, in] -> fan_in = in.
    CHECK(nn::init::fans_of({10, 64}).fan_in == 64);
    CHECK(nn::init::fans_of({10, 64}).fan_out == 10);
    CHECK(nn::init::fans_of({8, 4, 3, 3}).fan_out == 72);
    CHECK_THROWS_AS(nn::init::fans_of({5}), Error);
}

TEST_CASE("nn: weight_decay_filter skips BatchNorm parameters and *.alpha, decays the rest") {
    Rng rng(9);
    ToyNet net(rng);
    net.layer1->register_parameter("alpha", Tensor::full({1}, 6.0f));  // stands in for a PACT clip
    auto decays = nn::weight_decay_filter(net);
    CHECK(decays("conv1.weight"));
    CHECK(decays("layer1.1.conv1.weight"));
    CHECK(decays("fc.weight"));
    CHECK(decays("fc.bias"));
    CHECK_FALSE(decays("bn1.weight"));
    CHECK_FALSE(decays("bn1.bias"));
    CHECK_FALSE(decays("layer1.0.bn1.bias"));
    CHECK_FALSE(decays("layer1.alpha"));
    auto decays_alpha_too = nn::weight_decay_filter(net, /*decay_alpha=*/true);
    CHECK(decays_alpha_too("layer1.alpha"));
    CHECK_FALSE(decays_alpha_too("bn1.weight"));
    nn::Module solo;
    solo.register_parameter("alpha", Tensor::full({1}, 1.0f));
    solo.register_parameter("alphabet", Tensor::full({1}, 1.0f));
    auto solo_decays = nn::weight_decay_filter(solo);
    CHECK_FALSE(solo_decays("alpha"));
    CHECK(solo_decays("alphabet"));
}

TEST_CASE("nn: zero_grad zeroes every parameter's gradient") {
    Rng rng(10);
    ToyNet net(rng);
    Var y = net.forward(Var(randn({2, 3, 4, 4}, rng)));
    backward(y, randn(y.shape(), rng));
    for (auto& [name, p] : net.named_parameters()) {
        INFO(name);
        REQUIRE(p.has_grad());
    }
    net.zero_grad();
    for (auto& [name, p] : net.named_parameters())
        for (int64_t i = 0; i < p.numel(); ++i) CHECK(p.grad()[i] == 0.0f);
}

// Gradients of every parameter of Conv2d -> BatchNorm2d -> ReLU -> pool -> Linear, and of the input.
TEST_CASE("gradcheck: Conv2d -> BatchNorm2d -> ReLU -> pool -> Linear, training and eval mode") {
    Rng rng(11);
    nn::Sequential model;
    model.emplace_back<nn::Conv2d>(2, 3, 3, 2, 1, true, rng);
    model.emplace_back<nn::BatchNorm2d>(3);
    model.emplace_back<nn::ReLU>();
    model.emplace_back<nn::GlobalAvgPool>();
    model.emplace_back<nn::Flatten>();
    model.emplace_back<nn::Linear>(3, 4, true, rng);
    // Non-trivial BN affine parameters and running stats.
    for (auto& [name, t] : model.state()) {
        if (name == "1.weight") *t = rand_uniform(t->shape(), rng, 0.5f, 1.5f);
        if (name == "1.bias") *t = rand_uniform(t->shape(), rng, -0.5f, 0.5f);
        if (name == "1.running_mean") *t = rand_uniform(t->shape(), rng, -0.2f, 0.2f);
        if (name == "1.running_var") *t = rand_uniform(t->shape(), rng, 0.5f, 2.0f);
    }
    std::vector<Var> inputs;
    std::vector<std::string> names;
    for (auto& [name, p] : model.named_parameters()) inputs.push_back(p), names.push_back(name);
    CHECK(names == std::vector<std::string>{"0.weight", "0.bias", "1.weight", "1.bias", "5.weight", "5.bias"});
    inputs.push_back(Var::parameter(randn({3, 2, 5, 5}, rng)));

    auto forward = [&](std::vector<Var>& v) { return model.forward(v.back()); };
    auto& bn = static_cast<nn::BatchNorm2d&>(model[1]);
    keep_relu_inputs_off_zero(model, bn, inputs.back().value());
    {
        nn::FreezeRunningStats frozen(model);  // finite differences run the model many times
        testing::check_gradients("small CNN, training-mode BN", forward, inputs);
    }
    model.eval();
    keep_relu_inputs_off_zero(model, bn, inputs.back().value());
    testing::check_gradients("small CNN, eval-mode BN", forward, inputs);
}

// ---- weight quantization inside Conv2d and Linear ----

TEST_CASE("nn: Conv2d and Linear are full precision by default") {
    Rng rng(12);
    nn::Conv2d conv(2, 3, 3, 1, 1, true, rng);
    CHECK(conv.weight_bits() == quant::kFullPrecision);
    CHECK_FALSE(conv.weight_quant().quantizes());
    CHECK_FALSE(conv.weight_step().defined());
    Tensor x = randn({2, 2, 5, 5}, rng);
    Var y = conv.forward(Var(x));
    Var want = conv2d(Var(x), conv.weight(), conv.bias(), {1, 1});
    for (int64_t i = 0; i < y.numel(); ++i) CHECK(y.value()[i] == want.value()[i]);
    const Tensor q = conv.quantized_weight();
    for (int64_t i = 0; i < q.numel(); ++i) CHECK(q[i] == conv.weight().value()[i]);
    CHECK_THROWS_AS(conv.weight_codes(), Error);
    CHECK(nn::describe(conv.weight_quant()) == "W32 (full precision)");
}

TEST_CASE("nn: Conv2d / Linear with computed scales: forward uses quant::quantize_weight, names stay") {
    Rng rng(13);
    for (quant::ScaleMethod method : {quant::ScaleMethod::max_abs, quant::ScaleMethod::min_l2}) {
        for (bool per_channel : {false, true}) {
            INFO("method ", int(method), ", per_channel ", per_channel);
            nn::Conv2d conv(3, 4, 3, 2, 1, true, rng);
            nn::WeightQuantConfig config;
            config.bits = 2;
            config.per_channel = per_channel;
            config.scale = method == quant::ScaleMethod::max_abs ? nn::WeightScale::max_abs : nn::WeightScale::min_l2;
            conv.set_weight_quant(config);
            CHECK(conv.weight_quant() == config);
            CHECK(names_of(conv.named_parameters()) == std::vector<std::string>{"weight", "bias"});

            const quant::WeightQuantOptions options{2, per_channel, method, quant::Grid::mid_rise};
            const Tensor want_w = quant::quantize_weight(Var(conv.weight().value()), options).value();
            const Tensor q = conv.quantized_weight();
            for (int64_t i = 0; i < q.numel(); ++i) CHECK(q[i] == want_w[i]);
            const quant::IntegerCodes codes = conv.weight_codes();
            CHECK(codes.scales.size() == (per_channel ? 4u : 1u));
            for (int64_t i = 0; i < q.numel(); ++i) {
                CHECK(codes.value(i) == q[i]);
                CHECK(codes.codes[i] >= codes.min_code);
                CHECK(codes.codes[i] <= codes.max_code);
            }

            // Forward = conv with the quantized weight; the weight gradient is the STE's.
            Tensor x = randn({2, 3, 6, 6}, rng);
            Var y = conv.forward(Var(x));
            Tensor seed = randn(y.shape(), rng);
            backward(y, seed);  // (the tape is per thread: one graph at a time)
            Var qw = Var::parameter(q);
            Var ref = conv2d(Var(x), qw, conv.bias(), {2, 1});
            REQUIRE(y.shape() == ref.shape());
            for (int64_t i = 0; i < y.numel(); ++i) CHECK(y.value()[i] == ref.value()[i]);
            backward(ref, seed);
            const auto thresholds = quant::weight_scales(conv.weight().value(), options);
            const int64_t inner = q.numel() / thresholds.numel();
            for (int64_t i = 0; i < q.numel(); ++i) {
                // dw = dq where |w| <= T = s * limit (max_abs: everywhere), else 0.
                const float t = thresholds[i / inner] * quant::grid_spec("test", 2, quant::Grid::mid_rise).limit;
                const bool inside = method == quant::ScaleMethod::max_abs || std::abs(conv.weight().value()[i]) <= t;
                CHECK(conv.weight().grad()[i] == doctest::Approx(inside ? qw.grad()[i] : 0.0f).epsilon(1e-6));
            }
        }
    }
    // Linear, the same way.
    nn::Linear fc(8, 5, true, rng);
    fc.set_weight_bits(3);
    CHECK(fc.weight_bits() == 3);
    CHECK(fc.weight_quant().scale == nn::WeightScale::min_l2);
    const Tensor want = quant::quantize_weight(Var(fc.weight().value()), {3, false, quant::ScaleMethod::min_l2,
                                                                         quant::Grid::mid_rise}).value();
    Tensor x = randn({4, 8}, rng);
    Var y = fc.forward(Var(x));
    Var ref = linear(Var(x), Var(want), fc.bias());
    for (int64_t i = 0; i < y.numel(); ++i) CHECK(y.value()[i] == ref.value()[i]);
    tape().clear();
}

TEST_CASE("nn: LSQ registers weight_step (no decay), initialises it once, and it learns") {
    Rng rng(14);
    nn::Conv2d conv(3, 4, 3, 1, 1, true, rng);
    nn::WeightQuantConfig lsq;
    lsq.bits = 2;
    lsq.scale = nn::WeightScale::lsq;
    conv.set_weight_quant(lsq);
    CHECK(names_of(conv.named_parameters()) == std::vector<std::string>{"weight", "bias", "weight_step"});
    CHECK(conv.parameters_without_decay() == std::vector<std::string>{"weight_step"});
    CHECK_FALSE(nn::weight_decay_filter(conv)("weight_step"));
    const Tensor init = quant::lsq_init_step(conv.weight().value(), 2, false);
    REQUIRE(conv.weight_step().shape() == Shape{1});
    CHECK(conv.weight_step().value()[0] == init[0]);

    // Forward = lsq_quantize; the step receives gradient.
    Tensor x = randn({2, 3, 5, 5}, rng);
    Var y = conv.forward(Var(x));
    Var ref = conv2d(Var(x), quant::lsq_quantize(Var(conv.weight().value()), Var(conv.weight_step().value()), 2, false),
                     conv.bias(), {1, 1});
    for (int64_t i = 0; i < y.numel(); ++i) CHECK(y.value()[i] == ref.value()[i]);
    backward(y, randn(y.shape(), rng));
    tape().clear();
    REQUIRE(conv.weight_step().has_grad());
    CHECK(conv.weight_step().grad()[0] != 0.0f);
    const quant::IntegerCodes codes = conv.weight_codes();
    const Tensor q = conv.quantized_weight();
    for (int64_t i = 0; i < q.numel(); ++i) CHECK(codes.value(i) == q[i]);

    // The same config again, or a detour through full precision, keeps the learned step.
    Var step = conv.weight_step();  // a handle: writes reach the layer's parameter
    step.value()[0] = 0.123f;
    conv.set_weight_quant(lsq);
    CHECK(conv.weight_step().value()[0] == 0.123f);
    conv.set_weight_bits(32);
    CHECK(conv.weight_step().defined());  // stays registered, unused
    Tensor fp = conv.quantized_weight();
    for (int64_t i = 0; i < fp.numel(); ++i) CHECK(fp[i] == conv.weight().value()[i]);
    conv.set_weight_bits(2);
    CHECK(conv.weight_step().value()[0] == 0.123f);
    // Other bits or per-channel: initialised again (per channel: one step per output channel).
    conv.set_weight_bits(4);
    CHECK(conv.weight_step().value()[0] == quant::lsq_init_step(conv.weight().value(), 4, false)[0]);
    nn::WeightQuantConfig per_channel = lsq;
    per_channel.per_channel = true;
    conv.set_weight_quant(per_channel);
    CHECK(conv.weight_step().shape() == Shape{4});
    CHECK_FALSE(conv.weight_step().has_grad());
    CHECK(names_of(conv.named_parameters()) == std::vector<std::string>{"weight", "bias", "weight_step"});
    // reset_weight_step re-reads the weights.
    Var weight = conv.weight();
    weight.value().fill(0.5f);
    conv.reset_weight_step();
    CHECK(conv.weight_step().value()[2] == quant::lsq_init_step(conv.weight().value(), 2, true)[2]);
    CHECK(nn::describe(conv.weight_quant()) == "W2 lsq per-channel mid_rise");
}

TEST_CASE("nn: bad weight quantization settings are errors that change nothing") {
    Rng rng(15);
    nn::Linear fc(4, 3, false, rng);
    fc.set_weight_bits(4);
    CHECK_THROWS_WITH_AS(fc.set_weight_bits(9), doctest::Contains("nn::Linear: weight quantization: bits must be 1..8"),
                         Error);
    nn::WeightQuantConfig narrow1;
    narrow1.bits = 1;
    narrow1.grid = quant::Grid::narrow;
    CHECK_THROWS_WITH_AS(fc.set_weight_quant(narrow1), doctest::Contains("narrow grid needs bits >= 2"), Error);
    CHECK(fc.weight_bits() == 4);
    CHECK(nn::parse_weight_scale("lsq") == nn::WeightScale::lsq);
    CHECK(nn::parse_weight_scale("max_abs") == nn::WeightScale::max_abs);
    CHECK_THROWS_WITH_AS(nn::parse_weight_scale("mse"), doctest::Contains("max_abs, min_l2, lsq; got 'mse'"), Error);
}
