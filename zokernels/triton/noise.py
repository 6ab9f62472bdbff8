"""Triton backend: the noise contract and the fused multi-seed update as GPU kernels.

One program handles BLOCK_G Philox groups (4 * BLOCK_G elements) of one tensor; tensors of the same
dtype share one launch through a table of raw addresses, so a model with hundreds of tensors costs
one launch per dtype. Bit-exactness with the C++ and torch backends rests on settings that a GPU
needs and the interpreter has by default: no FMA contraction (enable_fp_fusion=False), no
flush-to-zero inside libdevice (enable_reflect_ftz=False: with it on, tl.floor in fp16 stochastic
rounding compiles to cvt.rmi.ftz), and correctly rounded division and square root (tl.div_rn,
tl.sqrt_rn) where plain `/` and tl.sqrt are approximate on NVIDIA GPUs. tests/test_triton_aot.py
compiles every variant for sm_80 and sm_90 and checks the PTX for all of this. Element indices are
int64 from the program id on (a 32-bit program_id * BLOCK wraps past 2^33 elements).
Under TRITON_INTERPRET=1 the same code runs on CPU tensors. Every kernel takes the noise spec version as a
constexpr (VERSION, default 1) and, for version 2, the address of its Gaussian's coefficients (table_ptr:
gaussian_v2_table, 768 bytes; 255 lookups in 256 fall in the cache line of octaves 16..23). Version 1 launches
pass neither, so they compile to exactly what they did before version 2 existed.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from .. import spec

_F = {name: tl.constexpr(bits) for name, bits in spec.F32_BITS.items()}
_TWO_M24: tl.constexpr = tl.constexpr(0x33800000)
_TAG_NOISE: tl.constexpr = tl.constexpr(spec.TAG_NOISE)
_TAG_ROUNDING: tl.constexpr = tl.constexpr(spec.TAG_ROUNDING)
_SQRT2: tl.constexpr = _F["SQRT2"]
_LN2_HI: tl.constexpr = _F["LN2_HI"]
_LN2_LO: tl.constexpr = _F["LN2_LO"]
_LOG_C1: tl.constexpr = _F["LOG_C1"]
_LOG_C2: tl.constexpr = _F["LOG_C2"]
_LOG_C3: tl.constexpr = _F["LOG_C3"]
_LOG_C4: tl.constexpr = _F["LOG_C4"]
_TURN_STEP: tl.constexpr = _F["TURN_STEP"]
_SIN_C1: tl.constexpr = _F["SIN_C1"]
_SIN_C2: tl.constexpr = _F["SIN_C2"]
_SIN_C3: tl.constexpr = _F["SIN_C3"]
_SIN_C4: tl.constexpr = _F["SIN_C4"]
_COS_C1: tl.constexpr = _F["COS_C1"]
_COS_C2: tl.constexpr = _F["COS_C2"]
_COS_C3: tl.constexpr = _F["COS_C3"]
_COS_C4: tl.constexpr = _F["COS_C4"]
_COS_C5: tl.constexpr = _F["COS_C5"]
_SQRT3: tl.constexpr = _F["SQRT3"]
_ROUNDS_V1: tl.constexpr = tl.constexpr(spec.PHILOX_ROUNDS)
_ROUNDS_V2: tl.constexpr = tl.constexpr(spec.PHILOX_ROUNDS_V2)
_PHILOX_M0: tl.constexpr = tl.constexpr(spec.PHILOX_ROUND_A)
_PHILOX_M1: tl.constexpr = tl.constexpr(spec.PHILOX_ROUND_B)
_PHILOX_W0: tl.constexpr = tl.constexpr(spec.PHILOX_KEY_A)
_PHILOX_W1: tl.constexpr = tl.constexpr(spec.PHILOX_KEY_B)
_GAUSS_V2_U_BIAS: tl.constexpr = tl.constexpr(spec.GAUSSIAN_V2_BIAS + 32)  # u = v * 2**32: 32 octaves up
_GAUSS_V2_ROW: tl.constexpr = tl.constexpr(32)  # octaves per row of coefficient pairs in the table (24, padded)

DIST_CODES = {"gaussian": 0, "rademacher": 1, "uniform": 2, "gaussian-fast": 3}
_DTYPE_CODES = {torch.float32: 0, torch.bfloat16: 1, torch.float16: 2}
BLOCK_G = 256  # groups per program (1024 elements); tests vary it to show tile-size invariance
# Warps per program, as every launch passes them (num_warps=2, a literal there so that tools reading the launch
# sites see it): a thread holds BLOCK_G // 64 = 4 Philox groups, over which the per-program work (the tensor's
# row, addresses, the loop over seeds) is spread; Triton's default 4 costs about 5 more SASS instructions per
# element for fewer registers per thread (benchmarks/triton_sass.py; tests/test_triton_aot.py checks the launches).
NUM_WARPS = 2
_THREADS: tl.constexpr = tl.constexpr(32 * NUM_WARPS)


@triton.jit
def _c(bits: tl.constexpr):
    """A float32 constant from its bit pattern."""
    return tl.full([1], bits, tl.uint32).to(tl.float32, bitcast=True)


@triton.jit
def _spec_log(u):
    b = u.to(tl.uint32, bitcast=True)
    e = (b >> 23).to(tl.int32) - 127
    m = ((b & 0x007FFFFF) | 0x3F800000).to(tl.float32, bitcast=True)
    fold = m > _c(_SQRT2)
    m = tl.where(fold, m * 0.5, m)
    e = tl.where(fold, e + 1, e)
    f = m - 1.0
    s = tl.div_rn(f, 2.0 + f)
    z = s * s
    p = _c(_LOG_C3) + z * _c(_LOG_C4)
    p = _c(_LOG_C2) + z * p
    p = _c(_LOG_C1) + z * p
    logm = (2.0 * s) + s * (z * p)
    fe = e.to(tl.float32)
    return fe * _c(_LN2_HI) + (fe * _c(_LN2_LO) + logm)


@triton.jit
def _gaussian_pair(a, b):
    u = ((a >> 8) + 1).to(tl.float32) * _c(_TWO_M24)
    r = tl.sqrt_rn(-2.0 * _spec_log(u))
    t = (b >> 8) + 0x200000
    quadrant = (t >> 22) & 3
    x = ((t & 0x3FFFFF).to(tl.int32) - 0x200000).to(tl.float32) * _c(_TURN_STEP)
    z = x * x
    ps = _c(_SIN_C3) + z * _c(_SIN_C4)
    ps = _c(_SIN_C2) + z * ps
    ps = _c(_SIN_C1) + z * ps
    sn = x + (x * z) * ps
    pc = _c(_COS_C4) + z * _c(_COS_C5)
    pc = _c(_COS_C3) + z * pc
    pc = _c(_COS_C2) + z * pc
    pc = _c(_COS_C1) + z * pc
    cs = 1.0 + z * pc
    odd = (quadrant & 1) == 1
    c = tl.where(odd, sn, cs)
    s = tl.where(odd, cs, sn)
    c = tl.where((quadrant == 1) | (quadrant == 2), -c, c)
    s = tl.where(quadrant >= 2, -s, s)
    return r * c, r * s


@triton.jit
def _uniform(a):
    v = (((a >> 8) << 1).to(tl.int32) + 1 - 0x1000000).to(tl.float32) * _c(_TWO_M24)
    return v * _c(_SQRT3)


@triton.jit
def _rademacher(a):
    return tl.where((a >> 31) == 1, -1.0, 1.0)


@triton.jit
def _rademacher_v2(a, n):
    """Bit n of word a as a sign (spec v2: 32 signs per word)."""
    return ((a << (31 - n)) & 0x80000000 | 0x3F800000).to(tl.float32, bitcast=True)


@triton.jit
def _coefficient(pair, HIGH: tl.constexpr):
    """One float32 coefficient of a pair loaded as one 64-bit word (the lower address in the low half)."""
    if HIGH:
        pair = pair >> 32
    return pair.to(tl.uint32).to(tl.float32, bitcast=True)


@triton.jit
def _gaussian_v2(a, table_ptr):
    """Spec v2's Gaussian of one word: a degree-5 polynomial per octave of v (see reference.gaussian_v2).
    Works on u = v * 2**32 = float(a's bits 8..30) + 2**7, exact (one and, one conversion, one add), whose
    exponent gives the octave with no scaling and whose mantissa is v's. The coefficients come as three
    64-bit pairs (gaussian_v2_table), each one load whose address is the octave plus a constant offset."""
    u = (a & 0x7FFFFF00).to(tl.float32) + 128.0
    b = u.to(tl.uint32, bitcast=True)
    pairs = table_ptr.to(tl.pointer_type(tl.uint64)) + ((b >> 23) - _GAUSS_V2_U_BIAS).to(tl.int32)
    f = ((b & 0x7FFFFF) | 0x3F800000).to(tl.float32, bitcast=True) - 1.0  # exact, in [0, 1)
    c01 = tl.load(pairs)
    c23 = tl.load(pairs + _GAUSS_V2_ROW)
    c45 = tl.load(pairs + 2 * _GAUSS_V2_ROW)
    y = _coefficient(c45, True)
    y = y * f + _coefficient(c45, False)
    y = y * f + _coefficient(c23, True)
    y = y * f + _coefficient(c23, False)
    y = y * f + _coefficient(c01, True)
    y = y * f + _coefficient(c01, False)
    return (y.to(tl.uint32, bitcast=True) ^ (a & 0x80000000)).to(tl.float32, bitcast=True)


@triton.jit
def _interleave4(x0, x1, x2, x3):
    """[G] x 4 lanes -> [G, 4] in element order (join adds the new axis last, hence x0, x2 inside).
    The joined axes stay inside one thread: a thread owns whole Philox groups, nothing is exchanged."""
    return tl.reshape(tl.join(tl.join(x0, x2), tl.join(x1, x3)), (x0.shape[0], 4))


@triton.jit
def _tile(tile, offset, BLOCK: tl.constexpr):
    """Tile `tile` covers the global groups [tile * BLOCK, (tile + 1) * BLOCK). Tiles are aligned to
    BLOCK, a power of two, so none straddles a multiple of 2^32 groups: the high counter word is one
    scalar per tile and the low word needs no carry. Returns the tensor index of the tile's first
    element (int64 scalar), each element's index within the tile ([BLOCK, 4], int32, laid out as the
    noise is) and the two counter words."""
    g0 = tile * BLOCK
    i = tl.arange(0, BLOCK)
    c0 = (g0 & 0xFFFFFFFF).to(tl.uint32) + i.to(tl.uint32)
    c1 = (g0 >> 32).to(tl.uint32)
    base = g0 * 4 - offset
    e = _interleave4(4 * i, 4 * i + 1, 4 * i + 2, 4 * i + 3)
    return base, e, c0, c1


@triton.jit
def _tile_mask(base, e, numel, BLOCK: tl.constexpr):
    """Which elements of a partial tile (a tensor's first or last) lie in the tensor, in 32 bits."""
    lo = tl.minimum(tl.maximum(-base, 0), 4 * BLOCK).to(tl.int32)
    hi = tl.minimum(tl.maximum(numel - base, 0), 4 * BLOCK).to(tl.int32)
    return (e >= lo) & (e < hi)


@triton.jit
def _mul_wide(a, m: tl.constexpr):
    """High and low words of the 64-bit product a * m. One widening multiply (IMAD.WIDE.U32) where
    tl.philox's separate umulhi and mul cost two on NVIDIA GPUs."""
    p = a.to(tl.uint64) * tl.full([], m, tl.uint64)
    return (p >> 32).to(tl.uint32), p.to(tl.uint32)


@triton.jit
def _philox(k0, k1, c0, c1, c2, c3, ROUNDS: tl.constexpr):
    """Philox4x32-ROUNDS (Random123's constants, the stream tl.philox gives). The key words are scalars,
    so the Weyl key schedule runs once per program on the uniform datapath, not per element."""
    for _ in tl.static_range(ROUNDS):
        hi_b, lo_b = _mul_wide(c2, _PHILOX_M1)
        hi_a, lo_a = _mul_wide(c0, _PHILOX_M0)
        c0, c1, c2, c3 = hi_b ^ c1 ^ k0, lo_b, hi_a ^ c3 ^ k1, lo_a
        k0 = tl.add(k0, _PHILOX_W0, sanitize_overflow=False)
        k1 = tl.add(k1, _PHILOX_W1, sanitize_overflow=False)
    return c0, c1, c2, c3


@triton.jit
def _words(seed, key, c0, c1, tag: tl.constexpr, VERSION: tl.constexpr):
    # c1, key and tag are scalars: Philox's first round on the (c1, key) half runs once per tile
    k0 = (seed & 0xFFFFFFFF).to(tl.uint32)
    k1 = (seed >> 32).to(tl.uint32)
    c2 = key.to(tl.uint32)
    c3 = tl.full([], tag, tl.uint32)
    if VERSION == 1:
        x0, x1, x2, x3 = _philox(k0, k1, c0, c1, c2, c3, _ROUNDS_V1)
    else:
        x0, x1, x2, x3 = _philox(k0, k1, c0, c1, c2, c3, _ROUNDS_V2)
    return x0, x1, x2, x3


@triton.jit
def _noise(seed, key, c0, c1, table_ptr, DIST: tl.constexpr, VERSION: tl.constexpr):
    """z for the [G, 4] elements of groups (c0, c1), float32."""
    if VERSION == 2 and DIST == 1:
        # 32 consecutive groups share counter G >> 5 (G = c1 * 2**32 + c0), group G taking bit G % 32
        x0, x1, x2, x3 = _words(seed, key, (c0 >> 5) | (c1 << 27), c1 >> 5, _TAG_NOISE, VERSION)
        n = c0 & 31
        za, zb, zc, zd = _rademacher_v2(x0, n), _rademacher_v2(x1, n), _rademacher_v2(x2, n), _rademacher_v2(x3, n)
    else:
        x0, x1, x2, x3 = _words(seed, key, c0, c1, _TAG_NOISE, VERSION)
        if VERSION == 2 and DIST == 0:
            za, zb = _gaussian_v2(x0, table_ptr), _gaussian_v2(x1, table_ptr)
            zc, zd = _gaussian_v2(x2, table_ptr), _gaussian_v2(x3, table_ptr)
        elif DIST == 0:
            za, zb = _gaussian_pair(x0, x1)
            zc, zd = _gaussian_pair(x2, x3)
        elif DIST == 1:
            za, zb, zc, zd = _rademacher(x0), _rademacher(x1), _rademacher(x2), _rademacher(x3)
        elif DIST == 2:
            za, zb, zc, zd = _uniform(x0), _uniform(x1), _uniform(x2), _uniform(x3)
        else:  # gaussian-fast: triton's approximate Box-Muller on the same words, not portable
            za, zb = tl.random.pair_uniform_to_normal(tl.random.uint_to_uniform_float(x0),
                                                      tl.random.uint_to_uniform_float(x1))
            zc, zd = tl.random.pair_uniform_to_normal(tl.random.uint_to_uniform_float(x2),
                                                      tl.random.uint_to_uniform_float(x3))
    return _interleave4(za, zb, zc, zd)


@triton.jit
def _rounding_bits(seed, key, c0, c1, VERSION: tl.constexpr):
    x0, x1, x2, x3 = _words(seed, key, c0, c1, _TAG_ROUNDING, VERSION)
    return _interleave4(x0, x1, x2, x3)


@triton.jit
def _bf16_bits_to_f32(h):
    return (h.to(tl.uint32) << 16).to(tl.float32, bitcast=True)


@triton.jit
def _round_bf16(s, r, STOCHASTIC: tl.constexpr):
    """s rounded to bfloat16 on the integer bits in 32-bit registers (no 16-bit round trip): round-to-
    nearest-even, or stochastic with r's high 16 bits; a NaN stays a quiet NaN with its sign and high
    payload (reference.round_stochastic). The result's high half is the bfloat16; its low half is left
    over (see _bf16_value): whether it is finite does not depend on it (the exponent is in the high half)
    and the stores take the high half, so only a next seed needs it cleared."""
    b = s.to(tl.uint32, bitcast=True)
    if STOCHASTIC:
        t = b + (r >> 16)
    else:
        t = b + 0x7FFF + ((b >> 16) & 1)
    return tl.where(s != s, b | 0x400000, t).to(tl.float32, bitcast=True)


@triton.jit
def _bf16_value(w):
    """The bfloat16 value of w, whose high half holds it (its low half may be left over, see _round_bf16)."""
    return (w.to(tl.uint32, bitcast=True) & 0xFFFF0000).to(tl.float32, bitcast=True)


@triton.jit
def _round(s, r, DTYPE: tl.constexpr, STOCHASTIC: tl.constexpr):
    """float32 -> parameter dtype and back (values only); see reference.round_stochastic."""
    if DTYPE == 0:
        out = s
    elif DTYPE == 1:
        out = _round_bf16(s, r, STOCHASTIC)
    else:
        if STOCHASTIC:
            b = s.to(tl.uint32, bitcast=True)
            a = b & 0x7FFFFFFF
            normal = ((b + (r >> 19)) & 0xFFFFE000).to(tl.float32, bitcast=True)
            q = tl.where(a < 0x38800000, a, 0).to(tl.float32, bitcast=True) * _c(0x4B800000)
            fl = tl.floor(q)
            up = tl.where((r >> 8).to(tl.float32) * _c(_TWO_M24) < q - fl, 1.0, 0.0)
            sub = (((fl + up) * _c(_TWO_M24)).to(tl.uint32, bitcast=True) | (b & 0x80000000)).to(
                tl.float32, bitcast=True)
            s = tl.where(a > 0x7F800000, s, tl.where(a >= 0x38800000, normal, sub))
        out = s.to(tl.float16).to(tl.float32)
    return out


@triton.jit
def _group_words(addr, base, ELEM: tl.constexpr, BLOCK: tl.constexpr):
    """A full tile (of the tensor at address addr, an int64) as one pointer to a 64-bit word per Philox group,
    its first (a group's 4 elements are one word in 16 bits, two in 32). The unmasked launch holds only tiles
    whose groups start on a 4-element boundary in memory (the launcher checks), so these are aligned."""
    return (addr + base * (ELEM.primitive_bitwidth // 8)).to(tl.pointer_type(tl.uint64)) + tl.arange(
        0, BLOCK) * (ELEM.primitive_bitwidth // 16)


@triton.jit
def _ptrs(addr, base, e, ELEM: tl.constexpr, BLOCK: tl.constexpr, MASKED: tl.constexpr):
    """Pointers to a tile's elements, [G, 4] in the layout the noise is made in. A full tile's come from
    one pointer per group (_group_words) and are said to be 4 contiguous elements aligned to the group, so
    each thread moves a group as one vector, in that layout (no exchange through shared memory; without
    the hint Triton lays elements out one per thread to coalesce scalar accesses), and one address serves
    all of a thread's groups (the others are immediate offsets). A partial tile's go element by element."""
    if MASKED:
        p = addr.to(tl.pointer_type(ELEM)) + base + e
    else:
        p = _group_words(addr, base, ELEM, BLOCK).to(tl.pointer_type(ELEM))[:, None] + tl.arange(0, 4)[None, :]
        p = tl.max_contiguous(tl.multiple_of(p, [1, 4 * ELEM.primitive_bitwidth // 8]), [1, 4])
    return p


@triton.jit
def _bf16_groups_to_f32(words):
    """One 64-bit word per group (elements 0..3 from the low half up) -> [G, 4], each element's bfloat16 in
    the high half of its 32 bits: one shift per two elements, as elements 1 and 3 keep their neighbour's
    bits in the low half (see _bf16_value)."""
    lo = words.to(tl.uint32)
    hi = (words >> 32).to(tl.uint32)
    return _interleave4(lo << 16, lo, hi << 16, hi).to(tl.float32, bitcast=True)


@triton.jit
def _load(ptr, mask):
    """Full tiles (mask None) load without a predicate; partial ones read 0 outside the tensor."""
    if mask is None:
        x = tl.load(ptr)
    else:
        x = tl.load(ptr, mask=mask, other=0)
    return x


@triton.jit
def _max_propagating_nan(a, b):
    return tl.maximum(a, b, propagate_nan=tl.PropagateNan.ALL)


@triton.jit
def _largest(a):
    """The NaN-propagating max of a [G, 4] tile per thread's groups: [G // R] for the R groups a thread
    holds (groups g, g + _THREADS, ...; [G] where G <= _THREADS). Any grouping flags the same tensors;
    this one keeps the max inside a thread (no exchange, no shared memory, no barrier)."""
    if a.shape[0] > _THREADS:
        a = tl.reduce(tl.reshape(a, (a.shape[0] // _THREADS, _THREADS, 4)), 2, _max_propagating_nan)
        largest = tl.reduce(a, 0, _max_propagating_nan)
    else:
        largest = tl.reduce(a, 1, _max_propagating_nan)
    return largest


@triton.jit
def _store_flagging_non_finite(ptr, w, flag, mask, DTYPE: tl.constexpr):
    """Stores w (float32 holding values of the parameter dtype; bfloat16 in the high half) and flags the
    tensor if any stored value is non-finite, on the values about to be stored, so an overflow costs no
    pass of its own: one NaN-propagating max of |w| per element (a single FMNMX) over the elements a
    thread holds (_largest); only a thread that holds a non-finite value writes the flag. Flags start at 0
    and are only ever set to 1, so racing plain stores of that same 1 suffice: a predicated store, where
    an atomic costs a warp vote and a branch around it."""
    a = tl.abs(w)
    if mask is not None:  # lanes outside the tensor computed 0 + c*z, which may overflow
        a = tl.where(mask, a, 0.0)
    largest = _largest(a).to(tl.uint32, bitcast=True)
    tl.store(flag + tl.zeros(largest.shape, tl.int32), 1, mask=(largest & 0x7F800000) == 0x7F800000)
    if DTYPE == 0:
        tl.store(ptr, w, mask=mask)
    elif DTYPE == 1:
        tl.store(ptr, (w.to(tl.uint32, bitcast=True) >> 16).to(tl.uint16), mask=mask)
    else:
        tl.store(ptr, w.to(tl.float16), mask=mask)


@triton.jit(do_not_specialize=["K"])
def _update_kernel(meta_ptr, prog_ptr, seeds_ptr, coeffs_ptr, K, DTYPE: tl.constexpr, DIST: tl.constexpr,
                   STOCHASTIC: tl.constexpr, BLOCK: tl.constexpr, MASKED: tl.constexpr = False,
                   VERSION: tl.constexpr = 1, table_ptr=None):
    # One row of meta per run of consecutive tiles of one tensor; MASKED launches hold the tiles that a
    # tensor covers only in part (its first and last) and every tile of a tensor whose groups are not
    # vector-aligned in memory; the others run without masks, as vectors.
    pid = tl.program_id(0).to(tl.int64)
    t = tl.load(prog_ptr + pid)
    row = meta_ptr + t * 8
    addr, numel, offset, key, first = tl.load(row), tl.load(row + 1), tl.load(row + 2), tl.load(row + 3), tl.load(
        row + 4)
    src = tl.load(row + 5)  # where w is read from: addr itself, or the source of a perturbed copy
    flag = tl.load(row + 6).to(tl.pointer_type(tl.int32))  # this tensor's non-finite flag
    tile = tl.load(row + 7) + (pid - first)
    base, e, c0, c1 = _tile(tile, offset, BLOCK)
    mask = None
    if MASKED:
        mask = _tile_mask(base, e, numel, BLOCK)
    if DTYPE == 0:
        ptr = _ptrs(addr, base, e, tl.float32, BLOCK, MASKED)
        w = _load(_ptrs(src, base, e, tl.float32, BLOCK, MASKED), mask)
    elif DTYPE == 1:
        ptr = _ptrs(addr, base, e, tl.uint16, BLOCK, MASKED)
        if MASKED:
            w = _bf16_bits_to_f32(_load(_ptrs(src, base, e, tl.uint16, BLOCK, MASKED), mask))
        else:  # a group's word unpacks in registers: one shift per two elements (_bf16_groups_to_f32)
            w = _bf16_groups_to_f32(tl.load(_group_words(src, base, tl.uint16, BLOCK)))
    else:
        ptr = _ptrs(addr, base, e, tl.float16, BLOCK, MASKED)
        w = _load(_ptrs(src, base, e, tl.float16, BLOCK, MASKED), mask).to(tl.float32)
    for k in range(K):
        seed = tl.load(seeds_ptr + k).to(tl.uint64, bitcast=True)
        c = tl.load(coeffs_ptr + k)
        if DTYPE == 1:
            w = _bf16_value(w)
        s = w + c * _noise(seed, key, c0, c1, table_ptr, DIST, VERSION)
        if STOCHASTIC:
            r = _rounding_bits(seed, key, c0, c1, VERSION)
        else:
            r = tl.zeros(w.shape, tl.uint32)
        w = _round(s, r, DTYPE, STOCHASTIC)
    _store_flagging_non_finite(ptr, w, flag, mask, DTYPE)


@triton.jit
def _noise_kernel(out_ptr, args_ptr, DIST: tl.constexpr, BLOCK: tl.constexpr, MASKED: tl.constexpr = False,
                  VERSION: tl.constexpr = 1, table_ptr=None):
    # scalars travel as int64 in a tensor: python ints >= 2**31 would otherwise be typed per value.
    # Program p draws tile first + p * stride: the full tiles (stride 1) or the partial first and last.
    numel, offset, key = tl.load(args_ptr), tl.load(args_ptr + 1), tl.load(args_ptr + 3)
    seed = tl.load(args_ptr + 2).to(tl.uint64, bitcast=True)
    tile = tl.load(args_ptr + 4) + tl.program_id(0).to(tl.int64) * tl.load(args_ptr + 5)
    base, e, c0, c1 = _tile(tile, offset, BLOCK)
    mask = None
    if MASKED:
        mask = _tile_mask(base, e, numel, BLOCK)
    z = _noise(seed, key, c0, c1, table_ptr, DIST, VERSION)
    tl.store(_ptrs(out_ptr.to(tl.int64), base, e, tl.float32, BLOCK, MASKED), z, mask=mask)


def _tiles(numel: int, offset: int, block: int, aligned: bool = True) -> tuple[list, list]:
    """The tiles (of 4 * block elements, aligned in the global index) that elements [offset, offset +
    numel) touch, as runs (first tile, count): those for the unmasked launch (covered whole, and only
    when the tensor's groups are vector-aligned in memory), and those for the masked one."""
    if numel == 0:
        return [], []
    size = 4 * block
    first, last = offset // size, (offset + numel - 1) // size
    if not aligned:
        return [], [(first, last - first + 1)]
    full_first, full_last = -(-offset // size), (offset + numel) // size - 1
    full = [(full_first, full_last - full_first + 1)] if full_first <= full_last else []
    partial = [(t, 1) for t in sorted({first, last}) if not full_first <= t <= full_last]
    return full, partial


def _groups_aligned(offset: int, *tensors: torch.Tensor) -> bool:
    """Whether every Philox group (global elements 4g .. 4g + 3) starts on a 4-element boundary in
    each tensor's memory, as a vector load of the group needs."""
    return all((t.data_ptr() - offset * t.element_size()) % (4 * t.element_size()) == 0 for t in tensors)


def _as_i64(x: int) -> int:
    """uint64 -> the int64 with the same bits (what a 64-bit integer tensor can hold)."""
    return x - 2**64 if x >= 2**63 else x


_TABLES: dict = {}


def _version_args(version: int, device) -> dict:
    """The launch arguments that select a spec version (none for version 1: its kernels are unchanged)."""
    return {} if version == 1 else dict(VERSION=version, table_ptr=gaussian_v2_table(device))


def gaussian_v2_table(device) -> torch.Tensor:
    """spec.GAUSSIAN_V2_COEFFS on `device` as float32, made once per device: three rows of 32 64-bit pairs, row p
    holding octave j's (c_2p, c_2p+1) at pair p * 32 + j (floats 2 * (p * 32 + j) and the next), so a
    coefficient pair is one aligned 64-bit load whose index is the octave plus a constant."""
    device = torch.device(device)
    if device not in _TABLES:
        octaves = spec.GAUSSIAN_V2_COEFFS
        rows = [[bits for octave in octaves for bits in octave[2 * p:2 * p + 2]] + [0] * (2 * (32 - len(octaves)))
                for p in range(len(octaves[0]) // 2)]
        bits = torch.tensor(rows, dtype=torch.int64).reshape(-1).to(torch.int32)
        _TABLES[device] = bits.view(torch.float32).to(device)
    return _TABLES[device]


def _check_block(block: int) -> None:
    if block < 1 or block & (block - 1):
        raise ValueError(f"block must be a power of two (tiles are aligned to it), got {block}")


def noise(out: torch.Tensor, offset: int, seed: int, key: int, dist: str, version: int = 1,
          block: int = BLOCK_G) -> None:
    _check_block(block)
    for masked, runs in zip((False, True), _tiles(out.numel(), offset, block, _groups_aligned(offset, out))):
        if runs:
            first, stride = runs[0][0], (runs[1][0] - runs[0][0] if len(runs) == 2 else 1)  # a run or 2 tiles
            grid = (sum(n for _, n in runs),)
            args = torch.tensor([out.numel(), offset, _as_i64(seed), key, first, stride], dtype=torch.int64,
                                device=out.device)
            _noise_kernel[grid](out, args, DIST=DIST_CODES[dist], BLOCK=block, MASKED=masked, num_warps=2,
                                enable_fp_fusion=False, enable_reflect_ftz=False, **_version_args(version, out.device))


def update_(tensors, seeds, coeffs, keys, offsets, dist: str, rounding: str, sources=None, version: int = 1,
            block: int = BLOCK_G) -> torch.Tensor:
    """Returns one int32 per tensor on the tensors' device, nonzero where this pass wrote a non-finite
    value. The flags are set inside the update kernel; reading them on the host waits for the kernel
    (a device sync), so a caller that must not sync keeps them on the device."""
    _check_block(block)
    if not tensors:
        return torch.zeros(0, dtype=torch.int32)
    device = tensors[0].device
    flags = torch.zeros(len(tensors), dtype=torch.int32, device=device)
    if not seeds:
        return flags
    sources = sources or tensors
    seeds_t = torch.tensor([_as_i64(s) for s in seeds], dtype=torch.int64, device=device)
    coeffs_t = torch.tensor(coeffs, dtype=torch.float32, device=device)
    for dtype, code in _DTYPE_CODES.items():
        for masked in (False, True):
            rows, counts = [], []
            for i, (t, src, key, off) in enumerate(zip(tensors, sources, keys, offsets)):
                runs = _tiles(t.numel(), off, block, _groups_aligned(off, t, src))[masked] if t.dtype == dtype else []
                for tile, n in runs:
                    rows.append([t.data_ptr(), t.numel(), off, key, sum(counts), src.data_ptr(),
                                 flags.data_ptr() + i * flags.element_size(), tile])
                    counts.append(n)
            if not rows:
                continue
            meta = torch.tensor(rows, dtype=torch.int64, device=device)
            prog = torch.repeat_interleave(torch.arange(len(rows), dtype=torch.int32, device=device),
                                           torch.tensor(counts, device=device))
            _update_kernel[(sum(counts),)](meta, prog, seeds_t, coeffs_t, len(seeds), DTYPE=code,
                                           DIST=DIST_CODES[dist], STOCHASTIC=rounding == "stochastic",
                                           BLOCK=block, MASKED=masked, num_warps=2, enable_fp_fusion=False,
                                           enable_reflect_ftz=False, **_version_args(version, device))
    return flags
