"""The perturbation engine: the one place that knows how a model's trainable parameters are laid out
over devices, shards and offload, and that turns "w += c z(seed)" into kernel launches over them.

A trainable parameter is a *slot*: its name (a tied weight is one slot, named by its first name), its
noise key (`param_key` of that name), its param group, and where to find it. When the engine knows the
model, a slot is found as (owning module, attribute name) and looked up at every use, because wrappers
swap parameter objects: FSDP2 swaps sharded and unsharded ones around each forward, accelerate's
dispatch loads offloaded ones inside the forward. `offload.storage_of` says where an offloaded
parameter's values really live. At each use a slot resolves (`_resolve`) to its *local tensor*, the
dense tensor holding this process's values, and its *pieces*: dense views of it with their global
element offsets, which is what the noise contract needs to give every shard the bits the whole tensor
would get:

  plain tensor / nn.Parameter   one piece, offset 0
  DTensor Replicate()           the whole local tensor at offset 0 (every rank writes the same)
  DTensor Shard(0)              one piece: the local rows, offset = first global row * row size
                                (uneven and empty shards included)
  DTensor Shard(1)              one piece per local row r: offset = r * global row size + first local
                                column * size of the trailing dims
  anything else                 refused by name: other placements (Partial, Shard(k > 1), strided
                                shards), meshes of more than one dimension, other tensor subclasses

Kernel launches: one `ops.update_` per (param group, device, dtype), since param groups may carry
different coefficients and a launch runs on one device. FSDP2 modules are resharded before every
write: a module that kept its parameters unsharded after a forward (FSDP2's root does by default)
would otherwise all-gather nothing at the next forward and ignore the write.

Shadow mode (`shadow=True`): a forward pre-hook on every module that owns a trainable parameter swaps
in a perturbed copy (for a DTensor: a DTensor over a perturbed copy of the local tensor) while a
`perturbed(...)` block is active in this thread, and a forward hook drops it. Under FSDP2 the hooks
run inside FSDP's own (FSDP unshards first), so they see and perturb the whole tensor, at offset 0.

Public API (ZOSGD / ZOAdam and zofed's Replica sit on it):

    eng = Engine(model, shadow=True)             # or Engine(named_groups, module=model)
    eng.names, eng.keys                          # per slot: first name, noise key
    eng.params()                                 # the slots' current parameters, in slot order
    eng.pieces()                                 # [Piece(tensor, key, offset, slot)], resolved now
    eng.apply(seeds, coeffs, rounding="nearest")  # w += c_k z(s_k) for each pair in order, one pass
    with eng.running("what"):                    # the model's lock (one ZO call at a time) + eval mode
        loss = eng.perturbed(closure, seed, scale)   # closure() at w + scale z(seed), shadow mode
    eng.evaluate_pair(seed, eps, closure)        # closure() at w + eps z and w - eps z (shadow mode)
    eng.projection(seed, eps, closure)           # (L+ - L-) / (2 eps)
    eng.close()                                  # remove the shadow hooks

`apply`, `evaluate_pair` and `projection` take the model's lock and eval mode themselves; the
optimizers, which hold them for a whole step, call the unlocked `update`, `scale_` and `perturbed`.
"""

from __future__ import annotations

import contextlib
import hashlib
import math
import sys
import threading
import weakref
from dataclasses import dataclass
from typing import Callable, Iterable, Sequence

import torch
from torch import nn

from . import offload, ops, spec

_WRAPPER_PARTS = {"_fsdp_wrapped_module", "_checkpoint_wrapped_module", "_orig_mod"}


def normalize_name(name: str) -> str:
    """Drop wrapper components (DDP's leading 'module.', FSDP, activation checkpointing, torch.compile)."""
    parts = name.split(".")
    while parts and parts[0] == "module":
        parts = parts[1:]
    return ".".join(p for p in parts if p not in _WRAPPER_PARTS)


def param_key(name: str) -> int:
    """The stable 32-bit noise key of a parameter: blake2b of its normalized name."""
    digest = hashlib.blake2b(normalize_name(name).encode(), digest_size=4).digest()
    return int.from_bytes(digest, "little")


@dataclass
class Piece:
    """A dense tensor the kernels write, with its noise key and the global index of its first element."""
    tensor: torch.Tensor
    key: int
    offset: int
    slot: int  # index into Engine.names


