// speq/io/loader.hpp: batches of normalized, optionally augmented images from a Dataset,
// prepared on a background thread while the trainer computes.
//
//   BatchLoader loader(train_set, options);
//   for (int64_t epoch = 0; epoch < epochs; ++epoch) {
//       loader.start_epoch(epoch);          // or start_epoch(epoch, batch) to resume mid-epoch
//       Batch batch;
//       while (loader.next(batch)) train_step(batch.images, batch.labels);
//   }
//
// Reproducibility: epoch e's image order is a function of (seed, e) only, and image k of that
// order is augmented with random numbers seeded by (seed, e, k) only. So batch b of epoch e is
// the same whatever came before, on any number of threads, with or without the background
// thread: a run resumed at (epoch, batch) sees exactly the batches the first run would have seen.
#pragma once

#include <algorithm>
#include <condition_variable>
#include <cstdint>
#include <deque>
#include <exception>
#include <functional>
#include <mutex>
#include <numeric>
#include <thread>
#include <utility>
#include <vector>

#include "speq/core/error.hpp"
#include "speq/core/rng.hpp"
#include "speq/core/tensor.hpp"
#include "speq/io/augment.hpp"
#include "speq/io/dataset.hpp"

namespace speq::io {

struct Batch {
    Tensor images;                 // [B, C, H, W] float32, normalized
    std::vector<int> labels;       // [B]
    std::vector<int64_t> indices;  // [B] positions of the images in the Dataset
    int64_t epoch = 0, index = 0;  // this is batch `index` of epoch `epoch`
    int64_t size() const { return static_cast<int64_t>(labels.size()); }
};

struct LoaderOptions {
    int64_t batch_size = 128;
    uint64_t seed = 0;
    bool shuffle = true;     // a new order every epoch; false: dataset order
    bool drop_last = false;  // drop the last batch if it has fewer than batch_size images
    int crop_pad = 0;        // > 0: random H x W crop of the image zero-padded by crop_pad (CIFAR: 4)
    bool hflip = false;      // mirror left-right with probability 1/2
    Normalization normalization;  // empty: pixels scaled to [0, 1]
    bool background = true;  // prepare batches on a worker thread (false: inside next())
    int prefetch = 2;        // batches the worker may prepare ahead (1 or more)
    // Data-parallel training: this process builds only its part of every batch, images
    // [size * index / count, size * (index + 1) / count) of the batch a single process would
    // build (size = that batch's image count), augmented exactly as there. 0 of 1: all of it.
    int shard_index = 0, shard_count = 1;
    // Optional extra step run on each finished batch (in the worker thread when background is
    // on), with a generator seeded by (seed, epoch, batch). Exceptions reach next().
    std::function<void(Batch&, Rng&)> transform;
};

namespace detail {
// SplitMix64's finalizer: spreads nearby inputs (epoch 3, epoch 4) to unrelated seeds.
inline uint64_t mix64(uint64_t x) {
    x += 0x9e3779b97f4a7c15ULL;
    x = (x ^ (x >> 30)) * 0xbf58476d1ce4e5b9ULL;
    x = (x ^ (x >> 27)) * 0x94d049bb133111ebULL;
    return x ^ (x >> 31);
}
inline uint64_t mix_seed(uint64_t seed, uint64_t a, uint64_t b = 0) {
    return mix64(mix64(mix64(seed) ^ a) ^ b);
}
// One PCG stream per purpose, so shuffling, augmenting and the transform never share numbers.
inline constexpr uint64_t kShuffleStream = 1, kAugmentStream = 2, kTransformStream = 3;
}  // namespace detail

class BatchLoader {
public:
    // `data` must outlive the loader (it is read, not copied).
    BatchLoader(const Dataset& data, LoaderOptions options)
        : data_(data), options_(std::move(options)) {
        data_.validate();
        SPEQ_CHECK(data_.size() > 0, "BatchLoader: dataset '", data_.name, "' is empty");
        SPEQ_CHECK(options_.batch_size >= 1, "BatchLoader: batch_size must be >= 1, got ",
                   options_.batch_size);
        SPEQ_CHECK(!options_.drop_last || options_.batch_size <= data_.size(),
                   "BatchLoader: drop_last with batch_size ", options_.batch_size,
                   " and only ", data_.size(), " images in '", data_.name, "' gives no batches");
        SPEQ_CHECK(options_.crop_pad >= 0 && options_.crop_pad <= 1024,
                   "BatchLoader: crop_pad must be in [0, 1024], got ", options_.crop_pad);
        SPEQ_CHECK(options_.prefetch >= 1, "BatchLoader: prefetch must be >= 1, got ",
                   options_.prefetch);
        SPEQ_CHECK(options_.shard_count >= 1 && options_.shard_index >= 0 &&
                       options_.shard_index < options_.shard_count,
                   "BatchLoader: shard ", options_.shard_index, " of ", options_.shard_count,
                   " does not exist (0 <= shard_index < shard_count)");
        SPEQ_CHECK(options_.shard_count == 1 || !options_.transform,
                   "BatchLoader: a transform sees the whole batch, so it cannot be combined with shards");
        table_ = normalization_table(options_.normalization, data_.channels);
    }

