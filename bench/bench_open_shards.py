"""Open shard files of persistent DataLoader workers, and what the bound on them costs.

Writes ``--shards`` small shards, then:
1. runs the training loader (``model.train.engine.build_train_loader``: persistent workers, EpochSampler)
   for two epochs with ``data.max_open_shards`` = ``--max-open`` and with no bound (= the shard count),
   and prints the peak number of ``*.h5`` files each worker held open (read from /proc/<pid>/fd after
   every batch);
2. times random crop reads in this process (shuffled over all shards, as the sampler reads them) through
   the LRU with ``--max-open`` handles against all handles kept open, in alternating rounds, in CPU
   seconds per read: the cost of re-opening shards that fell out of the cache.

    python -m bench.bench_open_shards                        # 96 shards, bound 16, 2 workers
    python -m bench.bench_open_shards --shards 300 --max-open 32 --workers 4
"""
from __future__ import annotations

import argparse
import os
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from model.config_io import load_config
from model.data.pool import ShardPool
from model.train.dist import Dist
from model.train.engine import build_train_loader
from pipeline.shard_index import write_index
from pipeline.shard_writer import write_shard


def ellipse_landmarks(crop: int, rng: np.random.Generator) -> np.ndarray:
    """68 points on a jittered face-sized ellipse: enough for a convex hull to blend. (68, 2) float32."""
    a = np.linspace(0, 2 * np.pi, 68, endpoint=False)
    pts = np.stack([0.5 + 0.3 * np.cos(a), 0.55 + 0.35 * np.sin(a)], 1) * crop
    return (pts + rng.normal(0, 0.01 * crop, pts.shape)).astype(np.float32)


def write_split(split: Path, n_shards: int, crop: int, frames: int) -> Path:
    """``n_shards`` shards of one real video each: ``frames`` noise faces with ellipse landmarks."""
    rng = np.random.default_rng(0)
    for s in range(n_shards):
        faces = rng.integers(0, 255, (frames, crop, crop, 3), dtype=np.uint8)
        lms = np.stack([ellipse_landmarks(crop, rng) for _ in range(frames)])
        write_shard(split / f"shard-{s:05d}.h5", faces, videos=[{"id": f"v{s:04d}", "label": 0, "method": "original"}],
                    video=np.zeros(frames, np.int32), frame_index=np.arange(frames), landmarks=lms)
    write_index(split, dataset="bench", split="train")
    return split


def open_h5(pid: int) -> int:
    n = 0
    for fd in Path(f"/proc/{pid}/fd").iterdir():
        try:
            n += os.readlink(fd).endswith(".h5")
        except OSError:
            continue
    return n


def peak_worker_files(split: Path, max_open: int, workers: int, crop: int) -> tuple[int, int]:
    """(peak open *.h5 per worker over two epochs, batches read)."""
    cfg = load_config(None, [f"data.shards=[{split}]", f"data.max_open_shards={max_open}", "data.frames_per_video=2",
                             f"data.image_size={crop}", f"model.input_size={crop}", f"train.num_workers={workers}",
                             "train.device=cpu", "augment.enabled=false"])
    _, sampler, loader = build_train_loader(cfg, Dist(), torch.device("cpu"), per_process=4)
    peak, batches = 0, 0
    for epoch in (0, 1):
        sampler.set_epoch(epoch)
        for _ in loader:
            batches += 1
            pids = [w.pid for w in loader._iterator._workers]
            peak = max([peak] + [open_h5(p) for p in pids])
    del loader
    return peak, batches


def time_reads(shards: ShardPool, order: np.ndarray) -> float:
    """CPU seconds per crop read of ``order`` ((shard, row) pairs) through ``shards.open``."""
    t0 = time.process_time()
    for si, row in order:
        shards.open(int(si)).face(int(row))
    return (time.process_time() - t0) / len(order)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--shards", type=int, default=96, help="number of shards written")
    ap.add_argument("--max-open", type=int, default=16, help="data.max_open_shards under test")
    ap.add_argument("--workers", type=int, default=2, help="persistent DataLoader workers")
    ap.add_argument("--crop", type=int, default=128, help="crop side of the written faces")
    ap.add_argument("--frames", type=int, default=8, help="faces per shard")
    ap.add_argument("--reads", type=int, default=2000, help="crop reads per timing round")
    ap.add_argument("--rounds", type=int, default=3, help="alternating timing rounds")
    args = ap.parse_args()
    torch.set_num_threads(1)
    with tempfile.TemporaryDirectory() as tmp:
        split = write_split(Path(tmp) / "train", args.shards, args.crop, args.frames)
        bounded, n = peak_worker_files(split, args.max_open, args.workers, args.crop)
        unbounded, _ = peak_worker_files(split, args.shards, args.workers, args.crop)
        print(f"{args.shards} shards, {args.workers} persistent workers, 2 epochs ({n} batches): peak open shard "
              f"files per worker {bounded} with data.max_open_shards={args.max_open}, {unbounded} without a bound")

        rng = np.random.default_rng(1)
        order = np.stack([rng.integers(0, args.shards, args.reads), rng.integers(0, args.frames, args.reads)], 1)
        lru, every = ShardPool([str(split)], args.max_open), ShardPool([str(split)], args.shards)
        t_lru, t_all = [], []
        for _ in range(args.rounds):
            # Only one of the two holds files during its round: HDF5 compares a file being opened with every
            # file the process has open, so 300 handles kept by the baseline would slow the LRU's re-opens.
            t_lru.append(time_reads(lru, order))
            lru.close()
            for si in range(args.shards):  # the unbounded cache's steady state: every handle open (untimed)
                every.open(si).face(0)
            t_all.append(time_reads(every, order))
            every.close()
        a, b = np.median(t_lru) * 1e3, np.median(t_all) * 1e3
        print(f"random crop reads ({args.crop} px, {args.reads} x {args.rounds} rounds, alternating, CPU time): "
              f"{a:.3f} ms with {args.max_open} handles (LRU) vs {b:.3f} ms with all {args.shards} open "
              f"(baseline): {a / b:.2f}x, +{a - b:.3f} ms per read; load {os.getloadavg()[0]:.1f}")
        lru.close()
        every.close()


if __name__ == "__main__":
    main()
