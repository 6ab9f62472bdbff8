// The noise contract in C++ (header-only, no torch). docs/noise.md is the prose, zokernels/spec.py
// the constants (tests compare them to spec_constants() exported by the extension).
//
// Everything here is integer arithmetic or single IEEE float32 operations (+ - * / sqrt), compiled
// with -ffp-contract=off and without -ffast-math, so every compiler and vector width gives the
// same bits as the torch reference and the Triton kernels.
#pragma once
#include <cstdint>
#include <cstring>

#include "zo_gaussian_table.h"
#if defined(__AVX512F__) || defined(__AVX2__) || defined(__SSE2__)
#include <immintrin.h>
#endif

namespace zo {

constexpr int SPEC_VERSION = 1;  // the default stream; version 2 is opt-in per call (docs/noise.md)
constexpr uint32_t PHILOX_KEY_A = 0x9E3779B9u, PHILOX_KEY_B = 0xBB67AE85u;
constexpr uint32_t PHILOX_ROUND_A = 0xD2511F53u, PHILOX_ROUND_B = 0xCD9E8D57u;
constexpr int PHILOX_ROUNDS = 10, PHILOX_ROUNDS_V2 = 7;
constexpr int RADEMACHER_V2_ELEMENTS = 128;  // v2: 32 signs per word, 4 words per counter
constexpr int GAUSSIAN_V2_BIAS = 127 - 25;  // octave 0 of the v2 Gaussian is [2^-25, 2^-24)
constexpr uint32_t TAG_NOISE = 0, TAG_ROUNDING = 1;

enum Dist : int { GAUSSIAN = 0, RADEMACHER = 1, UNIFORM = 2 };
enum DType : int { F32 = 0, BF16 = 1, F16 = 2 };
enum Rounding : int { NEAREST = 0, STOCHASTIC = 1 };

static inline float f32(uint32_t bits) { float f; std::memcpy(&f, &bits, 4); return f; }
static inline uint32_t bits_of(float f) { uint32_t u; std::memcpy(&u, &f, 4); return u; }

// Float32 constants by bit pattern (same table as zokernels/spec.py F32_BITS).
constexpr uint32_t SQRT2 = 0x3FB504F3u, LN2_HI = 0x3F317180u, LN2_LO = 0x3717F7D2u;
constexpr uint32_t LOG_C1 = 0x3F2AAAABu, LOG_C2 = 0x3ECCCCCDu, LOG_C3 = 0x3E924925u, LOG_C4 = 0x3E638E39u;
constexpr uint32_t TURN_STEP = 0x34C90FDBu;
constexpr uint32_t SIN_C1 = 0xBE2AAAABu, SIN_C2 = 0x3C088889u, SIN_C3 = 0xB9500D01u, SIN_C4 = 0x3638EF1Du;
constexpr uint32_t COS_C1 = 0xBF000000u, COS_C2 = 0x3D2AAAABu, COS_C3 = 0xBAB60B61u, COS_C4 = 0x37D00D01u,
                   COS_C5 = 0xB493F27Eu;
constexpr uint32_t SQRT3 = 0x3FDDB3D7u;

// One Philox4x32-10 round on one counter; k0/k1 are the round's key words.
static inline void philox_round(uint32_t &x0, uint32_t &x1, uint32_t &x2, uint32_t &x3, uint32_t k0, uint32_t k1) {
  uint64_t pa = (uint64_t)PHILOX_ROUND_A * x0;
  uint64_t pb = (uint64_t)PHILOX_ROUND_B * x2;
  uint32_t c0 = (uint32_t)(pb >> 32) ^ x1 ^ k0;
  uint32_t c2 = (uint32_t)(pa >> 32) ^ x3 ^ k1;
  x1 = (uint32_t)pb;
  x3 = (uint32_t)pa;
  x0 = c0;
  x2 = c2;
}

// The Weyl key schedule: round r uses (k0 + r * KEY_A, k1 + r * KEY_B), computed once per block of counters.
template <int ROUNDS>
struct PhiloxKeys {
  uint32_t a[ROUNDS], b[ROUNDS];
  explicit PhiloxKeys(uint64_t seed) {
    uint32_t ka = (uint32_t)seed, kb = (uint32_t)(seed >> 32);
    for (int r = 0; r < ROUNDS; ++r, ka += PHILOX_KEY_A, kb += PHILOX_KEY_B) {
      a[r] = ka;
      b[r] = kb;
    }
  }
};

// Vector Philox: 32x32->64 multiplies as even- and odd-lane _mul_epu32 (compilers otherwise widen to
// 64-bit lanes: vpmullq on AVX-512, a scalar-speed sequence on AVX2). Each Vec type gives the
// instructions of one width; philox_lanes runs two independent counter vectors at once, because a
// round is a chain of dependent instructions and one chain leaves the multiplier idle.
#if defined(__AVX512F__)
struct Vec512 {
  using T = __m512i;
  static constexpr int LANES = 16;
  static T load(const uint32_t *p) { return _mm512_loadu_si512(p); }
  static void store(uint32_t *p, T v) { _mm512_storeu_si512(p, v); }
  static T set1(uint32_t v) { return _mm512_set1_epi32((int)v); }
  static T xor3(T a, T b, T c) { return _mm512_xor_si512(_mm512_xor_si512(a, b), c); }
  // The zero-masking forms with an all-ones mask compile to the plain instructions. The unmasked
  // intrinsics start from _mm512_undefined_epi32(), a self-initialized variable that GCC 12 reports
  // as used uninitialized wherever they are inlined.
  // Dword swaps within each 64-bit lane (vpshufd) stand in for 32-bit shifts: shifts and multiplies
  // share one port on AVX-512, shuffles use another.
  static void mulhilo(T a, T m, T &hi, T &lo) {
    const __mmask8 all8 = 0xFF;
    const __mmask16 all16 = 0xFFFF;
    T even = _mm512_maskz_mul_epu32(all8, a, m);
    T odd = _mm512_maskz_mul_epu32(all8, _mm512_maskz_shuffle_epi32(all16, a, _MM_PERM_CDAB), m);
    hi = _mm512_mask_blend_epi32(0xAAAA, _mm512_maskz_shuffle_epi32(all16, even, _MM_PERM_CDAB), odd);
    lo = _mm512_mask_blend_epi32(0xAAAA, even, _mm512_maskz_shuffle_epi32(all16, odd, _MM_PERM_CDAB));
  }
};
#endif
#if defined(__AVX2__)
struct Vec256 {
  using T = __m256i;
  static constexpr int LANES = 8;
  static T load(const uint32_t *p) { return _mm256_loadu_si256(reinterpret_cast<const __m256i *>(p)); }
  static void store(uint32_t *p, T v) { _mm256_storeu_si256(reinterpret_cast<__m256i *>(p), v); }
  static T set1(uint32_t v) { return _mm256_set1_epi32((int)v); }
  static T xor3(T a, T b, T c) { return _mm256_xor_si256(_mm256_xor_si256(a, b), c); }
  static void mulhilo(T a, T m, T &hi, T &lo) {
    T even = _mm256_mul_epu32(a, m);
    T odd = _mm256_mul_epu32(_mm256_srli_epi64(a, 32), m);
    hi = _mm256_blend_epi32(_mm256_srli_epi64(even, 32), odd, 0xAA);
    lo = _mm256_blend_epi32(even, _mm256_slli_epi64(odd, 32), 0xAA);
  }
};
#endif
#if defined(__SSE2__)
// x86-64's baseline. SSE2 has no dword blend: the products' halves are regrouped by shuffles instead.
struct Vec128 {
  using T = __m128i;
  static constexpr int LANES = 4;
  static T load(const uint32_t *p) { return _mm_loadu_si128(reinterpret_cast<const __m128i *>(p)); }
  static void store(uint32_t *p, T v) { _mm_storeu_si128(reinterpret_cast<__m128i *>(p), v); }
  static T set1(uint32_t v) { return _mm_set1_epi32((int)v); }
  static T xor3(T a, T b, T c) { return _mm_xor_si128(_mm_xor_si128(a, b), c); }
  static void mulhilo(T a, T m, T &hi, T &lo) {
    // even = (lo0, hi0, lo2, hi2), odd = (lo1, hi1, lo3, hi3) -> (lo0, lo2, hi0, hi2), (lo1, lo3, hi1, hi3)
    T even = _mm_shuffle_epi32(_mm_mul_epu32(a, m), _MM_SHUFFLE(3, 1, 2, 0));
    T odd = _mm_shuffle_epi32(_mm_mul_epu32(_mm_srli_epi64(a, 32), m), _MM_SHUFFLE(3, 1, 2, 0));
    lo = _mm_unpacklo_epi32(even, odd);
    hi = _mm_unpackhi_epi32(even, odd);
  }
};
#endif

// Philox4x32-ROUNDS in place on the 2 * V::LANES counters x0[0..], x1[0..], x2[0..], x3[0..].
template <typename V, int ROUNDS>
static inline void philox_lanes(const PhiloxKeys<ROUNDS> &k, uint32_t *x0, uint32_t *x1, uint32_t *x2,
                                uint32_t *x3) {
  using T = typename V::T;
  constexpr int L = V::LANES;
  const T ma = V::set1(PHILOX_ROUND_A), mb = V::set1(PHILOX_ROUND_B);
  T a0 = V::load(x0), a1 = V::load(x1), a2 = V::load(x2), a3 = V::load(x3);
  T b0 = V::load(x0 + L), b1 = V::load(x1 + L), b2 = V::load(x2 + L), b3 = V::load(x3 + L);
  for (int r = 0; r < ROUNDS; ++r) {
    const T ka = V::set1(k.a[r]), kb = V::set1(k.b[r]);
    T ahi0, alo0, ahi2, alo2, bhi0, blo0, bhi2, blo2;
    V::mulhilo(a0, ma, ahi0, alo0);
    V::mulhilo(b0, ma, bhi0, blo0);
    V::mulhilo(a2, mb, ahi2, alo2);
    V::mulhilo(b2, mb, bhi2, blo2);
    a0 = V::xor3(ahi2, a1, ka);
    b0 = V::xor3(bhi2, b1, ka);
    a2 = V::xor3(ahi0, a3, kb);
    b2 = V::xor3(bhi0, b3, kb);
    a1 = alo2;
    b1 = blo2;
    a3 = alo0;
    b3 = blo0;
  }
  V::store(x0, a0), V::store(x1, a1), V::store(x2, a2), V::store(x3, a3);
  V::store(x0 + L, b0), V::store(x1 + L, b1), V::store(x2 + L, b2), V::store(x3 + L, b3);
}

// Philox4x32-ROUNDS over N counters at once (structure of arrays so it vectorizes).
// Counter n is (g0 + n mod 2^32, (g0 + n) >> 32, key, tag); the Philox key is the 64-bit seed.
template <int N, int ROUNDS = PHILOX_ROUNDS>
static inline void philox_block(uint64_t seed, uint32_t key, uint32_t tag, uint64_t g0, uint32_t (&x0)[N],
                                uint32_t (&x1)[N], uint32_t (&x2)[N], uint32_t (&x3)[N]) {
  for (int n = 0; n < N; ++n) {
    uint64_t g = g0 + (uint64_t)n;
    x0[n] = (uint32_t)g;
    x1[n] = (uint32_t)(g >> 32);
    x2[n] = key;
    x3[n] = tag;
  }
  const PhiloxKeys<ROUNDS> k(seed);
  int n = 0;
#if defined(__AVX512F__)
  for (; n + 2 * Vec512::LANES <= N; n += 2 * Vec512::LANES)
    philox_lanes<Vec512, ROUNDS>(k, x0 + n, x1 + n, x2 + n, x3 + n);
#elif defined(__AVX2__)
  for (; n + 2 * Vec256::LANES <= N; n += 2 * Vec256::LANES)
    philox_lanes<Vec256, ROUNDS>(k, x0 + n, x1 + n, x2 + n, x3 + n);
#elif defined(__SSE2__)
  for (; n + 2 * Vec128::LANES <= N; n += 2 * Vec128::LANES)
    philox_lanes<Vec128, ROUNDS>(k, x0 + n, x1 + n, x2 + n, x3 + n);
#endif
  for (; n < N; ++n)
    for (int r = 0; r < ROUNDS; ++r) philox_round(x0[n], x1[n], x2[n], x3[n], k.a[r], k.b[r]);
}

// ln(u) for u = k * 2^-24, k in [1, 2^24]: exponent/mantissa split by bits, mantissa folded into
// [sqrt2/2, sqrt2), log1p by the odd atanh series in s = f / (2 + f).
static inline float spec_log(float u) {
  uint32_t b = bits_of(u);
  int32_t e = (int32_t)(b >> 23) - 127;
  float m = f32((b & 0x007FFFFFu) | 0x3F800000u);
  bool fold = m > f32(SQRT2);
  m = fold ? m * 0.5f : m;
  e = fold ? e + 1 : e;
  float f = m - 1.0f;
  float s = f / (2.0f + f);
  float z = s * s;
  float p = f32(LOG_C4);
  p = f32(LOG_C3) + z * p;
  p = f32(LOG_C2) + z * p;
  p = f32(LOG_C1) + z * p;
  float logm = (2.0f * s) + s * (z * p);
  float fe = (float)e;
  return fe * f32(LN2_HI) + (fe * f32(LN2_LO) + logm);
}

// Box-Muller on two words: radius from a (k in 1..2^24), angle from the 24-bit turn fraction of b,
// reduced to the nearest quadrant exactly in integers, then sin/cos polynomials on [-pi/4, pi/4).
static inline void spec_gaussian_pair(uint32_t a, uint32_t b, float &za, float &zb) {
  float u = (float)((a >> 8) + 1u) * f32(0x33800000u);  // * 2^-24, exact
  float r = __builtin_sqrtf(-2.0f * spec_log(u));
  uint32_t t = (b >> 8) + 0x200000u;
  uint32_t quadrant = (t >> 22) & 3u;
  float x = (float)((int32_t)(t & 0x3FFFFFu) - 0x200000) * f32(TURN_STEP);
  float z = x * x;
  float ps = f32(SIN_C4);
  ps = f32(SIN_C3) + z * ps;
  ps = f32(SIN_C2) + z * ps;
  ps = f32(SIN_C1) + z * ps;
  float sn = x + (x * z) * ps;
  float pc = f32(COS_C5);
  pc = f32(COS_C4) + z * pc;
  pc = f32(COS_C3) + z * pc;
  pc = f32(COS_C2) + z * pc;
  pc = f32(COS_C1) + z * pc;
  float cs = 1.0f + z * pc;
  // rotate (cos, sin) by quadrant * 90 degrees: exact sign flips and swaps
  float c = (quadrant & 1u) ? sn : cs;
  float s = (quadrant & 1u) ? cs : sn;
  c = (quadrant == 1u || quadrant == 2u) ? -c : c;
  s = (quadrant >= 2u) ? -s : s;
  za = r * c;
  zb = r * s;
}

static inline float spec_rademacher(uint32_t a) { return (a >> 31) ? -1.0f : 1.0f; }

// Spec v2 Gaussian of one word: v = (2m + 1) * 2^-25 in (0, 0.5) from 23 bits; |z| = the degree-5 polynomial
// of v's octave (zo_gaussian_table.h) in v's mantissa fraction f, by Horner; the sign from bit 31.
static inline float spec_gaussian_v2(uint32_t a) {
  const float v = (float)((((a >> 8) & 0x7FFFFFu) << 1) | 1u) * f32(0x33000000u);  // * 2^-25, exact
  const uint32_t b = bits_of(v);
  const uint32_t j = (b >> 23) - (uint32_t)GAUSSIAN_V2_BIAS;
  const float f = f32((b & 0x7FFFFFu) | 0x3F800000u) - 1.0f;  // exact
  float y = f32(GAUSSIAN_V2_COEFFS[GAUSSIAN_V2_DEGREE][j]);
  for (int k = GAUSSIAN_V2_DEGREE - 1; k >= 0; --k) y = y * f + f32(GAUSSIAN_V2_COEFFS[k][j]);
  return f32(bits_of(y) ^ (a & 0x80000000u));
}

// spec_gaussian_v2 over n words, in place (words in, float32 bits out). The 24 octaves' coefficients sit in
// registers and are picked per lane by permutes (AVX-512: one two-register permute per coefficient; AVX2:
// three one-register permutes and two blends); each lane does the same IEEE operations as the scalar
// function (every multiply and add rounded, never fused), so every path gives the same bits.
// GCC 12 reports the self-initialized undefined vectors inside its unmasked AVX-512 intrinsics as used
// uninitialized wherever they are inlined (see Vec512); the values are defined, so that warning is off here.
#if defined(__GNUC__) && !defined(__clang__)
#pragma GCC diagnostic push
#pragma GCC diagnostic ignored "-Wmaybe-uninitialized"
#endif
static inline void gaussian_v2_words(uint32_t *a, int n) {
  int i = 0;
  [[maybe_unused]] constexpr int D = GAUSSIAN_V2_DEGREE;
#if defined(__AVX512F__)
  __m512 lo[D + 1], hi[D + 1];
  for (int k = 0; k <= D; ++k) {
    lo[k] = _mm512_castsi512_ps(_mm512_load_si512(GAUSSIAN_V2_COEFFS[k]));
    hi[k] = _mm512_castsi512_ps(_mm512_load_si512(GAUSSIAN_V2_COEFFS[k] + 16));
  }
  for (; i + 16 <= n; i += 16) {
    const __m512i w = _mm512_loadu_si512(a + i);
    const __m512i k2 = _mm512_or_si512(_mm512_slli_epi32(_mm512_and_si512(_mm512_srli_epi32(w, 8),
                                                                           _mm512_set1_epi32(0x7FFFFF)), 1),
                                       _mm512_set1_epi32(1));
    const __m512i b = _mm512_castps_si512(_mm512_mul_ps(_mm512_cvtepi32_ps(k2), _mm512_set1_ps(f32(0x33000000u))));
    const __m512i j = _mm512_sub_epi32(_mm512_srli_epi32(b, 23), _mm512_set1_epi32(GAUSSIAN_V2_BIAS));
    const __m512 f = _mm512_sub_ps(
        _mm512_castsi512_ps(_mm512_or_si512(_mm512_and_si512(b, _mm512_set1_epi32(0x7FFFFF)),
                                            _mm512_set1_epi32(0x3F800000))), _mm512_set1_ps(1.0f));
    __m512 y = _mm512_permutex2var_ps(lo[D], j, hi[D]);
    for (int k = D - 1; k >= 0; --k) y = _mm512_add_ps(_mm512_mul_ps(y, f), _mm512_permutex2var_ps(lo[k], j, hi[k]));
    _mm512_storeu_si512(a + i, _mm512_xor_si512(_mm512_castps_si512(y),
                                                _mm512_and_si512(w, _mm512_set1_epi32((int)0x80000000u))));
  }
#elif defined(__AVX2__)
  for (; i + 8 <= n; i += 8) {
    const __m256i w = _mm256_loadu_si256(reinterpret_cast<const __m256i *>(a + i));
    const __m256i k2 = _mm256_or_si256(_mm256_slli_epi32(_mm256_and_si256(_mm256_srli_epi32(w, 8),
                                                                           _mm256_set1_epi32(0x7FFFFF)), 1),
                                       _mm256_set1_epi32(1));
    const __m256i b = _mm256_castps_si256(_mm256_mul_ps(_mm256_cvtepi32_ps(k2), _mm256_set1_ps(f32(0x33000000u))));
    const __m256i j = _mm256_sub_epi32(_mm256_srli_epi32(b, 23), _mm256_set1_epi32(GAUSSIAN_V2_BIAS));
    const __m256 f = _mm256_sub_ps(
        _mm256_castsi256_ps(_mm256_or_si256(_mm256_and_si256(b, _mm256_set1_epi32(0x7FFFFF)),
                                            _mm256_set1_epi32(0x3F800000))), _mm256_set1_ps(1.0f));
    // octaves 0-7, 8-15, 16-23: permute within each 8-float register, then blend by j >= 8 and j >= 16
    const __m256 ge8 = _mm256_castsi256_ps(_mm256_cmpgt_epi32(j, _mm256_set1_epi32(7)));
    const __m256 ge16 = _mm256_castsi256_ps(_mm256_cmpgt_epi32(j, _mm256_set1_epi32(15)));
    auto coeff = [&](int k) {
      const float *c = reinterpret_cast<const float *>(GAUSSIAN_V2_COEFFS[k]);
      const __m256 c0 = _mm256_permutevar8x32_ps(_mm256_load_ps(c), j);
      const __m256 c1 = _mm256_permutevar8x32_ps(_mm256_load_ps(c + 8), j);
      const __m256 c2 = _mm256_permutevar8x32_ps(_mm256_load_ps(c + 16), j);
      return _mm256_blendv_ps(_mm256_blendv_ps(c0, c1, ge8), c2, ge16);
    };
    __m256 y = coeff(D);
    for (int k = D - 1; k >= 0; --k) y = _mm256_add_ps(_mm256_mul_ps(y, f), coeff(k));
    _mm256_storeu_si256(reinterpret_cast<__m256i *>(a + i),
                        _mm256_xor_si256(_mm256_castps_si256(y),
                                         _mm256_and_si256(w, _mm256_set1_epi32((int)0x80000000u))));
  }
#endif
  for (; i < n; ++i) a[i] = bits_of(spec_gaussian_v2(a[i]));
}
#if defined(__GNUC__) && !defined(__clang__)
#pragma GCC diagnostic pop
#endif

// Symmetric odd multiples of 2^-24 in (-1, 1), scaled to unit variance.
static inline float spec_uniform(uint32_t a) {
  float v = (float)((int32_t)((a >> 8) << 1) + 1 - 0x1000000) * f32(0x33800000u);
  return v * f32(SQRT3);
}

// ---- conversions between float32 and the 16-bit parameter formats (round to nearest even) ----

static inline float bf16_to_f32(uint16_t h) { return f32((uint32_t)h << 16); }

static inline uint16_t f32_to_bf16(float f) {
  uint32_t b = bits_of(f);
  uint32_t rne = (b + 0x7FFFu + ((b >> 16) & 1u)) >> 16;
  uint32_t nan = (b >> 16) | 0x40u;  // keep sign and payload top, force quiet
  return (uint16_t)(((b & 0x7FFFFFFFu) > 0x7F800000u) ? nan : rne);
}

static inline float f16_to_f32(uint16_t h) {
  uint32_t sign = (uint32_t)(h & 0x8000u) << 16, em = h & 0x7FFFu, e = em >> 10;
  uint32_t normal = (em << 13) + (112u << 23);
  uint32_t special = (em << 13) | 0x7F800000u;             // inf and NaN
  uint32_t sub = bits_of((float)em * f32(0x33800000u));  // subnormal: m * 2^-24, exact
  uint32_t is_sub = 0u - (uint32_t)(e == 0), is_special = 0u - (uint32_t)(e == 31);
  uint32_t mag = (sub & is_sub) | (special & is_special) | (normal & ~(is_sub | is_special));
  return f32(sign | mag);
}

// Branch-free so the tile loops vectorize. Subnormal halves round on the 2^-24 grid with the
// float trick (q + 2^23) - 2^23, which is round-to-nearest-even for 0 <= q < 2^22.
static inline uint16_t f32_to_f16(float f) {
  uint32_t b = bits_of(f);
  uint32_t sign = (b >> 16) & 0x8000u, a = b & 0x7FFFFFFFu;
  uint32_t nan = 0x7E00u | ((a >> 13) & 0x3FFu);
  uint32_t normal = ((a + 0xFFFu + ((a >> 13) & 1u)) >> 13) - (112u << 10);
  float q = f32(a < 0x38800000u ? a : 0u) * f32(0x4B800000u);  // |f| * 2^24, exact
  uint32_t sub = (uint32_t)((q + 8388608.0f) - 8388608.0f);
  uint32_t mag = a > 0x7F800000u ? nan : (a >= 0x477FF000u ? 0x7C00u : (a >= 0x38800000u ? normal : sub));
  return (uint16_t)(sign | mag);
}

// Stochastic rounding of s to bf16 with random word r: add r's top 16 bits to the 16 bits that
// bf16 drops, then truncate. Unbiased: rounds away from zero with probability = dropped fraction.
static inline uint16_t f32_to_bf16_sr(float s, uint32_t r) {
  uint32_t b = bits_of(s);
  uint16_t sr = (uint16_t)((b + (r >> 16)) >> 16);
  return ((b & 0x7FFFFFFFu) > 0x7F800000u) ? f32_to_bf16(s) : sr;
}

// Stochastic rounding to fp16. Normal range: the same trick on the 13 dropped bits. Subnormal
// range (|s| < 2^-14, grid step 2^-24): floor on the grid, then up if a 24-bit uniform < fraction.
// NaN rounds to nearest. Every candidate below is exactly representable, so the final conversion
// does no rounding of its own.
static inline uint16_t f32_to_f16_sr(float s, uint32_t r) {
  uint32_t b = bits_of(s);
  uint32_t a = b & 0x7FFFFFFFu;
  float normal = f32((b + (r >> 19)) & ~0x1FFFu);
  float q = f32(a < 0x38800000u ? a : 0u) * f32(0x4B800000u);  // |s| * 2^24, exact
  float fl = __builtin_floorf(q);
  float up = ((float)(r >> 8) * f32(0x33800000u) < q - fl) ? 1.0f : 0.0f;
  float sub = f32(bits_of((fl + up) * f32(0x33800000u)) | (b & 0x80000000u));
  return f32_to_f16(a > 0x7F800000u ? s : (a >= 0x38800000u ? normal : sub));
}

}  // namespace zo
