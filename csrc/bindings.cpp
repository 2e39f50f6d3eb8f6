// Python bindings of the aligner (module fusekern.align._C).
//
// Every entry point first copies its Python inputs into C++ containers (or pins them: a
// tuple snapshot keeps byte strings alive and unmodifiable), then releases the GIL for the
// work, then builds Python results. Argument errors name the argument and the index.
#include <pybind11/numpy.h>
#include <pybind11/pybind11.h>

#include <array>
#include <cstring>
#include <stdexcept>
#include <string>
#include <vector>

#include "align.h"
#include "levenshtein.h"
#include "parallel.h"

namespace py = pybind11;

namespace {

std::string type_name(PyObject* o) { return Py_TYPE(o)->tp_name; }

std::string at(const std::string& arg, int64_t i) { return arg + "[" + std::to_string(i) + "]"; }

// A tuple snapshot of a Python sequence: the items stay alive while the GIL is released.
struct SeqView {
  py::object owner;
  PyObject** items = nullptr;
  int64_t n = 0;
};

SeqView seq_view(py::handle obj, const std::string& arg, const char* what) {
  PyObject* o = obj.ptr();
  if (PyUnicode_Check(o) || PyBytes_Check(o) || PyByteArray_Check(o)) {
    throw py::type_error(arg + " must be a sequence of " + what + ", not a single " + type_name(o));
  }
  if (!PySequence_Check(o)) {
    throw py::type_error(arg + " must be a sequence of " + what + ", got " + type_name(o));
  }
  PyObject* t = PySequence_Tuple(o);
  if (t == nullptr) throw py::error_already_set();
  SeqView v;
  v.owner = py::reinterpret_steal<py::object>(t);
  v.items = &PyTuple_GET_ITEM(t, 0);
  v.n = PyTuple_GET_SIZE(t);
  return v;
}

// Reads str tokens as code points.
void read_strs(py::handle obj, const std::string& arg, fk::StrSeq& out) {
  SeqView v = seq_view(obj, arg, "str");
  out.chars.clear();
  out.offsets.assign(1, 0);
  out.offsets.reserve(v.n + 1);
  for (int64_t i = 0; i < v.n; ++i) {
    PyObject* s = v.items[i];
    if (!PyUnicode_Check(s)) {
      throw py::type_error(at(arg, i) + " must be str, got " + type_name(s) +
                           (PyBytes_Check(s) ? " (decode the token bytes first)" : ""));
    }
#if PY_VERSION_HEX < 0x030C0000
    if (PyUnicode_READY(s) == -1) throw py::error_already_set();
#endif
    const int64_t len = PyUnicode_GET_LENGTH(s);
    if (len > fk::kMaxTokenChars) {
      throw py::value_error(at(arg, i) + " has " + std::to_string(len) + " code points; tokens longer than " +
                            std::to_string(fk::kMaxTokenChars) + " are not supported");
    }
    const int kind = PyUnicode_KIND(s);
    const void* data = PyUnicode_DATA(s);
    const size_t base = out.chars.size();
    out.chars.resize(base + static_cast<size_t>(len));
    uint32_t* dst = out.chars.data() + base;
    if (kind == PyUnicode_1BYTE_KIND) {
      const Py_UCS1* p = static_cast<const Py_UCS1*>(data);
      for (int64_t k = 0; k < len; ++k) dst[k] = p[k];
    } else if (kind == PyUnicode_2BYTE_KIND) {
      const Py_UCS2* p = static_cast<const Py_UCS2*>(data);
      for (int64_t k = 0; k < len; ++k) dst[k] = p[k];
    } else {
      std::memcpy(dst, data, static_cast<size_t>(len) * sizeof(uint32_t));
    }
    out.offsets.push_back(static_cast<int64_t>(out.chars.size()));
  }
}

// bytes tokens, pinned by the snapshot tuple.
struct BytesSeq {
  SeqView view;
  std::vector<const char*> ptr;
  std::vector<int64_t> len;
  fk::PtrTokens tokens() const { return fk::PtrTokens{ptr.data(), len.data(), view.n}; }
};

void read_bytes(py::handle obj, const std::string& arg, BytesSeq& out) {
  out.view = seq_view(obj, arg, "bytes");
  out.ptr.resize(out.view.n);
  out.len.resize(out.view.n);
  for (int64_t i = 0; i < out.view.n; ++i) {
    PyObject* s = out.view.items[i];
    if (!PyBytes_Check(s)) {
      throw py::type_error(at(arg, i) + " must be bytes, got " + type_name(s) +
                           (PyUnicode_Check(s) ? " (encode it, e.g. with token_bytes(tokenizer))" : ""));
    }
    out.ptr[i] = PyBytes_AS_STRING(s);
    out.len[i] = PyBytes_GET_SIZE(s);
  }
}

std::string mismatch_message(const fk::SpanOutcome& o, int64_t na, int64_t nb) {
  std::string where = "byte " + std::to_string(o.offset);
  if (o.a_index >= na)
    return "a and b are different texts: a ends at " + where + " but b continues (b token " +
           std::to_string(o.b_index) + ")";
  if (o.b_index >= nb)
    return "a and b are different texts: b ends at " + where + " but a continues (a token " +
           std::to_string(o.a_index) + ")";
  return "a and b are different texts: they diverge at " + where + " (a token " + std::to_string(o.a_index) +
         ", b token " + std::to_string(o.b_index) + ")";
}

py::array_t<int64_t> groups_array(const std::vector<int64_t>& g) {
  const py::ssize_t rows = static_cast<py::ssize_t>(g.size() / 4);
  py::array_t<int64_t> arr({rows, py::ssize_t{4}});
  if (!g.empty()) std::memcpy(arr.mutable_data(), g.data(), g.size() * sizeof(int64_t));
  return arr;
}

int64_t pair_chunk(int64_t pairs, int threads) {
  return std::max<int64_t>(1, pairs / (static_cast<int64_t>(fk::resolve_threads(threads)) * 16));
}

void check_threads(int threads) {
  if (threads < 0) throw py::value_error("threads must be >= 1 (or None for all cores)");
  if (threads > fk::kMaxThreads) {
    throw py::value_error("threads must be <= " + std::to_string(fk::kMaxThreads) + ", got " +
                          std::to_string(threads));
  }
}

// ---------------------------------------------------------------- span_align

// Pauses Python's cyclic GC while thousands of small lists are built (each allocation would
// otherwise count towards a collection that finds nothing to free).
struct GcPause {
#if PY_VERSION_HEX >= 0x030A0000
  bool was_enabled;
  GcPause() : was_enabled(PyGC_Disable() != 0) {}
  ~GcPause() {
    if (was_enabled) PyGC_Enable();
  }
#endif
};

py::list span_align_py(py::handle a, py::handle b) {
  BytesSeq A, B;
  read_bytes(a, "a", A);
  read_bytes(b, "b", B);
  fk::SpanOutcome out;
  {
    py::gil_scoped_release release;
    fk::span_align_ptr(A.tokens(), B.tokens(), out);
  }
  if (!out.ok) throw py::value_error(mismatch_message(out, A.view.n, B.view.n));
  GcPause pause;
  const size_t G = out.groups.size() / 4;
  py::list result(G);
  for (size_t g = 0; g < G; ++g) {
    PyObject* t = PyTuple_New(4);
    if (t == nullptr) throw py::error_already_set();
    for (int k = 0; k < 4; ++k) {
      PyObject* v = PyLong_FromLongLong(out.groups[4 * g + k]);
      if (v == nullptr) {
        Py_DECREF(t);
        throw py::error_already_set();
      }
      PyTuple_SET_ITEM(t, k, v);
    }
    PyList_SET_ITEM(result.ptr(), static_cast<Py_ssize_t>(g), t);
  }
  return result;
}

py::list batch_results(std::vector<fk::SpanOutcome>& outs, const std::vector<int64_t>& na,
                       const std::vector<int64_t>& nb, bool raise_on_mismatch) {
  const int64_t P = static_cast<int64_t>(outs.size());
  if (raise_on_mismatch) {
    for (int64_t k = 0; k < P; ++k) {
      if (!outs[k].ok)
        throw py::value_error("pair " + std::to_string(k) + ": " + mismatch_message(outs[k], na[k], nb[k]));
    }
  }
  py::list result(P);
  for (int64_t k = 0; k < P; ++k) {
    if (outs[k].ok) {
      result[k] = groups_array(outs[k].groups);
      std::vector<int64_t>().swap(outs[k].groups);
    } else {
      result[k] = py::none();
    }
  }
  return result;
}

SeqView outer_view(py::handle obj, const std::string& arg, const char* what) {
  return seq_view(obj, arg, what);
}

// The two sides of a batch call must hold the same number of sequences.
void check_same_length(const SeqView& va, const SeqView& vb, const char* a_name, const char* b_name) {
  if (va.n != vb.n) {
    throw py::value_error(std::string(a_name) + " and " + b_name + " must have the same length (" +
                          std::to_string(va.n) + " != " + std::to_string(vb.n) + ")");
  }
}

py::list span_align_batch_py(py::handle a_seqs, py::handle b_seqs, int threads, bool raise_on_mismatch) {
  check_threads(threads);
  SeqView va = outer_view(a_seqs, "a_seqs", "token sequences");
  SeqView vb = outer_view(b_seqs, "b_seqs", "token sequences");
  check_same_length(va, vb, "a_seqs", "b_seqs");
  const int64_t P = va.n;
  std::vector<BytesSeq> A(P), B(P);
  std::vector<int64_t> na(P), nb(P);
  for (int64_t k = 0; k < P; ++k) {
    read_bytes(va.items[k], at("a_seqs", k), A[k]);
    read_bytes(vb.items[k], at("b_seqs", k), B[k]);
    na[k] = A[k].view.n;
    nb[k] = B[k].view.n;
  }
  std::vector<fk::SpanOutcome> outs(P);
  {
    py::gil_scoped_release release;
    fk::parallel_for(P, threads, pair_chunk(P, threads), [&](int, int64_t begin, int64_t end) {
      for (int64_t k = begin; k < end; ++k) fk::span_align_ptr(A[k].tokens(), B[k].tokens(), outs[k]);
    });
  }
  return batch_results(outs, na, nb, raise_on_mismatch);
}

// Integer ids as a contiguous int64 array; rejects floats, bools and non-1-D input.
py::array_t<int64_t> read_ids(py::handle obj, const std::string& arg, const std::string& what = "token ids") {
  if (PyUnicode_Check(obj.ptr()) || PyBytes_Check(obj.ptr())) {
    throw py::type_error(arg + " must be a 1-D array of " + what + ", got " + type_name(obj.ptr()));
  }
  py::array arr = py::array::ensure(obj);
  if (!arr) {
    PyErr_Clear();
    throw py::type_error(arg + " must be a 1-D array of " + what + ", got " + type_name(obj.ptr()));
  }
  if (arr.ndim() != 1)
    throw py::value_error(arg + " must be 1-D, got " + std::to_string(arr.ndim()) + " dimensions");
  const char kind = arr.dtype().kind();
  if (kind != 'i' && kind != 'u' && arr.size() > 0) {
    throw py::type_error(arg + " must hold integer " + what + ", got dtype " +
                         std::string(py::str(arr.dtype())));
  }
  return py::array_t<int64_t, py::array::c_style | py::array::forcecast>::ensure(arr);
}

fk::ByteVocab make_vocab(py::handle seq) {
  BytesSeq B;
  read_bytes(seq, "token_bytes", B);
  fk::ByteVocab v;
  int64_t total = 0;
  for (int64_t i = 0; i < B.view.n; ++i) total += B.len[i];
  v.flat.reserve(static_cast<size_t>(total));
  v.offsets.reserve(B.view.n + 1);
  for (int64_t i = 0; i < B.view.n; ++i) {
    v.flat.append(B.ptr[i], static_cast<size_t>(B.len[i]));
    v.offsets.push_back(static_cast<int64_t>(v.flat.size()));
  }
  return v;
}

py::list span_align_ids_batch_py(py::handle a_ids, py::handle b_ids, const fk::ByteVocab& a_vocab,
                                 const fk::ByteVocab& b_vocab, int threads, bool raise_on_mismatch) {
  check_threads(threads);
  SeqView va = outer_view(a_ids, "a_ids", "id arrays");
  SeqView vb = outer_view(b_ids, "b_ids", "id arrays");
  check_same_length(va, vb, "a_ids", "b_ids");
  const int64_t P = va.n;
  // Owned copies: the caller's arrays may be written by another Python thread while the GIL
  // is released, so the ids checked below must be the ids used.
  std::vector<std::vector<int64_t>> A(P), B(P);
  std::vector<int64_t> na(P), nb(P);
  for (int64_t k = 0; k < P; ++k) {
    const py::array_t<int64_t> ak = read_ids(va.items[k], at("a_ids", k));
    const py::array_t<int64_t> bk = read_ids(vb.items[k], at("b_ids", k));
    A[k].assign(ak.data(), ak.data() + ak.size());
    B[k].assign(bk.data(), bk.data() + bk.size());
    na[k] = ak.size();
    nb[k] = bk.size();
  }
  std::vector<const int64_t*> pa(P), pb(P);
  for (int64_t k = 0; k < P; ++k) {
    pa[k] = A[k].data();
    pb[k] = B[k].data();
  }
  std::vector<fk::SpanOutcome> outs(P);
  // Out-of-range ids: (pair, side, position, value); first bad id per pair.
  std::vector<std::array<int64_t, 3>> bad(P, {-1, -1, 0});
  {
    py::gil_scoped_release release;
    fk::parallel_for(P, threads, pair_chunk(P, threads), [&](int, int64_t begin, int64_t end) {
      for (int64_t k = begin; k < end; ++k) {
        const int64_t va_n = a_vocab.size(), vb_n = b_vocab.size();
        bool ok = true;
        for (int64_t i = 0; i < na[k] && ok; ++i) {
          if (pa[k][i] < 0 || pa[k][i] >= va_n) {
            bad[k] = {0, i, pa[k][i]};
            ok = false;
          }
        }
        for (int64_t i = 0; i < nb[k] && ok; ++i) {
          if (pb[k][i] < 0 || pb[k][i] >= vb_n) {
            bad[k] = {1, i, pb[k][i]};
            ok = false;
          }
        }
        if (!ok) continue;
        fk::span_align_ids(fk::IdTokens{pa[k], na[k], &a_vocab}, fk::IdTokens{pb[k], nb[k], &b_vocab},
                           outs[k]);
      }
    });
  }
  for (int64_t k = 0; k < P; ++k) {
    if (bad[k][0] >= 0) {
      const bool side_a = bad[k][0] == 0;
      throw py::value_error(at(side_a ? "a_ids" : "b_ids", k) + "[" + std::to_string(bad[k][1]) +
                            "] = " + std::to_string(bad[k][2]) + " is outside the vocabulary (size " +
                            std::to_string(side_a ? a_vocab.size() : b_vocab.size()) + ")");
    }
  }
  return batch_results(outs, na, nb, raise_on_mismatch);
}

// ---------------------------------------------------------------- dtw

py::object path_to_python(const fk::DtwPath& p, int64_t n, int64_t m, bool with_cost) {
  GcPause pause;
  std::vector<Py_ssize_t> ca(n, 0), cb(m, 0);
  for (size_t k = 0; k < p.ai.size(); ++k) {
    ++ca[p.ai[k]];
    ++cb[p.bj[k]];
  }
  py::list a_to_b(n), b_to_a(m);
  std::vector<py::list> la(n), lb(m);
  for (int64_t i = 0; i < n; ++i) la[i] = py::list(ca[i]);
  for (int64_t j = 0; j < m; ++j) lb[j] = py::list(cb[j]);
  std::fill(ca.begin(), ca.end(), 0);
  std::fill(cb.begin(), cb.end(), 0);
  for (size_t k = 0; k < p.ai.size(); ++k) {
    const int64_t i = p.ai[k], j = p.bj[k];
    PyList_SET_ITEM(la[i].ptr(), ca[i]++, PyLong_FromLongLong(j));
    PyList_SET_ITEM(lb[j].ptr(), cb[j]++, PyLong_FromLongLong(i));
  }
  for (int64_t i = 0; i < n; ++i) a_to_b[i] = std::move(la[i]);
  for (int64_t j = 0; j < m; ++j) b_to_a[j] = std::move(lb[j]);
  if (with_cost) return py::make_tuple(a_to_b, b_to_a, p.cost);
  return py::make_tuple(a_to_b, b_to_a);
}

void check_dtw_sizes(int64_t n, int64_t m, int64_t band, const std::string& where) {
  if (n == 0 || m == 0) {
    throw py::value_error(where + (n == 0 ? "a" : "b") +
                          " is empty: dtw needs at least one token on each side");
  }
  if (band < 0 && n > fk::kMaxDtwCells / m) {
    throw py::value_error(where + "full DTW of " + std::to_string(n) + " x " + std::to_string(m) +
                          " tokens needs more than 1 GiB of backtrace; pass band=");
  }
}

// Optional per-token widths for the band guide: None, or non-negative ints, one per token.
std::vector<int64_t> read_widths(py::handle obj, const std::string& arg, int64_t n) {
  std::vector<int64_t> w;
  if (obj.is_none()) return w;
  py::array_t<int64_t> arr = read_ids(obj, arg, "token widths");
  if (arr.size() != n) {
    throw py::value_error(arg + " must have one width per token (" + std::to_string(arr.size()) +
                          " != " + std::to_string(n) + ")");
  }
  w.assign(arr.data(), arr.data() + n);
  for (int64_t i = 0; i < n; ++i) {
    if (w[i] < 0) throw py::value_error(at(arg, i) + " is negative");
  }
  return w;
}

py::object dtw_py(py::handle a, py::handle b, int64_t band, bool with_cost, py::handle a_widths,
                  py::handle b_widths) {
  fk::StrSeq A, B;
  read_strs(a, "a", A);
  read_strs(b, "b", B);
  check_dtw_sizes(A.size(), B.size(), band, "");
  const std::vector<int64_t> wa = read_widths(a_widths, "a_widths", A.size());
  const std::vector<int64_t> wb = read_widths(b_widths, "b_widths", B.size());
  fk::DtwPath path;
  {
    py::gil_scoped_release release;
    fk::dtw_align(A, B, band, path, wa, wb);
  }
  return path_to_python(path, A.size(), B.size(), with_cost);
}

py::list dtw_batch_py(py::handle a_seqs, py::handle b_seqs, int64_t band, int threads, bool with_cost,
                      py::handle a_widths, py::handle b_widths) {
  check_threads(threads);
  SeqView va = outer_view(a_seqs, "a_seqs", "token sequences");
  SeqView vb = outer_view(b_seqs, "b_seqs", "token sequences");
  check_same_length(va, vb, "a_seqs", "b_seqs");
  const int64_t P = va.n;
  SeqView wa_view, wb_view;
  const bool has_wa = !a_widths.is_none(), has_wb = !b_widths.is_none();
  if (has_wa) wa_view = outer_view(a_widths, "a_widths", "width arrays");
  if (has_wb) wb_view = outer_view(b_widths, "b_widths", "width arrays");
  if ((has_wa && wa_view.n != P) || (has_wb && wb_view.n != P)) {
    throw py::value_error("a_widths / b_widths must have one entry per pair");
  }
  std::vector<fk::StrSeq> A(P), B(P);
  std::vector<std::vector<int64_t>> WA(P), WB(P);
  for (int64_t k = 0; k < P; ++k) {
    read_strs(va.items[k], at("a_seqs", k), A[k]);
    read_strs(vb.items[k], at("b_seqs", k), B[k]);
    check_dtw_sizes(A[k].size(), B[k].size(), band, "pair " + std::to_string(k) + ": ");
    if (has_wa) WA[k] = read_widths(wa_view.items[k], at("a_widths", k), A[k].size());
    if (has_wb) WB[k] = read_widths(wb_view.items[k], at("b_widths", k), B[k].size());
  }
  std::vector<fk::DtwPath> paths(P);
  {
    py::gil_scoped_release release;
    fk::parallel_for(P, threads, 1, [&](int, int64_t begin, int64_t end) {
      for (int64_t k = begin; k < end; ++k) {
        try {
          fk::dtw_align(A[k], B[k], band, paths[k], WA[k], WB[k]);
        } catch (const std::invalid_argument& e) {
          throw std::invalid_argument("pair " + std::to_string(k) + ": " + e.what());
        }
      }
    });
  }
  py::list result(P);
  for (int64_t k = 0; k < P; ++k) {
    result[k] = path_to_python(paths[k], A[k].size(), B[k].size(), with_cost);
    fk::DtwPath().ai.swap(paths[k].ai);
  }
  return result;
}

// ---------------------------------------------------------------- mined_map / levenshtein

py::tuple mined_map_py(py::handle source, py::handle target, int threads, bool prefer_prefix) {
  check_threads(threads);
  fk::StrSeq S, T;
  read_strs(source, "source", S);
  read_strs(target, "target", T);
  if (T.size() == 0 && S.size() > 0) throw py::value_error("target is empty: nothing to map to");
  py::array_t<int64_t> ids(S.size()), dist(S.size());
  int64_t* pi = ids.mutable_data();
  int64_t* pd = dist.mutable_data();
  {
    py::gil_scoped_release release;
    fk::mined_map(S, T, threads, prefer_prefix, pi, pd);
  }
  return py::make_tuple(ids, dist);
}

int64_t levenshtein_py(py::handle a, py::handle b) {
  fk::StrSeq A;
  py::tuple pair = py::make_tuple(a, b);
  read_strs(pair, "(a, b)", A);
  fk::LevScratch s;
  return fk::levenshtein(A.data(0), A.len(0), A.data(1), A.len(1), s);
}

}  // namespace

