"""Train LAA-Net on prepared shards.

    python train.py --config configs/laanet_sbi.yaml [key.sub=value ...]
    torchrun --nproc_per_node 4 train.py --config configs/laanet_sbi.yaml      # several GPUs (DDP)
    python train.py --resume runs/laanet_sbi-20260101-120000                  # continue a stopped run
    torchrun --nproc_per_node 4 --max-restarts 3 train.py --config C.yaml --resume auto train.run_name=R
                                                                   # restarts continue run R

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
import shutil
import sys
import warnings
from pathlib import Path

import torch

from model import cli as flags
from model.checkpoint import read_checkpoint, save_checkpoint
from model.config import Config, ConfigError
from model.config_io import config_from_dict, config_to_yaml, load_config, save_config
from model.device import AMP_MODES, DEVICES_HELP
from model.eval.validation import build_val_loader, validate
from model.train.dist import Dist, gather_rng_states, setup_distributed, teardown_distributed
from model.train.engine import (
    NonFiniteLossError,
    Trainer,
    apply_freeze,
    build_trainer,
    check_replicas,
    checkpoint_state,
    train_one_epoch,
    train_step,
)
from model.train.log import RunLogger, plot_curves
from model.train.schedule import batch_plan
from pipeline.errors import UserError, user_errors
from pipeline.files import atomic_write
from pipeline.shards import ShardError
from pipeline.verify import verify_split

log = logging.getLogger("train")


# --------------------------------------------------------------------------- command line


EXAMPLES = """\
examples:
  python train.py --config configs/laanet_sbi.yaml
  python train.py --config configs/laanet_sbi.yaml optim.lr_peak=3e-4 train.epochs=50
  python train.py --config configs/demo_cpu.yaml --print-config        # the resolved config, then exit
  python train.py --config configs/laanet_sbi.yaml --dry-run           # data, model, one step, timing; writes nothing
  torchrun --standalone --nproc_per_node 4 train.py --config configs/laanet_sbi.yaml --resume auto \\
      train.run_name=sbi4   # 8 pairs per step split over 4 GPUs; a restart continues the run
  python train.py --resume runs/laanet_sbi-20260101-120000            # continue a stopped run
  python train.py --resume runs/laanet_sbi-20260101-120000/last.pt train.epochs=120   # and extend it

