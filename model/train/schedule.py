"""Learning-rate and backbone-freeze schedules of the paper's recipe, as pure functions of the step/epoch.

LR (per optimiser step): linear from ``lr_start`` to ``lr_peak`` over the first ``warmup_fraction`` of
all steps, then linear from ``lr_peak`` to 0 at the last step. Stepping per optimiser step (rather than
per epoch) gives the same piecewise-linear shape at any epoch count, including the tiny demo runs.
Freeze: the backbone is frozen for epochs ``0 .. freeze_epochs - 1`` and trains from then on.
"""
from __future__ import annotations

import torch


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

    def load_state_dict(self, state: dict) -> None:
        if state["total_steps"] != self.total_steps:
            raise ValueError(
                f"schedule was built for {state['total_steps']} steps, this run has {self.total_steps} "
                "(did train.epochs, train.batch_pairs, train.max_steps_per_epoch or the data change?)"
            )
        self.last_step = int(state["last_step"])
        self._apply()
