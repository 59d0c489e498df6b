// speq/train/interrupt.hpp: Ctrl-C (SIGINT) and SIGTERM during training stop it cleanly.
//
//   train::InterruptGuard guard;          // installs the handlers; the destructor restores the old ones
//   for (...) { one_step(); if (guard.requested()) { save_checkpoint(...); throw ...; } }
//
// While a guard lives, the first SIGINT or SIGTERM only sets a flag: the training loop finishes
// its step, writes a checkpoint and stops (train::Interrupted). A second one means "now": the
// handler puts back the default action and re-raises the signal, so the process dies at once, as
// without speq (a checkpoint being written then stays a hidden temporary file; the real name is
// untouched, see io/atomic_file.hpp).
//
// The guard also ignores SIGXFSZ: past a file-size limit (ulimit -f) a write then fails with
// EFBIG, which the checkpoint writer reports as an error naming the file, instead of the signal
// killing the process mid-write.
//
// The handler only touches a lock-free std::atomic<int> (async-signal-safe, and visible to every
// thread: the signal may land on the data loader's thread or an OpenMP worker) and calls the
// async-signal-safe write(2), sigaction(2) and raise(3). Guards may nest: each restores what it
// found; they share one flag. A signal that was ignored when the guard was made stays ignored
// (a non-interactive shell starts background jobs with SIGINT ignored: Ctrl-C is not for them).
#pragma once

#include <signal.h>
#include <unistd.h>

#include <atomic>
#include <cerrno>
#include <cstring>
#include <string>

#include "speq/core/error.hpp"

namespace speq::train {

namespace detail {

static_assert(ATOMIC_INT_LOCK_FREE == 2, "the signal flag must be lock-free to be async-signal-safe");
inline std::atomic<int> g_interrupt_signal{0};  // 0, or the signal that asked to stop
inline std::atomic<int> g_guard_depth{0};       // guards alive; the outermost clears the flag

extern "C" inline void speq_interrupt_handler(int sig) {
    const int saved_errno = errno;  // a handler must not change errno under the interrupted code
    if (g_interrupt_signal.exchange(sig) != 0) {
        static const char text[] = "\nspeq: second interrupt, stopping now without a checkpoint\n";
        ssize_t ignored = ::write(STDERR_FILENO, text, sizeof text - 1);
        (void)ignored;
        struct sigaction dfl;
        std::memset(&dfl, 0, sizeof dfl);
        dfl.sa_handler = SIG_DFL;
        sigemptyset(&dfl.sa_mask);
        ::sigaction(sig, &dfl, nullptr);
        ::raise(sig);  // blocked inside this handler: delivered, with the default action, on return
    } else {
        static const char on_int[] = "\nspeq: SIGINT received: finishing this step and writing a checkpoint "
                                     "(Ctrl-C again to stop at once)\n";
        static const char on_term[] = "\nspeq: SIGTERM received: finishing this step and writing a checkpoint "
                                      "(send it again to stop at once)\n";
        const bool term = sig == SIGTERM;
        ssize_t ignored = ::write(STDERR_FILENO, term ? on_term : on_int, (term ? sizeof on_term : sizeof on_int) - 1);
        (void)ignored;
    }
    errno = saved_errno;
}

}  // namespace detail

// "SIGINT", "SIGTERM", or "signal N".
inline std::string signal_name(int sig) {
    switch (sig) {
        case SIGINT: return "SIGINT";
        case SIGTERM: return "SIGTERM";
        case SIGHUP: return "SIGHUP";
        default: return "signal " + std::to_string(sig);
    }
}

class InterruptGuard {
public:
    // Installs the handlers (SA_RESTART: system calls interrupted by the first signal resume
    // instead of failing with EINTR); the outermost guard starts with the flag cleared.
    InterruptGuard() {
        if (detail::g_guard_depth.fetch_add(1) == 0) detail::g_interrupt_signal.store(0);
        struct sigaction on_signal;
        std::memset(&on_signal, 0, sizeof on_signal);
        on_signal.sa_handler = detail::speq_interrupt_handler;
        sigemptyset(&on_signal.sa_mask);
        sigaddset(&on_signal.sa_mask, SIGINT);  // one handler at a time, whichever signal came
        sigaddset(&on_signal.sa_mask, SIGTERM);
        on_signal.sa_flags = SA_RESTART;
        install(SIGINT, on_signal, old_int_, /*unless_ignored=*/true);
        install(SIGTERM, on_signal, old_term_, /*unless_ignored=*/true);
        struct sigaction ignore;
        std::memset(&ignore, 0, sizeof ignore);
        ignore.sa_handler = SIG_IGN;
        sigemptyset(&ignore.sa_mask);
        install(SIGXFSZ, ignore, old_xfsz_, false);
    }
    ~InterruptGuard() {
        ::sigaction(SIGXFSZ, &old_xfsz_, nullptr);
        ::sigaction(SIGTERM, &old_term_, nullptr);
        ::sigaction(SIGINT, &old_int_, nullptr);
        detail::g_guard_depth.fetch_sub(1);
    }
    InterruptGuard(const InterruptGuard&) = delete;
    InterruptGuard& operator=(const InterruptGuard&) = delete;

    // True once SIGINT or SIGTERM arrived (since the outermost guard was made).
    bool requested() const { return detail::g_interrupt_signal.load() != 0; }
    // The signal that asked to stop, 0 if none.
    int signal() const { return detail::g_interrupt_signal.load(); }

private:
    static void install(int sig, const struct sigaction& action, struct sigaction& old, bool unless_ignored) {
        if (::sigaction(sig, nullptr, &old) != 0) fail("InterruptGuard: cannot read the handler of signal ", sig);
        if (unless_ignored && !(old.sa_flags & SA_SIGINFO) && old.sa_handler == SIG_IGN) return;
        if (::sigaction(sig, &action, nullptr) != 0) fail("InterruptGuard: cannot install a handler for signal ", sig);
    }
    struct sigaction old_int_, old_term_, old_xfsz_;
};

// Thrown by the trainer after an interruption, once the checkpoint is written: a speq::Error
// (so a generic handler prints a useful message), with what a program needs to say how to resume.
class Interrupted : public Error {
public:
    Interrupted(const std::string& message, int sig, std::string checkpoint)
        : Error(message), signal_(sig), checkpoint_(std::move(checkpoint)) {}
    int signal() const { return signal_; }                       // SIGINT, SIGTERM
    const std::string& checkpoint() const { return checkpoint_; }  // the file --resume reads
    int exit_code() const { return 128 + signal_; }               // the shell's convention: 130, 143

private:
    int signal_;
    std::string checkpoint_;
};

}  // namespace speq::train
