// Batch normalization: hand-checked values, running statistics, eval mode, gradients,
// a naive double reference, and identical bits for 1 and 2 threads.
#include <doctest/doctest.h>

#include <cmath>
#include <condition_variable>
#include <cstring>
#include <functional>
#include <mutex>
#include <thread>
#include <vector>

#include "gradcheck.hpp"
#include "speq/kernels/reduce.hpp"
#include "speq/ops/batch_norm.hpp"
#include "speq/ops/batch_norm_act.hpp"

using namespace speq;

namespace {

bool same_bits(const Tensor& a, const Tensor& b) {
    return a.shape() == b.shape() && std::memcmp(a.data(), b.data(), sizeof(float) * a.numel()) == 0;
}

// The plain version of batch norm, in double, one element at a time: forward output and the
// training/eval backward for a given dy. Used to check the SIMD implementation.
struct BnReference {
    Tensor y, dx, dgamma, dbeta;
};
BnReference batch_norm_reference(const Tensor& x, const Tensor& gamma, const Tensor& beta, const Tensor& rmean,
                                 const Tensor& rvar, const Tensor& dy, bool training, double eps) {
    const int64_t N = x.dim(0), C = x.dim(1), HW = x.dim(2) * x.dim(3), M = N * HW;
    BnReference r{Tensor(x.shape()), Tensor(x.shape()), Tensor({C}), Tensor({C})};
    for (int64_t c = 0; c < C; ++c) {
        auto at = [&](int64_t n, int64_t i) { return (n * C + c) * HW + i; };
        double mean = rmean[c], var = rvar[c];
        if (training) {
            mean = 0.0, var = 0.0;
            for (int64_t n = 0; n < N; ++n)
                for (int64_t i = 0; i < HW; ++i) mean += x[at(n, i)];
            mean /= M;
            for (int64_t n = 0; n < N; ++n)
                for (int64_t i = 0; i < HW; ++i) var += (x[at(n, i)] - mean) * (x[at(n, i)] - mean);
            var /= M;
        }
        const double inv_std = 1.0 / std::sqrt(var + eps);
        double sum_dy = 0.0, sum_dy_xhat = 0.0;
        for (int64_t n = 0; n < N; ++n)
            for (int64_t i = 0; i < HW; ++i) {
                const double xhat = (x[at(n, i)] - mean) * inv_std;
                r.y[at(n, i)] = static_cast<float>(gamma[c] * xhat + beta[c]);
                sum_dy += dy[at(n, i)];
                sum_dy_xhat += dy[at(n, i)] * xhat;
            }
        r.dgamma[c] = static_cast<float>(sum_dy_xhat);
        r.dbeta[c] = static_cast<float>(sum_dy);
        for (int64_t n = 0; n < N; ++n)
            for (int64_t i = 0; i < HW; ++i) {
                const double xhat = (x[at(n, i)] - mean) * inv_std;
                const double g = dy[at(n, i)];
                r.dx[at(n, i)] = static_cast<float>(
                    training ? gamma[c] * inv_std / M * (M * g - sum_dy - xhat * sum_dy_xhat) : g * gamma[c] * inv_std);
            }
    }
    return r;
}

void check_close(const Tensor& got, const Tensor& want, double tol, const char* what) {
    REQUIRE(got.shape() == want.shape());
    int bad = 0;
    for (int64_t i = 0; i < got.numel(); ++i)
        if (std::abs(got[i] - want[i]) > tol * (1.0 + std::abs(want[i]))) {
            if (++bad <= 3) FAIL_CHECK(what, " element ", i, ": got ", got[i], ", want ", want[i]);
        }
    CHECK_MESSAGE(bad == 0, what, ": ", bad, " elements differ");
}

}  // namespace

TEST_CASE("batch_norm2d: training output has mean 0 and variance 1 per channel, then gamma and beta") {
    Rng rng(3);
    const int64_t N = 4, C = 3, HW = 5 * 7;
    Tensor x = randn({N, C, 5, 7}, rng, 2.0f);
    for (int64_t i = 0; i < x.numel(); ++i) x[i] += 3.0f;  // a mean far from 0
    Tensor rm = Tensor::zeros({C}), rv = Tensor::full({C}, 1.0f);
    Var y = batch_norm2d(Var(x), Var(Tensor::full({C}, 1.0f)), Var(Tensor::zeros({C})), rm, rv);
    for (int64_t c = 0; c < C; ++c) {
        double mean = 0.0, sq = 0.0;
        for (int64_t n = 0; n < N; ++n)
            for (int64_t i = 0; i < HW; ++i) mean += y.value()[(n * C + c) * HW + i];
        mean /= N * HW;
        for (int64_t n = 0; n < N; ++n)
            for (int64_t i = 0; i < HW; ++i) sq += std::pow(y.value()[(n * C + c) * HW + i] - mean, 2);
        CHECK(std::abs(mean) < 1e-5);
        CHECK(sq / (N * HW) == doctest::Approx(1.0).epsilon(1e-4));  // eps = 1e-5 shrinks it a hair
    }
}

