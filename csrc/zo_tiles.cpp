// The fused tile loops over the noise contract (zo_noise.h). setup.py compiles this file once per
// instruction set with -DZO_ISA=<name> and that set's flags; each copy defines the table tiles_<name>.
// Everything else here has internal linkage (see zo_tiles.h for why), and nothing runs at load time.
#include "zo_tiles.h"

#include "zo_noise.h"

#ifndef ZO_ISA
#error "compile with -DZO_ISA=baseline|avx2|avx512 (setup.py does)"
#endif
#define ZO_STR2(x) #x
#define ZO_STR(x) ZO_STR2(x)
#define ZO_CAT2(a, b) a##b
#define ZO_CAT(a, b) ZO_CAT2(a, b)

namespace zo {
namespace {

// Spec v2's Rademacher: 32 consecutive groups share a Philox counter, group G taking bit G % 32 of each
// word. A tile starts at any group (tiles follow the tensor's offset), so its 128 groups touch 4 or 5 counters.
inline void rademacher_v2_tile(uint64_t seed, uint32_t key, uint64_t g0, float (&z)[TILE]) {
  constexpr int PER_COUNTER = RADEMACHER_V2_ELEMENTS / 4, C = TILE_GROUPS / PER_COUNTER + 1;
  uint32_t x[4][C];
  philox_block<C, PHILOX_ROUNDS_V2>(seed, key, TAG_NOISE, g0 / PER_COUNTER, x[0], x[1], x[2], x[3]);
  // a group's 4 elements take the same bit of the 4 words: one 4-lane shift by a count shared by the lanes
  // (a plain SSE2 shift on every ISA), then the bit becomes the sign of 1.0f
  typedef uint32_t u32x4 __attribute__((vector_size(16)));
  u32x4 words[C];
  for (int c = 0; c < C; ++c) words[c] = u32x4{x[0][c], x[1][c], x[2][c], x[3][c]};
  const int phase = (int)(g0 % PER_COUNTER);
  for (int n = 0; n < TILE_GROUPS; ++n) {
    const int g = phase + n;
    const u32x4 signs = ((words[g / PER_COUNTER] << (31 - g % PER_COUNTER)) & 0x80000000u) | 0x3F800000u;
    std::memcpy(&z[4 * n], &signs, sizeof signs);
  }
}

// z for the TILE elements of groups g0 .. g0 + TILE_GROUPS - 1, in element order, under spec `version`.
inline void noise_tile(uint64_t seed, uint32_t key, int dist, int version, uint64_t g0, float (&z)[TILE]) {
  if (version == 2 && dist == RADEMACHER) return rademacher_v2_tile(seed, key, g0, z);
  uint32_t x0[TILE_GROUPS], x1[TILE_GROUPS], x2[TILE_GROUPS], x3[TILE_GROUPS];
  if (version == 2)
    philox_block<TILE_GROUPS, PHILOX_ROUNDS_V2>(seed, key, TAG_NOISE, g0, x0, x1, x2, x3);
  else
    philox_block<TILE_GROUPS>(seed, key, TAG_NOISE, g0, x0, x1, x2, x3);
  if (dist == GAUSSIAN && version == 2) {
    gaussian_v2_words(x0, TILE_GROUPS), gaussian_v2_words(x1, TILE_GROUPS);
    gaussian_v2_words(x2, TILE_GROUPS), gaussian_v2_words(x3, TILE_GROUPS);
    for (int n = 0; n < TILE_GROUPS; ++n) {
      z[4 * n] = f32(x0[n]);
      z[4 * n + 1] = f32(x1[n]);
      z[4 * n + 2] = f32(x2[n]);
      z[4 * n + 3] = f32(x3[n]);
    }
  } else if (dist == GAUSSIAN) {
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

inline void rounding_bits_tile(uint64_t seed, uint32_t key, int version, uint64_t g0, uint32_t (&r)[TILE]) {
  uint32_t x0[TILE_GROUPS], x1[TILE_GROUPS], x2[TILE_GROUPS], x3[TILE_GROUPS];
  if (version == 2)
    philox_block<TILE_GROUPS, PHILOX_ROUNDS_V2>(seed, key, TAG_ROUNDING, g0, x0, x1, x2, x3);
  else
    philox_block<TILE_GROUPS>(seed, key, TAG_ROUNDING, g0, x0, x1, x2, x3);
  for (int n = 0; n < TILE_GROUPS; ++n) {
    r[4 * n] = x0[n];
    r[4 * n + 1] = x1[n];
    r[4 * n + 2] = x2[n];
    r[4 * n + 3] = x3[n];
  }
}

// The tile's first group and the tensor-index window [lo, hi) it covers, relative to its start.
struct TileSpan {
  uint64_t g0;
  int64_t start, lo, hi;
};

inline TileSpan span_of(const TensorArg &t, int64_t tile) {
  TileSpan s;
  s.g0 = (t.offset >> 2) + (uint64_t)tile * TILE_GROUPS;
  s.start = (int64_t)(s.g0 * 4 - t.offset);  // tensor index of the tile's first element (< 0 on a ragged head)
  s.lo = s.start < 0 ? -s.start : 0;
  s.hi = t.numel - s.start < TILE ? t.numel - s.start : TILE;
  return s;
}

// w[i] = round(w[i] + c_k * z_k[i]) for each seed in order, over the tile window [lo, hi). Returns nonzero
// when the result holds an inf or NaN: the largest magnitude's bits, gathered in the last seed's loop
// (no extra pass), reach the all-ones exponent.
template <bool Stochastic, typename Round>
inline uint32_t apply_seeds(float *w, const TensorArg &t, const TileSpan &s, const uint64_t *seeds,
                            const SeedUse *uses, const float *coeffs, int K, int dist, int version, Round round) {
  float kept[NOISE_SLOTS][TILE], own[TILE];
  uint32_t r[TILE];
  uint32_t largest = 0;
  for (int k = 0; k < K; ++k) {
    float(&z)[TILE] = uses[k].slot >= 0 ? kept[uses[k].slot] : own;
    if (!uses[k].cached) noise_tile(seeds[k], t.key, dist, version, s.g0, z);
    if (Stochastic) rounding_bits_tile(seeds[k], t.key, version, s.g0, r);
    const float c = coeffs[k];
    if (k + 1 < K) {
      for (int64_t i = s.lo; i < s.hi; ++i) w[i] = round(w[i] + c * z[i], Stochastic ? r[i] : 0u);
    } else {
      for (int64_t i = s.lo; i < s.hi; ++i) {
        w[i] = round(w[i] + c * z[i], Stochastic ? r[i] : 0u);
        const uint32_t b = bits_of(w[i]) & 0x7FFFFFFFu;
        largest = b > largest ? b : largest;
      }
    }
  }
  return largest >= 0x7F800000u;
}

// 16-bit formats: widen the tile to float32 once, apply all K seeds rounding after each, narrow once.
template <typename Widen, typename Narrow, typename NarrowSR>
inline uint32_t update_tile_16(const TensorArg &t, const TileSpan &s, const uint64_t *seeds, const SeedUse *uses,
                               const float *coeffs, int K, int dist, int version, bool stochastic, Widen widen,
                               Narrow narrow, NarrowSR narrow_sr) {
  uint16_t *p = reinterpret_cast<uint16_t *>(t.ptr) + s.start;
  const uint16_t *q = reinterpret_cast<const uint16_t *>(t.src) + s.start;
  float w[TILE];
  for (int64_t i = s.lo; i < s.hi; ++i) w[i] = widen(q[i]);
  auto round_sr = [&](float v, uint32_t r) { return widen(narrow_sr(v, r)); };
  auto round_nearest = [&](float v, uint32_t) { return widen(narrow(v)); };
  const uint32_t non_finite =
      stochastic ? apply_seeds<true>(w, t, s, seeds, uses, coeffs, K, dist, version, round_sr)
                 : apply_seeds<false>(w, t, s, seeds, uses, coeffs, K, dist, version, round_nearest);
  for (int64_t i = s.lo; i < s.hi; ++i) p[i] = narrow(w[i]);  // exact: w holds representable values
  return non_finite;
}

// Ask for the tile's parameters before generating its noise, so the memory traffic overlaps the
// Philox arithmetic instead of following it (worth ~15% on a 2-core machine).
inline void prefetch_tile(const TensorArg &t, const TileSpan &s) {
  const int64_t bytes = t.dtype == F32 ? 4 : 2;
  const char *base = reinterpret_cast<const char *>(t.src) + (s.start + s.lo) * bytes;
  const int64_t n = (s.hi - s.lo) * bytes;
  for (int64_t off = 0; off < n; off += 64) __builtin_prefetch(base + off, 1, 3);
}

uint32_t update_tile(const TensorArg &t, int64_t tile, const uint64_t *seeds, const SeedUse *uses, const float *coeffs,
                     int K, int dist, int rounding, int version) {
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
    return apply_seeds<false>(p, t, s, seeds, uses, coeffs, K, dist, version, [](float v, uint32_t) { return v; });
  }
  if (t.dtype == BF16)
    return update_tile_16(
        t, s, seeds, uses, coeffs, K, dist, version, sr, [](uint16_t h) { return bf16_to_f32(h); },
        [](float v) { return f32_to_bf16(v); }, [](float v, uint32_t r) { return f32_to_bf16_sr(v, r); });
  return update_tile_16(
      t, s, seeds, uses, coeffs, K, dist, version, sr, [](uint16_t h) { return f16_to_f32(h); },
      [](float v) { return f32_to_f16(v); }, [](float v, uint32_t r) { return f32_to_f16_sr(v, r); });
}

void noise_tile_into(const TensorArg &t, int64_t tile, uint64_t seed, int dist, int version) {
  const TileSpan s = span_of(t, tile);
  float z[TILE];
  noise_tile(seed, t.key, dist, version, s.g0, z);
  float *p = reinterpret_cast<float *>(t.ptr) + s.start;
  for (int64_t i = s.lo; i < s.hi; ++i) p[i] = z[i];
}

}  // namespace

extern const TileKernels ZO_CAT(tiles_, ZO_ISA) = {ZO_STR(ZO_ISA), &update_tile, &noise_tile_into};

}  // namespace zo
