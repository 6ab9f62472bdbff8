"""Zeroth-order optimizers on the fused noise kernels (MeZO-style ZO-SGD and variants).

    opt = zokernels.ZOSGD(model, lr=1e-6, eps=1e-3, mode="shadow")
    loss = opt.step(lambda: model(**batch).loss)      # the closure runs one forward

Each step draws q seeds from (seed, step, j) by integer hashing, estimates the projected gradient
g_j = (L(w + eps z_j) - L(w - eps z_j)) / (2 eps) with the closure, and applies
w -= lr * mean_j(g_j z_j) with one multi-seed update. Noise keys come from parameter names, so a
run is reproducible across processes, devices and wrappers (DDP/FSDP/compile prefixes are ignored).

Modes (`mode=`):
  "inplace"  weights are perturbed in place: +eps, -2eps, then restore and update fused as
             w += (eps - lr g) z: 3 passes over parameter memory per step (q=1), 2 with
             fuse_steps=True (the update is fused with the next step's +eps; call flush() before
             reading the weights). The restore is not exact in any dtype: w + eps z - 2 eps z + eps z
             rounds three times (float32 too, by an ulp or so; in bf16/fp16 most small updates are lost).
  "shadow"   weights are never written during the forwards: a forward pre-hook on each module that
             owns trainable parameters swaps in a perturbed copy made just in time, and a forward
             hook drops it. The update is the only write, once per step, and restore is exact in
             any dtype. Extra memory: the largest module's trainable weights.

The forwards of a step run in eval mode (no dropout), as MeZO's zo_forward does: two losses under
different dropout masks differ by far more than the perturbation, and training diverges. When the
optimizer knows the model (constructed from it, or with module=), it switches the model to eval mode
for the forwards and restores every submodule's training flag afterwards; with bare named parameters,
put the model in eval mode yourself.

Where the weights live is the engine's business (zokernels.engine): parameters spread over devices,
DTensors of FSDP2 (`fully_shard`) and tensor parallel (each rank perturbs and updates only its shards,
bit-identical to the unsharded run), tied weights once. Build the optimizer after sharding the model.

Weight decay follows MeZO's zo_update: w <- w - lr (g z + wd w), decaying the restored weights (never
the perturbed ones), decoupled in ZOAdam (as AdamW). `ZOSGD(model, weight_decay=wd)` exempts biases
and normalization weights (see `zo_param_groups`); explicit param groups decay as their
"weight_decay" says.

Threads: an optimizer steps one model at a time. A second step(), projection(), evaluate_pair() or
apply_updates() on the same optimizer, or on another optimizer of the same model, while one runs in
another thread raises RuntimeError instead of corrupting the weights. Other threads must not run the
model's forward while a step runs (in shadow mode its modules hold perturbed copies during their
forwards; in place the weights themselves are perturbed).
"""

from __future__ import annotations

import contextlib
import math
import struct
import threading
from typing import Callable, Iterable

import torch
from torch import nn

from . import ops, spec
from .engine import Engine, normalize_name, param_key  # noqa: F401  (param_key, normalize_name: public here too)
from .seeding import derive_seed


# MeZO's zo_update exempts names containing these (case-sensitively; we ignore case, so RoBERTa/BERT's
# "LayerNorm" weights are exempt too, as in Hugging Face's Trainer).
NO_DECAY = ("bias", "layer_norm", "layernorm")


def _is_norm(module: nn.Module) -> bool:
    """LayerNorm, RMSNorm, GroupNorm, BatchNorm and models' own norm classes (LlamaRMSNorm, T5LayerNorm...)."""
    return "norm" in type(module).__name__.lower()


def zo_param_groups(model: nn.Module, weight_decay: float, no_decay: Iterable[str] = NO_DECAY) -> list[dict]:
    """Two named groups: {"params": decayed, "weight_decay": weight_decay} and {"params": exempt,
    "weight_decay": 0.0}. Exempt: MeZO's rule (a name containing "bias", "layer_norm" or "layernorm", any
    case) and every parameter of a normalization module (by class name, as Hugging Face's Trainer does),
    so a model's final "norm.weight" or an nn.LayerNorm inside nn.Sequential is exempt too. This is the
    default of `ZOSGD(model, weight_decay=...)` and of ZOTrainer."""
    in_norm = {id(p) for m in model.modules() if _is_norm(m) for p in m.parameters(recurse=False)}
    named = [(n, p) for n, p in model.named_parameters() if p.requires_grad]
    return _split_decay(named, weight_decay, in_norm, no_decay)