@dataclass
class _Slot:
    name: str
    key: int
    group: int
    owner: nn.Module | None  # with attr: where the parameter is looked up at each use
    attr: str
    param: torch.Tensor  # the parameter at construction (optimizer state is keyed by it)
    plain: torch.Tensor | None = None  # the last tensor resolved, when it was a plain one (its layout is fixed)


@dataclass
class _Layout:
    """A parameter resolved: its local dense tensor and the (part, global offset) pieces of it, where part
    indexes the local tensor (None: all of it); `wrap` makes a tensor like the parameter from a copy of
    the local tensor (shadow mode)."""
    local: torch.Tensor
    parts: list[tuple[int | None, int]]
    wrap: Callable[[torch.Tensor], torch.Tensor]


def _same(t: torch.Tensor) -> torch.Tensor:
    return t


def shard_parts(global_shape: Sequence[int], dim: int, start: int, local_rows: int) -> list[tuple[int | None, int]]:
    """The pieces of a shard along `dim` (0 or 1) whose first index there is `start`: (part, global offset)
    with part None for the whole local tensor, or a local row index."""
    row = math.prod(global_shape[1:])
    if dim == 0:
        return [(None, start * row)]
    return [(r, r * row + start * math.prod(global_shape[2:])) for r in range(local_rows)]


def _dtensor_type():
    """DTensor's class if torch.distributed.tensor is loaded (no DTensor can exist otherwise)."""
    mod = sys.modules.get("torch.distributed.tensor")
    return getattr(mod, "DTensor", None)


def _layout(p: torch.Tensor, what: str) -> _Layout:
    """How `p` (named by `what` in errors) is laid out on this process; refuses what the engine cannot write."""
    dtensor = _dtensor_type()
    if dtensor is None or not isinstance(p, dtensor):
        ops.check_tensor(p, what)  # plain tensors pass; other subclasses are refused there, by name
        return _Layout(p, [(None, 0)], _same)
    from torch.distributed.tensor import Replicate, Shard
    from torch.distributed.tensor._utils import compute_local_shape_and_global_offset

    placements, mesh = tuple(p.placements), p.device_mesh
    if mesh.ndim != 1:
        raise ValueError(f"{what} is a DTensor on a {mesh.ndim}-D device mesh {tuple(mesh.shape)} with placements "
                         f"{placements}; the engine supports 1-D meshes (FSDP2 or tensor parallel alone)")
    local = p.to_local()
    ops.check_tensor(local, f"{what} (the local tensor of a DTensor)")
    (placement,) = placements
    if isinstance(placement, Replicate):
        parts = [(None, 0)]
    elif type(placement) is Shard and placement.dim in (0, 1):
        local_shape, offset = compute_local_shape_and_global_offset(p.shape, mesh, placements)
        if tuple(local.shape) != tuple(local_shape):
            raise ValueError(f"{what}: the local tensor's shape {tuple(local.shape)} is not the {tuple(local_shape)} "
                             f"that {placement!r} of {tuple(p.shape)} gives this rank")
        parts = shard_parts(p.shape, placement.dim, offset[placement.dim], local.shape[0])
    else:
        raise ValueError(f"{what} is a DTensor with placement {placement!r}; the engine perturbs Replicate(), Shard(0) "
                         "and Shard(1) parameters (FSDP2, tensor parallel); a Partial tensor has no values to "
                         "perturb until it is reduced")

    def wrap(copy: torch.Tensor) -> torch.Tensor:
        return dtensor.from_local(copy, mesh, placements, run_check=False, shape=p.shape, stride=p.stride())

    return _Layout(local, parts, wrap)


# One lock per model, whichever optimizers or engines step it (see `Engine.running`).
_MODEL_LOCKS: "weakref.WeakKeyDictionary[nn.Module, threading.Lock]" = weakref.WeakKeyDictionary()
_MODEL_LOCKS_GUARD = threading.Lock()


def _model_lock(module: nn.Module | None) -> threading.Lock:
    if module is None:
        return threading.Lock()
    with _MODEL_LOCKS_GUARD:
        return _MODEL_LOCKS.setdefault(module, threading.Lock())


@contextlib.contextmanager
def _eval_mode(module: nn.Module | None):
    """Run the forwards without dropout (as MeZO's zo_forward); training flags come back after."""
    training = [m for m in module.modules() if m.training] if module is not None else []
    for m in training:
        m.training = False
    try:
        yield
    finally:
        for m in training:
            m.training = True


def _fsdp_modules(module: nn.Module | None) -> list[nn.Module]:
    if module is None or "torch.distributed.fsdp" not in sys.modules:  # no FSDP2 module can exist then
        return []
    from torch.distributed.fsdp import FSDPModule

    return [m for m in module.modules() if isinstance(m, FSDPModule)]


