// Minimum-edit-distance vocabulary mapping (MinED): for every source string, the target
// string with the smallest Levenshtein distance, ties broken by the lowest target index.
//
// Exact matches are a hash lookup. The rest is a branch-and-bound search per source, seeded
// with the distances to the source's neighbours in the lexicographic order of the targets
// (forward and reversed strings: shared prefixes and suffixes). Targets are bucketed by length
// (ascending index inside a bucket) and visited in order of length difference |la - lt| (a
// lower bound on the distance), so the search stops as soon as the difference exceeds the best
// distance so far. Inside a bucket a 64-bit character signature gives a second lower bound: a
// character of one string that the other lacks needs at least one edit, and one substitution
// fixes at most one such character per side, so d >= max(|sig_a & ~sig_t|, |sig_t & ~sig_a|)
// (hash collisions only weaken the bound); a 32-bucket character histogram gives a third,
// stronger one for long strings (Hist below). Only candidates that survive the bounds get a
// bit-parallel distance, which stops as soon as it provably exceeds the best distance so far;
// candidates are tried in order of their lower bound, so the search stops right after the
// bound passes the best distance found.
#include <algorithm>
#include <cstdlib>
#include <cstring>
#include <stdexcept>
#include <unordered_map>

#if defined(__SSE2__)
#include <emmintrin.h>
#endif

#include "align.h"
#include "levenshtein.h"
#include "parallel.h"
#include "portable.h"
#include "str_key.h"

