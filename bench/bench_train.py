"""Training-step throughput: images/s of one full optimiser step of train.py's ``train_step``.

Measures the paper's setting by default: EfficientNet-B4 LAA-Net at 384 x 384, 16 images per step
(8 real + 8 fake), SAM over Adam (two forward/backward passes per step). Baseline, in the same run:
the same step with plain Adam (one pass), so the printed ratio is SAM's cost. Data loading is not
included (a fixed synthetic batch with realistic targets): this is the model + optimiser cost.

    python -m bench.bench_train                                   # B4, 384, batch 16, CPU
    python -m bench.bench_train --backbone tf_efficientnet_b0 --size 128 --steps 5
    python -m bench.bench_train --accum-steps 2                   # same batch, half the activation memory
"""
from __future__ import annotations

import argparse
import os
import resource
import time

import torch

from model.config_io import load_config
from model.device import keep_freed_memory, select_amp, select_device
from model.net.laanet import build_model, set_backbone_frozen
from model.train.dist import Dist
from model.train.engine import Trainer, build_optimizer, train_step
from model.train.losses import LAALoss
from model.train.schedule import WarmupLinearSchedule


def synthetic_batch(pairs: int, size: int, seed: int = 0) -> dict:
    """A pairs batch with the collate_pairs keys: (2N, 3, S, S) images in [-1, 1], fake heatmaps with
    a few unit peaks, consistency maps in [0, 1]; reals have zero targets."""
    g = torch.Generator().manual_seed(seed)
    n, h = 2 * pairs, size // 4
    label = torch.cat([torch.zeros(pairs), torch.ones(pairs)])
    heatmap = torch.zeros(n, 1, h, h)
    consistency = torch.zeros(n, h, h)
    for i in range(pairs, n):
        ys, xs = torch.randint(0, h, (2, 6), generator=g)
        heatmap[i, 0, ys, xs] = 1.0
        consistency[i] = torch.rand(h, h, generator=g)
    return {"image": torch.rand(n, 3, size, size, generator=g) * 2 - 1, "label": label, "heatmap": heatmap,
            "consistency": consistency, "video_id": [f"synthetic/{i}" for i in range(n)],
            "frame_index": torch.arange(n)}


def make_trainer(args, sam: bool) -> Trainer:
    cfg = load_config(None, [f"model.backbone={args.backbone}", "model.pretrained=false",
                             f"model.input_size={args.size}", f"data.image_size={args.size}",
                             f"train.batch_pairs={args.batch_pairs}", f"optim.accum_steps={args.accum_steps}",
                             f"optim.sam={str(sam).lower()}", f"train.device={args.device}", f"train.amp={args.amp}",
                             f"train.channels_last={str(args.channels_last).lower()}", "train.epochs=1"])
    dist = Dist()
    device = select_device(cfg.train.device, dist.local_rank if dist.enabled else None, what="train.device")
    amp_dtype, use_scaler = select_amp(cfg.train.amp, device, what="train.amp")
    model = build_model(cfg.model).to(device)
    if cfg.train.channels_last:
        model = model.to(memory_format=torch.channels_last)
    model.train()
    set_backbone_frozen(model, args.frozen)
    base, sam_opt = build_optimizer(cfg, model)
    sched = WarmupLinearSchedule(base, 10_000, cfg.optim.lr_start, cfg.optim.lr_peak, cfg.optim.warmup_fraction)
    t = Trainer(cfg=cfg, run_dir=".", dist=dist, device=device, model=model, criterion=LAALoss(cfg.loss),
                base_opt=base, sam=sam_opt, schedule=sched,
                scaler=torch.amp.GradScaler(device.type, enabled=use_scaler), amp_dtype=amp_dtype,
                steps_per_epoch=10_000)
    t.net = model
    return t


def time_steps(t: Trainer, batch: dict, warmup: int, steps: int) -> float:
    """Seconds per step (median of ``steps`` timed steps after ``warmup`` untimed ones)."""
    for _ in range(warmup):
        train_step(t, batch)
    times = []
    for _ in range(steps):
        if t.device.type == "cuda":
            torch.cuda.synchronize()
        start = time.perf_counter()
        train_step(t, batch)
        if t.device.type == "cuda":
            torch.cuda.synchronize()
        times.append(time.perf_counter() - start)
    return sorted(times)[len(times) // 2]


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--backbone", default="tf_efficientnet_b4")
    p.add_argument("--size", type=int, default=384)
    p.add_argument("--batch-pairs", type=int, default=8, help="pairs per step (images = 2x)")
    p.add_argument("--accum-steps", type=int, default=1)
    p.add_argument("--device", default="cpu")
    p.add_argument("--amp", default="off", choices=["auto", "off", "bf16", "fp16"])
    p.add_argument("--channels-last", action=argparse.BooleanOptionalAction, default=True)
    p.add_argument("--frozen", action="store_true", help="backbone frozen (the first epochs of the recipe)")
    p.add_argument("--threads", type=int, default=0, help="torch intra-op threads (0 = torch default)")
    p.add_argument("--warmup", type=int, default=1)
    p.add_argument("--steps", type=int, default=3)
    p.add_argument("--no-baseline", action="store_true", help="skip the plain-Adam baseline")
    args = p.parse_args()

    torch.manual_seed(0)
    keep_freed_memory()  # as train.py (LAANET_MALLOC_TUNING=0 measures glibc's defaults)
    if args.threads > 0:
        torch.set_num_threads(args.threads)
    images = 2 * args.batch_pairs
    batch = synthetic_batch(args.batch_pairs, args.size)
    results = {}
    for name, sam in (("SAM+Adam", True),) + ((() if args.no_baseline else (("Adam (baseline)", False),))):
        t = make_trainer(args, sam)
        sec = time_steps(t, batch, args.warmup, args.steps)
        results[name] = sec
        del t
    peak_gib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20
    setting = (f"{args.backbone} {args.size}x{args.size}, {images} images/step ({args.batch_pairs} pairs, "
               f"accum {args.accum_steps}), {args.device}, amp {args.amp}, channels_last {args.channels_last}, "
               f"backbone {'frozen' if args.frozen else 'trained'}, torch threads {torch.get_num_threads()}")
    print(f"train step: {setting}")
    for name, sec in results.items():
        print(f"  {name:16s} {sec:8.2f} s/step  {images / sec:8.2f} images/s  (median of {args.steps})")
    if len(results) == 2:
        print(f"  SAM costs {results['SAM+Adam'] / results['Adam (baseline)']:.2f}x the plain Adam step")
    print(f"  peak RSS {peak_gib:.1f} GiB; load average {os.getloadavg()}")


if __name__ == "__main__":
    main()
