"""The first minutes on a GPU: one prepared check that measures every CUDA path and writes the figures.

    make gpu-check                         # python -m bench.gpu_check --out out/gpu_check (cuda, under 8 min)
    make gpu-check DEVICE=cpu QUICK=1      # the same code on CPU with a tiny network: under 2 minutes

Parts, each in its own time box (a part that runs out says so in the table and the JSON):
1. **train**: train.py's ``train_step``, SAM over Adam, channels_last, 16 images per step of B4 at 384 px (quick:
   timm's test_efficientnet at 64 px), in fp32, bf16 and fp16 (+ grad scaler), each with and without
   ``torch.compile`` (CUDA only; a compile that takes over 2 minutes is cut): images/s (median of the timed steps
   after warm-up), peak memory, a finite loss, and each precision's loss on one batch against fp32's (same weights).
2. **ddp**: ``torchrun --nproc_per_node 1 train.py`` (NCCL on CUDA, gloo on CPU) on synthetic shards: a run killed
   (SIGKILL) after its first epoch's checkpoint and continued with ``--resume auto`` ends with the weights of an
   uninterrupted run (max abs difference stated).
3. **eval**: the evaluation scorer's faces/s with and without the flip test at batch 32 and 64, and its frame and
   video scores on the device against the CPU scorer's on the same faces.
4. **detectors**: RetinaFace MobileNet-0.25 (ONNX Runtime, which runs it on CPU here) and ResNet-50 (torch, on the
   device; random weights unless ``--detector-weights`` names the published file) frames/s at 640 and 1280 px in one
   pass and with the pipeline's detection levels, and the ResNet-50 outputs on the device against CPU (with random
   weights boxes mean nothing, so the raw outputs are compared).
5. **loader**: training pairs/s from the DataLoader with 1, 2, 4 and all cores' workers, next to the train step's
   pairs/s: how many cores keep the GPU fed.
Output: ``OUT/gpu_check.md`` (the table, also printed) and ``OUT/gpu_check.json`` (device, driver, torch and CUDA
versions, every figure).
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import torch

REPO = Path(__file__).resolve().parents[1]
TOLERANCE = {"bf16": 0.05, "fp16": 0.01}      # |loss - fp32 loss| / fp32 loss on one batch
SCORE_TOLERANCE = 1e-3                          # |device - CPU| frame logit, float32
WEIGHT_TOLERANCE = {"cpu": 0.0, "cuda": 1e-4}   # resumed vs uninterrupted weights (CUDA kernels may reorder sums)


@dataclass
class Setting:
    device: str
    quick: bool
    backbone: str = "tf_efficientnet_b4"
    size: int = 384
    pairs: int = 8
    warmup: int = 3
    steps: int = 20
    budget: dict = field(default_factory=lambda: {"train": 200, "ddp": 90, "eval": 60, "detectors": 60,
                                                  "loader": 60})

    @classmethod
    def of(cls, device: str, quick: bool) -> "Setting":
        if not quick:
            return cls(device, quick)
        return cls(device, quick, "test_efficientnet", 64, 2, 1, 3,
                   {"train": 40, "ddp": 60, "eval": 15, "detectors": 20, "loader": 20})


class OutOfTime(Exception):
    pass


class Clock:
    """One part's time box: ``check()`` raises OutOfTime once ``seconds`` have passed."""

    def __init__(self, seconds: float):
        self.t0, self.seconds = time.perf_counter(), seconds

    def left(self) -> float:
        return self.seconds - (time.perf_counter() - self.t0)

    def check(self) -> None:
        if self.left() < 0:
            raise OutOfTime(f"cut after {self.seconds:.0f} s")


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def peak_memory_gib(device: torch.device) -> float:
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**30
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20


