"""The pure-torch backend: the readable definition of every op, on any device.

Each function here states the noise contract (docs/noise.md) as plain tensor code. Integers are
held in int64 tensors (masked to 32 bits) because torch's uint32 support is partial; every float
operation is a single float32 tensor op, so the result is bit-identical to the C++ and Triton
backends. It is slow (tens of ops per element): use it to read, to test, and where no kernel runs.
"""

from __future__ import annotations

import torch

from . import spec

_M32 = 0xFFFFFFFF


def _f32(bits_or_name, device) -> torch.Tensor:
    """A float32 constant from its bit pattern (or its name in spec.F32_BITS), as a 0-d tensor."""
    bits = spec.F32_BITS[bits_or_name] if isinstance(bits_or_name, str) else bits_or_name
    return torch.tensor([bits], dtype=torch.int64, device=device).to(torch.int32).view(torch.float32)[0]


_TWO_M24 = 0x33800000  # 2**-24
_TWO_24 = 0x4B800000  # 2**24


def _mul32(x: torch.Tensor, m: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(high, low) 32-bit halves of x * m for x in [0, 2**32) and a constant m < 2**32, without int64 overflow."""
    mh, ml = m >> 16, m & 0xFFFF
    a, b = x * mh, x * ml  # each < 2**48
    hi = (a + (b >> 16)) >> 16
    lo = (((a & 0xFFFF) << 16) + b) & _M32
    return hi, lo


def philox(seed: int, c0, c1, c2, c3, rounds: int = spec.PHILOX_ROUNDS) -> tuple[torch.Tensor, ...]:
    """Philox4x32-`rounds` of counters (c0, c1, c2, c3) (int64 tensors holding uint32) under a 64-bit seed."""
    k0, k1 = seed & _M32, seed >> 32
    for _ in range(rounds):
        hi_a, lo_a = _mul32(c0, spec.PHILOX_ROUND_A)
        hi_b, lo_b = _mul32(c2, spec.PHILOX_ROUND_B)
        c0, c1, c2, c3 = hi_b ^ c1 ^ k0, lo_b, hi_a ^ c3 ^ k1, lo_a
        k0 = (k0 + spec.PHILOX_KEY_A) & _M32
        k1 = (k1 + spec.PHILOX_KEY_B) & _M32
    return c0, c1, c2, c3


def rounds_of(version: int) -> int:
    """Philox rounds of a spec version."""
    return spec.PHILOX_ROUNDS if version == 1 else spec.PHILOX_ROUNDS_V2


def _counter_words(c: torch.Tensor, seed: int, key: int, tag: int, version: int) -> torch.Tensor:
    """[len(c), 4] Philox words of counter indices c (int64, < 2**62) under (key, tag)."""
    words = philox(seed, c & _M32, c >> 32, torch.full_like(c, key), torch.full_like(c, tag), rounds_of(version))
    return torch.stack(words, dim=1)


def _group_words(numel: int, seed: int, key: int, offset: int, tag: int, device,
                 version: int = 1) -> tuple[torch.Tensor, int]:
    """Philox words of the whole groups covering elements offset .. offset+numel-1, and where element offset sits."""
    g_first = offset // spec.GROUP
    g_last = (offset + numel - 1) // spec.GROUP
    g = g_first + torch.arange(g_last - g_first + 1, dtype=torch.int64, device=device)  # < 2**62: no overflow
    return _counter_words(g, seed, key, tag, version).reshape(-1), offset - g_first * spec.GROUP


def random_words(numel: int, seed: int, key: int, offset: int, tag: int, device, version: int = 1) -> torch.Tensor:
    """The Philox word of each element offset .. offset+numel-1 under `tag` (int64 holding uint32)."""
    flat, start = _group_words(numel, seed, key, offset, tag, device, version)
    return flat[start : start + numel]


def _spec_log(u: torch.Tensor) -> torch.Tensor:
    dev = u.device
    b = u.view(torch.int32).to(torch.int64)
    e = (b >> 23) - 127
    m = ((b & 0x007FFFFF) | 0x3F800000).to(torch.int32).view(torch.float32)
    fold = m > _f32("SQRT2", dev)
    m = torch.where(fold, m * 0.5, m)
    e = torch.where(fold, e + 1, e)
    f = m - 1.0
    s = f / (f + 2.0)
    z = s * s
    p = _f32("LOG_C4", dev).expand_as(z)
    for name in ("LOG_C3", "LOG_C2", "LOG_C1"):
        p = _f32(name, dev) + z * p
    logm = (s * 2.0) + s * (z * p)
    fe = e.to(torch.float32)
    return fe * _f32("LN2_HI", dev) + (fe * _f32("LN2_LO", dev) + logm)


def _sqrt_rn(x: torch.Tensor) -> torch.Tensor:
    """Correctly rounded float32 sqrt for x >= 0.

    torch.sqrt on CPU (SLEEF) is not always correctly rounded in float32; the contract needs IEEE sqrt.
    Take the float64 root rounded to float32, then fix the last bit by squaring the neighbouring
    midpoints, which is exact in float64 (25-bit midpoints square to 50 bits).
    """
    xd = x.to(torch.float64)
    y = torch.sqrt(xd).to(torch.float32)
    up, down = torch.nextafter(y, torch.full_like(y, float("inf"))), torch.nextafter(y, torch.zeros_like(y))
    mid_up = (y.to(torch.float64) + up.to(torch.float64)) * 0.5
    mid_down = (y.to(torch.float64) + down.to(torch.float64)) * 0.5
    y = torch.where(mid_up * mid_up < xd, up, y)
    return torch.where(mid_down * mid_down > xd, down, y)


def gaussian_pair(a: torch.Tensor, b: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """The spec Box-Muller: two words -> two standard normals (see docs/noise.md for the op order)."""
    dev = a.device
    u = ((a >> 8) + 1).to(torch.float32) * _f32(_TWO_M24, dev)  # * 2**-24, exact
    r = _sqrt_rn(_spec_log(u) * -2.0)
    t = (b >> 8) + 0x200000
    quadrant = (t >> 22) & 3
    x = ((t & 0x3FFFFF) - 0x200000).to(torch.float32) * _f32("TURN_STEP", dev)
    z = x * x
    ps = _f32("SIN_C4", dev).expand_as(z)
    for name in ("SIN_C3", "SIN_C2", "SIN_C1"):
        ps = _f32(name, dev) + z * ps
    sn = x + (x * z) * ps
    pc = _f32("COS_C5", dev).expand_as(z)
    for name in ("COS_C4", "COS_C3", "COS_C2", "COS_C1"):
        pc = _f32(name, dev) + z * pc
    cs = z * pc + 1.0
    odd = (quadrant & 1) == 1
    c, s = torch.where(odd, sn, cs), torch.where(odd, cs, sn)
    c = torch.where((quadrant == 1) | (quadrant == 2), -c, c)
    s = torch.where(quadrant >= 2, -s, s)
    return r * c, r * s


def gaussian_v2(words: torch.Tensor) -> torch.Tensor:
    """Spec version 2's Gaussian, one word per element: the upper normal quantile of v in (0, 0.5) by a
    degree-5 polynomial per octave of v (docs/noise.md), the sign from bit 31."""
    dev = words.device
    m = (words >> 8) & 0x7FFFFF
    v = (2 * m + 1).to(torch.float32) * _f32(0x33000000, dev)  # * 2**-25: exact, in (0, 0.5)
    b = v.view(torch.int32).to(torch.int64)
    j = (b >> 23) - spec.GAUSSIAN_V2_BIAS
    f = ((b & 0x7FFFFF) | 0x3F800000).to(torch.int32).view(torch.float32) - 1.0  # exact, in [0, 1)
    c = torch.tensor(spec.GAUSSIAN_V2_COEFFS, dtype=torch.int64, device=dev).to(torch.int32).view(torch.float32)[j]
    y = c[:, -1]
    for k in range(c.shape[1] - 2, -1, -1):
        y = y * f + c[:, k]  # two float32 operations, each rounded (torch never fuses them)
    return torch.where((words >> 31) == 1, -y, y)


def _rademacher_v2(numel: int, seed: int, key: int, offset: int, device) -> torch.Tensor:
    """Spec version 2's Rademacher: 32 signs per Philox word (element i: counter i // 128, word i % 4,
    bit (i // 4) % 32)."""
    i = offset + torch.arange(numel, dtype=torch.int64, device=device)
    n = spec.RADEMACHER_V2_ELEMENTS
    c_first = offset // n
    c = c_first + torch.arange((offset + numel - 1) // n - c_first + 1, dtype=torch.int64, device=device)
    words = _counter_words(c, seed, key, spec.TAG_NOISE, 2)[i // n - c_first, i % 4]
    return torch.where(((words >> ((i // 4) % 32)) & 1) == 1, -1.0, 1.0).to(torch.float32)


def transform(words: torch.Tensor, dist: str, version: int = 1) -> torch.Tensor:
    """Map the words of whole groups to float32 z. v1's Gaussian pairs lanes (0, 1) and (2, 3) of each group.
    (Rademacher v2 takes its words per 128 elements, not per group: see noise.)"""
    dev = words.device
    if dist == "gaussian" and version == 2:
        return gaussian_v2(words)
    if dist == "rademacher":
        return torch.where((words >> 31) == 1, -1.0, 1.0).to(torch.float32)
    if dist == "uniform":
        v = (((words >> 8) << 1) + 1 - 0x1000000).to(torch.float32) * _f32(_TWO_M24, dev)
        return v * _f32("SQRT3", dev)
    if dist != "gaussian":
        raise ValueError(f"the torch backend has no dist {dist!r}; portable dists are {spec.PORTABLE_DISTS}")
    za, zb = gaussian_pair(words[0::2], words[1::2])
    return torch.stack([za, zb], dim=1).reshape(-1)


def noise(numel: int, seed: int, key: int, offset: int, dist: str, device, version: int = 1) -> torch.Tensor:
    """float32 z of elements offset .. offset+numel-1 of tensor `key` (flat), under spec `version`."""
    if numel == 0:
        return torch.empty(0, dtype=torch.float32, device=device)
    if dist == "rademacher" and version == 2:
        return _rademacher_v2(numel, seed, key, offset, device)
    flat, start = _group_words(numel, seed, key, offset, spec.TAG_NOISE, device, version)
    return transform(flat, dist, version)[start : start + numel]


def round_nearest(s: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """float32 -> dtype, round to nearest even (torch's own conversion), returned as float32."""
    return s.to(dtype).to(torch.float32)


def round_stochastic(s: torch.Tensor, r: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """float32 -> dtype, rounding away from zero with probability equal to the dropped fraction.

    bf16 and normal fp16: add the random word's top bits to the bits the format drops, then cut them.
    fp16 subnormals (|s| < 2**-14, grid 2**-24): floor on the grid, up if a 24-bit uniform < fraction.
    NaN rounds to nearest. Returned as float32.
    """
    if dtype == torch.float32:
        return s
    b = s.view(torch.int32).to(torch.int64) & _M32
    a = b & 0x7FFFFFFF
    nan = a > 0x7F800000
    if dtype == torch.bfloat16:
        out = (((b + (r >> 16)) >> 16) << 16) & _M32
    elif dtype == torch.float16:
        normal = ((b + (r >> 19)) & (_M32 ^ 0x1FFF))
        q = (a.to(torch.int32).view(torch.float32)) * _f32(_TWO_24, s.device)
        fl = torch.floor(q)
        uni = (r >> 8).to(torch.float32) * _f32(_TWO_M24, s.device)
        mag = (fl + torch.where(uni < q - fl, 1.0, 0.0)) * _f32(_TWO_M24, s.device)
        sub = (mag.view(torch.int32).to(torch.int64) & _M32) | (b & 0x80000000)
        out = torch.where(a >= 0x38800000, normal, sub)
    else:
        raise ValueError(f"stochastic rounding to {dtype} is not defined")
    out_f = out.to(torch.int32).view(torch.float32).to(dtype).to(torch.float32)
    return torch.where(nan, round_nearest(s, dtype), out_f)


def update_(tensor: torch.Tensor, seeds, coeffs, key: int, offset: int, dist: str, rounding: str,
            source: torch.Tensor | None = None, version: int = 1) -> bool:
    """For each (seed, coeff) in order, w = round(w + float32(coeff) * z(seed)); w starts as `source`
    (default: the tensor itself) and ends in `tensor`. Returns whether `tensor` now holds an inf or NaN."""
    if tensor.numel() == 0:
        return False
    w = (tensor if source is None else source).reshape(-1).to(torch.float32)
    for seed, coeff in zip(seeds, coeffs):
        c = torch.tensor(coeff, dtype=torch.float32, device=tensor.device)
        s = w + c * noise(w.numel(), seed, key, offset, dist, tensor.device, version)
        if rounding == "stochastic" and tensor.dtype != torch.float32:
            r = random_words(w.numel(), seed, key, offset, spec.TAG_ROUNDING, tensor.device, version)
            w = round_stochastic(s, r, tensor.dtype)
        else:
            w = round_nearest(s, tensor.dtype)
    tensor.copy_(w.view(tensor.shape))
    return not bool(torch.isfinite(w).all())
