"""The noise contract as constants. docs/noise.md is the prose; this file is the single source.

Every backend (C++ in csrc/, Triton in zokernels/triton/, torch in zokernels/reference.py) imports or
mirrors these numbers; tests/test_golden.py pins the stream they produce, so a change to any of them
must bump SPEC_VERSION and regenerate the golden vectors.
"""

SPEC_VERSION = 1

# Philox4x32-10 (Random123; the constants triton.language.random uses).
PHILOX_ROUNDS = 10
PHILOX_KEY_A = 0x9E3779B9
PHILOX_KEY_B = 0xBB67AE85
PHILOX_ROUND_A = 0xD2511F53
PHILOX_ROUND_B = 0xCD9E8D57

# Counter layout: element i of tensor `key` lives in group g = i // 4, lane i % 4, and
#   counter = (g mod 2**32, g // 2**32, key, tag),  Philox key = (seed mod 2**32, seed // 2**32).
GROUP = 4
TAG_NOISE = 0  # the perturbation z
TAG_ROUNDING = 1  # random bits for stochastic rounding

SEED_MAX = 2**64 - 1
KEY_MAX = 2**32 - 1
INDEX_LIMIT = 2**62  # offset + numel may not exceed this: group indices stay below 2**60, int64-safe everywhere

DISTS = ("gaussian", "rademacher", "uniform", "gaussian-fast")
PORTABLE_DISTS = ("gaussian", "rademacher", "uniform")
ROUNDINGS = ("nearest", "stochastic")

# Float32 constants of the spec Gaussian (Box-Muller with fixed polynomials); see docs/noise.md.
# Each is written as the exact float32 bit pattern so no parser's rounding is involved.
F32_BITS = {
    "SQRT2": 0x3FB504F3,  # 1.41421354: log's mantissa is folded into [sqrt2/2, sqrt2)
    "LN2_HI": 0x3F317180,  # 0.693138123 (7 trailing zero bits: e * LN2_HI is exact)
    "LN2_LO": 0x3717F7D2,  # 9.05800061e-06
    "LOG_C1": 0x3F2AAAAB,  # 2/3   log1p(f) = 2s + s*z*(C1 + z*(C2 + z*(C3 + z*C4))), s = f/(2+f), z = s*s
    "LOG_C2": 0x3ECCCCCD,  # 2/5
    "LOG_C3": 0x3E924925,  # 2/7
    "LOG_C4": 0x3E638E39,  # 2/9
    "TURN_STEP": 0x34C90FDB,  # float32(pi) * 2**-23: one step of the 24-bit angle grid, in radians
    "SIN_C1": 0xBE2AAAAB,  # -1/3!   sin(x) = x + (x*z)*(S1 + z*(S2 + z*(S3 + z*S4)))
    "SIN_C2": 0x3C088889,  # 1/5!
    "SIN_C3": 0xB9500D01,  # -1/7!
    "SIN_C4": 0x3638EF1D,  # 1/9!
    "COS_C1": 0xBF000000,  # -1/2!   cos(x) = 1 + z*(C1 + z*(C2 + z*(C3 + z*(C4 + z*C5))))
    "COS_C2": 0x3D2AAAAB,  # 1/4!
    "COS_C3": 0xBAB60B61,  # -1/6!
    "COS_C4": 0x37D00D01,  # 1/8!
    "COS_C5": 0xB493F27E,  # -1/10!
    "SQRT3": 0x3FDDB3D7,  # 1.73205078: uniform is scaled to unit variance
}