    ~BatchLoader() { stop_worker(); }
    BatchLoader(const BatchLoader&) = delete;
    BatchLoader& operator=(const BatchLoader&) = delete;

    int64_t batches_per_epoch() const {
        const int64_t n = data_.size(), b = options_.batch_size;
        return options_.drop_last ? n / b : (n + b - 1) / b;
    }
    const LoaderOptions& options() const { return options_; }
    const Dataset& dataset() const { return data_; }

    // Dataset indices in the order epoch `epoch` visits them: a function of (seed, epoch) only.
    std::vector<int64_t> epoch_order(int64_t epoch) const {
        std::vector<int64_t> order(static_cast<size_t>(data_.size()));
        std::iota(order.begin(), order.end(), int64_t(0));
        if (options_.shuffle) {
            Rng rng(detail::mix_seed(options_.seed, static_cast<uint64_t>(epoch)),
                    detail::kShuffleStream);
            rng.shuffle(order.begin(), order.end());
        }
        return order;
    }

    // Batch `index` of epoch `epoch`, computed here and now (next() returns the same batches).
    Batch make_batch(int64_t epoch, int64_t index) const {
        check_position("make_batch", epoch, index, false);
        return build(epoch_order(epoch), epoch, index);
    }

    // Positions the loader at batch `first_batch` of epoch `epoch` and, with background on,
    // starts preparing batches. Any batches prepared for the previous position are dropped.
    void start_epoch(int64_t epoch, int64_t first_batch = 0) {
        check_position("start_epoch", epoch, first_batch, true);
        stop_worker();
        order_ = epoch_order(epoch);
        epoch_ = epoch;
        next_batch_ = first_batch;
        started_ = true;
        if (options_.background)
            worker_ = std::thread([this, epoch, first_batch] { run(epoch, first_batch); });
    }

    // The next batch of the current epoch into `batch`; false when the epoch is over.
    // Rethrows here any exception met while preparing a batch (in the worker thread or not);
    // the epoch then counts as over until the next start_epoch.
    bool next(Batch& batch) {
        SPEQ_CHECK(started_, "BatchLoader::next: call start_epoch(epoch, first_batch) first");
        if (!options_.background) {
            const int64_t b = next_batch_;
            if (b >= batches_per_epoch()) return false;
            next_batch_ = batches_per_epoch();  // if build throws, the epoch is over
            batch = build(order_, epoch_, b);
            next_batch_ = b + 1;
            return true;
        }
        std::unique_lock<std::mutex> lock(mutex_);
        not_empty_.wait(lock, [&] { return !queue_.empty() || done_; });
        if (!queue_.empty()) {
            batch = std::move(queue_.front());
            queue_.pop_front();
            lock.unlock();
            not_full_.notify_one();
            return true;
        }
        if (error_) {
            std::exception_ptr e = std::exchange(error_, nullptr);
            std::rethrow_exception(e);
        }
        return false;
    }

private:
    void check_position(const char* what, int64_t epoch, int64_t batch, bool allow_end) const {
        SPEQ_CHECK(epoch >= 0, "BatchLoader::", what, ": epoch must be >= 0, got ", epoch);
        const int64_t last = batches_per_epoch() - (allow_end ? 0 : 1);
        SPEQ_CHECK(batch >= 0 && batch <= last, "BatchLoader::", what, ": batch ", batch,
                   " is out of range [0, ", last, "] (", batches_per_epoch(),
                   " batches per epoch)");
    }

