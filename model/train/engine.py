"""The training engine: the pairs loader, one optimiser step (SAM's two passes, micro-batches, AMP), one
epoch, backbone freezing, and the trainer state that goes into checkpoints. train.py drives it.
"""
from __future__ import annotations

import logging
import math
import time
from contextlib import nullcontext
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch import nn
from torch.nn.parallel import DistributedDataParallel
from torch.utils.data import DataLoader
from tqdm import tqdm

from model.checkpoint import restore_training_state, set_rng_state, training_state
from model.config import Config, ConfigError
from model.config_io import config_to_dict
from model.data.datasets import EpochSampler, TrainPairDataset, collate_pairs
from model.data.tensors import normalise_images
from model.device import autocast, keep_freed_memory, select_amp, select_device
from model.net.laanet import build_model, set_backbone_frozen
from model.train.dist import Dist, seed_everything
from model.train.log import RunLogger
from model.train.losses import LAALoss
from model.train.sam import SAM, bn_running_stats_frozen
from model.train.schedule import BatchPlan, WarmupLinearSchedule, backbone_frozen, batch_plan
from pipeline.errors import UserError

log = logging.getLogger("train")


class NonFiniteLossError(UserError, RuntimeError):
    """Raised when a training loss is NaN or inf; the message names the batch and the loss terms."""


def build_train_loader(cfg: Config, dist: Dist, device: torch.device, per_process: int,
                       ) -> tuple[TrainPairDataset, EpochSampler, DataLoader]:
    """Pairs loader of ``per_process`` pairs per batch (see `batch_plan`).

    Every epoch ``sampler.set_epoch(e)`` reshuffles and its (epoch, index) keys make the dataset draw that
    epoch's frames and pseudo-fakes, also in persistent workers (kept for the whole run when
    ``train.num_workers`` > 0: no re-fork and re-open of the shards every epoch). The sampler is a
    DistributedSampler also for one process: its shuffle is a function of (seed, epoch) only, which makes
    resumed runs repeat the same order. The loader draws its worker seeds from its own generator, so
    keeping workers alive does not shift the global RNG stream that dropout draws from."""
    dataset = TrainPairDataset(cfg.data, cfg.sbi, cfg.bi, cfg.augment)
    sampler = EpochSampler(dataset, num_replicas=dist.world_size, rank=dist.rank, shuffle=True,
                           seed=cfg.train.seed, drop_last=True)
    workers = cfg.train.num_workers
    loader = DataLoader(dataset, batch_size=per_process, sampler=sampler, drop_last=True,
                        num_workers=workers, collate_fn=collate_pairs, pin_memory=device.type == "cuda",
                        persistent_workers=workers > 0,
                        generator=torch.Generator().manual_seed(cfg.train.seed * 1000 + dist.rank))
    if len(loader) == 0:
        raise ConfigError(
            f"data.shards hold {len(dataset)} training pairs per epoch, fewer than one batch of {per_process} "
            f"pairs per process (train.batch_pairs={cfg.train.batch_pairs}, world size {dist.world_size})"
        )
    return dataset, sampler, loader


def steps_per_epoch(cfg: Config, loader: DataLoader) -> int:
    n = len(loader)
    return min(n, cfg.train.max_steps_per_epoch) if cfg.train.max_steps_per_epoch > 0 else n


def split_pairs(batch: dict, parts: int) -> list[dict]:
    """Split a pairs batch into ``parts`` micro-batches that each hold whole (real, fake) pairs.

    Pairs are recovered from the labels (the j-th real goes with the j-th fake), so this does not
    depend on how ``collate_pairs`` orders the 2N images.
    """
    if parts == 1:
        return [batch]
    labels = batch["label"]
    reals = torch.nonzero(labels == 0).flatten()
    fakes = torch.nonzero(labels == 1).flatten()
    out = []
    for r, f in zip(reals.chunk(parts), fakes.chunk(parts)):
        idx = torch.cat([r, f])
        out.append(index_batch(batch, idx))
    return out


def index_batch(batch: dict, idx: torch.Tensor) -> dict:
    """Select rows ``idx`` from every tensor/list entry of a batch."""
    out = {}
    for k, v in batch.items():
        if torch.is_tensor(v):
            out[k] = v[idx]
        elif isinstance(v, (list, tuple)):
            out[k] = [v[i] for i in idx.tolist()]
        else:
            out[k] = v
    return out


