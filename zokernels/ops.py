"""Public ops: argument checks, backend choice, and torch.library registration.

Backends share one interface, `noise(out, offset, seed, key, dist, version)` and
`update_(tensors, seeds, coeffs, keys, offsets, dist, rounding, sources, version) -> flags`, where flags holds
one integer per tensor (a list, or a 1-D tensor on the device), nonzero where the tensor holds an inf or
NaN after the pass; each backend finds that inside its own pass over the tensor:
  "cpu"    the C++ extension (CPU tensors),
  "triton" the Triton kernels (CUDA tensors; CPU tensors under TRITON_INTERPRET=1),
  "torch"  the pure-torch reference (any device).
The default follows the device (cpu -> "cpu", cuda -> "triton" if importable else "torch");
`backend=` or the ZOKERNELS_BACKEND environment variable overrides it.
"""

from __future__ import annotations

import math
import operator
import os
from typing import Sequence

import torch

from . import _cpu, reference, spec

_FLOAT_DTYPES = (torch.float32, torch.bfloat16, torch.float16)
BACKENDS = ("cpu", "torch", "triton")
# float32(c) is inf from here on: the midpoint between FLT_MAX and 2**128 rounds to even, which is up.
_F32_OVERFLOW = 2.0**128 - 2.0**103


class NonFiniteError(FloatingPointError):
    """An update pass left inf or NaN in some tensors. The pass was applied (the kernels find this inside
    their single pass, too late to undo it); `indices` are the positions of those tensors in the call."""

    def __init__(self, message: str, indices: Sequence[int]):
        super().__init__(message)
        self.indices = list(indices)


# ---------------------------------------------------------------- backends


class _TorchBackend:
    @staticmethod
    def noise(out, offset, seed, key, dist, version):
        out.copy_(reference.noise(out.numel(), seed, key, offset, dist, out.device, version).view(out.shape))

    @staticmethod
    def update_(tensors, seeds, coeffs, keys, offsets, dist, rounding, sources, version):
        return [int(reference.update_(t, seeds, coeffs, key, off, dist, rounding, sources[i] if sources else None,
                                      version))
                for i, (t, key, off) in enumerate(zip(tensors, keys, offsets))]


def _triton_module():
    try:
        from .triton import noise as triton_noise
    except ImportError as exc:
        raise RuntimeError(
            f"zokernels' Triton backend needs the triton package ({exc}); `pip install triton`, "
            "or pass backend='cpu' / 'torch'."
        ) from exc
    return triton_noise


def _triton_runs_on(device: torch.device) -> bool:
    return device.type == "cuda" or (device.type == "cpu" and os.environ.get("TRITON_INTERPRET") == "1")


def backends() -> list[str]:
    """The backends usable in this process: "cpu" (C++), "torch", and "triton" where it can run."""
    names = ["cpu"] if _cpu.available() else []
    names.append("torch")
    if (torch.cuda.is_available() or os.environ.get("TRITON_INTERPRET") == "1") and _has_triton():
        names.append("triton")
    return names


def _has_triton() -> bool:
    try:
        _triton_module()
        return True
    except RuntimeError:
        return False


def _default_backend(device: torch.device, dist: str) -> str:
    if dist == "gaussian-fast":
        return "triton"
    if device.type == "cuda":
        return "triton" if _has_triton() else "torch"
    return "cpu" if device.type == "cpu" else "torch"


def _resolve(backend: str | None, device: torch.device, dist: str, where: str) -> str:
    """The backend to run on `device`; `where` names the argument that put the work there, for errors."""
    name = backend or os.environ.get("ZOKERNELS_BACKEND") or _default_backend(device, dist)
    if name not in BACKENDS:
        raise ValueError(f"unknown backend {name!r}; choose one of {BACKENDS}")
    if dist == "gaussian-fast" and (name != "triton" or not _triton_runs_on(device)):
        raise ValueError(
            f"dist='gaussian-fast' is an approximate stream that exists only on CUDA devices, but {where}; use "
            "dist='gaussian', the portable Gaussian that gives the same bits on every device"
        )
    if name == "cpu":
        if device.type != "cpu":
            raise ValueError(f"backend 'cpu' runs on CPU tensors, but {where}")
        _cpu.require()
    if name == "triton" and not _triton_runs_on(device):
        raise ValueError(f"backend 'triton' needs CUDA tensors (or TRITON_INTERPRET=1 for CPU ones), but {where}")
    return name


