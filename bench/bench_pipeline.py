"""Preprocessing throughput: this pipeline against a per-frame PNG/JSON baseline, Dask scaling, memory, reads.

    PYTHONPATH=. python -m bench.bench_pipeline [--copies 3] [--frames 32] [--repeats 3] [--reads 400]
    PYTHONPATH=. python -m bench.bench_pipeline landmarks      # only section 4

Workload: the sample videos (data/sample/videos), each copied ``--copies`` times, ``--frames`` evenly spaced
frames per video, crops of 384, the shipped RetinaFace MobileNet-0.25 and dlib's 68-point model.

Measured in one run, each against its baseline:
1. faces/s per core, frames + landmarks stages, in one process (one core):
   - baseline (what common reference preprocessing scripts do, same detector and predictor): decode every
     frame sequentially with OpenCV, detect one selected frame at a time, write one PNG + one JSON per face,
     then read each PNG back for dlib landmarks and write them to another JSON;
   - this pipeline: ``run_extract`` + ``run_landmarks`` with ``workers=0``.
   Models are built before timing in both. The two alternate for ``--repeats`` rounds and the median ratio
   is the figure (on a shared machine the speed drifts by 20 % within minutes).
2. Dask scaling: the same two stages on a LocalCluster of 1 and of 2 single-threaded workers (cluster
   started and models loaded before timing), and the peak resident memory of each worker process. Run
   twice: on all cores (a single worker then also gets the idle core for its ffmpeg decoder process and for
   the scheduler), and pinned (CPU affinity of this process and all it starts) to as many cores as workers,
   which is the one-worker-per-core layout the pipeline uses. CPU-seconds of all processes are summed too.
3. Reading as a training DataLoader does (random access, crop + landmarks): samples/s from shards with each
   compression against one PNG + one JSON per face; bytes per face of each.
4. Landmark step on its own: ms per crop and agreement with dlib's own 68 points on its 43 example faces
   (tests/data/dlib_examples, 1.25x crops of dlib's boxes at 256 and 384 px), for dlib's detector on the
   RGB crop as it is (the baseline), on the RGB crop shrunk to 192 px, and the pipeline's setting.
The machine's load average is printed before and after, since other work on a shared machine slows
the figures down (and makes 2-worker scaling impossible to see when both cores are busy).
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import os
import resource
import shutil
import tempfile
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]


def get_args_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description="pipeline faces/s vs PNG baseline, Dask scaling, memory, read speed")
    p.add_argument("mode", nargs="?", default="all", choices=("all", "landmarks"),
                   help="all sections, or only the landmark-step check")
    p.add_argument("--copies", type=int, default=3, help="copies of each sample video (more work per run)")
    p.add_argument("--frames", type=int, default=32, help="frames sampled per video")
    p.add_argument("--crop-size", type=int, default=384)
    p.add_argument("--reads", type=int, default=400, help="random reads per storage format")
    p.add_argument("--repeats", type=int, default=3, help="alternating baseline/pipeline rounds (median ratio)")
    p.add_argument("--skip-dask", action="store_true", help="only the single-process and read figures")
    p.add_argument("--workdir", type=Path, default=None, help="scratch folder (default: a temp dir)")
    return p


def _items(videos: list[Path], frames: int):
    from pipeline.manifest import VideoItem

    return [VideoItem(id=p.stem, path=str(p), rel_path=p.name, label=0, split="test", dataset="bench",
                      n_frames=frames) for p in videos]


def baseline(items, out: Path, detector, predictor, crop_size: int) -> tuple[int, float]:
    """Per-frame reference-style preprocessing; returns (faces written, seconds)."""
    import cv2

    from pipeline.faces import crop_face
    from pipeline.video import sample_indices

    out.mkdir(parents=True)
    t0 = time.perf_counter()
    n_faces = 0
    for it in items:
        cap = cv2.VideoCapture(it.path)
        frames = []
        while True:  # decode every frame, in order
            ok, f = cap.read()
            if not ok:
                break
            frames.append(f)
        cap.release()
        wanted = set(sample_indices(len(frames), it.n_frames).tolist())
        for i, bgr in enumerate(frames):
            if i not in wanted:
                continue
            rgb = cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB)
            det = detector.detect([rgb])[0]  # one frame at a time
            if len(det) == 0:
                continue
            crop, cb = crop_face(rgb, det.boxes[0], 1.25, crop_size)
            stem = out / f"{it.id}_{i:05d}"
            cv2.imwrite(str(stem.with_suffix(".png")), cv2.cvtColor(crop, cv2.COLOR_RGB2BGR))
            stem.with_suffix(".json").write_text(json.dumps(
                {"video": it.id, "frame": i, "box": det.boxes[0].tolist(), "score": float(det.scores[0]),
                 "kps5": det.kps5[0].tolist(), "crop_box": cb.tolist()}))
            n_faces += 1
    for png in sorted(out.glob("*.png")):  # landmark pass over the written crops
        crop = cv2.cvtColor(cv2.imread(str(png)), cv2.COLOR_BGR2RGB)
        res = predictor.predict(crop)
        png.with_suffix(".lm.json").write_text(json.dumps(
            {"landmarks": None if not res.ok else res.points.tolist(), "ok": res.ok}))
    return n_faces, time.perf_counter() - t0


def ours(items, out: Path, cfg, lm_cfg, workers: int, client=None) -> tuple[int, float]:
    from pipeline.runner import run_extract, run_landmarks

    t0 = time.perf_counter()
    # shard_bytes=1: one shard per video, so the landmark stage (one task per shard) spreads like before
    s = run_extract(items, out, "bench", "test", cfg, shard_bytes=1, workers=workers, client=client)
    run_landmarks(out, lm_cfg, workers=workers, client=client)
    return s.n_faces, time.perf_counter() - t0


def _cpu_seconds() -> float:
    """CPU time of this process and its finished children (the ffmpeg decoders) so far."""
    me, kids = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    return me.ru_utime + me.ru_stime + kids.ru_utime + kids.ru_stime


def timed(fn, *a, **kw) -> tuple[int, float, float]:
    """Run ``fn`` -> (faces, wall seconds, CPU seconds incl. children)."""
    c0 = _cpu_seconds()
    faces, wall = fn(*a, **kw)
    return faces, wall, _cpu_seconds() - c0


def _maxrss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0  # Linux reports KiB


def read_bench(shard_dir: Path, png_dir: Path, n_reads: int, work: Path) -> list[str]:
    """Random-access samples/s: shards (each compression) vs PNG + JSON files."""
    import cv2

    from pipeline.shards import COMPRESSIONS, ShardReader, shard_paths, write_shard

    faces, lms = [], []
    for p in shard_paths(shard_dir):
        with ShardReader(p) as r:
            for i in range(len(r)):
                faces.append(r.face(i))
                lms.append(r.landmarks(i))
    faces, lms = np.stack(faces), np.stack(lms)
    n = len(faces)
    rng = np.random.default_rng(0)
    order = rng.integers(0, n, n_reads)
    lines = []
    pngs = sorted(png_dir.glob("*.png"))
    png_bytes = sum(p.stat().st_size + p.with_suffix(".json").stat().st_size +
                    p.with_suffix(".lm.json").stat().st_size for p in pngs) / len(pngs)
    porder = rng.integers(0, len(pngs), n_reads)
    t0 = time.perf_counter()
    for k in porder:
        img = cv2.cvtColor(cv2.imread(str(pngs[k])), cv2.COLOR_BGR2RGB)
        lm = json.loads(pngs[k].with_suffix(".lm.json").read_text())["landmarks"]
        _ = (img, np.asarray(lm if lm is not None else np.full((68, 2), np.nan), np.float32))
    png_rate = n_reads / (time.perf_counter() - t0)
    lines.append(f"read  PNG+JSON per face : {png_rate:8.1f} samples/s, {png_bytes / 1024:7.1f} KiB/face")
    for comp in COMPRESSIONS:
        path = work / f"read_{comp}.h5"
        t0 = time.perf_counter()
        write_shard(path, faces, landmarks=lms, compression=comp)
        write_rate = n / (time.perf_counter() - t0)
        r = ShardReader(path)
        r.face(0)
        t0 = time.perf_counter()
        for k in order:
            _ = (r.face(int(k)), r.landmarks(int(k)))
        rate = n_reads / (time.perf_counter() - t0)
        r.close()
        size = path.stat().st_size / n
        lines.append(f"read  shard {comp:<11}: {rate:8.1f} samples/s, {size / 1024:7.1f} KiB/face, "
                     f"{rate / png_rate:5.2f}x PNG+JSON; write {write_rate:7.1f} faces/s")
    return lines


def landmark_check() -> list[str]:
    """ms per crop and distance to dlib's own points on its example faces, per landmark-detection setting."""
    from pipeline.faces import crop_face, crop_to_frame
    from pipeline.landmarks import LandmarkPredictor
    from tests.face_fixtures import FULL_SETS, example_faces

    faces = list(example_faces(FULL_SETS))
    crops = [(crop_face(img, box, 1.25, size), ref) for img, box, ref in faces for size in (256, 384)]
    lines = [f"landmarks on dlib's {len(faces)} example faces x 2 crop sizes (1.25x crops of dlib's boxes), "
             f"distance to dlib's own points in image pixels:"]
    settings = [("baseline: dlib detector on the RGB crop as is", dict(detect_size=None, gray=False)),
                ("RGB crop shrunk to 192 px", dict(detect_size=192, gray=False)),
                ("pipeline: luma shrunk to 144 px (default)", dict())]
    for label, kw in settings:
        pred = LandmarkPredictor(**kw)
        errs = []
        t0 = time.perf_counter()
        for (crop, cb), ref in crops:
            r = pred.predict(crop)
            if r.ok:
                errs.append(float(np.abs(crop_to_frame(r.points, cb, crop.shape[0]) - ref).mean()))
        ms = (time.perf_counter() - t0) / len(crops) * 1000
        lines.append(f"  {label:<47}: {ms:5.2f} ms/crop, found {len(errs)}/{len(crops)}, mean {np.mean(errs):.2f} px, "
                     f"worst face {np.max(errs):.2f} px")
    return lines


