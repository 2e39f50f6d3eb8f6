// Exact alignment of two tokenisations of the same bytes: O(n + m) two pointers over the
// tokens' byte lengths, after one pass that checks the bytes are identical.
//
// Zero-width tokens (b""): where both sides have zero-width tokens at the same byte offset,
// those tokens form a group of their own; zero-width tokens on one side only join the group
// that starts at their offset, or the last group when they sit at the very end of the text.
// So every group has at least one token on each side unless one whole sequence is empty.
#include <algorithm>
#include <cstring>

#include "align.h"

namespace fk {
namespace {

// Finds the first byte where the concatenations of a and b differ. Returns false if equal.
template <class A, class B>
bool first_divergence(const A& a, const B& b, SpanOutcome& out) {
  const int64_t na = a.size(), nb = b.size();
  int64_t ia = 0, ib = 0, oa = 0, ob = 0, pos = 0;
  while (true) {
    while (ia < na && oa == a.len(ia)) {
      ++ia;
      oa = 0;
    }
    while (ib < nb && ob == b.len(ib)) {
      ++ib;
      ob = 0;
    }
    if (ia == na || ib == nb) break;
    const int64_t k = std::min(a.len(ia) - oa, b.len(ib) - ob);
    const char* pa = a.data(ia) + oa;
    const char* pb = b.data(ib) + ob;
    if (std::memcmp(pa, pb, static_cast<size_t>(k)) != 0) {
      int64_t d = 0;
      while (pa[d] == pb[d]) ++d;
      out.ok = false;
      out.offset = pos + d;
      out.a_index = ia;
      out.b_index = ib;
      return true;
    }
    oa += k;
    ob += k;
    pos += k;
  }
  if (ia == na && ib == nb) return false;
  out.ok = false;  // one text is a strict prefix of the other
  out.offset = pos;
  out.a_index = ia;
  out.b_index = ib;
  return true;
}

template <class A, class B>
void group_spans(const A& a, const B& b, std::vector<int64_t>& g) {
  const int64_t n = a.size(), m = b.size();
  int64_t i = 0, j = 0;
  g.clear();
  auto emit = [&](int64_t a0, int64_t a1, int64_t b0, int64_t b1) {
    g.push_back(a0);
    g.push_back(a1);
    g.push_back(b0);
    g.push_back(b1);
  };
  while (i < n || j < m) {
    const int64_t gi = i, gj = j;
    int64_t zi = i, zj = j;
    while (zi < n && a.len(zi) == 0) ++zi;
    while (zj < m && b.len(zj) == 0) ++zj;
    if (zi > i && zj > j) {  // zero-width tokens on both sides: a group of their own
      emit(i, zi, j, zj);
      i = zi;
      j = zj;
      continue;
    }
    i = zi;  // one-sided zero-width tokens stay in the group being built
    j = zj;
    if (i == n || j == m) {
      // Bytes are verified equal, so both have ended: only trailing zero-width tokens remain.
      if (!g.empty()) {
        g[g.size() - 3] = n;
        g[g.size() - 1] = m;
      } else {
        emit(gi, n, gj, m);
      }
      break;
    }
    int64_t pa = a.len(i++), pb = b.len(j++);
    while (pa != pb) {
      if (pa < pb) {
        pa += a.len(i++);
      } else {
        pb += b.len(j++);
      }
    }
    emit(gi, i, gj, j);
  }
}

template <class A, class B>
void span_align_impl(const A& a, const B& b, SpanOutcome& out) {
  out.ok = true;
  out.offset = out.a_index = out.b_index = -1;
  out.groups.clear();
  if (first_divergence(a, b, out)) return;
  group_spans(a, b, out.groups);
}

}  // namespace

void span_align_ptr(const PtrTokens& a, const PtrTokens& b, SpanOutcome& out) { span_align_impl(a, b, out); }

void span_align_ids(const IdTokens& a, const IdTokens& b, SpanOutcome& out) { span_align_impl(a, b, out); }

}  // namespace fk
