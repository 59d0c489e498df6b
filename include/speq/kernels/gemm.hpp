// speq/kernels/gemm.hpp: matrix products on raw row-major float pointers, done by Eigen.
//
//   gemm_nn(M, N, K, A, B, C, acc)   C[M,N] (+)= A[M,K]   * B[K,N]
//   gemm_tn(M, N, K, A, B, C, acc)   C[M,N] (+)= A[K,M]^T * B[K,N]
//   gemm_nt(M, N, K, A, B, C, acc)   C[M,N] (+)= A[M,K]   * B[N,K]^T
//   transpose(rows, cols, A, B)      B[cols,rows] = A[rows,cols]^T
//
// Every matrix is dense and row-major (element (i, j) of an R x S matrix at p[i * S + j]); the
// shapes in brackets are the shapes of the arrays as stored. With acc = false C is overwritten,
// with acc = true the product is added to it (how backward accumulates gradients). C must not
// overlap A or B. Pointers need no particular alignment.
//
// Determinism: Eigen's own multi-threaded GEMM chooses its blocking (and so its summation order)
// from the number of threads. speq parallelizes around GEMM instead (parallel_split, in
// core/threads.hpp), so the first call of any wrapper switches Eigen's threading off for the whole
// process (Eigen::setNbThreads(1)); every product then runs single-threaded with a blocking that
// depends only on M, N and K. (Defining EIGEN_DONT_PARALLELIZE before including Eigen does the same.)
#pragma once

#include <Eigen/Core>

#include <cstdint>

namespace speq::kernels {

namespace detail {
using RowMatrix = Eigen::Matrix<float, Eigen::Dynamic, Eigen::Dynamic, Eigen::RowMajor>;
using ConstMat = Eigen::Map<const RowMatrix>;
using Mat = Eigen::Map<RowMatrix>;

// Sets Eigen's thread count to 1 the first time any wrapper runs (a thread-safe static, so the
// first call may come from inside a parallel region). With EIGEN_DONT_PARALLELIZE there is
// nothing to do.
inline void eigen_single_threaded() {
#ifndef EIGEN_DONT_PARALLELIZE
    static const bool done = (Eigen::setNbThreads(1), true);
    (void)done;
#endif
}

template <class Product>
void assign_or_add(Mat c, const Product& product, bool accumulate) {
    eigen_single_threaded();
    if (accumulate)
        c.noalias() += product;
    else
        c.noalias() = product;
}
}  // namespace detail

// C[M,N] (+)= A[M,K] * B[K,N]
inline void gemm_nn(int64_t M, int64_t N, int64_t K, const float* A, const float* B, float* C,
                    bool accumulate) {
    detail::ConstMat a(A, M, K), b(B, K, N);
    detail::assign_or_add(detail::Mat(C, M, N), a * b, accumulate);
}

// C[M,N] (+)= A^T * B, where A is stored as [K, M] and B as [K, N]
inline void gemm_tn(int64_t M, int64_t N, int64_t K, const float* A, const float* B, float* C,
                    bool accumulate) {
    detail::ConstMat a(A, K, M), b(B, K, N);
    detail::assign_or_add(detail::Mat(C, M, N), a.transpose() * b, accumulate);
}

// C[M,N] (+)= A * B^T, where A is stored as [M, K] and B as [N, K]
inline void gemm_nt(int64_t M, int64_t N, int64_t K, const float* A, const float* B, float* C,
                    bool accumulate) {
    detail::ConstMat a(A, M, K), b(B, N, K);
    detail::assign_or_add(detail::Mat(C, M, N), a * b.transpose(), accumulate);
}

// B[cols, rows] = A[rows, cols]^T (both row-major, not overlapping).
inline void transpose(int64_t rows, int64_t cols, const float* A, float* B) {
    detail::Mat(B, cols, rows) = detail::ConstMat(A, rows, cols).transpose();
}

}  // namespace speq::kernels