TEST_CASE("batch_norm2d: hand-checked tiny case and PyTorch's running-statistics update") {
    // x: [N=2, C=2, H=1, W=2]. Channel 0 holds {1, 3, 5, 7}: mean 4, biased var 5, unbiased 20/3.
    // Channel 1 holds {-1, 1, -1, 1}: mean 0, biased var 1, unbiased 4/3.
    Tensor x = Tensor::of({2, 2, 1, 2}, {1, 3, -1, 1, 5, 7, -1, 1});
    Var gamma(Tensor::of({2}, {2.0f, 0.5f})), beta(Tensor::of({2}, {1.0f, -1.0f}));
    Tensor rm = Tensor::of({2}, {0.0f, 10.0f}), rv = Tensor::of({2}, {1.0f, 2.0f});
    BatchNormOptions opt;
    opt.momentum = 0.1f;
    opt.eps = 1e-5f;
    Var y = batch_norm2d(Var(x), gamma, beta, rm, rv, opt);
    // y = gamma * (x - mean) / sqrt(var + eps) + beta
    const double s0 = std::sqrt(5.0 + 1e-5), s1 = std::sqrt(1.0 + 1e-5);
    const double want[8] = {2 * (1 - 4) / s0 + 1,  2 * (3 - 4) / s0 + 1,  0.5 * -1 / s1 - 1, 0.5 * 1 / s1 - 1,
                            2 * (5 - 4) / s0 + 1,  2 * (7 - 4) / s0 + 1,  0.5 * -1 / s1 - 1, 0.5 * 1 / s1 - 1};
    for (int i = 0; i < 8; ++i) CHECK(y.value()[i] == doctest::Approx(want[i]).epsilon(1e-6));
    // running = 0.9 * running + 0.1 * batch (unbiased variance):
    //   mean: 0.9*0 + 0.1*4 = 0.4,  0.9*10 + 0.1*0 = 9
    //   var:  0.9*1 + 0.1*20/3 = 1.5666667,  0.9*2 + 0.1*4/3 = 1.9333333
    CHECK(rm[0] == doctest::Approx(0.4).epsilon(1e-6));
    CHECK(rm[1] == doctest::Approx(9.0).epsilon(1e-6));
    CHECK(rv[0] == doctest::Approx(0.9 + 0.1 * 20.0 / 3.0).epsilon(1e-6));
    CHECK(rv[1] == doctest::Approx(1.8 + 0.1 * 4.0 / 3.0).epsilon(1e-6));
}

TEST_CASE("batch_norm2d: update_running_stats = false leaves the running stats bit-identical") {
    Rng rng(5);
    Tensor x = randn({3, 4, 3, 3}, rng);
    Tensor rm = randn({4}, rng), rv = rand_uniform({4}, rng, 0.5f, 2.0f);
    const Tensor rm0 = rm, rv0 = rv;
    BatchNormOptions teacher;
    teacher.update_running_stats = false;
    Var gamma(Tensor::full({4}, 1.0f)), beta(Tensor::zeros({4}));
    Var y_teacher = batch_norm2d(Var(x), gamma, beta, rm, rv, teacher);
    CHECK(same_bits(rm, rm0));
    CHECK(same_bits(rv, rv0));
    // Still normalizes with the batch statistics: the same output as an updating training pass.
    Tensor rm2 = rm0, rv2 = rv0;
    Var y_train = batch_norm2d(Var(x), gamma, beta, rm2, rv2);
    CHECK(same_bits(y_teacher.value(), y_train.value()));
    CHECK_FALSE(same_bits(rm2, rm0));
}

