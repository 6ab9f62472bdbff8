// Fused CPU loops over the noise contract (zo_noise.h) and their pybind11 bindings.
//
// Tensors arrive as raw pointers with sizes and dtype codes, so the extension needs no torch
// headers and survives torch upgrades. Work is cut into tiles of TILE_GROUPS Philox groups aligned
// to the global element index, spread over OpenMP threads across all tensors of a call: the
// result is a pure function of the element index, whatever the thread count.
#include <pybind11/pybind11.h>
#include <pybind11/stl.h>

#include <algorithm>
#include <vector>

#include "zo_noise.h"

namespace py = pybind11;

namespace zo {

constexpr int TILE_GROUPS = 128;
constexpr int TILE = 4 * TILE_GROUPS;

// z for the TILE elements of groups g0 .. g0 + TILE_GROUPS - 1, in element order.
static inline void noise_tile(uint64_t seed, uint32_t key, int dist, uint64_t g0, float (&z)[TILE]) {
  uint32_t x0[TILE_GROUPS], x1[TILE_GROUPS], x2[TILE_GROUPS], x3[TILE_GROUPS];
  philox_block<TILE_GROUPS>(seed, key, TAG_NOISE, g0, x0, x1, x2, x3);
  if (dist == GAUSSIAN) {
    for (int n = 0; n < TILE_GROUPS; ++n) {
      spec_gaussian_pair(x0[n], x1[n], z[4 * n], z[4 * n + 1]);
      spec_gaussian_pair(x2[n], x3[n], z[4 * n + 2], z[4 * n + 3]);
    }
  } else if (dist == RADEMACHER) {
    for (int n = 0; n < TILE_GROUPS; ++n) {
      z[4 * n] = spec_rademacher(x0[n]);
      z[4 * n + 1] = spec_rademacher(x1[n]);
      z[4 * n + 2] = spec_rademacher(x2[n]);
      z[4 * n + 3] = spec_rademacher(x3[n]);
    }
  } else {
    for (int n = 0; n < TILE_GROUPS; ++n) {
      z[4 * n] = spec_uniform(x0[n]);
      z[4 * n + 1] = spec_uniform(x1[n]);
      z[4 * n + 2] = spec_uniform(x2[n]);
      z[4 * n + 3] = spec_uniform(x3[n]);
    }
  }
}

static inline void rounding_bits_tile(uint64_t seed, uint32_t key, uint64_t g0, uint32_t (&r)[TILE]) {
  uint32_t x0[TILE_GROUPS], x1[TILE_GROUPS], x2[TILE_GROUPS], x3[TILE_GROUPS];
  philox_block<TILE_GROUPS>(seed, key, TAG_ROUNDING, g0, x0, x1, x2, x3);
  for (int n = 0; n < TILE_GROUPS; ++n) {
    r[4 * n] = x0[n];
    r[4 * n + 1] = x1[n];
    r[4 * n + 2] = x2[n];
    r[4 * n + 3] = x3[n];
  }
}

struct TensorArg {
  uintptr_t ptr;  // destination
  uintptr_t src;  // where w is read from: ptr itself (in place) or another tensor of the same shape
  int64_t numel;
  uint64_t offset;  // global index of element 0 within the logical tensor
  uint32_t key;
  int dtype;
  int64_t tiles() const {
    if (numel == 0) return 0;
    uint64_t first = offset >> 2, last = (offset + (uint64_t)numel - 1) >> 2;
    return (int64_t)((last - first) / TILE_GROUPS + 1);
  }
};

// The tile's first group and the tensor-index window [lo, hi) it covers, relative to its start.
struct TileSpan {
  uint64_t g0;
  int64_t start, lo, hi;
};

static inline TileSpan span_of(const TensorArg &t, int64_t tile) {
  TileSpan s;
  s.g0 = (t.offset >> 2) + (uint64_t)tile * TILE_GROUPS;
  s.start = (int64_t)(s.g0 * 4 - t.offset);  // tensor index of the tile's first element (< 0 on a ragged head)
  s.lo = std::max<int64_t>(0, -s.start);
  s.hi = std::min<int64_t>(TILE, t.numel - s.start);
  return s;
}

// w[i] = round(w[i] + c_k * z_k[i]) for each seed in order, over the tile window [lo, hi).
template <bool Stochastic, typename Round>
static inline void apply_seeds(float *w, const TensorArg &t, const TileSpan &s, const uint64_t *seeds,
                               const float *coeffs, int K, int dist, Round round) {
  float z[TILE];
  uint32_t r[TILE];
  for (int k = 0; k < K; ++k) {
    noise_tile(seeds[k], t.key, dist, s.g0, z);
    if (Stochastic) rounding_bits_tile(seeds[k], t.key, s.g0, r);
    const float c = coeffs[k];
    for (int64_t i = s.lo; i < s.hi; ++i) w[i] = round(w[i] + c * z[i], Stochastic ? r[i] : 0u);
  }
}

// 16-bit formats: widen the tile to float32 once, apply all K seeds rounding after each, narrow once.
template <typename Widen, typename Narrow, typename NarrowSR>
static inline void update_tile_16(const TensorArg &t, const TileSpan &s, const uint64_t *seeds, const float *coeffs,
                                  int K, int dist, bool stochastic, Widen widen, Narrow narrow, NarrowSR narrow_sr) {
  uint16_t *p = reinterpret_cast<uint16_t *>(t.ptr) + s.start;
  const uint16_t *q = reinterpret_cast<const uint16_t *>(t.src) + s.start;
  float w[TILE];
  for (int64_t i = s.lo; i < s.hi; ++i) w[i] = widen(q[i]);
  if (stochastic)
    apply_seeds<true>(w, t, s, seeds, coeffs, K, dist, [&](float v, uint32_t r) { return widen(narrow_sr(v, r)); });
  else
    apply_seeds<false>(w, t, s, seeds, coeffs, K, dist, [&](float v, uint32_t) { return widen(narrow(v)); });
  for (int64_t i = s.lo; i < s.hi; ++i) p[i] = narrow(w[i]);  // exact: w holds representable values
}

// Ask for the tile's parameters before generating its noise, so the memory traffic overlaps the
// Philox arithmetic instead of following it (worth ~15% on a 2-core machine).
static inline void prefetch_tile(const TensorArg &t, const TileSpan &s) {
  const int64_t bytes = t.dtype == F32 ? 4 : 2;
  const char *base = reinterpret_cast<const char *>(t.src) + (s.start + s.lo) * bytes;
  const int64_t n = (s.hi - s.lo) * bytes;
  for (int64_t off = 0; off < n; off += 64) __builtin_prefetch(base + off, 1, 3);
}

static void update_tile(const TensorArg &t, int64_t tile, const uint64_t *seeds, const float *coeffs, int K, int dist,
                        int rounding) {
  const TileSpan s = span_of(t, tile);
  prefetch_tile(t, s);
  const bool sr = rounding == STOCHASTIC;
  if (t.dtype == F32) {
    // float32 parameters have no rounding step: update them where they lie (after copying the tile
    // from its source, which stays in L1: still one pass over memory)
    float *p = reinterpret_cast<float *>(t.ptr) + s.start;
    if (t.src != t.ptr) {
      const float *q = reinterpret_cast<const float *>(t.src) + s.start;
      for (int64_t i = s.lo; i < s.hi; ++i) p[i] = q[i];
    }
    apply_seeds<false>(p, t, s, seeds, coeffs, K, dist, [](float v, uint32_t) { return v; });
  } else if (t.dtype == BF16) {
    update_tile_16(
        t, s, seeds, coeffs, K, dist, sr, [](uint16_t h) { return bf16_to_f32(h); },
        [](float v) { return f32_to_bf16(v); }, [](float v, uint32_t r) { return f32_to_bf16_sr(v, r); });
  } else {
    update_tile_16(
        t, s, seeds, coeffs, K, dist, sr, [](uint16_t h) { return f16_to_f32(h); },
        [](float v) { return f32_to_f16(v); }, [](float v, uint32_t r) { return f32_to_f16_sr(v, r); });
  }
}

static void noise_tile_into(const TensorArg &t, int64_t tile, uint64_t seed, int dist) {
  const TileSpan s = span_of(t, tile);
  float z[TILE];
  noise_tile(seed, t.key, dist, s.g0, z);
  float *p = reinterpret_cast<float *>(t.ptr) + s.start;
  for (int64_t i = s.lo; i < s.hi; ++i) p[i] = z[i];
}

// Runs fn(tensor, tile) over every tile of every tensor, spread over `threads` OpenMP threads.
template <typename Fn>
static void for_each_tile(const std::vector<TensorArg> &ts, int threads, Fn fn) {
  std::vector<int64_t> ends(ts.size());
  int64_t total = 0;
  for (size_t i = 0; i < ts.size(); ++i) ends[i] = total += ts[i].tiles();
  if (total == 0) return;
  if (threads < 1) threads = 1;
  if (total < 4) threads = 1;
#pragma omp parallel for schedule(static) num_threads(threads)
  for (int64_t gt = 0; gt < total; ++gt) {
    size_t i = std::upper_bound(ends.begin(), ends.end(), gt) - ends.begin();
    fn(ts[i], gt - (i ? ends[i - 1] : 0));
  }
}

static std::vector<TensorArg> tensor_args(const std::vector<uintptr_t> &ptrs, const std::vector<int64_t> &numels,
                                          const std::vector<uint64_t> &offsets, const std::vector<uint32_t> &keys,
                                          const std::vector<int> &dtypes, const std::vector<uintptr_t> &srcs = {}) {
  size_t n = ptrs.size();
  if (numels.size() != n || offsets.size() != n || keys.size() != n || dtypes.size() != n ||
      (!srcs.empty() && srcs.size() != n))
    throw std::invalid_argument("zokernels._C: ptrs, numels, offsets, keys, dtypes and srcs differ in length");
  std::vector<TensorArg> ts(n);
  for (size_t i = 0; i < n; ++i) {
    if (numels[i] < 0) throw std::invalid_argument("zokernels._C: negative numel");
    if (dtypes[i] < F32 || dtypes[i] > F16) throw std::invalid_argument("zokernels._C: unknown dtype code");
    ts[i] = TensorArg{ptrs[i], srcs.empty() ? ptrs[i] : srcs[i], numels[i], offsets[i], keys[i], dtypes[i]};
  }
  return ts;
}

static void check_dist(int dist) {
  if (dist < GAUSSIAN || dist > UNIFORM) throw std::invalid_argument("zokernels._C: unknown dist code");
}

}  // namespace zo

