// The pybind11 bindings of the CPU backend: argument checks, threads, and the choice of tile loops.
//
// Tensors arrive as raw pointers with sizes and dtype codes, so the extension needs no torch
// headers and survives torch upgrades. Work is cut into tiles (zo_tiles.h) aligned to the global
// element index, spread over OpenMP threads across all tensors of a call: the result is a pure
// function of the element index, whatever the thread count. The tile loops run in the fastest
// instruction-set variant this CPU supports (zo_tiles.cpp, compiled once per variant).
#include <pybind11/pybind11.h>
#include <pybind11/stl.h>

#include <algorithm>
#include <atomic>
#include <cstdlib>
#include <string>
#include <unordered_map>
#include <vector>

#include "zo_noise.h"
#include "zo_tiles.h"

namespace py = pybind11;

namespace zo {

static int64_t tiles_of(const TensorArg &t) {
  if (t.numel == 0) return 0;
  uint64_t first = t.offset >> 2, last = (t.offset + (uint64_t)t.numel - 1) >> 2;
  return (int64_t)((last - first) / TILE_GROUPS + 1);
}

// Runs fn(tensor index, tile) over every tile of every tensor, spread over `threads` OpenMP threads.
template <typename Fn>
static void for_each_tile(const std::vector<TensorArg> &ts, int threads, Fn fn) {
  std::vector<int64_t> ends(ts.size());
  int64_t total = 0;
  for (size_t i = 0; i < ts.size(); ++i) ends[i] = total += tiles_of(ts[i]);
  if (total == 0) return;
  if (threads < 1) threads = 1;
  if (total < 4) threads = 1;
#pragma omp parallel for schedule(static) num_threads(threads)
  for (int64_t gt = 0; gt < total; ++gt) {
    size_t i = std::upper_bound(ends.begin(), ends.end(), gt) - ends.begin();
    fn(i, gt - (i ? ends[i - 1] : 0));
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

// Which seeds keep their noise for a later use of the same seed (zo_tiles.h, SeedUse).
static std::vector<SeedUse> plan_seeds(const std::vector<uint64_t> &seeds) {
  std::unordered_map<uint64_t, size_t> last;  // seed -> index of its last use
  for (size_t k = 0; k < seeds.size(); ++k) last[seeds[k]] = k;
  std::vector<SeedUse> uses(seeds.size(), SeedUse{-1, false});
  std::unordered_map<uint64_t, int8_t> held;  // seed -> slot holding its z
  bool busy[NOISE_SLOTS] = {};
  for (size_t k = 0; k < seeds.size(); ++k) {
    const bool used_again = last[seeds[k]] != k;
    auto it = held.find(seeds[k]);
    if (it != held.end()) {
      uses[k] = SeedUse{it->second, true};
      if (!used_again) busy[it->second] = false, held.erase(it);
    } else if (used_again) {
      for (int8_t slot = 0; slot < NOISE_SLOTS; ++slot)
        if (!busy[slot]) {
          busy[slot] = true;
          held[seeds[k]] = slot;
          uses[k] = SeedUse{slot, false};
          break;
        }
    }
  }
  return uses;
}

static void check_dist(int dist, int version) {
  if (dist < GAUSSIAN || dist > UNIFORM) throw std::invalid_argument("zokernels._C: unknown dist code");
  if (version != 1 && version != 2) throw std::invalid_argument("zokernels._C: unknown spec version");
}

// ---- run-time choice of the tile loops' instruction set

struct Variant {
  const TileKernels *tiles;
  bool (*cpu_has)();  // the features setup.py compiles the variant for
};

// Fastest first.
#if defined(ZO_X86_VARIANTS)
static bool cpu_has_avx512() {
  return __builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512bw") &&
         __builtin_cpu_supports("avx512dq") && __builtin_cpu_supports("avx512vl") && __builtin_cpu_supports("avx512cd");
}
#endif

static const Variant VARIANTS[] = {
#if defined(ZO_X86_VARIANTS)
#if defined(ZO_AVX512BF16)
    {&tiles_avx512bf16, [] { return cpu_has_avx512() && __builtin_cpu_supports("avx512bf16"); }},
#endif
    {&tiles_avx512, cpu_has_avx512},
    {&tiles_avx2, [] { return __builtin_cpu_supports("avx2") && __builtin_cpu_supports("f16c"); }},
#endif
    {&tiles_baseline, [] { return true; }},
};

static std::atomic<const TileKernels *> active{nullptr};

static std::vector<std::string> supported_isas() {
  std::vector<std::string> names;
  for (const Variant &v : VARIANTS)
    if (v.cpu_has()) names.push_back(v.tiles->isa);
  return names;
}

static std::string all_isas() {
  std::string s;
  for (const Variant &v : VARIANTS) s += std::string(s.empty() ? "" : ", ") + v.tiles->isa;
  return s;
}

// An empty name picks the fastest variant this CPU supports.
static void use_isa(const std::string &name, const char *what) {
#if defined(ZO_X86_VARIANTS)
  __builtin_cpu_init();
#endif
  for (const Variant &v : VARIANTS) {
    if (!name.empty() && name != v.tiles->isa) continue;
    if (v.cpu_has()) {
      active = v.tiles;
      return;
    }
    if (!name.empty())
      throw std::invalid_argument(std::string(what) + "'" + name +
                                  "': this CPU lacks the instructions that variant needs");
  }
  throw std::invalid_argument(std::string(what) + "'" + name + "' is not a variant of this build; choose one of " +
                              all_isas() + " (or leave it unset for the fastest the CPU supports)");
}

}  // namespace zo

PYBIND11_MODULE(_C, m) {
  using namespace zo;
  const char *forced = std::getenv("ZOKERNELS_CPU_ISA");
  use_isa(forced ? forced : "", "ZOKERNELS_CPU_ISA=");  // an exception here fails the import, saying why
  m.doc() = "zokernels C++ CPU backend: fused Philox noise loops (see docs/noise.md)";
  m.def(
      "update",
      [](const std::vector<uintptr_t> &ptrs, const std::vector<int64_t> &numels, const std::vector<uint64_t> &offsets,
         const std::vector<uint32_t> &keys, const std::vector<int> &dtypes, const std::vector<uint64_t> &seeds,
         const std::vector<float> &coeffs, int dist, int rounding, int threads, const std::vector<uintptr_t> &srcs,
         int version) {
        check_dist(dist, version);
        if (seeds.size() != coeffs.size()) throw std::invalid_argument("zokernels._C: seeds and coeffs differ in length");
        auto ts = tensor_args(ptrs, numels, offsets, keys, dtypes, srcs);
        std::vector<int> non_finite(ts.size(), 0);
        const int K = (int)seeds.size();
        if (K == 0 && srcs.empty()) return non_finite;
        const std::vector<SeedUse> uses = plan_seeds(seeds);
        const TileKernels *tiles = active;
        for_each_tile(ts, threads, [&](size_t i, int64_t tile) {
          if (tiles->update_tile(ts[i], tile, seeds.data(), uses.data(), coeffs.data(), K, dist, rounding, version)) {
#pragma omp atomic write
            non_finite[i] = 1;
          }
        });
        return non_finite;
      },
      py::arg("ptrs"), py::arg("numels"), py::arg("offsets"), py::arg("keys"), py::arg("dtypes"), py::arg("seeds"),
      py::arg("coeffs"), py::arg("dist"), py::arg("rounding"), py::arg("threads"),
      py::arg("srcs") = std::vector<uintptr_t>{}, py::arg("version") = 1, py::call_guard<py::gil_scoped_release>(),
      "w = round(w + coeffs[k] * z(seeds[k])) for k in order (noise spec `version`), one pass over memory; w is\n"
      "read from srcs[i]\n"
      "when given (a perturbed copy) and written to ptrs[i]. Returns one int per tensor: 1 where the\n"
      "tensor now holds an inf or NaN (checked on each tile as it is written), else 0.");
  m.def(
      "noise",
      [](uintptr_t out, int64_t numel, uint64_t offset, uint64_t seed, uint32_t key, int dist, int threads,
         int version) {
        check_dist(dist, version);
        auto ts = tensor_args({out}, {numel}, {offset}, {key}, {F32});
        const TileKernels *tiles = active;
        for_each_tile(ts, threads,
                      [&](size_t i, int64_t tile) { tiles->noise_tile(ts[i], tile, seed, dist, version); });
      },
      py::arg("out"), py::arg("numel"), py::arg("offset"), py::arg("seed"), py::arg("key"), py::arg("dist"),
      py::arg("threads"), py::arg("version") = 1, py::call_guard<py::gil_scoped_release>(), "Writes float32 z for elements offset.. into out.");
  m.def(
      "isa", []() { return std::string(active.load()->isa); },
      "The instruction set of the tile loops in use: baseline, avx2, avx512 or avx512bf16.");
  m.def("isas", &supported_isas, "The variants this build has and this CPU can run, fastest first.");
  m.def(
      "set_isa", [](const std::string &name) { use_isa(name, "set_isa: "); }, py::arg("name"),
      "Use the named variant from now on (all give the same bits; for tests and benchmarks).");
  m.def(
      "philox",
      [](uint64_t seed, uint32_t c0, uint32_t c1, uint32_t c2, uint32_t c3, int rounds) {
        uint32_t x0[1], x1[1], x2[1], x3[1];
        // the counter words are (group lo, group hi, key, tag): pass the raw words through them
        if (rounds == PHILOX_ROUNDS)
          philox_block<1>(seed, c2, c3, ((uint64_t)c1 << 32) | c0, x0, x1, x2, x3);
        else if (rounds == PHILOX_ROUNDS_V2)
          philox_block<1, PHILOX_ROUNDS_V2>(seed, c2, c3, ((uint64_t)c1 << 32) | c0, x0, x1, x2, x3);
        else
          throw std::invalid_argument("zokernels._C.philox: rounds must be 10 (spec v1) or 7 (spec v2)");
        return py::make_tuple(x0[0], x1[0], x2[0], x3[0]);
      },
      py::arg("seed"), py::arg("c0"), py::arg("c1"), py::arg("c2"), py::arg("c3"), py::arg("rounds") = PHILOX_ROUNDS,
      "Philox4x32-`rounds` (10 or 7) of one counter (c0, c1, c2, c3) under the 64-bit seed, for known-answer tests.");
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
    d["PHILOX_ROUNDS_V2"] = PHILOX_ROUNDS_V2;
    d["RADEMACHER_V2_ELEMENTS"] = RADEMACHER_V2_ELEMENTS;
    d["GAUSSIAN_V2_BIAS"] = GAUSSIAN_V2_BIAS;
    py::list coeffs;  // per octave, as spec.GAUSSIAN_V2_COEFFS
    for (int j = 0; j < GAUSSIAN_V2_OCTAVES; ++j) {
      py::list row;
      for (int k = 0; k <= GAUSSIAN_V2_DEGREE; ++k) row.append(GAUSSIAN_V2_COEFFS[k][j]);
      coeffs.append(py::tuple(row));
    }
    d["GAUSSIAN_V2_COEFFS"] = coeffs;
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
