"""What fletcher32 costs: write and random-read speed of crop datasets with and without the checksum.

    PYTHONPATH=. python -m bench.bench_checksums [--rounds 5] [--reads 2000]

Crops are 384 px frames of the sample clip (smooth content that compresses like faces), stored as the
shard writer stores them (one crop per chunk, Blosc-LZ4 or uncompressed). Checksum on/off alternate within
each round, and the median over rounds is printed, since a shared machine drifts by 20-30 % in minutes.
Only h5py is timed here; ``bench.bench_pipeline`` measures reads through ``ShardReader`` against PNG + JSON.
"""
from __future__ import annotations

import argparse
import os
import tempfile
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]


def get_args_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description="fletcher32 cost on crop write and random read")
    p.add_argument("--rounds", type=int, default=5)
    p.add_argument("--reads", type=int, default=2000)
    p.add_argument("--faces", type=int, default=64)
    return p


def one(path: Path, faces: np.ndarray, order: np.ndarray, compression: str, fletcher32: bool) -> tuple[float, float]:
    """(faces written per second, random crops read per second) for one file."""
    import h5py
    import hdf5plugin

    s = faces.shape[1]
    kw = dict(hdf5plugin.Blosc(cname="lz4", clevel=5, shuffle=hdf5plugin.Blosc.NOSHUFFLE)) \
        if compression == "blosc-lz4" else {}
    t0 = time.perf_counter()
    with h5py.File(path, "w") as f:
        d = f.create_dataset("faces", shape=(0, s, s, 3), maxshape=(None, s, s, 3), dtype=np.uint8,
                             chunks=(1, s, s, 3), fletcher32=fletcher32, **kw)
        for k in range(0, len(faces), 16):  # one video's crops at a time, as ShardWriter appends them
            d.resize(min(len(faces), k + 16), axis=0)
            d[k:k + 16] = faces[k:k + 16]
    write = len(faces) / (time.perf_counter() - t0)
    with h5py.File(path, "r") as f:
        d = f["faces"]
        d[0]
        t0 = time.perf_counter()
        for i in order:
            d[int(i)]
        read = len(order) / (time.perf_counter() - t0)
    return write, read


def main(args) -> None:
    import cv2

    from pipeline.video import sample_frames

    _, frames = sample_frames(REPO / "data" / "sample" / "videos" / "carphone_pristine.mp4", args.faces)
    faces = np.stack([cv2.resize(f, (384, 384), interpolation=cv2.INTER_CUBIC) for f in frames])
    order = np.random.default_rng(0).integers(0, len(faces), args.reads)
    print(f"loadavg before {' '.join(f'{x:.2f}' for x in os.getloadavg())}", flush=True)
    res: dict[tuple[str, bool], list[tuple[float, float]]] = {}
    with tempfile.TemporaryDirectory() as work:
        for _ in range(args.rounds):
            for comp in ("blosc-lz4", "none"):
                for f32 in (False, True):
                    res.setdefault((comp, f32), []).append(one(Path(work) / "f.h5", faces, order, comp, f32))
    for comp in ("blosc-lz4", "none"):
        off, on = np.median(np.array(res[(comp, False)]), 0), np.median(np.array(res[(comp, True)]), 0)
        print(f"{comp:<10}: write {off[0]:7.0f} -> {on[0]:7.0f} faces/s ({on[0] / off[0] - 1:+.0%}), random read "
              f"{off[1]:7.0f} -> {on[1]:7.0f} crops/s ({on[1] / off[1] - 1:+.0%}) without -> with fletcher32, "
              f"median of {args.rounds}", flush=True)
    print(f"loadavg after {' '.join(f'{x:.2f}' for x in os.getloadavg())}", flush=True)


if __name__ == "__main__":
    main(get_args_parser().parse_args())
