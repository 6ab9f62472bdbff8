"""Hugging Face integration: a transformers.Trainer whose training step is a ZO step.

    from zokernels.hf import ZOTrainer
    trainer = ZOTrainer(model=model, args=TrainingArguments(..., learning_rate=1e-6), train_dataset=ds,
                        zo_eps=1e-3, zo_mode="shadow")
    trainer.train()

Each optimizer step is one zokernels.ZOSGD step: the closure evaluates the loss on every micro-batch
of the accumulation window (gradient_accumulation_steps of them) and averages, so accumulation
behaves as in first-order training (MeZO's trainer refuses accumulation). Forwards run in eval mode
(no dropout), as MeZO does, so the two perturbed losses differ only by the perturbation. The
learning-rate schedule, logging, evaluation and checkpointing are the Trainer's own; weight decay
exempts biases and norm weights (zokernels.zo_param_groups). PEFT models train their adapters only.
There is no gradient, so the logs carry no grad_norm (the Trainer would log 0); they carry
zo_projected_grad instead: the mean |g| of the ZO steps since the previous log, g the projected
gradient (L+ - L-) / (2 eps) averaged over the step's q perturbations.
"""

from __future__ import annotations

import torch
from transformers import Trainer

from .optim import ZOSGD, zo_param_groups


class _TrainerZOSGD(ZOSGD):
    """ZOSGD driven by the Trainer: the Trainer's closure-less step() closes any partial window."""

    def __init__(self, trainer: "ZOTrainer", *args, **kwargs):
        super().__init__(*args, **kwargs)
        self._trainer = trainer

    def step(self, closure=None):
        if closure is not None:
            return super().step(closure)
        self._trainer._zo_flush()
        return None


class ZOTrainer(Trainer):
    """transformers.Trainer with ZO-SGD steps (see the module docstring).

    Extra keyword arguments: zo_eps (perturbation scale), zo_mode ("shadow" or "inplace"), and
    zo_options (a dict of further ZOSGD options: q, dist, one_sided, sign, momentum, rounding).
    """

    def __init__(self, *args, zo_eps: float = 1e-3, zo_mode: str = "shadow", zo_options: dict | None = None,
                 **kwargs):
        super().__init__(*args, **kwargs)
        self.zo_eps, self.zo_mode, self.zo_options = zo_eps, zo_mode, dict(zo_options or {})
        self._zo_batches: list = []
        self._zo_abs_projections: list[float] = []  # |g| of each step since the last log
        self.zo_optimizer: ZOSGD | None = None

    def create_optimizer(self, model=None):
        if self.optimizer is None:
            model = self.model
            groups = [g for g in zo_param_groups(model, self.args.weight_decay) if g["params"]]
            # launched on several processes (torchrun, accelerate launch), each rank's data shard gives its
            # losses; one all-reduce of them per step keeps every replica identical (data-parallel ZO)
            group = torch.distributed.group.WORLD if self.args.world_size > 1 else None
            self.zo_optimizer = _TrainerZOSGD(self, groups, lr=self.args.learning_rate, eps=self.zo_eps,
                                              mode=self.zo_mode, module=model, seed=self.args.seed,
                                              process_group=group, **self.zo_options)
            self.optimizer = self.zo_optimizer
        return self.optimizer

    def training_step(self, model, inputs, num_items_in_batch=None):
        """Buffers micro-batches; the last one of the window runs the ZO step. Returns the step's loss
        on that call and 0 on the others, so the Trainer's running sum logs the loss per step."""
        self._zo_batches.append(self._prepare_inputs(inputs))
        if len(self._zo_batches) < self.args.gradient_accumulation_steps:
            return torch.zeros((), device=self.args.device)
        return torch.tensor(self._zo_flush(), device=self.args.device)

    def _zo_flush(self) -> float:
        """Run one ZO step over the buffered micro-batches (a no-op when none are buffered)."""
        if not self._zo_batches:
            return 0.0
        batches, self._zo_batches = self._zo_batches, []
        model = self.model

        def closure():
            return sum(self.compute_loss(model, b) for b in batches) / len(batches)

        loss = self.zo_optimizer.step(closure)  # in eval mode: ZOSGD switches the model it was built on
        projections = self.zo_optimizer.last_projections
        self._zo_abs_projections.append(abs(sum(projections) / len(projections)))
        return loss

    def log(self, logs: dict, *args, **kwargs) -> None:
        """The Trainer's log without its grad_norm (no gradient exists), with zo_projected_grad."""
        logs = {k: v for k, v in logs.items() if k != "grad_norm"}
        if "loss" in logs and self._zo_abs_projections:
            logs["zo_projected_grad"] = sum(self._zo_abs_projections) / len(self._zo_abs_projections)
            self._zo_abs_projections = []
        super().log(logs, *args, **kwargs)
