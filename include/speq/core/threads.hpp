// speq/core/threads.hpp: how many threads speq uses, and the parallel loops it uses them with.
//
//   parallel_for(begin, end, body)                      body(i) for i in [begin, end), in parallel
//   parallel_for_if_large(begin, end, elements, body)   the same, serial when the job is small
//   parallel_split(n, pieces, body)                     body(piece, first, last) over a Split of [0, n)
//
// The element loops built on these (map, sum_map, row_sums) are in kernels/elementwise.hpp and
// kernels/reduce.hpp.
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

// A job that touches fewer elements than this stays on the calling thread: waking the other
// threads would cost more than they save.
inline constexpr int64_t kParallelGrain = 1 << 14;

// parallel_for, unless the whole job touches fewer than kParallelGrain elements. Each body(i)
// does the same operations either way, so the results are the same either way.
template <class Body>
void parallel_for_if_large(int64_t begin, int64_t end, int64_t elements, Body&& body) {
    if (elements < kParallelGrain) {
        for (int64_t i = begin; i < end; ++i) body(i);
    } else {
        parallel_for(begin, end, body);
    }
}

// Splits [0, n) into `pieces` nearly equal ranges; piece p is [first(p), last(p)).
// Used to cut a reduction into a fixed number of partial sums that are added in order.
struct Split {
    int64_t n, pieces;
    int64_t first(int64_t p) const { return n * p / pieces; }
    int64_t last(int64_t p) const { return n * (p + 1) / pieces; }
};

// Cuts [0, n) into `pieces` fixed ranges (a Split) and calls body(piece, first, last) for each,
// in parallel. `pieces` must depend on the problem size only, never on the thread count; then a
// reduction that keeps one partial result per piece and adds them in piece order afterwards
// gives the same bits for any number of threads.
template <class Body>
void parallel_split(int64_t n, int64_t pieces, Body&& body) {
    const Split split{n, pieces < 1 ? 1 : pieces};
    parallel_for(0, split.pieces, [&](int64_t p) { body(p, split.first(p), split.last(p)); });
}

}  // namespace speq
