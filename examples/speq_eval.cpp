// speq-eval: test accuracy of a checkpoint, at its own precision or another activation precision.
//
//   speq-eval --checkpoint FILE [--data_dir DIR] [--act-bits N]
//
// The model, data set and quantization come from the config stored in the checkpoint; --data_dir
// overrides where the data set is read from; --act-bits N runs every body activation quantizer at
// N bits (1..8, or 32 for full precision). The last line printed is a JSON object with "top1".
#include <speq/speq.hpp>
#include <speq/train/trainer.hpp>

#include <cstdio>
#include <string>

static const char* kUsage = "usage: speq-eval --checkpoint FILE [--data_dir DIR] [--act-bits N]\n";

int main(int argc, char** argv) {
    using namespace speq;
    try {
        std::string checkpoint, data_dir;
        int act_bits = 0;
        for (int i = 1; i < argc; ++i) {
            const std::string arg = argv[i];
            auto value = [&]() -> std::string {
                SPEQ_CHECK(i + 1 < argc, "speq-eval: ", arg, " needs a value\n", kUsage);
                return argv[++i];
            };
            if (arg == "--checkpoint") checkpoint = value();
            else if (arg == "--data_dir" || arg == "--data-dir") data_dir = value();
            else if (arg == "--act-bits" || arg == "--act_bits") {
                const std::string v = value();
                try {
                    act_bits = std::stoi(v);
                } catch (...) {
                    fail("speq-eval: --act-bits '", v, "' is not a number");
                }
                quant::check_bits("speq-eval: --act-bits", act_bits);
            } else if (arg == "--help" || arg == "-h") {
                std::fputs(kUsage, stdout);
                return 0;
            } else {
                fail("speq-eval: unknown argument '", arg, "'\n", kUsage);
            }
        }
        SPEQ_CHECK(!checkpoint.empty(), "speq-eval: --checkpoint is required\n", kUsage);

        io::TensorFile file = io::load_safetensors(checkpoint);
        io::TrainConfig config = train::checkpoint_config(file, checkpoint);
        train::DataSets data = train::load_data(config, data_dir);
        auto model = train::build_model(config.model, config, data.train, 0);
        nn::configure_quantization(*model, train::quant_config(config));
        train::load_model_state(file, *model, checkpoint);
        if (act_bits > 0) {
            // Body layers only: those at the config's act_bits (the classifier's input keeps its bits).
            for (auto& [name, a] : nn::named_act_quants(*model))
                if (a->bits() == config.act_bits) a->set_bits(act_bits);
        }
        const int shown_bits = act_bits > 0 ? act_bits : config.act_bits;
        train::EvalResult r = train::evaluate(*model, data.test, data.normalization);
        std::printf("%s: test top-1 %.2f%% (%lld images, weights %d bits, activations %d bits)\n", checkpoint.c_str(),
                    100.0 * r.top1, static_cast<long long>(r.images), config.weight_bits, shown_bits);
        nlohmann::json j = {{"checkpoint", checkpoint}, {"top1", r.top1}, {"loss", r.loss}, {"images", r.images},
                            {"weight_bits", config.weight_bits}, {"act_bits", shown_bits}};
        std::printf("%s\n", j.dump().c_str());
        return 0;
    } catch (const std::exception& e) {
        std::fprintf(stderr, "speq-eval: error: %s\n", e.what());
        return 1;
    }
}
