// speq/train/progress.hpp: what a person watching a training run sees.
//
// On a terminal: one line rewritten in place (epoch, batch, images/s, loss, accuracy, time left).
// Into a file or a pipe (CI, nohup): a plain line every `log_every` batches, so logs stay readable.
#pragma once

#include <unistd.h>

#include <chrono>
#include <cstdio>
#include <string>

namespace speq::train {

// "1h02m", "3m07s", "12s": durations as people read them.
inline std::string format_duration(double seconds) {
    if (!(seconds >= 0.0) || seconds > 1e7) return "?";
    long s = static_cast<long>(seconds + 0.5);
    char buf[32];
    if (s >= 3600) std::snprintf(buf, sizeof buf, "%ldh%02ldm", s / 3600, (s % 3600) / 60);
    else if (s >= 60) std::snprintf(buf, sizeof buf, "%ldm%02lds", s / 60, s % 60);
    else std::snprintf(buf, sizeof buf, "%lds", s);
    return buf;
}

class Progress {
public:
    using Clock = std::chrono::steady_clock;

    // total_steps: steps of the whole run (for "time left"); log_every: plain-log period;
    // out = nullptr: count, print nothing (the ranks of a data-parallel run other than rank 0).
    Progress(int64_t total_steps, int64_t log_every, std::FILE* out = stderr)
        : total_steps_(total_steps), log_every_(log_every > 0 ? log_every : 1), out_(out),
          interactive_(out != nullptr && isatty(fileno(out)) != 0), start_(Clock::now()) {}

    // Seconds since the run (or its resumption) started.
    double elapsed() const { return std::chrono::duration<double>(Clock::now() - start_).count(); }

    // Call after each step. `step` counts steps done in this process so far, `global_step` the
    // steps of the whole run including earlier (resumed) ones.
    void update(int64_t epoch, int64_t epochs, int64_t batch, int64_t batches, int64_t step,
                int64_t global_step, int64_t images, float loss, float train_accuracy) {
        images_ += images;
        const double t = elapsed();
        const double rate = t > 0 ? images_ / t : 0.0;
        const double left = step > 0 ? t / step * (total_steps_ - global_step) : -1.0;
        char line[256];
        std::snprintf(line, sizeof line,
                      "epoch %lld/%lld  batch %lld/%lld  %.0f img/s  loss %.4f  acc %.1f%%  left %s",
                      static_cast<long long>(epoch + 1), static_cast<long long>(epochs),
                      static_cast<long long>(batch + 1), static_cast<long long>(batches), rate, loss,
                      100.0 * train_accuracy, format_duration(left).c_str());
        if (!out_) return;
        if (interactive_) {
            std::fprintf(out_, "\r%-100s", line);
            std::fflush(out_);
            open_line_ = true;
        } else if ((batch + 1) % log_every_ == 0 || batch + 1 == batches) {
            std::fprintf(out_, "%s\n", line);
            std::fflush(out_);
        }
    }

    // A whole line (an epoch summary): ends the in-place line first.
    void message(const std::string& text) {
        if (!out_) return;
        if (open_line_) std::fputc('\n', out_);
        open_line_ = false;
        std::fprintf(out_, "%s\n", text.c_str());
        std::fflush(out_);
    }

    double images_per_second() const {
        const double t = elapsed();
        return t > 0 ? images_ / t : 0.0;
    }

private:
    int64_t total_steps_, log_every_;
    std::FILE* out_;
    bool interactive_, open_line_ = false;
    Clock::time_point start_;
    double images_ = 0;
};

}  // namespace speq::train
