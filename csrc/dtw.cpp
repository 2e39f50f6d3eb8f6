// FuseLLM-compatible DTW over two token sequences with Levenshtein cell costs.
//
// Recurrence (same as FuseLLM's dtw()): D[i][j] = cost(i, j) + min(D[i-1][j-1], D[i-1][j],
// D[i][j-1]) with D outside the grid = infinity except the virtual corner D[-1][-1] = 0. The
// backtrace from (n-1, m-1) takes the first minimum in the order diagonal, up (i-1), left
// (j-1); that is the same comparison the forward pass makes, so the forward pass stores the
// chosen direction (one byte per cell) and keeps only two rows of D.
//
// Full mode computes every cell (no pruning, so nothing to prove): the cost of a cell is a
// lookup in a table of distances between the *distinct* strings of a and b (see full_dp).
// Band mode restricts row i to the columns [lo_i, hi_i]: the b tokens whose character span
// meets a_i's span (closed intervals, spans scaled by total length), widened by `band`
// non-empty tokens on each side (with any empty tokens in between), made monotone and
// connected so a path always exists.
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

// Cumulative token widths: the given widths, or the strings' code-point lengths.
std::vector<int64_t> cumulative(const StrSeq& s, const std::vector<int64_t>& widths) {
  const int64_t n = s.size();
  std::vector<int64_t> c(n + 1, 0);
  for (int64_t i = 0; i < n; ++i) c[i + 1] = c[i] + (widths.empty() ? s.len(i) : widths[i]);
  return c;
}

// Offset-guided band: for each row i the inclusive column range [lo[i], hi[i]]. Token
// positions come from the widths (byte lengths, say) or else the code-point lengths.
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
      while (p_lo < m && cb[p_lo + 1] < lo_x) ++p_lo;  // first j with cb[j+1] >= lo_x
      while (p_hi < m && cb[p_hi] <= hi_x) ++p_hi;     // first j with cb[j] > hi_x
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

// Cell costs of the banded DP: a_i's pattern is loaded once per row and compared with the
// row's few b strings (a narrow band meets few repeated pairs, so nothing is cached).
class RowCosts {
 public:
  RowCosts(const StrSeq& a, const StrSeq& b) : a_(a), b_(b) {}
  void begin_row(int64_t i) { fp_.load(a_.data(i), a_.len(i)); }
  void end_row() { fp_.unload(); }
  inline int64_t operator()(int64_t j) { return fp_.distance(b_.data(j), b_.len(j)); }

 private:
  const StrSeq& a_;
  const StrSeq& b_;
  FixedPattern fp_;
};

