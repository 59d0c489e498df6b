// The fused batch norm + residual + activation op (ops/batch_norm_act.hpp) against the unfused
// chain batch_norm2d -> add -> relu / pact_quantize: identical outputs and running statistics,
// the same gradients (fresh and accumulated), finite differences, and whole models through
// nn::bn_act with the fused path on and off.
#include <doctest/doctest.h>

#include <cmath>
#include <cstring>
#include <string>
#include <vector>

#include "gradcheck.hpp"
#include "speq/nn/batch_norm_act.hpp"
#include "speq/nn/models/resnet.hpp"
#include "speq/nn/models/small_cnn.hpp"
#include "speq/nn/quant_control.hpp"
#include "speq/ops/batch_norm_act.hpp"
#include "speq/ops/conv2d_bn_act.hpp"

using namespace speq;
using quant::kFullPrecision;

namespace {

bool same_bits(const Tensor& a, const Tensor& b) {
    return a.shape() == b.shape() && std::memcmp(a.data(), b.data(), sizeof(float) * a.numel()) == 0;
}

int count_far(const Tensor& got, const Tensor& want, double rtol, const std::string& what) {
    REQUIRE_MESSAGE(got.shape() == want.shape(), what);
    int bad = 0;
    for (int64_t i = 0; i < got.numel(); ++i)
        if (!(std::abs(got[i] - want[i]) <= rtol * (1.0 + std::abs(want[i]))) && ++bad <= 3)
            FAIL_CHECK(what, " element ", i, ": got ", got[i], ", want ", want[i]);
    return bad;
}

enum class Mode { train_update, train_frozen, eval };
const char* mode_name(Mode m) { return m == Mode::train_update ? "train" : m == Mode::train_frozen ? "frozen" : "eval"; }
BatchNormOptions options_for(Mode m) {
    BatchNormOptions o;
    o.training = m != Mode::eval;
    o.update_running_stats = m == Mode::train_update;
    return o;
}

// Everything one call needs, as fresh Vars (so the fused and unfused runs share no gradients).
struct Case {
    Tensor x, gamma, beta, rmean, rvar, alpha, residual, dy;
    bool has_residual;

    Case(Shape shape, bool with_residual, Rng& rng) : has_residual(with_residual) {
        const int64_t C = shape[1];
        x = randn(shape, rng, 2.0f);
        for (int64_t i = 0; i < x.numel(); ++i) x[i] += 0.5f;
        gamma = rand_uniform({C}, rng, 0.5f, 1.5f);
        beta = randn({C}, rng, 0.5f);
        rmean = randn({C}, rng, 0.3f);
        rvar = rand_uniform({C}, rng, 0.5f, 2.0f);
        alpha = Tensor::of({1}, {1.25f});  // clips a fair share of the normalized values
        residual = randn(shape, rng);
        dy = randn(shape, rng);
    }
};

struct Run {
    Tensor y, rmean, rvar, dx, dgamma, dbeta, dalpha, dresidual;
};

// One forward (and backward when `backward_too`), fused or not. `poison`: every input's gradient
// starts from these values instead of absent (the accumulation case).
Run run_case(const Case& k, Mode mode, int bits, bool fused, bool backward_too, const Case* poison = nullptr) {
    Var x = Var::parameter(k.x), gamma = Var::parameter(k.gamma), beta = Var::parameter(k.beta);
    Var alpha = Var::parameter(k.alpha), residual = Var::parameter(k.residual);
    if (poison) {
        x.grad_for_accumulate() = poison->x;
        gamma.grad_for_accumulate() = poison->gamma;
        beta.grad_for_accumulate() = poison->beta;
        alpha.grad_for_accumulate() = poison->alpha;
        residual.grad_for_accumulate() = poison->residual;
    }
    Run r;
    r.rmean = k.rmean;
    r.rvar = k.rvar;
    const BatchNormOptions options = options_for(mode);
    Var y;
    if (fused) {
        y = batch_norm_act(x, gamma, beta, r.rmean, r.rvar, options, alpha, bits, k.has_residual ? &residual : nullptr);
    } else {
        Var h = batch_norm2d(x, gamma, beta, r.rmean, r.rvar, options);
        if (k.has_residual) h = add(h, residual);
        y = bits == kFullPrecision ? relu(h) : quant::pact_quantize(h, alpha, bits);
    }
    r.y = y.value();
    if (!backward_too) {
        tape().clear();
        return r;
    }
    backward(y, k.dy);
    auto grad_or_empty = [](const Var& v) { return v.has_grad() ? v.grad() : Tensor(); };
    r.dx = grad_or_empty(x);
    r.dgamma = grad_or_empty(gamma);
    r.dbeta = grad_or_empty(beta);
    r.dalpha = grad_or_empty(alpha);
    r.dresidual = grad_or_empty(residual);
    return r;
}

const std::vector<Shape> kShapes = {{2, 3, 3, 5}, {3, 20, 4, 4}, {2, 17, 7, 9}, {1, 16, 33, 33}};

}  // namespace

