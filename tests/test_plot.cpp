// speq-plot: metrics.jsonl files read with errors naming file and line; the SVG is well-formed
// (checked by a minimal XML reader: tags balance, attributes are quoted) and has one line per
// run in each panel; the program itself writes the file or fails clearly (SPEQ_PLOT_BIN).
#include <doctest/doctest.h>

#include <sys/wait.h>
#include <unistd.h>

#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <map>
#include <string>
#include <vector>

#include "speq/train/plot.hpp"

using namespace speq;
namespace fs = std::filesystem;

namespace {

struct TempDir {
    fs::path path;
    explicit TempDir(const std::string& name)
        : path(fs::temp_directory_path() / ("speq_plot_" + name + "_" + std::to_string(::getpid()))) {
        fs::remove_all(path);
        fs::create_directories(path);
    }
    ~TempDir() {
        std::error_code ec;
        fs::remove_all(path, ec);
    }
};

std::string metrics_line(int epoch, double loss, double top1, const std::string& method, int bits, bool complete = true) {
    nlohmann::json j = {{"epoch", epoch},   {"complete", complete}, {"step", epoch * 10}, {"lr", 0.1},
                        {"train_loss", loss}, {"train_top1", 0.5},    {"test_top1", top1},  {"test_loss", 1.0},
                        {"method", method}, {"weight_bits", bits},  {"act_bits", bits},   {"wall_seconds", 3.0}};
    return j.dump() + "\n";
}

void write(const fs::path& path, const std::string& text) {
    fs::create_directories(path.parent_path());
    std::ofstream(path) << text;
}

std::string read(const fs::path& path) {
    std::ifstream in(path);
    return std::string(std::istreambuf_iterator<char>(in), std::istreambuf_iterator<char>());
}

// A minimal XML well-formedness check: every tag closes in order, attributes are quoted, no
// stray '<' or '&' in text. Returns "" or the first problem. Counts elements by name.
std::string check_xml(const std::string& xml, std::map<std::string, int>& counts) {
    std::vector<std::string> open;
    size_t i = 0;
    if (xml.compare(0, 5, "<?xml") == 0) i = xml.find("?>") + 2;
    while (i < xml.size()) {
        if (xml[i] == '&') {
            const size_t semi = xml.find(';', i);
            const std::string entity = xml.substr(i, semi == std::string::npos ? 0 : semi - i + 1);
            if (entity != "&amp;" && entity != "&lt;" && entity != "&gt;" && entity != "&quot;")
                return "bad entity at " + std::to_string(i);
            i = semi + 1;
            continue;
        }
        if (xml[i] != '<') {
            if (xml[i] == '>') return "stray '>' at " + std::to_string(i);
            ++i;
            continue;
        }
        const size_t end = xml.find('>', i);
        if (end == std::string::npos) return "unterminated tag at " + std::to_string(i);
        std::string tag = xml.substr(i + 1, end - i - 1);
        if (tag.find('<') != std::string::npos) return "'<' inside a tag at " + std::to_string(i);
        if (!tag.empty() && tag[0] == '/') {
            const std::string name = tag.substr(1);
            if (open.empty() || open.back() != name) return "</" + name + "> closes " + (open.empty() ? "nothing" : open.back());
            open.pop_back();
        } else {
            const bool self_closing = !tag.empty() && tag.back() == '/';
            if (self_closing) tag.pop_back();
            const std::string name = tag.substr(0, tag.find_first_of(" \n\t"));
            // attributes: name="value" pairs
            size_t quotes = 0;
            for (char c : tag) quotes += c == '"';
            if (quotes % 2 != 0) return "unbalanced quotes in <" + name + ">";
            counts[name] += 1;
            if (!self_closing) open.push_back(name);
        }
        i = end + 1;
    }
    if (!open.empty()) return "<" + open.back() + "> is never closed";
    return "";
}

std::string error_of(const std::string& path) {
    try {
        train::read_metrics(path);
    } catch (const Error& e) {
        return e.what();
    }
    return "";
}

}  // namespace

TEST_CASE("plot: read_metrics keeps complete epochs and labels the run by method and bits") {
    TempDir tmp("read");
    const fs::path file = tmp.path / "speq_w2a2" / "metrics.jsonl";
    write(file, metrics_line(1, 2.0, 0.30, "speq", 2) + "\n" + metrics_line(2, 1.5, 0.55, "speq", 2) +
                    metrics_line(3, 1.4, 0.56, "speq", 2, /*complete=*/false));
    train::Curve c = train::read_metrics(file.string());
    CHECK(c.label == "speq W2A2");
    CHECK(c.epoch == std::vector<double>{1, 2});
    CHECK(c.train_loss == std::vector<double>{2.0, 1.5});
    CHECK(c.test_top1 == std::vector<double>{0.30, 0.55});
    CHECK(train::run_label("fp", 32, 32) == "fp");
    CHECK(train::run_label("qat", 4, 32) == "qat W4A32");
}