def _named_param_groups(params) -> tuple[nn.Module | None, list[list[tuple[str, torch.Tensor]]]]:
    if isinstance(params, nn.Module):
        return params, [list(params.named_parameters())]
    return None, [list(g) for g in params]


class Engine:
    """The trainable parameters of a model as slots, and the kernel launches over them (module docstring).

    params: a model, or a list of param groups, each a list of (name, parameter) pairs; parameters with
        requires_grad=False are left out. module: the model when `params` are groups (shadow mode hooks
        its modules; parameters are found through it). shadow: place the shadow-mode hooks.
    """

    def __init__(self, params, *, module: nn.Module | None = None, shadow: bool = False, dist: str = "gaussian",
                 backend: str | None = None, spec_version: int = spec.SPEC_VERSION):
        given, groups = _named_param_groups(params)
        self.module = module or given
        self.dist, self.backend, self.spec_version = dist, backend, spec_version
        self._fsdp = _fsdp_modules(self.module)
        self._reshard()  # so that slots see the sharded parameters even right after a forward
        where = self._owners()
        self._slots: list[_Slot] = []
        self._slot_of: dict[int, int] = {}
        names_of_key: dict[int, str] = {}
        for gi, group in enumerate(groups):
            for name, p in group:
                if not p.requires_grad or id(p) in self._slot_of:
                    continue
                key, norm = param_key(name), normalize_name(name)
                if names_of_key.setdefault(key, norm) != norm:
                    raise ValueError(f"parameters {names_of_key[key]!r} and {name!r} hash to the same noise key; "
                                     "rename one of them")
                owner, attr = where.get(id(p), [(None, "")])[0]
                for other, other_attr in where.get(id(p), [])[1:]:  # a tied weight's other holders: refused if
                    offload.storage_of(other, other_attr, p)          # offloaded (their copy would miss updates)
                self._slot_of[id(p)] = len(self._slots)
                self._slots.append(_Slot(name, key, gi, owner, attr, p))
                self._resolve(self._slots[-1])  # refuse what cannot be written here, not at the first step
        self.names = [s.name for s in self._slots]
        self.keys = [s.key for s in self._slots]
        self._lock = _model_lock(self.module)
        self._shadow = None
        if shadow:
            if self.module is None:
                raise ValueError("shadow mode hooks the model's modules: give the model (module=)")
            owned = {mod: [(attr, self._slot_of[id(p)]) for attr, p in entries if id(p) in self._slot_of]
                     for mod, entries in self._owned_by_module().items()}
            self._shadow = _Shadow(self, {m: e for m, e in owned.items() if e})

    # copy.deepcopy(model) copies the shadow hooks and so this engine: the copy serves the copied model, whose
    # lock is its own (a lock cannot be copied), and whose parameters have other ids than the ones _slot_of holds.
    def __getstate__(self):
        state = self.__dict__.copy()
        del state["_lock"], state["_slot_of"]
        return state

    def __setstate__(self, state):
        self.__dict__.update(state)
        self._slot_of = {id(s.param): i for i, s in enumerate(self._slots)}
        self._lock = _model_lock(self.module)

    # ------------------------------------------------------------ where the parameters are

    def _owned_by_module(self) -> dict[nn.Module, list[tuple[str, torch.Tensor]]]:
        if self.module is None:
            return {}
        return {mod: [(a, p) for a, p in mod._parameters.items() if p is not None] for mod in self.module.modules()}

    def _owners(self) -> dict[int, list[tuple[nn.Module, str]]]:
        """Every (module, attribute) holding each parameter, in module order (a tied weight has several)."""
        found: dict[int, list[tuple[nn.Module, str]]] = {}
        for mod, entries in self._owned_by_module().items():
            for attr, p in entries:
                found.setdefault(id(p), []).append((mod, attr))
        return found

    def _current(self, slot: _Slot) -> torch.Tensor:
        """The slot's parameter as its owning module holds it now."""
        return slot.owner._parameters[slot.attr] if slot.owner is not None else slot.param

    def _resolve(self, slot: _Slot) -> _Layout:
        """Where the slot's values live now: the one resolver of parameters to dense tensors for writes."""
        p = self._current(slot)
        stored = offload.storage_of(slot.owner, slot.attr, p) if slot.owner is not None else None
        t = p if stored is None else stored
        if t is slot.plain:  # spares the checks on every write (the kernels check their tensors anyway)
            return _Layout(t, [(None, 0)], _same)
        lay = _layout(t, f"parameter {slot.name!r}")
        slot.plain = t if lay.wrap is _same else None
        return lay

    def params(self) -> list[torch.Tensor]:
        """The slots' parameters as constructed (what optimizer state is keyed by), in slot order."""
        return [s.param for s in self._slots]

    def slot_of(self, p: torch.Tensor) -> int:
        return self._slot_of[id(p)]

    def group_of(self, slot: int) -> int:
        return self._slots[slot].group

    def local(self, slot: int) -> torch.Tensor:
        """The dense tensor holding the slot's values on this process (weight decay, momentum, Adam)."""
        self._reshard()
        return self._resolve(self._slots[slot]).local

    def pieces(self) -> list[Piece]:
        self._reshard()
        out = []
        for i, slot in enumerate(self._slots):
            lay = self._resolve(slot)
            out += [Piece(lay.local if part is None else lay.local[part], slot.key, off, i) for part, off in lay.parts]
        return out

    def _reshard(self) -> None:
        for m in self._fsdp:
            m.reshard()

    # ------------------------------------------------------------ writes

    def update(self, pairs_of: Callable[[int], list[tuple[int, float]]], rounding: str = "nearest") -> list[int]:
        """w += c z(s) for each (s, c) in pairs_of(group) in order, rounding after each: one ops.update_ per
        (param group, device, dtype). Returns the slots that hold inf/NaN afterwards (the kernels find that
        inside their pass, so every launch was applied)."""
        launches: dict[tuple, list[Piece]] = {}
        for piece in self.pieces():
            if piece.tensor.numel():
                t = piece.tensor
                launches.setdefault((self._slots[piece.slot].group, t.device, t.dtype), []).append(piece)
        bad: list[int] = []
        pairs_by_group = {group: pairs_of(group) for group, _, _ in launches}
        for (group, _, _), pieces in launches.items():
            pairs = pairs_by_group[group]
            if not pairs:
                continue
            try:
                ops.update_([p.tensor for p in pieces], [s for s, _ in pairs], [c for _, c in pairs],
                            keys=[p.key for p in pieces], offsets=[p.offset for p in pieces], dist=self.dist,
                            rounding=rounding, backend=self.backend, spec_version=self.spec_version)
            except ops.NonFiniteError as exc:
                bad += [pieces[k].slot for k in exc.indices if pieces[k].slot not in bad]
        return sorted(bad)

    def scale_(self, factor_of: Callable[[int], float]) -> None:
        """w *= factor_of(group) for every slot (weight decay), on the local tensors."""
        self._reshard()
        for slot in self._slots:
            f = factor_of(slot.group)
            if f != 1:
                self._resolve(slot).local.mul_(f)

    def direction(self, slot: int, pairs: Iterable[tuple[int, float]]) -> torch.Tensor:
        """sum_k c_k z(s_k) over the slot's local tensor, in float32 (a temporary as large as it)."""
        s = self._slots[slot]
        lay = self._resolve(s)
        d = torch.zeros(lay.local.shape, dtype=torch.float32, device=lay.local.device)
        for seed, c in pairs:
            for part, off in lay.parts:
                view = d if part is None else d[part]
                view.add_(ops.noise(view.shape, seed, key=s.key, offset=off, dist=self.dist, device=view.device,
                                    backend=self.backend, spec_version=self.spec_version), alpha=c)
        return d

    # ------------------------------------------------------------ the public API for callers without an optimizer

    @contextlib.contextmanager
    def running(self, what: str):
        """One ZO call at a time per model (whatever optimizer or engine makes it), forwards in eval mode."""
        if not self._lock.acquire(blocking=False):
            raise RuntimeError(f"{what}: another ZO optimizer is stepping this model right now; a model takes "
                               "one ZO call at a time (use one model copy per thread)")
        try:
            with _eval_mode(self.module):
                yield
        finally:
            self._lock.release()

    @torch.no_grad()
    def apply(self, seeds: Sequence[int], coeffs: Sequence[float], rounding: str = "nearest") -> None:
        """w += coeff_k z(seed_k) for each pair in order, in one pass per launch, rounding to each weight's dtype
        after every pair (bit-identical to one call per pair)."""
        if len(seeds) != len(coeffs):
            raise ValueError(f"got {len(seeds)} seeds but {len(coeffs)} coeffs")
        pairs = list(zip(seeds, coeffs))
        with self.running("apply()"):
            bad = self.update(lambda g: pairs, rounding)
        if bad:
            raise ops.NonFiniteError(f"apply(): {self.describe(bad)} now hold inf/NaN (the update overflows the dtype)",
                                     bad)

    def perturbed(self, closure: Callable, seed: int, scale: float | Sequence[float]):
        """closure() with every module's forward seeing w + scale z(seed) (shadow mode; the weights are never
        written). scale: one number, or one per param group. Call inside `running`."""
        if self._shadow is None:
            raise RuntimeError("perturbed forwards need the shadow hooks: construct the Engine with shadow=True")
        groups = 1 + max((s.group for s in self._slots), default=0)
        scales = [float(scale)] * groups if isinstance(scale, (int, float)) else list(scale)
        return self._shadow.loss(closure, seed, scales)

    @torch.no_grad()
    def evaluate_pair(self, seed: int, eps: float, closure: Callable):
        """closure()'s outputs at w + eps z(seed) and at w - eps z(seed), whatever they are; shadow mode."""
        with self.running("evaluate_pair()"):
            return self.perturbed(closure, seed, eps), self.perturbed(closure, seed, -eps)

    def projection(self, seed: int, eps: float, closure: Callable) -> float:
        """(L(w + eps z) - L(w - eps z)) / (2 eps), the closure returning a scalar loss."""
        plus, minus = self.evaluate_pair(seed, eps, closure)
        return (float(plus) - float(minus)) / (2 * eps)

    def describe(self, slots: Iterable[int]) -> str:
        """Slots named for messages: 'name' (dtype), ..."""
        return ", ".join(f"{self._slots[i].name!r} ({self._resolve(self._slots[i]).local.dtype})" for i in slots)

    @property
    def peak_temp_bytes(self) -> int:
        return self._shadow.peak_temp_bytes if self._shadow is not None else 0

    def reset_peak(self) -> None:
        if self._shadow is not None:
            self._shadow.peak_temp_bytes = 0

    def close(self) -> None:
        """Remove the shadow hooks (the model then runs unperturbed forwards as usual)."""
        if self._shadow is not None:
            self._shadow.remove()
            self._shadow = None