TEST_CASE("batch_norm2d: eval mode normalizes with the running statistics, and leaves them alone") {
    // One channel, running mean 1, running var 4 (std ~2); gamma 2, beta 1:
    //   y = 2 * (x - 1) / sqrt(4 + 1e-5) + 1:  x = 1 -> 1,  x = 3 -> 2.999995,  x = -1 -> -0.999995
    Tensor x = Tensor::of({1, 1, 1, 3}, {1.0f, 3.0f, -1.0f});
    Tensor rm = Tensor::of({1}, {1.0f}), rv = Tensor::of({1}, {4.0f});
    BatchNormOptions eval;
    eval.training = false;
    Var y = batch_norm2d(Var(x), Var(Tensor::of({1}, {2.0f})), Var(Tensor::of({1}, {1.0f})), rm, rv, eval);
    CHECK(y.value()[0] == doctest::Approx(1.0).epsilon(1e-7));
    CHECK(y.value()[1] == doctest::Approx(1.0 + 4.0 / std::sqrt(4.00001)).epsilon(1e-7));
    CHECK(y.value()[2] == doctest::Approx(1.0 - 4.0 / std::sqrt(4.00001)).epsilon(1e-7));
    CHECK(rm[0] == 1.0f);
    CHECK(rv[0] == 4.0f);
}

TEST_CASE("batch_norm2d: gradient check for x, gamma and beta, training and eval") {
    Rng rng(11);
    for (Shape shape : {Shape{3, 2, 3, 4}, Shape{2, 3, 5, 5}}) {
        const int64_t C = shape[1];
        Tensor x = randn(shape, rng, 1.5f);
        Tensor gamma = rand_uniform({C}, rng, 0.5f, 2.0f), beta = randn({C}, rng);
        Tensor rm = randn({C}, rng, 0.3f), rv = rand_uniform({C}, rng, 0.5f, 2.0f);
        for (bool training : {true, false}) {
            BatchNormOptions opt;
            opt.training = training;
            testing::check_gradients(
                std::string("batch_norm2d ") + (training ? "training " : "eval ") + to_string(shape),
                [&](std::vector<Var>& v) { return batch_norm2d(v[0], v[1], v[2], rm, rv, opt); },
                {Var::parameter(x), Var::parameter(gamma), Var::parameter(beta)});
        }
    }
}

TEST_CASE("batch_norm2d: matches a naive double reference (tails, several sum blocks, one input needing grad)") {
    Rng rng(17);
    // HW = 323 is not a multiple of any SIMD width; HW = 1200 spans two sum blocks.
    for (Shape shape : {Shape{4, 3, 17, 19}, Shape{2, 2, 40, 30}, Shape{5, 2, 1, 1}}) {
        const int64_t C = shape[1];
        Tensor x = randn(shape, rng, 3.0f);
        for (int64_t i = 0; i < x.numel(); ++i) x[i] += 10.0f;
        Tensor gamma = randn({C}, rng), beta = randn({C}, rng);
        Tensor rm = randn({C}, rng), rv = rand_uniform({C}, rng, 0.5f, 4.0f);
        Tensor dy = randn(shape, rng);
        for (bool training : {true, false}) {
            INFO("shape ", to_string(shape), training ? " training" : " eval");
            BnReference want = batch_norm_reference(x, gamma, beta, rm, rv, dy, training, 1e-5);
            BatchNormOptions opt;
            opt.training = training;
            opt.update_running_stats = false;
            Var xv = Var::parameter(x), gv = Var::parameter(gamma), bv = Var::parameter(beta);
            Var y = batch_norm2d(xv, gv, bv, rm, rv, opt);
            check_close(y.value(), want.y, 1e-5, "y");
            backward(y, dy);
            check_close(xv.grad(), want.dx, 1e-4, "dx");
            check_close(gv.grad(), want.dgamma, 1e-4, "dgamma");
            check_close(bv.grad(), want.dbeta, 1e-4, "dbeta");

            // Only gamma needs grad (x is a constant input): gamma's gradient is unchanged.
            Var g2 = Var::parameter(gamma);
            Var y2 = batch_norm2d(Var(x), g2, Var(beta), rm, rv, opt);
            backward(y2, dy);
            CHECK(same_bits(g2.grad(), gv.grad()));
        }
    }
}

TEST_CASE("batch_norm2d: identical bits with 1 and 2 threads, forward and backward") {
    Rng rng(23);
    const Shape shape{8, 6, 16, 16};
    Tensor x = randn(shape, rng), dy = randn(shape, rng);
    Tensor gamma = randn({6}, rng), beta = randn({6}, rng);
    const int saved_threads = num_threads();
    Tensor results[2][6];
    for (int t = 0; t < 2; ++t) {
        set_num_threads(t + 1);
        Tensor rm = Tensor::zeros({6}), rv = Tensor::full({6}, 1.0f);
        Var xv = Var::parameter(x), gv = Var::parameter(gamma), bv = Var::parameter(beta);
        Var y = batch_norm2d(xv, gv, bv, rm, rv);
        backward(y, dy);
        Tensor r[6] = {y.value(), xv.grad(), gv.grad(), bv.grad(), rm, rv};
        for (int k = 0; k < 6; ++k) results[t][k] = std::move(r[k]);
    }
    set_num_threads(saved_threads);
    const char* names[6] = {"y", "dx", "dgamma", "dbeta", "running_mean", "running_var"};
    for (int k = 0; k < 6; ++k) CHECK_MESSAGE(same_bits(results[0][k], results[1][k]), names[k]);
}

