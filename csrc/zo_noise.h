// The noise contract in C++ (header-only, no torch). docs/noise.md is the prose, zokernels/spec.py
// the constants (tests compare them to spec_constants() exported by the extension).
//
// Everything here is integer arithmetic or single IEEE float32 operations (+ - * / sqrt), compiled
// with -ffp-contract=off and without -ffast-math, so every compiler and vector width gives the
// same bits as the torch reference and the Triton kernels.
#pragma once
#include <cstdint>
#include <cstring>
#include <type_traits>

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

// Vector Philox. A vector of counters runs as two chains, the counters in its even dword lanes and those in
// its odd lanes, each held in the low dword of every 64-bit lane: _mul_epu32 multiplies exactly those low
// dwords into full 64-bit products, whose low half is then already where the next round reads it and whose
// high half one dword swap brings there. What the high dwords carry in between is never read. So a round is
// 4 multiplies, 4 swaps and 4 three-way xors per vector, with no repacking until the last round (merge);
// compilers otherwise widen to 64-bit lanes (vpmullq on AVX-512, a scalar-speed sequence on AVX2). Dword swaps
// (vpshufd) rather than 32-bit shifts: shifts and multiplies share one port on AVX-512, shuffles use another.
#if defined(__AVX512F__)
struct Vec512 {
  using T = __m512i;
  static constexpr int LANES = 16;
  static constexpr int INTERLEAVED = 2;  // vectors per Philox call (philox_vec): 32 registers hold two
  static T load(const uint32_t *p) { return _mm512_loadu_si512(p); }
  static void store(uint32_t *p, T v) { _mm512_storeu_si512(p, v); }
  static T set1(uint32_t v) { return _mm512_set1_epi32((int)v); }
  static T xor3(T a, T b, T c) { return _mm512_ternarylogic_epi32(a, b, c, 0x96); }
  // The zero-masking forms with an all-ones mask compile to the plain instructions. The unmasked
  // intrinsics start from _mm512_undefined_epi32(), a self-initialized variable that GCC 12 reports
  // as used uninitialized wherever they are inlined.
  static T mul_even(T a, T m) { return _mm512_maskz_mul_epu32((__mmask8)0xFF, a, m); }
  static T swap(T a) { return _mm512_maskz_shuffle_epi32((__mmask16)0xFFFF, a, _MM_PERM_CDAB); }
  static T merge(T even, T odd) { return _mm512_mask_blend_epi32(0xAAAA, even, swap(odd)); }
  static T add(T a, T b) { return _mm512_add_epi32(a, b); }
  static void transpose4(T &a, T &b, T &c, T &d) {
    const __mmask16 all = 0xFFFF;
    const T t0 = _mm512_maskz_unpacklo_epi32(all, a, b), t1 = _mm512_maskz_unpacklo_epi32(all, c, d);
    const T t2 = _mm512_maskz_unpackhi_epi32(all, a, b), t3 = _mm512_maskz_unpackhi_epi32(all, c, d);
    const __mmask8 all8 = 0xFF;
    a = _mm512_maskz_unpacklo_epi64(all8, t0, t1), b = _mm512_maskz_unpackhi_epi64(all8, t0, t1);
    c = _mm512_maskz_unpacklo_epi64(all8, t2, t3), d = _mm512_maskz_unpackhi_epi64(all8, t2, t3);
  }
};
#endif
#if defined(__AVX2__)
struct Vec256 {
  using T = __m256i;
  static constexpr int LANES = 8;
  static constexpr int INTERLEAVED = 1;  // two would spill 16 registers (measured slower)
  static T load(const uint32_t *p) { return _mm256_loadu_si256(reinterpret_cast<const __m256i *>(p)); }
  static void store(uint32_t *p, T v) { _mm256_storeu_si256(reinterpret_cast<__m256i *>(p), v); }
  static T set1(uint32_t v) { return _mm256_set1_epi32((int)v); }
  static T xor3(T a, T b, T c) { return _mm256_xor_si256(_mm256_xor_si256(a, b), c); }
  static T mul_even(T a, T m) { return _mm256_mul_epu32(a, m); }
  static T swap(T a) { return _mm256_shuffle_epi32(a, _MM_SHUFFLE(2, 3, 0, 1)); }
  static T merge(T even, T odd) { return _mm256_blend_epi32(even, swap(odd), 0xAA); }
  static T add(T a, T b) { return _mm256_add_epi32(a, b); }
  static void transpose4(T &a, T &b, T &c, T &d) {
    const T t0 = _mm256_unpacklo_epi32(a, b), t1 = _mm256_unpacklo_epi32(c, d);
    const T t2 = _mm256_unpackhi_epi32(a, b), t3 = _mm256_unpackhi_epi32(c, d);
    a = _mm256_unpacklo_epi64(t0, t1), b = _mm256_unpackhi_epi64(t0, t1);
    c = _mm256_unpacklo_epi64(t2, t3), d = _mm256_unpackhi_epi64(t2, t3);
  }
};
#endif
#if defined(__SSE2__)
// x86-64's baseline. SSE2 has no dword blend: merge picks the low dwords by a float shuffle, then reorders.
struct Vec128 {
  using T = __m128i;
  static constexpr int LANES = 4;
  static constexpr int INTERLEAVED = 1;
  static T load(const uint32_t *p) { return _mm_loadu_si128(reinterpret_cast<const __m128i *>(p)); }
  static void store(uint32_t *p, T v) { _mm_storeu_si128(reinterpret_cast<__m128i *>(p), v); }
  static T set1(uint32_t v) { return _mm_set1_epi32((int)v); }
  static T xor3(T a, T b, T c) { return _mm_xor_si128(_mm_xor_si128(a, b), c); }
  static T mul_even(T a, T m) { return _mm_mul_epu32(a, m); }
  static T swap(T a) { return _mm_shuffle_epi32(a, _MM_SHUFFLE(2, 3, 0, 1)); }
  static T merge(T even, T odd) {
    // (e0, e2, o0, o2) -> (e0, o0, e2, o2)
    const __m128 lows = _mm_shuffle_ps(_mm_castsi128_ps(even), _mm_castsi128_ps(odd), _MM_SHUFFLE(2, 0, 2, 0));
    return _mm_shuffle_epi32(_mm_castps_si128(lows), _MM_SHUFFLE(3, 1, 2, 0));
  }
  static T add(T a, T b) { return _mm_add_epi32(a, b); }
  static void transpose4(T &a, T &b, T &c, T &d) {
    const T t0 = _mm_unpacklo_epi32(a, b), t1 = _mm_unpacklo_epi32(c, d);
    const T t2 = _mm_unpackhi_epi32(a, b), t3 = _mm_unpackhi_epi32(c, d);
    a = _mm_unpacklo_epi64(t0, t1), b = _mm_unpackhi_epi64(t0, t1);
    c = _mm_unpacklo_epi64(t2, t3), d = _mm_unpackhi_epi64(t2, t3);
  }
};
#endif

