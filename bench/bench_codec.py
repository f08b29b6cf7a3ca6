"""Shard codec by measurement: bytes per face, write speed and random-read speed of each crop compression.

    PYTHONPATH=. python -m bench.bench_codec [--frames 32] [--rounds 3] [--reads 300] [--workdir DIR]

Crops: the 384-px face crops the pipeline cuts (default settings) from the HD workload of
bench/bench_pipeline.py (FF++ / DFDC geometries, H.264 CRF 23; built with ffmpeg and cached in
``<workdir>/hd``). Each codec writes the same crops (and landmarks) into a shard with ``write_shard``,
fletcher32 on as always; then ``--reads`` random single-row reads through ``ShardReader.face`` (what the
training Dataset does per sample) from the page cache, so decompression and HDF5 overhead are what is timed.
Codecs run in a different order each round (the machine's speed drifts); the median of the rounds is the
figure. One process, one thread, CPU-seconds.

Rule for the default: the smallest bytes per face among the codecs that read at least ``--read-floor``
faces per CPU-second (default 1200 = 10 x the ~120 training pairs/s one core makes, so a random read takes
at most a tenth of a training pair's time) and write at least ``--write-floor`` faces per CPU-second
(default 150 = 10 x the ~15 HD faces per CPU-second the frames + landmarks stages make, so writing takes at
most a tenth of preprocessing). Prints a table and writes ``codecs.png``.
"""
from __future__ import annotations

import argparse
import shutil
import tempfile
import time
from pathlib import Path

import numpy as np

CODECS = ("none", "lzf", "gzip:1", "gzip:4", "gzip:9", "blosc-lz4:1", "blosc-lz4:5", "blosc-lz4:9",
          "blosc-lz4hc:5", "blosc-zstd:1", "blosc-zstd:3", "blosc-zstd:5", "blosc-zstd:7", "blosc-zstd:9")


def get_args_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description="shard crop codecs on HD face crops: size, write and random-read speed")
    p.add_argument("--frames", type=int, default=32, help="frames sampled per HD video")
    p.add_argument("--rounds", type=int, default=3, help="rounds over all codecs (median)")
    p.add_argument("--reads", type=int, default=300, help="random single-face reads per codec and round")
    p.add_argument("--read-floor", type=float, default=1200.0,
                   help="faces per CPU-second a codec must read to be eligible as default")
    p.add_argument("--write-floor", type=float, default=150.0,
                   help="faces per CPU-second a codec must write to be eligible as default")
    p.add_argument("--codecs", nargs="+", default=list(CODECS))
    p.add_argument("--workdir", type=Path, default=None, help="scratch folder (default: a temp dir); keeps the "
                                                              "HD clips between runs")
    p.add_argument("--out", type=Path, default=Path("codecs.png"), help="the chart")
    return p


def hd_crops(work: Path, frames: int) -> tuple[np.ndarray, np.ndarray]:
    """(N, 384, 384, 3) crops and (N, 68, 2) landmarks of the HD workload, as the pipeline makes them."""
    from bench.bench_pipeline import _items, hd_videos
    from pipeline.extract import extract_video
    from pipeline.faces import FaceDetector
    from pipeline.landmarks import LandmarkPredictor

    det, pred = FaceDetector(), LandmarkPredictor()
    faces = []
    for it in _items(hd_videos(work), frames):
        faces.append(extract_video(it, det).faces)
    faces = np.concatenate(faces)
    lms, _ = pred.predict_batch(faces)
    return faces, lms


