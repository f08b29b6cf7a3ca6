"""Load balance of the frames stage on a Dask cluster: one task per 16-video shard (before) vs one task per video,
longest first (now).

Two scenarios on a ``LocalCluster`` of 2 single-threaded worker processes:

(a) 6 small videos (copies of ``data/sample/videos``), as an ad-hoc ``--input`` folder would give;
(b) 11 small videos plus one 1080p H.264 clip (the sample speaker clip re-encoded to 1920x1080 with the ffmpeg
    of ``imageio_ffmpeg``), where the long clip decides when the run ends.

"before" emulates the scheduling of the previous code: the videos grouped by 16 in input order, one task per
group running the same per-video body (``pipeline.tasks.extract_one``) one video after the other, no
priorities. "now" is ``run_extract`` itself (probe for priorities, one task per video, packing, index).
Both use the same workers with the detector preloaded. Per worker, busy time is the sum of its task compute
intervals from distributed's task stream (``client.get_task_stream``); wall time is the whole call (for
"now" including probing, packing and the index, which "before" does not do). Rounds alternate before/now.
Then the landmark stage on the packed split of (b), one shard: one task per shard (``part_rows`` larger than
the shard, the previous scheduling) against one task per ``part_rows`` crops (now), alternating rounds.
Last, packing itself: raw chunk copy against decoding and re-encoding the same crops, in CPU seconds.

    PYTHONPATH=. python -m bench.bench_balance --frames 32 --rounds 3 --png out/bench_balance.png
"""
from __future__ import annotations

import argparse
import shutil
import subprocess
import tempfile
import time
from collections import defaultdict
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
SAMPLE = REPO / "data" / "sample" / "videos"


def make_videos(root: Path) -> dict[str, list[Path]]:
    """(a) 6 small videos; (b) 11 small + one 1080p clip (listed last, as a folder listing might put it)."""
    import imageio_ffmpeg

    small = sorted(SAMPLE.glob("*.mp4"))
    vids = root / "videos"
    vids.mkdir(parents=True, exist_ok=True)
    copies = []
    for k in range(11):
        p = vids / f"small_{k:02d}.mp4"
        shutil.copy(small[k % len(small)], p)
        copies.append(p)
    hd = vids / "zz_1080p.mp4"
    subprocess.run([imageio_ffmpeg.get_ffmpeg_exe(), "-v", "error", "-y", "-i", str(SAMPLE / "short_hamilton_clip.mp4"),
                    "-t", "6", "-vf", "scale=1920:1080", "-c:v", "libx264", "-preset", "veryfast", "-crf", "23",
                    "-pix_fmt", "yuv420p", "-an", str(hd)], check=True)
    return {"a: 6 small": copies[:6], "b: 11 small + 1080p": copies + [hd]}


def items_for(paths: list[Path], frames: int):
    from pipeline.manifest import VideoItem

    return [VideoItem(id=p.stem, path=str(p), rel_path=p.name, label=0, split="test", dataset="bench",
                      n_frames=frames) for p in paths]


def _group_task(jobs, cfg):
    """The previous scheduling: one task extracts its group's videos one after the other."""
    from pipeline.tasks import extract_one

    return [extract_one(j, cfg) for j in jobs]


def run_before(client, items, out: Path, cfg) -> float:
    import json

    from distributed import wait

    from pipeline.resume import staged_path, video_record
    from pipeline.tasks import VideoJob, extract_settings

    cfg.settings = json.dumps(extract_settings(cfg, items), sort_keys=True)
    (out / ".staging").mkdir(parents=True, exist_ok=True)
    jobs = [VideoJob(it, video_record(it), str(staged_path(out, it.id))) for it in items]
    t0 = time.perf_counter()
    groups = [jobs[i:i + 16] for i in range(0, len(jobs), 16)]
    futs = [client.submit(_group_task, g, cfg, pure=False, key=f"group-{k}-{time.time_ns()}"
                          + ("-1080p" if any("1080p" in j.item.id for j in g) else "")) for k, g in enumerate(groups)]
    wait(futs)
    for f in futs:
        f.result()
    return time.perf_counter() - t0


def run_now(client, items, out: Path, cfg) -> float:
    from pipeline.runner import run_extract

    t0 = time.perf_counter()
    s = run_extract(items, out, "bench", "test", cfg, client=client)
    assert s.n_videos == len(items), s
    return time.perf_counter() - t0


