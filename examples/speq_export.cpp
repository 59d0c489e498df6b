// speq-export: the trained network of a training checkpoint, without its optimizer state, for
// publishing (models/): about 1.1 MB for ResNet-20 instead of 2.2 MB.
//
//   speq-export --checkpoint runs/resnet20_fp_200ep/last.safetensors --out models/resnet20_fp.safetensors
//
// The output keeps the checkpoint's config and position metadata (train::save_model_only), so
// speq-eval evaluates it as it would the checkpoint, and PyTorch loads it by name.
#include <speq/speq.hpp>
#include <speq/train/checkpoint.hpp>

#include <cstdio>
#include <string>

static const char* kUsage = "usage: speq-export --checkpoint FILE --out FILE\n";

int main(int argc, char** argv) {
    using namespace speq;
    try {
        std::string checkpoint, out;
        for (int i = 1; i < argc; ++i) {
            const std::string arg = argv[i];
            auto value = [&]() -> std::string {
                SPEQ_CHECK(i + 1 < argc, "speq-export: ", arg, " needs a value\n", kUsage);
                return argv[++i];
            };
            if (arg == "--checkpoint") checkpoint = value();
            else if (arg == "--out") out = value();
            else if (arg == "--help" || arg == "-h") {
                std::fputs(kUsage, stdout);
                return 0;
            } else {
                fail("speq-export: unknown argument '", arg, "'\n", kUsage);
            }
        }
        SPEQ_CHECK(!checkpoint.empty() && !out.empty(), "speq-export: --checkpoint and --out are required\n", kUsage);
        const io::TensorFile file = io::load_safetensors(checkpoint);
        train::save_model_only(file, checkpoint, out);
        std::printf("%s: model only, from %s\n", out.c_str(), checkpoint.c_str());
        return 0;
    } catch (const std::exception& e) {
        std::fprintf(stderr, "speq-export: error: %s\n", e.what());
        return 1;
    }
}