def _backend(name: str):
    if name == "cpu":
        return _cpu
    if name == "torch":
        return _TorchBackend
    return _triton_module()


# ---------------------------------------------------------------- argument checks


def _as_int(value, what: str, lo: int, hi: int) -> int:
    if isinstance(value, bool) or isinstance(value, float):
        raise TypeError(f"{what} must be an integer, got {type(value).__name__} {value!r}")
    try:
        v = operator.index(value)
    except TypeError:
        raise TypeError(f"{what} must be an integer, got {type(value).__name__}") from None
    if not lo <= v <= hi:
        raise ValueError(f"{what} = {v} is out of range [{lo}, {hi}]")
    return v


def _as_coeff(value, what: str) -> float:
    try:
        c = float(value)
    except (TypeError, ValueError):
        raise TypeError(f"{what} must be a real number, got {type(value).__name__}") from None
    if not math.isfinite(c):
        raise ValueError(f"{what} is {c}: a non-finite coefficient would destroy the weights (NaN loss upstream?)")
    if abs(c) >= _F32_OVERFLOW:
        raise ValueError(f"{what} = {c:g} overflows float32, where the kernels compute (largest finite "
                         f"{torch.finfo(torch.float32).max:g}): it would write inf/NaN into every weight")
    return c


def _as_list(values, what: str) -> list:
    try:
        return list(values)
    except TypeError:
        raise TypeError(f"{what} must be a sequence, got {type(values).__name__}") from None


def _check_dist_rounding(dist: str, rounding: str, version: int) -> None:
    if dist not in spec.DISTS:
        raise ValueError(f"unknown dist {dist!r}; choose one of {spec.DISTS}")
    if rounding not in spec.ROUNDINGS:
        raise ValueError(f"unknown rounding {rounding!r}; choose one of {spec.ROUNDINGS}")
    if isinstance(version, bool) or not isinstance(version, int) or version not in spec.SPEC_VERSIONS:
        raise ValueError(f"unknown spec_version {version!r}; this zokernels implements {spec.SPEC_VERSIONS}")
    if dist == "gaussian-fast" and version != 1:
        raise ValueError("dist='gaussian-fast' is outside the noise contract and has no spec version 2; use "
                         "dist='gaussian' with spec_version=2 for the cheaper portable Gaussian")


def _check_tensors(tensors, what: str = "tensors") -> list[torch.Tensor]:
    if isinstance(tensors, torch.Tensor):
        tensors = [tensors]
    if isinstance(tensors, (str, bytes)) or not hasattr(tensors, "__iter__"):
        raise TypeError(f"{what} must be a tensor or a sequence of tensors, got {type(tensors).__name__}")
    tensors = list(tensors)
    for i, t in enumerate(tensors):
        check_tensor(t, f"{what}[{i}]")
        if t.device != tensors[0].device:
            raise ValueError(f"{what}[{i}] is on {t.device} but {what}[0] is on {tensors[0].device}")
    return tensors


def check_tensor(t, name: str) -> None:
    """Refuse, naming it, a tensor the kernels cannot read and write (the optimizers check parameters
    with this at construction)."""
    if not isinstance(t, torch.Tensor):
        raise TypeError(f"{name} is a {type(t).__name__}, not a torch.Tensor")
    # type(), not isinstance: a DTensor wrapped in nn.Parameter passes isinstance(t, nn.Parameter)
    if type(t) is not torch.Tensor and not issubclass(type(t), torch.nn.Parameter):
        raise TypeError(
            f"{name} is a {type(t).__name__}, a torch.Tensor subclass: the kernels write a plain tensor's memory, "
            "which a subclass may not have or may lay out differently. Pass the local data (a DTensor's "
            "to_local(), with its global element offset in offsets=)")
    if t.device.type == "meta":
        raise ValueError(f"{name} is a meta tensor and has no data; materialize it first "
                         "(e.g. module.to_empty(device=...) and load the weights)")
    if t.dtype not in _FLOAT_DTYPES:
        raise TypeError(f"{name} has dtype {t.dtype}; supported: float32, bfloat16, float16")
    if t.layout != torch.strided:
        raise TypeError(f"{name} has layout {t.layout}; only dense (strided) tensors are supported")
    if not t.is_contiguous():
        raise ValueError(f"{name} is not contiguous (shape {tuple(t.shape)}, stride {t.stride()}): the "
                         "noise is defined on the row-major element index, so pass contiguous tensors")


