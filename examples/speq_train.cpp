// speq-train: train a model as a JSON config describes (see configs/ and docs of io/config.hpp).
//
//   speq-train --config FILE [--set key=value]... [--resume]
//   speq-train --print-config-reference      every key, its type, default and allowed values
//
// --set overrides a key, nested keys by dots: --set speq.u=0.4 --set epochs=2.
// --resume continues the run in out_dir from its last.safetensors.
// Ctrl-C or SIGTERM: the current step finishes, last.safetensors is written, and the program
// prints the command that continues the run and exits with 128 + the signal (130, 143).
// A second Ctrl-C stops at once.
//
// Built with MPI (cmake -DSPEQ_MPI=ON), `mpirun -np N speq-train ...` trains one model data-
// parallel over N processes (docs/distributed.md): each takes a slice of every batch, rank 0
// writes the files. An error on any rank ends the whole job (MPI_Abort), never a hang.
#include <speq/speq.hpp>
#include <speq/train/trainer.hpp>
#ifdef SPEQ_HAVE_MPI
#include <speq/dist/mpi_communicator.hpp>
#endif

#include <cstdio>
#include <string>
#include <vector>

// `arg` as the shell reads it back: as is when it is made of safe characters, else in '...'.
static std::string shell_quote(const std::string& arg) {
    const std::string safe = "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789_-./=:,+@%";
    if (!arg.empty() && arg.find_first_not_of(safe) == std::string::npos) return arg;
    std::string quoted = "'";
    for (char c : arg) quoted += c == '\'' ? std::string("'\\''") : std::string(1, c);
    return quoted + "'";
}

// This very command line, with --resume added if it was not there.
static std::string resume_command(int argc, char** argv) {
    std::string command;
    bool has_resume = false;
    for (int i = 0; i < argc; ++i) {
        command += (i ? " " : "") + shell_quote(argv[i]);
        has_resume = has_resume || std::string(argv[i]) == "--resume";
    }
    return has_resume ? command : command + " --resume";
}

static const char* kUsage =
    "usage: speq-train --config FILE [--set key=value]... [--resume]\n"
    "       speq-train --print-config-reference\n";

int main(int argc, char** argv) {
#ifdef SPEQ_HAVE_MPI
    speq::dist::MpiSession mpi(argc, argv);
    speq::dist::MpiCommunicator world;
    speq::train::Communicator* ranks = world.size() > 1 ? &world : nullptr;
#else
    speq::train::Communicator* ranks = nullptr;
#endif
    const std::string who = ranks ? "speq-train: rank " + std::to_string(ranks->rank()) + ": " : "speq-train: ";
    const bool rank0 = !ranks || ranks->rank() == 0;
    try {
        std::string config_path;
        std::vector<std::string> overrides;
        bool resume = false;
        for (int i = 1; i < argc; ++i) {
            const std::string arg = argv[i];
            auto value = [&]() -> std::string {
                SPEQ_CHECK(i + 1 < argc, "speq-train: ", arg, " needs a value\n", kUsage);
                return argv[++i];
            };
            if (arg == "--config") config_path = value();
            else if (arg == "--set") overrides.push_back(value());
            else if (arg == "--resume") resume = true;
            else if (arg == "--print-config-reference") {
                std::fputs(speq::io::config_reference_markdown().c_str(), stdout);
                return 0;
            } else if (arg == "--help" || arg == "-h") {
                std::fputs(kUsage, stdout);
                return 0;
            } else {
                speq::fail("speq-train: unknown argument '", arg, "'\n", kUsage);
            }
        }
        SPEQ_CHECK(!config_path.empty(), "speq-train: --config is required\n", kUsage);
        speq::io::TrainConfig config = speq::io::load_config(config_path, overrides);
        speq::train::Trainer trainer(config, resume, ranks);
        speq::train::RunSummary s = trainer.run();
        if (rank0)
            std::printf("done: test top-1 %.2f%% after %lld steps in %s; results in %s\n", 100.0 * s.test_top1,
                    static_cast<long long>(s.steps), speq::train::format_duration(s.wall_seconds).c_str(),
                    config.out_dir.c_str());
        return 0;
    } catch (const speq::train::Interrupted& e) {  // every rank stopped at the same step
        if (rank0)
            std::fprintf(stderr, "speq-train: %s\nspeq-train: to resume: %s\n", e.what(), resume_command(argc, argv).c_str());
        return e.exit_code();
    } catch (const std::exception& e) {
        std::fprintf(stderr, "%serror: %s\n", who.c_str(), e.what());
        std::fflush(stderr);
        if (ranks) ranks->abort(1);  // the other ranks may be waiting for this one
        return 1;
    }
}
