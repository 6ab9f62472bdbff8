"""Where a module's weights really live when accelerate's big-model dispatch moved them.

The perturbation engine asks two things of every module that owns trainable parameters:
`storage_of` (the tensor whose memory holds a parameter's values, when that is not the parameter
itself) and `add_forward_hooks` (shadow mode's pre/post forward hooks, placed so they see the
weights the forward will really use). A plain module answers None and gets ordinary hooks.

accelerate (an optional dependency, never imported here: its objects are recognized by their
attributes) offloads a module by putting its parameters on the meta device and attaching a hook,
`module._hf_hook`, whose pre_forward loads them from `hook.weights_map` onto the execution device
and whose post_forward puts them back on meta (a new meta Parameter each time, so parameter identity
does not survive a forward). The values live in the weights map:
  - a "cpu" module of a model whose main device is a GPU: a CPU tensor in the loader's state dict;
  - a "disk" module: a `<name>.dat` file in the offload folder, read through a fresh read-only
    memmap at every forward. We open the same file as a writable memmap, so an update lands in the
    file (the page cache makes it visible to the next forward's read at once);
  - `from_pretrained(..., offload_folder=...)`: the checkpoint's own .safetensors file, read-only.
    Refused with a message saying how to dispatch instead.
"""

from __future__ import annotations

import os
import weakref
from typing import Callable

import torch
from torch import nn


class OffloadError(ValueError):
    """A parameter is placed where ZO updates cannot be written."""


def _align_hook(owner: nn.Module):
    """The accelerate hook on `owner` that moves its weights (AlignDevicesHook, possibly inside a
    SequentialHook), or None."""
    hook = getattr(owner, "_hf_hook", None)
    for h in getattr(hook, "hooks", (hook,)):
        if h is not None and hasattr(h, "offload") and hasattr(h, "weights_map"):
            return h
    return None


def _memmap_tensor(path: str, info: dict, name: str) -> torch.Tensor:
    """A CPU tensor over a writable memmap of one accelerate .dat file (its layout: numpy dtype, bf16
    stored as int16, fp8 as int8, a 0-d tensor as shape (1,))."""
    import numpy as np

    dtype, shape = info["dtype"], tuple(info["shape"])
    stored = "int16" if dtype == "bfloat16" else "int8" if dtype.startswith("float8_") else dtype
    try:
        array = np.memmap(path, dtype=stored, mode="r+", shape=shape or (1,))
    except OSError as exc:
        raise OffloadError(f"parameter {name!r} is offloaded by accelerate to {path!r}, which cannot be opened for "
                           f"writing ({exc.strerror}): ZO updates are written into the offload file; make the "
                           "offload folder writable") from None
    tensor = torch.from_numpy(array)
    if stored != dtype:
        tensor = tensor.view(getattr(torch, dtype))
    return tensor.view(shape)


def _storage_in(weights_map, key: str) -> torch.Tensor:
    """The persistent tensor behind weights_map[key] (accelerate's maps hand out fresh copies for disk)."""
    prefix = getattr(weights_map, "prefix", "")
    loader = getattr(weights_map, "dataset", weights_map)
    full = prefix + key
    if isinstance(loader, dict):  # a CPU state dict: cpu_offload's, or the copies init_hook made without a map
        if full not in loader:
            raise OffloadError(f"parameter {full!r} is offloaded by accelerate but its weights map has no entry for it")
        return loader[full]
    state, index = getattr(loader, "state_dict", None), getattr(loader, "index", None)
    if not isinstance(state, dict) or not isinstance(index, dict):
        raise OffloadError(f"parameter {key!r} is offloaded by accelerate into a {type(weights_map).__name__}, a weights "
                           "map we do not know how to write to; dispatch with accelerate's dispatch_model or "
                           "load_checkpoint_and_dispatch (CPU state dict or offload folder)")
    if full in state:
        return state[full]
    if full not in index:
        raise OffloadError(f"parameter {full!r} is offloaded by accelerate but its weights map has no entry for it "
                           "(a tied weight? call tie_weights() before dispatching)")
    info = index[full]
    if info.get("safetensors_file") is not None:
        raise OffloadError(
            f"parameter {full!r} is offloaded by accelerate to the checkpoint file {info['safetensors_file']!r}, which is "
            "read only (from_pretrained(..., offload_folder=...) maps the original safetensors instead of copying them): "
            "ZO updates cannot be written there. Build the model under accelerate.init_empty_weights(), call "
            "tie_weights(), then load it with accelerate.load_checkpoint_and_dispatch(model, checkpoint, device_map, "
            "offload_folder=...), which writes writable .dat copies, or put this module on 'cpu'.")
    mapped = _MAPPED.get(id(loader))
    if mapped is None:
        mapped = _MAPPED[id(loader)] = {}
        weakref.finalize(loader, _MAPPED.pop, id(loader), None)
    if full not in mapped:
        mapped[full] = _memmap_tensor(os.path.join(loader.save_folder, f"{full}.dat"), info, full)
    return mapped[full]


