"""Benchmark LAA-Net forward and training step on CPU (default: 384 x 384, batch 2, 2 threads).

    python -m bench.bench_model [--size 384] [--batch 2] [--threads 2] [--repeats 5] [--modes ...] [--png F]

Modes: fp32, bf16 (autocast), cl (channels_last, fp32), cl_bf16, fp64 (the reference's training
precision). A training step is forward + the three losses + backward (no optimizer step), timed as the
median (and min) of --repeats runs after warm-up; wall time is printed with the process CPU time (user + system,
all threads), which a busy shared machine inflates less. Each mode runs in a fresh process; its peak
memory is the largest resident-set growth during the training steps (warm-up included) over the
model-and-inputs baseline, sampled every millisecond by a thread.
The baseline is the reference implementation's measured figures on this kind of machine with 2 threads:
forward 0.249 s, training step 0.975 s (float32) and 3.26 s (float64).
"""
from __future__ import annotations

import argparse
import contextlib
import json
import os
import statistics
import subprocess
import sys
import threading
import time
from pathlib import Path

import psutil
import torch

from model import build_model
from model.config import LossConfig
from model.train.losses import LAALoss

# Reference implementation, measured on this kind of machine with 2 threads (seconds).
REFERENCE_S = {"forward_fp32": 0.249, "train_fp32": 0.975, "train_fp64": 3.26}
TARGET_RATIO = 0.9  # our float32 training step vs the reference's


class PeakRSS:
    """Context manager: peak RSS growth (bytes) over the value at entry, sampled every millisecond."""

    def __enter__(self) -> PeakRSS:
        self.proc = psutil.Process()
        self.base = self.proc.memory_info().rss
        self.peak = self.base
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()
        return self

    def _run(self) -> None:
        while not self._stop.is_set():
            self.peak = max(self.peak, self.proc.memory_info().rss)
            time.sleep(0.001)

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join()

    @property
    def growth_mib(self) -> float:
        return (self.peak - self.base) / 2**20


