"""Validate finished training runs again, with every validation face degraded (``val.perturb``).

A run's clean SBI validation can stop ranking recipes once every recipe reaches 0.95 there; the same
validation with each face JPEG-compressed (or blurred, pixelated, ...) still does, and it uses real data only.
Each run is validated exactly as ``train.py`` validates it (its own ``config.yaml``: the same people, frames,
pseudo-fakes and flip test), only with ``val.perturb`` set, on ``best.pt`` or ``last.pt``.

    python -m bench.val_perturb out/realworld/laanet out/realworld/cls_only --perturb jpeg:4
    python -m bench.val_perturb RUN ... --perturb jpeg:4 blur:3 --checkpoint last --json val.json

Prints one line per run and perturbation (frame and video AUC, the mean fake probability of the real and of
the fake faces, which says whether a perturbation hides fakes or frames reals; the epoch of the checkpoint); ``--json``
appends the same rows as JSON lines and ``--png`` plots frame AUC against the perturbations, one line per run
(``none`` validates the clean faces, as a baseline in the same run). A run that cannot be validated (no
config.yaml, an unreadable checkpoint, an unknown perturbation) gets one line and the others still run; the
exit status is then 1. A run trained with ``val.perturb`` already logs this per epoch in its history.json.
"""
from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Iterator
from pathlib import Path

import torch

from model.checkpoint import model_from_checkpoint, read_checkpoint
from model.config_io import load_config
from model.device import keep_freed_memory
from model.eval.validation import build_val_loader, validate
from pipeline.errors import UserError, one_line


def validate_run(run_dir: Path, perturbs: list[str], checkpoint: str = "best") -> Iterator[dict]:
    """Frame and video AUC of ``run_dir/<checkpoint>.pt`` on the run's own SBI validation, one row per
    perturbation (``none``: clean faces) as each is done; the checkpoint is read once."""
    model, state = None, {}
    for perturb in perturbs:
        perturb = "" if perturb == "none" else perturb
        cfg = load_config(run_dir / "config.yaml", [f"val.perturb={perturb}", "val.num_workers=0"])
        loader, mode = build_val_loader(cfg)
        if loader is None:
            raise UserError(f"{run_dir}: the run has no validation shards ({mode})")
        if model is None:
            path = run_dir / f"{checkpoint}.pt"
            state = read_checkpoint(path)
            model = model_from_checkpoint(state, path)
        res = validate(model, loader, torch.device("cpu"), flip=cfg.val.flip)
        yield {"run": str(run_dir), "checkpoint": checkpoint, "epoch": int(state.get("epoch", 0)),
               "perturb": perturb or "none", **res}


def plot(rows: list[dict], path: Path) -> None:
    """Frame AUC per perturbation (x, in the order given), one line per run."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = list(dict.fromkeys(r["perturb"] for r in rows))
    fig, ax = plt.subplots(figsize=(max(4.0, 1.1 * len(names) + 2), 3.6))
    for run in dict.fromkeys(r["run"] for r in rows):
        mine = {r["perturb"]: r for r in rows if r["run"] == run}
        ax.plot(range(len(names)), [mine[n]["auc_frame"] if n in mine else float("nan") for n in names],
                marker="o", label=f"{Path(run).name} ({mine[next(iter(mine))]['checkpoint']}.pt)")
    ax.set_xticks(range(len(names)), names)
    ax.axhline(0.5, color="grey", lw=0.8, ls=":")
    ax.set_ylabel("frame AUC, held-out people vs their SBI fakes")
    ax.set_title("SBI validation with every face degraded (val.perturb)", fontsize=9)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("runs", nargs="+", type=Path, help="training run folders (config.yaml, best.pt, last.pt)")
    p.add_argument("--perturb", nargs="+", default=["jpeg:4"],
                   help="NAME:LEVEL as val.perturb, or none for clean faces (default jpeg:4)")
    p.add_argument("--checkpoint", choices=("best", "last"), default="best")
    p.add_argument("--threads", type=int, default=1, help="torch CPU threads (default 1)")
    p.add_argument("--json", type=Path, help="append one JSON line per run and perturbation")
    p.add_argument("--png", type=Path, help="plot frame AUC against the perturbations, one line per run")
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    keep_freed_memory()  # else each forward pass faults its freed activations in again (model/device.py)
    rows, failed = [], []
    for run_dir in args.runs:
        try:
            for row in validate_run(run_dir, args.perturb, args.checkpoint):
                print(f"{run_dir} {args.checkpoint}.pt (epoch {row['epoch']}) {row['perturb']}: "
                      f"auc_frame={row['auc_frame']:.4f} auc_video={row['auc_video']:.4f} "
                      f"p_fake(real)={row['p_fake_real']:.3f} p_fake(fake)={row['p_fake_fake']:.3f}", flush=True)
                if args.json:
                    with open(args.json, "a") as f:
                        f.write(json.dumps(row) + "\n")
                rows.append(row)
        except UserError as err:  # one line, and the other runs still validate
            print(f"{run_dir}: not validated: {one_line(err)}", file=sys.stderr, flush=True)
            failed.append(run_dir)
    if args.png and rows:
        plot(rows, args.png)
        print(f"plot: {args.png}")
    if failed:
        raise SystemExit(f"{len(failed)} of {len(args.runs)} runs not validated: {', '.join(map(str, failed))}")

if __name__ == "__main__":
    main()