namespace {

// R threads standing in for R data-parallel ranks: sum(rank, data, n) returns, on every thread,
// the sum over the threads of their data (in rank order), as train::Communicator::sum does.
class ThreadRanks {
public:
    explicit ThreadRanks(int ranks) : parts_(static_cast<size_t>(ranks)) {}
    void sum(int rank, double* data, int64_t n) {
        std::unique_lock<std::mutex> lock(mutex_);
        parts_[static_cast<size_t>(rank)].assign(data, data + n);
        const int64_t generation = generation_;
        if (++arrived_ == static_cast<int>(parts_.size())) {
            result_ = parts_[0];
            for (size_t r = 1; r < parts_.size(); ++r)
                for (size_t i = 0; i < result_.size(); ++i) result_[i] += parts_[r][i];
            arrived_ = 0, ++generation_;
            done_.notify_all();
        } else {
            done_.wait(lock, [&] { return generation_ != generation; });
        }
        std::copy(result_.begin(), result_.end(), data);  // stays until every rank has come back
    }
    std::function<void(double*, int64_t)> of(int rank) {
        return [this, rank](double* data, int64_t n) { sum(rank, data, n); };
    }

private:
    std::mutex mutex_;
    std::condition_variable done_;
    std::vector<std::vector<double>> parts_;
    std::vector<double> result_;
    int arrived_ = 0;
    int64_t generation_ = 0;
};

// Images [begin, end) of an [N, ...] tensor.
Tensor images(const Tensor& t, int64_t begin, int64_t end) {
    Shape shape = t.shape();
    const int64_t per_image = t.numel() / shape[0];
    shape[0] = end - begin;
    Tensor out = Tensor::uninitialized(shape);
    std::memcpy(out.data(), t.data() + begin * per_image, sizeof(float) * static_cast<size_t>(out.numel()));
    return out;
}

}  // namespace

TEST_CASE("synchronized batch norm: R ranks with slices of a batch compute what one process computes on it") {
    Rng rng(31);
    const Shape shape{6, 3, 5, 7};  // 6 images: slices of 3 (2 ranks) or 2 (3 ranks)
    const int64_t C = shape[1];
    Tensor x = randn(shape, rng, 2.0f), residual = randn(shape, rng), dy = randn(shape, rng);
    for (int64_t i = 0; i < x.numel(); ++i) x[i] += 3.0f;
    const Tensor gamma = randn({C}, rng), beta = randn({C}, rng);

    // op: batch_norm2d, or the fused batch norm + residual + ReLU (both backward paths differ).
    for (bool fused : {false, true}) {
        auto run = [&](const Tensor& xs, const Tensor& rs, const Tensor& dys, Tensor& rmean, Tensor& rvar,
                       const BatchNormOptions& opt) {
            Var xv = Var::parameter(xs), gv = Var::parameter(gamma), bv = Var::parameter(beta);
            Var rv = Var::parameter(rs);
            Var y = fused ? batch_norm_act(xv, gv, bv, rmean, rvar, opt, Var(), 32, &rv)
                          : batch_norm2d(xv, gv, bv, rmean, rvar, opt);
            backward(y, dys);
            return std::vector<Tensor>{y.value(), xv.grad(), gv.grad(), bv.grad()};
        };
        Tensor whole_mean = Tensor::zeros({C}), whole_var = Tensor::full({C}, 1.0f);
        const std::vector<Tensor> whole = run(x, residual, dy, whole_mean, whole_var, BatchNormOptions{});

        for (int ranks : {2, 3}) {
            INFO((fused ? "batch_norm_act, " : "batch_norm2d, "), ranks, " ranks");
            ThreadRanks sums(ranks);
            const int64_t per_rank = shape[0] / ranks;
            std::vector<std::vector<Tensor>> got(static_cast<size_t>(ranks));
            std::vector<Tensor> means(static_cast<size_t>(ranks), Tensor::zeros({C}));
            std::vector<Tensor> vars(static_cast<size_t>(ranks), Tensor::full({C}, 1.0f));
            std::vector<std::thread> threads;
            for (int r = 0; r < ranks; ++r)
                threads.emplace_back([&, r] {
                    BatchNormOptions opt;
                    opt.sum_over_ranks = sums.of(r);
                    const int64_t b = r * per_rank, e = b + per_rank;
                    got[static_cast<size_t>(r)] = run(images(x, b, e), images(residual, b, e), images(dy, b, e),
                                                      means[static_cast<size_t>(r)], vars[static_cast<size_t>(r)], opt);
                });
            for (std::thread& t : threads) t.join();
            Tensor dgamma = Tensor::zeros({C}), dbeta = Tensor::zeros({C});
            for (int r = 0; r < ranks; ++r) {
                const std::vector<Tensor>& part = got[static_cast<size_t>(r)];
                const int64_t b = r * per_rank, e = b + per_rank;
                check_close(part[0], images(whole[0], b, e), 1e-5, "y");
                check_close(part[1], images(whole[1], b, e), 1e-4, "dx");
                check_close(means[static_cast<size_t>(r)], whole_mean, 1e-6, "running_mean");
                check_close(vars[static_cast<size_t>(r)], whole_var, 1e-6, "running_var");
                for (int64_t c = 0; c < C; ++c) dgamma[c] += part[2][c], dbeta[c] += part[3][c];
            }
            // Each rank's dgamma and dbeta are its share: their sum is the whole batch's.
            check_close(dgamma, whole[2], 1e-4, "dgamma");
            check_close(dbeta, whole[3], 1e-4, "dbeta");
        }
    }
}