def to_device(batch: dict, device: torch.device, channels_last: bool) -> dict:
    """Tensors of a batch on `device`; uint8 images are normalised there (`normalise_images`)."""
    out = {}
    for k, v in batch.items():
        if torch.is_tensor(v):
            v = v.to(device, non_blocking=True)
            if k == "image":
                v = normalise_images(v)
                v = v.contiguous(memory_format=torch.channels_last if channels_last else torch.contiguous_format)
        out[k] = v
    return out


@dataclass
class Trainer:
    """Everything the per-step and per-epoch functions share. ``net`` is what forward runs through
    (DDP and/or compiled wrapper around ``model``); ``model`` is the plain module that is saved."""

    cfg: Config
    run_dir: Path
    dist: Dist
    device: torch.device
    model: nn.Module
    criterion: LAALoss
    base_opt: torch.optim.Optimizer
    sam: SAM | None
    schedule: WarmupLinearSchedule
    scaler: torch.amp.GradScaler
    amp_dtype: torch.dtype | None
    steps_per_epoch: int
    plan: BatchPlan | None = None  # None: batch_plan(cfg, world size)
    net: nn.Module | None = None
    net_frozen: bool | None = None
    logger: RunLogger | None = None
    step: int = 0
    epoch: int = 0
    best_auc: float = -math.inf
    history: list[dict] = field(default_factory=list)

    def __post_init__(self) -> None:
        if self.plan is None:
            self.plan = batch_plan(self.cfg, self.dist.world_size)


def build_optimizer(cfg: Config, model: nn.Module) -> tuple[torch.optim.Optimizer, SAM | None]:
    """Adam over every parameter (frozen ones have no gradient and are skipped), wrapped in SAM."""
    base = torch.optim.Adam(model.parameters(), lr=cfg.optim.lr_start, betas=tuple(cfg.optim.betas),
                            weight_decay=cfg.optim.weight_decay)
    sam = SAM(base, rho=cfg.optim.sam_rho, adaptive=cfg.optim.sam_adaptive) if cfg.optim.sam else None
    return base, sam


def apply_freeze(t: Trainer, epoch: int) -> None:
    """Put the model in train mode with the backbone frozen or not for ``epoch``, and (re)build the
    DDP/compile wrapper when the set of trainable parameters changed: DDP registers the parameters
    that require gradients when it is constructed, so it must be rebuilt after unfreezing."""
    frozen = backbone_frozen(epoch, t.cfg.train.freeze_backbone_epochs)
    t.model.train()
    set_backbone_frozen(t.model, frozen, freeze_bn=t.cfg.train.freeze_bn)
    if t.net is not None and t.net_frozen == frozen:
        return
    if t.net_frozen is not None and t.net_frozen != frozen:
        log.info(f"epoch {epoch}: backbone {'frozen' if frozen else 'unfrozen'}")
    net: nn.Module = t.model
    if t.dist.enabled:
        ids = [t.device.index] if t.device.type == "cuda" else None
        net = DistributedDataParallel(t.model, device_ids=ids)
    if t.cfg.train.compile:
        net = torch.compile(net)
    t.net, t.net_frozen = net, frozen


def forward_loss(t: Trainer, batch: dict) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """Forward under autocast, losses in float32. Returns (total, {"cls","hm","cstency"})."""
    ctx = autocast(t.device, t.amp_dtype)
    with ctx:
        outputs = t.net(batch["image"])
    outputs = {k: v.float() for k, v in outputs.items()}
    return t.criterion(outputs, batch)


def check_finite(total: torch.Tensor, terms: dict[str, torch.Tensor], batch: dict, t: Trainer, which: str) -> None:
    if bool(torch.isfinite(total)):
        return
    pairs = sorted(set(zip(batch.get("video_id", []), [int(i) for i in batch.get("frame_index", [])])))
    term_text = ", ".join(f"{k}={float(v):.6g}" for k, v in terms.items())
    raise NonFiniteLossError(
        f"non-finite loss {float(total.detach())} at epoch {t.epoch} step {t.step} ({which}); terms: {term_text}; "
        f"batch (video_id, frame_index): {pairs}"
    )


def accumulate_gradients(t: Trainer, micro: list[dict], which: str) -> dict[str, float]:
    """Forward + backward over the micro-batches, gradients averaged; returns the mean loss terms.

    Under DDP the all-reduce happens only on the last micro-batch (``no_sync`` on the others).
    """
    sums: dict[str, float] = {}
    for i, mb in enumerate(micro):
        last = i == len(micro) - 1
        sync = nullcontext() if (last or not t.dist.enabled) else t.net.no_sync()
        with sync:
            total, terms = forward_loss(t, mb)
            check_finite(total, terms, mb, t, which)
            t.scaler.scale(total / len(micro)).backward()
        for k, v in {"loss": total, **{f"loss_{k}": v for k, v in terms.items()}}.items():
            sums[k] = sums.get(k, 0.0) + float(v.detach()) / len(micro)
    return sums


