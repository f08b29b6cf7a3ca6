"""Learning-rate and backbone-freeze schedules of the paper's recipe, as pure functions of the step/epoch.

LR (per optimiser step): linear from ``lr_start`` to ``lr_peak`` over the first ``warmup_fraction`` of
all steps, then linear from ``lr_peak`` to 0 at the last step. Stepping per optimiser step (rather than
per epoch) gives the same piecewise-linear shape at any epoch count, including the tiny demo runs.
Freeze: the backbone is frozen for epochs ``0 .. freeze_epochs - 1`` and trains from then on.
Batch: ``train.batch_pairs`` is the global batch, split over the processes; the LRs follow the linear
scaling rule from ``optim.lr_base_batch_pairs`` (`batch_plan`).
"""
from __future__ import annotations

from dataclasses import dataclass

import torch

from model.config import Config, ConfigError


@dataclass(frozen=True)
class BatchPlan:
    """How a step's pairs are spread over ``world_size`` processes, and the LR factor that goes with them."""

    per_process: int    # pairs each process loads per optimiser step
    global_pairs: int   # pairs per optimiser step over all processes (2x that many images)
    lr_scale: float     # lr_start and lr_peak are multiplied by this

    def describe(self, cfg: Config, world_size: int) -> str:
        """One line for train.log: the batch split and the LR rule that was applied."""
        rule = (f"linear LR scaling: x {self.global_pairs}/{cfg.optim.lr_base_batch_pairs} = {self.lr_scale:g}"
                if cfg.optim.lr_scaling == "linear" else "LR scaling off")
        return (f"batch: {self.global_pairs} pairs ({2 * self.global_pairs} images) per step = {world_size} "
                f"process(es) x {self.per_process} (train.batch_scope={cfg.train.batch_scope}); {rule}: "
                f"lr_start {cfg.optim.lr_start * self.lr_scale:.4g}, lr_peak {cfg.optim.lr_peak * self.lr_scale:.4g}")


def batch_plan(cfg: Config, world_size: int) -> BatchPlan:
    """Per-process and global batch of ``cfg`` on ``world_size`` processes, and the LR factor.

    ``train.batch_scope=global`` (default): ``train.batch_pairs`` pairs per step whatever the process count,
    each process loading ``batch_pairs / world_size`` (ConfigError unless that divides evenly).
    ``per_process``: every process loads ``batch_pairs``. LR factor (``optim.lr_scaling=linear``): global
    pairs / ``optim.lr_base_batch_pairs``, so the paper's 8 pairs keep its LRs on any number of GPUs.
    """
    pairs = cfg.train.batch_pairs
    if cfg.train.batch_scope == "global":
        if pairs % world_size:
            raise ConfigError(f"train.batch_pairs={pairs} (global) does not split over {world_size} processes; "
                              f"give a multiple of {world_size} or train.batch_scope=per_process")
        per_process, global_pairs = pairs // world_size, pairs
    else:
        per_process, global_pairs = pairs, pairs * world_size
    if per_process % cfg.optim.accum_steps:
        raise ConfigError(f"optim.accum_steps={cfg.optim.accum_steps} does not divide the {per_process} pairs "
                          f"each of {world_size} processes takes per step")
    scale = global_pairs / cfg.optim.lr_base_batch_pairs if cfg.optim.lr_scaling == "linear" else 1.0
    return BatchPlan(per_process=per_process, global_pairs=global_pairs, lr_scale=scale)


def warmup_linear_lr(step: int, total_steps: int, lr_start: float, lr_peak: float, warmup_fraction: float) -> float:
    """LR for 0-based optimiser ``step`` of ``total_steps``.

    Warm-up: steps ``0 .. W`` (W = round(warmup_fraction * total_steps)) go linearly lr_start -> lr_peak.
    Decay: steps ``W .. total_steps`` go linearly lr_peak -> 0 (the value at ``total_steps`` is 0; the
    last step actually taken, ``total_steps - 1``, has a small positive LR).
    """
    if total_steps < 1:
        raise ValueError(f"total_steps must be >= 1, got {total_steps}")
    warm = int(round(warmup_fraction * total_steps))
    step = min(max(step, 0), total_steps)
    if step < warm:
        return lr_start + (lr_peak - lr_start) * step / warm
    decay = total_steps - warm
    return lr_peak * (1.0 - (step - warm) / decay) if decay > 0 else 0.0


def backbone_frozen(epoch: int, freeze_epochs: int) -> bool:
    """True while the backbone stays frozen: for 0-based epochs ``< freeze_epochs``."""
    return epoch < freeze_epochs


class WarmupLinearSchedule:
    """Sets ``lr`` on every param group of ``optimizer`` from :func:`warmup_linear_lr`.

    Call :meth:`step` once after each optimiser step. ``state_dict`` holds the step counter, so a
    resumed run continues the curve exactly.
    """

    def __init__(self, optimizer: torch.optim.Optimizer, total_steps: int, lr_start: float, lr_peak: float,
                 warmup_fraction: float):
        self.optimizer = optimizer
        self.total_steps = total_steps
        self.lr_start = lr_start
        self.lr_peak = lr_peak
        self.warmup_fraction = warmup_fraction
        self.last_step = 0
        self._apply()

    def lr_at(self, step: int) -> float:
        return warmup_linear_lr(step, self.total_steps, self.lr_start, self.lr_peak, self.warmup_fraction)

    def _apply(self) -> None:
        lr = self.lr_at(self.last_step)
        for group in self.optimizer.param_groups:
            group["lr"] = lr

    def get_last_lr(self) -> float:
        return self.lr_at(self.last_step)

    def step(self) -> None:
        self.last_step += 1
        self._apply()

    def state_dict(self) -> dict:
        return {"last_step": self.last_step, "total_steps": self.total_steps}

    def load_state_dict(self, state: dict) -> int | None:
        """Continue from ``state``'s step. When it was built for another number of steps (a resumed run
        with train.epochs changed, say), the curve is rebuilt over this schedule's ``total_steps`` from the
        same step, and the old total is returned (None when unchanged): the LR jumps to the new curve."""
        step = int(state["last_step"])
        if step > self.total_steps:
            raise ConfigError(f"the run has done {step} optimiser steps, more than the {self.total_steps} this "
                             "schedule has (train.epochs smaller than the epochs already done?)")
        self.last_step = step
        self._apply()
        old = int(state["total_steps"])
        return None if old == self.total_steps else old
