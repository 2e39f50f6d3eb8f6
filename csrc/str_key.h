// Hash-map key over a code-point span (used to find equal tokens / exact matches).
#pragma once

#include <cstdint>
#include <cstring>

namespace fk {

struct SpanKey {
  const uint32_t* p;
  int64_t n;
  bool operator==(const SpanKey& o) const {
    return n == o.n && (n == 0 || std::memcmp(p, o.p, static_cast<size_t>(n) * sizeof(uint32_t)) == 0);
  }
};

struct SpanKeyHash {
  size_t operator()(const SpanKey& k) const {
    uint64_t h = 0x9E3779B97F4A7C15ull ^ static_cast<uint64_t>(k.n);
    for (int64_t i = 0; i < k.n; ++i) {
      h ^= k.p[i];
      h *= 0xFF51AFD7ED558CCDull;
      h ^= h >> 29;
    }
    return static_cast<size_t>(h);
  }
};

}  // namespace fk