// Backtrace over stored directions (0 diagonal, 1 up = a-1, 2 left = b-1): FuseLLM's order of
// preference is already encoded in them. row_lo/row_end/row_off locate row i's cells in dir.
void backtrace(const std::vector<uint8_t>& dir, const std::vector<int64_t>& row_lo,
               const std::vector<int64_t>& row_end, const std::vector<int64_t>& row_off, int64_t n, int64_t m,
               DtwPath& out) {
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

// Banded DP: row i covers the columns [lo[i], hi[i]] (monotone and connected, see band_ranges).
void run_band_dp(const StrSeq& a, const StrSeq& b, RowCosts& cost, const std::vector<int64_t>& lo,
                 const std::vector<int64_t>& hi, DtwPath& out) {
  const int64_t n = a.size(), m = b.size();
  std::vector<int64_t> row_lo(n), row_end(n), row_off(n);
  int64_t total = 0;
  for (int64_t i = 0; i < n; ++i) {
    row_lo[i] = lo[i];
    row_end[i] = hi[i];
    row_off[i] = total;
    total += hi[i] - lo[i] + 1;
  }
  std::vector<uint8_t> dir(static_cast<size_t>(total));
  std::vector<int64_t> prev(m, kInf), cur(m, kInf);
  int64_t plo = 0, phi = -1;  // columns of the previous row
  for (int64_t i = 0; i < n; ++i) {
    uint8_t* drow = dir.data() + row_off[i] - lo[i];  // indexed by column
    const int64_t* P = prev.data();
    int64_t* C = cur.data();
    cost.begin_row(i);
    int64_t left = kInf;
    for (int64_t j = lo[i]; j <= hi[i]; ++j) {
      int64_t diag = kInf, up = kInf;
      if (i == 0) {
        diag = j == 0 ? 0 : kInf;
      } else {
        if (j - 1 >= plo && j - 1 <= phi) diag = P[j - 1];
        if (j >= plo && j <= phi) up = P[j];
      }
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
      // every cell of a connected monotone band is reachable
      left = best + cost(j);
      C[j] = left;
      drow[j] = d;
    }
    cost.end_row();
    std::swap(prev, cur);
    plo = lo[i];
    phi = hi[i];
  }
  out.cost = prev[m - 1];
  backtrace(dir, row_lo, row_end, row_off, n, m, out);
}

// ---------------------------------------------------------------- full DTW
//
// Floor: n*m cells, each one min of three, one add and one backtrace byte. The cell cost is a
// lookup in a table of distances between *distinct* strings (token strings repeat heavily in
// real text, so the table is far smaller than the grid), filled up front: a pair whose
// character sets are disjoint (64-bit signatures) has distance max(len) at once, equal strings
// 0, the rest one bit-parallel Myers run with the a-string's masks loaded once per row of the
// table. The DP keeps two rows of int32/int64 costs and one direction byte per cell.

// Two 64-bit sets of hashed code points (two independent hashes): strings whose signatures
// are disjoint in either word share no character. Two words cut false "may share" answers.
struct CharSig {
  uint64_t w0 = 0, w1 = 0;
  bool may_share(const CharSig& o) const { return ((w0 & o.w0) != 0) & ((w1 & o.w1) != 0); }
};

inline CharSig char_signature(const uint32_t* p, int64_t n) {
  CharSig s;
  for (int64_t k = 0; k < n; ++k) {
    s.w0 |= uint64_t{1} << ((p[k] * 0x9E3779B1u) >> 26);
    s.w1 |= uint64_t{1} << ((p[k] * 0x85EBCA77u + 0x27D4EB2Fu) >> 26);
  }
  return s;
}

// Distances from one distinct a-string to every distinct b-string (one row of the table).
class DistinctRows {
 public:
  DistinctRows(const StrSeq& a, const std::vector<int64_t>& ra, const StrSeq& b,
               const std::vector<int64_t>& rb)
      : a_(a), ra_(ra), b_(b), rb_(rb) {
    const int64_t nb = static_cast<int64_t>(rb.size());
    sig_b_.resize(nb);
    len_b_.resize(nb);
    b_index_.reserve(static_cast<size_t>(nb) * 2);
    // b's characters renamed to dense ids, so a pattern's match masks are a plain array
    std::unordered_map<uint32_t, uint32_t> alphabet;
    off_b_.assign(1, 0);
    len32_b_.resize(nb);
    for (int64_t v = 0; v < nb; ++v) {
      const uint32_t* t = b.data(rb[v]);
      len_b_[v] = b.len(rb[v]);
      len32_b_[v] = static_cast<uint32_t>(len_b_[v]);
      sig_b_[v] = char_signature(t, len_b_[v]);
      b_index_.emplace(SpanKey{t, len_b_[v]}, v);
      for (int64_t k = 0; k < len_b_[v]; ++k) {
        dense_b_.push_back(alphabet.emplace(t[k], static_cast<uint32_t>(alphabet.size())).first->second);
      }
      off_b_.push_back(static_cast<int64_t>(dense_b_.size()));
    }
    alphabet_ = std::move(alphabet);
    peq_.assign(alphabet_.size(), 0);
  }

  template <class T>
  void fill(int64_t u, T* row) {
    const uint32_t* p = a_.data(ra_[u]);
    const int64_t lp = a_.len(ra_[u]);
    const CharSig sp = char_signature(p, lp);
    const auto same = b_index_.find(SpanKey{p, lp});
    const int64_t equal_v = same == b_index_.end() ? -1 : same->second;
    const int64_t nb = static_cast<int64_t>(rb_.size());
    // Pass 1 (branch-free): every pair without a common character has distance max(len)
    // (this also covers an empty side); remember the others.
    const uint32_t lp32 = static_cast<uint32_t>(lp);
    const uint32_t* __restrict lens = len32_b_.data();
    for (int64_t v = 0; v < nb; ++v) row[v] = static_cast<T>(std::max(lp32, lens[v]));
    cand_.resize(static_cast<size_t>(nb));
    int32_t* __restrict cand = cand_.data();
    const CharSig* __restrict sigs = sig_b_.data();
    int64_t nc = 0;
    for (int64_t v = 0; v < nb; ++v) {
      cand[nc] = static_cast<int32_t>(v);
      nc += sp.may_share(sigs[v]);
    }
    if (equal_v >= 0) row[equal_v] = 0;
    // Pass 2: the pairs that may share a character.
    bool loaded = false, long_loaded = false;
    for (int64_t k = 0; k < nc; ++k) {
      const int64_t v = cand_[k];
      if (v == equal_v) continue;
      const uint32_t* t = b_.data(rb_[v]);
      const int64_t lt = len_b_[v];
      if (lp == 1 || lt == 1) {  // one character: max(len) minus one if it occurs in the other
        const uint32_t c = lp == 1 ? p[0] : t[0];
        const uint32_t* s = lp == 1 ? t : p;
        const int64_t ls = lp == 1 ? lt : lp;
        row[v] = static_cast<T>(ls - (std::find(s, s + ls, c) != s + ls));
        continue;
      }
      if (lp <= 64) {
        if (!loaded) load_masks(p, lp);
        loaded = true;
        row[v] = static_cast<T>(myers(lp, dense_b_.data() + off_b_[v], lt));
        continue;
      }
      if (!long_loaded) fp_.load(p, lp);
      long_loaded = true;
      row[v] = static_cast<T>(fp_.distance(t, lt));
    }
    if (loaded) unload_masks();
    if (long_loaded) fp_.unload();
  }

 private:
  const StrSeq& a_;
  const std::vector<int64_t>& ra_;
  const StrSeq& b_;
  const std::vector<int64_t>& rb_;
  std::vector<CharSig> sig_b_;
  std::vector<uint32_t> len32_b_;
  std::vector<int64_t> len_b_;
  std::unordered_map<SpanKey, int64_t, SpanKeyHash> b_index_;
  std::vector<int32_t> cand_;
  std::unordered_map<uint32_t, uint32_t> alphabet_;
  std::vector<uint32_t> dense_b_;
  std::vector<int64_t> off_b_;
  std::vector<uint64_t> peq_;  // match mask per dense character of the loaded pattern
  std::vector<uint32_t> loaded_ids_;
  FixedPattern fp_;  // patterns longer than 64 code points

  void load_masks(const uint32_t* p, int64_t lp) {
    loaded_ids_.clear();
    for (int64_t k = 0; k < lp; ++k) {
      const auto it = alphabet_.find(p[k]);
      if (it == alphabet_.end()) continue;  // occurs in no b string: never matches
      peq_[it->second] |= uint64_t{1} << k;
      loaded_ids_.push_back(it->second);
    }
  }
  void unload_masks() {
    for (uint32_t c : loaded_ids_) peq_[c] = 0;
  }
  // Myers/Hyyro global edit distance, pattern of 1..64 characters (masks in peq_).
  int64_t myers(int64_t lp, const uint32_t* t, int64_t lt) const {
    uint64_t vp = ~uint64_t{0}, vn = 0;
    const uint64_t high = uint64_t{1} << (lp - 1);
    int64_t score = lp;
    for (int64_t k = 0; k < lt; ++k) {
      const uint64_t eq = peq_[t[k]];
      const uint64_t xv = eq | vn;
      const uint64_t xh = (((eq & vp) + vp) ^ vp) | eq;
      uint64_t hp = vn | ~(xh | vp);
      uint64_t hn = vp & xh;
      score += static_cast<int64_t>((hp & high) != 0) - static_cast<int64_t>((hn & high) != 0);
      hp = (hp << 1) | 1;
      hn <<= 1;
      vp = hn | ~(xv | hp);
      vn = hp & xv;
    }
    return score;
  }
};

// Largest distinct-pair table (entries); beyond it (thousands of distinct strings on both
// sides) each row's distances are computed when the row is reached.
constexpr int64_t kMaxTableEntries = int64_t{1} << 24;

// The full DP. V holds cumulative costs (int32 when they provably fit), T one distance.
template <class V, class T>
void full_dp(const StrSeq& a, const StrSeq& b, DtwPath& out) {
  const int64_t n = a.size(), m = b.size();
  std::vector<int32_t> ua, ub;
  const std::vector<int64_t> ra = dedupe(a, ua), rb = dedupe(b, ub);
  const int64_t na = static_cast<int64_t>(ra.size()), nb = static_cast<int64_t>(rb.size());
  DistinctRows rows(a, ra, b, rb);
  const bool whole = na <= kMaxTableEntries / nb;
  std::vector<T> table(static_cast<size_t>(whole ? na * nb : 0));
  if (whole) {
    for (int64_t u = 0; u < na; ++u) rows.fill(u, table.data() + u * nb);
  }

  // Cumulative costs are kept as keys 4 * cost + direction (0 diagonal, 1 up, 2 left): the
  // smallest key is the smallest cost and, among equal costs, the first in FuseLLM's order,
  // so one min per predecessor settles both. Stored rows hold 4 * cost.
  constexpr V inf = (std::numeric_limits<V>::max() / 2) & ~V{3};
  // Rows are stored from column -1: X[0] is the (infinite) column left of the grid, except
  // above row 0, where it is the virtual corner D[-1][-1] = 0.
  std::vector<V> prev(static_cast<size_t>(m) + 1, inf), r1(static_cast<size_t>(m) + 1, inf),
      r2(static_cast<size_t>(m) + 1, inf);
  prev[0] = 0;
  std::vector<uint8_t> dir(static_cast<size_t>(n * m));
  const int32_t* __restrict cols = ub.data();
  std::vector<T> spare(whole ? 0 : static_cast<size_t>(nb) * 2);
  // Row i's distances to the distinct b strings (computed here when there is no whole table).
  auto costs_of = [&](int64_t i, int slot) -> const T* {
    if (whole) return table.data() + static_cast<int64_t>(ua[i]) * nb;
    T* buf = spare.data() + slot * nb;
    rows.fill(ua[i], buf);
    return buf;
  };
  // One cell: the first minimum in the order diagonal, up, left (FuseLLM's backtrace argmin)
  // plus the cell's cost c; d gets the direction, left the new stored value (4 * cost).
#define FK_DTW_CELL(diag, up, left, c, d)    \
  {                                          \
    const V dk = (diag), uk = (up) | V{1};   \
    const V du = uk < dk ? uk : dk;          \
    const V lk = (left) | V{2};              \
    const V best = lk < du ? lk : du;        \
    (d) = static_cast<uint8_t>(best & V{3}); \
    (left) = (best & ~V{3}) + ((c) << 2);    \
  }
  int64_t i = 0;
  // Two rows per sweep, the second one column behind: two independent dependency chains
  // (each cell waits for its left neighbour) keep the core busy.
  for (; i + 1 < n; i += 2) {
    const T* __restrict t1 = costs_of(i, 0);
    const T* __restrict t2 = costs_of(i + 1, 1);
    const V* __restrict P = prev.data();
    V* __restrict A = r1.data();
    V* __restrict B = r2.data();
    uint8_t* __restrict d1 = dir.data() + i * m;
    uint8_t* __restrict d2 = d1 + m;
    V left1 = inf, left2 = inf;
    FK_DTW_CELL(P[0], P[1], left1, static_cast<V>(t1[cols[0]]), d1[0]);
    A[1] = left1;
    for (int64_t j = 1; j < m; ++j) {
      FK_DTW_CELL(P[j], P[j + 1], left1, static_cast<V>(t1[cols[j]]), d1[j]);
      A[j + 1] = left1;
      FK_DTW_CELL(A[j - 1], A[j], left2, static_cast<V>(t2[cols[j - 1]]), d2[j - 1]);
      B[j] = left2;
    }
    FK_DTW_CELL(A[m - 1], A[m], left2, static_cast<V>(t2[cols[m - 1]]), d2[m - 1]);
    B[m] = left2;
    A[0] = inf;
    B[0] = inf;
    std::swap(prev, r2);
  }
  if (i < n) {  // an odd last row
    const T* __restrict t1 = costs_of(i, 0);
    const V* __restrict P = prev.data();
    V* __restrict A = r1.data();
    uint8_t* __restrict d1 = dir.data() + i * m;
    V left1 = inf;
    for (int64_t j = 0; j < m; ++j) {
      FK_DTW_CELL(P[j], P[j + 1], left1, static_cast<V>(t1[cols[j]]), d1[j]);
      A[j + 1] = left1;
    }
    A[0] = inf;
    std::swap(prev, r1);
  }
#undef FK_DTW_CELL
  out.cost = static_cast<int64_t>(prev[m] >> 2);
  std::vector<int64_t> row_lo(n, 0), row_end(n, m - 1), row_off(n);
  for (int64_t i = 0; i < n; ++i) row_off[i] = i * m;
  backtrace(dir, row_lo, row_end, row_off, n, m, out);
}

}  // namespace

