// quickstart: the whole speq API in one page. Trains a small full-precision CNN on Fashion-MNIST
// and prints its test accuracy after every epoch.
//
//   quickstart [--data DIR] [--epochs N] [--batch N] [--lr X] [--threads N] [--seed N]
//
// DIR holds the four IDX files (plain or .gz); Debian's dataset-fashion-mnist package puts them
// in /usr/share/datasets/fashion-mnist, the default.
#include <speq/speq.hpp>
#include <speq/train/evaluate.hpp>
#include <speq/train/progress.hpp>

#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <string>

using namespace speq;

struct Args {
    std::string data = "/usr/share/datasets/fashion-mnist";
    int epochs = 2, batch = 128, threads = 0;
    float lr = 0.05f;
    uint64_t seed = 0;
};

static Args parse_args(int argc, char** argv) {
    Args a;
    for (int i = 1; i < argc; ++i) {
        std::string key = argv[i];
        SPEQ_CHECK(i + 1 < argc, "quickstart: option ", key, " needs a value");
        std::string value = argv[++i];
        if (key == "--data") a.data = value;
        else if (key == "--epochs") a.epochs = std::stoi(value);
        else if (key == "--batch") a.batch = std::stoi(value);
        else if (key == "--lr") a.lr = std::stof(value);
        else if (key == "--threads") a.threads = std::stoi(value);
        else if (key == "--seed") a.seed = std::stoull(value);
        else fail("quickstart: unknown option ", key, " (see the comment at the top of quickstart.cpp)");
    }
    SPEQ_CHECK(a.epochs >= 1 && a.batch >= 1, "quickstart: --epochs and --batch must be >= 1");
    return a;
}

// conv-BN-ReLU three times (28x28 -> 14x14 -> 7x7), global average pool, linear classifier.
static void build_model(nn::Sequential& net, Rng& rng) {
    auto block = [&](int in, int out, int stride) {
        net.emplace_back<nn::Conv2d>(in, out, 3, stride, 1, false, rng);
        net.emplace_back<nn::BatchNorm2d>(out);
        net.emplace_back<nn::ReLU>();
    };
    block(1, 32, 1);
    block(32, 64, 2);
    block(64, 128, 2);
    net.emplace_back<nn::GlobalAvgPool>();
    net.emplace_back<nn::Linear>(128, 10, true, rng);
}

static int run(const Args& args) {
    if (args.threads > 0) set_num_threads(args.threads);
    io::Dataset train_set = io::load_fashion_mnist(args.data, true);
    io::Dataset test_set = io::load_fashion_mnist(args.data, false);
    const io::Normalization norm = io::fashion_mnist_normalization();
    std::printf("Fashion-MNIST: %lld training and %lld test images; %d threads\n",
                static_cast<long long>(train_set.size()), static_cast<long long>(test_set.size()), num_threads());

    Rng rng(args.seed);
    nn::Sequential model;
    build_model(model, rng);
    std::printf("model: %lld parameters\n", static_cast<long long>(model.num_parameters()));

    io::LoaderOptions loader_options;
    loader_options.batch_size = args.batch;
    loader_options.seed = args.seed;
    loader_options.normalization = norm;
    io::BatchLoader loader(train_set, loader_options);

    const int64_t steps_per_epoch = loader.batches_per_epoch();
    const int64_t total_steps = steps_per_epoch * args.epochs;
    optim::SGD sgd(model.named_parameters(), {args.lr, 0.9f, 0.0f, true, 5e-4f}, nn::weight_decay_filter(model));
    optim::Schedule schedule = optim::one_cycle(args.lr, total_steps);

    train::Progress progress(total_steps, 50, stdout);
    int64_t step = 0;
    for (int64_t epoch = 0; epoch < args.epochs; ++epoch) {
        model.train();
        loader.start_epoch(epoch);
        io::Batch batch;
        double loss_sum = 0.0;
        int64_t correct = 0, seen = 0;
        while (loader.next(batch)) {
            sgd.set_lr(schedule.lr_at(step));
            sgd.zero_grad();
            Var logits = model(Var(std::move(batch.images)));
            Var loss = cross_entropy(logits, batch.labels);
            backward(loss);
            sgd.step();

            ++step;
            loss_sum += loss.value()[0] * batch.size();
            correct += train::count_correct(logits.value(), batch.labels);
            seen += batch.size();
            progress.update(epoch, args.epochs, batch.index, steps_per_epoch, step, step, batch.size(),
                            loss.value()[0], static_cast<float>(correct) / seen);
        }
        train::EvalResult test = train::evaluate(model, test_set, norm);
        char line[200];
        std::snprintf(line, sizeof line, "epoch %lld: train loss %.4f, train acc %.2f%%, test acc %.2f%%, %.0f img/s",
                      static_cast<long long>(epoch + 1), loss_sum / seen, 100.0 * correct / seen,
                      100.0 * test.top1, progress.images_per_second());
        progress.message(line);
    }
    return 0;
}

int main(int argc, char** argv) {
    try {
        return run(parse_args(argc, argv));
    } catch (const std::exception& e) {
        std::fprintf(stderr, "quickstart: error: %s\n", e.what());
        return 1;
    }
}