PYBIND11_MODULE(_C, m) {
  using namespace zo;
  m.doc() = "zokernels C++ CPU backend: fused Philox noise loops (see docs/noise.md)";
  m.def(
      "update",
      [](const std::vector<uintptr_t> &ptrs, const std::vector<int64_t> &numels, const std::vector<uint64_t> &offsets,
         const std::vector<uint32_t> &keys, const std::vector<int> &dtypes, const std::vector<uint64_t> &seeds,
         const std::vector<float> &coeffs, int dist, int rounding, int threads, const std::vector<uintptr_t> &srcs) {
        check_dist(dist);
        if (seeds.size() != coeffs.size()) throw std::invalid_argument("zokernels._C: seeds and coeffs differ in length");
        auto ts = tensor_args(ptrs, numels, offsets, keys, dtypes, srcs);
        const int K = (int)seeds.size();
        if (K == 0 && srcs.empty()) return;
        for_each_tile(ts, threads, [&](const TensorArg &t, int64_t tile) {
          update_tile(t, tile, seeds.data(), coeffs.data(), K, dist, rounding);
        });
      },
      py::arg("ptrs"), py::arg("numels"), py::arg("offsets"), py::arg("keys"), py::arg("dtypes"), py::arg("seeds"),
      py::arg("coeffs"), py::arg("dist"), py::arg("rounding"), py::arg("threads"),
      py::arg("srcs") = std::vector<uintptr_t>{}, py::call_guard<py::gil_scoped_release>(),
      "w = round(w + coeffs[k] * z(seeds[k])) for k in order, one pass over memory; w is read from srcs[i]\n"
      "when given (a perturbed copy) and written to ptrs[i].");
  m.def(
      "noise",
      [](uintptr_t out, int64_t numel, uint64_t offset, uint64_t seed, uint32_t key, int dist, int threads) {
        check_dist(dist);
        auto ts = tensor_args({out}, {numel}, {offset}, {key}, {F32});
        for_each_tile(ts, threads, [&](const TensorArg &t, int64_t tile) { noise_tile_into(t, tile, seed, dist); });
      },
      py::arg("out"), py::arg("numel"), py::arg("offset"), py::arg("seed"), py::arg("key"), py::arg("dist"),
      py::arg("threads"), py::call_guard<py::gil_scoped_release>(), "Writes float32 z for elements offset.. into out.");
  m.def(
      "philox",
      [](uint64_t seed, uint32_t c0, uint32_t c1, uint32_t c2, uint32_t c3) {
        uint32_t x0[1], x1[1], x2[1], x3[1];
        // the counter words are (group lo, group hi, key, tag): pass the raw words through them
        philox_block<1>(seed, c2, c3, ((uint64_t)c1 << 32) | c0, x0, x1, x2, x3);
        return py::make_tuple(x0[0], x1[0], x2[0], x3[0]);
      },
      "Philox4x32-10 of one counter (c0, c1, c2, c3) under the 64-bit seed, for known-answer tests.");
  m.def("spec_constants", []() {
    py::dict d;
    d["SPEC_VERSION"] = SPEC_VERSION;
    d["PHILOX_KEY_A"] = PHILOX_KEY_A;
    d["PHILOX_KEY_B"] = PHILOX_KEY_B;
    d["PHILOX_ROUND_A"] = PHILOX_ROUND_A;
    d["PHILOX_ROUND_B"] = PHILOX_ROUND_B;
    d["PHILOX_ROUNDS"] = PHILOX_ROUNDS;
    d["TAG_NOISE"] = TAG_NOISE;
    d["TAG_ROUNDING"] = TAG_ROUNDING;
    d["TILE"] = TILE;
    py::dict f;
    f["SQRT2"] = SQRT2; f["LN2_HI"] = LN2_HI; f["LN2_LO"] = LN2_LO;
    f["LOG_C1"] = LOG_C1; f["LOG_C2"] = LOG_C2; f["LOG_C3"] = LOG_C3; f["LOG_C4"] = LOG_C4;
    f["TURN_STEP"] = TURN_STEP;
    f["SIN_C1"] = SIN_C1; f["SIN_C2"] = SIN_C2; f["SIN_C3"] = SIN_C3; f["SIN_C4"] = SIN_C4;
    f["COS_C1"] = COS_C1; f["COS_C2"] = COS_C2; f["COS_C3"] = COS_C3; f["COS_C4"] = COS_C4; f["COS_C5"] = COS_C5;
    f["SQRT3"] = SQRT3;
    d["F32_BITS"] = f;
    return d;
  });
#ifdef _OPENMP
  m.attr("openmp") = true;
#else
  m.attr("openmp") = false;
#endif
}
