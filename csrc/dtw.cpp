// FuseLLM-compatible DTW over two token sequences with Levenshtein cell costs.
//
// Recurrence (same as FuseLLM's dtw()): D[i][j] = cost(i, j) + min(D[i-1][j-1], D[i-1][j],
// D[i][j-1]) with D outside the grid = infinity except the virtual corner D[-1][-1] = 0. The
// backtrace from (n-1, m-1) takes the first minimum in the order diagonal, up (i-1), left
// (j-1); that is the same comparison the forward pass makes, so the forward pass stores the
// chosen direction (one byte per cell) and keeps only two rows of D.
//
// Full mode is PrunedDTW (Silva & Batista 2016): a banded pass gives an upper bound, then the
// full DP drops cells whose cost-so-far exceeds it, which changes nothing in the result
// (see run_dp). Distances are cached per pair of distinct strings. Band mode restricts row i to
// the columns [lo_i, hi_i]: the b tokens whose character span meets a_i's span (closed
// intervals, spans scaled by total length), widened by `band` non-empty tokens on each side
// (with any empty tokens in between), made monotone and connected so a path always exists.
#include <algorithm>
#include <cmath>
#include <cstring>
#include <limits>
#include <stdexcept>
#include <string>
#include <unordered_map>

#include "align.h"
#include "levenshtein.h"
#include "str_key.h"

namespace fk {
namespace {

constexpr int64_t kInf = std::numeric_limits<int64_t>::max() / 4;

// Maps each string of s to a dense id of its distinct value; returns the representatives.
std::vector<int64_t> dedupe(const StrSeq& s, std::vector<int32_t>& ids) {
  std::unordered_map<SpanKey, int32_t, SpanKeyHash> seen;
  seen.reserve(static_cast<size_t>(s.size()) * 2);
  std::vector<int64_t> reps;
  ids.resize(static_cast<size_t>(s.size()));
  for (int64_t i = 0; i < s.size(); ++i) {
    auto it = seen.emplace(SpanKey{s.data(i), s.len(i)}, static_cast<int32_t>(reps.size()));
    if (it.second) reps.push_back(i);
    ids[i] = it.first->second;
  }
  return reps;
}

// Offset-guided band: for each row i the inclusive column range [lo[i], hi[i]]. Token
// positions come from the widths (byte lengths, say) or else the code-point lengths.
// Cumulative token widths: the given widths, or the strings' code-point lengths.
std::vector<int64_t> cumulative(const StrSeq& s, const std::vector<int64_t>& widths) {
  const int64_t n = s.size();
  std::vector<int64_t> c(n + 1, 0);
  for (int64_t i = 0; i < n; ++i) c[i + 1] = c[i] + (widths.empty() ? s.len(i) : widths[i]);
  return c;
}

void band_ranges(const StrSeq& a, const StrSeq& b, const std::vector<int64_t>& wa,
                 const std::vector<int64_t>& wb, int64_t band, std::vector<int64_t>& lo,
                 std::vector<int64_t>& hi) {
  const int64_t n = a.size(), m = b.size();
  lo.assign(n, 0);
  hi.assign(n, m - 1);
  const std::vector<int64_t> ca = cumulative(a, wa), cb = cumulative(b, wb);
  std::vector<int64_t> nz(m + 1, 0);  // nz[j]: non-empty strings among b[0..j) (empty ones tie)
  for (int64_t j = 0; j < m; ++j) nz[j + 1] = nz[j] + (b.len(j) > 0);
  const double la = static_cast<double>(ca[n]);
  const double lb = static_cast<double>(cb[m]);
  // x0 and x1 only grow with i, so both searches are pointers that only move forward.
  int64_t p_lo = 0, p_hi = 0;
  for (int64_t i = 0; i < n; ++i) {
    int64_t jlo, jhi;
    if (la > 0 && lb > 0) {
      const double x0 = static_cast<double>(ca[i]) * lb / la;
      const double x1 = static_cast<double>(ca[i + 1]) * lb / la;
      // b tokens whose closed span [cb[j], cb[j+1]] meets [x0, x1]: zero-width tokens at a
      // boundary belong to the rows on both sides of it
      const int64_t lo_x = static_cast<int64_t>(std::ceil(x0));
      const int64_t hi_x = static_cast<int64_t>(std::floor(x1));
      while (p_lo < m && cb[p_lo + 1] < lo_x) ++p_lo;       // first j with cb[j+1] >= lo_x
      while (p_hi < m && cb[p_hi] <= hi_x) ++p_hi;          // first j with cb[j] > hi_x
      jlo = p_lo;
      jhi = p_hi - 1;
    } else {  // no characters to guide us: follow the index diagonal
      jlo = n > 1 ? (i * (m - 1)) / (n - 1) : 0;
      jhi = jlo;
    }
    jlo = std::min(std::max<int64_t>(jlo, 0), m - 1);
    jhi = std::min(std::max(jhi, jlo), m - 1);
    // widen by `band` non-empty tokens each side; runs of empty tokens come along for free
    const int64_t nz_lo = nz[jlo] - band, nz_hi = nz[jhi + 1] + band;
    lo[i] = nz_lo <= 0 ? 0 : static_cast<int64_t>(std::lower_bound(nz.begin(), nz.end(), nz_lo) - nz.begin());
    hi[i] = static_cast<int64_t>(std::upper_bound(nz.begin(), nz.end(), nz_hi) - nz.begin()) - 2;
    hi[i] = std::min(std::max(hi[i], jhi), m - 1);
    lo[i] = std::min(lo[i], jlo);
  }
  // A run of empty a-strings ties with either neighbouring row: give it both neighbours' ranges.
  for (int64_t r0 = 0; r0 < n;) {
    if (a.len(r0) > 0) {
      ++r0;
      continue;
    }
    int64_t r1 = r0;
    while (r1 + 1 < n && a.len(r1 + 1) == 0) ++r1;
    const int64_t l = r0 > 0 ? std::min(lo[r0 - 1], lo[r0]) : lo[r0];
    const int64_t h = r1 + 1 < n ? std::max(hi[r1 + 1], hi[r1]) : hi[r1];
    for (int64_t i = r0; i <= r1; ++i) {
      lo[i] = std::min(lo[i], l);
      hi[i] = std::max(hi[i], h);
    }
    r0 = r1 + 1;
  }
  lo[0] = 0;
  hi[n - 1] = m - 1;
  for (int64_t i = 1; i < n; ++i) {
    hi[i] = std::max(hi[i], hi[i - 1]);
    lo[i] = std::max(lo[i], lo[i - 1]);
    lo[i] = std::min(lo[i], hi[i - 1] + 1);  // a diagonal step from (i-1, hi) stays inside
  }
}

// Cell costs: Levenshtein distances, cached per pair of distinct strings when the cache is
// small enough (tokens repeat a lot in real text), computed with a pattern loaded per row.
class Costs {
 public:
  Costs(const StrSeq& a, const StrSeq& b, bool cache) : a_(a), b_(b) {
    if (!cache) return;
    const std::vector<int64_t> ra = dedupe(a, ua_), rb = dedupe(b, ub_);
    nub_ = static_cast<int64_t>(rb.size());
    const int64_t entries = static_cast<int64_t>(ra.size()) * nub_;
    if (entries <= kMaxCacheEntries) table_.assign(static_cast<size_t>(entries), -1);
  }
  void begin_row(int64_t i) {
    row_ = i;
    loaded_ = false;
    trow_ = table_.empty() ? nullptr : &table_[static_cast<size_t>(ua_[i]) * nub_];
  }
  void end_row() {
    if (loaded_) fp_.unload();
    loaded_ = false;
  }
  inline int64_t operator()(int64_t j) {
    if (trow_ != nullptr) {
      int32_t& c = trow_[ub_[j]];
      if (__builtin_expect(c < 0, 0)) c = static_cast<int32_t>(compute(j));
      return c;
    }
    return compute(j);
  }