# ----------------------------------------------------------------------------------------------- 1. train
def part_train(s: Setting, clock: Clock) -> dict:
    from bench.bench_train import make_trainer, synthetic_batch, time_steps
    from model.train.engine import train_step

    device = torch.device(s.device)
    batch = synthetic_batch(s.pairs, s.size)
    modes = ["off", "bf16"] + (["fp16"] if device.type == "cuda" else [])
    compiles = [False, True] if device.type == "cuda" else [False]
    rows, ref_loss = [], None
    for amp in modes:
        for compiled in compiles:
            clock.check()
            torch.manual_seed(0)
            args = SimpleNamespace(backbone=s.backbone, size=s.size, batch_pairs=s.pairs, accum_steps=1,
                                   device=s.device, amp=amp, channels_last=True, frozen=False)
            t = make_trainer(args, sam=True)
            if device.type == "cuda":
                torch.cuda.reset_peak_memory_stats(device)
            loss = _loss_on(t, batch)  # before any step: the same weights for every precision
            if amp == "off" and not compiled:
                ref_loss = loss
            row = {"amp": amp, "compile": compiled, "loss": loss, "finite": bool(np.isfinite(loss))}
            if compiled:
                t.net = torch.compile(t.model)
                t0 = time.perf_counter()
                train_step(t, batch)
                sync(device)
                row["compile_s"] = time.perf_counter() - t0
                if row["compile_s"] > 120:
                    rows.append({**row, "cut": "compile over 2 min"})
                    continue
            sec = time_steps(t, batch, s.warmup, s.steps)
            row.update(images_per_s=2 * s.pairs / sec, s_per_step=sec, peak_gib=peak_memory_gib(device))
            if ref_loss and amp != "off":
                row["rel_loss_vs_fp32"] = abs(loss - ref_loss) / abs(ref_loss)
                row["within_tolerance"] = row["rel_loss_vs_fp32"] <= TOLERANCE[amp]
            rows.append(row)
            del t
    return {"setting": f"{s.backbone} {s.size}px, {2 * s.pairs} images/step, SAM+Adam, channels_last", "rows": rows}


def _loss_on(t, batch: dict) -> float:
    from model.device import autocast
    from model.train.engine import to_device

    b = to_device(batch, t.device, t.cfg.train.channels_last)
    with torch.no_grad(), autocast(t.device, t.amp_dtype):
        loss, _ = t.criterion(t.model(b["image"]), b)
    return float(loss)


# ------------------------------------------------------------------------------------------------- 2. ddp
def part_ddp(s: Setting, clock: Clock, work: Path) -> dict:
    from tests.tiny import tiny_overrides, write_split

    shards = {"train": write_split(work / "ddp" / "toy" / "train", n_videos=4, frames=6, seed=0)}
    extra = ["train.epochs=2", "train.max_steps_per_epoch=3", f"train.device={s.device}", "train.num_workers=0"]

    def cmd(name: str) -> list[str]:
        return [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "1", "train.py",
                "--config", "configs/demo_cpu.yaml", "--resume", "auto",
                *tiny_overrides(shards, work / "ddp" / "runs", *extra, f"train.run_name={name}")]

    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    whole = subprocess.run(cmd("whole"), cwd=REPO, env=env, capture_output=True, text=True,
                           timeout=max(10, clock.left()))
    if whole.returncode != 0:
        return {"error": whole.stderr.strip().splitlines()[-1] if whole.stderr.strip() else "failed"}
    run = work / "ddp" / "runs" / "killed"
    proc = subprocess.Popen(cmd("killed"), cwd=REPO, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                            start_new_session=True)
    while not (run / "last.pt").exists() and proc.poll() is None:
        clock.check()
        time.sleep(0.05)
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    killed_at = torch.load(run / "last.pt", map_location="cpu", weights_only=True)["epoch"] \
        if (run / "last.pt").exists() else None
    again = subprocess.run(cmd("killed"), cwd=REPO, env=env, capture_output=True, text=True,
                           timeout=max(10, clock.left()))
    if again.returncode != 0:
        return {"error": again.stderr.strip().splitlines()[-1] if again.stderr.strip() else "resume failed"}
    a = torch.load(work / "ddp" / "runs" / "whole" / "last.pt", map_location="cpu", weights_only=True)["model"]
    b = torch.load(run / "last.pt", map_location="cpu", weights_only=True)["model"]
    diff = max(float((a[k].float() - b[k].float()).abs().max()) for k in a if a[k].is_floating_point())
    tol = WEIGHT_TOLERANCE["cuda" if s.device.startswith("cuda") else "cpu"]
    return {"backend": "nccl" if s.device.startswith("cuda") else "gloo", "killed_after_epoch": killed_at,
            "max_abs_weight_diff": diff, "tolerance": tol, "equal": diff <= tol}


