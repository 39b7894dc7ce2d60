// Errors a kernel reports to its caller instead of crashing, and the size arithmetic that decides
// them. Sizes come from JavaScript numbers (up to 2^53), so their products can overflow int64 and
// size_t: a buffer sized by arguments alone, not bounded by an input's length (attention's score
// scratch), is checked with these before it is allocated.
#pragma once
#include <cstdint>
#include <cstdio>
#include <stdexcept>
#include <string>

#if defined(__unix__) || defined(__APPLE__)
#include <unistd.h>
#endif

namespace adaptkit {

// A failure with a message meant for the user; the binding prefixes the op name.
struct KernelError : std::runtime_error {
  using std::runtime_error::runtime_error;
};

// a * b for non-negative a, b, or -1 when the product does not fit in int64.
inline int64_t mul_or_neg(int64_t a, int64_t b) {
  if (a < 0 || b < 0) return -1;
  if (a != 0 && b > INT64_MAX / a) return -1;
  return a * b;
}

// "68.7 GB": decimal units, as people read memory sizes in messages.
inline std::string format_bytes(double bytes) {
  static const char* const units[] = {"bytes", "kB", "MB", "GB", "TB", "PB", "EB"};
  char buf[48];
  if (!(bytes < 1e21)) {
    std::snprintf(buf, sizeof buf, "%.1e bytes", bytes);
    return buf;
  }
  int u = 0;
  while (bytes >= 1000 && u < 6) {
    bytes /= 1000;
    u++;
  }
  std::snprintf(buf, sizeof buf, u == 0 ? "%.0f %s" : "%.1f %s", bytes, units[u]);
  return buf;
}

// Installed RAM in bytes, or 0 when unknown. Scratch that cannot fit in it can only end in an
// allocation failure or, where the kernel overcommits, in the OOM killer, so it is refused up front.
inline double physical_memory_bytes() {
#if defined(_SC_PHYS_PAGES) && defined(_SC_PAGESIZE)
  const long pages = sysconf(_SC_PHYS_PAGES), page = sysconf(_SC_PAGESIZE);
  if (pages > 0 && page > 0) return static_cast<double>(pages) * static_cast<double>(page);
#endif
  return 0;
}

}  // namespace adaptkit
