// speq/train/evaluate.hpp: accuracy of a model on a data set, and of one batch of logits.
#pragma once

#include <vector>

#include "speq/io/loader.hpp"
#include "speq/nn/module.hpp"
#include "speq/ops/losses.hpp"

namespace speq::train {

// Number of rows whose largest logit is at the label.   logits: [N, K], labels: [N]
inline int64_t count_correct(const Tensor& logits, const std::vector<int>& labels) {
    SPEQ_CHECK(logits.rank() == 2 && logits.dim(0) == static_cast<int64_t>(labels.size()),
               "count_correct: logits ", to_string(logits.shape()), " do not match ", labels.size(), " labels");
    const int64_t n = logits.dim(0), k = logits.dim(1);
    int64_t correct = 0;
    for (int64_t i = 0; i < n; ++i) {
        const float* row = logits.data() + i * k;
        int64_t best = 0;
        for (int64_t j = 1; j < k; ++j)
            if (row[j] > row[best]) best = j;
        correct += best == labels[i];
    }
    return correct;
}

struct EvalResult {
    double top1 = 0.0;  // fraction in [0, 1]
    double loss = 0.0;  // mean cross-entropy
    int64_t images = 0;
};

// Top-1 accuracy and mean cross-entropy over `data` (in order, unaugmented) of the logits that
// `forward` returns for each batch of images; nothing is recorded on the tape.
template <class Forward>
EvalResult evaluate_logits(const io::Dataset& data, const io::Normalization& normalization, int64_t batch_size,
                           Forward forward) {
    io::LoaderOptions options;
    options.batch_size = batch_size;
    options.shuffle = false;
    options.normalization = normalization;
    io::BatchLoader loader(data, options);
    loader.start_epoch(0);

    NoGradGuard no_grad;
    EvalResult result;
    double loss_sum = 0.0;
    int64_t correct = 0;
    io::Batch batch;
    while (loader.next(batch)) {
        Var logits(forward(Var(std::move(batch.images))));
        correct += count_correct(logits.value(), batch.labels);
        loss_sum += static_cast<double>(cross_entropy(logits, batch.labels).value()[0]) * batch.size();
        result.images += batch.size();
    }
    if (result.images > 0) {
        result.top1 = static_cast<double>(correct) / result.images;
        result.loss = loss_sum / result.images;
    }
    return result;
}

// Top-1 accuracy and mean cross-entropy of `model` over `data`, in eval mode (running batch-norm
// statistics). The model's train/eval mode is restored afterwards.
inline EvalResult evaluate(nn::UnaryModule& model, const io::Dataset& data, const io::Normalization& normalization,
                           int64_t batch_size = 256) {
    nn::ModeGuard eval_mode(model, false);
    return evaluate_logits(data, normalization, batch_size, [&](const Var& x) { return model(x).value(); });
}

}  // namespace speq::train
