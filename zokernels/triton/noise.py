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
Under TRITON_INTERPRET=1 the same code runs on CPU tensors.
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

DIST_CODES = {"gaussian": 0, "rademacher": 1, "uniform": 2, "gaussian-fast": 3}
_DTYPE_CODES = {torch.float32: 0, torch.bfloat16: 1, torch.float16: 2}
BLOCK_G = 256  # groups per program (1024 elements); tests vary it to show tile-size invariance


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
def _interleave4(x0, x1, x2, x3):
    """[G] x 4 lanes -> [G, 4] in element order (join adds the new axis last, hence x0, x2 inside)."""
    return tl.reshape(tl.join(tl.join(x0, x2), tl.join(x1, x3)), (x0.shape[0], 4))


@triton.jit
def _words(seed, key, g, tag: tl.constexpr):
    c0 = (g & 0xFFFFFFFF).to(tl.uint32)
    c1 = (g >> 32).to(tl.uint32)
    c2 = tl.zeros_like(c0) + key.to(tl.uint32)
    c3 = tl.full(c0.shape, tag, tl.uint32)
    return tl.philox(seed, c0, c1, c2, c3, 10)


@triton.jit
def _noise(seed, key, g, DIST: tl.constexpr):
    """z for the [G, 4] elements of groups g, float32."""
    x0, x1, x2, x3 = _words(seed, key, g, _TAG_NOISE)
    if DIST == 0:
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
def _rounding_bits(seed, key, g):
    x0, x1, x2, x3 = _words(seed, key, g, _TAG_ROUNDING)
    return _interleave4(x0, x1, x2, x3)


@triton.jit
def _bf16_bits_to_f32(h):
    return (h.to(tl.uint32) << 16).to(tl.float32, bitcast=True)


@triton.jit
def _f32_to_bf16_bits(s):
    b = s.to(tl.uint32, bitcast=True)
    rne = (b + 0x7FFF + ((b >> 16) & 1)) >> 16
    nan = (b >> 16) | 0x40
    return tl.where((b & 0x7FFFFFFF) > 0x7F800000, nan, rne).to(tl.uint16)


@triton.jit
def _round(s, r, DTYPE: tl.constexpr, STOCHASTIC: tl.constexpr):
    """float32 -> parameter dtype and back (values only); see reference.round_stochastic."""
    if DTYPE == 0:
        out = s
    elif DTYPE == 1:
        if STOCHASTIC:
            b = s.to(tl.uint32, bitcast=True)
            sr = ((b + (r >> 16)) >> 16).to(tl.uint16)
            bits = tl.where((b & 0x7FFFFFFF) > 0x7F800000, _f32_to_bf16_bits(s), sr)
        else:
            bits = _f32_to_bf16_bits(s)
        out = _bf16_bits_to_f32(bits)
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


@triton.jit(do_not_specialize=["K"])
def _update_kernel(meta_ptr, prog_ptr, seeds_ptr, coeffs_ptr, K, DTYPE: tl.constexpr, DIST: tl.constexpr,
                   STOCHASTIC: tl.constexpr, BLOCK: tl.constexpr):
    pid = tl.program_id(0).to(tl.int64)
    t = tl.load(prog_ptr + pid)
    row = meta_ptr + t * 7
    addr, numel, offset, key, first = tl.load(row), tl.load(row + 1), tl.load(row + 2), tl.load(row + 3), tl.load(
        row + 4)
    src = tl.load(row + 5)  # where w is read from: addr itself, or the source of a perturbed copy
    flag = tl.load(row + 6).to(tl.pointer_type(tl.int32))  # this tensor's non-finite flag
    g = (offset >> 2) + (pid - first) * BLOCK + tl.arange(0, BLOCK).to(tl.int64)
    j = (g * 4)[:, None] + tl.arange(0, 4).to(tl.int64)[None, :] - offset  # tensor index of each element
    mask = (j >= 0) & (j < numel)
    if DTYPE == 0:
        ptr = addr.to(tl.pointer_type(tl.float32)) + j
        w = tl.load(src.to(tl.pointer_type(tl.float32)) + j, mask=mask, other=0.0)
    elif DTYPE == 1:
        ptr = addr.to(tl.pointer_type(tl.uint16)) + j
        w = _bf16_bits_to_f32(tl.load(src.to(tl.pointer_type(tl.uint16)) + j, mask=mask, other=0))
    else:
        ptr = addr.to(tl.pointer_type(tl.float16)) + j
        w = tl.load(src.to(tl.pointer_type(tl.float16)) + j, mask=mask, other=0.0).to(tl.float32)
    for k in range(K):
        seed = tl.load(seeds_ptr + k).to(tl.uint64, bitcast=True)
        c = tl.load(coeffs_ptr + k)
        s = w + c * _noise(seed, key, g, DIST)
        if STOCHASTIC:
            r = _rounding_bits(seed, key, g)
        else:
            r = tl.zeros(w.shape, tl.uint32)
        w = _round(s, r, DTYPE, STOCHASTIC)
    # Non-finite results (exponent all ones) are detected here, on the values about to be stored, so
    # an overflow costs no pass of its own: every tile pays a mask and a max per element and one
    # tile-wide max (about 5 SASS instructions per element on sm_90); only a tile that holds a
    # non-finite value issues an atomic, one for the whole tile.
    exponent = tl.where(mask, w.to(tl.uint32, bitcast=True) & 0x7F800000, 0)
    tl.atomic_or(flag, 1, mask=tl.max(exponent) == 0x7F800000, sem="relaxed")
    if DTYPE == 0:
        tl.store(ptr, w, mask=mask)
    elif DTYPE == 1:
        tl.store(ptr, _f32_to_bf16_bits(w), mask=mask)
    else:
        tl.store(ptr, w.to(tl.float16), mask=mask)


