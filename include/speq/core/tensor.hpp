// speq/core/tensor.hpp: a dense float32 array with a shape. Plain data, no autodiff.
//
// Storage is contiguous, row-major (NCHW for images, [rows, cols] for matrices) and 64-byte
// aligned so SIMD loads never straddle a cache line. A Tensor owns its storage: copying copies
// the numbers (like std::vector), moving is cheap. Large blocks are reused through a small cache
// (core/allocator.hpp). Eigen maps view the same memory for the math.
#pragma once

// GCC 12 warns "__Y may be used uninitialized" inside its own AVX-512 intrinsics header
// (GCC bug 105593, fixed in GCC 13). Include the intrinsics first with that warning off, so the
// false positive does not bury real warnings in every program that includes speq.
#if defined(__GNUC__) && !defined(__clang__) && defined(__x86_64__)
#pragma GCC diagnostic push
#pragma GCC diagnostic ignored "-Wmaybe-uninitialized"
#pragma GCC diagnostic ignored "-Wuninitialized"
#include <immintrin.h>
#pragma GCC diagnostic pop
#endif

// speq parallelizes with its own fixed work partition (see threads.hpp); Eigen's GEMM picks its
// blocking from the thread count, which would make results depend on it. So Eigen stays serial.
#ifndef EIGEN_DONT_PARALLELIZE
#define EIGEN_DONT_PARALLELIZE
#endif
#include <Eigen/Core>

#include <algorithm>
#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <initializer_list>
#include <memory>
#include <numeric>
#include <utility>

#include "speq/core/allocator.hpp"
#include "speq/core/error.hpp"

namespace speq {

using MatrixMap = Eigen::Map<Eigen::Matrix<float, Eigen::Dynamic, Eigen::Dynamic, Eigen::RowMajor>,
                             Eigen::Aligned64>;
using ConstMatrixMap =
    Eigen::Map<const Eigen::Matrix<float, Eigen::Dynamic, Eigen::Dynamic, Eigen::RowMajor>,
               Eigen::Aligned64>;
using VectorMap = Eigen::Map<Eigen::VectorXf, Eigen::Aligned64>;
using ConstVectorMap = Eigen::Map<const Eigen::VectorXf, Eigen::Aligned64>;

// Number of elements of a shape; every dimension must be >= 0.
inline int64_t numel_of(const Shape& shape) {
    int64_t n = 1;
    for (int64_t d : shape) {
        SPEQ_CHECK(d >= 0, "tensor: negative dimension in shape ", to_string(shape));
        n *= d;
    }
    return n;
}

namespace detail {
// Gives the block back to the allocator (core/allocator.hpp), which keys its cache by size.
struct AlignedFree {
    size_t bytes = 0;
    void operator()(float* p) const { release_bytes(p, bytes); }
};
using AlignedStorage = std::unique_ptr<float[], AlignedFree>;

inline AlignedStorage allocate_floats(int64_t count) {
    if (count == 0) return nullptr;
    // aligned_alloc wants the size to be a multiple of the alignment.
    size_t bytes = (static_cast<size_t>(count) * sizeof(float) + kAlignment - 1) / kAlignment * kAlignment;
    return AlignedStorage(static_cast<float*>(allocate_bytes(bytes)), AlignedFree{bytes});
}
}  // namespace detail

class Tensor {
public:
    Tensor() = default;

    // A zero-filled tensor of the given shape.
    explicit Tensor(Shape shape) : shape_(std::move(shape)), numel_(numel_of(shape_)) {
        data_ = detail::allocate_floats(numel_);
        fill(0.0f);
    }

    static Tensor zeros(Shape shape) { return Tensor(std::move(shape)); }
    // Storage left unwritten: for outputs that a kernel overwrites entirely (saves a pass).
    static Tensor uninitialized(Shape shape) {
        Tensor t;
        t.shape_ = std::move(shape);
        t.numel_ = numel_of(t.shape_);
        t.data_ = detail::allocate_floats(t.numel_);
        return t;
    }
    static Tensor full(Shape shape, float value) {
        Tensor t(std::move(shape));
        t.fill(value);
        return t;
    }
    // Tensor::of({2, 2}, {1, 2, 3, 4}): a small tensor written out by hand (tests, examples).
    static Tensor of(Shape shape, std::initializer_list<float> values) {
        Tensor t(std::move(shape));
        SPEQ_CHECK(static_cast<int64_t>(values.size()) == t.numel(), "Tensor::of: shape ",
                   to_string(t.shape()), " needs ", t.numel(), " values, got ", values.size());
        std::copy(values.begin(), values.end(), t.data());
        return t;
    }

    Tensor(const Tensor& other) : shape_(other.shape_), numel_(other.numel_) {
        data_ = detail::allocate_floats(numel_);
        if (numel_) std::memcpy(data_.get(), other.data_.get(), sizeof(float) * numel_);
    }
    Tensor& operator=(const Tensor& other) {
        if (this != &other) *this = Tensor(other);
        return *this;
    }
    Tensor(Tensor&&) noexcept = default;
    Tensor& operator=(Tensor&&) noexcept = default;

    const Shape& shape() const { return shape_; }
    int rank() const { return static_cast<int>(shape_.size()); }
    // dim(i) with Python-style negative indices: dim(-1) is the last dimension.
    int64_t dim(int i) const {
        int r = rank();
        SPEQ_CHECK(i >= -r && i < r, "tensor: dimension ", i, " out of range for shape ",
                   to_string(shape_));
        return shape_[i < 0 ? i + r : i];
    }
    int64_t numel() const { return numel_; }
    bool empty() const { return numel_ == 0 && shape_.empty(); }

    float* data() { return data_.get(); }
    const float* data() const { return data_.get(); }
    float& operator[](int64_t i) { return data_[i]; }
    float operator[](int64_t i) const { return data_[i]; }

    void fill(float value) { std::fill(data(), data() + numel_, value); }

    // Same numbers, new shape with the same element count.
    Tensor reshaped(Shape shape) && {
        SPEQ_CHECK(numel_of(shape) == numel_, "reshape: cannot view ", to_string(shape_), " as ",
                   to_string(shape));
        shape_ = std::move(shape);
        return std::move(*this);
    }

    // Eigen views of the storage. matrix(r, c) views it as r x c row-major; r * c == numel().
    VectorMap vec() { return VectorMap(data(), numel_); }
    ConstVectorMap vec() const { return ConstVectorMap(data(), numel_); }
    MatrixMap matrix(int64_t rows, int64_t cols) {
        check_matrix(rows, cols);
        return MatrixMap(data(), rows, cols);
    }
    ConstMatrixMap matrix(int64_t rows, int64_t cols) const {
        check_matrix(rows, cols);
        return ConstMatrixMap(data(), rows, cols);
    }

private:
    void check_matrix(int64_t rows, int64_t cols) const {
        SPEQ_CHECK(rows * cols == numel_, "tensor: cannot view ", to_string(shape_), " as a ",
                   rows, "x", cols, " matrix");
    }

    Shape shape_;
    int64_t numel_ = 0;
    detail::AlignedStorage data_;
};

inline bool same_shape(const Tensor& a, const Tensor& b) { return a.shape() == b.shape(); }

}  // namespace speq