PYBIND11_MODULE(_C, m) {
  m.doc() = "fusekern native core: byte-exact span alignment, FuseLLM DTW, MinED vocabulary mapping.";
  m.attr("MAX_TOKEN_CHARS") = fk::kMaxTokenChars;
  m.attr("MAX_DTW_CELLS") = fk::kMaxDtwCells;
  m.attr("MAX_THREADS") = fk::kMaxThreads;

  py::class_<fk::ByteVocab>(m, "ByteVocab",
                            "A vocabulary's token bytes packed once for span_align_ids_batch.")
      .def(py::init(&make_vocab), py::arg("token_bytes"))
      .def("__len__", &fk::ByteVocab::size)
      .def("__repr__", [](const fk::ByteVocab& v) {
        return "ByteVocab(" + std::to_string(v.size()) + " tokens, " + std::to_string(v.flat.size()) +
               " bytes)";
      });

  m.def("span_align", &span_align_py, py::arg("a"), py::arg("b"));
  m.def("span_align_batch", &span_align_batch_py, py::arg("a_seqs"), py::arg("b_seqs"), py::arg("threads"),
        py::arg("raise_on_mismatch"));
  m.def("span_align_ids_batch", &span_align_ids_batch_py, py::arg("a_ids"), py::arg("b_ids"),
        py::arg("a_vocab"), py::arg("b_vocab"), py::arg("threads"), py::arg("raise_on_mismatch"));
  m.def("dtw", &dtw_py, py::arg("a"), py::arg("b"), py::arg("band"), py::arg("with_cost"),
        py::arg("a_widths") = py::none(), py::arg("b_widths") = py::none());
  m.def("dtw_batch", &dtw_batch_py, py::arg("a_seqs"), py::arg("b_seqs"), py::arg("band"), py::arg("threads"),
        py::arg("with_cost"), py::arg("a_widths") = py::none(), py::arg("b_widths") = py::none());
  m.def("mined_map", &mined_map_py, py::arg("source"), py::arg("target"), py::arg("threads"),
        py::arg("prefer_prefix") = false);
  m.def("levenshtein", &levenshtein_py, py::arg("a"), py::arg("b"));
}
