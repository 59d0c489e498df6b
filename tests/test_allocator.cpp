// The Tensor storage cache (core/allocator.hpp): reuse of freed large blocks, alignment, bounds.
#include <doctest/doctest.h>

#include <cstdint>

#include "gradcheck.hpp"

using namespace speq;

TEST_CASE("tensor cache: a freed large block is reused for the same size, small ones are not cached") {
    const TensorCacheStats before = tensor_cache_stats();
    const float* first = nullptr;
    {
        Tensor big = Tensor::uninitialized({512, 1024});  // 2 MiB
        first = big.data();
        CHECK(reinterpret_cast<uintptr_t>(first) % kAlignment == 0);
    }
    if (!before.enabled) return;  // SPEQ_TENSOR_CACHE=0, -DSPEQ_NO_TENSOR_CACHE or ASan: nothing cached
    CHECK(tensor_cache_stats().cached_bytes >= size_t(512) * 1024 * 4);
    Tensor again = Tensor::zeros({1024, 512});  // same byte size, other shape: the same block, zeroed
    CHECK(again.data() == first);
    CHECK(tensor_cache_stats().hits == before.hits + 1);
    for (int64_t i = 0; i < again.numel(); i += 4099) CHECK(again[i] == 0.0f);

    const size_t cached = tensor_cache_stats().cached_bytes;
    { Tensor small = Tensor::zeros({16}); }
    CHECK(tensor_cache_stats().cached_bytes == cached);

    clear_tensor_cache();
    CHECK(tensor_cache_stats().cached_bytes == 0);
}