TEST_CASE("batch_norm_act: forward and running statistics are the unfused chain's, bit for bit") {
    Rng rng(21);
    for (const Shape& shape : kShapes)
        for (bool with_residual : {false, true})
            for (Mode mode : {Mode::train_update, Mode::train_frozen, Mode::eval})
                for (int bits : {kFullPrecision, 2, 4, 8}) {
                    INFO("shape ", to_string(shape), " residual ", with_residual, " mode ", mode_name(mode), " bits ", bits);
                    const Case k(shape, with_residual, rng);
                    const Run fused = run_case(k, mode, bits, true, false);
                    const Run plain = run_case(k, mode, bits, false, false);
                    CHECK(same_bits(fused.y, plain.y));
                    CHECK(same_bits(fused.rmean, plain.rmean));
                    CHECK(same_bits(fused.rvar, plain.rvar));
                    CHECK(same_bits(fused.rmean, k.rmean) == (mode != Mode::train_update));
                }
}

TEST_CASE("batch_norm_act: gradients are the unfused chain's, fresh and accumulated") {
    Rng rng(22);
    int compared = 0;
    for (const Shape& shape : kShapes)
        for (bool with_residual : {false, true})
            for (Mode mode : {Mode::train_update, Mode::train_frozen, Mode::eval})
                for (int bits : {kFullPrecision, 2, 4, 8})
                    for (bool accumulate : {false, true}) {
                        INFO("shape ", to_string(shape), " residual ", with_residual, " mode ", mode_name(mode),
                             " bits ", bits, " accumulate ", accumulate);
                        const Case k(shape, with_residual, rng);
                        const Case poison(shape, true, rng);
                        const Case* p = accumulate ? &poison : nullptr;
                        const Run fused = run_case(k, mode, bits, true, true, p);
                        const Run plain = run_case(k, mode, bits, false, true, p);
                        CHECK(tape().size() == 0);
                        CHECK(same_bits(fused.y, plain.y));
                        const double tol = 1e-5;
                        CHECK(count_far(fused.dx, plain.dx, tol, "dx") == 0);
                        CHECK(count_far(fused.dgamma, plain.dgamma, tol, "dgamma") == 0);
                        CHECK(count_far(fused.dbeta, plain.dbeta, tol, "dbeta") == 0);
                        // At full precision (relu) alpha is not an input: no gradient, or the poison untouched.
                        CHECK(fused.dalpha.empty() == plain.dalpha.empty());
                        if (!plain.dalpha.empty()) CHECK(count_far(fused.dalpha, plain.dalpha, tol, "dalpha") == 0);
                        if (bits != kFullPrecision && !accumulate) CHECK(std::abs(fused.dalpha[0]) > 1e-3);
                        CHECK(fused.dresidual.empty() == plain.dresidual.empty());
                        if (with_residual) CHECK(count_far(fused.dresidual, plain.dresidual, tol, "dresidual") == 0);
                        ++compared;
                    }
    CHECK(compared == 4 * 2 * 3 * 4 * 2);
}