# ------------------------------------------------------------------------------------------------ 3. eval
def part_eval(s: Setting, clock: Clock, work: Path) -> dict:
    from model import build_model
    from model.data.datasets import EvalDataset, collate_eval
    from model.eval.inference import run_dataset
    from model.eval.metrics import aggregate_videos
    from tests.tiny import write_split

    split = write_split(work / "eval" / "toy" / "test", n_videos=4, frames=16, seed=2, fake_videos=4)
    dataset = EvalDataset([str(split)], s.size)
    torch.manual_seed(0)
    model = build_model({"backbone": s.backbone, "input_size": s.size, "pretrained": False}).eval()
    device = torch.device(s.device)
    rows = []
    for flip in (False, True):
        for batch in (32, 64):
            clock.check()
            run_dataset(model.to(device), dataset, batch, device, flip, collate_eval, 0, desc="warm-up")
            t0 = time.perf_counter()
            frames = run_dataset(model, dataset, batch, device, flip, collate_eval, 0, desc=f"flip {flip} b{batch}")
            sync(device)
            rows.append({"flip": flip, "batch": batch, "faces_per_s": len(frames.logits) / (time.perf_counter() - t0)})
            if flip and batch == 32:
                on_device = frames  # the scores compared with the CPU scorer's below
    on_cpu = run_dataset(model.to("cpu"), dataset, 32, torch.device("cpu"), True, collate_eval, 0, desc="cpu")
    v_dev = aggregate_videos(on_device.video_ids, on_device.methods, on_device.labels, on_device.logits)
    v_cpu = aggregate_videos(on_cpu.video_ids, on_cpu.methods, on_cpu.labels, on_cpu.logits)
    frame_diff = float(np.abs(on_device.logits - on_cpu.logits).max())
    video_diff = float(np.abs(v_dev.score - v_cpu.score).max())
    return {"rows": rows, "max_frame_logit_diff_vs_cpu": frame_diff, "max_video_score_diff_vs_cpu": video_diff,
            "tolerance": SCORE_TOLERANCE, "equal": frame_diff <= SCORE_TOLERANCE}


# ------------------------------------------------------------------------------------------- 4. detectors
def part_detectors(s: Setting, clock: Clock, work: Path, weights: str | None) -> dict:
    import warnings

    from pipeline.faces import FaceDetector
    from pipeline.video import sample_frames

    _, frames = sample_frames(REPO / "data" / "sample" / "videos" / "carphone_pristine.mp4", 2 if s.quick else 8)
    sizes = (320,) if s.quick else (640, 1280)
    if weights is None:  # random weights of the published architecture: speed and device agreement, not faces
        from retinaface.network import RetinaFace

        with warnings.catch_warnings():
            warnings.simplefilter("ignore", UserWarning)
            net = RetinaFace(name="Resnet50", pretrained=False, in_channels=256, out_channels=256,
                             return_layers={"layer2": 1, "layer3": 2, "layer4": 3})
        weights = str(work / "r50_random.pth")
        torch.save(net.state_dict(), weights)
        weight_note = "random weights"
    else:
        weight_note = weights
    rows = []
    import cv2

    for side in sizes:
        h = side * 3 // 4
        big = [cv2.resize(f, (side, h), interpolation=cv2.INTER_CUBIC) for f in frames]
        for backend, device in (("mobilenet0.25", "cpu"), ("resnet50", s.device)):
            clock.check()
            det = FaceDetector(backend=backend, weights=weights if backend == "resnet50" else None, device=device,
                               max_side=None, face_px=None, batch_size=len(big))
            det.detect(big[:1])
            t0 = time.perf_counter()
            det.detect(big)
            rows.append({"backend": backend, "device": device, "frame": f"{side}x{h}",
                         "frames_per_s": len(big) / (time.perf_counter() - t0)})
        clock.check()  # the pipeline's default: detection levels that follow the faces (face_px), one batch
        det = FaceDetector(backend="resnet50", weights=weights, device=s.device, batch_size=len(big))
        det.detect(big[:1])
        t0 = time.perf_counter()
        det.detect(big)
        rows.append({"backend": "resnet50 (levels)", "device": s.device, "frame": f"{side}x{h}",
                     "frames_per_s": len(big) / (time.perf_counter() - t0)})
    clock.check()
    out = {"rows": rows, "resnet50_weights": weight_note}
    if s.device != "cpu":
        x = np.stack([cv2.resize(f, (640, 480)) for f in frames[:2]])
        dev = FaceDetector(backend="resnet50", weights=weights, device=s.device).net(x)
        cpu = FaceDetector(backend="resnet50", weights=weights, device="cpu").net(x)
        out["max_output_diff_vs_cpu"] = float(max(np.abs(a - b).max() for a, b in zip(dev, cpu)))
    return out