# The writable maps of each loader's files by id(loader), opened once (the engine resolves a parameter at
# every write) and dropped with the loader (the dispatched model's hooks hold it). Not a WeakKeyDictionary:
# a loader is a Mapping, which is unhashable.
_MAPPED: dict[int, dict[str, torch.Tensor]] = {}


def storage_of(owner: nn.Module, name: str, param: torch.Tensor) -> torch.Tensor | None:
    """The tensor holding `owner.<name>`'s values when it is not `param` itself; None when it is.

    Raises OffloadError for a parameter on the meta device whose values cannot be found or written."""
    hook = _align_hook(owner)
    if hook is not None and hook.offload and hook.weights_map is not None:
        what = repr(getattr(hook.weights_map, "prefix", "") + name)  # the full name where accelerate's map knows it
        if name in getattr(hook, "tied_params_names", ()):
            # each holder of a tied weight is offloaded on its own (a .dat file each on disk), and dispatch may
            # untie the parameters: one update could not reach every copy
            raise OffloadError(f"parameter {what} is a tied weight that accelerate "
                               "offloads: ZO updates cannot keep its copies tied. Put the modules that share it on "
                               "the main device (device_map='auto' keeps tied modules together)")
        stored = _storage_in(hook.weights_map, name)
        if stored.dtype != param.dtype or stored.shape != param.shape:
            # accelerate casts at every load (load_checkpoint_and_dispatch(dtype=...) writes the checkpoint's
            # dtype to disk): an update of the stored copy would not be the update of the weights the forward uses
            raise OffloadError(
                f"parameter {what} is {param.dtype} {tuple(param.shape)} but accelerate "
                f"stores it offloaded as {stored.dtype} {tuple(stored.shape)} and converts at every forward: ZO updates "
                "must be written in the dtype the forward uses. Save the checkpoint in that dtype and dispatch it "
                "without dtype=, or put this module on a device")
        return stored
    if param.device.type == "meta":
        raise OffloadError(f"parameter {name!r} of a {type(owner).__name__} is on the meta device and no accelerate offload "
                           "hook on that module says where its values live: load the weights first, and dispatch without "
                           "preload_module_classes (a hook on an enclosing module loads them, so updates have no place "
                           "to go)")
    return None


class _HookWrap:
    """Shadow hooks run inside accelerate's: after its pre_forward loaded the weights and before its
    post_forward sends them back to meta (appending a hook with add_hook_to_module would run our post
    after theirs). The hook object's methods are replaced on the instance; remove() puts them back."""

    def __init__(self, owner: nn.Module, hook, pre: Callable, post: Callable):
        self.owner, self.hook, self.pre, self.post = owner, hook, pre, post
        self.inner_pre, self.inner_post = hook.pre_forward, hook.post_forward
        self.own = {a: a in vars(hook) for a in ("pre_forward", "post_forward")}  # set on the instance before us?
        self.active = True
        hook.pre_forward, hook.post_forward = self._pre_forward, self._post_forward

    def _pre_forward(self, module, *args, **kwargs):
        args, kwargs = self.inner_pre(module, *args, **kwargs)
        if self.active and module is self.owner:  # a hook object may be shared by several modules
            new = self.pre(module, args)
            if new is not None:
                args = new if isinstance(new, tuple) else (new,)
        return args, kwargs

    def _post_forward(self, module, output):
        if self.active and module is self.owner:
            new = self.post(module, (), output)
            if new is not None:
                output = new
        return self.inner_post(module, output)

    def remove(self) -> None:
        self.active = False  # a wrapper stacked on ours keeps calling through, now transparently
        for attr, ours, inner in (("pre_forward", self._pre_forward, self.inner_pre),
                                  ("post_forward", self._post_forward, self.inner_post)):
            if vars(self.hook).get(attr) == ours:
                if self.own[attr]:
                    setattr(self.hook, attr, inner)
                else:  # back to the class's method
                    delattr(self.hook, attr)


def add_forward_hooks(owner: nn.Module, pre: Callable, post: Callable) -> list:
    """Register shadow mode's hooks on `owner` (pre(module, args) -> None or new args; post(module, args,
    output)); returns handles with .remove(). Under an accelerate hook they run inside it; `args` are
    then the positional arguments after accelerate moved them, and post receives ()."""
    hook = getattr(owner, "_hf_hook", None)
    if hook is not None and hasattr(hook, "pre_forward") and hasattr(hook, "post_forward"):
        return [_HookWrap(owner, hook, pre, post)]
    return [owner.register_forward_pre_hook(pre), owner.register_forward_hook(post)]
