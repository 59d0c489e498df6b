// speq/train/communicator.hpp: what data-parallel training needs from the processes ("ranks") it
// runs on, and the one-process case.
//
// The trainer talks only to this interface. dist/mpi_communicator.hpp implements it over MPI and
// is the only header that includes <mpi.h>, so the library, the default build and every layer
// below train/ know nothing of MPI (docs/architecture.md; tests/test_layering.cpp checks it).
//
// Every call is collective: all ranks make the same calls in the same order, or the job hangs.
// The trainer keeps to that by deciding everything that changes its path (stop on a signal, a
// non-finite loss) from values the ranks have summed, so they all decide alike.
#pragma once

#include <cstdint>
#include <cstdlib>
#include <string>

namespace speq::train {

class Communicator {
public:
    virtual ~Communicator() = default;
    virtual int rank() const = 0;  // 0 .. size() - 1; rank 0 writes every file
    virtual int size() const = 0;

    // data[i] = the sum over the ranks of their data[i], in place. The same bits on every rank, summed
    // in rank order (rank 0 + rank 1 + ...) whatever the timing, so a run is bit-identical run to run.
    virtual void sum(float* data, int64_t n) = 0;
    virtual void sum(double* data, int64_t n) = 0;
    // Rank `root`'s data (or text) to every rank.
    virtual void broadcast(float* data, int64_t n, int root) = 0;
    virtual void broadcast(std::string& text, int root) = 0;
    // Ends every process of the job now, with this exit code (an error on one rank must not leave
    // the others waiting in a collective call forever).
    [[noreturn]] virtual void abort(int exit_code) = 0;
};

// One process: every collective is the identity.
class SingleProcess final : public Communicator {
public:
    int rank() const override { return 0; }
    int size() const override { return 1; }
    void sum(float*, int64_t) override {}
    void sum(double*, int64_t) override {}
    void broadcast(float*, int64_t, int) override {}
    void broadcast(std::string&, int) override {}
    [[noreturn]] void abort(int exit_code) override { std::exit(exit_code); }
};

}  // namespace speq::train