def _split_decay(named, weight_decay: float, exempt_ids=frozenset(), no_decay: Iterable[str] = NO_DECAY) -> list[dict]:
    tags = tuple(t.lower() for t in no_decay)
    decay, exempt = [], []
    for name, p in named:
        (exempt if id(p) in exempt_ids or any(t in name.lower() for t in tags) else decay).append((name, p))
    return [{"params": decay, "weight_decay": weight_decay}, {"params": exempt, "weight_decay": 0.0}]


def _named_groups(params, weight_decay: float) -> tuple[nn.Module | None, list[dict]]:
    if isinstance(params, nn.Module):
        if weight_decay:
            return params, zo_param_groups(params, weight_decay)
        return params, [{"params": list(params.named_parameters())}]
    items = list(params)
    is_groups = items and isinstance(items[0], dict)
    groups = [dict(g, params=list(g["params"])) for g in items] if is_groups else [{"params": items}]
    for g in groups:
        for entry in g["params"]:
            if not (isinstance(entry, tuple) and len(entry) == 2 and isinstance(entry[1], torch.Tensor)):
                raise TypeError("ZO optimizers need parameter names for stable noise keys: pass the model, "
                                "model.named_parameters(), or groups whose 'params' are (name, parameter) pairs")
    if weight_decay and not is_groups:  # bare named parameters: MeZO's name rule (no modules to look at)
        groups = _split_decay(items, weight_decay)
    return None, groups


def _f32(value: float, what: str) -> float:
    """value, refused unless it is finite as a float32 (the kernels' arithmetic): 1e39 is inf there."""
    try:
        finite = math.isfinite(value) and math.isfinite(struct.unpack("<f", struct.pack("<f", value))[0])
    except OverflowError:
        finite = False
    if not finite:
        raise ValueError(f"{what} must be finite in float32 (|x| < 3.4e38), got {value}")
    return value


def _loss_value(loss, what: str) -> float:
    """The closure's loss as a float (finite or not: checked once the step's losses are in, after the
    process group's all-reduce, so that every rank raises together)."""
    if isinstance(loss, torch.Tensor):
        if loss.numel() != 1:
            raise ValueError(f"the closure must return a scalar loss; it returned a tensor of shape "
                             f"{tuple(loss.shape)} at {what} (reduce it, e.g. with .mean())")
        value = float(loss.detach())
    elif isinstance(loss, (int, float)) and not isinstance(loss, bool):
        value = float(loss)
    else:
        raise TypeError(f"the closure must return the loss as a scalar tensor or a number; it returned "
                        f"{type(loss).__name__} at {what} (a missing `return`?)")
    return value


