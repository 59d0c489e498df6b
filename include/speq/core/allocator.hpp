// speq/core/allocator.hpp: where Tensor storage comes from: 64-byte aligned blocks, with a small
// cache of freed large blocks for reuse.
//
//   void* allocate_bytes(bytes)        a 64-byte aligned block of `bytes` (a multiple of 64)
//   void release_bytes(p, bytes)       gives it back (to the cache, or to the system)
//   void clear_tensor_cache()          frees every cached block
//   TensorCacheStats tensor_cache_stats()
//
// Why a cache: a training step allocates and frees the same large activation buffers (MBs each)
// every step. glibc serves such sizes with fresh mmap'd pages, and touching them costs a page
// fault and a kernel page clear per 4 KiB: a measurable part of a ResNet step. A freed block of
// at least kMinCachedBytes goes onto a free list keyed by its exact size; the next request of that
// size takes it back. Sizes repeat exactly from step to step, so nearly every request hits.
// The cache is bounded (SPEQ_TENSOR_CACHE_MIB, default 1024 MiB of idle blocks); beyond that,
// blocks go back to the system. Thread-safe (one mutex; allocations are few and large).
//
// Turned off (every block goes straight back to the system) when:
//   - the environment variable SPEQ_TENSOR_CACHE is "0" (read once, at the first allocation);
//   - compiled with -DSPEQ_NO_TENSOR_CACHE;
//   - compiled with AddressSanitizer: reused blocks would hide use-after-free from it.
#pragma once

#include <cstddef>
#include <cstdlib>
#include <mutex>
#include <string>
#include <unordered_map>
#include <vector>

#include "speq/core/error.hpp"

#if defined(__SANITIZE_ADDRESS__)
#define SPEQ_ASAN 1
#elif defined(__has_feature)
#if __has_feature(address_sanitizer)
#define SPEQ_ASAN 1
#endif
#endif

namespace speq {

inline constexpr size_t kAlignment = 64;

struct TensorCacheStats {
    bool enabled = false;
    size_t cached_bytes = 0;  // idle blocks held now
    size_t hits = 0, misses = 0;
};

namespace detail {

// Blocks smaller than this go straight to malloc: glibc reuses small blocks well already.
inline constexpr size_t kMinCachedBytes = size_t(64) << 10;

class BlockCache {
public:
    BlockCache() {
#if defined(SPEQ_NO_TENSOR_CACHE) || defined(SPEQ_ASAN)
        enabled_ = false;
#else
        const char* flag = std::getenv("SPEQ_TENSOR_CACHE");
        enabled_ = !(flag && std::string(flag) == "0");
        if (const char* mib = std::getenv("SPEQ_TENSOR_CACHE_MIB")) limit_ = size_t(std::strtoull(mib, nullptr, 10)) << 20;
#endif
    }

    void* allocate(size_t bytes) {
        if (enabled_ && bytes >= kMinCachedBytes) {
            std::lock_guard<std::mutex> lock(mutex_);
            auto it = free_.find(bytes);
            if (it != free_.end() && !it->second.empty()) {
                void* p = it->second.back();
                it->second.pop_back();
                cached_ -= bytes;
                ++hits_;
                return p;
            }
            ++misses_;
        }
        void* p = std::aligned_alloc(kAlignment, bytes);
        if (!p) {
            clear();  // the idle blocks may be what stands in the way
            p = std::aligned_alloc(kAlignment, bytes);
        }
        if (!p) fail("tensor: out of memory allocating ", bytes, " bytes");
        return p;
    }

    void release(void* p, size_t bytes) {
        if (enabled_ && bytes >= kMinCachedBytes) {
            std::lock_guard<std::mutex> lock(mutex_);
            if (cached_ + bytes <= limit_) {
                free_[bytes].push_back(p);
                cached_ += bytes;
                return;
            }
        }
        std::free(p);
    }

    void clear() {
        std::lock_guard<std::mutex> lock(mutex_);
        for (auto& [bytes, blocks] : free_)
            for (void* p : blocks) std::free(p);
        free_.clear();
        cached_ = 0;
    }

    TensorCacheStats stats() {
        std::lock_guard<std::mutex> lock(mutex_);
        return {enabled_, cached_, hits_, misses_};
    }

private:
    bool enabled_ = false;
    size_t limit_ = size_t(1024) << 20;
    std::mutex mutex_;
    std::unordered_map<size_t, std::vector<void*>> free_;  // exact size -> idle blocks
    size_t cached_ = 0, hits_ = 0, misses_ = 0;
};

// Never destroyed: Tensors that outlive main's statics (globals) can still release into it.
inline BlockCache& block_cache() {
    static BlockCache* cache = new BlockCache();
    return *cache;
}

}  // namespace detail

inline void* allocate_bytes(size_t bytes) { return detail::block_cache().allocate(bytes); }
inline void release_bytes(void* p, size_t bytes) {
    if (p) detail::block_cache().release(p, bytes);
}
// Frees every idle cached block (e.g. after training, before a memory-hungry evaluation).
inline void clear_tensor_cache() { detail::block_cache().clear(); }
inline TensorCacheStats tensor_cache_stats() { return detail::block_cache().stats(); }

}  // namespace speq
