// The fused tile loops over the noise contract (zo_noise.h). setup.py compiles this file once per
// instruction set with -DZO_ISA=<name> and that set's flags; each copy defines the table tiles_<name>.
// Everything else here has internal linkage (see zo_tiles.h for why), and nothing runs at load time.
#include "zo_tiles.h"

#include "zo_noise.h"

#ifndef ZO_ISA
#error "compile with -DZO_ISA=baseline|avx2|avx512|avx512bf16 (setup.py does)"
#endif
#define ZO_STR2(x) #x
#define ZO_STR(x) ZO_STR2(x)
#define ZO_CAT2(a, b) a##b
#define ZO_CAT(a, b) ZO_CAT2(a, b)

namespace zo {
namespace {

// Spec v2's Rademacher: 32 consecutive groups share a Philox counter, group G taking bit G % 32 of each
// word. A tile starts at any group (tiles follow the tensor's offset), so its 128 groups touch 4 or 5 counters.
// Element 4n + l of the tile takes bit (phase + n) % 32 of word l of counter (phase + n) / 32, as the sign of 1.0f.
// (GCC 12's unmasked AVX-512 intrinsics: see gaussian_v2_words in zo_noise.h for this warning.)
#if defined(__GNUC__) && !defined(__clang__)
#pragma GCC diagnostic push
#pragma GCC diagnostic ignored "-Wmaybe-uninitialized"
#endif
inline void rademacher_v2_tile(uint64_t seed, uint32_t key, uint64_t g0, float (&z)[TILE]) {
  constexpr int PER_COUNTER = RADEMACHER_V2_ELEMENTS / 4, C = TILE_GROUPS / PER_COUNTER + 1;
  uint32_t x[4][C];
  philox_block<C, PHILOX_ROUNDS_V2>(seed, key, TAG_NOISE, g0 / PER_COUNTER, x[0], x[1], x[2], x[3]);
  const int phase = (int)(g0 % PER_COUNTER);
#if defined(__AVX2__)
  // the words in element-lane order (word l of counter c at 4c + l), so that one permute gives each of a
  // vector's lanes its element's word, and one variable shift per lane brings its bit to the sign
  alignas(64) uint32_t words[32] = {};
  for (int c = 0; c < C; ++c)
    for (int l = 0; l < 4; ++l) words[4 * c + l] = x[l][c];
#endif
#if defined(__AVX512F__)
  const __m512i lo = _mm512_load_si512(words), hi = _mm512_load_si512(words + 16);
  const __m512i lane = _mm512_set_epi32(3, 2, 1, 0, 3, 2, 1, 0, 3, 2, 1, 0, 3, 2, 1, 0);
  __m512i g = _mm512_add_epi32(_mm512_set1_epi32(phase), _mm512_set_epi32(3, 3, 3, 3, 2, 2, 2, 2, 1, 1, 1, 1, 0, 0, 0, 0));
  for (int i = 0; i < TILE; i += 16, g = _mm512_add_epi32(g, _mm512_set1_epi32(4))) {
    const __m512i idx = _mm512_or_si512(_mm512_slli_epi32(_mm512_srli_epi32(g, 5), 2), lane);
    const __m512i bit_to_sign = _mm512_andnot_si512(g, _mm512_set1_epi32(31));  // 31 - g % 32
    const __m512i w = _mm512_sllv_epi32(_mm512_permutex2var_epi32(lo, idx, hi), bit_to_sign);
    _mm512_storeu_si512(z + i, _mm512_ternarylogic_epi32(w, _mm512_set1_epi32((int)0x80000000u),
                                                         _mm512_set1_epi32(0x3F800000), 0xEA));  // (A & B) | C
  }
#elif defined(__AVX2__)
  // 8 elements are 2 groups, within 2 adjacent counters: their 8 words are one unaligned load
  const __m256i lane = _mm256_set_epi32(3, 2, 1, 0, 3, 2, 1, 0);
  const __m256i pair = _mm256_set_epi32(1, 1, 1, 1, 0, 0, 0, 0);
  for (int i = 0; i < TILE; i += 8) {
    const int n = phase + i / 4, first = n / PER_COUNTER;
    const __m256i v = _mm256_loadu_si256(reinterpret_cast<const __m256i *>(words + 4 * first));
    const __m256i g = _mm256_add_epi32(_mm256_set1_epi32(n), pair);
    const __m256i idx = _mm256_or_si256(
        _mm256_slli_epi32(_mm256_sub_epi32(_mm256_srli_epi32(g, 5), _mm256_set1_epi32(first)), 2), lane);
    const __m256i bit_to_sign = _mm256_andnot_si256(g, _mm256_set1_epi32(31));  // 31 - g % 32
    const __m256i w = _mm256_sllv_epi32(_mm256_permutevar8x32_epi32(v, idx), bit_to_sign);
    _mm256_storeu_si256(reinterpret_cast<__m256i *>(z + i),
                        _mm256_or_si256(_mm256_and_si256(w, _mm256_set1_epi32((int)0x80000000u)),
                                        _mm256_set1_epi32(0x3F800000)));
  }
#else
  // one 4-lane shift per group by a count shared by its lanes (a plain SSE2 shift)
  typedef uint32_t u32x4 __attribute__((vector_size(16)));
  u32x4 words[C];
  for (int c = 0; c < C; ++c) words[c] = u32x4{x[0][c], x[1][c], x[2][c], x[3][c]};
  for (int n = 0; n < TILE_GROUPS; ++n) {
    const int g = phase + n;
    const u32x4 signs = ((words[g / PER_COUNTER] << (31 - g % PER_COUNTER)) & 0x80000000u) | 0x3F800000u;
    std::memcpy(&z[4 * n], &signs, sizeof signs);
  }
#endif
}
#if defined(__GNUC__) && !defined(__clang__)
#pragma GCC diagnostic pop
#endif

// The random words of the TILE elements of groups g0 .. g0 + TILE_GROUPS - 1, in element order.
inline void words_tile(uint64_t seed, uint32_t key, uint32_t tag, int version, uint64_t g0, uint32_t (&u)[TILE]) {
  if (version == 2)
    philox_elements<TILE_GROUPS, PHILOX_ROUNDS_V2>(seed, key, tag, g0, u);
  else
    philox_elements<TILE_GROUPS, PHILOX_ROUNDS>(seed, key, tag, g0, u);
}

// z for the TILE elements of groups g0 .. g0 + TILE_GROUPS - 1, in element order, under spec `version`.
inline void noise_tile(uint64_t seed, uint32_t key, int dist, int version, uint64_t g0, float (&z)[TILE]) {
  if (version == 2 && dist == RADEMACHER) return rademacher_v2_tile(seed, key, g0, z);
  if (dist == GAUSSIAN && version == 1) {  // Box-Muller pairs lanes (0, 1) and (2, 3) of each counter
    uint32_t x0[TILE_GROUPS], x1[TILE_GROUPS], x2[TILE_GROUPS], x3[TILE_GROUPS];
    philox_block<TILE_GROUPS>(seed, key, TAG_NOISE, g0, x0, x1, x2, x3);
    for (int n = 0; n < TILE_GROUPS; ++n) {
      spec_gaussian_pair(x0[n], x1[n], z[4 * n], z[4 * n + 1]);
      spec_gaussian_pair(x2[n], x3[n], z[4 * n + 2], z[4 * n + 3]);
    }
    return;
  }
  uint32_t u[TILE];  // one word per element
  words_tile(seed, key, TAG_NOISE, version, g0, u);
  if (dist == GAUSSIAN)
    gaussian_v2_words(u, z, TILE);
  else if (dist == RADEMACHER)
    for (int i = 0; i < TILE; ++i) z[i] = spec_rademacher(u[i]);
  else
    for (int i = 0; i < TILE; ++i) z[i] = spec_uniform(u[i]);
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

#if defined(__AVX512F__) || defined(__AVX2__)
// The float32 vector of the variant and the vector holding twice as many 16-bit elements (one step of
// sweep_vectors), with what that loop does on them.
#if defined(__AVX512F__)
struct Step {
  using F = __m512;
  using H = __m512i;
  static constexpr int LANES = 16;  // float32 lanes; a step is 2 * LANES elements
  static F set1(float v) { return _mm512_set1_ps(v); }
  static F load(const float *p) { return _mm512_loadu_ps(p); }
  static void store(float *p, F v) { _mm512_storeu_ps(p, v); }
  static H load_h(const uint16_t *p) { return _mm512_loadu_si512(p); }
  static void store_h(uint16_t *p, H v) { _mm512_storeu_si512(p, v); }
  static F mul(F a, F b) { return _mm512_mul_ps(a, b); }
  static F add(F a, F b) { return _mm512_add_ps(a, b); }
  static H zero_h() { return _mm512_setzero_si512(); }
  static H max_magnitude(H largest, H h) { return _mm512_max_epu16(largest, _mm512_and_si512(h, _mm512_set1_epi16(0x7FFF))); }
  static uint32_t reduce_max(H v) {
    const __m512i words = _mm512_max_epu16(v, _mm512_srli_epi32(v, 16));  // in the low halves
    return _mm512_reduce_max_epu32(_mm512_and_si512(words, _mm512_set1_epi32(0xFFFF)));
  }
};
#else
struct Step {
  using F = __m256;
  using H = __m256i;
  static constexpr int LANES = 8;
  static F set1(float v) { return _mm256_set1_ps(v); }
  static F load(const float *p) { return _mm256_loadu_ps(p); }
  static void store(float *p, F v) { _mm256_storeu_ps(p, v); }
  static H load_h(const uint16_t *p) { return _mm256_loadu_si256(reinterpret_cast<const __m256i *>(p)); }
  static void store_h(uint16_t *p, H v) { _mm256_storeu_si256(reinterpret_cast<__m256i *>(p), v); }
  static F mul(F a, F b) { return _mm256_mul_ps(a, b); }
  static F add(F a, F b) { return _mm256_add_ps(a, b); }
  static H zero_h() { return _mm256_setzero_si256(); }
  static H max_magnitude(H largest, H h) { return _mm256_max_epu16(largest, _mm256_and_si256(h, _mm256_set1_epi16(0x7FFF))); }
  static uint32_t reduce_max(H v) {
    alignas(32) uint16_t w[16];
    _mm256_store_si256(reinterpret_cast<__m256i *>(w), v);
    uint32_t m = 0;
    for (uint16_t x : w) m = x > m ? x : m;
    return m;
  }
};
#endif
#endif

// A parameter dtype's element type and conversions: widen to float32 (exact), narrow to nearest or
// stochastically (float32 has no rounding step), and the magnitude bits of inf in that type.
// The AVX2 and AVX-512 variants also convert one step of 2 * Step::LANES elements at once (widen_step: one
// vector of 16-bit elements to two of float32, element order kept; narrow_step: back), the same bits as the
// scalar forms (tests/test_rounding_edges.py compares them over every float32 and every 16-bit pattern), which
// sweep uses for rounding to nearest: the compiler's vectorization of the scalar forms spent 3x the
// instructions of the float32 update on the bf16 round trip, and more on fp16 (on AVX2 the whole fp16 pass
// took 3.6x the float32 one).
struct F32Format {
  using E = float;
  static constexpr uint32_t INF = 0x7F800000u;
  static float widen(float v) { return v; }
  static float narrow(float v) { return v; }
  static float narrow_sr(float v, uint32_t) { return v; }
  static uint32_t magnitude(float v) { return bits_of(v) & 0x7FFFFFFFu; }
};
// (GCC 12's unmasked AVX-512 intrinsics: see gaussian_v2_words in zo_noise.h for this warning.)
#if defined(__GNUC__) && !defined(__clang__)
#pragma GCC diagnostic push
#pragma GCC diagnostic ignored "-Wmaybe-uninitialized"
#endif
struct BF16Format {
  using E = uint16_t;
  static constexpr uint32_t INF = 0x7F80u;
  static float widen(uint16_t h) { return bf16_to_f32(h); }
  static uint16_t narrow(float v) { return f32_to_bf16(v); }
  static uint16_t narrow_sr(float v, uint32_t r) { return f32_to_bf16_sr(v, r); }
  static uint32_t magnitude(uint16_t h) { return h & 0x7FFFu; }
  // f32_to_bf16 is bits + 0x7FFF + (bits >> 16 & 1) or, for NaN, bits | 0x400000 (the quiet bit of the high
  // half), then the high half. A sum never holds a NaN with nonzero low bits, but so narrow_step is
  // f32_to_bf16 for every input.
#if defined(__AVX512F__)
  // element j of h to the high half of dword j of lo (j < 16) or hi, the low halves zero: one word permute each
  static void widen_step(__m512i h, __m512 &lo, __m512 &hi) {
    const __mmask32 high_halves = 0xAAAAAAAAu;
    const __m512i to_lo = _mm512_set_epi16(15, 0, 14, 0, 13, 0, 12, 0, 11, 0, 10, 0, 9, 0, 8, 0, 7, 0, 6, 0, 5, 0, 4,
                                           0, 3, 0, 2, 0, 1, 0, 0, 0);
    const __m512i to_hi = _mm512_add_epi16(to_lo, _mm512_set1_epi16(16));
    lo = _mm512_castsi512_ps(_mm512_maskz_permutexvar_epi16(high_halves, to_lo, h));
    hi = _mm512_castsi512_ps(_mm512_maskz_permutexvar_epi16(high_halves, to_hi, h));
  }
  static __m512i narrow_step(__m512 lo, __m512 hi) {
#if defined(__AVX512BF16__)
    // VCVTNE2PS2BF16 rounds to nearest even and quiets NaN as the contract does ((bits >> 16) | 0x40), but
    // takes a denormal input as zero: a step holding one (weights near 1e-38: rare) takes the integer path.
    constexpr int DENORMAL_CLASS = 0x20;  // a vfpclassps category
    if (__builtin_expect(
            _kortestz_mask16_u8(_mm512_fpclass_ps_mask(lo, DENORMAL_CLASS), _mm512_fpclass_ps_mask(hi, DENORMAL_CLASS)),
            1))
      return (__m512i)_mm512_cvtne2ps_pbh(hi, lo);
#endif
    // rounded in the high halves, then one permute of the high halves
    const __m512i high_halves = _mm512_set_epi16(63, 61, 59, 57, 55, 53, 51, 49, 47, 45, 43, 41, 39, 37, 35, 33, 31,
                                                 29, 27, 25, 23, 21, 19, 17, 15, 13, 11, 9, 7, 5, 3, 1);
    return _mm512_permutex2var_epi16(rounded(lo), high_halves, rounded(hi));
  }
  static __m512i rounded(__m512 v) {
    constexpr int NAN_CLASS = 0x81;  // vfpclassps categories QNaN | SNaN
    const __m512i b = _mm512_castps_si512(v), r = _mm512_add_epi32(b, _mm512_set1_epi32(0x7FFF));
    const __m512i rne = _mm512_mask_add_epi32(r, _mm512_test_epi32_mask(b, _mm512_set1_epi32(0x10000)), r,
                                              _mm512_set1_epi32(1));
    return _mm512_mask_or_epi32(rne, _mm512_fpclass_ps_mask(v, NAN_CLASS), b, _mm512_set1_epi32(0x400000));
  }
#elif defined(__AVX2__)
  static void widen_step(__m256i h, __m256 &lo, __m256 &hi) {
    lo = _mm256_castsi256_ps(_mm256_slli_epi32(_mm256_cvtepu16_epi32(_mm256_castsi256_si128(h)), 16));
    hi = _mm256_castsi256_ps(_mm256_slli_epi32(_mm256_cvtepu16_epi32(_mm256_extracti128_si256(h, 1)), 16));
  }
  // the high halves packed per 128-bit lane (lo 0-3, hi 0-3, lo 4-7, hi 4-7), then the 64-bit quarters in order
  static __m256i narrow_step(__m256 lo, __m256 hi) {
    return _mm256_permute4x64_epi64(_mm256_packus_epi32(rounded(lo), rounded(hi)), 0xD8);
  }
  static __m256i rounded(__m256 v) {  // in the low halves: packus saturates nothing below 2^16
    const __m256i b = _mm256_castps_si256(v);
    const __m256i lsb = _mm256_and_si256(_mm256_srli_epi32(b, 16), _mm256_set1_epi32(1));
    const __m256i rne = _mm256_add_epi32(_mm256_add_epi32(b, _mm256_set1_epi32(0x7FFF)), lsb);
    const __m256i nan = _mm256_castps_si256(_mm256_cmp_ps(v, v, _CMP_UNORD_Q));
    return _mm256_srli_epi32(_mm256_blendv_epi8(rne, _mm256_or_si256(b, _mm256_set1_epi32(0x400000)), nan), 16);
  }
#endif
};
struct F16Format {
  using E = uint16_t;
  static constexpr uint32_t INF = 0x7C00u;
  static float widen(uint16_t h) { return f16_to_f32(h); }
  static uint16_t narrow(float v) { return f32_to_f16(v); }
  static uint16_t narrow_sr(float v, uint32_t r) { return f32_to_f16_sr(v, r); }
  static uint32_t magnitude(uint16_t h) { return h & 0x7FFFu; }
  // VCVTPH2PS quiets a signaling NaN, f16_to_f32 keeps it signaling; the next operation, adding c z (never
  // NaN: update_ refuses coefficients that are not finite), quiets it either way, to the same bits.
  // VCVTPS2PH with its rounding fixed to nearest even (not the MXCSR's) is f32_to_f16 for every input.
#if defined(__AVX512F__)
  static void widen_step(__m512i h, __m512 &lo, __m512 &hi) {
    lo = _mm512_cvtph_ps(_mm512_castsi512_si256(h));
    hi = _mm512_cvtph_ps(_mm512_extracti64x4_epi64(h, 1));
  }
  static __m512i narrow_step(__m512 lo, __m512 hi) {
    constexpr int RNE = _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC;
    return _mm512_inserti64x4(_mm512_castsi256_si512(_mm512_cvtps_ph(lo, RNE)), _mm512_cvtps_ph(hi, RNE), 1);
  }
#elif defined(__AVX2__)  // and F16C (setup.py)
  static void widen_step(__m256i h, __m256 &lo, __m256 &hi) {
    lo = _mm256_cvtph_ps(_mm256_castsi256_si128(h));
    hi = _mm256_cvtph_ps(_mm256_extracti128_si256(h, 1));
  }
  static __m256i narrow_step(__m256 lo, __m256 hi) {
    constexpr int RNE = _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC;
    return _mm256_inserti128_si256(_mm256_castsi128_si256(_mm256_cvtps_ph(lo, RNE)), _mm256_cvtps_ph(hi, RNE), 1);
  }
#endif
};

#if defined(__AVX512F__) || defined(__AVX2__)
// sweep's rounding to nearest for the 16-bit formats over the whole steps of the window from s.lo, in the
// scalar loop's operations and order (c * z, then + x) and so its bits; `end` is where it stopped.
template <typename D, bool FromSource, bool ToDestination>
inline uint32_t sweep_steps(const TileSpan &s, const uint16_t *in, uint16_t *out, float *w, const float *z, float c,
                            int64_t &end) {
  using V = Step;
  constexpr int L = V::LANES;
  const typename V::F cv = V::set1(c);
  typename V::H largest = V::zero_h();  // of the magnitudes written, as 16-bit patterns
  const int64_t hi = s.hi;
  int64_t i = s.lo;
  for (; i + 2 * L <= hi; i += 2 * L) {
    typename V::F x_lo, x_hi;
    if (FromSource) {
      D::widen_step(V::load_h(in + i), x_lo, x_hi);
    } else {
      x_lo = V::load(w + i);
      x_hi = V::load(w + i + L);
    }
    const typename V::H h = D::narrow_step(V::add(V::mul(cv, V::load(z + i)), x_lo),
                                           V::add(V::mul(cv, V::load(z + i + L)), x_hi));
    if (ToDestination) {
      V::store_h(out + i, h);
      largest = V::max_magnitude(largest, h);
    } else {
      D::widen_step(h, x_lo, x_hi);
      V::store(w + i, x_lo);
      V::store(w + i + L, x_hi);
    }
  }
  end = i;
  return ToDestination ? V::reduce_max(largest) : 0;
}
#endif
#if defined(__GNUC__) && !defined(__clang__)
#pragma GCC diagnostic pop
#endif

// One seed's sweep over the tile window: round(x[i] + c * z[i]) with x read from the source tensor (the first
// seed) or from the float32 scratch w, and the result written to the destination tensor (the last seed, which
// also gathers the largest magnitude for the non-finite check: no extra pass) or back to w. So K = 1 is one
// loop from memory to memory, and the noise never meets a separate widen or narrow loop.
template <typename D, bool Stochastic, bool FromSource, bool ToDestination>
inline uint32_t sweep(const TileSpan &s, const typename D::E *in, typename D::E *out, float *w, const float *z,
                      const uint32_t *r, float c) {
  uint32_t largest = 0;
  int64_t i = s.lo;
#if defined(__AVX512F__) || defined(__AVX2__)
  if constexpr (!Stochastic && std::is_same_v<typename D::E, uint16_t>)
    largest = sweep_steps<D, FromSource, ToDestination>(s, in, out, w, z, c, i);  // the rest (< 1 step) below
#endif
  for (; i < s.hi; ++i) {
    const float x = FromSource ? D::widen(in[i]) : w[i];
    const typename D::E h = Stochastic ? D::narrow_sr(x + c * z[i], r[i]) : D::narrow(x + c * z[i]);
    if (ToDestination) {
      out[i] = h;
      const uint32_t m = D::magnitude(h);
      largest = m > largest ? m : largest;
    } else {
      w[i] = D::widen(h);
    }
  }
  return largest;
}

// w = round(w + c_k * z_k) for each seed in order over the tile window, read from t.src and written to t.ptr
// in the parameter dtype, rounding after each seed. Returns nonzero when the result holds an inf or NaN.
template <typename D, bool Stochastic>
inline uint32_t update_window(const TensorArg &t, const TileSpan &s, const uint64_t *seeds, const SeedUse *uses,
                              const float *coeffs, int K, int dist, int version) {
  using E = typename D::E;
  const E *in = reinterpret_cast<const E *>(t.src) + s.start;
  E *out = reinterpret_cast<E *>(t.ptr) + s.start;
  if (K == 0) {  // a plain copy (update_ with sources and no seeds)
    for (int64_t i = s.lo; i < s.hi; ++i) out[i] = in[i];
    return 0;
  }
  float kept[NOISE_SLOTS][TILE], own[TILE], w[TILE];
  uint32_t r[TILE];
  uint32_t largest = 0;
  for (int k = 0; k < K; ++k) {
    float(&z)[TILE] = uses[k].slot >= 0 ? kept[uses[k].slot] : own;
    if (!uses[k].cached) noise_tile(seeds[k], t.key, dist, version, s.g0, z);
    if (Stochastic) words_tile(seeds[k], t.key, TAG_ROUNDING, version, s.g0, r);
    const float c = coeffs[k];
    if (K == 1)
      largest = sweep<D, Stochastic, true, true>(s, in, out, w, z, r, c);
    else if (k == 0)
      sweep<D, Stochastic, true, false>(s, in, out, w, z, r, c);
    else if (k + 1 < K)
      sweep<D, Stochastic, false, false>(s, in, out, w, z, r, c);
    else
      largest = sweep<D, Stochastic, false, true>(s, in, out, w, z, r, c);
  }
  return largest >= D::INF;
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
  if (t.dtype == F32) return update_window<F32Format, false>(t, s, seeds, uses, coeffs, K, dist, version);
  if (t.dtype == BF16)
    return sr ? update_window<BF16Format, true>(t, s, seeds, uses, coeffs, K, dist, version)
              : update_window<BF16Format, false>(t, s, seeds, uses, coeffs, K, dist, version);
  return sr ? update_window<F16Format, true>(t, s, seeds, uses, coeffs, K, dist, version)
            : update_window<F16Format, false>(t, s, seeds, uses, coeffs, K, dist, version);
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