def _per_tensor(values, n: int, what: str, default=None) -> list:
    if values is None:
        if default is None:
            raise TypeError(f"{what} is required: one per tensor")
        return [default] * n
    if isinstance(values, (int, torch.SymInt)) and not isinstance(values, bool):
        values = [values]
    values = list(values)
    if len(values) != n:
        raise ValueError(f"got {len(values)} {what} for {n} tensors; pass one per tensor")
    return values


def _check_update_args(tensors, seeds, coeffs, keys, offsets, dist, rounding, version):
    tensors = _check_tensors(tensors)
    _check_dist_rounding(dist, rounding, version)
    n = len(tensors)
    keys = [_as_int(k, f"keys[{i}]", 0, spec.KEY_MAX) for i, k in enumerate(_per_tensor(keys, n, "keys"))]
    offsets = [_as_int(o, f"offsets[{i}]", 0, spec.INDEX_LIMIT) for i, o in enumerate(_per_tensor(offsets, n, "offsets", 0))]
    for i, (t, o) in enumerate(zip(tensors, offsets)):
        if o + t.numel() > spec.INDEX_LIMIT:
            raise ValueError(f"tensors[{i}]: offset {o} + numel {t.numel()} exceeds the 2**62 element-index limit")
    _check_distinct_noise(tensors, keys, offsets)
    seeds, coeffs = _as_list(seeds, "seeds"), _as_list(coeffs, "coeffs")
    if len(seeds) != len(coeffs):
        raise ValueError(f"got {len(seeds)} seeds but {len(coeffs)} coeffs")
    seeds = [_as_int(s, f"seeds[{k}]", 0, spec.SEED_MAX) for k, s in enumerate(seeds)]
    coeffs = [_as_coeff(c, f"coeffs[{k}]") for k, c in enumerate(coeffs)]
    return tensors, seeds, coeffs, keys, offsets


def _check_distinct_noise(tensors, keys: list[int], offsets: list[int]) -> None:
    """Two tensors with the same key and overlapping element ranges [offset, offset + numel) would get the
    same noise. The same key over disjoint ranges is legitimate: shards or rows of one logical tensor."""
    ranges = sorted((k, o, o + t.numel(), i) for i, (t, k, o) in enumerate(zip(tensors, keys, offsets)) if t.numel())
    # sorted by (key, start): if any two ranges of a key overlap, two neighbours in this order do
    for (key, _, end, i), (next_key, start, _, j) in zip(ranges, ranges[1:]):
        if key == next_key and start < end:
            i, j = sorted((i, j))
            a, b = (f"[{offsets[k]}, {offsets[k] + tensors[k].numel()})" for k in (i, j))
            raise ValueError(
                f"tensors[{i}] and tensors[{j}] both have key {key} and overlapping element ranges {a} and {b}, so "
                "they would get the same noise; give each tensor its own key (or offsets that place shards of one "
                "tensor side by side)")


def _span(t: torch.Tensor) -> tuple[int, int]:
    return t.data_ptr(), t.data_ptr() + t.numel() * t.element_size()


