"""Real-deepfake check on a laptop: train on real talking heads, score real deepfakes.

``make realworld OUT=DIR`` (or ``python -m bench.realworld --out DIR``) answers "does a model trained by this
code detect a real deepfake?" end to end, through the project's own commands:

1. **prepare** (``python -m pipeline extract-frames`` + ``cache-landmarks``): the 75 real training clips
   (``videos/talking_heads`` and ``videos/hdtf``) into ``DIR/shards/{train,val}``, split by PERSON (a fixed
   hash of the person's name holds out about a sixth of the people for validation), and the 54 labelled
   clips (``videos/labelled/{real,fake}``: FF++ c40, DFD, DFDC) into ``DIR/shards/labelled``.
2. **train** (``train.py --config configs/laanet_lite0_cpu.yaml``): LAA-Net with two seeds, and the cls-only
   ablation (SBI's plain classifier: same backbone, data and steps) with the same seeds. The checkpoint of
   each run is selected on SBI pseudo-fakes of the held-out people (real data only, as the paper does;
   on CPU every second epoch, 16 frames per video, as the recipe says); the labelled clips are never looked
   at before the final evaluation.
3. **evaluate** (``evaluate.py``, 32 frames per clip, flip test) every selected checkpoint, and the untrained
   network (ImageNet backbone, random heads) as the chance baseline, on the labelled clips; each run in its
   slot as soon as it is trained, the untrained network last.
4. **report**: ``DIR/report.md`` with video-level AUC and AP overall, per dataset and per method, each with a
   bootstrap 95 % interval; ``DIR/summary.json`` (every figure); ``DIR/roc.png``; ``DIR/scores.csv`` (per-clip
   scores of every run at full precision); heatmap overlays of the best and worst clips (evaluate.py's, in
   ``DIR/laanet/eval/overlays/``).

The selected LAA-Net checkpoint (seed 0) is ``DIR/laanet/best.pt``. Every stage resumes: a prepared split, a
finished run, an evaluation or the loss-balance check is reused when what shaped it is unchanged (the resolved
config, the command, the checkpoint's content); a finished run with other settings stops the command
(``--fresh`` starts over).

The clips are research-only data read in place from ``../shared/data/videos`` (``--videos``); they are never
copied into the project. ``--quick`` runs the same path on fewer clips and steps (a smoke run, about 10 min);
``--device cuda`` runs the paper-scale recipe (EfficientNet-B4 at 384 px, ``configs/laanet_sbi.yaml``).

    make realworld OUT=out/realworld
    python -m bench.realworld --out out/rw_quick --quick
"""
from __future__ import annotations

import argparse
import csv
import hashlib
import json
import os
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

from pipeline.resume import settings_hash

REPO = Path(__file__).resolve().parents[1]
DEFAULT_VIDEOS = REPO.parent / "shared" / "data" / "videos"
TRAIN_FOLDERS = ("talking_heads", "hdtf")
VAL_SALT = "laanet"  # the person hash salt: fixed, so every run holds out the same people
VAL_SHARE = 6  # one person in VAL_SHARE (by hash) validates


@dataclass(frozen=True)
class Clip:
    """One clip of ``CLIPS.tsv`` (or a training clip found on disk without a row)."""
    file: str  # relative to the videos folder, e.g. labelled/fake/x.mp4
    label: int  # 0 real, 1 fake
    dataset: str
    method: str
    person: str


def read_clips(videos: Path) -> list[Clip]:
    """The training clips (``talking_heads``, ``hdtf``) and labelled clips under ``videos``, described by
    ``videos/CLIPS.tsv``; a training clip without a row is its own person (file stem)."""
    table = videos / "CLIPS.tsv"
    rows = {}
    if table.is_file():
        with table.open(newline="") as f:
            rows = {r["file"]: r for r in csv.DictReader(f, delimiter="\t")}
    clips = []
    for path in sorted(videos.glob("*/**/*.mp4")):
        rel = path.relative_to(videos).as_posix()
        top = rel.split("/")[0]
        if top not in (*TRAIN_FOLDERS, "labelled"):
            continue
        r = rows.get(rel, {})
        if top == "labelled":
            if not r:
                raise SystemExit(f"{table}: no row for labelled clip {rel} (its label, dataset and method)")
            label = 1 if r["label"] == "fake" else 0
            method = "real" if label == 0 else r["method"].split(" (")[0]
            clips.append(Clip(rel, label, r["dataset"], method, r.get("person") or r.get("pair") or rel))
        else:
            clips.append(Clip(rel, 0, r.get("dataset") or top, "real", r.get("person") or path.stem))
    return clips


