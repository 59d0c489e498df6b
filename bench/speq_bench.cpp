// speq_bench: how fast speq trains and runs ResNet-20 on this CPU, as one JSON object on stdout
// (progress goes to stderr). Measurement only: nothing here asserts a speed.
//
//   speq_bench [--threads N] [--batch N] [--all-batches] [--quick] [--only REGEX] [--shortcut A|B] [--unfused]
//              [--float-convs]
//
// What it measures (bench/README.md explains every number):
//   machine  Eigen's SGEMM GFLOP/s on 1024^3 (1 thread, and the threads used: the "peak" the convs
//            are compared with) and at each conv's own per-image GEMM shape;
//   ops      forward and backward of every op at ResNet-20's shapes (median ms, GFLOP/s for the
//            convs and their fraction of the GEMM peak, GB/s for the memory-bound ops);
//   steps    whole training / inference steps in images/s and the peak resident memory of each.
// Random data with fixed seeds; ResNet-20; W2A2 = configure_quantization's policy (first and
// last layer 8 bits), weights min_l2 per output channel, PACT activations.
#include <speq/speq.hpp>

#include <nlohmann/json.hpp>

#include <malloc.h>
#include <sys/resource.h>

#include <algorithm>
#include <chrono>
#include <cstdio>
#include <fstream>
#include <functional>
#include <iostream>
#include <memory>
#include <regex>
#include <sstream>
#include <string>
#include <vector>