TEST_CASE("batch_norm_act: a residual that is x itself, and inputs that need no gradient") {
    Rng rng(23);
    const Case k({2, 5, 3, 5}, false, rng);
    for (int bits : {kFullPrecision, 2}) {
        INFO("bits ", bits);
        Tensor rm1 = k.rmean, rv1 = k.rvar, rm2 = k.rmean, rv2 = k.rvar;
        Var x1 = Var::parameter(k.x), x2 = Var::parameter(k.x);
        Var g(k.gamma), b(k.beta), a(k.alpha);  // constants: only x learns
        Var fused = batch_norm_act(x1, g, b, rm1, rv1, {}, a, bits, &x1);
        backward(fused, k.dy);
        Var h = add(batch_norm2d(x2, g, b, rm2, rv2, {}), x2);
        Var plain = bits == kFullPrecision ? relu(h) : quant::pact_quantize(h, a, bits);
        backward(plain, k.dy);
        CHECK(same_bits(fused.value(), plain.value()));
        CHECK(count_far(x1.grad(), x2.grad(), 1e-5, "dx") == 0);
        CHECK_FALSE(g.has_grad());
        CHECK_FALSE(a.has_grad());
    }
    // Eval mode with only x learning: dx needs none of the sums.
    Tensor rm1 = k.rmean, rv1 = k.rvar, rm2 = k.rmean, rv2 = k.rvar;
    Var x1 = Var::parameter(k.x), x2 = Var::parameter(k.x);
    BatchNormOptions eval;
    eval.training = false;
    Var fused = batch_norm_act(x1, Var(k.gamma), Var(k.beta), rm1, rv1, eval, Var(k.alpha), 4);
    backward(fused, k.dy);
    Var plain = quant::pact_quantize(batch_norm2d(x2, Var(k.gamma), Var(k.beta), rm2, rv2, eval), Var(k.alpha), 4);
    backward(plain, k.dy);
    CHECK(count_far(x1.grad(), x2.grad(), 1e-6, "eval dx") == 0);
    // No-grad: nothing recorded, the statistics still follow the options.
    NoGradGuard no_grad;
    Var y = batch_norm_act(Var::parameter(k.x), Var(k.gamma), Var(k.beta), rm1, rv1, {}, Var(k.alpha), 2);
    CHECK_FALSE(y.requires_grad());
    CHECK(tape().size() == 0);
    CHECK_FALSE(same_bits(rm1, k.rmean));
}

TEST_CASE("batch_norm_act: errors name the op") {
    Tensor rm = Tensor::zeros({3}), rv = Tensor::full({3}, 1.0f);
    Var x(Tensor::zeros({2, 3, 2, 2})), g(Tensor::full({3}, 1.0f)), b(Tensor::zeros({3}));
    Var alpha(Tensor::of({1}, {1.0f}));
    CHECK_THROWS_WITH_AS(batch_norm_act(x, Var(Tensor::zeros({4})), b, rm, rv, {}, alpha, 2),
                         doctest::Contains("batch_norm_act: gamma vs [C] of x"), Error);
    CHECK_THROWS_WITH_AS(batch_norm_act(x, g, b, rm, rv, {}, alpha, 9), doctest::Contains("got 9"), Error);
    CHECK_THROWS_WITH_AS(batch_norm_act(x, g, b, rm, rv, {}, Var(Tensor::of({1}, {0.0f})), 2),
                         "batch_norm_act: alpha must be finite and > 0, got 0", Error);
    Var wrong(Tensor::zeros({2, 3, 2, 3}));
    CHECK_THROWS_WITH_AS(batch_norm_act(x, g, b, rm, rv, {}, alpha, 2, &wrong),
                         doctest::Contains("batch_norm_act: residual vs x"), Error);
    // Full precision (relu) does not read alpha.
    CHECK_NOTHROW(batch_norm_act(x, g, b, rm, rv, {}, Var(), kFullPrecision));
}

namespace {
// Moves elements of x until every z = bn(x) [+ r] is at least `margin` away from each kink (0,
// and alpha when `alpha` > 0): finite differences are then taken where the function is smooth.
void keep_away_from_kinks(Tensor& x, const Tensor* residual, float alpha, float margin) {
    const int64_t C = x.dim(1);
    for (int round = 0; round < 50; ++round) {
        NoGradGuard no_grad;
        Tensor rm = Tensor::zeros({C}), rv = Tensor::full({C}, 1.0f);
        Var h = batch_norm2d(Var(x), Var(Tensor::full({C}, 1.0f)), Var(Tensor::zeros({C})), rm, rv, {});
        Tensor z = h.value();
        if (residual) z.vec() += residual->vec();
        int moved = 0;
        for (int64_t i = 0; i < x.numel(); ++i)
            if (std::abs(z[i]) < margin || (alpha > 0.0f && std::abs(z[i] - alpha) < margin)) {
                x[i] += 3.0f * margin;
                ++moved;
            }
        if (moved == 0) return;
    }
    FAIL("keep_away_from_kinks: did not converge");
}
}  // namespace