def main(args) -> None:
    if args.mode == "landmarks":
        print("\n".join(landmark_check()), flush=True)
        return
    from pipeline.faces import DetectorConfig
    from pipeline.runner import ExtractConfig, LandmarkConfig, _detector, preload_models

    os.environ.setdefault("OMP_NUM_THREADS", "1")
    import cv2

    cv2.setNumThreads(1)
    work = Path(args.workdir or tempfile.mkdtemp(prefix="bench_pipeline_"))
    work.mkdir(parents=True, exist_ok=True)
    vids = []
    for src in sorted((REPO / "data" / "sample" / "videos").glob("*.mp4")):
        for k in range(args.copies):
            dst = work / "videos" / f"{src.stem}_{k}.mp4"
            dst.parent.mkdir(exist_ok=True)
            shutil.copy(src, dst)
            vids.append(dst)
    items = _items(vids, args.frames)
    det_cfg = DetectorConfig()
    cfg = ExtractConfig(crop_size=args.crop_size, detector=det_cfg, source_root=str(work / "videos"))
    lm_cfg = LandmarkConfig()
    load0 = os.getloadavg()
    print(f"workload: {len(items)} videos x {args.frames} frames, crop {args.crop_size}; "
          f"loadavg before {load0[0]:.2f} {load0[1]:.2f} {load0[2]:.2f} on {os.cpu_count()} cores", flush=True)

    preload_models(det_cfg, lm_cfg)
    detector = _detector(json.dumps(dataclasses.asdict(det_cfg), sort_keys=True))
    # The baseline runs dlib's face detector on the RGB crop as it is, as reference scripts do; the pipeline's
    # predictor detects on the crop's luma shrunk to 144 px (LandmarkPredictor.detect_size / gray).
    from pipeline.landmarks import LandmarkPredictor

    base_predictor = LandmarkPredictor(lm_cfg.model_path, lm_cfg.upsample, detect_size=None, gray=False)
    # Baseline and pipeline alternate for --repeats rounds, so that a machine whose speed drifts (a shared
    # VM) slows both alike; the ratio of each round is printed and the median is the figure.
    rounds = []
    for r in range(args.repeats):
        nb, tb, cb = timed(baseline, items, work / f"baseline{r}", detector, base_predictor, args.crop_size)
        no, to, co = timed(ours, items, work / f"ours{r}", cfg, lm_cfg, workers=0)
        rounds.append((nb, tb, cb, no, to, co))
    lines = []
    for r, (nb, tb, cb, no, to, co) in enumerate(rounds):
        lines += [f"round {r + 1}: 1 process baseline (OpenCV all frames, 1-frame detect, PNG+JSON): {nb} faces, "
                  f"wall {tb:6.2f} s = {nb / tb:6.2f} faces/s, CPU {cb:6.2f} s = {nb / cb:6.2f} faces per CPU-second",
                  f"round {r + 1}: 1 process pipeline (ffmpeg select, batched detect, HDF5 shards) : {no} faces, "
                  f"wall {to:6.2f} s = {no / to:6.2f} faces/s, CPU {co:6.2f} s = {no / co:6.2f} faces per CPU-second",
                  f"round {r + 1}: per core: pipeline / baseline = {(no / co) / (nb / cb):.2f}x (CPU time), "
                  f"{(no / to) / (nb / tb):.2f}x (wall)"]
    cpu_ratio = float(np.median([(no / co) / (nb / cb) for nb, tb, cb, no, to, co in rounds]))
    wall_ratio = float(np.median([(no / to) / (nb / tb) for nb, tb, cb, no, to, co in rounds]))
    lines += [f"per core over {len(rounds)} rounds (median): pipeline / baseline = {cpu_ratio:.2f}x (CPU time), "
              f"{wall_ratio:.2f}x (wall)",
              f"peak RSS of the single process (baseline + pipeline, models loaded): {_maxrss_mb():.0f} MB"]
    if not args.skip_dask:
        from distributed import Client

        from pipeline.runner import local_cluster

        cores = sorted(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else []
        for pinned in (False, True):
            if pinned and len(cores) < 2:
                lines.append("dask pinned run skipped: fewer than 2 cores, or no CPU affinity on this OS")
                continue
            scalings = []
            for r in range(args.repeats):
                rates = {}
                for n in (1, 2):
                    if pinned:  # this process and every process it starts (scheduler, nanny, worker, ffmpeg)
                        os.sched_setaffinity(0, cores[:n])
                    try:
                        with local_cluster(n, dashboard_address=None) as cluster, Client(cluster) as client:
                            client.run(preload_models, det_cfg, lm_cfg)
                            w0, c0 = client.run(_cpu_seconds), _cpu_seconds()
                            faces, secs = ours(items, work / f"dask{n}{'p' if pinned else ''}{r}", cfg, lm_cfg,
                                               workers=n, client=client)
                            w1, c1 = client.run(_cpu_seconds), _cpu_seconds()
                            rss = client.run(_maxrss_mb)
                    finally:
                        if pinned:
                            os.sched_setaffinity(0, cores)
                    rates[n] = faces / secs
                    cpu = sum(w1[k] - w0[k] for k in w0) + (c1 - c0)
                    lines.append(f"round {r + 1}: dask {n} worker(s){f' pinned to {n} core(s)' if pinned else ''}: "
                                 f"{faces} faces in {secs:6.2f} s = {rates[n]:6.2f} faces/s, {faces / cpu:6.2f} faces "
                                 f"per CPU-second (workers, their ffmpeg, scheduler and client); peak RSS per worker "
                                 f"{', '.join(f'{v:.0f}' for v in rss.values())} MB")
                scalings.append(rates[2] / rates[1])
            lines.append(f"dask scaling 1 -> 2 workers{', one core per worker' if pinned else ' on all cores'}: "
                         f"{', '.join(f'{x:.2f}x' for x in scalings)} (median {float(np.median(scalings)):.2f}x)")
    lines += read_bench(work / "ours0", work / "baseline0", args.reads, work)
    lines += landmark_check()
    load1 = os.getloadavg()
    lines.append(f"loadavg after {load1[0]:.2f} {load1[1]:.2f} {load1[2]:.2f} on {os.cpu_count()} cores")
    print("\n".join(lines), flush=True)
    if args.workdir is None:
        shutil.rmtree(work)


if __name__ == "__main__":
    main(get_args_parser().parse_args())