train.batch_pairs is the global batch (pairs per optimiser step over all processes, 2 images each); the
LRs follow the linear scaling rule from optim.lr_base_batch_pairs (8). See docs/training.md.
"""


def get_args_parser() -> argparse.ArgumentParser:
    p = flags.parser("train.py", "Train LAA-Net on HDF5 shards.", EXAMPLES)
    p.add_argument("--config", type=Path, default=None,
                   help="experiment YAML (configs/*.yaml); with --resume RUN not needed (the run's stored config is used)")
    p.add_argument("--resume", default=None, metavar="RUN|last.pt|auto",
                   help="continue a run from a run folder (its last.pt) or a checkpoint file, with its stored config "
                        "plus any overrides; 'auto' (with --config): continue train.out_dir/train.run_name if it "
                        "holds last.pt, else start it (for torchrun --max-restarts and requeued cluster jobs)")
    p.add_argument("--stop-after-epochs", type=int, default=0, metavar="N",
                   help="end this invocation after N more epochs (checkpointed; continue with --resume); 0: no limit")
    p.add_argument("--verify-shards", action="store_true",
                   help="read every chunk of every data and val shard first (checksums) and stop on any problem; "
                        "without it a shard is checked when opened and a corrupt crop stops the run when read")
    p.add_argument("--device", default=None, help=f"shortcut for train.device=... ({DEVICES_HELP})")
    p.add_argument("--amp", default=None, choices=AMP_MODES, help="shortcut for train.amp=... (autocast precision)")
    flags.add_loader_workers(p, None, "per training process (shortcut for train.num_workers=N)")
    p.add_argument("--out", default=None, metavar="DIR",
                   help="shortcut for train.out_dir=DIR: this command writes its run folder into DIR")
    p.add_argument("--print-config", action="store_true",
                   help="print the resolved config as YAML and exit (no data read, nothing written)")
    p.add_argument("--dry-run", action="store_true",
                   help="build the data and the model, take one training step, print timing and memory, and exit "
                        "without writing a run folder")
    p.add_argument("overrides", nargs="*", metavar="key.sub=value",
                   help="config overrides, e.g. optim.lr_peak=3e-4 train.epochs=10")
    return p


def cli_overrides(args: argparse.Namespace) -> list[str]:
    """The positional overrides, then those of --device, --amp, --loader-workers and --out (which win)."""
    extra = [f"train.device={args.device}"] * (args.device is not None)
    extra += [f"train.amp={args.amp}"] * (args.amp is not None)
    extra += [f"train.num_workers={args.loader_workers}"] * (args.loader_workers is not None)
    extra += [f"train.out_dir={args.out}"] * (args.out is not None)
    return list(args.overrides) + extra


def check_args(args: argparse.Namespace) -> None:
    """Reject incompatible flags before any work."""
    auto = args.resume == "auto"
    if args.config is None and args.resume is None:
        raise ConfigError("give --config CONFIG.yaml, --resume RUN_DIR, or both with --resume auto")
    if auto and args.config is None:
        raise ConfigError("--resume auto needs --config (it names the run folder train.out_dir/train.run_name)")
    if args.config is not None and args.resume is not None and not auto:
        raise ConfigError("--resume RUN uses the run's stored config; give overrides instead of --config "
                          "(or --resume auto with --config)")
    if args.dry_run and args.print_config:
        raise ConfigError("give --print-config or --dry-run, not both")
    if args.stop_after_epochs < 0:
        raise ConfigError(f"--stop-after-epochs must be >= 0, got {args.stop_after_epochs}")


def resume_checkpoint(path: str | Path) -> Path:
    """``--resume`` PATH as a last.pt file: a run folder gives its last.pt, a file is taken as it is."""
    path = Path(path)
    if path.is_dir():
        ckpt = path / "last.pt"
        if ckpt.is_file():
            return ckpt
        others = sorted(q.name for q in path.glob("*.pt"))
        hint = f" (it holds {', '.join(others)}: give --resume {path / others[0]} to continue from that)" if others else ""
        raise ConfigError(f"{path}: no last.pt to resume from{hint}")
    if not path.exists():
        raise ConfigError(f"{path}: no such run folder or checkpoint to resume from")
    return path


def load_resume_state(ckpt: Path) -> dict:
    """A training checkpoint's dict (one-line errors for files that are not one)."""
    state = read_checkpoint(ckpt)
    missing = [k for k in ("optimizer", "schedule", "scaler", "epoch", "step", "rng") if k not in state]
    if missing:
        raise ConfigError(f"{ckpt}: not a training checkpoint (no {', '.join(missing)}; a converted or "
                          "model-only file?): it can be evaluated but not resumed")
    return state


def decide_resume(run_dir: Path, dist: Dist) -> bool:
    """``--resume auto``: does ``run_dir`` hold last.pt? Rank 0 looks, every rank gets its answer, so all
    ranks continue or all start, whatever their view of a shared file system."""
    found = [(run_dir / "last.pt").is_file() if dist.is_main else None]
    if dist.enabled:
        torch.distributed.broadcast_object_list(found, src=0)
    return bool(found[0])


def resolve_run(args: argparse.Namespace, dist: Dist) -> tuple[Config, Path, dict | None]:
    """(config, run folder, checkpoint dict to resume or None) from the command line."""
    overrides = cli_overrides(args)
    if args.resume is None or args.resume == "auto":
        cfg = load_config(args.config, overrides)
        if args.resume == "auto":
            if not cfg.train.run_name:
                raise ConfigError("--resume auto needs a fixed run folder: give train.run_name=NAME (the default "
                                  "name holds the start time, so a restart would start a new run)")
            run_dir = Path(cfg.train.out_dir) / cfg.train.run_name
            if decide_resume(run_dir, dist):
                state = load_resume_state(run_dir / "last.pt")
                return config_from_dict(state["config"], overrides), run_dir, state
            return cfg, run_dir, None
        run_dir = make_run_dir(cfg, args.config, dist)
        if (run_dir / "last.pt").exists():
            raise ConfigError(f"{run_dir} already holds a run (last.pt); continue it with "
                              f"--resume {run_dir} (or --resume auto) or choose another train.run_name")
        return cfg, run_dir, None
    ckpt = resume_checkpoint(args.resume)
    state = load_resume_state(ckpt)
    return config_from_dict(state["config"], overrides), ckpt.parent, state


