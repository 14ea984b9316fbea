// Precondition checks inside native code. The Python layer validates user input
// first; these catch contract violations and surface them as Python exceptions
// (pybind11 maps std::invalid_argument -> ValueError) instead of crashing.
#pragma once
#include <cstdint>
#include <sstream>
#include <stdexcept>
#include <string>

#include "gencore/config.h"

namespace gencore {

template <typename... Parts>
[[noreturn]] inline void fail(const Parts&... parts) {
  std::ostringstream message;
  (message << ... << parts);
  throw std::invalid_argument(message.str());
}

// The one message for an input row holding NaN or inf (`what` names the input).
[[noreturn]] inline void fail_non_finite_row(const char* what, int64_t row) {
  fail(what, " contains NaN or inf (row ", row, "); inputs must be finite");
}

}  // namespace gencore

#define GENCORE_CHECK(cond, ...)                 \
  do {                                           \
    if (!(cond)) ::gencore::fail(__VA_ARGS__);   \
  } while (0)
