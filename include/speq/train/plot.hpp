// speq/train/plot.hpp: training curves from metrics.jsonl files, as one self-contained SVG.
//
//   std::vector<train::Curve> runs = {train::read_metrics("runs/qat/metrics.jsonl"),
//                                     train::read_metrics("runs/speq/metrics.jsonl")};
//   std::string svg = train::curves_svg(runs);   // what speq-plot writes
//
// Two panels side by side, training loss and test top-1 (%) against the epoch, one line per run
// in both, a legend below naming each run by method and bits ("speq W2A2", "fp"). Plain SVG 1.1:
// no scripts, no external fonts or styles, so a browser, GitHub's README view or an editor shows
// it as is.
//
// A metrics.jsonl (train/trainer.hpp) has one JSON object per line; those with "complete": false
// (an epoch cut short by max_steps or an interruption) are skipped. Every other line must have
// epoch, train_loss, test_top1, method, weight_bits and act_bits, with epochs increasing. Errors
// name the file and the line: "runs/a/metrics.jsonl:3: not JSON (...)".
#pragma once

#include <algorithm>
#include <cerrno>
#include <cmath>
#include <cstdio>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>

#include "speq/core/error.hpp"

namespace speq::train {

// One run: its complete epochs, in order.
struct Curve {
    std::string label;   // "speq W2A2"; made unique by curves_svg when two runs share it
    std::string source;  // the file it was read from
    std::vector<double> epoch, train_loss, test_top1;  // test_top1 in [0, 1]
};

// "fp", "speq W2A2", "qat W4A32": how a run is named in the legend.
inline std::string run_label(const std::string& method, int weight_bits, int act_bits) {
    if (weight_bits == 32 && act_bits == 32) return method == "fp" ? "fp" : method + " FP32";
    return method + " W" + std::to_string(weight_bits) + "A" + std::to_string(act_bits);
}

// Reads a metrics.jsonl (see the top of this file). Errors name the file and the line.
inline Curve read_metrics(const std::string& path) {
    std::ifstream in(path);
    if (!in) fail(path, ": cannot open the metrics file: ", std::strerror(errno));
    Curve c;
    c.source = path;
    int line_no = 0, lines_read = 0;
    for (std::string line; std::getline(in, line);) {
        ++line_no;
        if (line.find_first_not_of(" \t\r") == std::string::npos) continue;
        ++lines_read;
        const std::string where = path + ":" + std::to_string(line_no);
        nlohmann::json j = nlohmann::json::parse(line, nullptr, /*allow_exceptions=*/false);
        if (j.is_discarded())
            fail(where, ": not JSON: '", line.size() > 60 ? line.substr(0, 57) + "..." : line,
                 "' (a metrics.jsonl holds one JSON object per line)");
        SPEQ_CHECK(j.is_object(), where, ": expected a JSON object, got ", j.dump().substr(0, 60));
        if (j.contains("complete") && j["complete"] == false) continue;
        auto number = [&](const char* key) {
            SPEQ_CHECK(j.contains(key), where, ": no '", key, "' in the line (is this a speq metrics.jsonl?)");
            SPEQ_CHECK(j[key].is_number(), where, ": '", key, "' must be a number, got ", j[key].dump());
            return j[key].get<double>();
        };
        const double epoch = number("epoch");
        SPEQ_CHECK(epoch >= 1 && std::floor(epoch) == epoch, where, ": epoch ", epoch, " is not a whole number >= 1");
        SPEQ_CHECK(c.epoch.empty() || epoch > c.epoch.back(), where, ": epoch ", epoch, " comes after epoch ",
                   c.epoch.back(), ": the lines must be in increasing epoch order");
        const double loss = number("train_loss"), top1 = number("test_top1");
        const double wbits = number("weight_bits"), abits = number("act_bits");
        SPEQ_CHECK(j.contains("method") && j["method"].is_string(), where, ": 'method' must be a string");
        const std::string label = run_label(j["method"].get<std::string>(), static_cast<int>(wbits),
                                            static_cast<int>(abits));
        if (c.label.empty()) c.label = label;
        c.epoch.push_back(epoch);
        c.train_loss.push_back(loss);
        c.test_top1.push_back(top1);
    }
    SPEQ_CHECK(!c.epoch.empty(), path, ": no complete epoch to plot (", lines_read,
               " metrics lines, none of a finished epoch)");
    return c;
}

namespace plot_detail {

// Ticks of a "nice" step (1, 2 or 5 times a power of ten), about `target` of them across [lo, hi].
struct Axis {
    double lo, hi, step;
    int decimals;  // for the tick labels
};

inline Axis nice_axis(double lo, double hi, int target, bool from_zero) {
    if (from_zero) lo = std::min(lo, 0.0);
    if (!(hi > lo)) {  // one value: a small range around it
        const double pad = std::max(std::fabs(hi) * 0.1, 1.0);
        lo -= pad, hi += pad;
        if (from_zero) lo = std::max(lo, 0.0);
    }
    const double raw = (hi - lo) / target;
    const double power = std::pow(10.0, std::floor(std::log10(raw)));
    const double m = raw / power;
    const double step = (m <= 1 ? 1 : m <= 2 ? 2 : m <= 5 ? 5 : 10) * power;
    Axis a;
    a.lo = std::floor(lo / step + 1e-9) * step;
    a.hi = std::ceil(hi / step - 1e-9) * step;
    a.step = step;
    a.decimals = std::max(0, -static_cast<int>(std::floor(std::log10(step) + 1e-9)));
    return a;
}

inline std::string fmt(double v, int decimals) {
    char buf[64];
    std::snprintf(buf, sizeof buf, "%.*f", decimals, std::fabs(v) < 1e-12 ? 0.0 : v);
    return buf;
}

inline std::string xml_escape(const std::string& s) {
    std::string out;
    for (char c : s) {
        switch (c) {
            case '&': out += "&amp;"; break;
            case '<': out += "&lt;"; break;
            case '>': out += "&gt;"; break;
            case '"': out += "&quot;"; break;
            default: out += c;
        }
    }
    return out;
}

// Tableau's 10 colours: distinct, and readable by most colour-blind people.
inline const char* colour(size_t i) {
    static const char* palette[] = {"#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd",
                                    "#8c564b", "#e377c2", "#7f7f7f", "#bcbd22", "#17becf"};
    return palette[i % 10];
}
// Past 10 runs the colours repeat with a dash pattern.
inline std::string dash(size_t i) { return i < 10 ? "" : i < 20 ? " stroke-dasharray=\"6,3\"" : " stroke-dasharray=\"2,2\""; }

// One panel: frame, grid, ticks, labels and one polyline (+ point markers) per run.
inline std::string panel(double x0, double y0, double w, double h, const std::string& title, const std::string& ylabel,
                         const std::vector<std::vector<double>>& xs, const std::vector<std::vector<double>>& ys,
                         bool y_from_zero) {
    double xmin = 1e300, xmax = -1e300, ymin = 1e300, ymax = -1e300;
    for (size_t r = 0; r < xs.size(); ++r)
        for (size_t i = 0; i < xs[r].size(); ++i) {
            xmin = std::min(xmin, xs[r][i]), xmax = std::max(xmax, xs[r][i]);
            ymin = std::min(ymin, ys[r][i]), ymax = std::max(ymax, ys[r][i]);
        }
    if (xmin == xmax) xmin -= 0.5, xmax += 0.5;  // one epoch: centre it
    Axis xa = nice_axis(xmin, xmax, 8, false);
    xa.step = std::max(xa.step, 1.0), xa.decimals = 0;  // whole epochs
    xa.lo = std::max(xmin, std::floor(xmin)), xa.hi = xmax;
    const Axis ya = nice_axis(ymin, ymax, 5, y_from_zero);

    const double left = 62, right = 16, top = 28, bottom = 44;
    const double px0 = x0 + left, py0 = y0 + top, pw = w - left - right, ph = h - top - bottom;
    auto X = [&](double v) { return px0 + (v - xa.lo) / (xa.hi - xa.lo) * pw; };
    auto Y = [&](double v) { return py0 + ph - (v - ya.lo) / (ya.hi - ya.lo) * ph; };

    std::string s = "<g>\n";
    s += "<text x=\"" + fmt(px0 + pw / 2, 1) + "\" y=\"" + fmt(y0 + 18, 1) +
         "\" text-anchor=\"middle\" font-size=\"14\" font-weight=\"bold\">" + xml_escape(title) + "</text>\n";
    for (double t = ya.lo; t <= ya.hi + ya.step * 1e-6; t += ya.step) {
        s += "<line x1=\"" + fmt(px0, 1) + "\" y1=\"" + fmt(Y(t), 1) + "\" x2=\"" + fmt(px0 + pw, 1) + "\" y2=\"" +
             fmt(Y(t), 1) + "\" stroke=\"#e0e0e0\"/>\n";
        s += "<text x=\"" + fmt(px0 - 6, 1) + "\" y=\"" + fmt(Y(t) + 4, 1) + "\" text-anchor=\"end\" font-size=\"11\">" +
             fmt(t, ya.decimals) + "</text>\n";
    }
    const double first_tick = std::ceil(xa.lo / xa.step - 1e-9) * xa.step;
    for (double t = first_tick; t <= xa.hi + 1e-9; t += xa.step) {
        s += "<line x1=\"" + fmt(X(t), 1) + "\" y1=\"" + fmt(py0 + ph, 1) + "\" x2=\"" + fmt(X(t), 1) + "\" y2=\"" +
             fmt(py0 + ph + 5, 1) + "\" stroke=\"#333333\"/>\n";
        s += "<text x=\"" + fmt(X(t), 1) + "\" y=\"" + fmt(py0 + ph + 18, 1) + "\" text-anchor=\"middle\" font-size=\"11\">" +
             fmt(t, 0) + "</text>\n";
    }
    s += "<rect x=\"" + fmt(px0, 1) + "\" y=\"" + fmt(py0, 1) + "\" width=\"" + fmt(pw, 1) + "\" height=\"" + fmt(ph, 1) +
         "\" fill=\"none\" stroke=\"#333333\"/>\n";
    s += "<text x=\"" + fmt(px0 + pw / 2, 1) + "\" y=\"" + fmt(py0 + ph + 36, 1) +
         "\" text-anchor=\"middle\" font-size=\"12\">epoch</text>\n";
    s += "<text transform=\"translate(" + fmt(x0 + 16, 1) + "," + fmt(py0 + ph / 2, 1) +
         ") rotate(-90)\" text-anchor=\"middle\" font-size=\"12\">" + xml_escape(ylabel) + "</text>\n";
    for (size_t r = 0; r < xs.size(); ++r) {
        std::string points;
        for (size_t i = 0; i < xs[r].size(); ++i) points += (i ? " " : "") + fmt(X(xs[r][i]), 1) + "," + fmt(Y(ys[r][i]), 1);
        s += "<polyline fill=\"none\" stroke=\"" + std::string(colour(r)) + "\" stroke-width=\"2\"" + dash(r) +
             " points=\"" + points + "\"/>\n";
        for (size_t i = 0; i < xs[r].size(); ++i)
            s += "<circle cx=\"" + fmt(X(xs[r][i]), 1) + "\" cy=\"" + fmt(Y(ys[r][i]), 1) + "\" r=\"2.5\" fill=\"" +
                 colour(r) + "\"/>\n";
    }
    return s + "</g>\n";
}

}  // namespace plot_detail

// The SVG of `runs` (see the top of this file). Runs that share a label get their source
// file's folder added to it ("speq W2A2 (seed1)"), so the legend tells them apart.
inline std::string curves_svg(std::vector<Curve> runs, const std::string& title = "") {
    using namespace plot_detail;
    SPEQ_CHECK(!runs.empty(), "curves_svg: no runs to plot");
    for (const Curve& c : runs) {
        SPEQ_CHECK(!c.epoch.empty(), "curves_svg: run '", c.label, "' (", c.source, ") has no epochs");
        SPEQ_CHECK(c.train_loss.size() == c.epoch.size() && c.test_top1.size() == c.epoch.size(), "curves_svg: run '",
                   c.label, "': epoch, train_loss and test_top1 have different lengths");
        for (size_t i = 0; i < c.epoch.size(); ++i)
            SPEQ_CHECK(std::isfinite(c.epoch[i]) && std::isfinite(c.train_loss[i]) && std::isfinite(c.test_top1[i]),
                       "curves_svg: run '", c.label, "' (", c.source, ") has a value that is not finite at epoch ",
                       c.epoch[i]);
    }
    std::vector<std::string> labels;
    for (const Curve& c : runs) labels.push_back(c.label);
    for (size_t i = 0; i < runs.size(); ++i)
        if (std::count(labels.begin(), labels.end(), labels[i]) > 1) {
            const std::string folder = std::filesystem::path(runs[i].source).parent_path().filename().string();
            runs[i].label += " (" + (folder.empty() ? runs[i].source : folder) + ")";
        }

    const double width = 960, panel_h = 330, legend_row = 22;
    const size_t per_row = 3;
    const size_t legend_rows = (runs.size() + per_row - 1) / per_row;
    const double top = title.empty() ? 0 : 30;
    const double height = top + panel_h + 16 + legend_rows * legend_row + 10;

    std::vector<std::vector<double>> xs, loss, top1;
    for (const Curve& c : runs) {
        xs.push_back(c.epoch);
        loss.push_back(c.train_loss);
        std::vector<double> percent;
        for (double v : c.test_top1) percent.push_back(100.0 * v);
        top1.push_back(percent);
    }

    std::string s = "<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n";
    s += "<svg xmlns=\"http://www.w3.org/2000/svg\" width=\"" + fmt(width, 0) + "\" height=\"" + fmt(height, 0) +
         "\" viewBox=\"0 0 " + fmt(width, 0) + " " + fmt(height, 0) + "\" font-family=\"sans-serif\">\n";
    s += "<title>" + xml_escape(title.empty() ? "training curves" : title) + "</title>\n";
    s += "<rect width=\"100%\" height=\"100%\" fill=\"white\"/>\n";
    if (!title.empty())
        s += "<text x=\"" + fmt(width / 2, 1) + "\" y=\"22\" text-anchor=\"middle\" font-size=\"16\" font-weight=\"bold\">" +
             xml_escape(title) + "</text>\n";
    s += panel(0, top, width / 2, panel_h, "training loss", "loss", xs, loss, true);
    s += panel(width / 2, top, width / 2, panel_h, "test top-1", "top-1 (%)", xs, top1, false);

    s += "<g font-size=\"12\">\n";
    const double legend_y = top + panel_h + 16, column = (width - 2 * 62) / per_row;
    for (size_t i = 0; i < runs.size(); ++i) {
        const double x = 62 + (i % per_row) * column, y = legend_y + (i / per_row) * legend_row;
        s += "<line x1=\"" + fmt(x, 1) + "\" y1=\"" + fmt(y, 1) + "\" x2=\"" + fmt(x + 28, 1) + "\" y2=\"" + fmt(y, 1) +
             "\" stroke=\"" + colour(i) + "\" stroke-width=\"2\"" + dash(i) + "/>\n";
        s += "<text x=\"" + fmt(x + 36, 1) + "\" y=\"" + fmt(y + 4, 1) + "\">" + xml_escape(runs[i].label) + "</text>\n";
    }
    s += "</g>\n</svg>\n";
    return s;
}

}  // namespace speq::train