def make_batch(batch: int, size: int, dtype: torch.dtype) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """Synthetic inputs/targets shaped like the trainer's: half real, half fake with a few peaks."""
    g = torch.Generator().manual_seed(0)
    h = size // 4
    x = (torch.rand(batch, 3, size, size, generator=g) * 2 - 1).to(dtype)
    heat = torch.zeros(batch, 1, h, h)
    cons = torch.zeros(batch, h, h)
    label = torch.zeros(batch)
    for i in range(batch // 2, batch):
        label[i] = 1
        heat[i, 0, h // 3, h // 3] = 1.0
        heat[i, 0, h // 2 - 2:h // 2 + 2, h // 2 - 2:h // 2 + 2] = 0.5
        cons[i, h // 4:3 * h // 4, h // 4:3 * h // 4] = torch.rand(h // 2, h // 2, generator=g)
    return x, {"label": label, "heatmap": heat.to(dtype), "consistency": cons.to(dtype)}


def run_mode(mode: str, size: int, batch: int, repeats: int) -> dict[str, float]:
    dtype = torch.float64 if mode == "fp64" else torch.float32
    torch.manual_seed(0)
    model = build_model({"input_size": size}).to(dtype)
    x, targets = make_batch(batch, size, dtype)
    if mode.startswith("cl"):
        model = model.to(memory_format=torch.channels_last)
        x = x.contiguous(memory_format=torch.channels_last)
    autocast = (lambda: torch.autocast("cpu", dtype=torch.bfloat16)) if mode.endswith("bf16") \
        else contextlib.nullcontext
    loss_fn = LAALoss(LossConfig())

    def forward() -> None:
        with torch.no_grad(), autocast():
            model(x)

    def train_step() -> None:
        model.zero_grad(set_to_none=True)
        with autocast():
            out = model(x)
            total, _ = loss_fn(out, targets)
        total.backward()

    model.eval()
    fwd, fwd_cpu = [], []
    for i in range(repeats + 1):
        t, c = time.perf_counter(), time.process_time()
        forward()
        if i:  # first call is warm-up
            fwd.append(time.perf_counter() - t)
            fwd_cpu.append(time.process_time() - c)
    model.train()
    steps, steps_cpu = [], []
    with PeakRSS() as mem:
        train_step()  # warm-up (allocates gradients)
        for _ in range(repeats):
            t, c = time.perf_counter(), time.process_time()
            train_step()
            steps.append(time.perf_counter() - t)
            steps_cpu.append(time.process_time() - c)
    return {"forward": statistics.median(fwd), "forward_min": min(fwd), "forward_cpu": statistics.median(fwd_cpu),
            "train": statistics.median(steps), "train_min": min(steps), "train_cpu": statistics.median(steps_cpu),
            "peak_mib": mem.growth_mib}


def forward_gflops(size: int) -> float:
    """FLOPs (2 per multiply-add, torch's FlopCounterMode) of one forward pass of one image."""
    from torch.utils.flop_counter import FlopCounterMode

    model = build_model({"input_size": size}).eval()
    with torch.no_grad(), FlopCounterMode(display=False) as counter:
        model(torch.zeros(1, 3, size, size))
    return counter.get_total_flops() / 1e9


def plot(results: dict[str, dict[str, float]], args: argparse.Namespace, comparable: bool) -> None:
    """Bar chart of forward and training-step wall times per mode, with the reference's lines."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    modes = list(results)
    pos = range(len(modes))
    fig, ax = plt.subplots(figsize=(1.6 * len(modes) + 2, 3.5))
    ax.bar([p - 0.2 for p in pos], [results[m]["forward"] for m in modes], 0.4, label="forward")
    ax.bar([p + 0.2 for p in pos], [results[m]["train"] for m in modes], 0.4, label="train step")
    if comparable:
        ax.axhline(REFERENCE_S["train_fp32"], ls="--", c="k", lw=1, label="reference fp32 train step")
        ax.axhline(REFERENCE_S["forward_fp32"], ls=":", c="k", lw=1, label="reference fp32 forward")
    ax.set_xticks(list(pos), modes)
    ax.set_ylabel("seconds (median)")
    ax.set_title(f"LAA-Net B4 {args.size}px, batch {args.batch}, {args.threads} threads, "
                 f"loadavg {os.getloadavg()[0]:.1f}", fontsize=9)
    ax.legend(fontsize=8)
    fig.tight_layout()
    args.png.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(args.png, dpi=120)
    print(f"wrote {args.png}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--size", type=int, default=384)
    parser.add_argument("--batch", type=int, default=2)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--modes", nargs="+", default=["fp32", "bf16", "cl", "cl_bf16", "fp64"],
                        choices=["fp32", "bf16", "cl", "cl_bf16", "fp64"])
    parser.add_argument("--png", type=Path, help="also draw the figures as a bar chart here")
    parser.add_argument("--one-mode", help=argparse.SUPPRESS)  # internal: run one mode, print JSON
    args = parser.parse_args()
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    torch.set_num_threads(args.threads)
    if args.one_mode:
        print(json.dumps(run_mode(args.one_mode, args.size, args.batch, args.repeats)))
        return
    print(f"LAA-Net (tf_efficientnet_b4, E-FPN, 3 heads) {args.size}x{args.size}, batch {args.batch}, "
          f"{args.threads} threads, torch {torch.__version__}, median of {args.repeats}; "
          f"loadavg before {tuple(round(v, 2) for v in os.getloadavg())} on {os.cpu_count()} CPUs")
    print(f"forward FLOPs per image: {forward_gflops(args.size):.2f} GFLOP (reference 16.6 GFLOP at 384)")
    comparable = (args.size, args.batch, args.threads) == (384, 2, 2)
    results = {}
    for mode in args.modes:
        cmd = [sys.executable, "-m", "bench.bench_model", "--one-mode", mode, "--size", str(args.size),
               "--batch", str(args.batch), "--threads", str(args.threads), "--repeats", str(args.repeats)]
        proc = subprocess.run(cmd, capture_output=True, text=True, cwd=Path(__file__).resolve().parents[1])
        if proc.returncode:
            raise SystemExit(f"mode {mode} failed:\n{proc.stderr[-2000:]}")
        r = json.loads(proc.stdout.splitlines()[-1])
        results[mode] = r
        ref_fwd, ref_key = REFERENCE_S["forward_fp32"], "train_fp64" if mode == "fp64" else "train_fp32"
        ref_f = f" (reference fp32 {ref_fwd:.3f} s, x{r['forward'] / ref_fwd:.2f})"
        ref_t = f" (reference {ref_key[6:]} {REFERENCE_S[ref_key]:.3f} s, x{r['train'] / REFERENCE_S[ref_key]:.2f})"
        if not comparable:  # the reference was measured at 384 x 384, batch 2, 2 threads only
            ref_f = ref_t = ""
        print(f"{mode:8s} forward {r['forward']:.3f} s (min {r['forward_min']:.3f}, CPU {r['forward_cpu']:.2f} s)"
              f"{ref_f}; train step {r['train']:.3f} s (min {r['train_min']:.3f}, CPU {r['train_cpu']:.2f} s)"
              f"{ref_t}; "
              f"peak memory of a train step +{r['peak_mib']:.0f} MiB; "
              f"loadavg {tuple(round(v, 2) for v in os.getloadavg())}", flush=True)
    for mode in ("fp32", "cl"):  # both are float32 training; cl only changes the memory layout
        if mode in results and comparable:
            ratio = results[mode]["train"] / REFERENCE_S["train_fp32"]
            print(f"{mode} train step / reference fp32 train step = {ratio:.2f} (target <= {TARGET_RATIO}): "
                  f"{'met' if ratio <= TARGET_RATIO else 'NOT met'}")
    if args.png:
        plot(results, args, comparable)
    fastest = min(results, key=lambda m: results[m]["train"])
    print(f"fastest training mode: {fastest} ({results[fastest]['train']:.3f} s); "
          f"the machine is shared, so figures vary with the load shown")


if __name__ == "__main__":
    main()