# ---------------------------------------------------------------------------------------------- 5. loader
def part_loader(s: Setting, clock: Clock, work: Path, step_pairs_per_s: float | None) -> dict:
    from torch.utils.data import DataLoader

    from model.config import DataConfig
    from model.data.datasets import TrainPairDataset, collate_pairs
    from tests.face_fixtures import write_example_split

    split = write_example_split(work / "loader", 128 if s.quick else s.size, frames=4)
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        ds = TrainPairDataset(DataConfig(shards=[str(split)], image_size=s.size, frames_per_video=4))
    cores = os.cpu_count() or 1
    counts = sorted({1, 2, 4, cores} if not s.quick else {1, 2})
    rows = []
    for n in counts:
        clock.check()
        loader = DataLoader(ds, batch_size=s.pairs, shuffle=True, num_workers=n, collate_fn=collate_pairs,
                            persistent_workers=False)
        it = iter(loader)
        next(it)  # workers started
        t0, pairs = time.perf_counter(), 0
        for batch in it:
            pairs += len(batch["label"]) // 2
            if time.perf_counter() - t0 > (3 if s.quick else 10):
                break
        rate = pairs / max(time.perf_counter() - t0, 1e-9)
        row = {"workers": n, "pairs_per_s": rate}
        if step_pairs_per_s:
            row["loader_over_step"] = rate / step_pairs_per_s
        rows.append(row)
    enough = next((r["workers"] for r in rows if r.get("loader_over_step", 0) >= 1), None)
    return {"rows": rows, "step_pairs_per_s": step_pairs_per_s, "workers_to_feed_the_step": enough}


# ---------------------------------------------------------------------------------------------- report
def environment(device: str) -> dict:
    env = {"python": platform.python_version(), "torch": torch.__version__, "cuda": torch.version.cuda,
           "cudnn": torch.backends.cudnn.version() if torch.backends.cudnn.is_available() else None,
           "cpu_cores": os.cpu_count(), "device": device}
    if device.startswith("cuda"):
        env["gpu"] = torch.cuda.get_device_name(torch.device(device))
        try:
            env["driver"] = subprocess.run(["nvidia-smi", "--query-gpu=driver_version", "--format=csv,noheader"],
                                           capture_output=True, text=True, timeout=20).stdout.strip()
        except (OSError, subprocess.SubprocessError):
            env["driver"] = "unknown"
    return env


