// Compiled and run by tests/test_rounding_edges.py: the vector conversions of zo_tiles.cpp (narrow_step,
// widen_step of the -DZO_ISA variant) against the scalar contract of zo_noise.h over every float32 and every
// 16-bit pattern. Prints one line of counts; every count is a mismatch.
#include "zo_tiles.cpp"

#include <cstdio>

using namespace zo;
constexpr int N = 2 * Step::LANES;  // elements per step

// One step of 16-bit patterns to float32 bits, and float32 bits to 16-bit patterns, through Format's vectors.
template <typename Format>
void widen(const uint16_t *h, uint32_t *out) {
  typename Step::F lo, hi;
  Format::widen_step(Step::load_h(h), lo, hi);
  Step::store(reinterpret_cast<float *>(out), lo), Step::store(reinterpret_cast<float *>(out) + Step::LANES, hi);
}
template <typename Format>
void narrow(const uint32_t *in, uint16_t *out) {
  const float *f = reinterpret_cast<const float *>(in);
  Step::store_h(out, Format::narrow_step(Step::load(f), Step::load(f + Step::LANES)));
}

int main() {
  unsigned long long narrow_bf16 = 0, narrow_f16 = 0, widen_bf16 = 0, widen_f16 = 0;
#pragma omp parallel for reduction(+ : narrow_bf16, narrow_f16) schedule(static)
  for (int64_t chunk = 0; chunk < (1ll << 32) / N; ++chunk) {
    uint32_t in[N];
    uint16_t bf[N], hf[N];
    for (int i = 0; i < N; ++i) in[i] = (uint32_t)(chunk * N + i);
    narrow<BF16Format>(in, bf);
    narrow<F16Format>(in, hf);
    for (int i = 0; i < N; ++i) {
      narrow_bf16 += bf[i] != f32_to_bf16(f32(in[i]));
      narrow_f16 += hf[i] != f32_to_f16(f32(in[i]));
    }
  }
  for (uint32_t base = 0; base < 65536; base += N) {
    uint16_t h[N];
    uint32_t bf[N], hf[N];
    for (int i = 0; i < N; ++i) h[i] = (uint16_t)(base + i);
    widen<BF16Format>(h, bf);
    widen<F16Format>(h, hf);
    for (int i = 0; i < N; ++i) {
      widen_bf16 += bf[i] != bits_of(bf16_to_f32(h[i]));
      // VCVTPH2PS quiets a signaling NaN (zo_tiles.cpp, F16Format says why that changes no result)
      const uint32_t e = bits_of(f16_to_f32(h[i]));
      const bool signaling = (e & 0x7FFFFFFFu) > 0x7F800000u && !(e & 0x400000u);
      widen_f16 += hf[i] != (signaling ? e | 0x400000u : e);
    }
  }
  std::printf("narrow_bf16 %llu narrow_f16 %llu widen_bf16 %llu widen_f16 %llu\n", narrow_bf16, narrow_f16,
              widen_bf16, widen_f16);
}
