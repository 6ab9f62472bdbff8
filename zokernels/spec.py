"""The noise contract as constants. docs/noise.md is the prose; this file is the single source.

Every backend (C++ in csrc/, Triton in zokernels/triton/, torch in zokernels/reference.py) imports or
mirrors these numbers; tests/test_golden.py pins the streams they produce (one golden file per version in
SPEC_VERSIONS), so no stream ever changes: a different one is a new spec version.
"""

SPEC_VERSION = 1  # the default stream; version 2 is opt-in (spec_version=2) and both stay replayable forever
SPEC_VERSIONS = (1, 2)

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

# ---- spec version 2 (docs/noise.md, "Spec version 2"): the same counter layout, tags and update
# arithmetic, with these differences.
PHILOX_ROUNDS_V2 = 7  # Random123: Philox4x32-7 passes BigCrush; 10 is its safety margin

# Rademacher v2 takes 32 signs from each Philox word: element i uses counter index c = i // 128 (in the
# counter words where v1 has the group index), word i % 4 and bit (i // 4) % 32; z = -1 where that bit is
# set. A group of 4 elements still reads words 0..3, as in v1; 32 consecutive groups share one counter.
RADEMACHER_V2_ELEMENTS = 128  # elements per Philox counter

# Gaussian v2: one word per element (lane l of the element's group, as v1's uniform). Sign from bit 31;
# v = (2m + 1) * 2**-25 with m = (word >> 8) & 0x7FFFFF, an odd multiple of 2**-25 in (0, 0.5), exact;
# octave j = (bits(v) >> 23) - GAUSSIAN_V2_BIAS (v's exponent, 0 .. 23), f = float(bits(v)'s mantissa | 1.0) - 1
# in [0, 1) (exact); |z| = c_0 + f*(c_1 + f*(c_2 + f*(c_3 + f*(c_4 + f*c_5)))) with octave j's coefficients,
# every product and sum rounded to float32 (Horner, innermost first, no fma).
GAUSSIAN_V2_BIAS = 127 - 25  # octave 0 is [2**-25, 2**-24)
GAUSSIAN_V2_COEFFS = (  # per octave, float32 bits of c_0..c_5; made by zokernels/make_gaussian_table.py
    (0x40AD7079, 0xBE36E5C0, 0x3DADAC60, 0xBD46B4B5, 0x3CB57B58, 0xBBA77301),
    (0x40A96E30, 0xBE3AF697, 0x3DB14A13, 0xBD4ABC93, 0x3CB91E16, 0xBBAAC88A),
    (0x40A55494, 0xBE3F4EA8, 0x3DB522B4, 0xBD4F0459, 0x3CBCF9BA, 0xBBAE51ED),
    (0x40A12204, 0xBE43F65D, 0x3DB93CAD, 0xBD5392CA, 0x3CC11436, 0xBBB2148A),
    (0x409CD4AB, 0xBE48F794, 0x3DBD9F6B, 0xBD586FB2, 0x3CC5745E, 0xBBB61690),
    (0x40986A79, 0xBE4E5DF2, 0x3DC25394, 0xBD5DA418, 0x3CCA2219, 0xBBBA5F22),
    (0x4093E117, 0xBE543756, 0x3DC76346, 0xBD633A81, 0x3CCF2696, 0xBBBEF68A),
    (0x408F35DB, 0xBE5A9468, 0x3DCCDA73, 0xBD693F48, 0x3CD48C98, 0xBBC3E67C),
    (0x408A65B4, 0xBE61895F, 0x3DD2C74C, 0xBD6FC103, 0x3CDA60CA, 0xBBC93A63),
    (0x40856D14, 0xBE692F06, 0x3DD93AD0, 0xBD76D112, 0x3CE0B23B, 0xBBCEFFC6),
    (0x408047D4, 0xBE71A425, 0x3DE0498B, 0xBD7E844F, 0x3CE792ED, 0xBBD546D4),
    (0x4075E21E, 0xBE7B0F82, 0x3DE80C8D, 0xBD8379FD, 0x3CEF189E, 0xBBDC230A),
    (0x406AC5D4, 0xBE82D15D, 0x3DF0A2B5, 0xBD881F79, 0x3CF75DC9, 0xBBE3AC1F),
    (0x405F2CA2, 0xBE88CF36, 0x3DFA3277, 0xBD8D45AC, 0x3D004182, 0xBBEBFF2F),
    (0x40530522, 0xBE8FAC4D, 0x3E02761C, 0xBD930462, 0x3D055869, 0xBBF5405D),
    (0x40463992, 0xBE97A347, 0x3E0886C3, 0xBD9979A7, 0x3D0B0D13, 0xBBFF9D01),
    (0x4038AE27, 0xBEA10682, 0x3E0F72A7, 0xBDA0CBD3, 0x3D117FE0, 0xBC05A752),
    (0x402A3E73, 0xBEAC4DDC, 0x3E176C89, 0xBDA92C61, 0x3D18DA74, 0xBC0C4F8D),
    (0x401AB930, 0xBEBA2F94, 0x3E20B4E0, 0xBDB2DBA8, 0x3D2152D6, 0xBC13F70C),
    (0x4009D8FA, 0xBECBD08E, 0x3E2B98FC, 0xBDBE2DC9, 0x3D2B2F8D, 0xBC1CDC42),
    (0x3FEE6DC6, 0xBEE32AFC, 0x3E3861AD, 0xBDCB918C, 0x3D36CC6B, 0xBC2750C5),
    (0x3FC45DD2, 0xBF0202A2, 0x3E46F630, 0xBDDBA3B4, 0x3D449D38, 0xBC33BE71),
    (0x3F933E63, 0xBF1B5AF7, 0x3E54F742, 0xBDEFCF40, 0x3D550699, 0xBC42C9D2),
    (0x3F2CAAD0, 0xBF494C9A, 0x3E5149B0, 0xBE0A0AE8, 0x3D66594D, 0xBC64F85C),
)
