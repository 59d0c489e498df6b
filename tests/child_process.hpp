// Test helper: run a program as a child process, read its output, send it signals, reap it
// (posix_spawn and a pipe). Used by the tests that run speq-train as a user would
// (test_faults.cpp) and under mpirun (test_distributed.cpp).
#pragma once

#include <poll.h>
#include <signal.h>
#include <spawn.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cerrno>
#include <chrono>
#include <string>
#include <vector>

#include <doctest/doctest.h>

extern char** environ;

namespace speq::testing {

// A child process whose stdout and stderr come back through one pipe.
struct Child {
    pid_t pid = -1;
    int out = -1;
    std::string output;

    // Reads until `needle` is in the output (true), or EOF / `seconds` passed (false).
    bool read_until(const std::string& needle, double seconds = 60) {
        pump(seconds, &needle);
        return output.find(needle) != std::string::npos;
    }
    // Reads to EOF and reaps the child; returns the wait status. A child that hangs is killed.
    int finish(double seconds = 120) {
        if (!pump(seconds, nullptr)) {
            ::kill(pid, SIGKILL);
            FAIL_CHECK("the child process did not finish within ", seconds, " s; output so far:\n", output);
        }
        ::close(out);
        int status = 0;
        ::waitpid(pid, &status, 0);
        return status;
    }

private:
    // Appends what the child writes until `needle` shows up (if given) or EOF; false on timeout.
    bool pump(double seconds, const std::string* needle) {
        const auto deadline = std::chrono::steady_clock::now() + std::chrono::duration<double>(seconds);
        while (!(needle && output.find(*needle) != std::string::npos)) {
            const auto left =
                std::chrono::duration_cast<std::chrono::milliseconds>(deadline - std::chrono::steady_clock::now());
            if (left.count() <= 0) return false;
            pollfd p{out, POLLIN, 0};
            if (::poll(&p, 1, static_cast<int>(left.count())) <= 0) continue;
            char buf[4096];
            const ssize_t n = ::read(out, buf, sizeof buf);
            if (n == 0 || (n < 0 && errno != EINTR)) return true;  // EOF
            if (n > 0) output.append(buf, static_cast<size_t>(n));
        }
        return true;
    }
};

// Starts argv[0] with argv, stdout and stderr into a pipe, SIGINT/SIGTERM at their defaults
// (whatever the test runner left ignored).
inline Child spawn(const std::vector<std::string>& args) {
    int fds[2];
    REQUIRE(::pipe(fds) == 0);
    posix_spawn_file_actions_t actions;
    posix_spawn_file_actions_init(&actions);
    posix_spawn_file_actions_addclose(&actions, fds[0]);
    posix_spawn_file_actions_adddup2(&actions, fds[1], 1);
    posix_spawn_file_actions_adddup2(&actions, fds[1], 2);
    posix_spawn_file_actions_addclose(&actions, fds[1]);
    posix_spawnattr_t attr;
    posix_spawnattr_init(&attr);
    sigset_t defaults;
    sigemptyset(&defaults);
    sigaddset(&defaults, SIGINT);
    sigaddset(&defaults, SIGTERM);
    sigaddset(&defaults, SIGXFSZ);
    posix_spawnattr_setsigdefault(&attr, &defaults);
    sigset_t none;
    sigemptyset(&none);
    posix_spawnattr_setsigmask(&attr, &none);
    posix_spawnattr_setflags(&attr, POSIX_SPAWN_SETSIGDEF | POSIX_SPAWN_SETSIGMASK);
    std::vector<char*> argv;
    for (const std::string& a : args) argv.push_back(const_cast<char*>(a.c_str()));
    argv.push_back(nullptr);
    Child c;
    const int rc = posix_spawn(&c.pid, argv[0], &actions, &attr, argv.data(), environ);
    posix_spawn_file_actions_destroy(&actions);
    posix_spawnattr_destroy(&attr);
    ::close(fds[1]);
    REQUIRE_MESSAGE(rc == 0, "cannot start ", args[0]);
    c.out = fds[0];
    return c;
}

// Runs to the end; returns the exit code (or 128 + signal) and the output.
inline int run(const std::vector<std::string>& args, std::string* output = nullptr) {
    Child c = spawn(args);
    const int status = c.finish();
    if (output) *output = c.output;
    return WIFEXITED(status) ? WEXITSTATUS(status) : 128 + WTERMSIG(status);
}

}  // namespace speq::testing
