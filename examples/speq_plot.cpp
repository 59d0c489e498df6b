// speq-plot: training curves of one or more runs as a self-contained SVG.
//
//   speq-plot runs/qat/metrics.jsonl runs/speq/metrics.jsonl -o curves.svg [--title TEXT]
//
// Two panels (training loss, test top-1 per epoch), one line per file, labelled by method and
// bits from the metrics lines. The drawing is train::curves_svg (speq/train/plot.hpp).
#include <speq/io/atomic_file.hpp>
#include <speq/train/plot.hpp>

#include <cstdio>
#include <string>
#include <vector>

static const char* kUsage = "usage: speq-plot METRICS.jsonl [MORE.jsonl ...] [-o OUT.svg] [--title TEXT]\n";

int main(int argc, char** argv) {
    using namespace speq;
    try {
        std::vector<std::string> inputs;
        std::string output = "curves.svg", title;
        for (int i = 1; i < argc; ++i) {
            const std::string arg = argv[i];
            auto value = [&]() -> std::string {
                SPEQ_CHECK(i + 1 < argc, "speq-plot: ", arg, " needs a value\n", kUsage);
                return argv[++i];
            };
            if (arg == "-o" || arg == "--output") output = value();
            else if (arg == "--title") title = value();
            else if (arg == "--help" || arg == "-h") {
                std::fputs(kUsage, stdout);
                return 0;
            } else if (arg.size() > 1 && arg[0] == '-') {
                fail("speq-plot: unknown option '", arg, "'\n", kUsage);
            } else {
                inputs.push_back(arg);
            }
        }
        SPEQ_CHECK(!inputs.empty(), "speq-plot: no metrics file given\n", kUsage);
        std::vector<train::Curve> runs;
        for (const std::string& path : inputs) runs.push_back(train::read_metrics(path));
        io::write_file_atomically(output, train::curves_svg(runs, title));
        std::printf("speq-plot: wrote %s (%zu run%s)\n", output.c_str(), runs.size(), runs.size() == 1 ? "" : "s");
        return 0;
    } catch (const std::exception& e) {
        std::fprintf(stderr, "speq-plot: error: %s\n", e.what());
        return 1;
    }
}
