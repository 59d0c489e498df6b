// speq-eval: test accuracy of a checkpoint, at its own precision or another activation precision.
//
//   speq-eval --checkpoint FILE [--data_dir DIR] [--act-bits N] [--speq-teacher [--teacher-u U] [--teacher-bn batch|running]]
//
// The model, data set and quantization come from the config stored in the checkpoint; --data_dir
// overrides where the data set is read from; --act-bits N runs every body activation quantizer at
// N bits (1..8, or 32 for full precision); the classifier's input keeps the bits it was trained
// with (8 in a W2A2 run, 32 in an FP one). --speq-teacher also measures SPEQ's teacher as training
// runs it (train::evaluate_teacher: the checkpoint config's speq draw, a new bit pattern per batch
// of batch_size images, batch statistics): "teacher_top1" in the JSON; --teacher-u U draws with
// probability U instead of the config's speq.u (0: the student itself, on batch statistics; 1:
// every body activation at speq.high_bits); --teacher-bn overrides speq.teacher_bn likewise. The last line printed is a
// JSON object with "top1".
#include <speq/speq.hpp>
#include <speq/train/trainer.hpp>

#include <cstdio>
#include <string>
#include <vector>

static const char* kUsage = "usage: speq-eval --checkpoint FILE [--data_dir DIR] [--act-bits N] [--speq-teacher [--teacher-u U] [--teacher-bn batch|running]]\n";

int main(int argc, char** argv) {
    using namespace speq;
    try {
        std::string checkpoint, data_dir;
        int act_bits = 0;
        bool speq_teacher = false;
        std::vector<std::string> teacher_overrides;  // "speq.u=0.5": applied to the checkpoint's config
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
            } else if (arg == "--speq-teacher") {
                speq_teacher = true;
            } else if (arg == "--teacher-u" || arg == "--teacher_u") {
                teacher_overrides.push_back("speq.u=" + value());
            } else if (arg == "--teacher-bn" || arg == "--teacher_bn") {
                teacher_overrides.push_back("speq.teacher_bn=" + value());
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
        SPEQ_CHECK(teacher_overrides.empty() || speq_teacher,
                   "speq-eval: --teacher-u and --teacher-bn need --speq-teacher");
        if (!teacher_overrides.empty()) {  // checked by the config's own table: range, allowed names
            nlohmann::json overridden = io::to_json(config);
            for (const std::string& o : teacher_overrides) io::apply_override(overridden, o);
            config = io::config_from_json(overridden, "speq-eval --teacher-u/--teacher-bn");
        }
        train::DataSets data = train::load_data(config, data_dir);
        auto model = train::build_model(config.model, config, data.train, 0);
        nn::configure_quantization(*model, train::quant_config(config));
        train::load_model_state(file, *model, checkpoint);
        if (act_bits > 0) nn::set_body_act_bits(*model, act_bits);  // the classifier's input keeps its bits
        const int shown_bits = act_bits > 0 ? act_bits : config.act_bits;
        train::EvalResult r = train::evaluate(*model, data.test, data.normalization);
        std::printf("%s: test top-1 %.2f%% (%lld images, weights %d bits, activations %d bits)\n", checkpoint.c_str(),
                    100.0 * r.top1, static_cast<long long>(r.images), config.weight_bits, shown_bits);
        nlohmann::json j = {{"checkpoint", checkpoint}, {"top1", r.top1}, {"loss", r.loss}, {"images", r.images},
                            {"weight_bits", config.weight_bits}, {"act_bits", shown_bits}};
        if (speq_teacher) {
            SPEQ_CHECK(act_bits == 0, "speq-eval: --speq-teacher draws the teacher's bits from the student's ",
                       config.act_bits, "; it does not combine with --act-bits");
            SPEQ_CHECK(config.act_bits < 32, "speq-eval: --speq-teacher needs a quantized checkpoint (act_bits ",
                       config.act_bits, ")");
            Rng rng(static_cast<uint64_t>(config.seed));
            const train::EvalResult t = train::evaluate_teacher(*model, data.test, data.normalization, config.batch_size,
                                                                config.act_bits, config.speq, rng);
            std::printf("SPEQ teacher (u %.2f, high bits %d, batch norm on %s statistics, batches of %lld): test top-1 %.2f%%\n",
                        config.speq.u, config.speq.high_bits, io::name_of(config.speq.teacher_bn),
                        static_cast<long long>(config.batch_size), 100.0 * t.top1);
            j["teacher_u"] = config.speq.u;
            j["teacher_bn"] = io::name_of(config.speq.teacher_bn);
            j["teacher_top1"] = t.top1;
            j["teacher_loss"] = t.loss;
        }
        std::printf("%s\n", j.dump().c_str());
        return 0;
    } catch (const std::exception& e) {
        std::fprintf(stderr, "speq-eval: error: %s\n", e.what());
        return 1;
    }
}