class ZOSGD(torch.optim.Optimizer):
    """ZO-SGD (MeZO) with fused kernels; see the module docstring for modes.

    Args:
        params: the model (required for mode="shadow"), `model.named_parameters()`, or param groups
            whose "params" are (name, parameter) pairs. Only parameters with requires_grad train.
        lr, eps, weight_decay: per group (eps: the perturbation scale; a group perturbed by eps_g
            estimates its gradient as (L+ - L-) / (2 eps_g) z_g). The projections reported use the
            optimizer's eps.
        q: perturbations per step, averaged. dist: "gaussian", "rademacher" or "uniform".
        one_sided: estimate (L(w + eps z) - L(w)) / eps (one extra forward per step, not per z).
        sign: ZO-SGD-Sign, step along sign(g) z.
        momentum: ZO-SGD-MMT. Keeps one float32 buffer per parameter (extra memory: 4 bytes per
            trainable parameter) and materializes z one tensor at a time (temporary: the largest tensor);
            its update of 16-bit weights rounds to nearest.
        rounding: "nearest" or "stochastic" for updates of bf16/fp16 weights.
        seed: the run seed; step t uses derive_seed(seed, t, j) for j < q.
        fuse_steps: in-place only; fuse each update with the next step's +eps (2 passes per step).
            The weights are then perturbed between steps: call flush() before evaluating or saving
            (state_dict() does).
        module: the model whose modules shadow mode hooks, when `params` are named groups.
        process_group: data-parallel ZO over a torch.distributed group (e.g. dist.group.WORLD; None: no
            communication). Every rank evaluates the same seeds on its own batch and the step's 2q losses
            are averaged over the group in one all-reduce, so every rank applies the same update and the
            replicas stay bit-identical with no weight traffic. The ranks must start from the same weights
            (DDP broadcasts them when it wraps the model) and call step() in lockstep.
        spec_version: the noise stream (docs/noise.md): 1, the default, or 2 (Philox4x32-7, 32 Rademacher
            signs per Philox word, a table Gaussian: cheaper passes, a different stream). Recorded in
            state_dict(); a state saved under one version does not load into an optimizer of another.
    """

    def __init__(self, params, lr: float = 1e-6, eps: float = 1e-3, weight_decay: float = 0.0, *, mode="inplace",
                 q: int = 1, dist: str = "gaussian", one_sided: bool = False, sign: bool = False,
                 momentum: float = 0.0, rounding: str = "nearest", seed: int = 0, fuse_steps: bool = False,
                 module: nn.Module | None = None, backend: str | None = None, process_group=None,
                 spec_version: int = spec.SPEC_VERSION):
        if mode not in ("inplace", "shadow"):
            raise ValueError(f"mode must be 'inplace' or 'shadow', got {mode!r}")
        if isinstance(q, bool) or not isinstance(q, int) or q < 1:
            raise ValueError(f"q must be an integer >= 1, got {q!r}")
        if dist not in spec.PORTABLE_DISTS:
            raise ValueError(f"dist must be one of {spec.PORTABLE_DISTS}, got {dist!r}")
        if rounding not in spec.ROUNDINGS:
            raise ValueError(f"rounding must be one of {spec.ROUNDINGS}, got {rounding!r}")
        if not 0 <= momentum < 1:
            raise ValueError(f"momentum must be in [0, 1), got {momentum}")
        if isinstance(spec_version, bool) or spec_version not in spec.SPEC_VERSIONS:
            raise ValueError(f"spec_version must be one of {spec.SPEC_VERSIONS}, got {spec_version!r}")
        seed = ops._as_int(seed, "seed", 0, spec.SEED_MAX)
        if process_group is not None:
            import torch.distributed as tdist  # not `dist`: that is the noise distribution here

            if not (tdist.is_available() and tdist.is_initialized()):
                raise ValueError("process_group given but torch.distributed is not initialized: call "
                                 "torch.distributed.init_process_group first (torchrun / accelerate launch do)")
        self.process_group = process_group
        given, groups = _named_groups(params, weight_decay)
        module = module or given
        if mode == "shadow" and module is None:
            raise ValueError("mode='shadow' hooks the model's modules: construct with ZOSGD(model, mode='shadow') "
                             "or pass module=model with named parameter groups")
        # the engine knows where each parameter lives and refuses, by name, what it cannot write
        self.engine = Engine([g["params"] for g in groups], module=module, shadow=mode == "shadow", dist=dist,
                             backend=backend, spec_version=spec_version)
        params = self.engine.params()
        for i, g in enumerate(groups):
            slots = [s for s in range(len(params)) if self.engine.group_of(s) == i]
            g["names"], g["params"] = [self.engine.names[s] for s in slots], [params[s] for s in slots]
        groups = [g for g in groups if g["params"]]
        if not groups:
            raise ValueError("no trainable parameters (none has requires_grad=True)")
        super().__init__(groups, dict(lr=lr, eps=eps, weight_decay=weight_decay))
        for i, g in enumerate(self.param_groups):
            where = f"param group {i}'s" if len(self.param_groups) > 1 else "the"
            for field, ok in (("eps", lambda v: v > 0), ("lr", lambda v: v >= 0), ("weight_decay", lambda v: v >= 0)):
                if not ok(_f32(g[field], f"{where} {field}")):
                    raise ValueError(f"{where} {field} must be {'positive' if field == 'eps' else 'non-negative'}, "
                                     f"got {g[field]}")
        # the noise key of each parameter, by id (zofed's Replica reads it until it sits on the engine)
        self.key_of = {id(p): key for p, key in zip(self.engine.params(), self.engine.keys)}
        self.module = module
        self._lock = threading.Lock()
        self.eps, self.q, self.dist, self.one_sided, self.sign = eps, q, dist, one_sided, sign
        self.momentum, self.rounding, self.seed, self.mode = momentum, rounding, seed, mode
        self.backend, self.spec_version = backend, spec_version
        if fuse_steps and (mode != "inplace" or self._materializes()):
            raise ValueError("fuse_steps applies to plain in-place ZO-SGD (no momentum or Adam)")
        self.fuse_steps = fuse_steps
        self.step_count = 0
        self.last_seeds: list[int] = []
        self.last_projections: list[float] = []
        self.stats: dict = {}
        self._restore: list[tuple[int, float]] = []  # in-place: perturbation not yet undone
        self._restore_factors: list[float] | None = None  # per group: weight decay applied since (see _weight_decay)
        self._deferred: list[tuple[int, float]] = []  # fuse_steps: the last update, not yet written

    def _materializes(self) -> bool:
        """Whether the update needs z as a tensor (momentum, Adam) rather than a fused seed update."""
        return self.momentum > 0

    # ------------------------------------------------------------ kernel calls

    def _eps_ratio(self, g: dict) -> float:
        return g["eps"] / self.eps

    def _estimate_scale(self, g: dict) -> float:
        """For a group perturbed by eps_g rather than eps, eps / eps_g: its gradient estimate is
        (L+ - L-) / (2 eps_g) z_g. Sign steps have unit size whatever the eps."""
        return 1.0 if self.sign else 1.0 / self._eps_ratio(g)

    def _update_scale(self, g: dict) -> float:
        return g["lr"] * self._estimate_scale(g)

    def _write(self, raw=(), updates=(), *, restore: bool = False, what: str) -> None:
        """One pass over every trainable tensor: with restore=True the pending restore terms (times each
        group's decay factor), then the perturbation terms `raw` (coefficients in units of the optimizer's
        eps, scaled to each group's eps), then the update terms (times _update_scale), rounding as
        configured when there is an update. `what` names the write in errors."""
        back, factors = self._take_restore() if restore else ([], None)
        if not back and not raw and not updates:
            return
        rounding = self.rounding if updates else "nearest"

        def pairs(i, g):
            ratio, scale = self._eps_ratio(g), self._update_scale(g)
            undo = ratio * (factors[i] if factors else 1.0)
            return [(s, c * undo) for s, c in back] + [(s, c * ratio) for s, c in raw] + [(s, c * scale) for s, c in updates]

        self._update_groups(pairs, rounding, what)

    def _update_groups(self, pairs_of: Callable, rounding: str, what: str) -> None:
        """ops.update_ on every group with the (seed, coeff) pairs pairs_of(i, group). A non-finite result is
        reported after every group was written (the kernels find it inside their pass, too late to undo)."""
        bad = self.engine.update(lambda i: pairs_of(i, self.param_groups[i]), rounding)
        self.stats["weight_write_passes"] = self.stats.get("weight_write_passes", 0) + 1
        if bad:
            self._restore, self._restore_factors, self._deferred = [], None, []
            names = self.engine.describe(bad)
            raise ops.NonFiniteError(
                f"step {self.step_count}: {what} made {names} non-finite (the result overflows the dtype). The write "
                "was applied to every trainable parameter, so these now hold inf/NaN and cannot be restored: reload "
                "the weights, then lower lr/eps, keep them in float32/bfloat16, or use mode='shadow' (it never "
                "writes perturbed weights).", [])

    # ------------------------------------------------------------ estimates

    def _loss(self, closure, what: str, seed=None, scale=0.0) -> float:
        self.stats["forwards"] = self.stats.get("forwards", 0) + 1
        if self.mode == "shadow" and seed is not None:
            return _loss_value(self._perturbed(closure, seed, scale), what)
        try:
            return _loss_value(closure(), what)
        except BaseException:
            self._flush()  # in-place: put the weights back before the error propagates
            raise

    def _perturbed(self, closure, seed: int, scale: float):
        """closure() on the shadow copies w + scale_g z(seed), scale_g = scale * eps_g / eps per param group."""
        try:
            return self.engine.perturbed(closure, seed, [scale * self._eps_ratio(g) for g in self.param_groups])
        except ops.NonFiniteError as exc:
            raise ops.NonFiniteError(f"step {self.step_count}: {exc}", exc.indices) from None

    def _projections(self, closure, seeds: list[int]) -> tuple[list[float], float]:
        """g_j for each seed and the first loss; in-place mode leaves the last restore in self._restore.
        With a process group the 2q losses (q + 1 one-sided) are averaged over its ranks in one all-reduce."""
        eps, t = self.eps, self.step_count
        whats, losses = [], []

        def loss(what, seed=None, scale=0.0):
            whats.append(f"step {t}, {what}")
            losses.append(self._loss(closure, whats[-1], seed, scale))

        if self.one_sided:
            loss("unperturbed")
        for s in seeds:
            if self.mode == "shadow":
                loss("+eps", s, eps)
                if not self.one_sided:
                    loss("-eps", s, -eps)
            else:
                self._write([(s, eps)], self._take_deferred(), restore=True, what="the +eps perturbation")
                self._restore = [(s, -eps)]
                loss("+eps")
                if not self.one_sided:
                    self._write([(s, -2 * eps)], what="the -2 eps perturbation")
                    self._restore = [(s, eps)]
                    loss("-eps")
        losses = self._average(losses)
        bad = next((i for i, v in enumerate(losses) if not math.isfinite(v)), None)
        if bad is not None:
            self._flush()  # in place: put the weights back
            where = " (averaged over the process group: a rank's closure returned it)" if self.process_group else ""
            raise FloatingPointError(f"the closure returned a non-finite loss ({losses[bad]}) at {whats[bad]}{where}; "
                                     "the weights were restored (in place: up to rounding) and no update was applied")
        if self.one_sided:
            base, plus = losses[0], losses[1:]
            return [(lp - base) / eps for lp in plus], base
        plus, minus = losses[0::2], losses[1::2]
        return [(lp - lm) / (2 * eps) for lp, lm in zip(plus, minus)], plus[0]

    def _average(self, losses: list[float]) -> list[float]:
        """The losses averaged over the process group's ranks (float64, one all-reduce), or as they are."""
        if self.process_group is None:
            return losses
        import torch.distributed as tdist

        nccl = tdist.get_backend(self.process_group) == "nccl"
        device = torch.device("cuda", torch.cuda.current_device()) if nccl else torch.device("cpu")
        buf = torch.tensor(losses, dtype=torch.float64, device=device)
        tdist.all_reduce(buf, op=tdist.ReduceOp.SUM, group=self.process_group)
        self.stats["allreduce_numbers"] = self.stats.get("allreduce_numbers", 0) + len(losses)
        return (buf / tdist.get_world_size(self.process_group)).tolist()

    def _take_restore(self) -> tuple[list[tuple[int, float]], list[float] | None]:
        terms, factors = self._restore, self._restore_factors
        self._restore, self._restore_factors = [], None
        return terms, factors

    def _take_deferred(self) -> list[tuple[int, float]]:
        terms, self._deferred = self._deferred, []
        return terms

    # ------------------------------------------------------------ public API

    @contextlib.contextmanager
    def _running(self, what: str):
        """One call at a time per optimizer and per model (see the module docstring), forwards in eval mode."""
        if not self._lock.acquire(blocking=False):
            raise RuntimeError(f"{what}: this optimizer is already running a call in another thread; an optimizer "
                               "steps one model at a time (use one optimizer and one model copy per thread)")
        try:
            with self.engine.running(what):
                yield
        finally:
            self._lock.release()

    @torch.no_grad()
    def step(self, closure: Callable[[], torch.Tensor]) -> float:  # type: ignore[override]
        """One ZO step. The closure runs a forward on the batch and returns the loss; it is called
        2q times (q + 1 when one_sided), with the model in eval mode. Returns the loss at w + eps z_0
        (at w when one_sided)."""
        if closure is None:
            raise ValueError("ZO optimizers need a closure that runs a forward and returns the loss")
        with self._running("step()"):
            self.stats = dict(weight_write_passes=0, forwards=0, peak_temp_bytes=0)
            seeds = [derive_seed(self.seed, self.step_count, j) for j in range(self.q)]
            proj, loss = self._projections(closure, seeds)
            est = [(math.copysign(1.0, g) if g else 0.0) if self.sign else g for g in proj]
            updates = [(s, -e / self.q) for s, e in zip(seeds, est)]
            self._check_update(updates, proj)
            if self._materializes():
                self._write(restore=True, what="the restore")
                self._weight_decay()
                self._materialized_update(updates)
            else:
                self._weight_decay()
                if self.fuse_steps:
                    self._deferred = updates  # written with the next +eps (or by flush)
                else:
                    self._write((), updates, restore=True, what="the restore and update")
            self.last_seeds, self.last_projections = seeds, proj
            self.step_count += 1
            self.stats["peak_temp_bytes"] = max(self.stats["peak_temp_bytes"], self.engine.peak_temp_bytes)
            self.engine.reset_peak()
            return loss

    def _check_update(self, updates, proj) -> None:
        """Refuse an update whose coefficient lr * g is not finite in float32, before anything is written."""
        try:
            for g in self.param_groups:
                for _, c in updates:
                    _f32(c * self._update_scale(g), "the update coefficient lr * g")
        except ValueError as exc:
            self._write(restore=True, what="the restore")
            raise FloatingPointError(f"step {self.step_count}: {exc} (projected gradients {proj}); the weights were "
                                     "restored (in place: up to rounding) and no update was applied") from None

    def _weight_decay(self) -> None:
        """w <- (1 - lr wd) w at the restored weights, as MeZO's zo_update (w - lr (g z + wd w)). In place
        the weights still sit at w - eps z here, so the pending restore is scaled by the same factor f:
        f (w - eps z) + f eps z = f w exactly in real arithmetic, with no extra pass."""
        factors = [1 - g["lr"] * g["weight_decay"] for g in self.param_groups]
        self.engine.scale_(lambda i: factors[i])
        if any(f != 1 for f in factors):
            self.stats["weight_write_passes"] += 1
            if self._restore:
                self._restore_factors = factors

    def _direction(self, p: torch.Tensor, updates) -> torch.Tensor:
        """sum_k coeff_k z_k over p's local tensor, in float32 (a temporary as large as it)."""
        d = self.engine.direction(self.engine.slot_of(p), updates)
        self.stats["peak_temp_bytes"] = max(self.stats["peak_temp_bytes"], 2 * d.numel() * 4)
        return d

    def _local(self, p: torch.Tensor) -> torch.Tensor:
        """The dense tensor holding p's values on this process (a shard of a DTensor)."""
        return self.engine.local(self.engine.slot_of(p))

    def _materialized_update(self, updates) -> None:
        """ZO-SGD-MMT: m = momentum * m + d; w -= lr * m (d = -sum_j est_j z_j / q, so w += lr * m)."""
        for g in self.param_groups:
            for name, p in zip(g["names"], g["params"]):
                w = self._local(p)
                buf = self.state[p].setdefault("momentum_buffer", torch.zeros(w.shape, dtype=torch.float32,
                                                                              device=w.device))
                buf.mul_(self.momentum).add_(self._direction(p, updates), alpha=self._estimate_scale(g))
                self._assign(name, w, w.float().add_(buf, alpha=g["lr"]))
        self.stats["weight_write_passes"] += 1

    def _assign(self, name: str, w: torch.Tensor, new: torch.Tensor) -> None:
        """w = new (rounded to w's dtype), refused when the result is not finite there."""
        new = new.to(w.dtype)
        if not torch.isfinite(new).all():
            raise ops.NonFiniteError(
                f"step {self.step_count}: the update of {name!r} ({w.dtype}) is not finite; it and the parameters "
                "after it were left as they were, those before it (in param-group order) were updated at this step. "
                "Lower lr, or keep the weights in float32/bfloat16.", [])
        w.copy_(new)

    def _flush(self) -> None:
        self._write((), self._take_deferred(), restore=True, what="the pending restore and update")

    @torch.no_grad()
    def flush(self) -> None:
        """Write whatever in-place mode deferred (fuse_steps, or a step aborted by an error)."""
        with self._running("flush()"):
            self._flush()

    @torch.no_grad()
    def projection(self, seed: int, closure: Callable[[], torch.Tensor]) -> float:
        """The projected gradient along z(seed) on the closure's batch; the weights are left as they were
        (exactly in shadow mode, up to rounding in place)."""
        with self._running("projection()"):
            self._flush()
            self.stats = dict(weight_write_passes=0, forwards=0, peak_temp_bytes=0)
            g = self._projections(closure, [seed])[0][0]
            self._flush()
            return g

    @torch.no_grad()
    def evaluate_pair(self, seed: int, closure: Callable):
        """The closure's outputs at w + eps z(seed) and at w - eps z(seed), whatever they are (per-example
        losses of several clients' batches, say); the weights are left as they were (exactly in shadow
        mode, up to rounding in place)."""
        with self._running("evaluate_pair()"):
            self._flush()
            if self.mode == "shadow":
                return self._perturbed(closure, seed, self.eps), self._perturbed(closure, seed, -self.eps)
            try:
                self._write([(seed, self.eps)], what="the +eps perturbation")
                self._restore = [(seed, -self.eps)]
                plus = closure()
                self._write([(seed, -2 * self.eps)], what="the -2 eps perturbation")
                self._restore = [(seed, self.eps)]
                minus = closure()
            finally:
                self._flush()
            return plus, minus

    @torch.no_grad()
    def apply_updates(self, seeds: list[int], coeffs: list[float]) -> None:
        """w += coeff_k * z(seed_k) for each pair in order, in one pass (coefficients as given, no lr)."""
        if len(seeds) != len(coeffs):
            raise ValueError(f"got {len(seeds)} seeds but {len(coeffs)} coeffs")
        with self._running("apply_updates()"):
            self._flush()
            self.stats = dict(weight_write_passes=0, forwards=0, peak_temp_bytes=0)
            pairs = list(zip(seeds, coeffs))
            self._update_groups(lambda i, g: pairs, self.rounding, "apply_updates()")

    def state_dict(self):
        self.flush()
        sd = super().state_dict()
        sd["zo"] = dict(step_count=self.step_count, seed=self.seed, spec_version=self.spec_version)
        return sd

    def load_state_dict(self, state_dict):
        zo = state_dict.get("zo") if isinstance(state_dict, dict) else None
        if not isinstance(zo, dict):
            raise ValueError("not a zokernels ZO optimizer state: no 'zo' entry (step count, seed, noise spec version)")
        if zo.get("spec_version") != self.spec_version:
            raise ValueError(f"this optimizer state was saved under noise spec version {zo.get('spec_version')!r} "
                             f"and this optimizer uses version {self.spec_version}: its steps would draw other "
                             f"directions; construct the optimizer with spec_version={zo.get('spec_version')!r}")
        super().load_state_dict({k: v for k, v in state_dict.items() if k != "zo"})
        self.step_count, self.seed = zo["step_count"], zo["seed"]

    def close(self) -> None:
        """Remove shadow-mode hooks (the model then runs unperturbed forwards as usual)."""
        self.engine.close()


