// What the bindings (zo_kernels.cpp) and the tile loops (zo_tiles.cpp) share.
//
// zo_tiles.cpp is compiled once per instruction set (setup.py: baseline, and on x86-64 also AVX2, AVX-512 and
// AVX-512 with BF16), each copy defining one TileKernels table; the bindings pick a table at import by what the
// CPU supports. Only plain data and these tables cross between the copies: an inline function with
// external linkage (a std:: template, a member function) instantiated in the AVX-512 copy could be
// the one the linker keeps for every caller, and the baseline path would then die on an older CPU.
#pragma once
#include <cstdint>

namespace zo {

// Work is cut into tiles of TILE_GROUPS Philox groups aligned to the global element index (a whole number of
// spec v2 Rademacher counters, 128 elements each).
constexpr int TILE_GROUPS = 128;
constexpr int TILE = 4 * TILE_GROUPS;

struct TensorArg {
  uintptr_t ptr;  // destination
  uintptr_t src;  // where w is read from: ptr itself (in place) or another tensor of the same shape
  int64_t numel;
  uint64_t offset;  // global index of element 0 within the logical tensor
  uint32_t key;
  int dtype;
};

// A seed that comes back later in one update's list (in-place ZO-SGD restores and updates along one z, and
// fuse_steps puts the next step's seed between the two) has its noise computed once per tile and kept in
// one of NOISE_SLOTS tile buffers until its last use; the plan is made once per call (plan_seeds in
// zo_kernels.cpp). A seed that finds no free slot is computed again: the same bits either way.
constexpr int NOISE_SLOTS = 2;
struct SeedUse {
  int8_t slot;  // the buffer holding this seed's z, or -1 when it is not kept
  bool cached;  // z is already in slot (an earlier k computed it)
};

struct TileKernels {
  const char *isa;
  // w = round(w + coeffs[k] * z(seeds[k])) for k in order over one tile of t; returns nonzero when the
  // tile's elements hold an inf or NaN afterwards.
  // `version` is the noise spec version (1 or 2).
  uint32_t (*update_tile)(const TensorArg &t, int64_t tile, const uint64_t *seeds, const SeedUse *uses,
                          const float *coeffs, int K, int dist, int rounding, int version);
  // float32 z of one tile of t (t.dtype is F32).
  void (*noise_tile)(const TensorArg &t, int64_t tile, uint64_t seed, int dist, int version);
};

extern const TileKernels tiles_baseline;
#if defined(ZO_X86_VARIANTS)
extern const TileKernels tiles_avx2, tiles_avx512;
#endif
#if defined(ZO_AVX512BF16)
extern const TileKernels tiles_avx512bf16;  // built where the compiler knows -mavx512bf16 (setup.py)
#endif

}  // namespace zo
