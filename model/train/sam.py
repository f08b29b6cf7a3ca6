"""Sharpness-Aware Minimisation (SAM) wrapped around any base optimiser (Adam in this project).

One SAM update on a batch:
    1. loss(w).backward()                 gradients g at the current weights w
    2. sam.perturb()                      w <- w + e,  e = rho * g / ||g||   (ASAM: e = rho * w^2 g / ||w g||)
    3. loss(w + e).backward()             gradients at the worst-case neighbour
    4. sam.restore()                      w <- w - e  (back to the original weights)
    5. base optimiser step                with the step-3 gradients, at w
Steps 4 and 5 are separate so that an fp16 ``GradScaler`` can drive step 5 (``scaler.step(sam.base)``)
and skip it on overflow while the weights are still restored. The perturbation direction does not
depend on the loss scale (``g / ||g||``), so step 2 may run on scaled gradients.

Batch-norm: the second forward (step 3) must not update BN running statistics. See
:func:`bn_running_stats_frozen`.
"""
from __future__ import annotations

import contextlib
from collections.abc import Iterator

import torch
from torch import nn


class SAM:
    """SAM around ``base`` (an already constructed optimiser, e.g. ``torch.optim.Adam``).

    ``state_dict``/``load_state_dict`` delegate to the base optimiser: the perturbation only lives
    between ``perturb`` and ``restore`` inside one step and is never checkpointed.
    """

    def __init__(self, base: torch.optim.Optimizer, rho: float = 0.05, adaptive: bool = False, eps: float = 1e-12):
        if rho <= 0:
            raise ValueError(f"SAM rho must be > 0, got {rho}")
        self.base = base
        self.rho = rho
        self.adaptive = adaptive
        self.eps = eps
        self._perturbation: dict[torch.Tensor, torch.Tensor] = {}

    @property
    def param_groups(self) -> list[dict]:
        return self.base.param_groups

    def _params_with_grad(self) -> list[torch.Tensor]:
        return [p for g in self.base.param_groups for p in g["params"] if p.grad is not None]

    @torch.no_grad()
    def grad_norm(self) -> torch.Tensor:
        """||g|| (SAM) or ||w * g|| (ASAM) over every parameter that has a gradient; a 0-d tensor."""
        params = self._params_with_grad()
        if not params:
            return torch.zeros(())
        dev = params[0].device
        terms = [((p.abs() if self.adaptive else 1.0) * p.grad).norm(2).to(dev) for p in params]
        return torch.stack(terms).norm(2)

    @torch.no_grad()
    def perturb(self) -> bool:
        """Move the weights to w + e (step 2). Returns False (and does nothing) if ||g|| is not finite.

        A non-finite norm happens under fp16 when the scaled gradients overflow; the scaler will then
        skip the update of this step anyway, so perturbing would only add garbage.
        """
        if self._perturbation:
            raise RuntimeError("SAM.perturb called twice without restore")
        norm = self.grad_norm()
        if not torch.isfinite(norm):
            return False
        scale = self.rho / (norm + self.eps)
        for p in self._params_with_grad():
            e = (p.pow(2) if self.adaptive else 1.0) * p.grad * scale.to(p.device)
            p.add_(e)
            self._perturbation[p] = e
        return True

    @torch.no_grad()
    def restore(self) -> None:
        """Move the weights back to w (step 4); a no-op if nothing was perturbed."""
        for p, e in self._perturbation.items():
            p.sub_(e)
        self._perturbation.clear()

    def zero_grad(self, set_to_none: bool = True) -> None:
        self.base.zero_grad(set_to_none=set_to_none)

    def state_dict(self) -> dict:
        return self.base.state_dict()

    def load_state_dict(self, state: dict) -> None:
        self.base.load_state_dict(state)


@contextlib.contextmanager
def bn_running_stats_frozen(model: nn.Module) -> Iterator[None]:
    """Inside this context, batch-norm layers normalise with batch statistics (train mode) as usual
    but do not update ``running_mean``/``running_var``/``num_batches_tracked``.

    Why: SAM's second forward runs at the perturbed weights w + e, a network that is never kept.
    Letting it update the running statistics would (a) count every batch twice in the exponential
    average, halving its effective horizon, and (b) mix in statistics of activations of w + e. The
    first forward at w already updated them once, which is what plain training does. Setting the
    momentum to 0 keeps the forward maths identical (train-mode BN still uses the batch statistics,
    so the second gradient is the true gradient at w + e) while the running update becomes
    ``r <- (1 - 0) * r + 0 * batch_stat = r``. ``num_batches_tracked`` is restored explicitly because
    BN increments it regardless (it matters when momentum is None, i.e. a cumulative average).
    """
    saved = []
    for m in model.modules():
        if isinstance(m, nn.modules.batchnorm._BatchNorm) and m.track_running_stats and m.training:
            saved.append((m, m.momentum, m.num_batches_tracked.clone() if m.num_batches_tracked is not None else None))
            m.momentum = 0.0
    try:
        yield
    finally:
        for m, momentum, tracked in saved:
            m.momentum = momentum
            if tracked is not None:
                m.num_batches_tracked.copy_(tracked)