TEST_CASE("batch_norm_act: finite differences, relu at full precision and PACT's straight-through gradient") {
    // gamma = 1, beta = 0 at the start, so z's kinks are placed by x alone (keep_away_from_kinks);
    // steps of 1e-3 then move no z across a kink.
    testing::GradCheckOptions opts;
    opts.rtol = 2e-3;
    opts.atol = 2e-4;
    opts.steps = {1e-3f, 3e-4f, 3e-3f};
    BatchNormOptions frozen;  // batch statistics, running statistics untouched by the many calls
    frozen.update_running_stats = false;
    const float a = 1.1f;
    for (bool with_residual : {false, true}) {
        INFO("residual ", with_residual);
        Rng rng(24);
        const Shape shape{2, 3, 3, 5};
        Tensor x = randn(shape, rng), r = randn(shape, rng, 0.5f);
        keep_away_from_kinks(x, with_residual ? &r : nullptr, a, 0.05f);
        std::vector<Var> inputs = {Var::parameter(x), Var::parameter(Tensor::full({3}, 1.0f)),
                                   Var::parameter(Tensor::zeros({3})), Var::parameter(Tensor::of({1}, {a})),
                                   Var::parameter(r)};
        auto relu_fused = [with_residual, frozen](std::vector<Var>& v) {
            Tensor rm = Tensor::zeros({3}), rv = Tensor::full({3}, 1.0f);
            return batch_norm_act(v[0], v[1], v[2], rm, rv, frozen, v[3], kFullPrecision,
                                  with_residual ? &v[4] : nullptr);
        };
        std::vector<Var> relu_inputs = inputs;
        relu_inputs[3] = Var(Tensor::of({1}, {a}));  // relu has no alpha
        if (!with_residual) relu_inputs[4] = Var(r);
        testing::check_gradients("batch_norm_act relu", relu_fused, relu_inputs, opts);

        // PACT at 2 bits is piecewise constant; its declared gradient is the exact gradient of the
        // clip it rounds, clip(z, 0, alpha) (quant/act_quant.hpp). So: analytic gradients of the
        // fused op at 2 bits, finite differences of the clip (computed under no-grad).
        auto pact_fused = [with_residual, frozen](std::vector<Var>& v) {
            Tensor rm = Tensor::zeros({3}), rv = Tensor::full({3}, 1.0f);
            if (grad_enabled())
                return batch_norm_act(v[0], v[1], v[2], rm, rv, frozen, v[3], 2, with_residual ? &v[4] : nullptr);
            Var h = batch_norm2d(v[0], v[1], v[2], rm, rv, frozen);
            if (with_residual) h = add(h, v[4]);
            return quant::pact_quantize(h, v[3], kFullPrecision);  // clip(z, 0, alpha)
        };
        std::vector<Var> pact_inputs = inputs;
        if (!with_residual) pact_inputs[4] = Var(r);
        testing::check_gradients("batch_norm_act pact 2 bits", pact_fused, pact_inputs, opts);
    }
}