def bench_pack(shard: Path, root: Path, repeats: int = 3) -> None:
    """Packing: ``pack_shard`` (crop chunks copied as stored) against writing the same shard through
    ``ShardWriter`` from decoded crops (decompress + recompress), alternating, on per-video files cut from
    ``shard``."""
    import h5py
    import numpy as np

    from pipeline.shard_writer import ShardWriter, pack_shard
    from pipeline.shards import ShardReader, read_json_rows

    r = ShardReader(shard)
    with h5py.File(shard, "r") as f:
        attrs = dict(f.attrs)
        planned = read_json_rows(f, "planned")
    comp = str(attrs["compression"])
    parts = []
    for v, row in enumerate(r.videos):
        rows = np.flatnonzero(r.video == v)
        p = root / f"part-{v:03d}.h5"
        w = ShardWriter(p, r.crop_size, attrs, comp, planned=[planned[v]])
        w.add_video(row, r.read("faces", rows), r.frame_index[rows], r.read("boxes", rows), r.read("scores", rows),
                    r.read("kps5", rows), r.read("crop_boxes", rows))
        parts.append(w.finish())
    mb = sum(p.stat().st_size for p in parts) / 1e6
    raw, recompress = [], []
    for k in range(repeats):
        out = root / f"packed-{k}.h5"
        t0 = time.process_time()
        pack_shard(parts, out)
        raw.append(time.process_time() - t0)
        out.unlink()
        t0 = time.process_time()
        w = ShardWriter(out, r.crop_size, attrs, comp)
        for p in parts:
            pr = ShardReader(p)
            w.add_video(pr.videos[0], pr.read("faces"), pr.frame_index, pr.read("boxes"), pr.read("scores"),
                        pr.read("kps5"), pr.read("crop_boxes"))
            pr.close()
        w.finish()
        recompress.append(time.process_time() - t0)
        out.unlink()
    med = lambda xs: sorted(xs)[len(xs) // 2]  # noqa: E731
    print(f"packing {len(parts)} per-video files, {len(r)} crops, {mb:.0f} MB ({comp}), CPU seconds per round: "
          f"raw chunk copy {', '.join(f'{x:.2f}' for x in raw)} vs decode + re-encode "
          f"{', '.join(f'{x:.2f}' for x in recompress)}: median {mb / med(raw):.0f} vs {mb / med(recompress):.0f} "
          f"MB per CPU-second ({med(recompress) / med(raw):.1f}x)")


def bench_landmark_parts(client, split: Path, root: Path, workers: list[str], rounds: int) -> None:
    """cache-landmarks on one split (a single shard): one task for the shard vs the default parts."""
    from distributed import get_task_stream

    from pipeline.runner import run_landmarks
    from pipeline.shards import ShardReader
    from pipeline.tasks import LandmarkConfig, preload_models

    client.run(preload_models, None, LandmarkConfig())
    n = sum(len(ShardReader(p)) for p in split.glob("shard-*.h5"))
    default = LandmarkConfig().part_rows
    print(f"landmarks on {split.name}: {len(list(split.glob('shard-*.h5')))} shard, {n} crops, 2 workers")
    for r in range(rounds):
        for mode, rows in (("one task per shard", 10 ** 9), (f"parts of {default} crops", default)):
            d = root / f"lm-{r}-{rows}"
            shutil.copytree(split, d)
            t_start = time.time()
            with get_task_stream(client=client) as ts:
                t = time.perf_counter()
                run_landmarks(d, LandmarkConfig(part_rows=rows), client=client)
                wall = time.perf_counter() - t
            per, _ = busy(ts.data, t_start)
            util = [per.get(w, 0.0) / wall for w in workers]
            print(f"  round {r} {mode:<22} wall {wall:6.2f} s, busy/wall per worker "
                  f"{' '.join(f'{x:4.0%}' for x in util)}")
            shutil.rmtree(d)


def busy(stream: list[dict], t_start: float) -> tuple[dict[str, float], list[tuple[str, float, float, str]]]:
    """Compute seconds per worker, and (worker, start, stop, key) intervals relative to ``t_start``."""
    per = defaultdict(float)
    spans = []
    for t in stream:
        for ss in t.get("startstops", ()):
            if ss["action"] == "compute":
                per[t["worker"]] += ss["stop"] - ss["start"]
                spans.append((t["worker"], ss["start"] - t_start, ss["stop"] - t_start, str(t["key"])))
    return dict(per), spans


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--frames", type=int, default=32, help="frames sampled per video")
    ap.add_argument("--rounds", type=int, default=2, help="alternating before/now rounds per scenario")
    ap.add_argument("--png", type=Path, default=Path("out/bench_balance.png"),
                    help="per-worker timeline of the last round")
    args = ap.parse_args()

    import os

    from distributed import Client, get_task_stream

    from pipeline.cluster import local_cluster
    from pipeline.crop import CROP_SIZE
    from pipeline.faces import DetectorConfig
    from pipeline.tasks import ExtractConfig, preload_models

    load0 = os.getloadavg()[0]
    root = Path(tempfile.mkdtemp(prefix="bench_balance_"))
    scenarios = make_videos(root)
    cfg = ExtractConfig(crop_size=CROP_SIZE, detector=DetectorConfig())
    rows, timelines, packed = [], {}, None
    with local_cluster(2, dashboard_address=None) as cluster, Client(cluster) as client:
        workers = sorted(client.scheduler_info()["workers"])
        client.run(preload_models, cfg.detector)
        for name, paths in scenarios.items():
            items = items_for(paths, args.frames)
            for r in range(args.rounds):
                for mode, fn in (("before", run_before), ("now", run_now)):
                    out = root / f"out-{name[0]}-{mode}-{r}"
                    t_start = time.time()
                    with get_task_stream(client=client) as ts:
                        wall = fn(client, items, out, ExtractConfig(**{**cfg.__dict__}))
                    per, spans = busy(ts.data, t_start)
                    util = [per.get(w, 0.0) / wall for w in workers]
                    rows.append((name, mode, r, wall, [per.get(w, 0.0) for w in workers], util))
                    timelines[(name, mode)] = (spans, wall)
                    if mode == "now" and name.startswith("b") and r == args.rounds - 1:
                        packed = out / "shard-00000.h5"
                        continue  # kept for the packing measurement
                    shutil.rmtree(out)
        if packed is not None:
            bench_landmark_parts(client, packed.parent, root, workers, args.rounds)
    print(f"{len(workers)} workers (1 thread each), {args.frames} frames per video, crops {cfg.crop_size}; "
          f"busy = task compute seconds from the task stream, wall = the whole call; load average "
          f"{load0:.1f} before, {os.getloadavg()[0]:.1f} after on {os.cpu_count()} cores")
    print(f"{'scenario':<22} {'mode':<7} {'round':>5} {'wall s':>7} {'busy s per worker':>20} "
          f"{'busy/wall per worker':>22} {'mean':>6}")
    for name, mode, r, wall, b, u in rows:
        print(f"{name:<22} {mode:<7} {r:>5} {wall:7.1f} {' '.join(f'{x:6.1f}' for x in b):>20} "
              f"{' '.join(f'{x:6.0%}' for x in u):>22} {sum(u) / len(u):6.0%}")
    for name in scenarios:
        w = {m: [row[3] for row in rows if row[0] == name and row[1] == m] for m in ("before", "now")}
        ratios = [b / n for b, n in zip(w["before"], w["now"])]
        print(f"{name}: wall before / now per round: {', '.join(f'{x:.2f}x' for x in ratios)}")
    bench_pack(packed, root)
    plot(timelines, workers, args.png)
    print(f"timeline: {args.png}")
    shutil.rmtree(root, ignore_errors=True)


def plot(timelines: dict, workers: list[str], png: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    keys = list(timelines)
    fig, axes = plt.subplots(len(keys), 1, figsize=(10, 1.3 * len(keys) + 1), sharex=True, squeeze=False)
    for ax, key in zip(axes[:, 0], keys):
        spans, wall = timelines[key]
        for lane, w in enumerate(workers):
            for worker, a, b, task in spans:
                if worker != w:
                    continue
                color = "tab:red" if "1080p" in task else "tab:grey" if "probe" in task else "tab:blue"
                ax.barh(lane, b - a, left=a, height=0.6, color=color, edgecolor="white", linewidth=0.5)
        ax.axvline(wall, color="black", lw=1, ls="--")
        ax.set_yticks(range(len(workers)), [f"worker {i}" for i in range(len(workers))])
        ax.set_title(f"{key[0]} - {key[1]} (wall {wall:.1f} s, dashed)", fontsize=9, loc="left")
    axes[-1, 0].set_xlabel("seconds since the call started (blue: small video or group, red: task with the "
                           "1080p clip, grey: probe)")
    fig.tight_layout()
    png.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(png, dpi=110)


if __name__ == "__main__":
    main()