@triton.jit
def _noise_kernel(out_ptr, args_ptr, DIST: tl.constexpr, BLOCK: tl.constexpr):
    # scalars travel as int64 in a tensor: python ints >= 2**31 would otherwise be typed per value
    numel, offset, key = tl.load(args_ptr), tl.load(args_ptr + 1), tl.load(args_ptr + 3)
    seed = tl.load(args_ptr + 2).to(tl.uint64, bitcast=True)
    pid = tl.program_id(0).to(tl.int64)
    g = (offset >> 2) + pid * BLOCK + tl.arange(0, BLOCK).to(tl.int64)
    j = (g * 4)[:, None] + tl.arange(0, 4).to(tl.int64)[None, :] - offset
    tl.store(out_ptr + j, _noise(seed, key, g, DIST), mask=(j >= 0) & (j < numel))


def _programs(numel: int, offset: int, block: int) -> int:
    if numel == 0:
        return 0
    return ((offset + numel - 1) // 4 - offset // 4) // block + 1


def _as_i64(x: int) -> int:
    """uint64 -> the int64 with the same bits (what a 64-bit integer tensor can hold)."""
    return x - 2**64 if x >= 2**63 else x


def noise(out: torch.Tensor, offset: int, seed: int, key: int, dist: str, block: int = BLOCK_G) -> None:
    grid = (_programs(out.numel(), offset, block),)
    if grid[0]:
        args = torch.tensor([out.numel(), offset, _as_i64(seed), key], dtype=torch.int64, device=out.device)
        _noise_kernel[grid](out, args, DIST=DIST_CODES[dist], BLOCK=block, enable_fp_fusion=False,
                            enable_reflect_ftz=False)


def update_(tensors, seeds, coeffs, keys, offsets, dist: str, rounding: str, sources=None,
            block: int = BLOCK_G) -> torch.Tensor:
    """Returns one int32 per tensor on the tensors' device, nonzero where this pass wrote a non-finite
    value. The flags are set inside the update kernel; reading them on the host waits for the kernel
    (a device sync), so a caller that must not sync keeps them on the device."""
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
        rows, counts = [], []
        for i, (t, src, key, off) in enumerate(zip(tensors, sources, keys, offsets)):
            n = _programs(t.numel(), off, block) if t.dtype == dtype else 0
            if n:
                rows.append([t.data_ptr(), t.numel(), off, key, sum(counts), src.data_ptr(),
                             flags.data_ptr() + i * flags.element_size()])
                counts.append(n)
        if not rows:
            continue
        meta = torch.tensor(rows, dtype=torch.int64, device=device)
        prog = torch.repeat_interleave(torch.arange(len(rows), dtype=torch.int32, device=device),
                                       torch.tensor(counts, device=device))
        _update_kernel[(sum(counts),)](meta, prog, seeds_t, coeffs_t, len(seeds), DTYPE=code,
                                       DIST=DIST_CODES[dist], STOCHASTIC=rounding == "stochastic", BLOCK=block,
                                       enable_fp_fusion=False, enable_reflect_ftz=False)
    return flags