TEST_CASE("conv2d_bn_act_inference: batch_norm_act of conv2d in eval mode, bit for bit") {
    struct Geometry {
        int64_t n, c, h, w, k;
        int stride;
    };
    // K = 7 and 16 leave channel-tile remainders; 40 pixels (8 lanes only) a pixel-tile remainder;
    // stride 2 reads the stride-2 tap copies.
    const std::vector<Geometry> geometries = {{2, 5, 8, 8, 7, 1}, {2, 4, 16, 16, 16, 2}, {1, 3, 5, 8, 9, 1}};
    Rng rng(71);
    for (const Geometry& t : geometries)
        for (int bits : {kFullPrecision, 2})
            for (bool with_residual : {false, true})
                for (bool with_bias : {false, true}) {
                    INFO("x [", t.n, ", ", t.c, ", ", t.h, ", ", t.w, "], K ", t.k, " stride ", t.stride, ", bits ", bits,
                         with_residual ? ", residual" : "", with_bias ? ", bias" : "");
                    const Conv2dOptions conv{t.stride, 1};
                    const Var x(randn({t.n, t.c, t.h, t.w}, rng));
                    const Var w(randn({t.k, t.c, 3, 3}, rng, 0.3f));
                    const Var b = with_bias ? Var(randn({t.k}, rng)) : Var();
                    const int64_t ho = (t.h - 1) / t.stride + 1, wo = (t.w - 1) / t.stride + 1;
                    Case bn({t.n, t.k, ho, wo}, with_residual, rng);
                    const Var gamma(bn.gamma), beta(bn.beta), alpha(bn.alpha), residual(bn.residual);
                    const BatchNormOptions eval = options_for(Mode::eval);
                    const bool direct = ho * wo % kernels::kLanes == 0;
                    const Var* r = with_residual ? &residual : nullptr;
                    REQUIRE(conv2d_bn_act_applies(x, w, b, conv, gamma, beta, eval, alpha, r) == direct);
                    if (!direct) continue;
                    const Tensor want = batch_norm_act(conv2d(x, w, b, conv), gamma, beta, bn.rmean, bn.rvar, eval,
                                                       alpha, bits, r)
                                            .value();
                    const Var got = conv2d_bn_act_inference(x, w, b, conv, gamma, beta, bn.rmean, bn.rvar, eval, alpha,
                                                            bits, r);
                    CHECK_FALSE(got.requires_grad());
                    CHECK(same_bits(got.value(), want));
                }
}

TEST_CASE("conv2d_bn_act_inference: only for inference, and errors name the op") {
    Rng rng(72);
    const Var x(randn({1, 2, 8, 8}, rng));
    const Var w(randn({4, 2, 3, 3}, rng));
    Case bn({1, 4, 8, 8}, false, rng);
    const Var gamma(bn.gamma), beta(bn.beta), alpha(bn.alpha);
    const BatchNormOptions eval = options_for(Mode::eval), train = options_for(Mode::train_frozen);
    CHECK(conv2d_bn_act_applies(x, w, Var(), {1, 1}, gamma, beta, eval, alpha, nullptr));
    CHECK_FALSE(conv2d_bn_act_applies(x, w, Var(), {1, 1}, gamma, beta, train, alpha, nullptr));  // batch statistics
    const Var trainable_w = Var::parameter(w.value());
    CHECK_FALSE(conv2d_bn_act_applies(x, trainable_w, Var(), {1, 1}, gamma, beta, eval, alpha, nullptr));
    {
        NoGradGuard no_grad;  // how evaluation runs: nothing requires grad any more
        CHECK(conv2d_bn_act_applies(x, trainable_w, Var(), {1, 1}, gamma, beta, eval, alpha, nullptr));
    }
    auto message_of = [&](auto&& call) {
        try {
            call();
        } catch (const std::exception& e) {
            return std::string(e.what());
        }
        return std::string("no error");
    };
    const std::string training_error = message_of(
        [&] { conv2d_bn_act_inference(x, w, Var(), {1, 1}, gamma, beta, bn.rmean, bn.rvar, train, alpha, 2); });
    CHECK(training_error.find("conv2d_bn_act_inference") != std::string::npos);
    CHECK(training_error.find("eval-mode batch norm") != std::string::npos);
    const Tensor short_mean = Tensor::zeros({3});
    const std::string shape_error = message_of(
        [&] { conv2d_bn_act_inference(x, w, Var(), {1, 1}, gamma, beta, short_mean, bn.rvar, eval, alpha, 2); });
    CHECK(shape_error.find("running_mean") != std::string::npos);
    const std::string bits_error = message_of(
        [&] { conv2d_bn_act_inference(x, w, Var(), {1, 1}, gamma, beta, bn.rmean, bn.rvar, eval, alpha, 9); });
    CHECK(bits_error.find("conv2d_bn_act_inference") != std::string::npos);
}