void dtw_align(const StrSeq& a, const StrSeq& b, int64_t band, DtwPath& out,
               const std::vector<int64_t>& a_widths, const std::vector<int64_t>& b_widths) {
  const int64_t n = a.size(), m = b.size();
  if (n == 0 || m == 0) throw std::invalid_argument("dtw needs at least one token on each side");
  if (band < 0) {
    if (n > kMaxDtwCells / m) {
      throw std::invalid_argument("full DTW of " + std::to_string(n) + " x " + std::to_string(m) +
                                  " tokens needs more than 1 GiB of backtrace; pass band=");
    }
    int64_t max_len = 0;
    for (int64_t i = 0; i < n; ++i) max_len = std::max(max_len, a.len(i));
    for (int64_t j = 0; j < m; ++j) max_len = std::max(max_len, b.len(j));
    // every path has at most n + m - 1 cells, each costing at most max_len; int32 keys hold
    // 4 * cost (see full_dp) with room to spare below their infinity (2^30)
    const bool small = (n + m) * std::max<int64_t>(max_len, 1) < (int64_t{1} << 27);
    if (max_len <= 255) {
      small ? full_dp<int32_t, uint8_t>(a, b, out) : full_dp<int64_t, uint8_t>(a, b, out);
    } else {
      small ? full_dp<int32_t, uint32_t>(a, b, out) : full_dp<int64_t, uint32_t>(a, b, out);
    }
    return;
  }
  std::vector<int64_t> lo, hi;
  // a band of m or more tokens on each side covers every column; clamping avoids overflow
  band_ranges(a, b, a_widths, b_widths, std::min(band, m + 1), lo, hi);
  int64_t cells = 0;
  for (int64_t i = 0; i < n; ++i) cells += hi[i] - lo[i] + 1;
  if (cells > kMaxDtwCells) {
    throw std::invalid_argument("dtw with band=" + std::to_string(band) + " covers " + std::to_string(cells) +
                                " cells of the " + std::to_string(n) + " x " + std::to_string(m) +
                                " grid, more than the limit of " + std::to_string(kMaxDtwCells) +
                                " (1 GiB of backtrace); pass a smaller band");
  }
  RowCosts cost(a, b);
  run_band_dp(a, b, cost, lo, hi, out);
}

}  // namespace fk
