"""Train LAA-Net on prepared shards.

    python train.py --config configs/laanet_sbi.yaml [key.sub=value ...]
    torchrun --nproc_per_node 4 train.py --config configs/laanet_sbi.yaml      # several GPUs (DDP)
    python train.py --resume runs/laanet_sbi-20260101-120000                  # continue a stopped run

The recipe (paper section 4.1): real videos only, a fresh draw of ``data.frames_per_video`` frames per
video every epoch, each frame giving a (real, SBI/BI pseudo-fake) pair; SAM (rho 0.05) over Adam with
weight decay 1e-4; LR linear 5e-5 -> 2e-4 over the first quarter of the steps, then linear to 0; the
backbone frozen for the first 6 epochs; validation every epoch with video-level AUC selecting best.pt.

Run folder ``<train.out_dir>/<train.run_name>/``: config.yaml (resolved), train.log, metrics.csv (every
logged scalar), tb/ (TensorBoard), last.pt (every epoch), best.pt (best validation AUC), curves.png.
Every checkpoint holds model, optimiser, LR schedule, AMP scaler, epoch/step, RNG states and the config.
"""
from __future__ import annotations

import argparse
import datetime as dt
import json
import logging
import math
import os
import random
import subprocess
import sys
import time
import warnings
from contextlib import nullcontext
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from torch import nn
from torch.nn.parallel import DistributedDataParallel
from torch.utils.data import DataLoader, DistributedSampler
from tqdm import tqdm

from model.checkpoint import save_checkpoint
from model.config import Config, ConfigError, config_from_dict, config_to_dict, load_config, save_config
from model.data import TrainPairDataset, collate_pairs
from model.laanet import build_model, set_backbone_frozen
from model.losses import LAALoss
from model.sam import SAM, bn_running_stats_frozen
from model.schedule import WarmupLinearSchedule, backbone_frozen
from model.train_log import RunLogger, plot_curves
from model.validation import build_val_loader, validate
from pipeline.cli_errors import debugging, one_line
from pipeline.shards import ShardError

log = logging.getLogger("train")


class NonFiniteLossError(RuntimeError):
    """Raised when a training loss is NaN or inf; the message names the batch and the loss terms."""


# --------------------------------------------------------------------------- command line


def get_args_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description="Train LAA-Net on HDF5 shards.", add_help=True)
    p.add_argument("--config", type=Path, help="experiment YAML (configs/*.yaml); not needed with --resume")
    p.add_argument("--resume", type=Path, metavar="RUN_DIR",
                   help="continue the run in RUN_DIR from its last.pt (its stored config, plus any overrides)")
    p.add_argument("--stop-after-epochs", type=int, default=0, metavar="N",
                   help="end this invocation after N more epochs (checkpointed; continue with --resume)")
    p.add_argument("--verify-shards", action="store_true",
                   help="read every chunk of every data and val shard first (checksums) and stop on any problem; "
                        "without it a shard is checked when opened and a corrupt crop stops the run when read")
    p.add_argument("overrides", nargs="*", metavar="key.sub=value",
                   help="config overrides, e.g. optim.lr_peak=3e-4 train.epochs=10")
    return p


def main(args: argparse.Namespace) -> Path:
    """Resolve the config and run folder, then train. Returns the run folder."""
    if args.config is None and args.resume is None:
        raise SystemExit("train.py: give --config CONFIG.yaml or --resume RUN_DIR")
    if args.config is not None and args.resume is not None:
        raise SystemExit("train.py: --resume uses the run's stored config; give overrides instead of --config")
    dist = setup_distributed()
    try:
        resume_state = None
        if args.resume is not None:
            ckpt_path = args.resume / "last.pt"
            if not ckpt_path.is_file():
                raise SystemExit(f"train.py: {ckpt_path}: no last.pt to resume from")
            resume_state = torch.load(ckpt_path, map_location="cpu", weights_only=True)
            cfg = config_from_dict(resume_state["config"], args.overrides)
            run_dir = args.resume
        else:
            cfg = load_config(args.config, args.overrides)
            run_dir = make_run_dir(cfg, args.config, dist)
            if (run_dir / "last.pt").exists():
                raise SystemExit(f"train.py: {run_dir} already holds a run (last.pt); continue it with "
                                 f"--resume {run_dir} or choose another train.run_name")
        if args.verify_shards and dist.is_main:
            verify_shards(list(cfg.data.shards) + list(cfg.val.shards))
        fresh = not run_dir.exists()
        try:
            train(cfg, run_dir, dist, resume_state=resume_state, stop_after_epochs=args.stop_after_epochs)
        except (ConfigError, ShardError, ValueError):
            # A run that failed on its config or data before its first checkpoint leaves no folder behind.
            if fresh and dist.is_main and not (run_dir / "last.pt").exists():
                remove_run_dir(run_dir)
            raise
    finally:
        teardown_distributed(dist)
    return run_dir


