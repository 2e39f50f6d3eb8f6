// Levenshtein (unit-cost edit) distance on code-point strings.
//
// Bit-parallel algorithm of Myers (1999) in Hyyrö's formulation for global distance: the
// pattern (one string) is preprocessed into per-character match masks ("Peq"), then the
// other string is scanned one character at a time, updating one 64-bit word per 64 pattern
// characters. Patterns of <= 64 code points use one word; longer ones use Myers' blocked
// (multi-word) variant; patterns whose Peq table would be huge fall back to the textbook
// O(n*m) dynamic programme with one row of memory.
#pragma once

#include <algorithm>
#include <cstdint>
#include <cstring>
#include <limits>
#include <vector>

namespace fk {

// "Unbounded": above any edit distance or DTW cost, with headroom so that adding costs to it
// cannot overflow. The default cutoff of the distance functions and the DP's infinity.
constexpr int64_t kInf = std::numeric_limits<int64_t>::max() / 4;

// Mask table for a fixed pattern: direct slots for code points < 256 plus a small
// open-addressing table for the rest. Reused across patterns: set() then clear().
class PatternMasks {
 public:
  static constexpr int kDirect = 256;

  PatternMasks() {
    std::memset(direct_, 0, sizeof(direct_));
    std::fill(direct_row_, direct_row_ + kDirect, -1);
  }

  // Builds the masks of p[0..m) for block width 64; m may exceed 64 (blocked layout).
  void set(const uint32_t* p, int64_t m) {
    len_ = m;
    blocks_ = static_cast<int>((m + 63) / 64);
    if (blocks_ <= 1) {
      ensure_hash(static_cast<size_t>(m));
      for (int64_t i = 0; i < m; ++i) word_slot(p[i]) |= (uint64_t{1} << i);
      pat_ = p;
      return;
    }
    // Blocked layout: each distinct character gets a row of blocks_ words.
    distinct_ = 0;
    ensure_hash(static_cast<size_t>(m));
    rows_.clear();
    for (int64_t i = 0; i < m; ++i) {
      int32_t r = row_of(p[i], /*insert=*/true);
      rows_[static_cast<size_t>(r) * blocks_ + i / 64] |= (uint64_t{1} << (i % 64));
    }
    pat_ = p;
  }

  // Resets the slots touched by the last set() (cost O(pattern length)).
  void clear() {
    for (int64_t i = 0; i < len_; ++i) {
      uint32_t c = pat_[i];
      if (c < kDirect) {
        direct_[c] = 0;
        direct_row_[c] = -1;
      }
    }
    for (size_t slot : touched_) {
      keys_[slot] = kEmpty;
      vals_[slot] = 0;
    }
    touched_.clear();
    hash_used_ = false;
    len_ = 0;
  }

  int blocks() const { return blocks_; }

  // Single-word mask of code point c (pattern length <= 64).
  inline uint64_t mask(uint32_t c) const {
    if (c < kDirect) return direct_[c];
    return hash_used_ ? hash_get(c) : 0;
  }

  // Blocked layout: pointer to the blocks_ masks of c, or nullptr if c is not in the pattern.
  inline const uint64_t* row(uint32_t c) const {
    int32_t r;
    if (c < kDirect) {
      r = direct_row_[c];
    } else {
      if (!hash_used_) return nullptr;
      r = static_cast<int32_t>(hash_get(c)) - 1;
    }
    return r < 0 ? nullptr : &rows_[static_cast<size_t>(r) * blocks_];
  }

 private:
  static constexpr uint32_t kEmpty = 0xFFFFFFFFu;

  void ensure_hash(size_t m) {
    size_t need = 16;
    while (need < 2 * m) need <<= 1;
    if (keys_.size() < need) {
      keys_.assign(need, kEmpty);
      vals_.assign(need, 0);
    }
  }

  inline size_t hash_slot(uint32_t c) const {
    return (static_cast<uint64_t>(c) * 0x9E3779B97F4A7C15ull >> 40) & (keys_.size() - 1);
  }

  inline uint64_t hash_get(uint32_t c) const {
    size_t s = hash_slot(c);
    while (true) {
      uint32_t k = keys_[s];
      if (k == c) return vals_[s];
      if (k == kEmpty) return 0;
      s = (s + 1) & (keys_.size() - 1);
    }
  }