def markdown(result: dict) -> str:
    env = result["environment"]
    lines = [f"# GPU check: {env.get('gpu', env['device'])}", "",
             f"torch {env['torch']}, CUDA {env['cuda']}, driver {env.get('driver', '-')}, {env['cpu_cores']} cores; "
             f"{'QUICK (tiny network) ' if result['quick'] else ''}{result['minutes']:.1f} min in all", ""]
    p = result["parts"]
    if "rows" in p.get("train", {}):
        lines += [f"## Training step ({p['train']['setting']})", "",
                  "| precision | compile | images/s | s/step | peak GiB | loss | vs fp32 |", "|---|---|---|---|---|---|---|"]
        for r in p["train"]["rows"]:
            vs = f"{r['rel_loss_vs_fp32']:.2e} ({'ok' if r['within_tolerance'] else 'OVER'} <= {TOLERANCE[r['amp']]})" \
                if "rel_loss_vs_fp32" in r else "-"
            lines.append(f"| {r['amp']} | {'yes' if r['compile'] else 'no'} | {r.get('images_per_s', 0):.1f} | "
                         f"{r.get('s_per_step', 0):.3f} | {r.get('peak_gib', 0):.2f} | {r['loss']:.4f} | "
                         f"{r.get('cut', vs)} |")
        lines.append("")
    if "rows" in p.get("eval", {}):
        e = p["eval"]
        lines += ["## Evaluation scorer", "", "| flip | batch | faces/s |", "|---|---|---|"]
        lines += [f"| {'on' if r['flip'] else 'off'} | {r['batch']} | {r['faces_per_s']:.1f} |" for r in e["rows"]]
        lines += ["", f"device vs CPU: frame logits max diff {e['max_frame_logit_diff_vs_cpu']:.2e}, video scores "
                      f"{e['max_video_score_diff_vs_cpu']:.2e} (tolerance {e['tolerance']})", ""]
    if "rows" in p.get("detectors", {}):
        d = p["detectors"]
        lines += [f"## Detectors (ResNet-50: {d['resnet50_weights']})", "", "| backend | device | frame | frames/s |",
                  "|---|---|---|---|"]
        lines += [f"| {r['backend']} | {r['device']} | {r['frame']} | {r['frames_per_s']:.1f} |" for r in d["rows"]]
        if "max_output_diff_vs_cpu" in d:
            lines.append(f"\nResNet-50 outputs on the device vs CPU: max diff {d['max_output_diff_vs_cpu']:.2e}")
        lines.append("")
    if "rows" in p.get("loader", {}):
        ld = p["loader"]
        lines += ["## Is the GPU starved?", "", "| DataLoader workers | pairs/s | loader / step |", "|---|---|---|"]
        lines += [f"| {r['workers']} | {r['pairs_per_s']:.1f} | {r.get('loader_over_step', float('nan')):.2f} |"
                  for r in ld["rows"]]
        lines += ["", f"train step: {ld['step_pairs_per_s'] or float('nan'):.1f} pairs/s; workers that keep up: "
                      f"{ld['workers_to_feed_the_step'] or 'more than measured'}", ""]
    if "backend" in p.get("ddp", {}):
        d = p["ddp"]
        lines += ["## DDP", "", f"torchrun, 1 process, {d['backend']}: killed after epoch {d['killed_after_epoch']}, "
                                f"resumed with --resume auto; weights vs an uninterrupted run: max diff "
                                f"{d['max_abs_weight_diff']:.2e} ({'equal' if d['equal'] else 'DIFFERENT'} within "
                                f"{d['tolerance']})", ""]
    for name, part in p.items():
        if "error" in part or "cut" in part:
            lines.append(f"- {name}: {part.get('cut') or part.get('error')}")
    return "\n".join(lines).rstrip() + "\n"


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(prog="python -m bench.gpu_check", description=__doc__.split("\n\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--device", default="cuda", help="cuda, cuda:N or cpu")
    ap.add_argument("--quick", action="store_true", help="tiny network and short parts (the CPU check in CI)")
    ap.add_argument("--out", type=Path, default=REPO / "out" / "gpu_check", help="folder for the table and JSON")
    ap.add_argument("--parts", nargs="*", default=["train", "ddp", "eval", "detectors", "loader"])
    ap.add_argument("--detector-weights", default=None, help="the published RetinaFace ResNet-50 .pth (else random)")
    args = ap.parse_args(argv)
    if args.device.startswith("cuda") and not torch.cuda.is_available():
        raise SystemExit("bench.gpu_check: no CUDA device here; use --device cpu --quick for the CPU path")
    s = Setting.of(args.device, args.quick)
    t0 = time.perf_counter()
    parts: dict[str, dict] = {}
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        for name in args.parts:
            clock = Clock(s.budget[name])
            print(f"gpu_check: {name} (time box {s.budget[name]} s)", flush=True)
            try:
                if name == "train":
                    parts[name] = part_train(s, clock)
                elif name == "ddp":
                    parts[name] = part_ddp(s, clock, work)
                elif name == "eval":
                    parts[name] = part_eval(s, clock, work)
                elif name == "detectors":
                    parts[name] = part_detectors(s, clock, work, args.detector_weights)
                elif name == "loader":
                    best = max((r.get("images_per_s", 0) for r in parts.get("train", {}).get("rows", [])), default=0)
                    parts[name] = part_loader(s, clock, work, best / 2 or None)
            except OutOfTime as e:
                parts[name] = {"cut": f"{e} (time box)"}
            except (subprocess.TimeoutExpired, RuntimeError, OSError) as e:  # one part's failure is a figure too
                parts[name] = {"error": f"{type(e).__name__}: {' '.join(str(e).split())[:300]}"}
            parts.setdefault(name, {})["seconds"] = s.budget[name] - clock.left()
    result = {"environment": environment(args.device), "quick": args.quick, "parts": parts,
              "minutes": (time.perf_counter() - t0) / 60}
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "gpu_check.json").write_text(json.dumps(result, indent=1, default=float))
    md = markdown(result)
    (args.out / "gpu_check.md").write_text(md)
    print(md)
    return result


if __name__ == "__main__":
    main()