class ZOAdam(ZOSGD):
    """ZO-Adam: Adam moments on the ZO direction d = -mean_j(g_j z_j), weight decay decoupled (AdamW).
    Keeps two float32 buffers per parameter (extra memory: 8 bytes per trainable parameter) and
    materializes z one tensor at a time."""

    def __init__(self, params, lr: float = 1e-4, eps: float = 1e-3, weight_decay: float = 0.0, *,
                 betas=(0.9, 0.999), adam_eps: float = 1e-8, **kw):
        if not (len(betas) == 2 and 0 <= betas[0] < 1 and 0 <= betas[1] < 1):
            raise ValueError(f"betas must be two numbers in [0, 1), got {betas}")
        if not (adam_eps > 0 and math.isfinite(adam_eps)):
            raise ValueError(f"adam_eps must be a positive finite number (it keeps m / sqrt(v) finite where v is 0), "
                             f"got {adam_eps}")
        self.betas, self.adam_eps = betas, adam_eps
        super().__init__(params, lr=lr, eps=eps, weight_decay=weight_decay, **kw)

    def _materializes(self) -> bool:
        return True

    def _materialized_update(self, updates) -> None:
        b1, b2 = self.betas
        t = self.step_count + 1
        for g in self.param_groups:
            for name, p in zip(g["names"], g["params"]):
                st, w = self.state[p], self._local(p)
                m = st.setdefault("exp_avg", torch.zeros(w.shape, dtype=torch.float32, device=w.device))
                v = st.setdefault("exp_avg_sq", torch.zeros(w.shape, dtype=torch.float32, device=w.device))
                d = self._direction(p, updates).mul_(self._estimate_scale(g))  # descent direction
                m.mul_(b1).add_(d, alpha=1 - b1)
                v.mul_(b2).addcmul_(d, d, value=1 - b2)
                step = (m / (1 - b1**t)) / ((v / (1 - b2**t)).sqrt_().add_(self.adam_eps))
                self._assign(name, w, w.float().add_(step, alpha=g["lr"]))
        self.stats["weight_write_passes"] += 1