def verify_shards(split_dirs: list[str]) -> None:
    """``--verify-shards``: ``pipeline verify`` of every split folder before the run folder exists."""
    from pipeline.verify import verify_split

    for d in split_dirs:
        problems = verify_split(d)
        if problems:
            more = f" (and {len(problems) - 1} more: run `python -m pipeline verify {d}`)" if len(problems) > 1 else ""
            raise ShardError(f"{problems[0]}{more}")


def remove_run_dir(run_dir: Path) -> None:
    """Delete a run folder this invocation created (closing train.log first)."""
    import shutil

    for h in list(log.handlers):
        h.close()
        log.removeHandler(h)
    shutil.rmtree(run_dir, ignore_errors=True)


def cli(argv: list[str] | None = None) -> None:
    """``python train.py``: config, data and checkpoint errors end as one line (``LAANET_DEBUG=1``: traceback)."""
    try:
        main(get_args_parser().parse_args(argv))
    except (ConfigError, NonFiniteLossError, ShardError, ValueError) as err:
        if debugging():
            raise
        raise SystemExit(f"train.py: {one_line(err)}") from None


# --------------------------------------------------------------------------- setup


@dataclass
class Dist:
    """Process-group facts; world_size 1 and rank 0 when not launched by torchrun."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0

    @property
    def enabled(self) -> bool:
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def setup_distributed() -> Dist:
    """Join the process group torchrun describes in the environment (NCCL on GPU, gloo on CPU)."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return Dist()
    rank, local = int(os.environ["RANK"]), int(os.environ.get("LOCAL_RANK", "0"))
    use_cuda = torch.cuda.is_available()
    if use_cuda:
        torch.cuda.set_device(local)
    torch.distributed.init_process_group(backend="nccl" if use_cuda else "gloo")
    return Dist(rank=rank, world_size=world, local_rank=local)


def teardown_distributed(dist: Dist) -> None:
    if dist.enabled and torch.distributed.is_initialized():
        torch.distributed.destroy_process_group()


def make_run_dir(cfg: Config, config_path: Path | None, dist: Dist) -> Path:
    """``out_dir/run_name`` (default: config stem + UTC time); rank 0 decides, the others receive it."""
    name = cfg.train.run_name or f"{Path(config_path).stem if config_path else 'run'}-" \
                                 f"{dt.datetime.now(dt.timezone.utc):%Y%m%d-%H%M%S}"
    path = [str(Path(cfg.train.out_dir) / name)]
    if dist.enabled:
        torch.distributed.broadcast_object_list(path, src=0)
    return Path(path[0])


def select_device(name: str, dist: Dist) -> torch.device:
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    if name == "cuda" and dist.enabled:
        name = f"cuda:{dist.local_rank}"
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise ConfigError(f"train.device={name!r} but no CUDA device is available")
    return torch.device(name)


def select_amp(mode: str, device: torch.device) -> tuple[torch.dtype | None, bool]:
    """(autocast dtype or None, use a GradScaler). auto: bf16 where supported, else fp16 + scaler, CPU off."""
    if mode == "auto":
        if device.type != "cuda":
            return None, False
        mode = "bf16" if torch.cuda.is_bf16_supported() else "fp16"
    if mode == "off":
        return None, False
    if mode == "bf16":
        return torch.bfloat16, False
    if device.type != "cuda":
        raise ConfigError("train.amp=fp16 needs a CUDA device (use bf16 or off on CPU)")
    return torch.float16, True


def seed_everything(seed: int, rank: int, deterministic: bool) -> None:
    """Seed Python, NumPy and torch (per rank, so dropout differs across ranks like independent workers)."""
    random.seed(seed + rank)
    np.random.seed(seed + rank)
    torch.manual_seed(seed + rank)
    if deterministic:
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
        torch.use_deterministic_algorithms(True, warn_only=True)
        torch.backends.cudnn.benchmark = False
    elif torch.cuda.is_available():
        torch.backends.cudnn.benchmark = True