// The widest vector of this build (zo_tiles.cpp is compiled once per instruction set).
#if defined(__AVX512F__)
using NativeVec = Vec512;
#elif defined(__AVX2__)
using NativeVec = Vec256;
#elif defined(__SSE2__)
using NativeVec = Vec128;
#endif

// Philox4x32-ROUNDS on M vectors of V::LANES counters, x[m] = (word 0, 1, 2, 3), in registers, in place: each
// vector runs as two chains, even and odd lanes (above), and the M vectors interleave, because a round is a
// chain of dependent instructions and too few chains leave the multiplier idle.
template <typename V, int ROUNDS, int M>
static inline void philox_vec(const PhiloxKeys<ROUNDS> &k, typename V::T (&x)[M][4]) {
  using T = typename V::T;
  const T ma = V::set1(PHILOX_ROUND_A), mb = V::set1(PHILOX_ROUND_B);
  T e[M][4], o[M][4];
  for (int m = 0; m < M; ++m)
    for (int w = 0; w < 4; ++w) e[m][w] = x[m][w], o[m][w] = V::swap(x[m][w]);
  for (int r = 0; r < ROUNDS; ++r) {
    const T ka = V::set1(k.a[r]), kb = V::set1(k.b[r]);
    for (int m = 0; m < M; ++m) {
      const T ea = V::mul_even(e[m][0], ma), oa = V::mul_even(o[m][0], ma);
      const T eb = V::mul_even(e[m][2], mb), ob = V::mul_even(o[m][2], mb);
      e[m][0] = V::xor3(V::swap(eb), e[m][1], ka);
      o[m][0] = V::xor3(V::swap(ob), o[m][1], ka);
      e[m][2] = V::xor3(V::swap(ea), e[m][3], kb);
      o[m][2] = V::xor3(V::swap(oa), o[m][3], kb);
      e[m][1] = eb, o[m][1] = ob, e[m][3] = ea, o[m][3] = oa;
    }
  }
  for (int m = 0; m < M; ++m)
    for (int w = 0; w < 4; ++w) x[m][w] = V::merge(e[m][w], o[m][w]);
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
#if defined(__SSE2__)
  using V = NativeVec;
  auto run = [&](auto vectors) {  // philox_vec on `vectors` vectors of counters from n on
    constexpr int M = decltype(vectors)::value;
    typename V::T x[M][4];
    for (int m = 0; m < M; ++m)
      x[m][0] = V::load(x0 + n + m * V::LANES), x[m][1] = V::load(x1 + n + m * V::LANES),
      x[m][2] = V::load(x2 + n + m * V::LANES), x[m][3] = V::load(x3 + n + m * V::LANES);
    philox_vec<V, ROUNDS, M>(k, x);
    for (int m = 0; m < M; ++m)
      V::store(x0 + n + m * V::LANES, x[m][0]), V::store(x1 + n + m * V::LANES, x[m][1]),
      V::store(x2 + n + m * V::LANES, x[m][2]), V::store(x3 + n + m * V::LANES, x[m][3]);
    n += M * V::LANES;
  };
  while (n + V::INTERLEAVED * V::LANES <= N) run(std::integral_constant<int, V::INTERLEAVED>());
  while (n + V::LANES <= N) run(std::integral_constant<int, 1>());
#endif
  for (; n < N; ++n)
    for (int r = 0; r < ROUNDS; ++r) philox_round(x0[n], x1[n], x2[n], x3[n], k.a[r], k.b[r]);
}