namespace fk {
namespace {

inline uint64_t signature(const uint32_t* p, int64_t n) {
  uint64_t s = 0;
  for (int64_t i = 0; i < n; ++i) s |= uint64_t{1} << ((p[i] * 0x9E3779B1u) >> 26);
  return s;
}

// Character counts in 32 hashed buckets (saturating at 255). For strings a, t:
// d(a, t) >= max(sum_b max(0, A_b - T_b), sum_b max(0, T_b - A_b)): every surplus character
// of one side needs its own deletion or substitution. Merged buckets and saturation only
// shrink the sums, so the bound stays valid.
struct Hist {
  alignas(16) uint8_t c[32];
};

inline void histogram(const uint32_t* p, int64_t n, Hist& h) {
  std::memset(h.c, 0, sizeof(h.c));
  for (int64_t i = 0; i < n; ++i) {
    uint8_t& x = h.c[(p[i] * 0x9E3779B1u) >> 27];
    if (x != 255) ++x;
  }
}

inline int64_t hist_bound(const Hist& a, const Hist& t) {
#if defined(__SSE2__)
  const __m128i a0 = _mm_load_si128(reinterpret_cast<const __m128i*>(a.c));
  const __m128i a1 = _mm_load_si128(reinterpret_cast<const __m128i*>(a.c + 16));
  const __m128i t0 = _mm_load_si128(reinterpret_cast<const __m128i*>(t.c));
  const __m128i t1 = _mm_load_si128(reinterpret_cast<const __m128i*>(t.c + 16));
  const __m128i z = _mm_setzero_si128();
  const __m128i sa =
      _mm_add_epi64(_mm_sad_epu8(_mm_subs_epu8(a0, t0), z), _mm_sad_epu8(_mm_subs_epu8(a1, t1), z));
  const __m128i st =
      _mm_add_epi64(_mm_sad_epu8(_mm_subs_epu8(t0, a0), z), _mm_sad_epu8(_mm_subs_epu8(t1, a1), z));
  const int64_t ea = _mm_cvtsi128_si32(sa) + _mm_cvtsi128_si32(_mm_srli_si128(sa, 8));
  const int64_t et = _mm_cvtsi128_si32(st) + _mm_cvtsi128_si32(_mm_srli_si128(st, 8));
  return std::max(ea, et);
#else
  int64_t ea = 0, et = 0;
  for (int b = 0; b < 32; ++b) {
    ea += a.c[b] > t.c[b] ? a.c[b] - t.c[b] : 0;
    et += t.c[b] > a.c[b] ? t.c[b] - a.c[b] : 0;
  }
  return std::max(ea, et);
#endif
}

// Targets sorted by (length, index); bucket L is entries [start[L], start[L+1]).
struct Buckets {
  std::vector<int64_t> start;
  std::vector<int64_t> idx;
  std::vector<uint64_t> sig;
  std::vector<Hist> hist;
  int64_t max_len = 0;
};

struct Search {
  const StrSeq* target;
  const Buckets* bk;
  const std::vector<int64_t>* fwd;  // target ids in lexicographic order of the strings
  const std::vector<int64_t>* rev;  // ... and of the reversed strings
};

// Code-point strings compared from the front (Rev = false) or from the back (Rev = true).
template <bool Rev>
inline bool span_less(const uint32_t* a, int64_t la, const uint32_t* b, int64_t lb) {
  const int64_t n = std::min(la, lb);
  for (int64_t k = 0; k < n; ++k) {
    const uint32_t x = Rev ? a[la - 1 - k] : a[k];
    const uint32_t y = Rev ? b[lb - 1 - k] : b[k];
    if (x != y) return x < y;
  }
  return la < lb;
}

// Targets sharing a long prefix or suffix with the source are likely near it: their
// distances give a tight first bound, so the bucket scan below prunes nearly everything.
constexpr int64_t kSeedNeighbours = 4;

// Shared leading code points of two strings: the prefix-preferring search's tie-break.
inline int64_t common_prefix(const uint32_t* a, int64_t la, const uint32_t* b, int64_t lb) {
  const int64_t n = std::min(la, lb);
  int64_t k = 0;
  while (k < n && a[k] == b[k]) ++k;
  return k;
}

// Order of candidates: distance, then (PreferPrefix only) more shared leading code points,
// then the lower index.
template <bool PreferPrefix>
inline bool better(int64_t d, int64_t l, int64_t t, int64_t best, int64_t bestl, int64_t bestj) {
  if (d != best) return d < best;
  if (PreferPrefix && l != bestl) return l > bestl;
  return t < bestj;
}

template <bool P>
inline int64_t shared(const StrSeq& target, int64_t t, const uint32_t* a, int64_t la) {
  return P ? common_prefix(a, la, target.data(t), target.len(t)) : 0;
}

template <bool Rev, bool P>
inline void seed_from(const Search& S, const std::vector<int64_t>& order, FixedPattern& fp, const uint32_t* a,
                      int64_t la, int64_t& best, int64_t& bestl, int64_t& bestj) {
  const StrSeq& target = *S.target;
  const auto it = std::lower_bound(order.begin(), order.end(), int64_t{0}, [&](int64_t t, int64_t) {
    return span_less<Rev>(target.data(t), target.len(t), a, la);
  });
  const int64_t pos = it - order.begin(), n = static_cast<int64_t>(order.size());
  for (int64_t k = std::max<int64_t>(0, pos - kSeedNeighbours); k < std::min(n, pos + kSeedNeighbours); ++k) {
    const int64_t t = order[k];
    if (std::abs(target.len(t) - la) > best) continue;
    const int64_t d = fp.distance(target.data(t), target.len(t));
    const int64_t l = shared<P>(target, t, a, la);
    if (better<P>(d, l, t, best, bestl, bestj)) {
      best = d;
      bestl = l;
      bestj = t;
    }
  }
}

struct Cand {
  int64_t lb, t;
  bool operator<(const Cand& o) const { return lb != o.lb ? lb < o.lb : t < o.t; }
};

// Best (distance, index) for one source that has no exact match (P: ties go to the most shared
// leading code points first, so only bounds strictly above the best distance prune). Force-
// inlined so that the popcount below compiles to the instruction in the popcnt-targeted caller.
template <bool P>
FK_ALWAYS_INLINE void search_one(const Search& S, FixedPattern& fp, std::vector<Cand>& cand,
                                 const uint32_t* a, int64_t la, int64_t& best_d, int64_t& best_j) {
  const StrSeq& target = *S.target;
  const Buckets& bk = *S.bk;
  const uint64_t sa = signature(a, la);
  Hist ha;
  histogram(a, la, ha);
  int64_t best = kInf, bestj = kInf, bestl = -1;
  fp.load(a, la);
  seed_from<false, P>(S, *S.fwd, fp, a, la, best, bestl, bestj);
  seed_from<true, P>(S, *S.rev, fp, a, la, best, bestl, bestj);
  // Pass 1: lower bounds of every target within the length window; keep those that could
  // still win against the seed.
  cand.clear();
  for (int64_t delta = 0; delta <= best; ++delta) {
    if (la - delta < 0 && la + delta > bk.max_len) break;
    const int64_t floor = std::max<int64_t>(delta, 1);  // no target equals a
    for (int side = 0; side < (delta == 0 ? 1 : 2); ++side) {
      const int64_t L = side == 0 ? la - delta : la + delta;
      if (L < 0 || L > bk.max_len) continue;
      for (int64_t k = bk.start[L], e = bk.start[L + 1]; k < e; ++k) {
        const int64_t t = bk.idx[k];
        if (!P && best == floor && t > bestj) break;  // nothing later in this bucket can win
        if (t == bestj) continue;                     // already known
        const uint64_t st = bk.sig[k];
        int64_t lb = std::max<int64_t>(delta, std::max(popcount64(sa & ~st), popcount64(st & ~sa)));
        if (lb > best || (!P && lb == best && t > bestj)) continue;
        lb = std::max(lb, hist_bound(ha, bk.hist[k]));
        if (lb > best || (!P && lb == best && t > bestj)) continue;
        cand.push_back(Cand{lb, t});
      }
    }
  }
  // Pass 2: exact distances, most promising first; stop once no candidate can win.
  std::sort(cand.begin(), cand.end());
  for (const Cand& c : cand) {
    if (c.lb > best || (!P && c.lb == best && c.t > bestj)) break;
    // only a distance below best (or equal and winning the tie-break) matters: stop above that
    const int64_t d = fp.distance(target.data(c.t), target.len(c.t), (P || c.t < bestj) ? best : best - 1);
    const int64_t l = d == best ? shared<P>(target, c.t, a, la) : 0;
    if (better<P>(d, l, c.t, best, bestl, bestj)) {
      best = d;
      bestl = shared<P>(target, c.t, a, la);
      bestj = c.t;
    }
  }
  fp.unload();
  best_d = best;
  best_j = bestj;
}

struct Job {
  const StrSeq* source;
  const std::unordered_map<SpanKey, int64_t, SpanKeyHash>* exact;
  Search S;
  int64_t* ids;
  int64_t* dist;
};

template <bool P>
FK_ALWAYS_INLINE void run_range(const Job& J, FixedPattern& fp, std::vector<Cand>& cand, int64_t begin,
                                int64_t end) {
  const StrSeq& src = *J.source;
  for (int64_t s = begin; s < end; ++s) {
    const auto it = J.exact->find(SpanKey{src.data(s), src.len(s)});
    if (it != J.exact->end()) {
      J.ids[s] = it->second;
      J.dist[s] = 0;
      continue;
    }
    search_one<P>(J.S, fp, cand, src.data(s), src.len(s), J.dist[s], J.ids[s]);
  }
}

template <bool P>
void run_range_generic(const Job& J, FixedPattern& fp, std::vector<Cand>& cand, int64_t begin, int64_t end) {
  run_range<P>(J, fp, cand, begin, end);
}

// The same compiled for popcnt, chosen at run time where the CPU has it (cpu_has_popcnt()).
template <bool P>
FK_TARGET_POPCNT void run_range_popcnt(const Job& J, FixedPattern& fp, std::vector<Cand>& cand, int64_t begin,
                                       int64_t end) {
  run_range<P>(J, fp, cand, begin, end);
}

}  // namespace

void mined_map(const StrSeq& source, const StrSeq& target, int threads, int64_t* out_ids, int64_t* out_dist) {
  mined_map(source, target, threads, false, out_ids, out_dist);
}

void mined_map(const StrSeq& source, const StrSeq& target, int threads, bool prefer_prefix, int64_t* out_ids,
               int64_t* out_dist) {
  const int64_t ns = source.size(), nt = target.size();
  if (ns == 0) return;
  if (nt == 0) throw std::invalid_argument("target is empty: nothing to map to");

  std::unordered_map<SpanKey, int64_t, SpanKeyHash> exact;
  exact.reserve(static_cast<size_t>(nt) * 2);
  // emplace keeps the first, so equal strings map to the lowest index
  for (int64_t t = 0; t < nt; ++t) exact.emplace(SpanKey{target.data(t), target.len(t)}, t);

  Buckets bk;
  for (int64_t t = 0; t < nt; ++t) bk.max_len = std::max(bk.max_len, target.len(t));
  bk.start.assign(bk.max_len + 2, 0);
  for (int64_t t = 0; t < nt; ++t) ++bk.start[target.len(t) + 1];
  for (int64_t L = 0; L <= bk.max_len; ++L) bk.start[L + 1] += bk.start[L];
  bk.idx.resize(nt);
  bk.sig.resize(nt);
  bk.hist.resize(nt);
  {
    std::vector<int64_t> fill(bk.start.begin(), bk.start.end() - 1);
    for (int64_t t = 0; t < nt; ++t) {  // counting sort keeps ascending index within a length
      const int64_t k = fill[target.len(t)]++;
      bk.idx[k] = t;
      bk.sig[k] = signature(target.data(t), target.len(t));
      histogram(target.data(t), target.len(t), bk.hist[k]);
    }
  }

  std::vector<int64_t> fwd(nt), rev(nt);
  for (int64_t t = 0; t < nt; ++t) fwd[t] = rev[t] = t;
  std::stable_sort(fwd.begin(), fwd.end(), [&](int64_t x, int64_t y) {
    return span_less<false>(target.data(x), target.len(x), target.data(y), target.len(y));
  });
  std::stable_sort(rev.begin(), rev.end(), [&](int64_t x, int64_t y) {
    return span_less<true>(target.data(x), target.len(x), target.data(y), target.len(y));
  });

  Job J{&source, &exact, Search{&target, &bk, &fwd, &rev}, out_ids, out_dist};
  const int nthreads = resolve_threads(threads);
  std::vector<FixedPattern> patterns(static_cast<size_t>(nthreads));
  std::vector<std::vector<Cand>> cands(static_cast<size_t>(nthreads));
  const bool popcnt = cpu_has_popcnt();
  parallel_for(ns, nthreads, 64, [&](int w, int64_t begin, int64_t end) {
    if (prefer_prefix) {
      if (popcnt) {
        run_range_popcnt<true>(J, patterns[w], cands[w], begin, end);
      } else {
        run_range_generic<true>(J, patterns[w], cands[w], begin, end);
      }
    } else if (popcnt) {
      run_range_popcnt<false>(J, patterns[w], cands[w], begin, end);
    } else {
      run_range_generic<false>(J, patterns[w], cands[w], begin, end);
    }
  });
}

}  // namespace fk