def _check_no_overlap(tensors: Sequence[torch.Tensor], sources: Sequence[torch.Tensor] = ()) -> None:
    """Two views of the same memory would be updated twice (tied weights?) and race in parallel loops;
    a source may be its own destination but must not overlap any other destination."""
    spans = sorted((*_span(t), i) for i, t in enumerate(tensors) if t.numel())
    for (_, end, i), (start, _, j) in zip(spans, spans[1:]):
        if start < end:
            raise ValueError(f"tensors[{i}] and tensors[{j}] overlap in memory (tied weights?); pass each storage once")
    for j, src in enumerate(sources):
        (a, b), (c, d) = _span(src), _span(tensors[j])
        if src.numel() and (a, b) != (c, d) and a < d and c < b:
            raise ValueError(f"sources[{j}] partly overlaps tensors[{j}]")
        for lo, hi, i in spans:
            if i != j and src.numel() and a < hi and lo < b:
                raise ValueError(f"sources[{j}] overlaps tensors[{i}]")


# ---------------------------------------------------------------- torch.library ops


def _to_i64(seed: int) -> int:
    """uint64 seed -> int64 with the same bits: op schemas carry signed 64-bit ints."""
    return seed - 2**64 if seed >= 2**63 else seed


def _from_i64(seed: int) -> int:
    return seed + 2**64 if seed < 0 else seed


def _update_impl(tensors: list[torch.Tensor], seeds: list[int], coeffs: list[float], keys: list[int],
                 offsets: list[int], dist: str, rounding: str, backend: str, sources: list[torch.Tensor],
                 version: int) -> None:
    _check_no_overlap(tensors, sources)
    with torch.no_grad():
        if not seeds:  # a plain copy: nothing to round
            for t, src in zip(tensors, sources):
                t.copy_(src)
            return
        flags = _backend(backend).update_(tensors, [_from_i64(s) for s in seeds], coeffs, keys, offsets, dist,
                                          rounding, sources or None, version)
    bad = [i for i, f in enumerate(flags.tolist() if isinstance(flags, torch.Tensor) else flags) if f]
    if bad:
        raise _non_finite_error(tensors, bad, coeffs, bool(sources))


def _non_finite_error(tensors: list[torch.Tensor], bad: list[int], coeffs: list[float],
                      copies: bool) -> NonFiniteError:
    named = ", ".join(f"tensors[{i}] {tuple(tensors[i].shape)} {tensors[i].dtype}" for i in bad)
    if copies:
        state = f"the pass was applied: the output copies {named} now hold inf/NaN (the sources are untouched)"
    else:
        state = f"the pass was applied to every tensor, and {named} now hold inf/NaN"
    return NonFiniteError(
        f"{state}. Either w + c*z overflowed the dtype (largest |coefficient| {max(abs(c) for c in coeffs):g}: "
        "use smaller coefficients or a wider dtype) or w held inf/NaN already.", bad)


# The custom op is what torch.compile traces; eager calls skip its ~0.1 ms of dispatch (shadow mode
# makes one call per module per forward) and run the same implementation directly.
_update_op = torch.library.custom_op("zokernels::update_", _update_impl, mutates_args=("tensors",))


@_update_op.register_fake
def _(tensors, seeds, coeffs, keys, offsets, dist, rounding, backend, sources, version) -> None:
    return None


def _noise_impl(shape: list[int], seed: int, key: int, offset: int, dist: str, device: torch.device,
                backend: str, version: int) -> torch.Tensor:
    out = torch.empty(shape, dtype=torch.float32, device=device)
    if out.numel():
        _backend(backend).noise(out, offset, _from_i64(seed), key, dist, version)
    return out


_noise_op = torch.library.custom_op("zokernels::noise", _noise_impl, mutates_args=())


@_noise_op.register_fake
def _(shape, seed, key, offset, dist, device, backend, version):
    return torch.empty(shape, dtype=torch.float32, device=device)


# ---------------------------------------------------------------- public API