def is_val_person(person: str) -> bool:
    """The fixed person split: about one person in ``VAL_SHARE`` validates (never trains)."""
    return int(hashlib.sha1((VAL_SALT + person).encode()).hexdigest(), 16) % VAL_SHARE == 0


def split_training_clips(clips: list[Clip]) -> tuple[list[Clip], list[Clip]]:
    """Training reals by person: (train, val). No person is on both sides."""
    reals = [c for c in clips if c.file.split("/")[0] in TRAIN_FOLDERS]
    val = [c for c in reals if is_val_person(c.person)]
    return [c for c in reals if c not in val], val


def run(cmd: list[str], log: Path | None = None, threads: int = 0) -> None:
    """Run one project command from the repository root; its output goes to the console (and ``log``).
    ``threads`` > 0 caps its OpenMP/torch threads: two commands sharing two cores with two threads each spin
    for each other (two parallel evaluations ran at 3.6 faces/s each that way)."""
    print("$ " + " ".join(cmd), flush=True)
    env = {**os.environ, **({"OMP_NUM_THREADS": str(threads), "MKL_NUM_THREADS": str(threads)} if threads else {})}
    if log is None:
        subprocess.run(cmd, check=True, cwd=REPO, env=env)
        return
    with log.open("a") as f:
        f.write("$ " + " ".join(cmd) + "\n")
        f.flush()
        subprocess.run(cmd, check=True, cwd=REPO, stdout=f, stderr=subprocess.STDOUT, env=env)


def prepared(split_dir: Path, n_videos: int) -> bool:
    """True when ``split_dir`` holds ``n_videos`` videos, every shard with landmarks."""
    index = split_dir / "index.json"
    if not index.is_file():
        return False
    data = json.loads(index.read_text())
    return data.get("n_videos") == n_videos and all(s.get("landmarks") for s in data.get("shards", []))


def prepare_split(videos: Path, clips: list[Clip], split_dir: Path, frames: int, crop: int, workers: int,
                  by_folder: bool) -> Path:
    """Run the pipeline (frames, RetinaFace crops, dlib landmarks) on ``clips`` into ``split_dir``.

    The clips are linked (not copied) into ``split_dir.parent/videos_<name>/`` so one glob selects them;
    ``by_folder``: they keep their ``real/`` / ``fake/`` folder and the label comes from it.
    """
    if prepared(split_dir, len(clips)):
        print(f"{split_dir}: prepared ({len(clips)} videos)")
        return split_dir
    links = split_dir.parent / f"videos_{split_dir.name}"
    for c in clips:
        src = videos / c.file
        link = links / (Path(c.file).parent.name if by_folder else "") / Path(c.file).name
        link.parent.mkdir(parents=True, exist_ok=True)
        if not link.is_symlink():
            link.symlink_to(src.resolve())
    py = sys.executable
    labels = ["--label-from-folder"] if by_folder else ["--label", "real"]
    globs = [str(links / "*" / "*.mp4")] if by_folder else [str(links / "*.mp4")]
    inputs = [a for g in globs for a in ("--input", g)]
    run([py, "-m", "pipeline", "extract-frames", *inputs, *labels, "--shards-root", str(split_dir),
         "--frames", str(frames), "--crop-size", str(crop), "--dask-workers", str(workers)])
    run([py, "-m", "pipeline", "cache-landmarks", "--shards-root", str(split_dir), "--dask-workers", str(workers)])
    if not prepared(split_dir, len(clips)):
        raise SystemExit(f"{split_dir}: the pipeline did not prepare all {len(clips)} clips "
                         f"(see {split_dir / 'failures.jsonl'})")
    return split_dir


# --------------------------------------------------------------------------------------------- training
@dataclass(frozen=True)
class RunSpec:
    """One trained (or untrained) network of the comparison."""
    name: str  # run folder under OUT
    variant: str  # "untrained", "cls_only" or "laanet"
    seed: int
    overrides: tuple[str, ...] = ()


def resolved_config(config: Path, overrides: list[str]) -> dict:
    """The whole config a run trains with (YAML chain + overrides), as the key of its reuse: editing the file
    or its base changes it, moving the repository does not."""
    from model.config_io import config_to_dict, load_config

    return config_to_dict(load_config(config, overrides))


def is_done(marker: Path, key: str) -> bool:
    """True when ``marker`` (a stage's done.json) was written for ``key``."""
    return marker.is_file() and json.loads(marker.read_text()).get("settings") == key


def mark_done(marker: Path, key: str, **extra) -> None:
    from pipeline.files import atomic_write

    marker.parent.mkdir(parents=True, exist_ok=True)
    atomic_write(marker, json.dumps({"settings": key, **extra}))


