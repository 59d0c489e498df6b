// speq/io/config.hpp: the training configuration of speq-train, from JSON and --set overrides.
//
// Every key is ONE row of config_fields() below: dotted key, the struct member it fills (whose
// initializer is the default), type, allowed values, one-line description. Parsing, validation,
// --set, the resolved-config dump (to_json) and the Markdown reference all walk that table, so
// they cannot disagree. Adding a key = a member in the struct + a row in the table.
// Rules that involve several keys are rows of config_rules() (errors and warnings), also
// listed in the reference.
//
// In a file, nested keys are nested objects: {"speq": {"u": 0.4}}; on the command line they are
// dotted: --set speq.u=0.4. Every key is optional. Unknown keys, wrong types and values out of
// range are errors naming the source (file or --set), the key, the value and what is allowed:
//   configs/w2a2.json: speq.u = 1.5 is out of range [0, 1]
//   --set speq.uu=0.4: unknown key 'speq.uu' (did you mean 'speq.u'?)
#pragma once

#include <algorithm>
#include <cerrno>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <fstream>
#include <functional>
#include <limits>
#include <map>
#include <set>
#include <sstream>
#include <string>
#include <type_traits>
#include <utility>
#include <vector>

#include <nlohmann/json.hpp>

#include "speq/core/error.hpp"
#include "speq/quant/bits.hpp"