def main(args) -> None:
    import cv2
    import h5py

    from pipeline.shard_writer import write_shard
    from pipeline.shards import ShardReader

    cv2.setNumThreads(1)
    work = Path(args.workdir or tempfile.mkdtemp(prefix="bench_codec_"))
    work.mkdir(parents=True, exist_ok=True)
    faces, lms = hd_crops(work, args.frames)
    n, raw = len(faces), faces[0].nbytes
    print(f"{n} HD face crops of {faces.shape[1]} px ({raw / 1024:.0f} KiB raw each); {args.rounds} rounds, "
          f"{args.reads} random reads per codec and round", flush=True)
    rng = np.random.default_rng(0)
    stats: dict[str, dict[str, list[float]]] = {c: {"write": [], "read": [], "bytes": []} for c in args.codecs}
    for r in range(args.rounds):
        order = list(args.codecs[r % len(args.codecs):]) + list(args.codecs[:r % len(args.codecs)])
        for codec in order:
            path = work / f"codec_{codec.replace(':', '_')}.h5"
            path.unlink(missing_ok=True)
            t0 = time.process_time()
            write_shard(path, faces, landmarks=lms, compression=codec)
            stats[codec]["write"].append(n / (time.process_time() - t0))
            with h5py.File(path, "r") as f:
                stats[codec]["bytes"].append(f["faces"].id.get_storage_size() / n)
            idx = rng.integers(0, n, args.reads)
            with ShardReader(path) as reader:
                reader.face(0)  # open the file and the dataset outside the timing
                t0 = time.process_time()
                for k in idx:
                    reader.face(int(k))
                stats[codec]["read"].append(args.reads / (time.process_time() - t0))
            path.unlink()
    rows = []
    for codec in args.codecs:
        s = stats[codec]
        rows.append((codec, float(np.median(s["bytes"])), float(np.median(s["write"])), float(np.median(s["read"])),
                     s["read"]))
    eligible = [row for row in rows if row[3] >= args.read_floor and row[2] >= args.write_floor]
    pick = min(eligible, key=lambda row: row[1]) if eligible else max(rows, key=lambda row: row[3])
    fastest = max(row[3] for row in rows)
    print(f"{'codec':<14} {'KiB/face':>9} {'% raw':>6} {'write f/CPU-s':>14} {'read f/CPU-s':>13} {'% fastest':>9}"
          f"  read per round")
    for codec, b, w, rd, per in rows:
        mark = "  <- default by the rule" if codec == pick[0] else ""
        print(f"{codec:<14} {b / 1024:9.1f} {b / raw:6.1%} {w:14.1f} {rd:13.1f} {rd / fastest:9.1%}  "
              + ", ".join(f"{x:.0f}" for x in per) + mark)
    floors = f"reading >= {args.read_floor:.0f} and writing >= {args.write_floor:.0f} faces/CPU-s"
    rule = (f"smallest bytes/face among codecs {floors}" if eligible else
            f"no codec is {floors}: the fastest reader")
    print(f"rule: {rule} -> {pick[0]} ({pick[1] / 1024:.1f} KiB/face = {pick[1] / raw:.1%} of raw, "
          f"{pick[3]:.0f} faces/CPU-s read, {pick[2]:.0f} written)")
    plot(rows, pick[0], args.read_floor, args.write_floor, raw, args.out)
    print(f"chart: {args.out}")
    if args.workdir is None:
        shutil.rmtree(work)


def plot(rows, pick: str, read_floor: float, write_floor: float, raw: int, out: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(12, 5))
    for ax, col, floor, what in ((axes[0], 3, read_floor, "random single-face reads"),
                                 (axes[1], 2, write_floor, "faces written")):
        for row in rows:
            codec, b = row[0], row[1]
            ax.scatter(b / 1024, row[col], color="tab:red" if codec == pick else "tab:blue", zorder=3)
            ax.annotate(codec, (b / 1024, row[col]), textcoords="offset points", xytext=(4, 4), fontsize=8)
        ax.axhline(floor, color="grey", ls="--", lw=1, label=f"floor {floor:.0f} faces/CPU-s")
        ax.axvline(raw / 1024, color="grey", ls=":", lw=1, label="raw size")
        ax.set_xlabel("KiB per 384-px HD face (on disk)")
        ax.set_ylabel(f"{what} per CPU-second")
        ax.set_yscale("log")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    fig.suptitle(f"Shard crop codecs on HD crops (red: the default by the rule, {pick})")
    fig.tight_layout()
    fig.savefig(out, dpi=120)
    plt.close(fig)


if __name__ == "__main__":
    main(get_args_parser().parse_args())