def train_run(spec: RunSpec, config: Path, common: list[str], out: Path, log: Path) -> Path:
    """Train one run with ``train.py`` into ``out/spec.name`` and return its selected checkpoint.

    A run whose ``done.json`` records the same command is reused; an interrupted one continues
    (``--resume auto``); a finished one with other settings is an error (``--fresh`` starts over)."""
    run_dir = out / spec.name
    args = [f"--config={config}", *common, f"train.out_dir={out}", f"train.run_name={spec.name}",
            f"train.seed={spec.seed}", *spec.overrides]
    key = settings_hash(resolved_config(config, args[1:]))
    done = run_dir / "done.json"
    if is_done(done, key):
        print(f"{run_dir}: trained ({done})")
        return run_dir / "best.pt"
    if done.is_file():
        raise SystemExit(f"{run_dir}: holds a run with other settings; remove it or pass --fresh")
    t0 = time.perf_counter()
    run([sys.executable, "train.py", "--resume", "auto", *args], log)
    best = run_dir / "best.pt"
    if not best.is_file():
        raise SystemExit(f"{run_dir}: training wrote no best.pt (see {log})")
    mark_done(done, key, command=args, minutes=(time.perf_counter() - t0) / 60)
    return best


def write_untrained(config: Path, common: list[str], path: Path) -> Path:
    """The network before any training step (ImageNet backbone, freshly initialised decoder and heads) as a
    checkpoint evaluate.py reads: the chance baseline of the comparison."""
    import torch

    from model.checkpoint import save_checkpoint
    from model.config_io import config_from_dict
    from model.net.laanet import build_model

    resolved = resolved_config(config, common)
    key = settings_hash(resolved)
    marker = path.parent / "done.json"
    if path.is_file() and is_done(marker, key):
        return path
    cfg = config_from_dict(resolved)
    torch.manual_seed(cfg.train.seed)
    save_checkpoint(path, {"model": build_model(cfg.model).state_dict(), "config": resolved, "epoch": 0, "step": 0})
    mark_done(marker, key)
    return path


def evaluate_run(ckpt: Path, labelled: Path, out: Path, frames: int, workers: int, overlays: int,
                 device: str, log: Path, threads: int = 0) -> Path:
    """``evaluate.py`` on the labelled clips; returns its ``scores.csv`` (reused when made by the same command
    from a checkpoint of the same content)."""
    from pipeline.files import file_sha256

    scores = out / "scores.csv"
    cmd = [sys.executable, "evaluate.py", "--checkpoint", str(ckpt), "--set", f"labelled={labelled}",
           "--frames", str(frames), "--loader-workers", str(workers), "--overlays", str(overlays), "--device", device,
           "--out", str(out)]
    key = settings_hash([cmd[1:], file_sha256(ckpt)])
    if scores.is_file() and is_done(out / "done.json", key):
        print(f"{out}: evaluated")
        return scores
    run(cmd, log, threads)
    mark_done(out / "done.json", key)
    return scores


# ---------------------------------------------------------------------------------------------- metrics
def auc_ap(labels, scores) -> tuple[float, float]:
    """Video-level ROC AUC and average precision (the evaluator's own, model.eval.metrics)."""
    from model.eval.metrics import average_precision, roc_auc

    return roc_auc(labels, scores), average_precision(labels, scores)


def resampled_auc_ap(labels, scores, counts) -> tuple:
    """AUC and AP of many resamples at once. ``counts`` (n_resamples, n_items) says how often each item is
    drawn; every statistic then runs over the original items with those weights: AUC as the weighted share of
    (real, fake) pairs in order (ties count half, as the ROC area), AP as scikit-learn's step-wise sum over the
    distinct scores (a score no drawn item holds adds no recall, so it adds nothing)."""
    import numpy as np

    labels, scores = np.asarray(labels), np.asarray(scores, dtype=np.float64)
    counts = np.asarray(counts, dtype=np.float64)
    real, fake = labels == 0, labels == 1
    order = np.sign(scores[fake][None, :] - scores[real][:, None]) * 0.5 + 0.5   # (n_real, n_fake)
    w_real, w_fake = counts[:, real], counts[:, fake]
    auc = np.einsum("br,rf,bf->b", w_real, order, w_fake) / (w_real.sum(1) * w_fake.sum(1))
    distinct, group = np.unique(-scores, return_inverse=True)   # descending scores, one group per value
    tp = np.zeros((len(counts), len(distinct)))
    fp = np.zeros_like(tp)
    np.add.at(tp.T, group[fake], w_fake.T)
    np.add.at(fp.T, group[real], w_real.T)
    tp, fp = tp.cumsum(1), fp.cumsum(1)
    recall = tp / tp[:, -1:]
    precision = np.divide(tp, tp + fp, out=np.zeros_like(tp), where=tp + fp > 0)
    ap = (np.diff(recall, axis=1, prepend=0.0) * precision).sum(1)
    return auc, ap


