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
import shutil
import sys
import warnings
from pathlib import Path

import torch

from model.checkpoint import save_checkpoint
from model.config import Config, ConfigError, config_from_dict, config_to_yaml, load_config, save_config
from model.eval.validation import build_val_loader, validate
from model.train.dist import Dist, gather_rng_states, setup_distributed, teardown_distributed
from model.train.engine import (NonFiniteLossError, Trainer, build_trainer, check_replicas, checkpoint_state,
                                train_one_epoch)
from model.train.log import RunLogger, plot_curves
from pipeline.cli_errors import debugging, one_line
from pipeline.shards import ShardError
from pipeline.verify import verify_split

log = logging.getLogger("train")


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
        raise ConfigError("give --config CONFIG.yaml or --resume RUN_DIR")
    if args.config is not None and args.resume is not None:
        raise ConfigError("--resume uses the run's stored config; give overrides instead of --config")
    dist = setup_distributed()
    try:
        resume_state = None
        if args.resume is not None:
            ckpt_path = args.resume / "last.pt"
            if not ckpt_path.is_file():
                raise ConfigError(f"{ckpt_path}: no last.pt to resume from")
            resume_state = torch.load(ckpt_path, map_location="cpu", weights_only=True)
            cfg = config_from_dict(resume_state["config"], args.overrides)
            run_dir = args.resume
        else:
            cfg = load_config(args.config, args.overrides)
            run_dir = make_run_dir(cfg, args.config, dist)
            if (run_dir / "last.pt").exists():
                raise ConfigError(f"{run_dir} already holds a run (last.pt); continue it with "
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
    """``python train.py``: config, data and checkpoint errors end as one line (``LAANET_DEBUG=1``: traceback)."""
    try:
        main(get_args_parser().parse_args(argv))
    except (ConfigError, NonFiniteLossError, ShardError, ValueError) as err:
        if debugging():
            raise
        raise SystemExit(f"train.py: {one_line(err)}") from None


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


# --------------------------------------------------------------------------- data


# --------------------------------------------------------------------------- model and optimiser


# --------------------------------------------------------------------------- one step


# --------------------------------------------------------------------------- one epoch


# --------------------------------------------------------------------------- checkpoints


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
        t.logger = RunLogger(run_dir, keep_until_step=t.step if resume_state is not None else None)
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
    """Validate (rank 0), log, write last.pt and, when the video AUC improved, best.pt."""
    replica_diff = check_replicas(t) if t.cfg.train.check_replicas else 0.0
    val = None
    if val_loader is not None and (t.epoch + 1) % t.cfg.val.every == 0:
        val = validate(t.model, val_loader, t.device, t.amp_dtype, t.cfg.train.channels_last, t.cfg.val.flip)
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