def train_step(t: Trainer, batch: dict) -> dict[str, float]:
    """One optimiser step on a pairs batch (SAM: two forward/backward passes). Returns loss terms
    at the current weights (first pass) and the LR used.

    fp16: the SAM perturbation is computed from the scaled gradients (its direction g/||g|| does not
    depend on the scale); the scaler drives only the final base-optimiser step, after the weights were
    restored, so an overflow skips the update without leaving the weights perturbed.
    """
    micro = split_pairs(to_device(batch, t.device, t.cfg.train.channels_last), t.cfg.optim.accum_steps)
    lr = t.schedule.get_last_lr()
    t.base_opt.zero_grad(set_to_none=True)
    terms = accumulate_gradients(t, micro, "first pass")
    if t.sam is not None and t.sam.perturb():
        t.base_opt.zero_grad(set_to_none=True)
        bn = nullcontext() if t.cfg.optim.sam_bn_update else bn_running_stats_frozen(t.model)
        try:
            with bn:
                accumulate_gradients(t, micro, "SAM second pass")
        finally:
            t.sam.restore()
    if t.cfg.optim.grad_clip > 0:
        t.scaler.unscale_(t.base_opt)
        torch.nn.utils.clip_grad_norm_(t.model.parameters(), t.cfg.optim.grad_clip)
    t.scaler.step(t.base_opt)
    t.scaler.update()
    t.schedule.step()
    t.step += 1
    terms["lr"] = lr
    return terms


def train_one_epoch(t: Trainer, loader: DataLoader, dataset: TrainPairDataset, sampler: EpochSampler) -> dict[str, float]:
    """Train for ``t.steps_per_epoch`` steps of epoch ``t.epoch``; logs every ``train.log_every`` steps.

    Returns the epoch's mean loss terms and images/s.
    """
    dataset.set_epoch(t.epoch)
    sampler.set_epoch(t.epoch)
    apply_freeze(t, t.epoch)
    n_steps = t.steps_per_epoch
    images_per_step = 2 * t.plan.global_pairs
    bar = tqdm(total=n_steps, desc=f"epoch {t.epoch + 1}/{t.cfg.train.epochs}", disable=not t.dist.is_main,
               dynamic_ncols=True, leave=False)
    sums: dict[str, float] = {}
    window_start, window_steps = time.perf_counter(), 0
    epoch_start = time.perf_counter()
    for i, batch in enumerate(loader):
        if i >= n_steps:
            break
        terms = train_step(t, batch)
        for k, v in terms.items():
            sums[k] = sums.get(k, 0.0) + v
        window_steps += 1
        bar.update(1)
        if window_steps == t.cfg.train.log_every or i == n_steps - 1:
            elapsed = time.perf_counter() - window_start
            ips = window_steps * images_per_step / max(elapsed, 1e-9)
            bar.set_postfix({k.replace("loss_", ""): f"{v:.3g}" for k, v in terms.items() if k != "lr"} |
                            {"img/s": f"{ips:.1f}"})
            if t.logger is not None:
                t.logger.log(t.step, t.epoch, {f"train/{k}": v for k, v in terms.items()} |
                             {"train/images_per_s": ips})
            window_start, window_steps = time.perf_counter(), 0
    bar.close()
    steps_done = min(n_steps, len(loader))
    out = {k: v / steps_done for k, v in sums.items()}
    out["images_per_s"] = steps_done * images_per_step / (time.perf_counter() - epoch_start)
    return out


def check_replicas(t: Trainer) -> float:
    """Max |w_rank - w_rank0| over all parameters, reduced over ranks (0.0 when not distributed)."""
    if not t.dist.enabled:
        return 0.0
    flat = torch.cat([p.detach().flatten().float() for p in t.model.parameters()])
    ref = flat.clone()
    torch.distributed.broadcast(ref, src=0)
    diff = (flat - ref).abs().max()
    torch.distributed.all_reduce(diff, op=torch.distributed.ReduceOp.MAX)
    return float(diff)


def checkpoint_state(t: Trainer, val: dict | None, rng: list[dict]) -> dict:
    return training_state(model=t.model, optimizer=t.base_opt, schedule=t.schedule, scaler=t.scaler,
                          epochs_done=t.epoch + 1, step=t.step, best_auc=t.best_auc, val=val, history=t.history,
                          rng=rng, config=config_to_dict(t.cfg), world_size=t.dist.world_size)