// The words of counters g0 .. g0 + N - 1 in element order: u[4n + l] is word l of counter g0 + n, the word
// of element 4(g0 + n) + l (what every per-word distribution reads). The vector path gives each lane the
// counter that an in-lane 4x4 transpose (unpacks) then puts in element order: lane 4q + p of a vector of
// Q = LANES / 4 128-bit lanes holds counter Q p + q, so after the transpose vector p holds counters
// Q p .. Q p + Q - 1, whole, in order. No word is stored and reloaded to interleave them.
template <int N, int ROUNDS>
static inline void philox_elements(uint64_t seed, uint32_t key, uint32_t tag, uint64_t g0, uint32_t (&u)[4 * N]) {
#if defined(__SSE2__)
  using V = NativeVec;
  using T = typename V::T;
  constexpr int L = V::LANES, Q = L / 4;
  static_assert(N % L == 0, "whole vectors of counters");
  alignas(64) uint32_t lane_counter[L];
  for (int j = 0; j < L; ++j) lane_counter[j] = (uint32_t)(Q * (j % 4) + j / 4);
  const T offsets = V::load(lane_counter), keys = V::set1(key), tags = V::set1(tag);
  const PhiloxKeys<ROUNDS> k(seed);
  constexpr int M = V::INTERLEAVED;
  static_assert(N % (M * L) == 0, "whole groups of vectors");
  for (int n = 0; n < N; n += M * L) {
    T x[M][4];
    for (int m = 0; m < M; ++m) {
      const uint64_t g = g0 + (uint64_t)(n + m * L);
      if ((uint32_t)g <= 0xFFFFFFFFu - (uint32_t)(L - 1)) {  // the low words do not wrap within the vector
        x[m][0] = V::add(V::set1((uint32_t)g), offsets), x[m][1] = V::set1((uint32_t)(g >> 32));
      } else {
        alignas(64) uint32_t lo[L], hi[L];
        for (int j = 0; j < L; ++j)
          lo[j] = (uint32_t)(g + lane_counter[j]), hi[j] = (uint32_t)((g + lane_counter[j]) >> 32);
        x[m][0] = V::load(lo), x[m][1] = V::load(hi);
      }
      x[m][2] = keys, x[m][3] = tags;
    }
    philox_vec<V, ROUNDS, M>(k, x);
    for (int m = 0; m < M; ++m) {
      V::transpose4(x[m][0], x[m][1], x[m][2], x[m][3]);
      for (int w = 0; w < 4; ++w) V::store(u + 4 * (n + m * L) + w * L, x[m][w]);
    }
  }
#else
  uint32_t x0[N], x1[N], x2[N], x3[N];
  philox_block<N, ROUNDS>(seed, key, tag, g0, x0, x1, x2, x3);
  for (int n = 0; n < N; ++n) u[4 * n] = x0[n], u[4 * n + 1] = x1[n], u[4 * n + 2] = x2[n], u[4 * n + 3] = x3[n];
#endif
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

// spec_gaussian_v2 of n words into z. The 24 octaves' coefficients sit in
// registers and are picked per lane by permutes (AVX-512: one two-register permute per coefficient; AVX2:
// three one-register permutes and two blends); each lane does the same IEEE operations as the scalar
// function (every multiply and add rounded, never fused), so every path gives the same bits.
// GCC 12 reports the self-initialized undefined vectors inside its unmasked AVX-512 intrinsics as used
// uninitialized wherever they are inlined (see Vec512); the values are defined, so that warning is off here.
#if defined(__GNUC__) && !defined(__clang__)
#pragma GCC diagnostic push
#pragma GCC diagnostic ignored "-Wmaybe-uninitialized"
#endif
static inline void gaussian_v2_words(const uint32_t *a, float *z, int n) {
  int i = 0;
  [[maybe_unused]] constexpr int D = GAUSSIAN_V2_DEGREE;
  // The vector paths convert twice_k = 4m + 2 instead of k = 2m + 1 and never scale by 2^-25: the mantissa, and so
  // f, is the same, and the exponent field of float(2k) is 128 + j, whose low bits are the permutes' index j
  // (they read only those bits). That saves the multiply and the bias subtraction of the scalar definition.
#if defined(__AVX512F__)
  __m512 lo[D + 1], hi[D + 1];
  for (int k = 0; k <= D; ++k) {
    lo[k] = _mm512_castsi512_ps(_mm512_load_si512(GAUSSIAN_V2_COEFFS[k]));
    hi[k] = _mm512_castsi512_ps(_mm512_load_si512(GAUSSIAN_V2_COEFFS[k] + 16));
  }
  constexpr int A_AND_B_OR_C = 0xEA, A_XOR_B_AND_C = 0x78;  // vpternlogd truth tables
  for (; i + 16 <= n; i += 16) {
    const __m512i w = _mm512_loadu_si512(a + i);
    const __m512i twice_k = _mm512_ternarylogic_epi32(_mm512_srli_epi32(w, 6), _mm512_set1_epi32(0x1FFFFFC),
                                                 _mm512_set1_epi32(2), A_AND_B_OR_C);
    const __m512i b = _mm512_castps_si512(_mm512_cvtepi32_ps(twice_k));
    const __m512i j = _mm512_srli_epi32(b, 23);
    const __m512 f = _mm512_sub_ps(_mm512_castsi512_ps(_mm512_ternarylogic_epi32(
                                       b, _mm512_set1_epi32(0x7FFFFF), _mm512_set1_epi32(0x3F800000), A_AND_B_OR_C)),
                                   _mm512_set1_ps(1.0f));
    __m512 y = _mm512_permutex2var_ps(lo[D], j, hi[D]);
    for (int k = D - 1; k >= 0; --k) y = _mm512_add_ps(_mm512_mul_ps(y, f), _mm512_permutex2var_ps(lo[k], j, hi[k]));
    _mm512_storeu_si512(z + i, _mm512_ternarylogic_epi32(_mm512_castps_si512(y), w,
                                                         _mm512_set1_epi32((int)0x80000000u), A_XOR_B_AND_C));
  }
#elif defined(__AVX2__)
  for (; i + 8 <= n; i += 8) {
    const __m256i w = _mm256_loadu_si256(reinterpret_cast<const __m256i *>(a + i));
    const __m256i twice_k = _mm256_or_si256(_mm256_and_si256(_mm256_srli_epi32(w, 6), _mm256_set1_epi32(0x1FFFFFC)),
                                       _mm256_set1_epi32(2));
    const __m256i b = _mm256_castps_si256(_mm256_cvtepi32_ps(twice_k));
    const __m256i j = _mm256_srli_epi32(b, 23);  // 128 + the octave
    const __m256 f = _mm256_sub_ps(
        _mm256_castsi256_ps(_mm256_or_si256(_mm256_and_si256(b, _mm256_set1_epi32(0x7FFFFF)),
                                            _mm256_set1_epi32(0x3F800000))), _mm256_set1_ps(1.0f));
    // octaves 0-7, 8-15, 16-23: permute within each 8-float register, then blend by octave >= 8 and >= 16
    const __m256 ge8 = _mm256_castsi256_ps(_mm256_cmpgt_epi32(j, _mm256_set1_epi32(128 + 7)));
    const __m256 ge16 = _mm256_castsi256_ps(_mm256_cmpgt_epi32(j, _mm256_set1_epi32(128 + 15)));
    auto coeff = [&](int k) {
      const float *c = reinterpret_cast<const float *>(GAUSSIAN_V2_COEFFS[k]);
      const __m256 c0 = _mm256_permutevar8x32_ps(_mm256_load_ps(c), j);
      const __m256 c1 = _mm256_permutevar8x32_ps(_mm256_load_ps(c + 8), j);
      const __m256 c2 = _mm256_permutevar8x32_ps(_mm256_load_ps(c + 16), j);
      return _mm256_blendv_ps(_mm256_blendv_ps(c0, c1, ge8), c2, ge16);
    };
    __m256 y = coeff(D);
    for (int k = D - 1; k >= 0; --k) y = _mm256_add_ps(_mm256_mul_ps(y, f), coeff(k));
    _mm256_storeu_si256(reinterpret_cast<__m256i *>(z + i),
                        _mm256_xor_si256(_mm256_castps_si256(y),
                                         _mm256_and_si256(w, _mm256_set1_epi32((int)0x80000000u))));
  }
#endif
  for (; i < n; ++i) z[i] = spec_gaussian_v2(a[i]);
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