def bootstrap_ci(labels, scores, n: int = 2000, seed: int = 0) -> dict[str, list[float]]:
    """95 % percentile intervals of AUC and AP, resampling reals and fakes separately (each class keeps its
    size, so every resample has both); all resamples are scored at once (:func:`resampled_auc_ap`)."""
    import numpy as np

    rng = np.random.default_rng(seed)
    labels = np.asarray(labels)
    real, fake = np.flatnonzero(labels == 0), np.flatnonzero(labels == 1)
    counts = np.zeros((n, labels.size))
    for b in range(n):
        idx = np.concatenate([rng.choice(real, real.size), rng.choice(fake, fake.size)])
        np.add.at(counts[b], idx, 1.0)
    aucs, aps = resampled_auc_ap(labels, scores, counts)
    return {"auc": [float(np.percentile(aucs, 2.5)), float(np.percentile(aucs, 97.5))],
            "ap": [float(np.percentile(aps, 2.5)), float(np.percentile(aps, 97.5))]}


def read_scores(path: Path, clips: dict[str, Clip]) -> list[tuple[Clip, float]]:
    """(clip, fake probability) per labelled clip from an evaluate.py ``scores.csv``."""
    out = []
    with path.open(newline="") as f:
        for r in csv.DictReader(f):
            # evaluate.py keys a video as <dataset>/<method>/<id>; the id of a labelled clip is <real|fake>/<stem>
            clip = clips.get(f"labelled/{'/'.join(r['video_id'].split('/')[-2:])}.mp4")
            if clip is None:
                raise SystemExit(f"{path}: video {r['video_id']} is not a labelled clip of CLIPS.tsv")
            if int(r["label"]) != clip.label:
                raise SystemExit(f"{path}: {r['video_id']} has label {r['label']}, CLIPS.tsv says {clip.label}")
            out.append((clip, float(r["score"])))
    return out


def subsets(scored: list[tuple[Clip, float]]) -> dict[str, list[tuple[Clip, float]]]:
    """The report's rows: all clips; each dataset's and each method's fakes against ALL real clips; and FF++
    fakes against FF++ reals only (the in-dataset view)."""
    reals = [s for s in scored if s[0].label == 0]
    fakes = [s for s in scored if s[0].label == 1]
    rows = {"all": scored}
    for ds in sorted({c.dataset for c, _ in fakes}):
        rows[f"dataset {ds} (vs all reals)"] = reals + [s for s in fakes if s[0].dataset == ds]
    ffpp_reals = [s for s in reals if s[0].dataset == "ffpp"]
    if ffpp_reals:
        rows["dataset ffpp (vs ffpp reals)"] = ffpp_reals + [s for s in fakes if s[0].dataset == "ffpp"]
    for m in sorted({c.method for c, _ in fakes}):
        rows[f"method {m} (vs all reals)"] = reals + [s for s in fakes if s[0].method == m]
    return rows


def metrics_of(scored: list[tuple[Clip, float]], n_boot: int) -> dict[str, dict]:
    out = {}
    for row, items in subsets(scored).items():
        labels = [c.label for c, _ in items]
        scores = [s for _, s in items]
        auc, ap = auc_ap(labels, scores)
        out[row] = {"auc": auc, "ap": ap, "n_real": labels.count(0), "n_fake": labels.count(1),
                    "ci95": bootstrap_ci(labels, scores, n_boot)}
    return out


# ----------------------------------------------------------------------------------------------- report
def fmt(m: dict, key: str) -> str:
    lo, hi = m["ci95"][key]
    return f"{m[key]:.3f} [{lo:.2f}, {hi:.2f}]"


def val_history(run_dir: Path) -> list[dict]:
    path = run_dir / "history.json"
    return json.loads(path.read_text()) if path.is_file() else []


