// The include directions of include/speq, as docs/architecture.md states them ("Direction of
// includes"), checked against every #include line of every header, so the layering holds without
// anyone having to remember it. The checker itself is shown to catch a wrong arrow first.
#include <doctest/doctest.h>

#include <filesystem>
#include <fstream>
#include <map>
#include <regex>
#include <set>
#include <sstream>
#include <string>
#include <vector>

namespace fs = std::filesystem;

namespace {

// "ops" or "ops/batch_norm_act.hpp" -> what it may include besides its own folder: folders
// ("core") or single headers ("quant/bits.hpp").
using Arrows = std::map<std::string, std::set<std::string>>;

std::string read_text(const fs::path& file) {
    std::ifstream in(file);
    REQUIRE_MESSAGE(in.good(), "cannot read ", file.string());
    std::stringstream text;
    text << in.rdbuf();
    return text.str();
}

std::string trim(const std::string& s) {
    const size_t begin = s.find_first_not_of(" \t");
    if (begin == std::string::npos) return "";
    return s.substr(begin, s.find_last_not_of(" \t") - begin + 1);
}

// The first ``` block after the "## Direction of includes" heading: "from -> to, to, ...".
Arrows read_arrows(const std::string& architecture_md) {
    const size_t heading = architecture_md.find("## Direction of includes");
    REQUIRE_MESSAGE(heading != std::string::npos, "docs/architecture.md has no '## Direction of includes'");
    const size_t open = architecture_md.find("```", heading);
    const size_t close = architecture_md.find("```", open + 3);
    REQUIRE(open != std::string::npos);
    REQUIRE(close != std::string::npos);
    std::istringstream block(architecture_md.substr(open + 3, close - open - 3));
    Arrows arrows;
    for (std::string line; std::getline(block, line);) {
        const size_t arrow = line.find("->");
        if (arrow == std::string::npos) continue;
        std::set<std::string>& to = arrows[trim(line.substr(0, arrow))];
        std::istringstream targets(line.substr(arrow + 2));
        for (std::string t; std::getline(targets, t, ',');) to.insert(trim(t));
    }
    return arrows;
}

// Every include of `text` (the header at `header`, e.g. "ops/conv2d.hpp") that the arrows do not
// allow, as "ops/conv2d.hpp includes nn/module.hpp".
std::vector<std::string> wrong_includes(const Arrows& arrows, const std::string& header, const std::string& text) {
    const std::string folder = header.substr(0, header.find('/'));
    std::set<std::string> allowed = {folder};
    for (const std::string& key : {folder, header})
        if (auto it = arrows.find(key); it != arrows.end()) allowed.insert(it->second.begin(), it->second.end());
    static const std::regex speq_include(R"(^\s*#\s*include\s*["<]speq/([^">]+)[">])");
    static const std::regex mpi_include(R"(^\s*#\s*include\s*[<"]mpi\.h[>"])");
    std::vector<std::string> wrong;
    std::istringstream lines(text);
    for (std::string line; std::getline(lines, line);) {
        std::smatch m;
        if (std::regex_search(line, m, speq_include)) {
            const std::string target = m[1];
            const std::string target_folder = target.find('/') == std::string::npos ? "" : target.substr(0, target.find('/'));
            if (!allowed.count(target) && !allowed.count(target_folder)) wrong.push_back(header + " includes " + target);
        } else if (folder != "dist" && std::regex_search(line, mpi_include)) {  // dist/ wraps MPI
            wrong.push_back(header + " includes <mpi.h>");
        }
    }
    return wrong;
}

}  // namespace

TEST_CASE("layering: the checker reads the arrows and catches an include that runs the wrong way") {
    const Arrows arrows = read_arrows(
        "## Direction of includes\n```\nops -> kernels, core\nops/special.hpp -> quant/bits.hpp\n"
        "core -> core\n```\n");
    CHECK(arrows.at("ops") == std::set<std::string>{"kernels", "core"});
    CHECK(wrong_includes(arrows, "ops/add.hpp", "#include \"speq/core/tape.hpp\"\n#include \"speq/ops/relu.hpp\"\n")
              .empty());
    CHECK(wrong_includes(arrows, "ops/add.hpp", "#include \"speq/nn/module.hpp\"\n") ==
          std::vector<std::string>{"ops/add.hpp includes nn/module.hpp"});
    // A single header's exception is its own, and covers that header only.
    CHECK(wrong_includes(arrows, "ops/special.hpp", "#include \"speq/quant/bits.hpp\"\n").empty());
    CHECK(wrong_includes(arrows, "ops/special.hpp", "#include \"speq/quant/lsq.hpp\"\n").size() == 1);
    CHECK(wrong_includes(arrows, "ops/add.hpp", "#include \"speq/quant/bits.hpp\"\n").size() == 1);
    CHECK(wrong_includes(arrows, "core/tape.hpp", "  #  include <speq/ops/add.hpp>\n").size() == 1);
    CHECK(wrong_includes(arrows, "core/tape.hpp", "#include <mpi.h>\n") ==
          std::vector<std::string>{"core/tape.hpp includes <mpi.h>"});
    CHECK(wrong_includes(arrows, "dist/mpi_communicator.hpp", "#include <mpi.h>\n").empty());
}

TEST_CASE("layering: every #include in include/speq follows docs/architecture.md's arrows") {
    const fs::path root(SPEQ_SOURCE_DIR);
    const Arrows arrows = read_arrows(read_text(root / "docs" / "architecture.md"));
    REQUIRE(arrows.count("core"));
    REQUIRE(arrows.count("train"));
    const fs::path include = root / "include" / "speq";
    int headers = 0;
    std::vector<std::string> wrong;
    for (const auto& entry : fs::recursive_directory_iterator(include)) {
        if (!entry.is_regular_file() || entry.path().extension() != ".hpp") continue;
        const std::string header = fs::relative(entry.path(), include).generic_string();
        if (header.find('/') == std::string::npos) continue;  // speq.hpp includes everything, by design
        // Every folder must have its arrow: a new folder is a decision the document records.
        CHECK_MESSAGE(arrows.count(header.substr(0, header.find('/'))),
                      "docs/architecture.md has no arrow for the folder of ", header);
        for (const std::string& w : wrong_includes(arrows, header, read_text(entry.path()))) wrong.push_back(w);
        ++headers;
    }
    CHECK(headers > 50);
    for (const std::string& w : wrong) FAIL_CHECK(w, " (docs/architecture.md, Direction of includes)");
}