namespace speq::io {

// ---- the choices, as enums; their names as written in configs -----------------------------

enum class Method { fp, qat, kd, speq };
enum class ModelKind { small_cnn, resnet20, resnet32, resnet56 };
enum class Shortcut { A, B };
enum class DatasetKind { cifar10, fashion_mnist, mnist };
enum class LrSchedule { constant, step, cosine, onecycle };
enum class WeightScale { max_abs, min_l2, lsq };
enum class BitsDraw { binary, uniform };
enum class TeacherNorm { batch, running };
enum class KdLoss { kl, cosine };

template <class E>
struct EnumNames;  // values: {enum value, name} for every value
template <> struct EnumNames<Method> {
    static constexpr std::pair<Method, const char*> values[] = {
        {Method::fp, "fp"}, {Method::qat, "qat"}, {Method::kd, "kd"}, {Method::speq, "speq"}};
};
template <> struct EnumNames<ModelKind> {
    static constexpr std::pair<ModelKind, const char*> values[] = {{ModelKind::small_cnn, "small_cnn"},
        {ModelKind::resnet20, "resnet20"}, {ModelKind::resnet32, "resnet32"}, {ModelKind::resnet56, "resnet56"}};
};
template <> struct EnumNames<Shortcut> {
    static constexpr std::pair<Shortcut, const char*> values[] = {{Shortcut::A, "A"}, {Shortcut::B, "B"}};
};
template <> struct EnumNames<DatasetKind> {
    static constexpr std::pair<DatasetKind, const char*> values[] = {{DatasetKind::cifar10, "cifar10"},
        {DatasetKind::fashion_mnist, "fashion_mnist"}, {DatasetKind::mnist, "mnist"}};
};
template <> struct EnumNames<LrSchedule> {
    static constexpr std::pair<LrSchedule, const char*> values[] = {{LrSchedule::constant, "constant"},
        {LrSchedule::step, "step"}, {LrSchedule::cosine, "cosine"}, {LrSchedule::onecycle, "onecycle"}};
};
template <> struct EnumNames<WeightScale> {
    static constexpr std::pair<WeightScale, const char*> values[] = {
        {WeightScale::max_abs, "max_abs"}, {WeightScale::min_l2, "min_l2"}, {WeightScale::lsq, "lsq"}};
};
template <> struct EnumNames<quant::Grid> {
    static constexpr std::pair<quant::Grid, const char*> values[] = {
        {quant::Grid::narrow, "narrow"}, {quant::Grid::mid_rise, "mid_rise"}};
};
template <> struct EnumNames<BitsDraw> {
    static constexpr std::pair<BitsDraw, const char*> values[] = {{BitsDraw::binary, "binary"},
                                                                  {BitsDraw::uniform, "uniform"}};
};
template <> struct EnumNames<TeacherNorm> {
    static constexpr std::pair<TeacherNorm, const char*> values[] = {{TeacherNorm::batch, "batch"},
                                                                     {TeacherNorm::running, "running"}};
};
template <> struct EnumNames<KdLoss> {
    static constexpr std::pair<KdLoss, const char*> values[] = {{KdLoss::kl, "kl"}, {KdLoss::cosine, "cosine"}};
};

// name_of(Method::speq) == "speq"
template <class E>
const char* name_of(E value) {
    for (const auto& [v, name] : EnumNames<E>::values)
        if (v == value) return name;
    return "?";
}

// ---- the configuration ---------------------------------------------------------------------
// Member initializers ARE the defaults (the reference and to_json(TrainConfig{}) show them).

struct WeightQuantConfig {
    WeightScale scale = WeightScale::min_l2;
    bool per_channel = true;
    quant::Grid grid = quant::Grid::mid_rise;
};

struct ActQuantConfig {
    // Used only when a model is quantized from scratch: from a full-precision checkpoint,
    // nn/act_quant.hpp calibrates alpha on real activations instead. 6 (the clip of ReLU6) is
    // nn::kDefaultAlphaInit; keep the two equal. For reference, with x = max(z, 0), z ~ N(0, 1)
    // (ReLU after batch norm), the MSE-optimal clip is about 1.9 at 2 bits, 2.5 at 3, 2.9 at 4
    // and 4.3 at 8 bits; at 2 bits alpha = 3 gives a quantization MSE of 8% of E[x^2], alpha = 6
    // gives 33%: W2A2 from scratch may want a lower value (or calibration).
    double alpha_init = 6.0;
    // PACT decays alpha with the weights to pull the clip in; speq does not by default: with
    // alpha calibrated from the FP network, decay only shrinks the range the data needs.
    bool weight_decay = false;
};

struct SpeqConfig {
    int high_bits = 8;
    double u = 0.5;
    BitsDraw draw = BitsDraw::binary;
    int uniform_low = 2;
    int uniform_high = 8;
    double temperature = 1.0;
    double ce_weight = 1.0;
    double kd_weight = 1.0;
    int kd_warmup_epochs = 0;
    TeacherNorm teacher_bn = TeacherNorm::batch;
    bool eval_teacher = true;  // a diagnostic: the teacher's test top-1 each epoch (metrics.jsonl)
};

struct KdConfig {
    std::string teacher_checkpoint;
    ModelKind teacher_model = ModelKind::resnet20;
    KdLoss loss = KdLoss::kl;
    double temperature = 4.0;
    double ce_weight = 1.0;
    double kd_weight = 1.0;
};

struct TrainConfig {
    Method method = Method::fp;
    ModelKind model = ModelKind::resnet20;
    Shortcut shortcut = Shortcut::A;
    DatasetKind dataset = DatasetKind::cifar10;
    std::string data_dir = "data";
    int epochs = 15;
    int64_t max_steps = 0;
    int batch_size = 128;
    double lr = 0.1;
    LrSchedule lr_schedule = LrSchedule::onecycle;
    int warmup_epochs = 0;
    std::vector<int> lr_milestones;
    double lr_gamma = 0.1;
    double momentum = 0.9;
    bool nesterov = true;
    double weight_decay = 5e-4;
    int weight_bits = quant::kFullPrecision;
    int act_bits = quant::kFullPrecision;
    int first_layer_bits = 8;
    int last_layer_bits = 8;
    WeightQuantConfig weight_quant;
    ActQuantConfig act_quant;
    bool augment = true;
    int64_t seed = 0;
    int threads = 0;
    bool sync_bn = false;  // data-parallel runs: batch norm over the whole batch (all ranks)
    std::string out_dir = "runs/default";
    std::string init_checkpoint;
    int log_every = 50;
    SpeqConfig speq;
    KdConfig kd;
};

// One key of the table.
struct ConfigField {
    std::string key;          // dotted: "speq.u"
    std::string type;         // "string", "integer", "number", "boolean", "array of integers"
    std::string allowed;      // "[0, 1]", "1..8 or 32", "fp, qat, kd, speq", ...
    std::string description;  // one line
    std::vector<std::string> choices;  // the names, for choice keys
    // Sets the member from a JSON value; returns "" or what is wrong ("is out of range [0, 1]").
    std::function<std::string(TrainConfig&, const nlohmann::json&)> set;
    std::function<nlohmann::json(const TrainConfig&)> get;
};

// A rule across keys: an error (the config is rejected) or a warning (printed, training goes on).
struct ConfigRule {
    bool is_error;
    std::string text;  // the rule in words, for the reference
    // "" when the config follows the rule, else the message.
    std::function<std::string(const TrainConfig&)> check;
};

namespace config_detail {

using json = nlohmann::json;

// A value in a message: JSON text, cut short.
inline std::string show(const json& v) {
    std::string s = v.dump(-1, ' ', false, json::error_handler_t::replace);  // never throws on bad UTF-8
    return s.size() > 60 ? s.substr(0, 57) + "..." : s;
}

template <class T>
std::string str(T v) {
    std::ostringstream out;
    out << v;
    return out.str();
}

inline size_t edit_distance(const std::string& a, const std::string& b) {
    std::vector<size_t> row(b.size() + 1);
    for (size_t j = 0; j <= b.size(); ++j) row[j] = j;
    for (size_t i = 1; i <= a.size(); ++i) {
        size_t diagonal = row[0];
        row[0] = i;
        for (size_t j = 1; j <= b.size(); ++j) {
            const size_t up = row[j];
            row[j] = std::min({row[j] + 1, row[j - 1] + 1, diagonal + (a[i - 1] == b[j - 1] ? 0 : 1)});
            diagonal = up;
        }
    }
    return row[b.size()];
}

inline std::string last_part(const std::string& key) {
    const size_t dot = key.rfind('.');
    return dot == std::string::npos ? key : key.substr(dot + 1);
}

// " (did you mean 'speq.u'?)" for the closest candidate, or "" when none is close. A key
// written in the wrong group ("u" for "speq.u") is found through its last part.
inline std::string did_you_mean(const std::string& word, const std::vector<std::string>& candidates) {
    std::string best;
    size_t best_distance = std::max<size_t>(2, word.size() / 3) + 1;
    for (const std::string& c : candidates) {
        size_t d = edit_distance(word, c);
        if (last_part(c) == last_part(word) && c != word) d = std::min<size_t>(d, 1);
        if (d < best_distance) {
            best_distance = d;
            best = c;
        }
    }
    return best.empty() ? "" : " (did you mean '" + best + "'?)";
}

inline std::string join(const std::vector<std::string>& items, const std::string& sep) {
    std::string out;
    for (size_t i = 0; i < items.size(); ++i) out += (i ? sep : "") + items[i];
    return out;
}

// An integer from JSON: an integer, or a number with an integral value (1e3). false otherwise.
inline bool get_integer(const json& v, int64_t& out) {
    if (v.is_number_unsigned()) {
        if (v.get<uint64_t>() > static_cast<uint64_t>(std::numeric_limits<int64_t>::max())) return false;
        out = static_cast<int64_t>(v.get<uint64_t>());
        return true;
    }
    if (v.is_number_integer()) {
        out = v.get<int64_t>();
        return true;
    }
    if (v.is_number_float()) {
        const double d = v.get<double>();
        if (!(std::floor(d) == d && std::fabs(d) < 9.0e18)) return false;
        out = static_cast<int64_t>(d);
        return true;
    }
    return false;
}

// Integer ranges print as "1..65536" or ">= 0".
struct IntRange {
    int64_t lo, hi;
    bool contains(int64_t v) const { return v >= lo && v <= hi; }
    bool bounded() const { return hi != std::numeric_limits<int64_t>::max(); }
    std::string text() const { return bounded() ? str(lo) + ".." + str(hi) : ">= " + str(lo); }
    std::string violation() const { return bounded() ? "is out of range " + text() : "must be " + text(); }
    std::string wanted_type() const { return bounded() ? "must be an integer in " + text() : "must be an integer " + text(); }
};
inline IntRange at_least(int64_t lo) { return {lo, std::numeric_limits<int64_t>::max()}; }
inline IntRange between(int64_t lo, int64_t hi) { return {lo, hi}; }

// Real ranges print as "> 0", ">= 0", "[0, 1]", "[0, 1)", "(0, 1]".
struct RealRange {
    double lo, hi;
    bool lo_open, hi_open;
    bool contains(double v) const {
        return (lo_open ? v > lo : v >= lo) && (hi_open ? v < hi : v <= hi);
    }
    std::string text() const {
        if (std::isinf(hi)) return (lo_open ? "> " : ">= ") + str(lo);
        return (lo_open ? "(" : "[") + str(lo) + ", " + str(hi) + (hi_open ? ")" : "]");
    }
    std::string violation() const { return std::isinf(hi) ? "must be " + text() : "is out of range " + text(); }
    std::string wanted_type() const { return std::isinf(hi) ? "must be a number " + text() : "must be a number in " + text(); }
};
inline constexpr double kInf = std::numeric_limits<double>::infinity();
inline RealRange positive() { return {0.0, kInf, true, true}; }
inline RealRange non_negative() { return {0.0, kInf, false, true}; }
inline RealRange closed(double lo, double hi) { return {lo, hi, false, false}; }
inline RealRange closed_open(double lo, double hi) { return {lo, hi, false, true}; }
inline RealRange open_closed(double lo, double hi) { return {lo, hi, true, false}; }

// The member a row fills, from the accessor (a generic lambda that works on const and non-const).
template <class Get>
using MemberOf = std::decay_t<decltype(std::declval<Get>()(std::declval<TrainConfig&>()))>;

template <class Get>
ConfigField make(const char* key, Get get, std::string type, std::string allowed, const char* description,
                 std::function<std::string(MemberOf<Get>&, const json&)> parse) {
    ConfigField f;
    f.key = key;
    f.type = std::move(type);
    f.allowed = std::move(allowed);
    f.description = description;
    f.set = [get, parse](TrainConfig& c, const json& v) { return parse(get(c), v); };
    f.get = [get](const TrainConfig& c) { return json(get(c)); };
    return f;
}

template <class Get>
ConfigField integer(const char* key, Get get, IntRange range, const char* description) {
    using T = MemberOf<Get>;
    static_assert(std::is_integral_v<T> && !std::is_same_v<T, bool>, "integer(): the member must be an integer");
    return make(key, get, "integer", range.text(), description, [range](T& member, const json& v) -> std::string {
        int64_t x = 0;
        if (!get_integer(v, x)) return range.wanted_type();
        if (!range.contains(x)) return range.violation();
        if (x > static_cast<int64_t>(std::numeric_limits<T>::max())) return "is too large";  // T = int
        member = static_cast<T>(x);
        return "";
    });
}

// A bit-width: 1..8 quantize, 32 means full precision (see quant/bits.hpp).
template <class Get>
ConfigField bits(const char* key, Get get, const char* description) {
    const std::string allowed =
        str(quant::kMinBits) + ".." + str(quant::kMaxBits) + " or " + str(quant::kFullPrecision) + " (full precision)";
    return make(key, get, "integer", allowed, description, [allowed](int& member, const json& v) -> std::string {
        int64_t x = 0;
        if (!get_integer(v, x)) return "must be an integer bit-width: " + allowed;
        if (!((x >= quant::kMinBits && x <= quant::kMaxBits) || x == quant::kFullPrecision))
            return "is not a bit-width: allowed are " + allowed;
        member = static_cast<int>(x);
        return "";
    });
}

template <class Get>
ConfigField number(const char* key, Get get, RealRange range, const char* description) {
    return make(key, get, "number", range.text(), description, [range](double& member, const json& v) -> std::string {
        if (!v.is_number()) return range.wanted_type();
        const double x = v.get<double>();
        if (!std::isfinite(x) || !range.contains(x)) return range.violation();
        member = x;
        return "";
    });
}

template <class Get>
ConfigField boolean(const char* key, Get get, const char* description) {
    return make(key, get, "boolean", "true, false", description, [](bool& member, const json& v) -> std::string {
        if (!v.is_boolean()) return "must be true or false";
        member = v.get<bool>();
        return "";
    });
}

template <class Get>
ConfigField text(const char* key, Get get, bool allow_empty, const char* description) {
    return make(key, get, "string", allow_empty ? "any" : "non-empty", description,
                [allow_empty](std::string& member, const json& v) -> std::string {
                    if (!v.is_string()) return "must be a string";
                    if (!allow_empty && v.get<std::string>().empty()) return "must not be empty";
                    member = v.get<std::string>();
                    return "";
                });
}

template <class Get>
ConfigField choice(const char* key, Get get, const char* description) {
    using E = MemberOf<Get>;
    std::vector<std::string> names;
    for (const auto& [value, name] : EnumNames<E>::values) names.push_back(name);
    const std::string allowed = join(names, ", ");
    ConfigField f = make(key, get, "string", allowed, description, [names, allowed](E& member, const json& v) -> std::string {
        if (!v.is_string()) return "must be a string, one of " + allowed;
        const std::string s = v.get<std::string>();
        for (const auto& [value, name] : EnumNames<E>::values)
            if (s == name) {
                member = value;
                return "";
            }
        return "is not one of " + allowed + did_you_mean(s, names);
    });
    f.get = [get](const TrainConfig& c) { return json(name_of(get(c))); };
    f.choices = names;
    return f;
}

template <class Get>
ConfigField integer_list(const char* key, Get get, IntRange range, const char* description) {
    return make(key, get, "array of integers", "each " + range.text(), description,
                [range](std::vector<int>& member, const json& v) -> std::string {
                    if (!v.is_array()) return "must be an array of integers, like [5, 10]";
                    std::vector<int> out;
                    for (const json& item : v) {
                        int64_t x = 0;
                        if (!get_integer(item, x)) return "must be an array of integers, like [5, 10]";
                        if (!range.contains(x)) return "has " + str(x) + ": each " + range.violation();
                        if (x > std::numeric_limits<int>::max()) return "has " + str(x) + ", too large";
                        out.push_back(static_cast<int>(x));
                    }
                    member = std::move(out);
                    return "";
                });
}

}  // namespace config_detail

// Every key of the training configuration, in the order of the reference.
inline const std::vector<ConfigField>& config_fields() {
    using namespace config_detail;
    // SPEQ_KEY(speq.u): the dotted key and the member it fills, spelled once.
#define SPEQ_KEY(path) #path, [](auto& c) -> auto& { return c.path; }
    static const std::vector<ConfigField> fields = {
        choice(SPEQ_KEY(method), "fp: full precision; qat: quantization-aware training (the paper's Retrain); kd: distillation from a separate FP teacher; speq: stochastic precision ensemble"),
        choice(SPEQ_KEY(model), "the network; resnet20/32/56 are the CIFAR ResNets of He et al. 2016, small_cnn is for (Fashion-)MNIST"),
        choice(SPEQ_KEY(shortcut), "ResNet shortcut where the shape changes: A = subsample + zero-pad channels, B = 1x1 conv + batch norm"),
        choice(SPEQ_KEY(dataset), "the data set"),
        text(SPEQ_KEY(data_dir), false, "folder with the data set files (for cifar10: cifar-10-batches-bin or its parent)"),
        integer(SPEQ_KEY(epochs), between(1, 100000), "passes over the training set"),
        integer(SPEQ_KEY(max_steps), at_least(0), "stop after this many optimizer steps (smoke tests); 0 = no limit"),
        integer(SPEQ_KEY(batch_size), between(1, 65536), "training images per step"),
        number(SPEQ_KEY(lr), positive(), "learning rate (the peak rate for onecycle)"),
        choice(SPEQ_KEY(lr_schedule), "constant; step: times lr_gamma at each of lr_milestones; cosine: down to 0; onecycle: PyTorch's OneCycleLR"),
        integer(SPEQ_KEY(warmup_epochs), at_least(0), "linear warm-up epochs before constant/step/cosine (onecycle warms up by itself)"),
        integer_list(SPEQ_KEY(lr_milestones), at_least(1), "epochs at which the step schedule multiplies the rate by lr_gamma, increasing"),
        number(SPEQ_KEY(lr_gamma), open_closed(0, 1), "factor of the step schedule at each milestone"),
        number(SPEQ_KEY(momentum), closed_open(0, 1), "SGD momentum"),
        boolean(SPEQ_KEY(nesterov), "Nesterov momentum"),
        number(SPEQ_KEY(weight_decay), closed_open(0, 1), "L2 weight decay (not applied to batch-norm parameters, nor to PACT alphas unless act_quant.weight_decay)"),
        bits(SPEQ_KEY(weight_bits), "weight bit-width of every conv/linear layer except the first and last"),
        bits(SPEQ_KEY(act_bits), "activation bit-width (the student's, for speq)"),
        bits(SPEQ_KEY(first_layer_bits), "weight bit-width of the first conv when weight_bits < 32 (its input image is never quantized)"),
        bits(SPEQ_KEY(last_layer_bits), "weight bit-width of the last linear layer when weight_bits < 32; its input activation runs at the more precise of this and act_bits"),
        choice(SPEQ_KEY(weight_quant.scale), "weight scale: max-abs, minimum L2 quantization error, or learned (LSQ)"),
        boolean(SPEQ_KEY(weight_quant.per_channel), "one weight scale per output channel (else one per tensor)"),
        choice(SPEQ_KEY(weight_quant.grid), "signed grid: narrow has a zero level, mid_rise uses all 2^b levels (see quant/bits.hpp)"),
        number(SPEQ_KEY(act_quant.alpha_init), positive(), "initial PACT clip alpha when quantizing from scratch (from an FP checkpoint alpha is calibrated, from a quantized one it is kept)"),
        boolean(SPEQ_KEY(act_quant.weight_decay), "apply weight_decay to the PACT clips alpha too (as the PACT paper does)"),
        boolean(SPEQ_KEY(augment), "training augmentation: 4-pixel pad + random crop, horizontal flip (cifar10)"),
        integer(SPEQ_KEY(seed), at_least(0), "seed of weight init, shuffling, augmentation and SPEQ's bit draws"),
        integer(SPEQ_KEY(threads), between(0, 1024), "worker threads; 0 = OpenMP's default (results do not depend on it)"),
        boolean(SPEQ_KEY(sync_bn), "data-parallel runs (mpirun -np N): batch norm in training mode normalizes with the statistics of the whole batch, summed over the ranks (as one process would), instead of each rank's slice; resuming on another N is then the same run. No effect in one process"),
        text(SPEQ_KEY(out_dir), false, "output folder: metrics.jsonl, config.json, checkpoints, summary.json"),
        text(SPEQ_KEY(init_checkpoint), true, "safetensors file to start from (an FP model for qat/speq); \"\" = random init"),
        integer(SPEQ_KEY(log_every), at_least(1), "steps between log lines"),
        bits(SPEQ_KEY(speq.high_bits), "n_H: the teacher's high activation bit-width"),
        number(SPEQ_KEY(speq.u), closed(0, 1), "probability that a layer of the teacher runs at high_bits (else at act_bits), binary draw"),
        choice(SPEQ_KEY(speq.draw), "teacher bits per layer: binary = high_bits with probability u else act_bits; uniform = uniform in [uniform_low, uniform_high]"),
        integer(SPEQ_KEY(speq.uniform_low), between(1, 8), "lowest teacher bit-width of the uniform draw"),
        integer(SPEQ_KEY(speq.uniform_high), between(1, 8), "highest teacher bit-width of the uniform draw"),
        number(SPEQ_KEY(speq.temperature), positive(), "T: both softmaxes of the cosine loss use logits / T"),
        number(SPEQ_KEY(speq.ce_weight), non_negative(), "alpha: weight of the cross-entropy with the labels"),
        number(SPEQ_KEY(speq.kd_weight), non_negative(), "beta: weight of 1 - cos(softmax(z_s/T), softmax(z_t/T))"),
        integer(SPEQ_KEY(speq.kd_warmup_epochs), at_least(0), "ramp beta linearly from 0 to kd_weight over this many epochs (per step), while the freshly quantized teacher recovers; 0 = full weight from the first step"),
        choice(SPEQ_KEY(speq.teacher_bn), "batch norm in the teacher pass: batch = the batch's own statistics, like the student (running statistics untouched); running = the running statistics (eval mode), like the network at test time"),
        boolean(SPEQ_KEY(speq.eval_teacher), "after each epoch also measure the teacher as training runs it (train::evaluate_teacher on the test set, batches of batch_size): teacher_top1 and teacher_test_loss in metrics.jsonl; costs about one test-set forward pass"),
        text(SPEQ_KEY(kd.teacher_checkpoint), true, "safetensors file of the FP teacher (needed by method kd)"),
        choice(SPEQ_KEY(kd.teacher_model), "the teacher's network"),
        choice(SPEQ_KEY(kd.loss), "kl: KL divergence of the softened outputs (Hinton et al.); cosine: 1 - cos of the softmaxes"),
        number(SPEQ_KEY(kd.temperature), positive(), "T of the distillation softmaxes"),
        number(SPEQ_KEY(kd.ce_weight), non_negative(), "weight of the cross-entropy with the labels"),
        number(SPEQ_KEY(kd.kd_weight), non_negative(), "weight of the distillation loss"),
    };
#undef SPEQ_KEY
    return fields;
}

// Rules across keys. Errors reject the config; warnings are returned by config_warnings().
inline const std::vector<ConfigRule>& config_rules() {
    using config_detail::str;
    static const std::vector<ConfigRule> rules = {
        {true, "method fp trains at full precision: weight_bits and act_bits must be 32 (use qat to quantize)",
         [](const TrainConfig& c) -> std::string {
             if (c.method != Method::fp || (c.weight_bits == 32 && c.act_bits == 32)) return "";
             return "method 'fp' trains at full precision, but weight_bits = " + str(c.weight_bits) +
                    " and act_bits = " + str(c.act_bits) + " (use method 'qat', or set both to 32)";
         }},
        {true, "method kd needs kd.teacher_checkpoint",
         [](const TrainConfig& c) -> std::string {
             return c.method == Method::kd && c.kd.teacher_checkpoint.empty()
                        ? "method 'kd' needs kd.teacher_checkpoint (the FP teacher's safetensors file)"
                        : "";
         }},
        {true, "speq.uniform_low <= speq.uniform_high",
         [](const TrainConfig& c) -> std::string {
             return c.speq.uniform_low <= c.speq.uniform_high
                        ? ""
                        : "speq.uniform_low = " + str(c.speq.uniform_low) + " is above speq.uniform_high = " +
                              str(c.speq.uniform_high);
         }},
        {true, "nesterov needs momentum > 0",
         [](const TrainConfig& c) -> std::string {
             return c.nesterov && c.momentum == 0.0 ? "nesterov = true needs momentum > 0 (set nesterov to false)" : "";
         }},
        {true, "lr_schedule step needs lr_milestones",
         [](const TrainConfig& c) -> std::string {
             return c.lr_schedule == LrSchedule::step && c.lr_milestones.empty()
                        ? "lr_schedule 'step' needs lr_milestones, e.g. [8, 12]"
                        : "";
         }},
        {true, "lr_milestones are strictly increasing",
         [](const TrainConfig& c) -> std::string {
             for (size_t i = 1; i < c.lr_milestones.size(); ++i)
                 if (c.lr_milestones[i] <= c.lr_milestones[i - 1])
                     return "lr_milestones must be strictly increasing, got " +
                            nlohmann::json(c.lr_milestones).dump();
             return "";
         }},
        {true, "warmup_epochs < epochs",
         [](const TrainConfig& c) -> std::string {
             return c.warmup_epochs < c.epochs ? ""
                                               : "warmup_epochs = " + str(c.warmup_epochs) +
                                                     " leaves no epoch after the warm-up (epochs = " + str(c.epochs) + ")";
         }},
        {true, "speq.ce_weight + speq.kd_weight > 0 and kd.ce_weight + kd.kd_weight > 0 (a loss that is not zero)",
         [](const TrainConfig& c) -> std::string {
             if (c.method == Method::speq && c.speq.ce_weight + c.speq.kd_weight == 0.0)
                 return "speq.ce_weight and speq.kd_weight are both 0: the loss would be zero";
             if (c.method == Method::kd && c.kd.ce_weight + c.kd.kd_weight == 0.0)
                 return "kd.ce_weight and kd.kd_weight are both 0: the loss would be zero";
             return "";
         }},
        {false, "qat and speq normally start from an FP checkpoint (init_checkpoint)",
         [](const TrainConfig& c) -> std::string {
             return (c.method == Method::qat || c.method == Method::speq) && c.init_checkpoint.empty()
                        ? std::string("method '") + name_of(c.method) +
                              "' without init_checkpoint starts from random weights (the paper starts from a trained FP model)"
                        : "";
         }},
        {false, "qat, kd and speq with weight_bits = act_bits = 32 quantize nothing",
         [](const TrainConfig& c) -> std::string {
             return c.method != Method::fp && c.weight_bits == 32 && c.act_bits == 32
                        ? std::string("method '") + name_of(c.method) +
                              "' with weight_bits = act_bits = 32 trains a full-precision model"
                        : "";
         }},
        {false, "speq's teacher should be more precise than its student: speq.high_bits > act_bits",
         [](const TrainConfig& c) -> std::string {
             return c.method == Method::speq && c.speq.draw == BitsDraw::binary && c.speq.high_bits <= c.act_bits
                        ? "speq.high_bits = " + str(c.speq.high_bits) + " is not above act_bits = " + str(c.act_bits) +
                              ": the teacher is no more precise than the student"
                        : "";
         }},
        {false, "speq.u = 0 with the binary draw makes the teacher equal to the student (zero distillation term)",
         [](const TrainConfig& c) -> std::string {
             return c.method == Method::speq && c.speq.draw == BitsDraw::binary && c.speq.u == 0.0
                        ? "speq.u = 0: the teacher always runs at act_bits, so the distillation term is zero"
                        : "";
         }},
        {false, "lr_milestones are only used by lr_schedule step, and only milestones < epochs are reached",
         [](const TrainConfig& c) -> std::string {
             if (c.lr_milestones.empty()) return "";
             if (c.lr_schedule != LrSchedule::step)
                 return std::string("lr_milestones are ignored by lr_schedule '") + name_of(c.lr_schedule) + "'";
             if (c.lr_milestones.back() >= c.epochs)
                 return "lr_milestones " + nlohmann::json(c.lr_milestones).dump() + " reach past the last epoch (epochs = " +
                        str(c.epochs) + ")";
             return "";
         }},
        {false, "warmup_epochs is ignored by lr_schedule onecycle",
         [](const TrainConfig& c) -> std::string {
             return c.lr_schedule == LrSchedule::onecycle && c.warmup_epochs > 0
                        ? "warmup_epochs is ignored by lr_schedule 'onecycle' (it warms up by itself)"
                        : "";
         }},
        {false, "speq.kd_warmup_epochs <= epochs",
         [](const TrainConfig& c) -> std::string {
             return c.method == Method::speq && c.speq.kd_warmup_epochs > c.epochs
                        ? "speq.kd_warmup_epochs = " + str(c.speq.kd_warmup_epochs) + " is more than epochs = " +
                              str(c.epochs) + ": the distillation weight never reaches speq.kd_weight"
                        : "";
         }},
        {false, "kd.teacher_checkpoint is only used by method kd",
         [](const TrainConfig& c) -> std::string {
             return c.method != Method::kd && !c.kd.teacher_checkpoint.empty()
                        ? std::string("kd.teacher_checkpoint is ignored by method '") + name_of(c.method) + "'"
                        : "";
         }},
    };
    return rules;
}

namespace config_detail {

inline const ConfigField* find_field(const std::string& key) {
    for (const ConfigField& f : config_fields())
        if (f.key == key) return &f;
    return nullptr;
}

// "speq" is a group when some key starts with "speq.".
inline bool is_group(const std::string& key) {
    for (const ConfigField& f : config_fields())
        if (f.key.size() > key.size() && f.key.compare(0, key.size(), key) == 0 && f.key[key.size()] == '.')
            return true;
    return false;
}

// Every dotted key and every group name ("speq"), the candidates of "did you mean".
inline std::vector<std::string> all_keys() {
    std::vector<std::string> keys;
    for (const ConfigField& f : config_fields()) {
        keys.push_back(f.key);
        for (size_t dot = f.key.find('.'); dot != std::string::npos; dot = f.key.find('.', dot + 1))
            if (std::find(keys.begin(), keys.end(), f.key.substr(0, dot)) == keys.end())
                keys.push_back(f.key.substr(0, dot));
    }
    return keys;
}

inline std::vector<std::string> keys_in_group(const std::string& group) {
    std::vector<std::string> keys;
    for (const ConfigField& f : config_fields())
        if (f.key.compare(0, group.size() + 1, group + ".") == 0) keys.push_back(f.key);
    return keys;
}

inline std::string unknown_key_message(const std::string& key) {
    std::string message = "unknown key '" + key + "'";
    if (key.find('.') != std::string::npos && find_field(key))
        return message + " (in a file, write nested objects: {\"" + key.substr(0, key.find('.')) + "\": {\"" +
               key.substr(key.find('.') + 1) + "\": ...}})";
    return message + did_you_mean(key, all_keys());
}

using SourceOf = std::function<std::string(const std::string& key)>;

inline void read_object(const json& object, const std::string& prefix, TrainConfig& config, const SourceOf& source_of) {
    for (const auto& [name, value] : object.items()) {
        const std::string key = prefix + name;
        if (name.find('.') != std::string::npos) {
            fail(source_of(key), ": ", unknown_key_message(key));  // with the nesting hint if it is a key
        } else if (const ConfigField* f = find_field(key)) {
            const std::string problem = f->set(config, value);
            if (!problem.empty()) fail(source_of(key), ": ", key, " = ", show(value), " ", problem);
        } else if (is_group(key)) {
            if (!value.is_object())
                fail(source_of(key), ": '", key, "' must be an object of the keys ", join(keys_in_group(key), ", "),
                     "; got ", show(value));
            read_object(value, key + ".", config, source_of);
        } else {
            fail(source_of(key), ": ", unknown_key_message(key));
        }
    }
}

inline TrainConfig parse(const json& j, const SourceOf& source_of, const std::string& whole) {
    SPEQ_CHECK(j.is_object(), whole, ": the configuration must be a JSON object {...}, got ", show(j));
    TrainConfig config;
    read_object(j, "", config, source_of);
    for (const ConfigRule& rule : config_rules())
        if (rule.is_error) {
            const std::string problem = rule.check(config);
            if (!problem.empty()) fail(whole, ": ", problem);
        }
    return config;
}

// Parses JSON text; duplicate keys (the first one would be silently lost) are an error.
inline json parse_json_text(const std::string& text, const std::string& source) {
    std::vector<std::set<std::string>> open_objects;
    std::string duplicate;
    auto strict = [&](int, json::parse_event_t event, json& parsed) {
        if (event == json::parse_event_t::object_start) open_objects.emplace_back();
        else if (event == json::parse_event_t::object_end) open_objects.pop_back();
        else if (event == json::parse_event_t::key && !open_objects.empty() &&
                 !open_objects.back().insert(parsed.get<std::string>()).second && duplicate.empty())
            duplicate = parsed.get<std::string>();
        return true;
    };
    json j;
    try {
        j = json::parse(text, strict);
    } catch (const json::exception& e) {
        fail(source, ": not valid JSON (", e.what(), ")");
    }
    SPEQ_CHECK(duplicate.empty(), source, ": key '", duplicate, "' appears twice in the same object");
    return j;
}

}  // namespace config_detail

// The configuration in `j`; errors name `source_name` (a file name, say), the key and the value.
inline TrainConfig config_from_json(const nlohmann::json& j, const std::string& source_name) {
    return config_detail::parse(j, [&](const std::string&) { return source_name; }, source_name);
}

// Applies one "--set key=value" to the JSON of a config: the key is dotted (speq.u), the value is
// JSON when it parses as JSON (0.4, true, [5, 10], "x"), else the text itself (speq, runs/a);
// for a string key the text is always taken as is (--set out_dir=2 gives "2"). The value is
// checked later, by config_from_json / load_config; an unknown key is an error here.
inline void apply_override(nlohmann::json& j, const std::string& assignment) {
    using namespace config_detail;
    const std::string source = "--set " + assignment;
    // A JSON string is UTF-8: other bytes would only fail later, far from this --set (found by fuzzing).
    try {
        (void)json(assignment).dump();
    } catch (const json::exception&) {
        const std::string shown = json(assignment).dump(-1, ' ', false, json::error_handler_t::replace);
        fail("--set ", shown.substr(1, shown.size() - 2), ": not valid UTF-8 text");
    }
    const size_t eq = assignment.find('=');
    SPEQ_CHECK(eq != std::string::npos && eq > 0, source, ": expected key=value, like --set speq.u=0.4");
    const std::string key = assignment.substr(0, eq);
    const std::string text = assignment.substr(eq + 1);
    const ConfigField* field = find_field(key);
    if (!field) {
        if (is_group(key))
            fail(source, ": '", key, "' is a group; set one of its keys: ", join(keys_in_group(key), ", "));
        fail(source, ": ", unknown_key_message(key));
    }
    json value = json::parse(text, nullptr, /*allow_exceptions=*/false);
    if (value.is_discarded() || (field->type == "string" && !value.is_string())) value = text;

    if (j.is_null()) j = json::object();
    SPEQ_CHECK(j.is_object(), source, ": the configuration is not a JSON object");
    json* node = &j;
    size_t start = 0;
    for (size_t dot = key.find('.'); dot != std::string::npos; dot = key.find('.', start)) {
        const std::string group = key.substr(start, dot - start);
        json& child = (*node)[group];
        if (child.is_null()) child = json::object();
        SPEQ_CHECK(child.is_object(), source, ": '", key.substr(0, dot), "' in the configuration is not an object");
        node = &child;
        start = dot + 1;
    }
    (*node)[key.substr(start)] = value;
}

// Reads a config file ("" = start from the defaults) and applies `overrides` ("key=value", as
// --set) in order. Errors name the file or the --set that brought the bad value.
inline TrainConfig load_config(const std::string& path, const std::vector<std::string>& overrides = {}) {
    using namespace config_detail;
    json j = json::object();
    const std::string file = path.empty() ? "defaults" : path;
    if (!path.empty()) {
        std::ifstream in(path, std::ios::binary);
        if (!in) fail(path, ": cannot open config file: ", std::strerror(errno));
        std::ostringstream text;
        text << in.rdbuf();
        j = parse_json_text(text.str(), path);
        SPEQ_CHECK(j.is_object(), path, ": the configuration must be a JSON object {...}, got ", show(j));
    }
    std::map<std::string, std::string> set_by;  // key -> the --set that set it last
    for (const std::string& o : overrides) {
        apply_override(j, o);
        set_by[o.substr(0, o.find('='))] = "--set " + o;
    }
    const std::string whole = overrides.empty() ? file : file + " with --set overrides";
    return parse(j, [&](const std::string& key) {
        auto it = set_by.find(key);
        return it == set_by.end() ? file : it->second;
    }, whole);
}

// The resolved configuration as nested JSON, every key present. config_from_json(to_json(c)) == c.
inline nlohmann::json to_json(const TrainConfig& config) {
    nlohmann::json j = nlohmann::json::object();
    for (const ConfigField& f : config_fields()) {
        std::string pointer = "/" + f.key;
        std::replace(pointer.begin(), pointer.end(), '.', '/');
        j[nlohmann::json::json_pointer(pointer)] = f.get(config);
    }
    return j;
}

// The messages of the warning rules that `config` triggers (speq-train prints them).
inline std::vector<std::string> config_warnings(const TrainConfig& config) {
    std::vector<std::string> out;
    for (const ConfigRule& rule : config_rules())
        if (!rule.is_error) {
            std::string message = rule.check(config);
            if (!message.empty()) out.push_back(std::move(message));
        }
    return out;
}

// The reference of every key, generated from the table (docs/ can hold its output and a test
// can compare, so the documentation cannot drift from the code).
inline std::string config_reference_markdown() {
    auto cell = [](std::string s) {
        std::string out;
        for (char ch : s) out += ch == '|' ? std::string("\\|") : std::string(1, ch);
        return out;
    };
    const TrainConfig defaults;
    std::string md;
    md += "# speq-train configuration reference\n\n";
    md += "Generated by `speq::io::config_reference_markdown()` from the table in `include/speq/io/config.hpp`;\n"
          "do not edit by hand.\n\n";
    md += "Every key is optional. In a config file nested keys are nested objects, `{\"speq\": {\"u\": 0.4}}`;\n"
          "on the command line they are dotted, `--set speq.u=0.4`. A value given to `--set` is read as JSON\n"
          "when it parses (`0.4`, `true`, `[5, 10]`), else as text (`--set method=speq`). Unknown keys, wrong\n"
          "types and values out of range are errors that name the key. Bit-widths: 1..8, or 32 for full precision.\n\n";
    md += "| key | type | default | allowed | description |\n|---|---|---|---|---|\n";
    for (const ConfigField& f : config_fields()) {
        std::string allowed = f.allowed;
        if (!f.choices.empty()) {
            allowed.clear();
            for (size_t i = 0; i < f.choices.size(); ++i) allowed += (i ? ", `" : "`") + f.choices[i] + "`";
        }
        md += "| `" + f.key + "` | " + f.type + " | `" + cell(f.get(defaults).dump()) + "` | " + cell(allowed) + " | " +
              cell(f.description) + " |\n";
    }
    md += "\n## Rules across keys\n\nErrors (the configuration is rejected):\n\n";
    for (const ConfigRule& r : config_rules())
        if (r.is_error) md += "- " + r.text + "\n";
    md += "\nWarnings (printed; training goes on):\n\n";
    for (const ConfigRule& r : config_rules())
        if (!r.is_error) md += "- " + r.text + "\n";
    md += "\n## All defaults\n\n```json\n" + to_json(defaults).dump(2) + "\n```\n";
    return md;
}

}  // namespace speq::io
