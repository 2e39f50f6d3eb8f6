// Core data types and entry points of the aligner (pure C++, no Python). The pybind11 layer
// (bindings.cpp) converts Python inputs into these containers, releases the GIL, and calls
// the functions declared here.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

namespace fk {

// Longest token (in code points) accepted by dtw / mined_map: keeps the worst-case
// cost of one edit distance bounded (real vocabularies stay far below this).
constexpr int64_t kMaxTokenChars = int64_t{1} << 16;

// Largest full DTW matrix (cells = n * m); each cell keeps one byte of backtrace.
constexpr int64_t kMaxDtwCells = int64_t{1} << 30;

// A sequence of code-point strings stored back to back.
struct StrSeq {
  std::vector<uint32_t> chars;
  std::vector<int64_t> offsets{0};  // size() + 1 entries

  int64_t size() const { return static_cast<int64_t>(offsets.size()) - 1; }
  const uint32_t* data(int64_t i) const { return chars.data() + offsets[i]; }
  int64_t len(int64_t i) const { return offsets[i + 1] - offsets[i]; }
  void push(const uint32_t* p, int64_t n) {
    chars.insert(chars.end(), p, p + n);
    offsets.push_back(static_cast<int64_t>(chars.size()));
  }
};

// Tokens given as (pointer, length) views into byte strings owned elsewhere.
struct PtrTokens {
  const char* const* ptr = nullptr;
  const int64_t* lens = nullptr;
  int64_t n = 0;
  int64_t size() const { return n; }
  int64_t len(int64_t i) const { return lens[i]; }
  const char* data(int64_t i) const { return ptr[i]; }
};

// A vocabulary's token bytes, packed: token k is flat[offsets[k] .. offsets[k+1]).
struct ByteVocab {
  std::string flat;
  std::vector<int64_t> offsets{0};
  int64_t size() const { return static_cast<int64_t>(offsets.size()) - 1; }
};

// Tokens given as ids into a ByteVocab (ids must be validated by the caller).
struct IdTokens {
  const int64_t* ids = nullptr;
  int64_t n = 0;
  const ByteVocab* vocab = nullptr;
  int64_t size() const { return n; }
  int64_t len(int64_t i) const { return vocab->offsets[ids[i] + 1] - vocab->offsets[ids[i]]; }
  const char* data(int64_t i) const { return vocab->flat.data() + vocab->offsets[ids[i]]; }
};

// Result of aligning one pair of byte-token sequences.
struct SpanOutcome {
  bool ok = true;
  int64_t offset = -1;   // first byte where the texts diverge (when !ok)
  int64_t a_index = -1;  // a's token at that byte (a.size() if a has ended)
  int64_t b_index = -1;
  std::vector<int64_t> groups;  // 4 per group: a_start, a_end, b_start, b_end
};

void span_align_ptr(const PtrTokens& a, const PtrTokens& b, SpanOutcome& out);
void span_align_ids(const IdTokens& a, const IdTokens& b, SpanOutcome& out);

// DTW warping path (cells in order from (0,0) to (n-1,m-1)) and its total cost.
struct DtwPath {
  std::vector<int64_t> ai, bj;
  int64_t cost = 0;
};

// band < 0: full DTW (FuseLLM semantics). band >= 0: offset-guided band of +-band tokens,
// placed by the token widths (empty vectors: code-point lengths of the strings).
// Throws std::invalid_argument for empty inputs or an oversized full matrix.
void dtw_align(const StrSeq& a, const StrSeq& b, int64_t band, DtwPath& out,
               const std::vector<int64_t>& a_widths = {}, const std::vector<int64_t>& b_widths = {});

// For each source string: index of the nearest target (exact match, else minimum Levenshtein
// distance, ties -> lowest index) and the distance. threads <= 0: all hardware threads.
void mined_map(const StrSeq& source, const StrSeq& target, int threads, int64_t* out_ids, int64_t* out_dist);
// The same with prefer_prefix: equal distances go to the target sharing the most leading code
// points with the source first, then the lowest index.
void mined_map(const StrSeq& source, const StrSeq& target, int threads, bool prefer_prefix, int64_t* out_ids,
               int64_t* out_dist);

}  // namespace fk