def main(args: argparse.Namespace) -> Path | None:
    """Resolve the config and run folder, then train. Returns the run folder (None for --print-config
    and --dry-run, which write nothing)."""
    check_args(args)
    if args.print_config:
        print(config_to_yaml(print_config_of(args)).rstrip())
        return None
    dist = setup_distributed()
    try:
        cfg, run_dir, resume_state = resolve_run(args, dist)
        batch_plan(cfg, dist.world_size)  # a batch that does not split over the processes stops here, before any work
        if args.verify_shards and dist.is_main:
            verify_shards(list(cfg.data.shards) + list(cfg.val.shards))
        if args.dry_run:
            dry_run(cfg, dist, resume_state)
            return None
        fresh = not run_dir.exists()
        try:
            train(cfg, run_dir, dist, resume_state=resume_state, stop_after_epochs=args.stop_after_epochs)
        except UserError as err:
            # A run that failed on its config or data before its first checkpoint leaves no folder behind; after
            # any other error (a non-finite loss included) the folder stays for inspection.
            if fresh and dist.is_main and not (run_dir / "last.pt").exists() and not isinstance(err, NonFiniteLossError):
                remove_run_dir(run_dir)
            raise
    finally:
        teardown_distributed(dist)
    return run_dir


def print_config_of(args: argparse.Namespace) -> Config:
    """The config a run with these arguments would use (``--resume auto``: the stored one when the run
    folder holds last.pt); touches no process group."""
    single = Dist()
    if args.resume is None:
        return load_config(args.config, cli_overrides(args))
    return resolve_run(args, single)[0]


def training_data_line(dataset) -> str:
    """What the run trains on, and what its shards hold that it leaves out (fake videos: the recipe synthesises
    its fakes from real videos only; frames without landmarks cannot be blended)."""
    s = dataset.skipped
    line = f"training data: {len(dataset.videos)} real videos with landmarks"
    if s.get("fake_videos"):
        line += (f"; {s['fake_videos']} fake videos in the shards are left out (the recipe trains on real videos "
                 f"and their pseudo-fakes only)")
    if s.get("videos_without_landmarks") or s.get("frames_without_landmarks"):
        line += (f"; left out for lack of landmarks: {s.get('videos_without_landmarks', 0)} videos, "
                 f"{s.get('frames_without_landmarks', 0)} frames")
    return line


def dry_run(cfg: Config, dist: Dist, resume_state: dict | None = None) -> None:
    """Build data and model as a run would, take one optimiser step, print what it cost; write nothing."""
    import resource
    import time

    t0 = time.perf_counter()
    t, dataset, sampler, loader = build_trainer(cfg, Path(cfg.train.out_dir) / "dry-run-unused", dist, resume_state)
    t_build = time.perf_counter() - t0
    sampler.set_epoch(t.epoch)
    apply_freeze(t, t.epoch)
    if t.device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(t.device)
    t1 = time.perf_counter()
    batch = next(iter(loader))
    t_batch = time.perf_counter() - t1
    t2 = time.perf_counter()
    terms = train_step(t, batch)
    if t.device.type == "cuda":
        torch.cuda.synchronize(t.device)
    t_step = time.perf_counter() - t2
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20  # KiB on Linux
    mem = f"peak RSS {rss:.2f} GiB"
    if t.device.type == "cuda":
        mem += f", peak GPU memory {torch.cuda.max_memory_allocated(t.device) / 2**30:.2f} GiB"
    if dist.is_main:
        n_params = sum(p.numel() for p in t.model.parameters())
        print(f"dry run on {t.device} ({dist.world_size} process(es), amp={t.amp_dtype}, "
              f"SAM={'on' if t.sam else 'off'}): {len(dataset)} pairs/epoch, {t.steps_per_epoch} steps/epoch "
              f"x {cfg.train.epochs} epochs; {n_params / 1e6:.2f} M parameters")
        print(t.plan.describe(cfg, dist.world_size))
        print(training_data_line(dataset))
        print(f"build (data + model) {t_build:.2f} s; first batch {t_batch:.2f} s; one step {t_step:.2f} s "
              f"({2 * t.plan.per_process / t_step:.2f} images/s per process, first step: includes warm-up); "
              f"loss {terms['loss']:.4g}; {mem}")