class _Arena:
    """A stack allocator over one byte buffer per device for shadow-mode copies.

    Modules run one after another (nesting is rare), so the live copies fit in about the largest
    module's bytes; reusing one buffer across forwards also spares the page faults of allocating a
    fresh tensor as large as an embedding for every forward.
    """

    def __init__(self):
        self.bufs: dict[torch.device, torch.Tensor] = {}
        self.top: dict[torch.device, int] = {}
        self.outside = 0  # bytes of nested copies that did not fit the buffer

    def take(self, like: torch.Tensor) -> tuple[torch.Tensor, int]:
        dev, nbytes = like.device, like.numel() * like.element_size()
        top = self.top.get(dev, 0)
        start = (top + 63) // 64 * 64
        buf = self.bufs.get(dev)
        if buf is None or start + nbytes > buf.numel():
            if top:  # a copy is live in the buffer: this nested one lives on its own
                self.outside += nbytes
                return torch.empty_like(like), -1
            buf = self.bufs[dev] = torch.empty(nbytes, dtype=torch.uint8, device=dev)
            start = 0
        self.top[dev] = start + nbytes
        return buf[start:start + nbytes].view(like.dtype).view(like.shape), top

    def give_back(self, tensor: torch.Tensor, mark: int) -> None:
        if mark < 0:
            self.outside -= tensor.numel() * tensor.element_size()
        else:
            self.top[tensor.device] = mark

    def in_use(self) -> int:
        return sum(self.top.values()) + self.outside


