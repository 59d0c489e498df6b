// Models and quantization control: the option-A shortcut op, ActQuant, alpha calibration, the
// CIFAR ResNets and the small CNN (PyTorch names, parameter counts, shapes, gradients), and the
// helpers that list and set a model's quantizers (bits, guard, configure_quantization).
#include <doctest/doctest.h>

#include <algorithm>
#include <cmath>
#include <memory>
#include <string>
#include <vector>

#include "gradcheck.hpp"
#include "speq/nn/act_quant.hpp"
#include "speq/nn/models/make_model.hpp"
#include "speq/nn/models/resnet.hpp"
#include "speq/nn/models/small_cnn.hpp"
#include "speq/nn/quant_control.hpp"
#include "speq/nn/weight_quantizer.hpp"
#include "speq/ops/shortcut.hpp"

using namespace speq;

namespace {

std::vector<std::string> names_of(const nn::NamedParameters& params) {
    std::vector<std::string> out;
    for (auto& [name, var] : params) out.push_back(name);
    return out;
}
template <class T>
std::vector<std::string> names_of(const std::vector<std::pair<std::string, T*>>& named) {
    std::vector<std::string> out;
    for (auto& [name, p] : named) out.push_back(name);
    return out;
}
std::vector<std::string> head(const std::vector<std::string>& v, size_t n) { return {v.begin(), v.begin() + n}; }
std::vector<std::string> tail(const std::vector<std::string>& v, size_t n) { return {v.end() - n, v.end()}; }

bool ends_with(const std::string& s, const std::string& suffix) {
    return s.size() >= suffix.size() && s.compare(s.size() - suffix.size(), suffix.size(), suffix) == 0;
}

int64_t count_without_alphas(const nn::Module& m) {
    int64_t n = 0;
    for (auto& [name, var] : m.named_parameters())
        if (!ends_with(name, ".alpha")) n += var.numel();
    return n;
}

bool all_finite(const Tensor& t) {
    for (int64_t i = 0; i < t.numel(); ++i)
        if (!std::isfinite(t[i])) return false;
    return true;
}

// Shifts each channel's BN beta so that no value of `pre` ([N, C, H, W], the input of a ReLU that
// moves with beta) lies within 0.05 of 0: finite differences across the ReLU's kink are meaningless.
void keep_off_zero(const Tensor& pre, Var beta) {
    const int64_t n = pre.shape()[0], channels = pre.shape()[1], hw = pre.numel() / (n * channels);
    for (int64_t c = 0; c < channels; ++c) {
        std::vector<double> v = {-1e9, 1e9};
        for (int64_t i = 0; i < n; ++i)
            for (int64_t j = 0; j < hw; ++j) v.push_back(pre[(i * channels + c) * hw + j]);
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

// The brute-force reference of calibrate_alpha's criterion: sum over all x of (pact(x) - relu(x))^2.
double pact_error(const Tensor& x, float alpha, int bits) {
    const Tensor q = quant::reference::pact_forward(x, alpha, bits);
    double e = 0.0;
    for (int64_t i = 0; i < x.numel(); ++i) {
        const double d = double(q[i]) - std::max(0.0, double(x[i]));
        e += d * d;
    }
    return e;
}

}  // namespace

// ---------------------------------------------------------------- shortcut A op

TEST_CASE("subsample_pad_channels: by hand, odd sizes, identity, errors") {
    Tensor x({1, 2, 3, 3});
    for (int64_t i = 0; i < x.numel(); ++i) x[i] = float(i);
    Var y = subsample_pad_channels(Var(x), 4, 2);
    REQUIRE(y.shape() == Shape{1, 4, 2, 2});
    const std::vector<float> want = {0, 0, 0, 0, 0, 2, 6, 8, 9, 11, 15, 17, 0, 0, 0, 0};
    for (int64_t i = 0; i < 16; ++i) CHECK(y.value()[i] == want[i]);

    // 2 -> 5 channels: 1 zero plane before, 2 after. 3x3 at stride 2 keeps rows/cols 0 and 2.
    Var z = subsample_pad_channels(Var(x), 5, 2);
    REQUIRE(z.shape() == Shape{1, 5, 2, 2});
    CHECK(z.value()[4] == 0.0f);    // channel 1, pixel 0 = x[0, 0, 0, 0]
    CHECK(z.value()[11] == 17.0f);  // channel 2, pixel 3 = x[0, 1, 2, 2]
    for (int64_t i = 12; i < 20; ++i) CHECK(z.value()[i] == 0.0f);

    // stride 1, same channels: a copy.
    Var same = subsample_pad_channels(Var(x), 2, 1);
    CHECK(same.shape() == x.shape());
    for (int64_t i = 0; i < x.numel(); ++i) CHECK(same.value()[i] == x[i]);

    // Even sizes: the CIFAR case 16 -> 32 channels, 32x32 -> 16x16, 8 zero planes on each side.
    Rng rng(1);
    Tensor big = randn({2, 16, 32, 32}, rng);
    Var b = subsample_pad_channels(Var(big), 32, 2);
    CHECK(b.shape() == Shape{2, 32, 16, 16});
    CHECK(b.value()[((1 * 32 + 8 + 3) * 16 + 5) * 16 + 7] == big[((1 * 16 + 3) * 32 + 10) * 32 + 14]);
    CHECK(b.value()[((1 * 32 + 7) * 16 + 5) * 16 + 7] == 0.0f);
    CHECK(b.value()[((1 * 32 + 24) * 16 + 5) * 16 + 7] == 0.0f);

    CHECK_THROWS_WITH_AS(subsample_pad_channels(Var(x), 1, 2), doctest::Contains("out_channels (1) must be >="), Error);
    CHECK_THROWS_AS(subsample_pad_channels(Var(x), 4, 0), Error);
    CHECK_THROWS_AS(subsample_pad_channels(Var(Tensor({2, 3, 4})), 4, 2), Error);
}

TEST_CASE("gradcheck: subsample_pad_channels") {
    Rng rng(2);
    std::vector<Var> inputs = {Var::parameter(randn({2, 3, 5, 4}, rng))};
    testing::check_gradients("subsample_pad_channels stride 2, 3 -> 7 channels",
                             [](std::vector<Var>& v) { return subsample_pad_channels(v[0], 7, 2); }, inputs);
    testing::check_gradients("subsample_pad_channels stride 1, 3 -> 4 channels",
                             [](std::vector<Var>& v) { return subsample_pad_channels(v[0], 4, 1); }, inputs);
    tape().clear();
}

// ---------------------------------------------------------------- ActQuant

TEST_CASE("ActQuant: plain ReLU at full precision, PACT levels at 2 bits") {
    Rng rng(3);
    Tensor x = randn({1000}, rng, 3.0f);
    nn::ActQuant act(quant::kFullPrecision, 2.4f);
    CHECK(act.bits() == 32);
    CHECK(act.alpha_value() == 2.4f);
    CHECK(names_of(act.named_parameters()) == std::vector<std::string>{"alpha"});

    Var fp = act.forward(Var(x));
    bool above_alpha = false;
    for (int64_t i = 0; i < x.numel(); ++i) {
        CHECK(fp.value()[i] == std::max(x[i], 0.0f));  // no clip at alpha
        above_alpha |= fp.value()[i] > 2.4f;
    }
    CHECK(above_alpha);

    act.set_bits(2);
    const float s = quant::pact_scale(2.4f, 2);
    CHECK(s == doctest::Approx(0.8f));
    Var q = act.forward(Var(x));
    int seen[4] = {0, 0, 0, 0};
    for (int64_t i = 0; i < x.numel(); ++i) {
        const float v = q.value()[i];
        const float k = std::round(v / s);
        REQUIRE(k >= 0.0f);
        REQUIRE(k <= 3.0f);
        CHECK(v == k * s);  // exactly a multiple of alpha / 3
        CHECK(v >= 0.0f);
        CHECK(v <= 2.4f + 1e-6f);
        seen[int(k)]++;
        if (x[i] <= 0.0f) CHECK(v == 0.0f);
        if (x[i] >= 2.4f) CHECK(k == 3.0f);
    }
    for (int k = 0; k < 4; ++k) CHECK(seen[k] > 0);

    CHECK_THROWS_WITH_AS(act.set_bits(9), doctest::Contains("nn::ActQuant::set_bits: bits must be 1..8"), Error);
    CHECK_THROWS_AS(act.set_bits(0), Error);
    CHECK(act.bits() == 2);
    CHECK_THROWS_AS(nn::ActQuant(16), Error);
    CHECK_THROWS_AS(nn::ActQuant(2, 0.0f), Error);
    CHECK_THROWS_AS(act.set_alpha(-1.0f), Error);
    CHECK(nn::ActQuant().alpha_value() == nn::kDefaultAlphaInit);
}

TEST_CASE("ActQuant: alpha learns at 1..8 bits only, and is not decayed") {
    Rng rng(4);
    nn::ActQuant act(quant::kFullPrecision, 1.0f);
    Var x = Var::parameter(randn({64}, rng, 2.0f));
    Var y = act.forward(x);
    backward(y, Tensor::full(y.shape(), 1.0f));
    CHECK_FALSE(act.alpha().has_grad());  // full precision: relu, alpha unused

    act.set_bits(2);
    y = act.forward(x);
    backward(y, Tensor::full(y.shape(), 1.0f));
    REQUIRE(act.alpha().has_grad());
    double clipped = 0;  // PACT: dalpha = sum of dy over x >= alpha
    for (int64_t i = 0; i < 64; ++i) clipped += x.value()[i] >= 1.0f ? 1.0 : 0.0;
    CHECK(act.alpha().grad()[0] == doctest::Approx(clipped));
    CHECK(clipped > 0);
    CHECK_FALSE(nn::weight_decay_filter(act)("alpha"));
    CHECK(act.parameters_without_decay() == std::vector<std::string>{"alpha"});
}

// ---------------------------------------------------------------- calibration

TEST_CASE("calibrate_alpha: minimizes the quantization MSE on a known distribution") {
    Rng rng(5);
    Tensor x = randn({20000}, rng);  // N(0, 1)
    float previous = 0.0f;
    for (int bits : {2, 3, 4, 8}) {
        const float a = nn::calibrate_alpha(x, bits);
        // Brute force, steps of 0.01 in [0.5, 5].
        float best = 0.0f;
        double best_error = INFINITY;
        for (int k = 50; k <= 500; ++k) {
            const float t = 0.01f * k;
            const double e = pact_error(x, t, bits);
            if (e < best_error) best_error = e, best = t;
        }
        // Seen: 1.97 (brute force 1.97) at 2 bits, 2.48 (2.49) at 3, 2.86 (2.85) at 4, 4.38 (4.38) at 8.
        INFO("bits ", bits, ": calibrated alpha ", a, ", brute-force best ", best);
        CHECK(pact_error(x, a, bits) <= best_error * 1.01);  // within 1% of the best error
        CHECK(a > previous);                                 // more bits: clip less
        previous = a;
    }
    // Sensible values: at 2 bits the best clip of a half-normal is about 2 sigma; at 8 bits near the max.
    const float a2 = nn::calibrate_alpha(x, 2);
    CHECK(a2 > 1.5f);
    CHECK(a2 < 2.5f);
    CHECK(nn::calibrate_alpha(x, 8) > 3.0f);

    // Deterministic; a non-finite activation is an error.
    Tensor small = randn({1000}, rng);
    CHECK(nn::calibrate_alpha(small, 2) == nn::calibrate_alpha(small, 2));
    small[7] = NAN;
    CHECK_THROWS_WITH_AS(nn::calibrate_alpha(small, 2), doctest::Contains("non-finite value"), Error);
    // No positive value: 0 (the caller keeps its alpha).
    CHECK(nn::calibrate_alpha(Tensor::full({10}, -1.0f), 2) == 0.0f);
    CHECK_THROWS_AS(nn::calibrate_alpha(x, 32), Error);
    CHECK_THROWS_AS(nn::calibrate_alpha(x, 0), Error);
}

TEST_CASE("calibrate_act_alphas: one pass, layer by layer, no side effects") {
    Rng rng(6);
    nn::SmallCnn model(1, 10, rng);
    nn::configure_quantization(model, {2, 2});
    Tensor batch = randn({16, 1, 12, 12}, rng);

    // What the first ActQuant will see: bn1(conv1(x)) with batch statistics.
    Tensor pre1;
    {
        NoGradGuard no_grad;
        nn::FreezeRunningStats frozen(model);
        pre1 = model.bn1().forward(model.conv1().forward(Var(batch))).value();
    }
    std::vector<Tensor> stats_before;
    for (auto& [name, t] : model.named_buffers()) stats_before.push_back(*t);

    tape().clear();
    nn::calibrate_act_alphas(model, batch);
    CHECK(tape().size() == 0);
    auto acts = nn::named_act_quants(model);
    REQUIRE(acts.size() == 3);
    CHECK(acts[0].second->alpha_value() == nn::calibrate_alpha(pre1, 2));
    CHECK(acts[2].second->bits() == 8);  // the last one feeds fc: calibrated for its own 8 bits
    for (auto& [name, a] : acts) {
        INFO(name);
        CHECK(a->alpha_value() != nn::kDefaultAlphaInit);
        CHECK_FALSE(a->calibration_pending());
    }
    size_t i = 0;
    for (auto& [name, t] : model.named_buffers()) {
        INFO(name);
        for (int64_t j = 0; j < t->numel(); ++j) CHECK((*t)[j] == stats_before[i][j]);
        ++i;
    }

    // Explicit bits; full-precision layers calibrate as 8-bit by default.
    nn::set_act_bits(model, 32);
    nn::calibrate_act_alphas(model, batch, {4});
    const float a4 = acts[0].second->alpha_value();
    nn::calibrate_act_alphas(model, batch);
    CHECK(acts[0].second->alpha_value() == nn::calibrate_alpha(pre1, 8));
    CHECK(acts[0].second->alpha_value() > a4);
    CHECK_THROWS_AS(nn::calibrate_act_alphas(model, batch, {9}), Error);

    // An ActQuant the forward never reaches is an error naming it; nothing stays pending.
    struct WithSpare : nn::UnaryModule {
        std::shared_ptr<nn::ActQuant> used, spare;
        WithSpare() {
            used = register_module("used", std::make_shared<nn::ActQuant>());
            spare = register_module("spare", std::make_shared<nn::ActQuant>());
        }
        Var forward(const Var& x) override { return used->forward(x); }
    } odd;
    CHECK_THROWS_WITH_AS(nn::calibrate_act_alphas(odd, randn({4, 2, 3, 3}, rng)), doctest::Contains("'spare'"), Error);
    CHECK_FALSE(odd.spare->calibration_pending());
}

// ---------------------------------------------------------------- models: names and counts

TEST_CASE("ResNet-20 option A: PyTorch names and order, 269,722 weights + 19 alphas") {
    Rng rng(7);
    nn::ResNetCifar net(20, 10, nn::Shortcut::A, rng);
    CHECK(count_without_alphas(net) == 269722);
    CHECK(net.num_parameters() == 269722 + 19);
    const auto params = names_of(net.named_parameters());
    CHECK(head(params, 12) == std::vector<std::string>{
                                  "conv1.weight", "bn1.weight", "bn1.bias", "act.alpha", "layer1.0.conv1.weight",
                                  "layer1.0.bn1.weight", "layer1.0.bn1.bias", "layer1.0.act1.alpha",
                                  "layer1.0.conv2.weight", "layer1.0.bn2.weight", "layer1.0.bn2.bias",
                                  "layer1.0.act2.alpha"});
    CHECK(tail(params, 6) == std::vector<std::string>{"layer3.2.conv2.weight", "layer3.2.bn2.weight",
                                                      "layer3.2.bn2.bias", "layer3.2.act2.alpha", "fc.weight",
                                                      "fc.bias"});
    // Option A has no shortcut parameters anywhere.
    for (auto& n : params) CHECK(n.find("shortcut") == std::string::npos);
    const auto state = names_of(net.state());
    CHECK(head(state, 8) == std::vector<std::string>{"conv1.weight", "bn1.weight", "bn1.bias", "bn1.running_mean",
                                                     "bn1.running_var", "act.alpha", "layer1.0.conv1.weight",
                                                     "layer1.0.bn1.weight"});
    CHECK(tail(state, 5) == std::vector<std::string>{"layer3.2.bn2.running_mean", "layer3.2.bn2.running_var",
                                                     "layer3.2.act2.alpha", "fc.weight", "fc.bias"});
    CHECK(state.size() == params.size() + 2 * 19);  // 19 BatchNorms, 2 buffers each

    // Shapes as PyTorch.
    CHECK(net.conv1().weight().shape() == Shape{16, 3, 3, 3});
    CHECK_FALSE(net.conv1().bias().defined());
    CHECK(net.block(2, 0).conv1().weight().shape() == Shape{32, 16, 3, 3});
    CHECK(net.block(2, 0).conv1().stride() == 2);
    CHECK(net.block(2, 1).conv1().stride() == 1);
    CHECK(net.block(3, 2).conv2().weight().shape() == Shape{64, 64, 3, 3});
    CHECK(net.fc().weight().shape() == Shape{10, 64});
    CHECK(net.block(2, 0).changes_shape());
    CHECK_FALSE(net.block(1, 0).changes_shape());
    CHECK(net.block(2, 0).shortcut_layers() == nullptr);
    CHECK_THROWS_AS(net.block(4, 0), Error);
    CHECK_THROWS_AS(net.block(1, 3), Error);

    CHECK(names_of(nn::named_act_quants(net)).size() == 19);
    CHECK(head(names_of(nn::named_act_quants(net)), 4) ==
          std::vector<std::string>{"act", "layer1.0.act1", "layer1.0.act2", "layer1.1.act1"});
    const auto layers = names_of(nn::named_weight_layers(net));
    CHECK(layers.size() == 20);
    CHECK(layers.front() == "conv1");
    CHECK(layers.back() == "fc");
}

TEST_CASE("ResNet-20 option B: shortcut.0 (1x1 conv) and shortcut.1 (BN), 272,474 weights") {
    Rng rng(8);
    nn::ResNetCifar net(20, 10, nn::Shortcut::B, rng);
    CHECK(count_without_alphas(net) == 272474);
    const auto state = names_of(net.state());
    auto at = std::find(state.begin(), state.end(), "layer2.0.bn2.running_var");
    REQUIRE(at != state.end());
    CHECK(std::vector<std::string>(at + 1, at + 8) ==
          std::vector<std::string>{"layer2.0.shortcut.0.weight", "layer2.0.shortcut.1.weight",
                                   "layer2.0.shortcut.1.bias", "layer2.0.shortcut.1.running_mean",
                                   "layer2.0.shortcut.1.running_var", "layer2.0.act2.alpha",
                                   "layer2.1.conv1.weight"});
    int shortcut_convs = 0;
    for (auto& [name, t] : net.state())
        if (name.find("shortcut.0.weight") != std::string::npos) ++shortcut_convs;
    CHECK(shortcut_convs == 2);  // layer2.0 and layer3.0 only
    REQUIRE(net.block(3, 0).shortcut_layers() != nullptr);
    auto& sc = static_cast<nn::Conv2d&>((*net.block(3, 0).shortcut_layers())[0]);
    CHECK(sc.weight().shape() == Shape{64, 32, 1, 1});
    CHECK(sc.stride() == 2);
    CHECK(nn::named_weight_layers(net).size() == 22);
    CHECK(nn::named_weight_layers(net).back().first == "fc");
}

TEST_CASE("ResNet-32/56, depth checks, make_model") {
    Rng rng(9);
    CHECK(count_without_alphas(nn::ResNetCifar(32, 10, nn::Shortcut::A, rng)) == 464154);
    CHECK(count_without_alphas(nn::ResNetCifar(56, 10, nn::Shortcut::A, rng)) == 853018);
    CHECK(count_without_alphas(nn::ResNetCifar(56, 10, nn::Shortcut::B, rng)) == 855770);
    CHECK(count_without_alphas(nn::ResNetCifar(20, 100, nn::Shortcut::A, rng)) == 269722 + 90 * 65);
    CHECK_THROWS_WITH_AS(nn::ResNetCifar(21, 10, nn::Shortcut::A, rng),
                         doctest::Contains("depth must be 6n + 2 with n >= 1 (20, 32, 44, 56, 110), got 21"), Error);
    CHECK_THROWS_AS(nn::ResNetCifar(18, 10, nn::Shortcut::A, rng), Error);
    CHECK_THROWS_AS(nn::ResNetCifar(2, 10, nn::Shortcut::A, rng), Error);
    CHECK_THROWS_AS(nn::ResNetCifar(20, 0, nn::Shortcut::A, rng), Error);

    auto r32 = nn::make_model("resnet32", 10, 3, nn::Shortcut::A, rng);
    CHECK(dynamic_cast<nn::ResNetCifar&>(*r32).depth() == 32);
    auto cnn = nn::make_model("small_cnn", 10, 1, nn::Shortcut::A, rng);
    CHECK(dynamic_cast<nn::SmallCnn*>(cnn.get()) != nullptr);
    auto gray = nn::make_model("resnet20", 10, 1, nn::Shortcut::B, rng);
    CHECK(dynamic_cast<nn::ResNetCifar&>(*gray).conv1().weight().shape() == Shape{16, 1, 3, 3});
    CHECK_THROWS_WITH_AS(nn::make_model("resnet18", 10, 3, nn::Shortcut::A, rng),
                         doctest::Contains("unknown model 'resnet18' (known: small_cnn, resnet20, resnet32, resnet56)"),
                         Error);
    CHECK(nn::parse_shortcut("B") == nn::Shortcut::B);
    CHECK(nn::parse_shortcut("a") == nn::Shortcut::A);
    CHECK_THROWS_AS(nn::parse_shortcut("C"), Error);
}

TEST_CASE("SmallCnn: names, 24,058 weights + 3 alphas, output shape") {
    Rng rng(10);
    nn::SmallCnn net(1, 10, rng);
    CHECK(count_without_alphas(net) == 1 * 16 * 9 + 2 * 16 + 16 * 32 * 9 + 2 * 32 + 32 * 64 * 9 + 2 * 64 + 64 * 10 + 10);
    CHECK(count_without_alphas(net) == 24058);
    CHECK(net.num_parameters() == 24061);
    CHECK(names_of(net.named_parameters()) ==
          std::vector<std::string>{"conv1.weight", "bn1.weight", "bn1.bias", "act1.alpha", "conv2.weight",
                                   "bn2.weight", "bn2.bias", "act2.alpha", "conv3.weight", "bn3.weight", "bn3.bias",
                                   "act3.alpha", "fc.weight", "fc.bias"});
    CHECK(net.conv2().stride() == 2);
    Var y = net.forward(Var(randn({3, 1, 28, 28}, rng)));
    CHECK(y.shape() == Shape{3, 10});
    CHECK(all_finite(y.value()));
    tape().clear();
}

TEST_CASE("ResNet: output shapes, train/eval propagate, init statistics") {
    Rng rng(11);
    nn::ResNetCifar net(20, 10, nn::Shortcut::A, rng);
    Var y = net.forward(Var(randn({2, 3, 32, 32}, rng)));
    CHECK(y.shape() == Shape{2, 10});
    CHECK(all_finite(y.value()));
    Var odd = net.forward(Var(randn({1, 3, 17, 15}, rng)));  // global pool: any size
    CHECK(odd.shape() == Shape{1, 10});
    tape().clear();

    net.eval();
    for (auto& [name, m] : net.named_modules()) CHECK_FALSE(m->is_training());
    net.train();
    for (auto& [name, m] : net.named_modules()) CHECK(m->is_training());

    // kaiming_normal_ (fan_in): layer3 conv2 has fan_in 576, std sqrt(2/576); fc bias 0.
    const Tensor& w = net.block(3, 1).conv2().weight().value();
    double sq = 0.0;
    for (int64_t i = 0; i < w.numel(); ++i) sq += double(w[i]) * w[i];
    CHECK(std::sqrt(sq / w.numel()) == doctest::Approx(std::sqrt(2.0 / 576.0)).epsilon(0.03));
    for (int64_t i = 0; i < 10; ++i) CHECK(net.fc().bias().value()[i] == 0.0f);
}

// ---------------------------------------------------------------- gradients

TEST_CASE("gradcheck: BasicBlock with shortcut A, B and identity, full precision, train and eval BN") {
    struct Case {
        const char* name;
        int in, out, stride;
        nn::Shortcut shortcut;
    };
    for (Case c : {Case{"A, 2 -> 4, stride 2", 2, 4, 2, nn::Shortcut::A}, Case{"B, 2 -> 4, stride 2", 2, 4, 2, nn::Shortcut::B},
                   Case{"identity, 3 -> 3", 3, 3, 1, nn::Shortcut::A}}) {
        Rng rng(12);
        nn::BasicBlock block(c.in, c.out, c.stride, c.shortcut, rng);
        // Non-trivial BN parameters everywhere.
        for (auto& [name, t] : block.state()) {
            if (ends_with(name, "bn1.weight") || ends_with(name, "bn2.weight") || ends_with(name, "1.weight"))
                *t = rand_uniform(t->shape(), rng, 0.5f, 1.5f);
            if (ends_with(name, "bias")) *t = rand_uniform(t->shape(), rng, -0.5f, 0.5f);
            if (ends_with(name, "running_mean")) *t = rand_uniform(t->shape(), rng, -0.2f, 0.2f);
            if (ends_with(name, "running_var")) *t = rand_uniform(t->shape(), rng, 0.5f, 2.0f);
        }
        std::vector<Var> inputs;
        for (auto& [name, p] : block.named_parameters())
            if (!ends_with(name, "alpha")) inputs.push_back(p);  // alpha is unused at full precision
        inputs.push_back(Var::parameter(randn({2, c.in, 5, 5}, rng)));
        auto forward = [&](std::vector<Var>& v) { return block.forward(v.back()); };

        for (bool training : {true, false}) {
            block.train(training);
            {   // Keep both ReLU inputs away from their kink.
                NoGradGuard no_grad;
                nn::FreezeRunningStats frozen(block);
                const Var x = inputs.back();
                keep_off_zero(block.bn1().forward(block.conv1().forward(x)).value(), block.bn1().bias());
                Var h = block.act1().forward(block.bn1().forward(block.conv1().forward(x)));
                keep_off_zero(add(block.bn2().forward(block.conv2().forward(h)), block.shortcut(x)).value(),
                              block.bn2().bias());
            }
            nn::FreezeRunningStats frozen(block);
            testing::check_gradients(std::string("BasicBlock ") + c.name + (training ? ", training BN" : ", eval BN"),
                                     forward, inputs);
        }
    }
    tape().clear();
}

TEST_CASE("ResNet-20 at W2A2: forward + backward at batch 8, finite gradients everywhere, every alpha learns") {
    Rng rng(13);
    for (nn::WeightScale scale : {nn::WeightScale::min_l2, nn::WeightScale::lsq}) {
        INFO("weight scale ", nn::weight_scale_name(scale));
        nn::ResNetCifar net(20, 10, nn::Shortcut::A, rng);
        nn::QuantConfig config;
        config.weight_bits = 2;
        config.act_bits = 2;
        config.weight_scale = scale;
        nn::configure_quantization(net, config);
        Tensor x = randn({8, 3, 32, 32}, rng);
        nn::calibrate_act_alphas(net, x);  // clips enough activations that every alpha sees gradient
        Var logits = net.forward(Var(x));
        REQUIRE(logits.shape() == Shape{8, 10});
        std::vector<int> labels = {0, 1, 2, 3, 4, 5, 6, 7};
        Var loss = cross_entropy(logits, labels);
        backward(loss);
        CHECK(tape().size() == 0);
        int alphas = 0, steps = 0;
        for (auto& [name, p] : net.named_parameters()) {
            INFO(name);
            REQUIRE(p.has_grad());
            CHECK(all_finite(p.grad()));
            double norm = 0.0;
            for (int64_t i = 0; i < p.numel(); ++i) norm += std::abs(p.grad()[i]);
            if (ends_with(name, "alpha")) {
                ++alphas;
                CHECK(norm > 0.0);
            }
            if (ends_with(name, "weight_step")) {
                ++steps;
                CHECK(norm > 0.0);
            }
        }
        CHECK(alphas == 19);
        CHECK(steps == (scale == nn::WeightScale::lsq ? 20 : 0));
    }
}

// ---------------------------------------------------------------- quantization control

TEST_CASE("set_act_bits: all, by name, per layer, the guard restores") {
    Rng rng(14);
    nn::ResNetCifar net(20, 10, nn::Shortcut::A, rng);
    CHECK(nn::act_bits(net) == std::vector<int>(19, 32));
    nn::set_act_bits(net, 2);
    CHECK(nn::act_bits(net) == std::vector<int>(19, 2));
    nn::set_act_bits(net, "layer2.1.act1", 8);
    CHECK(net.block(2, 1).act1().bits() == 8);
    CHECK_THROWS_WITH_AS(nn::set_act_bits(net, "layer9.act", 4), doctest::Contains("no layer named 'layer9.act'"), Error);
    CHECK_THROWS_AS(nn::set_act_bits(net, 0), Error);

    const std::vector<int> before = nn::act_bits(net);
    {
        nn::ActBitsGuard keep(net);
        std::vector<int> drawn(19);
        for (int i = 0; i < 19; ++i) drawn[i] = i % 2 ? 8 : 2;
        nn::set_act_bits_per_layer(net, drawn);
        CHECK(nn::act_bits(net) == drawn);
        CHECK(net.act().bits() == 2);
        CHECK(net.block(1, 0).act1().bits() == 8);
        nn::set_act_bits(net, 4);
    }
    CHECK(nn::act_bits(net) == before);

    // Restored when an exception unwinds too.
    try {
        nn::ActBitsGuard keep(net);
        nn::set_act_bits(net, 3);
        throw Error("teacher failed");
    } catch (const Error&) {
    }
    CHECK(nn::act_bits(net) == before);

    // A bad list changes nothing.
    std::vector<int> bad(19, 4);
    bad[6] = 9;
    CHECK_THROWS_WITH_AS(nn::set_act_bits_per_layer(net, bad), doctest::Contains("layer 'layer1.2.act2'"), Error);
    CHECK(nn::act_bits(net) == before);
    CHECK_THROWS_WITH_AS(nn::set_act_bits_per_layer(net, std::vector<int>(3, 4)),
                         doctest::Contains("19 activation quantizers, got 3"), Error);
}

TEST_CASE("set_body_act_bits: every activation but the classifier's input, whatever their bits (speq-eval --act-bits)") {
    Rng rng(17);
    nn::ResNetCifar net(20, 10, nn::Shortcut::A, rng);
    auto body_and_last = [&](int body, int last) {
        std::vector<int> want(19, body);
        want.back() = last;
        return want;
    };
    // An FP model: every layer at 32, the last one too; only the body moves.
    nn::configure_quantization(net, nn::QuantConfig{});
    nn::set_body_act_bits(net, 2);
    CHECK(nn::act_bits(net) == body_and_last(2, 32));
    CHECK(net.block(3, 2).act2().bits() == 32);  // layer3.2.act2 feeds the classifier

    // act_bits = last_layer_bits (W8A8): the last layer has the body's bits and still keeps them.
    nn::QuantConfig w8a8;
    w8a8.weight_bits = w8a8.act_bits = 8;
    nn::configure_quantization(net, w8a8);
    REQUIRE(nn::act_bits(net) == body_and_last(8, 8));
    nn::set_body_act_bits(net, 3);
    CHECK(nn::act_bits(net) == body_and_last(3, 8));

    // W2A2 (last at 8): as before this change.
    nn::QuantConfig w2a2;
    w2a2.weight_bits = w2a2.act_bits = 2;
    nn::configure_quantization(net, w2a2);
    nn::set_body_act_bits(net, 32);
    CHECK(nn::act_bits(net) == body_and_last(32, 8));
    CHECK_THROWS_WITH_AS(nn::set_body_act_bits(net, 9), doctest::Contains("set_body_act_bits"), Error);
    CHECK(nn::act_bits(net) == body_and_last(32, 8));
}

TEST_CASE("configure_quantization: body, first and last layers, the FP model") {
    Rng rng(15);
    nn::ResNetCifar net(20, 10, nn::Shortcut::B, rng);
    nn::QuantConfig w2a2;
    w2a2.weight_bits = 2;
    w2a2.act_bits = 2;
    nn::configure_quantization(net, w2a2);
    for (auto& [name, layer] : nn::named_weight_layers(net)) {
        INFO(name);
        const int want = name == "conv1" || name == "fc" ? 8 : 2;
        CHECK(layer->weight_bits() == want);
        CHECK(layer->weight_quant().scale == nn::WeightScale::min_l2);
    }
    for (auto& [name, act] : nn::named_act_quants(net)) {
        INFO(name);
        CHECK(act->bits() == (name == "layer3.2.act2" ? 8 : 2));  // the last one feeds fc
    }
    CHECK(nn::describe_quantization(net).front() == "conv1: W8 min_l2 per-tensor mid_rise");

    // First/last at the body's bits, or at full precision.
    nn::QuantConfig all2 = w2a2;
    all2.first_layer_bits = 2;
    all2.last_layer_bits = 2;
    nn::configure_quantization(net, all2);
    CHECK(net.conv1().weight_bits() == 2);
    CHECK(net.fc().weight_bits() == 2);
    CHECK(net.block(3, 2).act2().bits() == 2);
    nn::QuantConfig fp_ends = w2a2;
    fp_ends.first_layer_bits = 32;
    fp_ends.last_layer_bits = 32;
    nn::configure_quantization(net, fp_ends);
    CHECK(net.conv1().weight_bits() == 32);
    CHECK(net.fc().weight_bits() == 32);
    CHECK(net.block(3, 2).act2().bits() == 32);
    CHECK(net.block(3, 2).act1().bits() == 2);

    // 32 everywhere (the defaults of weight/act bits): the full-precision model, whatever first/last.
    nn::configure_quantization(net, nn::QuantConfig{});
    for (auto& [name, layer] : nn::named_weight_layers(net)) CHECK(layer->weight_bits() == 32);
    for (auto& [name, act] : nn::named_act_quants(net)) CHECK(act->bits() == 32);

    // Errors name the field or the layer and change nothing.
    nn::QuantConfig bad = w2a2;
    bad.act_bits = 0;
    CHECK_THROWS_WITH_AS(nn::configure_quantization(net, bad), doctest::Contains("act_bits"), Error);
    nn::QuantConfig narrow1 = w2a2;
    narrow1.weight_bits = 1;
    narrow1.grid = quant::Grid::narrow;
    CHECK_THROWS_WITH_AS(nn::configure_quantization(net, narrow1), doctest::Contains("layer 'layer1.0.conv1'"), Error);
    for (auto& [name, layer] : nn::named_weight_layers(net)) CHECK(layer->weight_bits() == 32);

    // SmallCnn: conv1 8, conv2/conv3 2, fc 8; act1/act2 2, act3 (feeds fc) 8.
    nn::SmallCnn cnn(1, 10, rng);
    nn::configure_quantization(cnn, w2a2);
    CHECK(cnn.conv1().weight_bits() == 8);
    CHECK(cnn.conv2().weight_bits() == 2);
    CHECK(cnn.conv3().weight_bits() == 2);
    CHECK(cnn.fc().weight_bits() == 8);
    CHECK(nn::act_bits(cnn) == std::vector<int>{2, 2, 8});
}

TEST_CASE("configure_quantization with LSQ: steps registered on every weight layer, not decayed") {
    Rng rng(16);
    nn::SmallCnn cnn(1, 10, rng);
    nn::QuantConfig config;
    config.weight_bits = 3;
    config.act_bits = 3;
    config.weight_scale = nn::WeightScale::lsq;
    config.per_channel = true;
    nn::configure_quantization(cnn, config);
    const auto names = names_of(cnn.named_parameters());
    CHECK(head(names, 2) == std::vector<std::string>{"conv1.weight", "conv1.weight_step"});
    CHECK(tail(names, 3) == std::vector<std::string>{"fc.weight", "fc.bias", "fc.weight_step"});
    CHECK(cnn.conv2().weight_step().shape() == Shape{32});
    const Tensor want = quant::lsq_init_step(cnn.conv2().weight().value(), 3, true);
    for (int64_t i = 0; i < 32; ++i) CHECK(cnn.conv2().weight_step().value()[i] == want[i]);
    auto decays = nn::weight_decay_filter(cnn);
    for (auto& n : names) {
        INFO(n);
        CHECK(decays(n) == !(ends_with(n, "weight_step") || ends_with(n, "alpha") || n.find("bn") == 0));
    }
}

TEST_CASE("ResNet-20 at W2A2 (option B): identical logits and gradients with 1 and 2 threads") {
    auto run = [](int threads) {
        const int saved = num_threads();
        set_num_threads(threads);
        Rng rng(17);
        nn::ResNetCifar net(20, 10, nn::Shortcut::B, rng);
        nn::configure_quantization(net, {2, 2});
        Tensor x = randn({4, 3, 16, 16}, rng);
        nn::calibrate_act_alphas(net, x);
        Var logits = net.forward(Var(x));
        Var loss = cross_entropy(logits, {1, 3, 5, 7});
        backward(loss);
        std::vector<float> out(logits.value().data(), logits.value().data() + logits.numel());
        for (auto& [name, p] : net.named_parameters()) {
            out.push_back(p.value()[0]);  // the calibrated alphas
            out.insert(out.end(), p.grad().data(), p.grad().data() + p.numel());
        }
        set_num_threads(saved);
        return out;
    };
    CHECK(run(1) == run(2));
}
