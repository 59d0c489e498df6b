// speq/quant/golden_section.hpp: the 1-D search both clip-value searches refine with
// (weights' min-L2 scale, activations' alpha calibration).
#pragma once

#include <cmath>

namespace speq::quant {

// Golden-section search on [lo, hi] for a minimum of a unimodal `error(x)`, for `iterations`
// steps. `error` sees every point tried, so the caller keeps the best one it has seen.
template <class Error>
void golden_section_search(double lo, double hi, int iterations, Error&& error) {
    const double r = 0.5 * (std::sqrt(5.0) - 1.0);  // 0.618...
    double c = hi - r * (hi - lo), d = lo + r * (hi - lo);
    double ec = error(c), ed = error(d);
    for (int it = 0; it < iterations; ++it) {
        if (ec < ed) {
            hi = d, d = c, ed = ec;
            c = hi - r * (hi - lo), ec = error(c);
        } else {
            lo = c, c = d, ec = ed;
            d = lo + r * (hi - lo), ed = error(d);
        }
    }
}

}  // namespace speq::quant