 private:
  static constexpr int64_t kMaxCacheEntries = int64_t{1} << 24;  // 64 MiB of int32
  int64_t compute(int64_t j) {
    if (!loaded_) {
      fp_.load(a_.data(row_), a_.len(row_));
      loaded_ = true;
    }
    return fp_.distance(b_.data(j), b_.len(j));
  }
  const StrSeq& a_;
  const StrSeq& b_;
  std::vector<int32_t> ua_, ub_, table_;
  int64_t nub_ = 0;
  int64_t row_ = -1;
  bool loaded_ = false;
  int32_t* trow_ = nullptr;
  FixedPattern fp_;
};

// The DP and backtrace. With fixed ranges (lo/hi non-empty) row i covers [lo[i], hi[i]].
// Otherwise (pruned full DTW) a row starts at the first live column of the row above and
// runs while some predecessor is live; a cell whose cost-so-far exceeds `ub` is dropped.
// Every cell on an optimal path costs at most OPT <= ub so it survives with its exact
// value; dropped cells are never on an optimal path, so they cannot be the first minimum
// of any backtrace step either, and the path is exactly the unpruned one.
void run_dp(const StrSeq& a, const StrSeq& b, Costs& cost, const std::vector<int64_t>& lo,
            const std::vector<int64_t>& hi, int64_t ub, DtwPath& out) {
  const int64_t n = a.size(), m = b.size();
  const bool fixed = !lo.empty();
  std::vector<int64_t> row_lo(n), row_end(n), row_off(n);
  std::vector<uint8_t> dir;
  if (fixed) {
    int64_t total = 0;
    for (int64_t i = 0; i < n; ++i) total += hi[i] - lo[i] + 1;
    dir.reserve(static_cast<size_t>(total));
  } else {
    dir.reserve(static_cast<size_t>(std::min<int64_t>(n * m, int64_t{1} << 24)));
  }
  std::vector<int64_t> prev(m, kInf), cur(m, kInf);
  int64_t plo = 0, phi = -1;  // live columns of the previous row
  for (int64_t i = 0; i < n; ++i) {
    // Rows never start left of the row above's first live column (band rows are monotone).
    const int64_t start = fixed ? lo[i] : (i == 0 ? 0 : plo);
    const int64_t stop = fixed ? hi[i] : m - 1;
    row_lo[i] = start;
    row_off[i] = static_cast<int64_t>(dir.size());
    dir.resize(dir.size() + static_cast<size_t>(stop - start + 1));
    uint8_t* drow = dir.data() + row_off[i] - start;  // indexed by column
    const int64_t* P = prev.data();
    int64_t* C = cur.data();
    cost.begin_row(i);
    int64_t live_lo = -1, live_hi = -1, j = start;
    // One cell given its three predecessors (kInf = none); returns the new value.
    auto cell = [&](int64_t jj, int64_t diag, int64_t up, int64_t left) {
      int64_t best = diag;
      uint8_t d = 0;
      if (up < best) {
        best = up;
        d = 1;
      }
      if (left < best) {
        best = left;
        d = 2;
      }
      int64_t v = kInf;
      if (best < kInf) {  // (unreachable cells only occur next to dropped ones)
        v = best + cost(jj);
        if (v > ub) v = kInf;
      }
      C[jj] = v;
      drow[jj] = d;
      if (v < kInf) {
        if (live_lo < 0) live_lo = jj;
        live_hi = jj;
      }
      return v;
    };
    if (i == 0) {
      int64_t left = kInf;
      for (; j <= stop; ++j) {
        if (!fixed && j > 0 && left >= kInf) break;
        left = cell(j, j == 0 ? 0 : kInf, kInf, left);
      }
    } else {
      // first cell: no left neighbour
      int64_t left = cell(j, j - 1 >= plo && j - 1 <= phi ? P[j - 1] : kInf, j <= phi ? P[j] : kInf, kInf);
      ++j;
      // middle: both predecessors in the row above exist
      const int64_t mid_end = std::min(stop, phi);
      for (; j <= mid_end; ++j) left = cell(j, P[j - 1], P[j], left);
      // one past the row above: only the diagonal from above
      if (j <= stop && j == phi + 1) {
        left = cell(j, P[j - 1], kInf, left);
        ++j;
      }
      // beyond: only the left neighbour
      for (; j <= stop; ++j) {
        if (!fixed && left >= kInf) break;
        left = cell(j, kInf, kInf, left);
      }
    }
    cost.end_row();
    row_end[i] = j - 1;
    dir.resize(static_cast<size_t>(row_off[i] + (j - start)));
    if (live_lo < 0) throw std::logic_error("dtw: no live cell in a row (upper bound below the optimum)");
    std::swap(prev, cur);
    plo = live_lo;
    phi = live_hi;
  }
  out.cost = prev[m - 1];
  if (phi != m - 1 || out.cost >= kInf) throw std::logic_error("dtw: the last cell was dropped");

  // Backtrace (FuseLLM's order of preference is encoded in dir).
  out.ai.clear();
  out.bj.clear();
  int64_t i = n - 1, j = m - 1;
  out.ai.push_back(i);
  out.bj.push_back(j);
  while (i > 0 || j > 0) {
    if (j < row_lo[i] || j > row_end[i]) throw std::logic_error("dtw: backtrace left the computed cells");
    const uint8_t d = dir[row_off[i] + (j - row_lo[i])];
    if (d == 0) {
      --i;
      --j;
    } else if (d == 1) {
      --i;
    } else {
      --j;
    }
    out.ai.push_back(i);
    out.bj.push_back(j);
  }
  std::reverse(out.ai.begin(), out.ai.end());
  std::reverse(out.bj.begin(), out.bj.end());
}

// Band used to get the upper bound for the pruned full DTW: its optimum is a valid path, and
// on two tokenisations of one text it is usually the global optimum, which prunes the most.
constexpr int64_t kUpperBoundBand = 4;

}  // namespace

void dtw_align(const StrSeq& a, const StrSeq& b, int64_t band, DtwPath& out, const std::vector<int64_t>& a_widths,
               const std::vector<int64_t>& b_widths) {
  const int64_t n = a.size(), m = b.size();
  if (n == 0 || m == 0) throw std::invalid_argument("dtw needs at least one token on each side");
  if (band < 0 && n > kMaxDtwCells / m) {
    throw std::invalid_argument("full DTW of " + std::to_string(n) + " x " + std::to_string(m) +
                                " tokens needs more than 1 GiB of backtrace; pass band=");
  }
  // A narrow band meets few repeated pairs; the full DTW revisits them constantly.
  Costs cost(a, b, /*cache=*/band < 0);
  std::vector<int64_t> lo, hi;
  band_ranges(a, b, a_widths, b_widths, band < 0 ? kUpperBoundBand : band, lo, hi);
  run_dp(a, b, cost, lo, hi, kInf, out);
  if (band >= 0) return;
  // Full DTW, pruned by the banded optimum (exactly the unpruned result, see run_dp).
  const int64_t ub = out.cost;
  run_dp(a, b, cost, {}, {}, ub, out);
}

}  // namespace fk
