// End to end: a tiny network (conv, batch norm, ReLU, pool, linear) learns a synthetic task, and
// training gives bit-identical parameters with 1 and 2 threads.
#include <doctest/doctest.h>

#include <cmath>
#include <memory>

#include "speq/speq.hpp"

using namespace speq;

namespace {

// Four classes of 12x12 one-channel images: horizontal bars, vertical bars, diagonal bars and
// a checkerboard, each at a random phase, plus Gaussian noise. A 3x3 conv can tell them apart;
// global pooling makes the answer position-independent.
struct SyntheticBatch {
    Tensor images;
    std::vector<int> labels;
};

SyntheticBatch make_batch(int n, Rng& rng) {
    const int S = 12;
    SyntheticBatch b{Tensor({n, 1, S, S}), std::vector<int>(n)};
    for (int i = 0; i < n; ++i) {
        const int label = static_cast<int>(rng.below(4));
        const int phase = static_cast<int>(rng.below(2));
        b.labels[i] = label;
        for (int y = 0; y < S; ++y)
            for (int x = 0; x < S; ++x) {
                int on = 0;
                switch (label) {
                    case 0: on = (y + phase) % 2; break;
                    case 1: on = (x + phase) % 2; break;
                    case 2: on = ((x + y + phase) % 3) == 0; break;
                    default: on = ((x / 2 + y / 2 + phase) % 2); break;
                }
                b.images[(i * S + y) * S + x] = static_cast<float>(on) + 0.3f * rng.normal();
            }
    }
    return b;
}

struct TinyNet {
    nn::Sequential net;
    explicit TinyNet(uint64_t seed) {
        Rng rng(seed);
        net.emplace_back<nn::Conv2d>(1, 8, 3, 1, 1, false, rng);
        net.emplace_back<nn::BatchNorm2d>(8);
        net.emplace_back<nn::ReLU>();
        net.emplace_back<nn::GlobalAvgPool>();
        net.emplace_back<nn::Linear>(8, 4, true, rng);
    }
};

double accuracy(const Tensor& logits, const std::vector<int>& labels) {
    const int64_t n = logits.dim(0), k = logits.dim(1);
    int correct = 0;
    for (int64_t i = 0; i < n; ++i) {
        int64_t best = 0;
        for (int64_t j = 1; j < k; ++j)
            if (logits[i * k + j] > logits[i * k + best]) best = j;
        correct += best == labels[i];
    }
    return static_cast<double>(correct) / n;
}

// Trains for `steps` SGD steps on fresh batches; returns the first and the last training loss.
std::pair<float, float> train_tiny(TinyNet& model, int steps, int batch, uint64_t data_seed) {
    optim::SGD sgd(model.net.named_parameters(), {0.1f, 0.9f, 0.0f, true, 1e-4f},
                   nn::weight_decay_filter(model.net));
    Rng data_rng(data_seed);
    float first = 0.0f, last = 0.0f;
    for (int step = 0; step < steps; ++step) {
        SyntheticBatch b = make_batch(batch, data_rng);
        sgd.zero_grad();
        Var loss = cross_entropy(model.net(Var(std::move(b.images))), b.labels);
        backward(loss);
        sgd.step();
        (step == 0 ? first : last) = loss.value()[0];
    }
    return {first, last};
}

}  // namespace

TEST_CASE("training: a tiny conv-BN-ReLU-pool-linear network learns a synthetic task") {
    TinyNet model(42);
    auto [first_loss, last_loss] = train_tiny(model, 60, 32, 7);
    MESSAGE("training loss: first step ", first_loss, ", last step ", last_loss);
    CHECK(first_loss > 1.2f);  // about log(4) = 1.39 at the start
    CHECK(last_loss < 0.3f * first_loss);

    // Held-out accuracy in eval mode (running batch-norm statistics), chance is 25%.
    Rng test_rng(12345);
    SyntheticBatch test = make_batch(400, test_rng);
    model.net.eval();
    NoGradGuard no_grad;
    double acc = accuracy(model.net(Var(std::move(test.images))).value(), test.labels);
    MESSAGE("held-out accuracy: ", acc);
    CHECK(acc > 0.9);
}

TEST_CASE("training: 1 and 2 threads give bit-identical parameters") {
    const int saved_threads = num_threads();
    auto run = [](int threads) {
        set_num_threads(threads);
        TinyNet model(3);
        train_tiny(model, 5, 64, 11);  // batch 64: conv groups, batch-norm channels and maps all split
        std::vector<Tensor> state;
        for (auto& [name, tensor] : model.net.state()) state.push_back(*tensor);
        return state;
    };
    std::vector<Tensor> one = run(1), two = run(2);
    set_num_threads(saved_threads);
    REQUIRE(one.size() == two.size());
    for (size_t i = 0; i < one.size(); ++i) {
        REQUIRE(one[i].shape() == two[i].shape());
        CHECK(std::memcmp(one[i].data(), two[i].data(), sizeof(float) * one[i].numel()) == 0);
    }
}
