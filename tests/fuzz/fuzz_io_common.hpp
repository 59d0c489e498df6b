// Shared by the data-set harnesses: the readers take paths, so each input is written to files in
// a private folder (on /dev/shm when there is one: a RAM file system, so a write + read costs
// microseconds, not a disk access). That costs about as much as the parsing itself: these
// harnesses run fewer executions per second than the in-memory ones.
#pragma once

#include <unistd.h>
#include <zlib.h>

#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <filesystem>
#include <string>
#include <vector>

namespace fuzz {

inline std::filesystem::path& work_dir_path() {
    static std::filesystem::path dir;
    return dir;
}

// The private folder of this process, made on first use and removed at exit.
inline const std::filesystem::path& work_dir(const char* name) {
    std::filesystem::path& dir = work_dir_path();
    if (dir.empty()) {
        const char* base = std::filesystem::is_directory("/dev/shm") ? "/dev/shm" : "/tmp";
        dir = std::filesystem::path(base) / (std::string("speq-fuzz-") + name + "-" + std::to_string(::getpid()));
        std::filesystem::create_directories(dir);
        std::atexit([] {
            std::error_code ec;
            std::filesystem::remove_all(work_dir_path(), ec);
        });
    }
    return dir;
}

inline void write_file(const std::filesystem::path& path, const uint8_t* data, size_t size) {
    std::FILE* f = std::fopen(path.c_str(), "wb");
    if (!f) std::abort();
    if (size > 0 && std::fwrite(data, 1, size, f) != size) std::abort();
    std::fclose(f);
}

// gzip-compressed bytes (what `gzip` writes), so the fuzzer can reach the IDX checks behind
// the decompression without having to produce valid deflate streams itself.
inline std::vector<uint8_t> gzip(const uint8_t* data, size_t size) {
    z_stream z{};
    if (deflateInit2(&z, 1, Z_DEFLATED, 15 + 16, 8, Z_DEFAULT_STRATEGY) != Z_OK) std::abort();
    std::vector<uint8_t> out(deflateBound(&z, static_cast<uLong>(size)) + 32);
    z.next_in = const_cast<Bytef*>(data);
    z.avail_in = static_cast<uInt>(size);
    z.next_out = out.data();
    z.avail_out = static_cast<uInt>(out.size());
    if (deflate(&z, Z_FINISH) != Z_STREAM_END) std::abort();
    out.resize(z.total_out);
    deflateEnd(&z);
    return out;
}

}  // namespace fuzz
