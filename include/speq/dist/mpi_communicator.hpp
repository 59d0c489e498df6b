// speq/dist/mpi_communicator.hpp: train::Communicator over MPI, for data-parallel training with
// `mpirun -np N speq-train ...`. The only header of speq that includes <mpi.h>; it is compiled
// only when the build has MPI (CMake option SPEQ_MPI, which defines SPEQ_HAVE_MPI).
//
//   dist::MpiSession mpi(argc, argv);          // MPI_Init ... MPI_Finalize
//   dist::MpiCommunicator world;               // MPI_COMM_WORLD
//   train::Trainer(config, resume, &world).run();
//
// Sums in a fixed order. MPI_Allreduce may add the ranks' values in an order that depends on the
// algorithm Open MPI picks for the message size and the job's layout, so instead: each rank owns
// one chunk of the buffer; MPI_Alltoall hands every rank all N copies of its chunk, it adds them
// in rank order 0, 1, ..., N-1, and MPI_Allgather hands the summed chunks to everyone. That is
// the data volume of a ring all-reduce (each rank sends and receives 2 (N-1)/N of the buffer) and
// the bits of the result depend only on the values and N.
#pragma once

#include <mpi.h>

#include <algorithm>
#include <cstdint>
#include <cstdlib>
#include <string>
#include <vector>

#include "speq/core/error.hpp"
#include "speq/train/communicator.hpp"

namespace speq::dist {

// MPI_Init on construction, MPI_Finalize on destruction (if this object initialized MPI).
class MpiSession {
public:
    MpiSession(int& argc, char**& argv) {
        int initialized = 0;
        MPI_Initialized(&initialized);
        if (!initialized) {
            MPI_Init(&argc, &argv);
            owner_ = true;
        }
    }
    ~MpiSession() {
        int finalized = 0;
        MPI_Finalized(&finalized);
        if (owner_ && !finalized) MPI_Finalize();
    }
    MpiSession(const MpiSession&) = delete;
    MpiSession& operator=(const MpiSession&) = delete;

private:
    bool owner_ = false;
};

class MpiCommunicator final : public train::Communicator {
public:
    explicit MpiCommunicator(MPI_Comm comm = MPI_COMM_WORLD) : comm_(comm) {
        MPI_Comm_rank(comm_, &rank_);
        MPI_Comm_size(comm_, &size_);
    }
    int rank() const override { return rank_; }
    int size() const override { return size_; }

    void sum(float* data, int64_t n) override { ordered_sum(data, n, MPI_FLOAT, float_scratch_); }
    void sum(double* data, int64_t n) override { ordered_sum(data, n, MPI_DOUBLE, double_scratch_); }

    void broadcast(float* data, int64_t n, int root) override {
        SPEQ_CHECK(n >= 0 && n <= INT32_MAX, "MpiCommunicator::broadcast: ", n, " floats is more than one MPI call takes");
        MPI_Bcast(data, static_cast<int>(n), MPI_FLOAT, root, comm_);
    }
    void broadcast(std::string& text, int root) override {
        uint64_t length = text.size();
        MPI_Bcast(&length, 1, MPI_UINT64_T, root, comm_);
        text.resize(length);
        MPI_Bcast(text.data(), static_cast<int>(length), MPI_CHAR, root, comm_);
    }
    [[noreturn]] void abort(int exit_code) override {
        MPI_Abort(comm_, exit_code);
        std::abort();  // MPI_Abort does not return; this only tells the compiler so
    }

private:
    // Scratch: [size * chunk] to send (this rank's values, padded), then [size * chunk] received.
    template <class T>
    struct Scratch {
        std::vector<T> send, received, mine;
    };

    template <class T>
    void ordered_sum(T* data, int64_t n, MPI_Datatype type, Scratch<T>& s) {
        if (size_ == 1 || n == 0) return;
        const int64_t chunk = (n + size_ - 1) / size_;
        SPEQ_CHECK(chunk <= INT32_MAX, "MpiCommunicator::sum: chunks of ", chunk, " values are more than one MPI call takes");
        const size_t padded = static_cast<size_t>(chunk * size_);
        s.send.assign(padded, T(0));
        std::copy(data, data + n, s.send.begin());
        s.received.resize(padded);
        MPI_Alltoall(s.send.data(), static_cast<int>(chunk), type, s.received.data(), static_cast<int>(chunk), type, comm_);
        // received = [rank 0's copy of my chunk, rank 1's copy, ...]: add them in rank order.
        s.mine.assign(s.received.begin(), s.received.begin() + chunk);
        for (int r = 1; r < size_; ++r) {
            const T* other = s.received.data() + static_cast<size_t>(r) * static_cast<size_t>(chunk);
            for (int64_t i = 0; i < chunk; ++i) s.mine[static_cast<size_t>(i)] += other[i];
        }
        MPI_Allgather(s.mine.data(), static_cast<int>(chunk), type, s.send.data(), static_cast<int>(chunk), type, comm_);
        std::copy(s.send.begin(), s.send.begin() + n, data);
    }

    MPI_Comm comm_;
    int rank_ = 0, size_ = 1;
    Scratch<float> float_scratch_;
    Scratch<double> double_scratch_;
};

}  // namespace speq::dist