namespace {

using namespace speq;
using Clock = std::chrono::steady_clock;
using json = nlohmann::json;

struct Options {
    int threads = 0;  // 0: speq's default (OpenMP's, which honours OMP_NUM_THREADS)
    int batch = 128;
    bool all_batches = false;
    bool quick = false;
    std::string only;  // regex over the names of the measurements; empty: everything
    nn::Shortcut shortcut = nn::Shortcut::A;
    bool unfused = false;  // the model's steps without the fused ops (nn::UnfusedBnActGuard)
    bool float_convs = false;  // quantized convs in float, not integers (FloatConvGuard)
};

void usage_and_exit(int code) {
    std::fprintf(code ? stderr : stdout,
                 "usage: speq_bench [--threads N] [--batch N] [--all-batches] [--quick] [--only REGEX] "
                 "[--shortcut A|B] [--unfused] [--float-convs]\n"
                 "  --threads N     threads for speq (default: OpenMP's default)\n"
                 "  --batch N       batch size of the per-op shapes and the steps (default 128)\n"
                 "  --all-batches   steps at batch 32, 128 and 256 (per-op shapes stay at --batch)\n"
                 "  --quick         fewer repetitions (a rough number in a fraction of the time)\n"
                 "  --only REGEX    run only the measurements whose name matches (e.g. 'speq_train',\n"
                 "                  'conv_', 'gemm'); names are the JSON keys\n"
                 "  --shortcut A|B  ResNet-20 shortcut option (default A; B adds the 1x1 convs)\n"
                 "  --unfused       the steps without the fused ops (conv/batch norm/activation run one by\n"
                 "                  one, as nn::UnfusedBnActGuard does): what the fusion buys\n"
                 "  --float-convs   quantized convs' forward in float, not in integers (FloatConvGuard):\n"
                 "                  what the integer path buys\n");
    std::exit(code);
}

Options parse(int argc, char** argv) {
    Options o;
    for (int i = 1; i < argc; ++i) {
        const std::string a = argv[i];
        auto value = [&]() -> std::string {
            if (i + 1 >= argc) {
                std::fprintf(stderr, "speq_bench: %s needs a value\n", a.c_str());
                usage_and_exit(2);
            }
            return argv[++i];
        };
        try {
            if (a == "--threads") o.threads = std::stoi(value());
            else if (a == "--batch") o.batch = std::stoi(value());
            else if (a == "--all-batches") o.all_batches = true;
            else if (a == "--quick") o.quick = true;
            else if (a == "--only") o.only = value();
            else if (a == "--shortcut") o.shortcut = nn::parse_shortcut(value());
            else if (a == "--unfused") o.unfused = true;
            else if (a == "--float-convs") o.float_convs = true;
            else if (a == "--help" || a == "-h") usage_and_exit(0);
            else {
                std::fprintf(stderr, "speq_bench: unknown argument '%s'\n", a.c_str());
                usage_and_exit(2);
            }
        } catch (const std::invalid_argument&) {
            std::fprintf(stderr, "speq_bench: %s needs a number\n", a.c_str());
            usage_and_exit(2);
        }
    }
    if (o.threads < 0 || o.batch < 2) {
        std::fprintf(stderr, "speq_bench: need --threads >= 1 and --batch >= 2\n");
        usage_and_exit(2);
    }
    return o;
}

// ---- timing and memory ----

double seconds_since(Clock::time_point t0) { return std::chrono::duration<double>(Clock::now() - t0).count(); }

double median(std::vector<double> v) {
    std::sort(v.begin(), v.end());
    const size_t n = v.size();
    return n == 0 ? 0.0 : n % 2 ? v[n / 2] : 0.5 * (v[n / 2 - 1] + v[n / 2]);
}

// `run()` does one repetition and returns the seconds of its timed part; the first `warmup`
// repetitions are dropped. Returns the timed seconds of the others.
std::vector<double> repeat(int warmup, int reps, const std::function<double()>& run) {
    for (int i = 0; i < warmup; ++i) run();
    std::vector<double> t;
    for (int i = 0; i < reps; ++i) t.push_back(run());
    return t;
}

std::string read_file(const char* path) {
    std::ifstream in(path);
    std::stringstream s;
    s << in.rdbuf();
    return s.str();
}

std::vector<double> load_average() {
    std::istringstream in(read_file("/proc/loadavg"));
    double a = 0, b = 0, c = 0;
    in >> a >> b >> c;
    return {a, b, c};
}

double rss_mib() {  // current resident set, from /proc/self/status
    std::istringstream in(read_file("/proc/self/status"));
    std::string line;
    while (std::getline(in, line))
        if (line.rfind("VmRSS:", 0) == 0) return std::stod(line.substr(6)) / 1024.0;
    return 0.0;
}

double peak_rss_mib() {  // ru_maxrss: KiB on Linux
    rusage u{};
    getrusage(RUSAGE_SELF, &u);
    return static_cast<double>(u.ru_maxrss) / 1024.0;
}

// Gives freed heap back to the system and restarts the peak-RSS counter (Linux >= 4.0:
// "5" in clear_refs resets VmHWM, which getrusage reports). Returns false if the counter could
// not be reset (then peaks are since the start of the process).
bool reset_peak_rss() {
    malloc_trim(0);
    std::ofstream f("/proc/self/clear_refs");
    f << "5";
    f.flush();
    return static_cast<bool>(f);
}

void progress(const std::string& what) { std::fprintf(stderr, "[speq_bench] %s\n", what.c_str()); }

std::string cpu_model() {
    std::istringstream in(read_file("/proc/cpuinfo"));
    std::string line;
    while (std::getline(in, line))
        if (line.rfind("model name", 0) == 0) return line.substr(line.find(':') + 2);
    return "unknown";
}

// ---- what is selected ----

struct Selector {
    std::regex re;
    bool all;
    explicit Selector(const std::string& only) : re(only.empty() ? "." : only), all(only.empty()) {}
    bool operator()(const std::string& name) const { return all || std::regex_search(name, re); }
};

Tensor random_tensor(Shape shape, Rng& rng, float stddev = 1.0f) { return randn(std::move(shape), rng, stddev); }

// ---- the machine: Eigen SGEMM ----

// GFLOP/s of C[M,N] = A[M,K] B[K,N] through speq's GEMM wrapper (Eigen, single-threaded per call);
// with threads > 1 the rows of C are cut into 8 fixed pieces run by parallel_split, the way speq's
// ops use GEMM.
double gemm_gflops(int64_t M, int64_t N, int64_t K, bool parallel, int warmup, int reps) {
    Rng rng(7);
    Tensor a = random_tensor({M, K}, rng), b = random_tensor({K, N}, rng), c({M, N});
    const double flops = 2.0 * M * N * K;
    auto t = repeat(warmup, reps, [&] {
        auto t0 = Clock::now();
        if (parallel) {
            parallel_split(M, 8, [&](int64_t, int64_t first, int64_t last) {
                kernels::gemm_nn(last - first, N, K, a.data() + first * K, b.data(), c.data() + first * N, false);
            });
        } else {
            kernels::gemm_nn(M, N, K, a.data(), b.data(), c.data(), false);
        }
        return seconds_since(t0);
    });
    return flops / median(t) / 1e9;
}

// ---- per-op measurements ----

struct ConvShape {
    std::string name;
    int64_t C, K, H, k, stride, pad;
    bool input_grad;  // false for the first conv: the image needs no gradient
};

std::vector<ConvShape> conv_shapes(nn::Shortcut shortcut) {
    std::vector<ConvShape> s = {
        {"conv_3_16_32x32", 3, 16, 32, 3, 1, 1, false},     {"conv_16_16_32x32", 16, 16, 32, 3, 1, 1, true},
        {"conv_16_32_32x32_s2", 16, 32, 32, 3, 2, 1, true}, {"conv_32_32_16x16", 32, 32, 16, 3, 1, 1, true},
        {"conv_32_64_16x16_s2", 32, 64, 16, 3, 2, 1, true}, {"conv_64_64_8x8", 64, 64, 8, 3, 1, 1, true},
    };
    if (shortcut == nn::Shortcut::B) {
        s.push_back({"conv1x1_16_32_32x32_s2", 16, 32, 32, 1, 2, 0, true});
        s.push_back({"conv1x1_32_64_16x16_s2", 32, 64, 16, 1, 2, 0, true});
    }
    return s;
}

// One op case: `forward` runs the op on inputs it holds (recording on the tape), `activations`
// are the inputs whose gradient is a fresh tensor every step in real training (dropped before
// each backward repetition, so their allocation is counted as in a step).
struct OpCase {
    std::string name, shape;
    std::function<Var()> forward;
    std::vector<Var> activations;
    double flops_fwd = 0, flops_bwd = 0;  // 0: not a FLOP-bound op
    double bytes_fwd = 0, bytes_bwd = 0;  // the minimum memory traffic (for GB/s); 0: not reported
    bool has_backward = true;
};

json measure_op(const OpCase& op, int warmup, int reps, double peak_gflops) {
    // Forward (recording, as in training); the tape and output are dropped outside the timing.
    auto fwd = repeat(warmup, reps, [&] {
        auto t0 = Clock::now();
        Var out = op.forward();
        const double s = seconds_since(t0);
        tape().clear();
        return s;
    });
    json j = {{"shape", op.shape}, {"fwd_ms", median(fwd) * 1e3}, {"fwd_ms_min", *std::min_element(fwd.begin(), fwd.end()) * 1e3}};
    std::vector<double> bwd;
    if (op.has_backward) {
        Rng rng(11);
        Var probe = op.forward();
        tape().clear();
        const Tensor seed = random_tensor(probe.shape(), rng);
        bwd = repeat(warmup, reps, [&] {
            for (Var a : op.activations) a.drop_grad();
            Var out = op.forward();
            Tensor& g = out.grad_for_accumulate();  // the consumer's gradient: set up untimed
            std::copy(seed.data(), seed.data() + seed.numel(), g.data());
            auto t0 = Clock::now();
            tape().run_backward();  // just this op's backward step
            return seconds_since(t0);
        });
        j["bwd_ms"] = median(bwd) * 1e3;
        j["bwd_ms_min"] = *std::min_element(bwd.begin(), bwd.end()) * 1e3;
    }
    auto rate = [&](const char* key, double amount, const std::vector<double>& t, double unit) {
        if (amount > 0 && !t.empty()) j[key] = amount / median(t) / unit;
    };
    rate("fwd_gflops", op.flops_fwd, fwd, 1e9);
    rate("bwd_gflops", op.flops_bwd, bwd, 1e9);
    rate("fwd_gbytes_per_s", op.bytes_fwd, fwd, 1e9);
    rate("bwd_gbytes_per_s", op.bytes_bwd, bwd, 1e9);
    if (peak_gflops > 0) {
        if (j.contains("fwd_gflops")) j["fwd_peak_frac"] = j["fwd_gflops"].get<double>() / peak_gflops;
        if (j.contains("bwd_gflops")) j["bwd_peak_frac"] = j["bwd_gflops"].get<double>() / peak_gflops;
    }
    return j;
}

std::string shape_text(const Shape& s) { return to_string(s); }

std::vector<OpCase> op_cases(int64_t N, nn::Shortcut shortcut) {
    std::vector<OpCase> cases;
    Rng rng(1234);
    const double f = sizeof(float);

    for (const ConvShape& c : conv_shapes(shortcut)) {
        Var x(random_tensor({N, c.C, c.H, c.H}, rng), c.input_grad);
        Var w = Var::parameter(random_tensor({c.K, c.C, c.k, c.k}, rng, 0.1f));
        const int64_t Ho = (c.H + 2 * c.pad - c.k) / c.stride + 1;
        const double flops = 2.0 * N * c.K * c.C * c.k * c.k * Ho * Ho;
        OpCase op;
        op.name = c.name;
        op.shape = "x " + shape_text(x.shape()) + " w " + shape_text(w.shape()) + " stride " + std::to_string(c.stride);
        op.forward = [x, w, c] { return conv2d(x, w, Var(), Conv2dOptions{static_cast<int>(c.stride), static_cast<int>(c.pad)}); };
        if (c.input_grad) op.activations = {x};
        op.flops_fwd = flops;
        op.flops_bwd = c.input_grad ? 2 * flops : flops;  // dx and dW, or dW only
        cases.push_back(op);

        // The same conv on W2A2 operands, as the quantized steps run it: x on a 2-bit PACT grid,
        // the weight 2-bit per channel (min_l2, mid_rise). Its forward is the integer path where
        // the build has it (kernels/conv_int8.hpp), its backward the float one above.
        if (!c.input_grad) continue;  // the first conv's input is the image: never quantized
        auto quantized_leaf = [](const Var& q) {  // q's value and grid as a leaf that wants a gradient
            Var leaf(q.value(), true);
            leaf.set_grid(*q.grid());
            return leaf;
        };
        Var xq = quantized_leaf(quant::pact_quantize(Var(x.value()), Var(Tensor::full({1}, 2.0f)), 2));
        Var wq = quantized_leaf(quant::quantize_weight(
            Var(w.value()), {2, true, quant::ScaleMethod::min_l2, quant::Grid::mid_rise}));
        OpCase q = op;
        q.name = "conv_w2a2_" + c.name.substr(5);
        q.shape += " W2A2";
        q.forward = [xq, wq, c] { return conv2d(xq, wq, Var(), Conv2dOptions{static_cast<int>(c.stride), static_cast<int>(c.pad)}); };
        q.activations = {xq};
        cases.push_back(q);
    }

    // The three activation shapes of ResNet-20 (all N * 16384 elements).
    const Shape stage_shapes[3] = {{N, 16, 32, 32}, {N, 32, 16, 16}, {N, 64, 8, 8}};
    const char* stage_names[3] = {"16x32x32", "32x16x16", "64x8x8"};
    for (int s = 0; s < 3; ++s) {
        const Shape& sh = stage_shapes[s];
        const int64_t C = sh[1];
        const double bytes = f * numel_of(sh);
        Var x(random_tensor(sh, rng), true);
        Var gamma = Var::parameter(Tensor::full({C}, 1.0f)), beta = Var::parameter(Tensor::zeros({C}));
        auto rm = std::make_shared<Tensor>(Tensor::zeros({C}));
        auto rv = std::make_shared<Tensor>(Tensor::full({C}, 1.0f));
        OpCase bn;
        bn.name = std::string("batch_norm_") + stage_names[s];
        bn.shape = shape_text(sh);
        bn.forward = [x, gamma, beta, rm, rv] { return batch_norm2d(x, gamma, beta, *rm, *rv); };
        bn.activations = {x};
        bn.bytes_fwd = 3 * bytes;  // statistics pass (reads x; the variance pass reads it again), write y
        bn.bytes_bwd = 5 * bytes;  // sums (dy, x), then dx (dy, x, dx read + write)
        cases.push_back(bn);

        Var alpha = Var::parameter(Tensor::full({1}, 2.0f));
        OpCase pact;
        pact.name = std::string("pact_a2_") + stage_names[s];
        pact.shape = shape_text(sh) + " bits 2";
        pact.forward = [x, alpha] { return quant::pact_quantize(x, alpha, 2); };
        pact.activations = {x};
        pact.bytes_fwd = 2 * bytes;
        pact.bytes_bwd = 4 * bytes;  // x, dy, dx read + write
        cases.push_back(pact);

        // The fused bn -> + residual -> PACT of a block's act2 (ops/batch_norm_act.hpp): compare with
        // batch_norm_ + pact_a2_ (+ an add) above.
        Var residual(random_tensor(sh, rng), true);
        OpCase fused;
        fused.name = std::string("bn_add_pact_a2_") + stage_names[s];
        fused.shape = shape_text(sh) + " + residual, bits 2";
        fused.forward = [x, gamma, beta, rm, rv, alpha, residual] {
            return batch_norm_act(x, gamma, beta, *rm, *rv, {}, alpha, 2, &residual);
        };
        fused.activations = {x, residual};
        fused.bytes_fwd = 5 * bytes;   // statistics (x twice), then x and residual read, y written
        fused.bytes_bwd = 8 * bytes;   // pass 1: dy, x, residual read, dresidual written; pass 2: dy, x, residual read, dx written
        cases.push_back(fused);
    }
    {
        const Shape& sh = stage_shapes[0];
        const double bytes = f * numel_of(sh);
        Var x(random_tensor(sh, rng), true), y(random_tensor(sh, rng), true);
        OpCase r;
        r.name = "relu_16x32x32";
        r.shape = shape_text(sh);
        r.forward = [x] { return relu(x); };
        r.activations = {x};
        r.bytes_fwd = 2 * bytes;
        r.bytes_bwd = 4 * bytes;
        cases.push_back(r);

        OpCase a;
        a.name = "add_16x32x32";
        a.shape = shape_text(sh) + " + " + shape_text(sh);
        a.forward = [x, y] { return add(x, y); };
        a.activations = {x, y};
        a.bytes_fwd = 3 * bytes;
        a.bytes_bwd = 6 * bytes;  // dx += dy, dy' += dy
        cases.push_back(a);
    }
    if (shortcut == nn::Shortcut::A) {
        for (int s = 0; s < 2; ++s) {
            Var x(random_tensor(stage_shapes[s], rng), true);
            const int64_t out_c = stage_shapes[s][1] * 2;
            OpCase sc;
            sc.name = std::string("shortcut_a_") + stage_names[s];
            sc.shape = shape_text(stage_shapes[s]) + " -> " + std::to_string(out_c) + " channels, stride 2";
            sc.forward = [x, out_c] { return subsample_pad_channels(x, out_c, 2); };
            sc.activations = {x};
            cases.push_back(sc);
        }
    }
    {
        Var x(random_tensor(stage_shapes[2], rng), true);
        OpCase p;
        p.name = "global_avg_pool";
        p.shape = shape_text(stage_shapes[2]);
        p.forward = [x] { return global_avg_pool(x); };
        p.activations = {x};
        p.bytes_fwd = f * numel_of(stage_shapes[2]);
        p.bytes_bwd = 2 * f * numel_of(stage_shapes[2]);
        cases.push_back(p);
    }
    {
        Var x(random_tensor({N, 64}, rng), true);
        Var w = Var::parameter(random_tensor({10, 64}, rng, 0.1f)), b = Var::parameter(Tensor::zeros({10}));
        OpCase l;
        l.name = "linear_64_10";
        l.shape = "x " + shape_text(x.shape()) + " w [10, 64] + bias";
        l.forward = [x, w, b] { return linear(x, w, b); };
        l.activations = {x};
        l.flops_fwd = 2.0 * N * 64 * 10;
        l.flops_bwd = 2 * l.flops_fwd;
        cases.push_back(l);
    }
    {
        // Weight quantizers: every distinct weight shape, at the bits configure_quantization gives it.
        struct W {
            std::string name;
            Shape shape;
            int bits, count;  // count: how many layers of ResNet-20 (option A) have this shape
        };
        const std::vector<W> weights = {
            {"wquant_w8_16x3x3x3", {16, 3, 3, 3}, 8, 1},  {"wquant_w2_16x16x3x3", {16, 16, 3, 3}, 2, 6},
            {"wquant_w2_32x16x3x3", {32, 16, 3, 3}, 2, 1}, {"wquant_w2_32x32x3x3", {32, 32, 3, 3}, 2, 5},
            {"wquant_w2_64x32x3x3", {64, 32, 3, 3}, 2, 1}, {"wquant_w2_64x64x3x3", {64, 64, 3, 3}, 2, 5},
            {"wquant_w8_10x64", {10, 64}, 8, 1},
        };
        for (const W& wq : weights) {
            Var w = Var::parameter(random_tensor(wq.shape, rng, 0.1f));
            quant::WeightQuantOptions o{wq.bits, /*per_channel=*/true, quant::ScaleMethod::min_l2, quant::Grid::mid_rise};
            OpCase q;
            q.name = wq.name;
            q.shape = shape_text(wq.shape) + " bits " + std::to_string(wq.bits) + " min_l2 per-channel, x" +
                      std::to_string(wq.count) + " in ResNet-20";
            q.forward = [w, o] { return quant::quantize_weight(w, o); };
            cases.push_back(q);
        }
    }
    {
        Var logits(random_tensor({N, 10}, rng), true);
        std::vector<int> labels(static_cast<size_t>(N));
        for (auto& l : labels) l = static_cast<int>(rng.below(10));
        OpCase ce;
        ce.name = "softmax_cross_entropy";
        ce.shape = shape_text(logits.shape());
        ce.forward = [logits, labels] { return cross_entropy(logits, labels); };
        ce.activations = {logits};
        cases.push_back(ce);

        // SPEQ's distillation term: softmax of the student's logits, cosine with the teacher's probabilities.
        const Tensor teacher = softmax(Var(random_tensor({N, 10}, rng))).value();
        OpCase cos;
        cos.name = "cosine_loss";
        cos.shape = "softmax(" + shape_text(logits.shape()) + ") vs teacher probabilities";
        cos.forward = [logits, teacher] { return train::speq_kd_loss(logits, teacher, 1.0f); };
        cos.activations = {logits};
        cases.push_back(cos);
    }
    return cases;
}

// ---- whole steps ----

enum class StepKind { fp_train, qat_train, speq_train, fp_infer, w2a2_infer };
const char* step_name(StepKind k) {
    switch (k) {
        case StepKind::fp_train: return "fp_train";
        case StepKind::qat_train: return "qat_train";
        case StepKind::speq_train: return "speq_train";
        case StepKind::fp_infer: return "fp_infer";
        case StepKind::w2a2_infer: return "w2a2_infer";
    }
    return "?";
}
bool quantized(StepKind k) { return k != StepKind::fp_train && k != StepKind::fp_infer; }
bool training(StepKind k) { return k == StepKind::fp_train || k == StepKind::qat_train || k == StepKind::speq_train; }

// Phases of one step, in seconds.
struct Phases {
    double forward = 0, loss = 0, backward = 0, optimizer = 0;
};

json measure_step(StepKind kind, int64_t N, nn::Shortcut shortcut, int warmup, int reps) {
    Rng rng(2024);
    auto model = std::make_shared<nn::ResNetCifar>(20, 10, shortcut, rng);
    const Tensor images = random_tensor({N, 3, 32, 32}, rng);
    std::vector<int> labels(static_cast<size_t>(N));
    for (auto& l : labels) l = static_cast<int>(rng.below(10));
    const int act_bits = 2;
    if (quantized(kind)) {
        nn::QuantConfig q;
        q.weight_bits = 2;
        q.act_bits = act_bits;
        q.per_channel = true;
        q.weight_scale = nn::WeightScale::min_l2;
        nn::configure_quantization(*model, q);  // first conv and fc at 8 bits, last ActQuant 8 bits
        nn::calibrate_act_alphas(*model, images);
    }
    optim::SGDOptions so;
    so.lr = 0.01f, so.momentum = 0.9f, so.nesterov = true, so.weight_decay = 5e-4f;
    optim::SGD sgd(model->named_parameters(), so, nn::weight_decay_filter(*model));
    io::SpeqConfig speq_config;  // the paper's setting: n_H = 8 with probability 0.5, T = 1
    Rng draw_rng(99);
    if (!training(kind)) model->eval();

    std::vector<Phases> phases;
    auto one_step = [&]() -> double {
        Var x{Tensor(images)};  // a new batch tensor, as the loader gives (copied outside the timing)
        Phases p;
        auto t0 = Clock::now();
        if (!training(kind)) {
            NoGradGuard no_grad;
            Var logits = (*model)(x);
            p.forward = seconds_since(t0);
        } else {
            sgd.zero_grad();
            Var logits = (*model)(x);
            auto t1 = Clock::now();
            p.forward = std::chrono::duration<double>(t1 - t0).count();
            Var loss;
            if (kind == StepKind::speq_train)
                loss = train::speq_loss(*model, x, logits, labels, act_bits, speq_config, draw_rng, speq_config.kd_weight).total;
            else
                loss = cross_entropy(logits, labels);
            auto t2 = Clock::now();
            p.loss = std::chrono::duration<double>(t2 - t1).count();
            backward(loss);
            auto t3 = Clock::now();
            p.backward = std::chrono::duration<double>(t3 - t2).count();
            sgd.step();
            p.optimizer = seconds_since(t3);
        }
        phases.push_back(p);
        return seconds_since(t0);
    };

    const bool reset = reset_peak_rss();
    const double rss_after_trim = rss_mib();
    auto t = repeat(warmup, reps, one_step);
    phases.erase(phases.begin(), phases.begin() + warmup);
    const double s = median(t);
    auto phase_median = [&](double Phases::*m) {
        std::vector<double> v;
        for (const Phases& p : phases) v.push_back(p.*m * 1e3);
        return median(v);
    };
    json j = {{"images_per_s", N / s},
              {"ms", s * 1e3},
              {"ms_min", *std::min_element(t.begin(), t.end()) * 1e3},
              {"reps", reps},
              {"peak_rss_mib", peak_rss_mib()},
              {"rss_before_mib", rss_after_trim},
              {"peak_increase_mib", peak_rss_mib() - rss_after_trim},
              {"peak_since_process_start", !reset}};
    if (training(kind)) {
        j["phases_ms"] = {{"forward", phase_median(&Phases::forward)},
                          {kind == StepKind::speq_train ? "loss_and_teacher" : "loss", phase_median(&Phases::loss)},
                          {"backward", phase_median(&Phases::backward)},
                          {"sgd", phase_median(&Phases::optimizer)}};
    }
    return j;
}

}  // namespace

