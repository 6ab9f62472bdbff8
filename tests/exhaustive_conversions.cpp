// Compiled and run by tests/test_rounding_edges.py: the AVX-512 conversions of zo_tiles.cpp (narrow32,
// widen32, per -DZO_ISA variant) against the scalar contract of zo_noise.h over every float32 and every 16-bit
// pattern. Prints one line of counts; every count is a mismatch.
#include "zo_tiles.cpp"

#include <cstdio>

using namespace zo;

int main() {
  unsigned long long narrow_bf16 = 0, narrow_f16 = 0, widen_bf16 = 0, widen_f16 = 0;
#pragma omp parallel for reduction(+ : narrow_bf16, narrow_f16) schedule(static)
  for (int64_t chunk = 0; chunk < (1ll << 27); ++chunk) {  // 32 float32 patterns each
    alignas(64) uint32_t in[32];
    alignas(64) uint16_t bf[32], hf[32];
    for (int i = 0; i < 32; ++i) in[i] = (uint32_t)(chunk * 32 + i);
    const __m512 lo = _mm512_castsi512_ps(_mm512_load_si512(in)), hi = _mm512_castsi512_ps(_mm512_load_si512(in + 16));
    _mm512_store_si512(bf, BF16Format::narrow32(lo, hi));
    _mm512_store_si512(hf, F16Format::narrow32(lo, hi));
    for (int i = 0; i < 32; ++i) {
      narrow_bf16 += bf[i] != f32_to_bf16(f32(in[i]));
      narrow_f16 += hf[i] != f32_to_f16(f32(in[i]));
    }
  }
  for (uint32_t base = 0; base < 65536; base += 32) {
    alignas(64) uint16_t h[32];
    alignas(64) float bf[32], hf[32];
    for (int i = 0; i < 32; ++i) h[i] = (uint16_t)(base + i);
    __m512 lo, hi;
    BF16Format::widen32(_mm512_load_si512(h), lo, hi);
    _mm512_store_ps(bf, lo), _mm512_store_ps(bf + 16, hi);
    F16Format::widen32(_mm512_load_si512(h), lo, hi);
    _mm512_store_ps(hf, lo), _mm512_store_ps(hf + 16, hi);
    for (int i = 0; i < 32; ++i) {
      widen_bf16 += bits_of(bf[i]) != bits_of(bf16_to_f32(h[i]));
      // VCVTPH2PS quiets a signaling NaN (zo_tiles.cpp, F16Format::widen32 says why that changes no result)
      const uint32_t e = bits_of(f16_to_f32(h[i]));
      const bool signaling = (e & 0x7FFFFFFFu) > 0x7F800000u && !(e & 0x400000u);
      widen_f16 += bits_of(hf[i]) != (signaling ? e | 0x400000u : e);
    }
  }
  std::printf("narrow_bf16 %llu narrow_f16 %llu widen_bf16 %llu widen_f16 %llu\n", narrow_bf16, narrow_f16,
              widen_bf16, widen_f16);
}