def restore_state(t: Trainer, state: dict) -> None:
    """Load a ``last.pt`` state into the trainer so the next epoch is ``state["epoch"]``.

    A schedule stored for another number of steps (``train.epochs`` or the steps per epoch changed on
    ``--resume``) is rebuilt over this run's steps from the stored step; fewer epochs than already done is
    a ConfigError."""
    done = int(state.get("epoch", 0))
    if done > t.cfg.train.epochs:
        raise ConfigError(f"train.epochs={t.cfg.train.epochs}, but the run has already done {done} epochs; "
                          f"give train.epochs >= {done}")
    old_total = state.get("schedule", {}).get("total_steps")
    if int(state.get("step", 0)) > t.schedule.total_steps:
        raise ConfigError(f"the run has done {state['step']} optimiser steps, more than the {t.schedule.total_steps} "
                          f"= train.epochs {t.cfg.train.epochs} x {t.steps_per_epoch} steps per epoch of the resumed "
                          "config (did train.epochs, train.max_steps_per_epoch, train.batch_pairs or the data change?)")
    try:
        counters = restore_training_state(state, model=t.model, optimizer=t.base_opt, schedule=t.schedule,
                                          scaler=t.scaler)
    except RuntimeError as err:  # load_state_dict lists every mismatching tensor over many lines
        first = next((ln.strip() for ln in str(err).splitlines()[1:] if ln.strip()), str(err))
        raise ConfigError(f"the checkpoint's weights do not fit the model of the resumed config (a model.* "
                          f"override on --resume?): {first}") from err
    t.epoch, t.step, t.best_auc, t.history = (counters[k] for k in ("epoch", "step", "best_auc", "history"))
    if old_total is not None and int(old_total) != t.schedule.total_steps:
        log.warning(f"LR schedule rebuilt: the run was planned for {old_total} steps, now "
                    f"{t.schedule.total_steps} ({t.cfg.train.epochs} epochs x {t.steps_per_epoch}); at step "
                    f"{t.step} the LR moves to {t.schedule.get_last_lr():.4g} on the new curve")
    if len(counters["rng"]) != t.dist.world_size:
        log.warning(f"resuming a {len(counters['rng'])}-process run with {t.dist.world_size} processes: "
                    "the data order and RNG streams differ from what the original run would have done")
    else:
        set_rng_state(counters["rng"][t.dist.rank])


def build_trainer(cfg: Config, run_dir: Path, dist: Dist | None = None, resume_state: dict | None = None,
                  ) -> tuple[Trainer, TrainPairDataset, EpochSampler, DataLoader]:
    """Device, AMP, seeds, data, model, optimiser, schedule and scaler for ``cfg``; restores
    ``resume_state`` (a last.pt dict) when given. No logging files are opened here."""
    dist = dist or Dist()
    device = select_device(cfg.train.device, dist.local_rank if dist.enabled else None, what="train.device")
    amp_dtype, use_scaler = select_amp(cfg.train.amp, device, what="train.amp")
    seed_everything(cfg.train.seed, dist.rank, cfg.train.deterministic)
    keep_freed_memory()
    if cfg.train.threads > 0:
        # On a CPU shared with other jobs, fewer OpenMP threads avoid threads spinning while they wait
        # for a core (measured: one thread made small steps ~50x faster than two on a busy 2-core box).
        torch.set_num_threads(cfg.train.threads)
    plan = batch_plan(cfg, dist.world_size)
    dataset, sampler, loader = build_train_loader(cfg, dist, device, plan.per_process)
    model = build_model(cfg.model).to(device)
    if cfg.train.channels_last:
        model = model.to(memory_format=torch.channels_last)
    base_opt, sam = build_optimizer(cfg, model)
    n_steps = steps_per_epoch(cfg, loader)
    schedule = WarmupLinearSchedule(base_opt, cfg.train.epochs * n_steps, cfg.optim.lr_start * plan.lr_scale,
                                    cfg.optim.lr_peak * plan.lr_scale, cfg.optim.warmup_fraction)
    t = Trainer(cfg=cfg, run_dir=Path(run_dir), dist=dist, device=device, model=model,
                criterion=LAALoss(cfg.loss), base_opt=base_opt, sam=sam, schedule=schedule,
                scaler=torch.amp.GradScaler(device.type, enabled=use_scaler), amp_dtype=amp_dtype,
                steps_per_epoch=n_steps, plan=plan)
    if resume_state is not None:
        restore_state(t, resume_state)
    return t, dataset, sampler, loader