def verify_shards(split_dirs: list[str]) -> None:
    """``--verify-shards``: ``pipeline verify`` of every split folder before the run folder exists."""
    for d in split_dirs:
        problems = verify_split(d)
        if problems:
            more = f" (and {len(problems) - 1} more: run `python -m pipeline verify {d}`)" if len(problems) > 1 else ""
            raise ShardError(f"{problems[0]}{more}")


def remove_run_dir(run_dir: Path) -> None:
    """Delete a run folder this invocation created (closing train.log first)."""
    for h in list(log.handlers):
        h.close()
        log.removeHandler(h)
    shutil.rmtree(run_dir, ignore_errors=True)


def cli(argv: list[str] | None = None) -> None:
    """``python train.py``: config, data and checkpoint errors (UserError) end as one line and exit 1
    (``LAANET_DEBUG=1``: traceback); anything else keeps its traceback.

    Under torchrun a config error, the same on every rank, is printed by rank 0 only."""
    args = get_args_parser().parse_args(argv)
    other_rank = int(os.environ.get("RANK", "0")) != 0
    with user_errors("train.py", quiet=lambda err: isinstance(err, ConfigError) and other_rank):
        main(args)


# --------------------------------------------------------------------------- setup


def make_run_dir(cfg: Config, config_path: Path | None, dist: Dist) -> Path:
    """``out_dir/run_name`` (default: config stem + UTC time); rank 0 decides, the others receive it."""
    name = cfg.train.run_name or f"{Path(config_path).stem if config_path else 'run'}-" \
                                 f"{dt.datetime.now(dt.timezone.utc):%Y%m%d-%H%M%S}"
    path = [str(Path(cfg.train.out_dir) / name)]
    if dist.enabled:
        torch.distributed.broadcast_object_list(path, src=0)
    return Path(path[0])


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


# --------------------------------------------------------------------------- the run


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
        log.info(f"resolved config ({run_dir / 'config.yaml'}):\n{config_to_yaml(cfg).rstrip()}")
        # A fresh start in an existing folder (--resume auto after a run that died before its first last.pt)
        # drops that run's rows: keep_until_step=0 keeps none.
        t.logger = RunLogger(run_dir, keep_until_step=t.step if resume_state is not None else 0)
        log.info(t.plan.describe(cfg, dist.world_size))
        log.info(training_data_line(dataset))
    val_loader, val_mode = build_val_loader(cfg) if dist.is_main and cfg.val.every > 0 else (None, "off")
    log.info(f"run {run_dir}: {len(dataset)} pairs/epoch, {t.steps_per_epoch} steps/epoch x {cfg.train.epochs} "
             f"epochs, {dist.world_size} process(es) on {t.device}, amp={t.amp_dtype}, "
             f"SAM={'on' if t.sam else 'off'}, validation (selects best.pt): {val_mode}")

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
    """Validate (rank 0), log, write last.pt and, when the selection AUC (val.select) improved, best.pt."""
    replica_diff = check_replicas(t) if t.cfg.train.check_replicas else 0.0
    val = None
    last_epoch = t.epoch + 1 == t.cfg.train.epochs  # always validated: best.pt exists and may be the end
    if val_loader is not None and ((t.epoch + 1) % t.cfg.val.every == 0 or last_epoch):
        # On a forked RNG: the loader's seed draw would otherwise shift every later random draw, so how
        # often, and on how many frames, a run validates would change the weights it trains.
        cuda = [t.device] if t.device.type == "cuda" else []
        with torch.random.fork_rng(devices=cuda, device_type="cuda"):
            val = validate(t.model, val_loader, t.device, t.amp_dtype, t.cfg.train.channels_last, t.cfg.val.flip)
        val["mode"] = val_mode
    rng = gather_rng_states(t.dist)
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
        metric = t.cfg.val.select
        improved = val is not None and math.isfinite(val[metric]) and val[metric] > t.best_auc
        if improved:
            t.best_auc = val[metric]
        state = checkpoint_state(t, val, rng)
        save_checkpoint(t.run_dir / "last.pt", state)
        if improved:
            save_checkpoint(t.run_dir / "best.pt", state)
            log.info(f"best.pt: {metric} {t.best_auc:.4f} at epoch {t.epoch + 1}")
        atomic_write(t.run_dir / "history.json", json.dumps(t.history, indent=1))
    if t.dist.enabled:
        torch.distributed.barrier()


if __name__ == "__main__":
    cli()