class _Shadow:
    """Forward hooks that give each module perturbed weights just in time (see the module docstring)."""

    def __init__(self, engine: Engine, owned: dict[nn.Module, list[tuple[str, int]]]):
        self.engine, self.owned = engine, owned
        self.handles = []
        for mod in owned:
            self.handles += offload.add_forward_hooks(mod, self._pre, self._post)
        self.arena = _Arena()
        self.active: tuple[int, list[float]] | None = None
        self.thread: int | None = None  # the stepping thread: other threads' forwards pass through unperturbed
        # per swapped module: (module, [(attr, original, swapped in, arena copy, mark)], embedding padding_idx)
        self.swapped: list[tuple[nn.Module, list, int | None]] = []
        self.peak_temp_bytes = 0

    def _mine(self) -> bool:
        return self.active is not None and threading.get_ident() == self.thread

    def _pre(self, mod, args):
        if not self._mine():
            return None
        if self._gatherable(mod, args):
            return self._pre_embedding(mod, args)
        seed, scales = self.active
        eng = self.engine
        entries, launches = [], {}
        for attr, i in self.owned[mod]:
            slot = eng._slots[i]
            original = mod._parameters[attr]
            lay = _layout(original, f"parameter {slot.name!r}")  # as the forward sees it (FSDP2: unsharded)
            tmp, mark = self.arena.take(lay.local)
            entries.append((attr, original, lay.wrap(tmp), tmp, mark))
            for part, off in lay.parts:
                dst, src = (tmp, lay.local) if part is None else (tmp[part], lay.local[part])
                if src.numel():
                    launch = launches.setdefault((scales[slot.group], src.device), [])
                    launch.append((dst, src, slot.key, off, i))
        self.swapped.append((mod, entries, None))
        for (scale, _), items in launches.items():
            self._copy(items, seed, scale)
        for attr, _, swapped_in, _, _ in entries:
            mod._parameters[attr] = swapped_in
        self.peak_temp_bytes = max(self.peak_temp_bytes, self.arena.in_use())
        return None

    def _copy(self, items, seed: int, scale: float) -> None:
        """dst = round(src + scale z(seed)) for each (dst, src, key, offset, slot): one fused pass."""
        try:
            ops.perturb_([d for d, *_ in items], seed, scale, keys=[k for _, _, k, _, _ in items],
                         offsets=[o for *_, o, _ in items], sources=[s for _, s, *_ in items],
                         dist=self.engine.dist, backend=self.engine.backend, spec_version=self.engine.spec_version)
        except ops.NonFiniteError as exc:
            slots = sorted({items[k][4] for k in exc.indices})
            raise ops.NonFiniteError(
                f"the perturbed copy w + {scale:g} z of {self.engine.describe(slots)} is not finite (eps overflows "
                "the dtype there). The weights themselves are unchanged: shadow mode writes only copies. Lower eps, "
                "or keep these weights in float32/bfloat16.", slots) from None

    def _gatherable(self, mod, args) -> bool:
        """A plain nn.Embedding looking up fewer than half its rows: perturbing only those rows is cheaper."""
        return (type(mod) is nn.Embedding and mod.max_norm is None and len(self.owned[mod]) == 1 and args
                and isinstance(args[0], torch.Tensor) and args[0].numel() * 2 < mod.num_embeddings
                and type(mod._parameters[self.owned[mod][0][0]]) in (torch.Tensor, nn.Parameter))

    def _pre_embedding(self, mod, args):
        """Swap in a table of just the looked-up rows, perturbed with their global element offsets (so
        they equal the same rows of a fully perturbed table), and remap the indices into it."""
        seed, scales = self.active
        attr, i = self.owned[mod][0]
        slot = self.engine._slots[i]
        p = mod._parameters[attr]
        rows, inverse = torch.unique(args[0], return_inverse=True)
        dim = p.shape[1]
        table, mark = self.arena.take(p[: rows.numel()])
        self.swapped.append((mod, [(attr, p, table, table, mark)], mod.padding_idx))
        row_ids = rows.tolist()
        self._copy([(table[j], p[r], slot.key, r * dim, i) for j, r in enumerate(row_ids)], seed, scales[slot.group])
        mod._parameters[attr] = table
        mod.padding_idx = None  # only affects gradients, and an index into the full table is out of range here
        self.peak_temp_bytes = max(self.peak_temp_bytes, self.arena.in_use())
        return (inverse.view_as(args[0]),) + tuple(args[1:])

    def _post(self, mod, args, output):
        if self._mine() and self.swapped and self.swapped[-1][0] is mod:
            self._undo(self.swapped.pop())

    def _undo(self, swap) -> None:
        mod, entries, padding_idx = swap
        for attr, original, swapped_in, tmp, mark in reversed(entries):
            # FSDP2's own post-forward hook runs first and may have put the sharded parameter back: keep it
            if mod._parameters[attr] is swapped_in:
                mod._parameters[attr] = original
            self.arena.give_back(tmp, mark)
        if padding_idx is not None:
            mod.padding_idx = padding_idx

    def loss(self, closure, seed: int, scales: list[float]):
        self.active, self.thread = (seed, scales), threading.get_ident()
        try:
            return closure()
        finally:  # also after an exception inside the forward
            while self.swapped:
                self._undo(self.swapped.pop())
            self.active = None

    def remove(self):
        for h in self.handles:
            h.remove()