TEST_CASE("batch_norm2d: no-grad records nothing, statistics still follow the options") {
    tape().clear();
    Rng rng(29);
    Tensor x = randn({2, 2, 2, 2}, rng);
    Tensor rm = Tensor::zeros({2}), rv = Tensor::full({2}, 1.0f);
    Var gamma = Var::parameter(Tensor::full({2}, 1.0f)), beta = Var::parameter(Tensor::zeros({2}));
    NoGradGuard no_grad;
    Var y = batch_norm2d(Var::parameter(x), gamma, beta, rm, rv);
    CHECK_FALSE(y.requires_grad());
    CHECK(tape().size() == 0);
    CHECK(rm[0] != 0.0f);
}

TEST_CASE("batch_norm2d: errors name the op, the argument and the shapes") {
    Tensor rm = Tensor::zeros({3}), rv = Tensor::full({3}, 1.0f);
    Var g(Tensor::full({3}, 1.0f)), b(Tensor::zeros({3}));
    CHECK_THROWS_WITH_AS(batch_norm2d(Var(Tensor::zeros({2, 3, 4})), g, b, rm, rv),
                         "batch_norm2d: x must be [N, C, H, W], got [2, 3, 4]", Error);
    CHECK_THROWS_WITH_AS(batch_norm2d(Var(Tensor::zeros({2, 4, 2, 2})), g, b, rm, rv),
                         "batch_norm2d: gamma vs [C] of x: shapes [3] and [4] do not match", Error);
    Tensor rv_bad = Tensor::zeros({2});
    CHECK_THROWS_WITH_AS(batch_norm2d(Var(Tensor::zeros({2, 3, 2, 2})), g, b, rm, rv_bad),
                         doctest::Contains("running_var"), Error);
    CHECK_THROWS_WITH_AS(batch_norm2d(Var(Tensor::zeros({1, 3, 1, 1})), g, b, rm, rv),
                         doctest::Contains("more than 1 value per channel"), Error);
    BatchNormOptions eval;
    eval.training = false;  // one value per channel is fine with running statistics
    CHECK_NOTHROW(batch_norm2d(Var(Tensor::zeros({1, 3, 1, 1})), g, b, rm, rv, eval));
    BatchNormOptions bad;
    bad.momentum = 1.5f;
    CHECK_THROWS_WITH_AS(batch_norm2d(Var(Tensor::zeros({2, 3, 2, 2})), g, b, rm, rv, bad),
                         doctest::Contains("momentum"), Error);
}

TEST_CASE("kernels::sum_map agrees with the plain double loop") {
    Rng rng(31);
    for (int64_t n : {0, 1, 7, 8, 33, 1023, 1024, 1025, 5000}) {
        Tensor a = randn({n}, rng), b = randn({n}, rng);
        auto f = [](auto u, auto v) { return u * v + 1.0f; };  // f(0, 0) != 0: the tail must be masked
        double fast = kernels::sum_map(n, f, a.data(), b.data());
        double slow = kernels::sum_map_reference(n, f, a.data(), b.data());
        CHECK_MESSAGE(fast == doctest::Approx(slow).epsilon(1e-6).scale(1.0), "n = ", n);
    }
}
