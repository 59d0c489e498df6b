// speq/optim/schedule.hpp: learning-rate schedules as pure functions of the step index.
//
// `step` counts optimizer steps already taken: lr_at(0) is the learning rate of the first update.
// A schedule has no state, so resuming at step s is just lr_at(s). The trainer does
//     sgd.set_lr(schedule.lr_at(step)); sgd.step();
// Step counts are in whatever unit the caller steps in (iterations, usually; epochs work too).
// Values are computed in double and returned as float.
//
//   constant_lr(lr)                                   lr
//   step_decay(lr, milestones, gamma)                 lr * gamma^(number of milestones <= step)
//                                                     (PyTorch's MultiStepLR)
//   cosine_annealing(lr, total, min_lr)               min_lr + (lr - min_lr) (1 + cos(pi t / total)) / 2,
//                                                     t = min(step, total): stays at min_lr after
//                                                     (PyTorch's CosineAnnealingLR, closed form)
//   linear_warmup(after, warmup_steps, start_factor)  after(step) * f(step), f rising linearly from
//                                                     start_factor at step 0 to 1 at warmup_steps
//                                                     (PyTorch's LinearLR chained with `after`:
//                                                     `after` sees the absolute step, so milestones
//                                                     and cosine lengths count from step 0)
//   one_cycle(max_lr, total, pct_start, div, final_div)  PyTorch's OneCycleLR (two phases, cosine)
#pragma once

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <functional>
#include <utility>
#include <vector>

#include "speq/core/error.hpp"

namespace speq::optim {

inline constexpr double kPi = 3.14159265358979323846;

class Schedule {
public:
    explicit Schedule(std::function<double(int64_t)> lr_of_step) : lr_of_step_(std::move(lr_of_step)) {
        SPEQ_CHECK(lr_of_step_ != nullptr, "Schedule: the function is empty");
    }
    float lr_at(int64_t step) const {
        SPEQ_CHECK(step >= 0, "Schedule::lr_at: step must be >= 0, got ", step);
        return static_cast<float>(lr_of_step_(step));
    }

private:
    std::function<double(int64_t)> lr_of_step_;
};

inline Schedule constant_lr(float lr) {
    SPEQ_CHECK(lr >= 0.0f, "constant_lr: lr must be >= 0, got ", lr);
    return Schedule([lr](int64_t) { return static_cast<double>(lr); });
}

// milestones: ascending step indices; from each one on, the rate is multiplied by gamma once more.
inline Schedule step_decay(float base_lr, std::vector<int64_t> milestones, float gamma = 0.1f) {
    SPEQ_CHECK(base_lr >= 0.0f, "step_decay: base_lr must be >= 0, got ", base_lr);
    SPEQ_CHECK(gamma > 0.0f, "step_decay: gamma must be > 0, got ", gamma);
    for (size_t i = 0; i < milestones.size(); ++i) {
        SPEQ_CHECK(milestones[i] >= 0, "step_decay: milestone ", i, " is negative (", milestones[i], ")");
        SPEQ_CHECK(i == 0 || milestones[i - 1] <= milestones[i], "step_decay: milestones must be ascending, got ",
                   milestones[i - 1], " before ", milestones[i]);
    }
    return Schedule([base_lr, gamma, milestones = std::move(milestones)](int64_t step) {
        double lr = base_lr;
        for (int64_t m : milestones)
            if (m <= step) lr *= gamma;
        return lr;
    });
}

inline Schedule cosine_annealing(float base_lr, int64_t total_steps, float min_lr = 0.0f) {
    SPEQ_CHECK(total_steps >= 1, "cosine_annealing: total_steps must be >= 1, got ", total_steps);
    SPEQ_CHECK(min_lr >= 0.0f && min_lr <= base_lr, "cosine_annealing: need 0 <= min_lr <= base_lr, got min_lr ",
               min_lr, ", base_lr ", base_lr);
    return Schedule([base_lr, total_steps, min_lr](int64_t step) {
        const double t = static_cast<double>(std::min(step, total_steps)) / static_cast<double>(total_steps);
        return min_lr + (static_cast<double>(base_lr) - min_lr) * (1.0 + std::cos(kPi * t)) / 2.0;
    });
}

// start_factor 1/3 is PyTorch LinearLR's default.
inline Schedule linear_warmup(Schedule after, int64_t warmup_steps, float start_factor = 1.0f / 3.0f) {
    SPEQ_CHECK(warmup_steps >= 1, "linear_warmup: warmup_steps must be >= 1, got ", warmup_steps);
    SPEQ_CHECK(start_factor >= 0.0f && start_factor <= 1.0f, "linear_warmup: start_factor must be in [0, 1], got ",
               start_factor);
    return Schedule([after = std::move(after), warmup_steps, start_factor](int64_t step) {
        double factor = 1.0;
        if (step < warmup_steps)
            factor = start_factor + (1.0 - start_factor) * static_cast<double>(step) / static_cast<double>(warmup_steps);
        return static_cast<double>(after.lr_at(step)) * factor;
    });
}

// PyTorch's OneCycleLR(max_lr, total_steps, pct_start, anneal_strategy="cos", div_factor,
// final_div_factor, three_phase=False), learning rate only (no momentum cycling):
//   phase 1, steps 0 .. e1 (e1 = pct_start * total - 1): cosine from max_lr / div to max_lr
//   phase 2, steps e1 .. total - 1: cosine from max_lr down to max_lr / div / final_div
// Steps past total - 1 stay at the final rate (PyTorch raises there instead).
inline Schedule one_cycle(float max_lr, int64_t total_steps, double pct_start = 0.3, double div_factor = 25.0,
                          double final_div_factor = 1e4) {
    SPEQ_CHECK(max_lr > 0.0f, "one_cycle: max_lr must be > 0, got ", max_lr);
    SPEQ_CHECK(pct_start > 0.0 && pct_start < 1.0, "one_cycle: pct_start must be in (0, 1), got ", pct_start);
    SPEQ_CHECK(div_factor > 0.0 && final_div_factor > 0.0, "one_cycle: div_factor and final_div_factor must be > 0, got ",
               div_factor, " and ", final_div_factor);
    // As PyTorch: float(pct_start * total_steps) - 1, in double.
    const double end1 = pct_start * static_cast<double>(total_steps) - 1.0;
    const double end2 = static_cast<double>(total_steps) - 1.0;
    SPEQ_CHECK(end1 > 0.0 && end1 < end2, "one_cycle: pct_start * total_steps - 1 must lie in (0, total_steps - 1), got ",
               end1, " for pct_start ", pct_start, ", total_steps ", total_steps);
    const double initial = static_cast<double>(max_lr) / div_factor;
    const double final_lr = initial / final_div_factor;
    return Schedule([=](int64_t step) {
        auto cos_anneal = [](double from, double to, double pct) { return to + (from - to) / 2.0 * (std::cos(kPi * pct) + 1.0); };
        const double s = static_cast<double>(std::min<int64_t>(step, total_steps - 1));
        if (s <= end1) return cos_anneal(initial, max_lr, s / end1);
        return cos_anneal(max_lr, final_lr, (s - end1) / (end2 - end1));
    });
}

}  // namespace speq::optim