TEST_CASE("plot: the SVG is well-formed, with one polyline per run in each panel, ticks, labels and a legend") {
    TempDir tmp("svg");
    std::vector<train::Curve> runs;
    for (int r = 0; r < 3; ++r) {
        const fs::path file = tmp.path / ("run" + std::to_string(r)) / "metrics.jsonl";
        std::string text;
        for (int e = 1; e <= 5 + r; ++e) text += metrics_line(e, 2.0 / e + r * 0.1, 0.5 + 0.05 * e - 0.02 * r, r == 2 ? "qat" : "speq", 2);
        write(file, text);
        runs.push_back(train::read_metrics(file.string()));
    }
    const std::string svg = train::curves_svg(runs, "W2A2 <small> & quick");
    std::map<std::string, int> counts;
    CHECK(check_xml(svg, counts) == "");
    CHECK(counts["svg"] == 1);
    CHECK(counts["polyline"] == 2 * 3);  // loss and top-1, per run
    CHECK(svg.find("training loss") != std::string::npos);
    CHECK(svg.find("test top-1") != std::string::npos);
    CHECK(svg.find(">epoch<") != std::string::npos);
    CHECK(svg.find("W2A2 &lt;small&gt; &amp; quick") != std::string::npos);
    // Two runs share "speq W2A2": the legend adds their folders; the third is unique.
    CHECK(svg.find(">speq W2A2 (run0)<") != std::string::npos);
    CHECK(svg.find(">speq W2A2 (run1)<") != std::string::npos);
    CHECK(svg.find(">qat W2A2<") != std::string::npos);
    // Epoch ticks 1..7 on the x axis of each panel.
    CHECK(svg.find(">7</text>") != std::string::npos);

    // A single epoch still draws (a point and its marker).
    train::Curve one;
    one.label = "fp";
    one.epoch = {1};
    one.train_loss = {0.7};
    one.test_top1 = {0.9};
    counts.clear();
    const std::string single = train::curves_svg({one});
    CHECK(check_xml(single, counts) == "");
    CHECK(counts["polyline"] == 2);
    CHECK(counts["circle"] == 2);
    CHECK_THROWS_WITH_AS(train::curves_svg({}), "curves_svg: no runs to plot", Error);
}

TEST_CASE("plot: bad input names the file and the line") {
    TempDir tmp("bad");
    const std::string missing = (tmp.path / "nothing.jsonl").string();
    CHECK(error_of(missing) == missing + ": cannot open the metrics file: No such file or directory");

    const std::string not_json = (tmp.path / "not_json.jsonl").string();
    write(not_json, metrics_line(1, 2.0, 0.3, "fp", 32) + "epoch 2: loss 1.5\n");
    CHECK(error_of(not_json) ==
          not_json + ":2: not JSON: 'epoch 2: loss 1.5' (a metrics.jsonl holds one JSON object per line)");

    const std::string array = (tmp.path / "array.jsonl").string();
    write(array, "[1, 2]\n");
    CHECK(error_of(array) == array + ":1: expected a JSON object, got [1,2]");

    const std::string empty = (tmp.path / "empty.jsonl").string();
    write(empty, "\n");
    CHECK(error_of(empty) == empty + ": no complete epoch to plot (0 metrics lines, none of a finished epoch)");

    const std::string partial = (tmp.path / "partial.jsonl").string();
    write(partial, metrics_line(1, 2.0, 0.3, "fp", 32, false));
    CHECK(error_of(partial) == partial + ": no complete epoch to plot (1 metrics lines, none of a finished epoch)");

    const std::string no_loss = (tmp.path / "no_loss.jsonl").string();
    write(no_loss, "{\"epoch\": 1, \"test_top1\": 0.5}\n");
    CHECK(error_of(no_loss) == no_loss + ":1: no 'train_loss' in the line (is this a speq metrics.jsonl?)");

    const std::string null_loss = (tmp.path / "null_loss.jsonl").string();
    write(null_loss, "{\"epoch\": 1, \"train_loss\": null, \"test_top1\": 0.5}\n");
    CHECK(error_of(null_loss) == null_loss + ":1: 'train_loss' must be a number, got null");

    const std::string order = (tmp.path / "order.jsonl").string();
    write(order, metrics_line(2, 2.0, 0.3, "fp", 32) + metrics_line(1, 2.0, 0.3, "fp", 32));
    CHECK(error_of(order) == order + ":2: epoch 1 comes after epoch 2: the lines must be in increasing epoch order");
}

#ifdef SPEQ_PLOT_BIN
TEST_CASE("speq-plot: writes the SVG, and a bad file is an error naming it, with a non-zero exit code") {
    TempDir tmp("cli");
    const fs::path a = tmp.path / "a" / "metrics.jsonl", b = tmp.path / "b" / "metrics.jsonl";
    write(a, metrics_line(1, 2.0, 0.3, "qat", 2) + metrics_line(2, 1.0, 0.6, "qat", 2));
    write(b, metrics_line(1, 1.8, 0.4, "speq", 2) + metrics_line(2, 0.9, 0.7, "speq", 2));
    const fs::path svg = tmp.path / "curves.svg", log = tmp.path / "log.txt";
    const std::string bin = SPEQ_PLOT_BIN;
    int status = std::system((bin + " " + a.string() + " " + b.string() + " -o " + svg.string() + " > " + log.string() + " 2>&1").c_str());
    CHECK(WIFEXITED(status));
    CHECK(WEXITSTATUS(status) == 0);
    CHECK(read(log) == "speq-plot: wrote " + svg.string() + " (2 runs)\n");
    std::map<std::string, int> counts;
    CHECK(check_xml(read(svg), counts) == "");
    CHECK(counts["polyline"] == 4);

    status = std::system((bin + " " + a.string() + " " + (tmp.path / "missing.jsonl").string() + " -o " +
                          (tmp.path / "x.svg").string() + " > " + log.string() + " 2>&1").c_str());
    CHECK(WEXITSTATUS(status) == 1);
    CHECK(read(log) == "speq-plot: error: " + (tmp.path / "missing.jsonl").string() +
                           ": cannot open the metrics file: No such file or directory\n");
    CHECK_FALSE(fs::exists(tmp.path / "x.svg"));
}
#endif
