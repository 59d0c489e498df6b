// speq/core/threads.hpp: how many threads speq uses, and the one parallel loop it uses them with.
//
// Determinism across thread counts: every parallel loop in speq splits its work into pieces
// whose boundaries depend only on the problem size, never on the number of threads, and every
// sum over pieces is added in piece order afterwards. So 1 thread and 8 threads compute the
// same floating-point operations in the same order, and training gives identical bits.
#pragma once

#include <cstdint>
#include <cstdlib>

#ifdef _OPENMP
#include <omp.h>
#endif

#include "speq/core/error.hpp"

namespace speq {

// Threads used by speq's parallel loops. Starts at OpenMP's default, which honours OMP_NUM_THREADS.
inline int num_threads() {
#ifdef _OPENMP
    return omp_get_max_threads();
#else
    return 1;
#endif
}

inline void set_num_threads(int n) {
    SPEQ_CHECK(n >= 1, "set_num_threads: need at least 1 thread, got ", n);
#ifdef _OPENMP
    omp_set_num_threads(n);
#endif
}

// Calls body(i) for every i in [begin, end), spread over the threads with a static schedule.
// Each body(i) must write only its own outputs; then the result cannot depend on the thread count.
template <class Body>
void parallel_for(int64_t begin, int64_t end, Body&& body) {
#ifdef _OPENMP
    if (end - begin > 1 && num_threads() > 1 && !omp_in_parallel()) {
#pragma omp parallel for schedule(static)
        for (int64_t i = begin; i < end; ++i) body(i);
        return;
    }
#endif
    for (int64_t i = begin; i < end; ++i) body(i);
}

// Splits [0, n) into `pieces` nearly equal ranges; range(p) gives piece p's [first, last).
// Used to cut a reduction into a fixed number of partial sums that are added in order.
struct Split {
    int64_t n, pieces;
    int64_t first(int64_t p) const { return n * p / pieces; }
    int64_t last(int64_t p) const { return n * (p + 1) / pieces; }
};

}  // namespace speq
