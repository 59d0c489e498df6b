// speq/io/atomic_file.hpp: write a file so that a crash, a full disk or an exception never leaves
// a half-written file under the real name.
//
// write_file_atomically(path, ...) writes to a new temporary file in the same folder
// (".NAME.tmp-PID-N", hidden, unique), checks every write, fsyncs it, renames it over `path` (an
// atomic replace on POSIX file systems) and fsyncs the folder so the rename itself is durable.
// On any failure the temporary is removed and an existing file under `path` is left untouched:
// readers see either the old complete file or the new complete file, never a mix.
//
// check_writable_dir(dir) is for the start of a long run: it creates the folder and proves that a
// file can be created there, so a bad out_dir fails in the first second, not after an hour.
//
// POSIX only (open/write/fsync/rename), like the rest of speq's targets.
#pragma once

#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <atomic>
#include <cerrno>
#include <cstdint>
#include <cstring>
#include <filesystem>
#include <functional>
#include <string>
#include <string_view>

#include "speq/core/error.hpp"

namespace speq::io {

namespace detail {

inline std::string errno_text(int err) { return std::strerror(err); }

// write(2) until all n bytes are out; EINTR is retried, anything else (ENOSPC, EIO, EDQUOT...)
// throws naming `path_for_messages` and the system's reason.
inline void write_all(int fd, const void* data, size_t n, const std::string& path_for_messages) {
    const char* p = static_cast<const char*>(data);
    while (n > 0) {
        const ssize_t got = ::write(fd, p, n);
        if (got < 0) {
            if (errno == EINTR) continue;
            fail(path_for_messages, ": write failed: ", errno_text(errno));
        }
        if (got == 0) fail(path_for_messages, ": write failed: wrote 0 bytes");
        p += got;
        n -= static_cast<size_t>(got);
    }
}

// The folder a path lives in ("." for a bare file name).
inline std::filesystem::path parent_dir(const std::filesystem::path& path) {
    std::filesystem::path dir = path.parent_path();
    return dir.empty() ? std::filesystem::path(".") : dir;
}

// Makes a rename in `dir` durable. File systems that cannot fsync a folder (EINVAL) are skipped.
inline void fsync_dir(const std::filesystem::path& dir, const std::string& path_for_messages) {
    const int fd = ::open(dir.c_str(), O_RDONLY | O_DIRECTORY | O_CLOEXEC);
    if (fd < 0) fail(path_for_messages, ": cannot open folder ", dir.string(), " to sync it: ", errno_text(errno));
    const int rc = ::fsync(fd);
    const int err = errno;
    ::close(fd);
    if (rc != 0 && err != EINVAL && err != ENOTSUP)
        fail(path_for_messages, ": cannot sync folder ", dir.string(), ": ", errno_text(err));
}

// Creates a new file next to `path` with a name nobody else uses (O_EXCL), mode 0666 & ~umask
// like any other new file. Returns the descriptor and sets `tmp`; on failure returns -1 with the
// reason in `err`.
inline int try_create_temporary(const std::filesystem::path& path, std::filesystem::path& tmp, int& err) {
    static std::atomic<uint64_t> counter{0};
    for (int attempt = 0; attempt < 100; ++attempt) {
        tmp = parent_dir(path) / ("." + path.filename().string() + ".tmp-" + std::to_string(::getpid()) + "-" +
                                  std::to_string(counter++));
        const int fd = ::open(tmp.c_str(), O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC, 0666);
        if (fd >= 0) return fd;
        err = errno;
        if (err != EEXIST) return -1;
    }
    return -1;
}

inline int create_temporary(const std::filesystem::path& path, std::filesystem::path& tmp) {
    int err = 0;
    const int fd = try_create_temporary(path, tmp, err);
    if (fd < 0)
        fail(path.string(), ": cannot create a file in folder ", parent_dir(path).string(), ": ", errno_text(err));
    return fd;
}

}  // namespace detail

// What the writer callback of write_file_atomically gets: every write is checked.
class FileWriter {
public:
    FileWriter(int fd, std::string path) : fd_(fd), path_(std::move(path)) {}
    void write(const void* data, size_t n) {
        detail::write_all(fd_, data, n, path_);
        written_ += n;
    }
    void write(std::string_view text) { write(text.data(), text.size()); }
    uint64_t bytes_written() const { return written_; }
    const std::string& path() const { return path_; }  // the real (final) path, for messages

private:
    int fd_;
    std::string path_;
    uint64_t written_ = 0;
};

// Writes whatever `writer` writes to `path`, atomically (see the top of this file). Any
// exception from `writer` or from the file system propagates after the temporary is removed.
inline void write_file_atomically(const std::string& path, const std::function<void(FileWriter&)>& writer) {
    namespace fs = std::filesystem;
    SPEQ_CHECK(!path.empty(), "write_file_atomically: empty path");
    SPEQ_CHECK(writer != nullptr, "write_file_atomically: ", path, ": the writer is empty");
    const fs::path target(path);
    std::error_code ec;
    SPEQ_CHECK(!fs::is_directory(target, ec), path, ": is a folder, cannot write a file there");

    fs::path tmp;
    int fd = detail::create_temporary(target, tmp);
    try {
        FileWriter out(fd, path);
        writer(out);
        if (::fsync(fd) != 0) fail(path, ": cannot sync to disk: ", detail::errno_text(errno));
        const int rc = ::close(fd);  // close can report a delayed write error (NFS, quotas)
        fd = -1;
        if (rc != 0) fail(path, ": write failed on close: ", detail::errno_text(errno));
        if (::rename(tmp.c_str(), target.c_str()) != 0)
            fail(path, ": cannot rename the temporary file into place: ", detail::errno_text(errno));
    } catch (...) {
        if (fd >= 0) ::close(fd);
        ::unlink(tmp.c_str());
        throw;
    }
    detail::fsync_dir(detail::parent_dir(target), path);
}

// The same for bytes already in memory.
inline void write_file_atomically(const std::string& path, std::string_view bytes) {
    write_file_atomically(path, [bytes](FileWriter& out) { out.write(bytes); });
}

// Creates `dir` (and its parents) if needed and proves a file can be created in it; throws a
// message naming the folder and the reason otherwise (a parent that is a file, a read-only file
// system, no permission). With min_free_bytes > 0 it also checks the free space.
inline void check_writable_dir(const std::string& dir, uint64_t min_free_bytes = 0) {
    namespace fs = std::filesystem;
    SPEQ_CHECK(!dir.empty(), "output folder: the path is empty");
    std::error_code ec;
    fs::create_directories(dir, ec);
    if (ec) {
        // Name the part of the path that is in the way, the most common mistake.
        for (fs::path p = fs::path(dir); !p.empty() && p != p.root_path(); p = p.parent_path()) {
            std::error_code ec2;
            if (fs::exists(p, ec2) && !fs::is_directory(p, ec2))
                fail("output folder ", dir, ": cannot create it: ", p.string(), " is a file, not a folder");
        }
        fail("output folder ", dir, ": cannot create it: ", ec.message());
    }
    SPEQ_CHECK(fs::is_directory(dir, ec), "output folder ", dir, ": exists but is not a folder");

    fs::path probe;
    int err = 0;
    const int fd = detail::try_create_temporary(fs::path(dir) / ".speq-write-test", probe, err);
    if (fd < 0) fail("output folder ", dir, ": cannot create files there: ", detail::errno_text(err));
    char byte = 0;
    const ssize_t wrote = ::write(fd, &byte, 1);
    err = errno;
    ::close(fd);
    ::unlink(probe.c_str());
    if (wrote != 1) fail("output folder ", dir, ": cannot write there: ", detail::errno_text(err));

    if (min_free_bytes > 0) {
        const fs::space_info space = fs::space(dir, ec);
        if (!ec && space.available < min_free_bytes)
            fail("output folder ", dir, ": only ", space.available, " bytes free, need at least ", min_free_bytes);
    }
}

}  // namespace speq::io