def plot_roc(results: dict[str, dict], path: Path) -> None:
    """ROC curves of every run on all labelled clips, one figure."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from model.eval.metrics import roc_curve

    fig, ax = plt.subplots(figsize=(5.2, 5))
    for name, r in results.items():
        labels = [c.label for c, _ in r["scored"]]
        scores = [s for _, s in r["scored"]]
        fpr, tpr, _ = roc_curve(labels, scores)
        m = r["metrics"]["all"]
        ax.plot(fpr, tpr, lw=1.6 if r["variant"] == "laanet" else 1.1,
                ls="-" if r["variant"] != "untrained" else ":", label=f"{name}  AUC {m['auc']:.3f}")
    ax.plot([0, 1], [0, 1], color="grey", lw=0.8, ls="--")
    ax.set_xlabel("false positive rate (real clips called fake)")
    ax.set_ylabel("true positive rate (fake clips caught)")
    ax.set_title("video level, labelled clips (FF++ c40, DFD, DFDC)", fontsize=9)
    ax.legend(fontsize=7.5, loc="lower right")
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def plot_selection(runs: dict[str, Path], path: Path) -> None:
    """Validation AUC per epoch (SBI fakes of held-out people: what selects best.pt) and the cls loss."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (a1, a2) = plt.subplots(1, 2, figsize=(10, 3.8))
    for name, run_dir in runs.items():
        h = val_history(run_dir)
        if not h:
            continue
        validated = [r for r in h if "val_auc_frame" in r]  # val.every > 1 validates some epochs only
        a1.plot([r["epoch"] for r in validated], [r["val_auc_frame"] for r in validated], marker="o", ms=3,
                label=name)
        a2.plot([r["epoch"] for r in h], [r.get("train_loss_cls", float("nan")) for r in h], marker="o", ms=3,
                label=name)
    a1.set_title("selection: frame AUC, held-out people vs their SBI fakes", fontsize=9)
    a2.set_title("training cls loss (BCE, 0.693 = chance)", fontsize=9)
    for a in (a1, a2):
        a.set_xlabel("epoch")
        a.grid(alpha=0.3)
        a.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def write_clip_scores(results: dict[str, dict], path: Path) -> None:
    """One row per labelled clip, one column per run: the fake probability at full precision."""
    names = list(results)
    by_clip: dict[str, dict] = {}
    for name in names:
        for clip, score in results[name]["scored"]:
            by_clip.setdefault(clip.file, {"clip": clip})[name] = score
    with path.open("w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["file", "label", "dataset", "method", *names])
        for file in sorted(by_clip):
            row = by_clip[file]
            c = row["clip"]
            w.writerow([file, c.label, c.dataset, c.method, *[repr(row.get(n, float("nan"))) for n in names]])


def val_note(summary: dict) -> str:
    """", every face jpeg:4" when the runs validate (and select) on degraded faces (val.perturb), else ""."""
    return f", every face {summary['val_perturb']}" if summary.get("val_perturb") else ""


def build_report(summary: dict, out: Path) -> str:
    res = summary["runs"]
    rows = list(next(iter(res.values()))["metrics"])
    lines = [
        "# Does a model trained by this code detect real deepfakes?", "",
        f"Created {summary['created']} by `{summary['command']}` on {summary['machine']}; "
        f"{summary['minutes']['total']:.1f} min for this invocation (stages reused from an earlier one not "
        "counted; each run's training minutes are its own).", "",
        "Training data: real talking-head clips only "
        f"({summary['data']['train_clips']} clips of {summary['data']['train_people']} people; "
        f"{summary['data']['val_clips']} clips of {summary['data']['val_people']} other people validate with their SBI "
        "pseudo-fakes and select each run's checkpoint). Test: the labelled clips, never seen before this "
        f"evaluation ({summary['data']['labelled_real']} real, {summary['data']['labelled_fake']} fake: FF++ c40 "
        "originals with their Deepfakes, Face2Face, FaceSwap and NeuralTextures fakes, DFD originals, DFDC "
        f"face-crop clips). Protocol: {summary['protocol']}.", "",
        f"Recipe: `{summary['config']}` (every change from `configs/laanet_sbi.yaml` is commented there), "
        f"`{' '.join(summary['common_overrides'])}`.", "",
        "## Video-level AUC and AP, all labelled clips (95 % bootstrap interval)", "",
        f"| run | AUC | AP | selected epoch | val frame AUC (SBI, held-out people{val_note(summary)}) | train min |",
        "|---|---|---|---|---|---|",
    ]
    for name, r in res.items():
        m = r["metrics"]["all"]
        lines.append(f"| {name} | {fmt(m, 'auc')} | {fmt(m, 'ap')} | {r.get('selected_epoch', '-')} | "
                     f"{r['val_auc_frame']:.3f} | {r['train_minutes']:.1f} |"
                     if r["variant"] != "untrained" else
                     f"| {name} | {fmt(m, 'auc')} | {fmt(m, 'ap')} | - | {r['val_auc_frame']:.3f} | - |")
    for variant, agg in summary["seed_means"].items():
        lines.append(f"| **{variant}, mean of {agg['n']} seeds** | **{agg['auc']:.3f}** | **{agg['ap']:.3f}** "
                     f"| | | |")
    lines += ["", "## AUC per dataset and per method (each row: those fakes against all real clips, unless "
              "it says otherwise)", "",
              "| subset | real / fake | " + " | ".join(res) + " |", "|---|---|" + "---|" * len(res)]
    for row in rows[1:]:
        any_m = next(iter(res.values()))["metrics"][row]
        lines.append(f"| {row} | {any_m['n_real']} / {any_m['n_fake']} | "
                     + " | ".join(fmt(r["metrics"][row], "auc") for r in res.values()) + " |")
    lb = summary.get("loss_balance")
    if lb:
        lines += ["", "## Which loss term shapes the shared features (`python -m bench.loss_balance`)", "",
                  "Share of each weighted term in the squared norm of the summed gradient, on the untrained "
                  "network (ImageNet backbone) and real SBI training pairs:", "",
                  "| weights (lambda_hm, lambda_c) | backbone: cls / hm / cstency | decoder: cls / hm / cstency |",
                  "|---|---|---|"]
        for key in ("compare", "config"):
            r = lb[key]
            w = r["weights"]
            cells = []
            for group in ("backbone", "decoder"):
                cells.append(" / ".join(f"{r[f'{group}/{t}']['share']:.1%}" for t in ("cls", "hm", "cstency")
                                        if f"{group}/{t}" in r))
            lines.append(f"| {w['lambda_hm']:g}, {w['lambda_c']:g}{' (paper)' if key == 'compare' else ' (recipe)'} "
                         f"| {cells[0]} | {cells[1]} |")
        lines += ["", "![loss balance](loss_balance.png)"]
    lines += ["", "![ROC curves](roc.png)", "",
              "Checkpoint selection (validation on SBI pseudo-fakes of held-out people) and the cls loss:", "",
              "![selection](selection.png)", ""]
    if summary.get("overlays"):
        lines += [f"Heatmaps of `{summary['headline']}` on the labelled clips (the most confident fakes and reals "
                  "and the worst mistakes; evaluate.py overlays):", ""]
        lines += [f"![{Path(p).stem}]({p})" for p in summary["overlays"]]
        lines.append("")
    lines += ["Files: `scores.csv` (per-clip fake probability of every run, full precision), `summary.json` "
              "(every figure), `<run>/eval/` (evaluate.py's own report per run), `<run>/curves.png`.", ""]
    return "\n".join(lines)


# ------------------------------------------------------------------------------------------------- main
def get_args_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m bench.realworld", description=__doc__.split("\n\n")[0],
                                epilog="examples:\n  make realworld OUT=out/realworld\n"
                                       "  python -m bench.realworld --out out/rw_quick --quick",
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", type=Path, default=REPO / "out" / "realworld", help="output folder")
    p.add_argument("--videos", type=Path, default=DEFAULT_VIDEOS,
                   help="folder holding CLIPS.tsv, talking_heads/, hdtf/ and labelled/{real,fake}/")
    p.add_argument("--quick", action="store_true",
                   help="a smoke run of the same path: fewer training clips, frames and steps, one seed")
    p.add_argument("--device", default="cpu", help="cpu, or cuda (then the paper-scale recipe, B4 at 384 px)")
    p.add_argument("--config", type=Path, default=None,
                   help="training recipe (default: configs/laanet_lite0_cpu.yaml on cpu, "
                        "configs/laanet_sbi.yaml on cuda)")
    p.add_argument("--seeds", type=int, default=2, help="seeds of each trained variant")
    p.add_argument("--jobs", type=int, default=0,
                   help="trainings at once (default: the cores on cpu, each with one thread; 1 on cuda)")
    p.add_argument("--frames", type=int, default=None,
                   help="frames extracted per clip, and scored per test clip (default 32; --quick: 16)")
    p.add_argument("--bootstrap", type=int, default=2000, help="bootstrap resamples of each interval")
    p.add_argument("--fresh", action="store_true", help="remove the trained runs of --out and train again")
    p.add_argument("overrides", nargs="*", metavar="key.sub=value", help="extra config overrides for every run")
    return p


def run_parallel(jobs: list, n: int) -> list:
    """Run the callables ``jobs`` with ``n`` at a time (threads driving subprocesses); the results in order."""
    from concurrent.futures import ThreadPoolExecutor

    with ThreadPoolExecutor(max_workers=max(1, n)) as pool:
        return [f.result() for f in [pool.submit(j) for j in jobs]]


def main(argv: list[str] | None = None) -> dict:
    from pipeline.crop import CROP_SIZE

    args = get_args_parser().parse_args(argv)
    t_start = time.perf_counter()
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    if not (args.videos / "CLIPS.tsv").is_file():
        raise SystemExit(f"{args.videos}: no CLIPS.tsv; the real-world clips (research use only, never shipped) "
                         f"are read from ../shared/data/videos")
    cuda = args.device.startswith("cuda")
    config = args.config or REPO / "configs" / ("laanet_sbi.yaml" if cuda else "laanet_lite0_cpu.yaml")
    out = args.out.resolve()
    out.mkdir(parents=True, exist_ok=True)
    logs = out / "logs"
    logs.mkdir(exist_ok=True)
    cores = os.cpu_count() or 1
    jobs = args.jobs or (1 if cuda else min(cores, 2 * args.seeds))
    seeds = 1 if args.quick else args.seeds
    frames = args.frames or (16 if args.quick else 32)

    # ---- 1. prepare
    clips = read_clips(args.videos)
    train_clips, val_clips = split_training_clips(clips)
    labelled = [c for c in clips if c.file.startswith("labelled/")]
    if args.quick:  # a few people of each source, still split by person
        train_clips = train_clips[::3]
        val_clips = val_clips[::2]
    print(f"clips: {len(train_clips)} train ({len({c.person for c in train_clips})} people), {len(val_clips)} "
          f"validation ({len({c.person for c in val_clips})} other people), {len(labelled)} labelled "
          f"({sum(c.label for c in labelled)} fake)")
    crop = CROP_SIZE if cuda else 256  # the pipeline's stored crop for the paper-scale recipe
    t0 = time.perf_counter()
    shards = out / "shards"
    workers = min(cores, 8)
    train_dir = prepare_split(args.videos, train_clips, shards / "train", frames, crop, workers, False)
    val_dir = prepare_split(args.videos, val_clips, shards / "val", frames, crop, workers, False)
    test_dir = prepare_split(args.videos, labelled, shards / "labelled", frames, crop, workers, True)
    prep_min = (time.perf_counter() - t0) / 60

    # ---- why the recipe's loss weights: each term's gradient on the shared features, recipe vs paper weights
    balance = out / "loss_balance.json"
    lb_overrides = [f"data.shards=[{train_dir}]", *args.overrides]
    lb_batches = "1" if args.quick else "3"
    lb_key = settings_hash([resolved_config(config, lb_overrides), lb_batches])
    if not (balance.is_file() and is_done(out / "loss_balance.done.json", lb_key)):
        run([sys.executable, "-m", "bench.loss_balance", "--config", str(config), "--batches", lb_batches,
             "--compare", "10,100", "--png", str(out / "loss_balance.png"), "--json", str(balance), *lb_overrides],
            logs / "loss_balance.log")
        mark_done(out / "loss_balance.done.json", lb_key)

    # ---- 2. train
    # Ten validation people: their video AUC reaches 1.0 within epochs, the frame AUC still ranks them.
    common = [f"data.shards=[{train_dir}]", f"val.shards=[{val_dir}]", f"train.device={args.device}",
              "val.num_workers=0", "val.select=auc_frame"]
    if cuda:  # validation costs little on a GPU: all the frames the clips were prepared with
        common += [f"val.frames_per_video={frames}"]
    else:  # the CPU recipe's val.every and val.frames_per_video keep the run inside its time
        common += ["train.threads=1", "train.num_workers=1"]
    if args.quick:
        common += ["train.epochs=2", "train.max_steps_per_epoch=12", "train.freeze_backbone_epochs=1"]
    common += args.overrides
    cls_only = ("model.heads={cls: 1}", "loss.lambda_hm=0", "loss.lambda_c=0")
    specs = [RunSpec("laanet" if s == 0 else f"laanet_seed{s}", "laanet", s) for s in range(seeds)]
    specs += [RunSpec("cls_only" if s == 0 else f"cls_only_seed{s}", "cls_only", s, cls_only) for s in range(seeds)]
    if args.fresh:
        import shutil

        for spec in specs:
            shutil.rmtree(out / spec.name, ignore_errors=True)
    # ---- 3. evaluate (the labelled clips are looked at only here): each run in its slot as soon as it is
    # trained, so a finished run's core evaluates it while the other run still trains
    untrained = RunSpec("untrained", "untrained", 0)
    untrained_ckpt = write_untrained(config, common, out / "untrained" / "untrained.pt")
    eval_workers = 0 if not cuda else min(cores, 8)
    eval_threads = 0 if cuda else max(1, cores // jobs)

    def train_and_evaluate(spec: RunSpec) -> tuple[Path, Path, float]:
        ckpt = untrained_ckpt if spec.variant == "untrained" else train_run(
            spec, config, common, out, logs / f"{spec.name}.log")
        t = time.perf_counter()
        scores = evaluate_run(ckpt, test_dir, out / spec.name / "eval", frames, eval_workers,
                              6 if spec.name == "laanet" else 0, args.device, logs / f"{spec.name}_eval.log",
                              eval_threads)
        return ckpt, scores, (time.perf_counter() - t) / 60

    t0 = time.perf_counter()
    print(f"training and evaluating {len(specs)} runs and the untrained network, {jobs} at a time "
          f"(logs: {logs}/<run>.log, <run>_eval.log)", flush=True)
    # the untrained network last, so that no training waits for its evaluation
    order = [*specs, untrained]
    finished = dict(zip((s.name for s in order), run_parallel([lambda s=s: train_and_evaluate(s) for s in order],
                                                               jobs)))
    train_eval_min = (time.perf_counter() - t0) / 60
    specs = [untrained, *specs]  # the table's order

    # ---- 4. report
    from model.checkpoint import read_checkpoint

    by_file = {c.file: c for c in labelled}
    results, summary_runs = {}, {}
    for spec in specs:
        ckpt, sc, eval_min = finished[spec.name]
        scored = read_scores(sc, by_file)
        state = read_checkpoint(ckpt)
        results[spec.name] = {"variant": spec.variant, "scored": scored}
        done = out / spec.name / "done.json"
        summary_runs[spec.name] = {
            "variant": spec.variant, "seed": spec.seed, "checkpoint": str(ckpt),
            "selected_epoch": int(state.get("epoch", 0)),
            "val_auc_frame": float((state.get("val") or {}).get("auc_frame", float("nan")))
            if spec.variant != "untrained" else float("nan"),
            "train_minutes": json.loads(done.read_text()).get("minutes", 0.0) if done.is_file() else 0.0,
            "eval_minutes": eval_min,
            "metrics": metrics_of(scored, 200 if args.quick else args.bootstrap),
        }
        results[spec.name]["metrics"] = summary_runs[spec.name]["metrics"]
    if "untrained" in summary_runs:  # its validation AUC, for the table: measured like the others'
        summary_runs["untrained"]["val_auc_frame"] = untrained_val_auc(untrained_ckpt, config, common)
    seed_means = {}
    for variant in ("laanet", "cls_only"):
        ms = [r["metrics"]["all"] for r in summary_runs.values() if r["variant"] == variant]
        if ms:
            seed_means[variant] = {"n": len(ms), "auc": sum(m["auc"] for m in ms) / len(ms),
                                   "ap": sum(m["ap"] for m in ms) / len(ms)}
    plot_roc(results, out / "roc.png")
    plot_selection({s.name: out / s.name for s in specs if s.variant != "untrained"}, out / "selection.png")
    write_clip_scores(results, out / "scores.csv")
    overlays = sorted((out / "laanet" / "eval" / "overlays").glob("*.png"))
    import platform

    import torch

    summary = {
        "created": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
        "command": "python -m bench.realworld " + " ".join(argv if argv is not None else sys.argv[1:]),
        "machine": f"{platform.machine()}, {cores} cores, torch {torch.__version__}, device {args.device}",
        "config": str(Path(config).resolve().relative_to(REPO)) if Path(config).resolve().is_relative_to(REPO)
        else str(config),
        "common_overrides": common, "quick": args.quick,
        "val_perturb": resolved_config(config, common)["val"]["perturb"],
        "protocol": f"{frames} evenly spaced faces per clip, flip test, video score = sigmoid of the mean "
                    "frame logit (evaluate.py defaults), cls head only",
        "data": {"train_clips": len(train_clips), "train_people": len({c.person for c in train_clips}),
                 "val_clips": len(val_clips), "val_people": len({c.person for c in val_clips}),
                 "val_people_names": sorted({c.person for c in val_clips}),
                 "labelled_real": sum(1 - c.label for c in labelled), "labelled_fake": sum(c.label for c in labelled)},
        "minutes": {"prepare": prep_min, "train_and_evaluate": train_eval_min,
                    "total": (time.perf_counter() - t_start) / 60},
        "headline": "laanet", "runs": summary_runs, "seed_means": seed_means,
        "overlays": [str(p.relative_to(out)) for p in overlays],
        "loss_balance": json.loads(balance.read_text()),
    }
    (out / "summary.json").write_text(json.dumps(summary, indent=1))
    (out / "report.md").write_text(build_report(summary, out))
    print(f"\n{(out / 'report.md').read_text()}")
    print(f"report: {out / 'report.md'}; figures: {out / 'summary.json'}; LAA-Net checkpoint: {out / 'laanet' / 'best.pt'}")
    return summary


def untrained_val_auc(ckpt: Path, config: Path, common: list[str]) -> float:
    """Frame AUC of a checkpoint on the validation people vs their SBI fakes, as train.py validates."""
    import torch

    from model import load_checkpoint
    from model.config_io import load_config
    from model.device import keep_freed_memory
    from model.eval.validation import build_val_loader, validate

    keep_freed_memory()
    loader, _ = build_val_loader(load_config(config, common))
    torch.manual_seed(0)
    return float(validate(load_checkpoint(ckpt), loader, torch.device("cpu"))["auc_frame"])


if __name__ == "__main__":
    main()