  inline uint64_t& hash_ref(uint32_t c) {
    hash_used_ = true;
    size_t s = hash_slot(c);
    while (keys_[s] != kEmpty && keys_[s] != c) s = (s + 1) & (keys_.size() - 1);
    if (keys_[s] == kEmpty) {
      keys_[s] = c;
      touched_.push_back(s);
    }
    return vals_[s];
  }

  inline uint64_t& word_slot(uint32_t c) { return c < kDirect ? direct_[c] : hash_ref(c); }

  // Row index of c in the blocked layout (hash values store row + 1 so 0 means absent).
  int32_t row_of(uint32_t c, bool insert) {
    if (c < kDirect) {
      if (direct_row_[c] < 0 && insert) {
        direct_row_[c] = distinct_++;
        rows_.resize(static_cast<size_t>(distinct_) * blocks_, 0);
      }
      return direct_row_[c];
    }
    uint64_t& v = hash_ref(c);
    if (v == 0 && insert) {
      v = static_cast<uint64_t>(++distinct_);
      rows_.resize(static_cast<size_t>(distinct_) * blocks_, 0);
    }
    return static_cast<int32_t>(v) - 1;
  }

  uint64_t direct_[kDirect];
  int32_t direct_row_[kDirect];
  std::vector<uint32_t> keys_;
  std::vector<uint64_t> vals_;
  bool hash_used_ = false;
  std::vector<size_t> touched_;
  std::vector<uint64_t> rows_;
  int32_t distinct_ = 0;
  int blocks_ = 0;
  int64_t len_ = 0;
  const uint32_t* pat_ = nullptr;
};

// Distance between a pattern of length 1..64 (masks in pm) and text t[0..n). With a cutoff,
// returns some value > cutoff as soon as the distance is known to exceed it (the score after
// k text characters can drop by at most one per remaining character).
inline int64_t myers_word(const PatternMasks& pm, int64_t m, const uint32_t* t, int64_t n,
                          int64_t cutoff = kInf) {
  uint64_t vp = ~uint64_t{0}, vn = 0;
  const uint64_t high = uint64_t{1} << (m - 1);
  int64_t score = m;
  for (int64_t k = 0; k < n; ++k) {
    if (score - (n - k) > cutoff) return score - (n - k);
    const uint64_t eq = pm.mask(t[k]);
    const uint64_t xv = eq | vn;
    const uint64_t xh = (((eq & vp) + vp) ^ vp) | eq;
    uint64_t hp = vn | ~(xh | vp);
    uint64_t hn = vp & xh;
    score += static_cast<int64_t>((hp & high) != 0) - static_cast<int64_t>((hn & high) != 0);
    hp = (hp << 1) | 1;  // row 0 of the DP grows by one per text character (global distance)
    hn <<= 1;
    vp = hn | ~(xv | hp);
    vn = hp & xv;
  }
  return score;
}

// Blocked Myers for patterns longer than 64 code points. vp/vn are scratch of pm.blocks() words.
inline int64_t myers_blocks(const PatternMasks& pm, int64_t m, const uint32_t* t, int64_t n,
                            std::vector<uint64_t>& vp, std::vector<uint64_t>& vn) {
  const int nb = pm.blocks();
  vp.assign(nb, ~uint64_t{0});
  vn.assign(nb, 0);
  const uint64_t last_high = uint64_t{1} << ((m - 1) % 64);
  const uint64_t high = uint64_t{1} << 63;
  int64_t score = m;
  for (int64_t k = 0; k < n; ++k) {
    const uint64_t* eqs = pm.row(t[k]);
    int hin = 1;  // horizontal delta entering the first block: +1 (global distance)
    for (int b = 0; b < nb; ++b) {
      uint64_t eq = eqs ? eqs[b] : 0;
      const uint64_t pv = vp[b], mv = vn[b];
      const uint64_t xv = eq | mv;
      if (hin < 0) eq |= 1;
      const uint64_t xh = (((eq & pv) + pv) ^ pv) | eq;
      uint64_t ph = mv | ~(xh | pv);
      uint64_t mh = pv & xh;
      const uint64_t hb = (b == nb - 1) ? last_high : high;
      int hout = 0;
      if (ph & hb) hout = 1;
      if (mh & hb) hout = -1;
      ph <<= 1;
      mh <<= 1;
      if (hin < 0) {
        mh |= 1;
      } else if (hin > 0) {
        ph |= 1;
      }
      vp[b] = mh | ~(xv | ph);
      vn[b] = ph & xv;
      hin = hout;
    }
    score += hin;
  }
  return score;
}

// Textbook DP with one row; used when a blocked mask table would be too large.
inline int64_t levenshtein_dp(const uint32_t* a, int64_t la, const uint32_t* b, int64_t lb,
                              std::vector<int64_t>& row) {
  if (la < lb) {
    std::swap(a, b);
    std::swap(la, lb);
  }
  row.resize(static_cast<size_t>(lb) + 1);
  for (int64_t j = 0; j <= lb; ++j) row[j] = j;
  for (int64_t i = 1; i <= la; ++i) {
    int64_t diag = row[0];
    row[0] = i;
    for (int64_t j = 1; j <= lb; ++j) {
      const int64_t up = row[j];
      const int64_t sub = diag + (a[i - 1] != b[j - 1]);
      row[j] = std::min(std::min(up, row[j - 1]) + 1, sub);
      diag = up;
    }
  }
  return row[lb];
}

// Per-thread scratch for levenshtein().
struct LevScratch {
  PatternMasks pm;
  std::vector<uint64_t> vp, vn;
  std::vector<int64_t> row;
};

// Largest blocked mask table (in 64-bit words) before falling back to the plain DP.
constexpr int64_t kMaxBlockedWords = int64_t{1} << 20;

// Distance of a text t[0..n) to the pattern already loaded in s.pm (length m >= 1).
inline int64_t distance_to_pattern(LevScratch& s, int64_t m, const uint32_t* t, int64_t n) {
  if (n == 0) return m;
  if (m <= 64) return myers_word(s.pm, m, t, n);
  return myers_blocks(s.pm, m, t, n, s.vp, s.vn);
}

// Levenshtein distance between a[0..la) and b[0..lb) (code points), any lengths.
inline int64_t levenshtein(const uint32_t* a, int64_t la, const uint32_t* b, int64_t lb, LevScratch& s) {
  // Common prefix and suffix never change the distance; stripping them shortens the pattern.
  while (la > 0 && lb > 0 && *a == *b) {
    ++a;
    ++b;
    --la;
    --lb;
  }
  while (la > 0 && lb > 0 && a[la - 1] == b[lb - 1]) {
    --la;
    --lb;
  }
  if (la == 0) return lb;
  if (lb == 0) return la;
  if (la > lb) {  // the shorter string is the pattern
    std::swap(a, b);
    std::swap(la, lb);
  }
  if (la > 64) {
    // Distinct characters <= la, so la * blocks bounds the blocked table size.
    const int64_t blocks = (la + 63) / 64;
    if (la * blocks > kMaxBlockedWords) return levenshtein_dp(a, la, b, lb, s.row);
  }
  s.pm.set(a, la);
  const int64_t d = distance_to_pattern(s, la, b, lb);
  s.pm.clear();
  return d;
}

// One fixed string compared against many others (a DTW row, a MinED source). Picks the
// fastest exact method for the pattern's length once, in load().
class FixedPattern {
 public:
  void load(const uint32_t* p, int64_t m) {
    p_ = p;
    m_ = m;
    masks_ = m > 0 && (m <= 64 || m * ((m + 63) / 64) <= kMaxBlockedWords);
    if (masks_) s_.pm.set(p, m);
  }
  void unload() {
    if (masks_) s_.pm.clear();
    masks_ = false;
  }

  int64_t distance(const uint32_t* t, int64_t n, int64_t cutoff = kInf) {
    if (m_ == 0) return n;
    if (n == 0) return m_;
    if (m_ <= 64) return myers_word(s_.pm, m_, t, n, cutoff);
    // Long pattern: a short text is cheaper as the pattern (prefix/suffix stripping too).
    if (n <= 64 || !masks_) return levenshtein(p_, m_, t, n, other_);
    return myers_blocks(s_.pm, m_, t, n, s_.vp, s_.vn);
  }

 private:
  const uint32_t* p_ = nullptr;
  int64_t m_ = 0;
  bool masks_ = false;
  LevScratch s_;
  LevScratch other_;
};

}  // namespace fk