int main(int argc, char** argv) {
    const Options opt = parse(argc, argv);
    try {
        if (opt.threads > 0) set_num_threads(opt.threads);
        std::unique_ptr<nn::UnfusedBnActGuard> unfused;  // the steps run on this thread
        if (opt.unfused) unfused = std::make_unique<nn::UnfusedBnActGuard>();
        std::unique_ptr<FloatConvGuard> float_convs;  // likewise
        if (opt.float_convs) float_convs = std::make_unique<FloatConvGuard>();
        const int threads = num_threads();
        const Selector selected(opt.only);
        const int warmup = opt.quick ? 1 : 2;
        const int op_reps = opt.quick ? 3 : 7;
        const int step_reps = opt.quick ? 3 : 5;
        const auto started = Clock::now();

        json out;
        out["program"] = "speq_bench";
        out["config"] = {{"threads", threads},
                         {"batch", opt.batch},
                         {"all_batches", opt.all_batches},
                         {"quick", opt.quick},
                         {"only", opt.only},
                         {"model", "resnet20"},
                         {"shortcut", nn::shortcut_name(opt.shortcut)},
                         {"fused_ops", !opt.unfused},
                         {"integer_convs", kernels::kInt8ConvCompiled && !opt.float_convs},
                         {"quant", "W2A2: body weights 2 bits (min_l2, per output channel, mid_rise), PACT "
                                   "activations 2 bits; first conv and fc weights 8 bits, the fc input 8 bits"},
                         {"sgd", "lr 0.01, momentum 0.9, nesterov, weight decay 5e-4"},
                         {"speq", "teacher activation bits 8 with probability 0.5 per layer, else 2; T = 1"}};
        out["machine"] = {{"cpu", cpu_model()},
                          {"eigen_simd", Eigen::SimdInstructionSetsInUse()},
                          {"xsimd_lanes", kernels::kLanes},
                          {"load_average_start", load_average()}};

        // The GEMM peak, needed for the convs' fraction of it.
        bool any_conv = false;
        for (const ConvShape& c : conv_shapes(opt.shortcut)) any_conv = any_conv || selected(c.name);
        double peak = 0.0;
        if (selected("gemm_peak") || any_conv) {
            progress("GEMM peak (1024^3, Eigen)");
            const int gw = 1, gr = opt.quick ? 3 : 7;
            const double one = gemm_gflops(1024, 1024, 1024, false, gw, gr);
            peak = threads > 1 ? gemm_gflops(1024, 1024, 1024, true, gw, gr) : one;
            out["machine"]["gemm_1024_gflops_1t"] = one;
            out["machine"]["gemm_1024_gflops"] = peak;
            out["machine"]["gemm_threads"] = threads;
        }
        if (selected("gemm_conv_shapes")) {
            // The per-image GEMM of each conv's forward (W [K, C*k*k] times columns [C*k*k, H'W']),
            // one thread: the ceiling of im2col + GEMM at these small shapes.
            progress("GEMM at the conv shapes");
            json g;
            for (const ConvShape& c : conv_shapes(opt.shortcut)) {
                const int64_t Ho = (c.H + 2 * c.pad - c.k) / c.stride + 1;
                g[c.name] = gemm_gflops(c.K, Ho * Ho, c.C * c.k * c.k, false, 5, opt.quick ? 20 : 100);
            }
            out["machine"]["gemm_conv_shapes_gflops_1t"] = g;
        }

        json ops = json::object();
        for (const OpCase& op : op_cases(opt.batch, opt.shortcut)) {
            if (!selected(op.name)) continue;
            progress("op " + op.name);
            ops[op.name] = measure_op(op, warmup, op_reps, peak);
        }
        out["ops"] = ops;

        json steps = json::object();
        const std::vector<int> batches = opt.all_batches ? std::vector<int>{32, 128, 256} : std::vector<int>{opt.batch};
        for (StepKind k : {StepKind::fp_infer, StepKind::w2a2_infer, StepKind::fp_train, StepKind::qat_train,
                           StepKind::speq_train}) {
            for (int b : batches) {
                const std::string name = std::string(step_name(k)) + "_b" + std::to_string(b);
                if (!selected(name)) continue;
                progress("step " + name);
                // One warm-up step (the first allocates everything); inference steps are short:
                // more repetitions for the same noise.
                const int reps = training(k) ? step_reps : 2 * step_reps;
                steps[step_name(k)][std::to_string(b)] = measure_step(k, b, opt.shortcut, 1, reps);
            }
        }
        out["steps"] = steps;
        out["machine"]["load_average_end"] = load_average();
        out["seconds"] = seconds_since(started);
        std::cout << out.dump(1) << std::endl;
    } catch (const std::exception& e) {
        std::fprintf(stderr, "speq_bench: %s\n", e.what());
        return 1;
    }
    return 0;
}
