// speq/core/error.hpp: the one exception type of speq, and the checks that throw it.
//
// Every error message names what went wrong and where: the op or file, the field, the shape or
// value. Users see these messages, so they are written for people, not for debuggers.
#pragma once

#include <sstream>
#include <stdexcept>
#include <string>
#include <vector>
#include <cstdint>

namespace speq {

// Thrown for every user-facing error: bad shapes, bad files, bad configs.
class Error : public std::runtime_error {
public:
    explicit Error(const std::string& message) : std::runtime_error(message) {}
};

using Shape = std::vector<int64_t>;

// "[2, 3, 4]": how every message prints a shape.
inline std::string to_string(const Shape& shape) {
    std::ostringstream out;
    out << '[';
    for (size_t i = 0; i < shape.size(); ++i) out << (i ? ", " : "") << shape[i];
    out << ']';
    return out.str();
}

// Builds a message from any streamable pieces: fail("conv2d: stride must be >= 1, got ", s).
template <class... Parts>
[[noreturn]] void fail(const Parts&... parts) {
    std::ostringstream out;
    (out << ... << parts);
    throw Error(out.str());
}

// The message every shape mismatch uses: the op, then both shapes.
[[noreturn]] inline void shape_mismatch(const char* op, const char* what, const Shape& a,
                                        const Shape& b) {
    fail(op, ": ", what, ": shapes ", to_string(a), " and ", to_string(b), " do not match");
}

}  // namespace speq

// SPEQ_CHECK(cond, parts...): throw speq::Error built from parts when cond is false.
#define SPEQ_CHECK(cond, ...)                    \
    do {                                         \
        if (!(cond)) ::speq::fail(__VA_ARGS__);  \
    } while (0)