    // Batch `index` of an epoch with image order `order`. Serial on purpose: it costs about
    // 0.5 ms for 128 CIFAR images (a table lookup per pixel), far less than a training step, and
    // OpenMP threads here would compete with the trainer's (the worker runs beside them).
    Batch build(const std::vector<int64_t>& order, int64_t epoch, int64_t index) const {
        const int64_t whole = std::min(options_.batch_size, data_.size() - index * options_.batch_size);
        const int64_t shard_begin = whole * options_.shard_index / options_.shard_count;
        const int64_t first = index * options_.batch_size + shard_begin;
        const int64_t count = whole * (options_.shard_index + 1) / options_.shard_count - shard_begin;
        const int64_t image_floats = data_.image_bytes();
        Batch batch;
        batch.epoch = epoch;
        batch.index = index;
        batch.images = Tensor::uninitialized({count, data_.channels, data_.height, data_.width});
        batch.labels.resize(static_cast<size_t>(count));
        batch.indices.resize(static_cast<size_t>(count));
        for (int64_t i = 0; i < count; ++i) {
            const int64_t position = first + i, source = order[position];
            Rng rng(detail::mix_seed(options_.seed, static_cast<uint64_t>(epoch),
                                     static_cast<uint64_t>(position)),
                    detail::kAugmentStream);
            const CropFlip cf = draw_crop_flip(rng, options_.crop_pad, options_.hflip);
            decode_image(data_.image(source), data_.channels, data_.height, data_.width,
                         table_.data(), options_.crop_pad, cf,
                         batch.images.data() + i * image_floats);
            batch.labels[i] = data_.labels[source];
            batch.indices[i] = source;
        }
        if (options_.transform) {
            Rng rng(detail::mix_seed(options_.seed, static_cast<uint64_t>(epoch),
                                     static_cast<uint64_t>(index)),
                    detail::kTransformStream);
            options_.transform(batch, rng);
        }
        return batch;
    }

    // The worker: prepares batches [first, end) of `epoch` in order, at most `prefetch` ahead.
    void run(int64_t epoch, int64_t first) {
        try {
            for (int64_t b = first; b < batches_per_epoch(); ++b) {
                {
                    std::lock_guard<std::mutex> lock(mutex_);
                    if (stop_) return;
                }
                Batch batch = build(order_, epoch, b);
                std::unique_lock<std::mutex> lock(mutex_);
                not_full_.wait(lock, [&] {
                    return stop_ || static_cast<int>(queue_.size()) < options_.prefetch;
                });
                if (stop_) return;
                queue_.push_back(std::move(batch));
                lock.unlock();
                not_empty_.notify_one();
            }
        } catch (...) {
            std::lock_guard<std::mutex> lock(mutex_);
            error_ = std::current_exception();
        }
        {
            std::lock_guard<std::mutex> lock(mutex_);
            done_ = true;
        }
        not_empty_.notify_one();
    }

    // Stops and joins the worker (it finishes at most the batch it is preparing), drops its queue.
    void stop_worker() {
        {
            std::lock_guard<std::mutex> lock(mutex_);
            stop_ = true;
        }
        not_full_.notify_all();
        if (worker_.joinable()) worker_.join();
        queue_.clear();
        stop_ = false;
        done_ = false;
        error_ = nullptr;
    }

    const Dataset& data_;
    const LoaderOptions options_;
    std::vector<float> table_;  // normalization_table: [C, 256]

    // The current position; order_ is written only while no worker runs.
    std::vector<int64_t> order_;
    int64_t epoch_ = 0, next_batch_ = 0;
    bool started_ = false;

    // Shared with the worker, guarded by mutex_.
    std::thread worker_;
    std::mutex mutex_;
    std::condition_variable not_empty_, not_full_;
    std::deque<Batch> queue_;
    bool stop_ = false, done_ = false;
    std::exception_ptr error_;
};

}  // namespace speq::io