def setup_logging(run_dir: Path, dist: Dist) -> None:
    """Text log to stderr and ``run_dir/train.log`` on rank 0; warnings only on other ranks."""
    log.handlers.clear()
    log.propagate = False
    log.setLevel(logging.INFO if dist.is_main else logging.WARNING)
    fmt = logging.Formatter("%(asctime)s %(message)s", "%H:%M:%S")
    handlers: list[logging.Handler] = [logging.StreamHandler(sys.stderr)]
    if dist.is_main:
        handlers.append(logging.FileHandler(run_dir / "train.log"))
    for h in handlers:
        h.setFormatter(fmt)
        log.addHandler(h)


def code_version() -> str:
    """``git describe`` of the working tree, recorded in checkpoints ("unknown" outside a git checkout)."""
    try:
        out = subprocess.run(["git", "describe", "--always", "--dirty"], capture_output=True, text=True,
                             cwd=Path(__file__).resolve().parent, timeout=10)
        return out.stdout.strip() or "unknown"
    except (OSError, subprocess.SubprocessError):
        return "unknown"


# --------------------------------------------------------------------------- data


def build_train_loader(cfg: Config, dist: Dist, device: torch.device) -> tuple[TrainPairDataset, DistributedSampler, DataLoader]:
    """Pairs loader. Every epoch ``dataset.set_epoch(e)`` re-draws the frames per video and
    ``sampler.set_epoch(e)`` reshuffles; workers are not persistent so each epoch's workers get the
    dataset with its new draw. The sampler is a DistributedSampler also for one process: its
    shuffle is a function of (seed, epoch) only, which makes resumed runs repeat the same order."""
    dataset = TrainPairDataset(cfg.data)
    sampler = DistributedSampler(dataset, num_replicas=dist.world_size, rank=dist.rank, shuffle=True,
                                 seed=cfg.train.seed, drop_last=True)
    loader = DataLoader(dataset, batch_size=cfg.train.batch_pairs, sampler=sampler, drop_last=True,
                        num_workers=cfg.train.num_workers, collate_fn=collate_pairs,
                        pin_memory=device.type == "cuda", persistent_workers=False)
    if len(loader) == 0:
        raise ConfigError(
            f"data.shards hold {len(dataset)} training pairs per epoch, fewer than one batch of "
            f"train.batch_pairs={cfg.train.batch_pairs} per process (world size {dist.world_size})"
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
    out = {}
    for k, v in batch.items():
        if torch.is_tensor(v):
            v = v.to(device, non_blocking=True)
            if k == "image" and channels_last:
                v = v.contiguous(memory_format=torch.channels_last)
        out[k] = v
    return out


# --------------------------------------------------------------------------- model and optimiser


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
    net: nn.Module | None = None
    net_frozen: bool | None = None
    logger: RunLogger | None = None
    step: int = 0
    epoch: int = 0
    best_auc: float = -math.inf
    history: list[dict] = field(default_factory=list)


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


# --------------------------------------------------------------------------- one step


def forward_loss(t: Trainer, batch: dict) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """Forward under autocast, losses in float32. Returns (total, {"cls","hm","cstency"})."""
    ctx = torch.autocast(t.device.type, dtype=t.amp_dtype) if t.amp_dtype is not None else nullcontext()
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
        try:
            with bn_running_stats_frozen(t.model):
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


# --------------------------------------------------------------------------- one epoch


def train_one_epoch(t: Trainer, loader: DataLoader, dataset: TrainPairDataset, sampler: DistributedSampler) -> dict[str, float]:
    """Train for ``t.steps_per_epoch`` steps of epoch ``t.epoch``; logs every ``train.log_every`` steps.

    Returns the epoch's mean loss terms and images/s.
    """
    dataset.set_epoch(t.epoch)
    sampler.set_epoch(t.epoch)
    apply_freeze(t, t.epoch)
    n_steps = t.steps_per_epoch
    images_per_step = 2 * t.cfg.train.batch_pairs * t.dist.world_size
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


# --------------------------------------------------------------------------- checkpoints


def rng_state() -> dict:
    """Python, NumPy, torch (and CUDA) RNG states as tensors and plain lists, so checkpoints stay
    loadable with ``torch.load(weights_only=True)``."""
    version, mt, gauss = random.getstate()
    kind, keys, pos, has_gauss, cached = np.random.get_state()
    state = {"python": [version, list(mt), gauss], "numpy": [kind, torch.from_numpy(keys.astype(np.int64)),
                                                             int(pos), int(has_gauss), float(cached)],
             "torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict) -> None:
    version, mt, gauss = state["python"]
    random.setstate((version, tuple(mt), gauss))
    kind, keys, pos, has_gauss, cached = state["numpy"]
    np.random.set_state((kind, keys.numpy().astype(np.uint32), pos, has_gauss, cached))
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def gather_rng_states(dist: Dist) -> list[dict]:
    """Every rank's RNG states (collective under DDP), so a resumed DDP run restores each rank's own."""
    if not dist.enabled:
        return [rng_state()]
    states: list = [None] * dist.world_size
    torch.distributed.all_gather_object(states, rng_state())
    return states


def checkpoint_state(t: Trainer, val: dict | None, rng: list[dict]) -> dict:
    return {
        "model": t.model.state_dict(),
        "optimizer": t.base_opt.state_dict(),
        "schedule": t.schedule.state_dict(),
        "scaler": t.scaler.state_dict(),
        "epoch": t.epoch + 1,  # epochs completed
        "step": t.step,
        "best_auc": t.best_auc,
        "val": val,
        "history": t.history,
        "rng": rng,  # one entry per rank
        "config": config_to_dict(t.cfg),
        "code_version": code_version(),
        "world_size": t.dist.world_size,
    }


def restore_state(t: Trainer, state: dict) -> None:
    """Load a ``last.pt`` state into the trainer so the next epoch is ``state["epoch"]``."""
    t.model.load_state_dict(state["model"])
    t.base_opt.load_state_dict(state["optimizer"])
    t.schedule.load_state_dict(state["schedule"])
    t.scaler.load_state_dict(state["scaler"])
    t.epoch = int(state["epoch"])
    t.step = int(state["step"])
    t.best_auc = float(state["best_auc"])
    t.history = list(state.get("history", []))
    if len(state["rng"]) != t.dist.world_size:
        log.warning(f"resuming a {len(state['rng'])}-process run with {t.dist.world_size} processes: "
                    "the data order and RNG streams differ from what the original run would have done")
    else:
        set_rng_state(state["rng"][t.dist.rank])


# --------------------------------------------------------------------------- the run


def build_trainer(cfg: Config, run_dir: Path, dist: Dist | None = None, resume_state: dict | None = None,
                  ) -> tuple[Trainer, TrainPairDataset, DistributedSampler, DataLoader]:
    """Device, AMP, seeds, data, model, optimiser, schedule and scaler for ``cfg``; restores
    ``resume_state`` (a last.pt dict) when given. No logging files are opened here."""
    dist = dist or Dist()
    device = select_device(cfg.train.device, dist)
    amp_dtype, use_scaler = select_amp(cfg.train.amp, device)
    seed_everything(cfg.train.seed, dist.rank, cfg.train.deterministic)
    if cfg.train.threads > 0:
        # On a CPU shared with other jobs, fewer OpenMP threads avoid threads spinning while they wait
        # for a core (measured: one thread made small steps ~50x faster than two on a busy 2-core box).
        torch.set_num_threads(cfg.train.threads)
    dataset, sampler, loader = build_train_loader(cfg, dist, device)
    model = build_model(cfg.model).to(device)
    if cfg.train.channels_last:
        model = model.to(memory_format=torch.channels_last)
    base_opt, sam = build_optimizer(cfg, model)
    n_steps = steps_per_epoch(cfg, loader)
    schedule = WarmupLinearSchedule(base_opt, cfg.train.epochs * n_steps, cfg.optim.lr_start, cfg.optim.lr_peak,
                                    cfg.optim.warmup_fraction)
    t = Trainer(cfg=cfg, run_dir=Path(run_dir), dist=dist, device=device, model=model,
                criterion=LAALoss(cfg.loss), base_opt=base_opt, sam=sam, schedule=schedule,
                scaler=torch.amp.GradScaler(device.type, enabled=use_scaler), amp_dtype=amp_dtype,
                steps_per_epoch=n_steps)
    if resume_state is not None:
        restore_state(t, resume_state)
    return t, dataset, sampler, loader


def train(cfg: Config, run_dir: Path, dist: Dist | None = None, resume_state: dict | None = None,
          stop_after_epochs: int = 0) -> Trainer:
    """Train ``cfg`` into ``run_dir`` (created if needed); returns the trainer (model, history, step).

    ``stop_after_epochs`` > 0 ends after that many epochs of this call (last.pt lets ``--resume``
    continue); the LR schedule still spans ``train.epochs``.
    """
    dist = dist or Dist()
    run_dir = Path(run_dir)
    if dist.is_main:
        run_dir.mkdir(parents=True, exist_ok=True)
    if dist.enabled:
        torch.distributed.barrier()
    setup_logging(run_dir, dist)
    with warnings.catch_warnings(record=True) as caught:  # data warnings (e.g. videos left out) go to train.log too
        warnings.simplefilter("always")
        t, dataset, sampler, loader = build_trainer(cfg, run_dir, dist, resume_state)
    for w in caught:
        log.warning(f"{w.category.__name__}: {w.message}")
    if t.device.type == "cpu":
        log.warning("training on CPU: fine for the demo and tests, far too slow for the paper's recipe")
    if resume_state is not None:
        log.info(f"resumed {run_dir} at epoch {t.epoch}, step {t.step}")
    if dist.is_main:
        save_config(cfg, run_dir / "config.yaml")
        t.logger = RunLogger(run_dir, keep_until_step=t.step if resume_state is not None else None)
    val_loader, val_mode = build_val_loader(cfg) if dist.is_main and cfg.val.every > 0 else (None, "off")
    log.info(f"run {run_dir}: {len(dataset)} pairs/epoch, {t.steps_per_epoch} steps/epoch x {cfg.train.epochs} "
             f"epochs, {dist.world_size} process(es) on {t.device}, amp={t.amp_dtype}, "
             f"SAM={'on' if t.sam else 'off'}, validation: {val_mode}")

    end_epoch = cfg.train.epochs if stop_after_epochs <= 0 else min(cfg.train.epochs, t.epoch + stop_after_epochs)
    try:
        while t.epoch < end_epoch:
            epoch_stats = train_one_epoch(t, loader, dataset, sampler)
            run_epoch_end(t, epoch_stats, val_loader, val_mode)
            t.epoch += 1
    finally:
        if t.logger is not None:
            t.logger.close()
    if dist.is_main:
        plot_curves(run_dir / "metrics.csv", run_dir / "curves.png")
        log.info(f"done: {run_dir} (curves.png, last.pt{', best.pt' if math.isfinite(t.best_auc) else ''})")
    return t


def run_epoch_end(t: Trainer, stats: dict[str, float], val_loader, val_mode: str) -> None:
    """Validate (rank 0), log, write last.pt and, when the video AUC improved, best.pt."""
    replica_diff = check_replicas(t) if t.cfg.train.check_replicas else 0.0
    val = None
    if val_loader is not None and (t.epoch + 1) % t.cfg.val.every == 0:
        val = validate(t.model, val_loader, t.device, t.amp_dtype, t.cfg.train.channels_last)
        val["mode"] = val_mode
    rng = gather_rng_states(t.dist)  # after validation, which draws from the RNG too (loader seeds)
    record = {"epoch": t.epoch + 1, "step": t.step, **{f"train_{k}": v for k, v in stats.items()},
              "replica_max_abs_diff": replica_diff}
    if val is not None:
        record |= {f"val_{k}": v for k, v in val.items()}
    t.history.append(record)
    if t.dist.is_main:
        scalars = {f"epoch/train_{k}": v for k, v in stats.items()}
        if val is not None:
            scalars |= {f"val/{k}": v for k, v in val.items() if isinstance(v, (int, float))}
        t.logger.log(t.step, t.epoch, scalars)
        text = ", ".join(f"{k}={v:.4g}" for k, v in stats.items())
        vtext = f"; val ({val_mode}): " + ", ".join(
            f"{k}={v:.4f}" for k, v in val.items() if isinstance(v, float)) if val else ""
        log.info(f"epoch {t.epoch + 1}/{t.cfg.train.epochs}: {text}{vtext}"
                 + (f"; replicas max |dw| = {replica_diff:.3g}" if t.dist.enabled else ""))
        improved = val is not None and math.isfinite(val["auc_video"]) and val["auc_video"] > t.best_auc
        if improved:
            t.best_auc = val["auc_video"]
        state = checkpoint_state(t, val, rng)
        save_checkpoint(t.run_dir / "last.pt", state)
        if improved:
            save_checkpoint(t.run_dir / "best.pt", state)
            log.info(f"best.pt: video AUC {t.best_auc:.4f} at epoch {t.epoch + 1}")
        (t.run_dir / "history.json").write_text(json.dumps(t.history, indent=1))
    if t.dist.enabled:
        torch.distributed.barrier()


if __name__ == "__main__":
    cli()