def noise(shape, seed: int, *, key: int = 0, offset: int = 0, dist: str = "gaussian", device="cpu",
          backend: str | None = None, spec_version: int = spec.SPEC_VERSION) -> torch.Tensor:
    """The float32 z of elements offset .. offset+numel-1 of tensor `key`, shaped `shape`.

    A pure function of (seed, key, element index, dist, spec_version): the same on every backend and
    device, bit for bit (dist="gaussian-fast" excepted). `noise(n, s, offset=o)` equals
    `noise(o + n, s)[o:]`, so a shard reproduces its slice of the whole tensor. spec_version=2 is the
    cheaper stream of docs/noise.md (opt-in; the default stays version 1 forever).
    """
    shape = [shape] if isinstance(shape, int) else _as_list(shape, "shape")
    shape = [_as_int(d, f"shape[{i}]", 0, spec.INDEX_LIMIT) for i, d in enumerate(shape)]
    _check_dist_rounding(dist, "nearest", spec_version)
    seed = _as_int(seed, "seed", 0, spec.SEED_MAX)
    key = _as_int(key, "key", 0, spec.KEY_MAX)
    offset = _as_int(offset, "offset", 0, spec.INDEX_LIMIT)
    if offset + math.prod(shape) > spec.INDEX_LIMIT:
        raise ValueError(f"offset {offset} + numel {math.prod(shape)} exceeds the 2**62 element-index limit")
    device = torch.device(device)
    name = _resolve(backend, device, dist, f"device={device}")
    op = torch.ops.zokernels.noise if torch.compiler.is_compiling() else _noise_impl
    return op(shape, _to_i64(seed), key, offset, dist, device, name, spec_version)


def _check_sources(sources, tensors: list[torch.Tensor]) -> list[torch.Tensor]:
    if sources is None:
        return []
    sources = _check_tensors(sources, "sources")
    if len(sources) != len(tensors):
        raise ValueError(f"got {len(sources)} sources for {len(tensors)} tensors; pass one per tensor")
    for i, (src, t) in enumerate(zip(sources, tensors)):
        if src.shape != t.shape or src.dtype != t.dtype or src.device != t.device:
            raise ValueError(f"sources[{i}] is {tuple(src.shape)} {src.dtype} on {src.device} but tensors[{i}] is "
                             f"{tuple(t.shape)} {t.dtype} on {t.device}")
    return sources


def update_(tensors, seeds, coeffs, *, keys, offsets=None, sources=None, dist: str = "gaussian",
            rounding: str = "nearest", backend: str | None = None, spec_version: int = spec.SPEC_VERSION):
    """For each tensor and each (seed, coeff) in order: w = round(w + float32(coeff) * z(seed)).

    All K pairs are applied in ONE pass over memory, rounding to the tensor's dtype after each, so the
    result is bit-identical to K `perturb_` calls. `keys` gives each tensor's stable noise key;
    `offsets` (default 0) the global index of its first element, for shards of a larger tensor.
    With `sources`, w is read from sources[i] and the result written to tensors[i] (a perturbed copy
    in the same single pass); otherwise the tensors are updated in place. `spec_version` picks the noise
    stream (docs/noise.md; the default, 1, never changes). Returns `tensors`.

    A coefficient that overflows float32 is refused (ValueError) before anything is written. Two tensors
    may share a key only with disjoint element ranges. If the pass leaves inf or NaN in some tensors, it
    raises NonFiniteError afterwards (the pass was applied; `indices` says which tensors hold them).
    """
    ts, seeds, coeffs, keys, offsets = _check_update_args(tensors, seeds, coeffs, keys, offsets, dist, rounding,
                                                          spec_version)
    srcs = _check_sources(sources, ts)
    if ts and (seeds or srcs):
        name = _resolve(backend, ts[0].device, dist, f"tensors[0] is on {ts[0].device}")
        op = torch.ops.zokernels.update_ if torch.compiler.is_compiling() else _update_impl
        op(ts, [_to_i64(s) for s in seeds], coeffs, keys, offsets, dist, rounding, name, srcs, spec_version)
    return tensors


def perturb_(tensors, seed: int, scale: float, *, keys, offsets=None, sources=None, dist: str = "gaussian",
             rounding: str = "nearest", backend: str | None = None, spec_version: int = spec.SPEC_VERSION):
    """For each tensor: w = round(w + float32(scale) * z(seed)), in place or from `sources` (see update_).
    Returns `tensors`."""
    _as_int(seed, "seed", 0, spec.SEED_MAX)  # checked here too, so that errors name perturb_'s arguments
    _as_coeff(scale, "scale")
    return update_(tensors, [seed], [scale], keys=keys, offsets=offsets, sources=sources, dist=dist,
                   rounding=rounding, backend=backend, spec_version=spec_version)