namespace {
struct ModelRun {
    std::vector<float> logits;
    std::vector<std::pair<std::string, Tensor>> grads, buffers;
};

template <class Model>
ModelRun train_step(Model& net, const Tensor& x, const std::vector<int>& labels, bool fused) {
    std::unique_ptr<nn::UnfusedBnActGuard> unfused;
    if (!fused) unfused = std::make_unique<nn::UnfusedBnActGuard>();
    for (auto& [name, p] : net.named_parameters()) p.drop_grad();
    Var logits = net.forward(Var(x));
    Var loss = cross_entropy(logits, labels);
    backward(loss);
    ModelRun r;
    r.logits.assign(logits.value().data(), logits.value().data() + logits.numel());
    for (auto& [name, p] : net.named_parameters()) r.grads.push_back({name, p.has_grad() ? p.grad() : Tensor()});
    for (auto& [name, t] : net.state()) r.buffers.push_back({name, *t});
    return r;
}

void check_same_run(const ModelRun& fused, const ModelRun& plain) {
    CHECK(fused.logits == plain.logits);
    REQUIRE(fused.grads.size() == plain.grads.size());
    for (size_t i = 0; i < fused.grads.size(); ++i) {
        INFO(fused.grads[i].first);
        CHECK(fused.grads[i].second.empty() == plain.grads[i].second.empty());
        if (!plain.grads[i].second.empty())
            CHECK(count_far(fused.grads[i].second, plain.grads[i].second, 1e-5, fused.grads[i].first) == 0);
    }
    REQUIRE(fused.buffers.size() == plain.buffers.size());
    for (size_t i = 0; i < fused.buffers.size(); ++i) {
        INFO(fused.buffers[i].first);
        CHECK(same_bits(fused.buffers[i].second, plain.buffers[i].second));
    }
}
}  // namespace

TEST_CASE("ResNet-20 through bn_act: the fused and unfused paths give the same logits, gradients and stats") {
    for (nn::Shortcut shortcut : {nn::Shortcut::A, nn::Shortcut::B})
        for (int bits : {2, kFullPrecision}) {
            INFO("shortcut ", nn::shortcut_name(shortcut), " bits ", bits);
            Rng data_rng(31);
            Tensor x = randn({4, 3, 32, 32}, data_rng);
            const std::vector<int> labels = {1, 3, 5, 7};
            auto make = [&] {
                Rng rng(30);
                auto net = std::make_unique<nn::ResNetCifar>(20, 10, shortcut, rng);
                if (bits != kFullPrecision) {
                    nn::configure_quantization(*net, {bits, bits});
                    nn::calibrate_act_alphas(*net, x);  // a pending calibration: the unfused path runs
                }
                return net;
            };
            auto fused_net = make(), plain_net = make();
            check_same_run(train_step(*fused_net, x, labels, true), train_step(*plain_net, x, labels, false));
            // A second step on the updated running statistics, then eval mode and SPEQ's teacher pass
            // (frozen statistics, bits drawn per layer, no grad).
            check_same_run(train_step(*fused_net, x, labels, true), train_step(*plain_net, x, labels, false));
            auto teacher = [&](nn::ResNetCifar& net, bool fused) {
                std::unique_ptr<nn::UnfusedBnActGuard> unfused;
                if (!fused) unfused = std::make_unique<nn::UnfusedBnActGuard>();
                NoGradGuard no_grad;
                nn::FreezeRunningStats frozen(net);
                nn::ActBitsGuard keep(net);
                std::vector<int> drawn = nn::act_bits(net);
                for (size_t i = 0; i < drawn.size(); ++i) drawn[i] = bits == kFullPrecision ? bits : 2 + int(i % 3) * 2;
                nn::set_act_bits_per_layer(net, drawn);
                Tensor t = net.forward(Var(x)).value();
                net.eval();
                Tensor e = net.forward(Var(x)).value();
                net.train();
                return std::make_pair(t, e);
            };
            const auto [t_fused, e_fused] = teacher(*fused_net, true);
            const auto [t_plain, e_plain] = teacher(*plain_net, false);
            CHECK(same_bits(t_fused, t_plain));
            CHECK(same_bits(e_fused, e_plain));
            CHECK(same_bits(fused_net->bn1().running_mean(), plain_net->bn1().running_mean()));
        }
}

TEST_CASE("SmallCnn through bn_act: the fused and unfused paths agree") {
    Rng data_rng(41);
    Tensor x = randn({3, 1, 12, 12}, data_rng);
    auto make = [] {
        Rng rng(40);
        auto net = std::make_unique<nn::SmallCnn>(1, 10, rng);
        nn::set_act_bits(*net, 4);
        return net;
    };
    auto fused_net = make(), plain_net = make();
    check_same_run(train_step(*fused_net, x, {0, 4, 9}, true), train_step(*plain_net, x, {0, 4, 9}, false));
}
