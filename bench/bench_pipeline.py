"""Preprocessing throughput: this pipeline against a per-frame PNG/JSON baseline, Dask scaling, memory, reads.

    PYTHONPATH=. python -m bench.bench_pipeline [--copies 3] [--frames 32] [--repeats 3] [--reads 400]
    PYTHONPATH=. python -m bench.bench_pipeline --workload hd --skip-dask   # section 1 (+ decode floor) on HD
    PYTHONPATH=. python -m bench.bench_pipeline detection  # detection resolution vs full resolution
    PYTHONPATH=. python -m bench.bench_pipeline landmarks  # only section 4

Workloads (``--workload``):
- ``sample``: the sample videos (data/sample/videos), each copied ``--copies`` times;
- ``hd``: clips re-encoded (H.264, CRF 23, yuv420p) at the geometries of FF++ (640x480, 1280x720) and DFDC
  (1920x1080) from the shipped clips and, where present, the HDTF talking heads in ../shared/data/videos/hdtf
  (read in place, never copied into the project): the clip is looped to 10-16 s, scaled to fit (aspect kept)
  and centred on black, so faces keep a natural size (a third to two thirds of the frame height).
  Built once with ffmpeg and cached in ``<workdir>/hd`` (use ``--workdir`` to keep them between runs).
``--frames`` evenly spaced frames per video, crops of 384, the shipped RetinaFace MobileNet-0.25 and dlib's
68-point model.

Measured in one run, each against its baseline:
1. faces/s per core, frames + landmarks stages, in one process (one core):
   - baseline (what common reference preprocessing scripts do, same detector and predictor): decode every
     frame sequentially with OpenCV, detect one selected frame at a time at full resolution, write one PNG +
     one JSON per face, then read each PNG back for dlib landmarks and write them to another JSON;
   - this pipeline: ``run_extract`` + ``run_landmarks`` with ``workers=0``, default settings.
   Models are built before timing in both. The two alternate for ``--repeats`` rounds and the median ratio
   is the figure (on a shared machine the speed drifts by 20 % within minutes). With ``--workload hd`` the
   decode floor follows: CPU-seconds of ffmpeg (one thread) decoding every frame to nothing, and decoding
   only the selected frames to RGB as the pipeline does, as fractions of the pipeline's CPU-seconds.
2. Dask scaling: the same two stages on a LocalCluster of 1 and of 2 single-threaded workers (cluster
   started and models loaded before timing), and the peak resident memory of each worker process. Run
   twice: on all cores (a single worker then also gets the idle core for its ffmpeg decoder process and for
   the scheduler), and pinned (CPU affinity of this process and all it starts) to as many cores as workers,
   which is the one-worker-per-core layout the pipeline uses. CPU-seconds of all processes are summed too.
3. Reading as a training DataLoader does (random access, crop + landmarks): samples/s from shards with each
   compression against one PNG + one JSON per face; bytes per face of each (bench/bench_codec.py compares
   the codecs and levels on HD crops).
4. Landmark step on its own: ms per crop and agreement with dlib's own 68 points on its 43 example faces
   (tests/data/dlib_examples, 1.25x crops of dlib's boxes at 256 and 384 px), for dlib's detector on the
   RGB crop as it is (the baseline), on the RGB crop shrunk to 192 px, and the pipeline's setting.
``detection``: on the HD workload, the sample clips and the carphone clip's ~60-px face centred in a
1920x1080 frame, every detection setting against detection at the full frame resolution: recall of the
kept face, IoU and box-edge error (the largest of the four edges' errors, % of the reference box's larger
side) as median / p95 / max, and detector CPU ms per frame.
The machine's load average is printed before and after, since other work on a shared machine slows
the figures down (and makes 2-worker scaling impossible to see when both cores are busy).
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import math
import os
import resource
import shutil
import subprocess
import tempfile
import time
from pathlib import Path

import numpy as np

from pipeline.crop import CROP_SIZE

REPO = Path(__file__).resolve().parents[1]
SAMPLE_VIDEOS = REPO / "data" / "sample" / "videos"
HDTF = REPO.parent / "shared" / "data" / "videos" / "hdtf"

# The HD workload: (name, source clip, width, height, share of the frame the clip fills, seconds). HDTF clips
# are 512x512 tight talking heads; the speaker clip is 640x360 with audience cut-aways (several small faces).
HD_SPECS = [("ffpp480_radio2", HDTF / "RD_Radio2_000.mp4", 640, 480, 0.75, 16),
            ("ffpp720_katiehill", HDTF / "WDA_KatieHill_000.mp4", 1280, 720, 0.65, 16),
            ("ffpp720_hamilton", SAMPLE_VIDEOS / "short_hamilton_clip.mp4", 1280, 720, 1.0, 10),
            ("dfdc1080_menendez", HDTF / "WDA_BobMenendez_000.mp4", 1920, 1080, 0.6, 16),
            ("dfdc1080_hamilton", SAMPLE_VIDEOS / "short_hamilton_clip.mp4", 1920, 1080, 1.0, 10)]
# A small face in a large frame (DFDC crowds): the carphone clip's ~60-px face at its own size in 1080p.
SMALL_FACE_SPEC = ("small1080_carphone", SAMPLE_VIDEOS / "carphone_pristine.mp4", 1920, 1080, 144 / 1080, 10)


def make_clip(src: Path, dst: Path, width: int, height: int, fill: float, seconds: float) -> Path:
    """Re-encode ``src`` as ``width`` x ``height`` H.264 of ``seconds`` (looped): the clip scaled to fit
    ``fill`` of the frame (aspect kept) and centred on black (a blurred copy of the clip as background
    would hold a second, huge face). Cached: built once per ``dst``."""
    import ffmpeg

    from pipeline.files import atomic_path
    from pipeline.video import ffmpeg_exe, probe

    if dst.is_file():
        return dst
    dst.parent.mkdir(parents=True, exist_ok=True)
    loops = max(0, math.ceil(seconds / max(probe(src).duration, 0.1)) - 1)
    with atomic_path(dst) as tmp:  # a cut-off encode never passes for a cached clip
        # Square pixels, as real datasets' 640x480 / 1280x720 / 1920x1080 videos have: a source with non-square
        # pixels (the carphone clip, 128:117) is first brought to its display aspect.
        (ffmpeg.input(str(src), stream_loop=loops).video
         .filter("scale", "trunc(iw*sar/2)*2", "ih").filter("setsar", 1)
         .filter("scale", int(width * fill), int(height * fill), force_original_aspect_ratio="decrease",
                 force_divisible_by=2)
         .filter("pad", width, height, "(ow-iw)/2", "(oh-ih)/2").filter("setsar", 1)
         .output(str(tmp), format="mp4", vcodec="libx264", crf=23, preset="veryfast", pix_fmt="yuv420p",
                 t=seconds, an=None, loglevel="error")
         .overwrite_output().run(cmd=ffmpeg_exe()))
    return dst


def hd_videos(work: Path, specs=None) -> list[Path]:
    """The HD workload's clips in ``work/hd`` (built on first use). Without the HDTF clips, the speaker clip
    stands in at their geometries."""
    out = []
    for name, src, w, h, fill, secs in specs or HD_SPECS:
        if not src.is_file():
            name, src, fill = name.rsplit("_", 1)[0] + "_hamilton", SAMPLE_VIDEOS / "short_hamilton_clip.mp4", 1.0
        out.append(make_clip(src, work / "hd" / f"{name}_sq.mp4", w, h, fill, secs))  # _sq: square-pixel clips
    return sorted(set(out), key=out.index)


def get_args_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description="pipeline faces/s vs PNG baseline, Dask scaling, memory, read speed")
    p.add_argument("mode", nargs="?", default="all", choices=("all", "detection", "landmarks"),
                   help="all sections, the detection-resolution check, or only the landmark-step check")
    p.add_argument("--workload", default="sample", choices=("sample", "hd"),
                   help="sample clips (copied --copies times) or the HD workload (re-encoded, cached in workdir)")
    p.add_argument("--copies", type=int, default=3, help="copies of each sample video (more work per run)")
    p.add_argument("--frames", type=int, default=32, help="frames sampled per video")
    p.add_argument("--crop-size", type=int, default=CROP_SIZE)
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

    from pipeline.crop import CROP_SCALE, crop_face
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
            crop, cb = crop_face(rgb, det.boxes[0], CROP_SCALE, crop_size)
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
    # shard_bytes=1: one shard per video, the layout this benchmark's earlier figures were measured with
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

    from pipeline.shard_codec import COMPRESSIONS, DEFAULT_COMPRESSION
    from pipeline.shard_writer import write_shard
    from pipeline.shards import ShardReader, shard_paths

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
    for comp in dict.fromkeys((DEFAULT_COMPRESSION,) + COMPRESSIONS):
        path = work / f"read_{comp.replace(':', '_')}.h5"
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
        lines.append(f"read  shard {comp:<12}: {rate:8.1f} samples/s, {size / 1024:7.1f} KiB/face, "
                     f"{rate / png_rate:5.2f}x PNG+JSON; write {write_rate:7.1f} faces/s")
    return lines


def decode_floor(items, ours_cpu: float) -> list[str]:
    """CPU-seconds of ffmpeg alone (one thread): every frame decoded to nothing, and the selected frames
    decoded to RGB as ``iter_frames`` does, against the pipeline's CPU-seconds for the same videos."""
    from pipeline.video import ffmpeg_exe, iter_frames, probe, sample_indices

    def child_cpu() -> float:
        r = resource.getrusage(resource.RUSAGE_CHILDREN)
        return r.ru_utime + r.ru_stime

    c0 = child_cpu()
    for it in items:
        subprocess.run([ffmpeg_exe(), "-hide_banner", "-nostdin", "-loglevel", "error", "-threads", "1", "-i",
                        it.path, "-map", "0:v:0", "-f", "null", "-"], check=True)
    every = child_cpu() - c0
    infos = [probe(it.path) for it in items]
    c0, p0 = child_cpu(), _cpu_seconds() - child_cpu()
    for it, info in zip(items, infos):
        for _ in iter_frames(it.path, sample_indices(info.n_frames, it.n_frames), info, threads=1):
            pass
    sel = child_cpu() - c0
    sel_py = _cpu_seconds() - child_cpu() - p0
    n = sum(i.n_frames for i in infos)
    return [f"decode floor, ffmpeg 1 thread: every frame ({n}) to null {every:6.2f} CPU-s = "
            f"{every / ours_cpu:5.1%} of the pipeline's {ours_cpu:.2f} CPU-s (median round); only the selected "
            f"frames to RGB as the pipeline does {sel:6.2f} CPU-s ffmpeg + {sel_py:.2f} CPU-s reading the pipe = "
            f"{(sel + sel_py) / ours_cpu:5.1%}"]


def _iou(a: np.ndarray, b: np.ndarray) -> float:
    w = max(0.0, min(a[2], b[2]) - max(a[0], b[0]))
    h = max(0.0, min(a[3], b[3]) - max(a[1], b[1]))
    inter = w * h
    return inter / ((a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter)


def detection_check(work: Path, n_frames: int) -> list[str]:
    """Each detection setting against one full-resolution pass: recall of the kept face, IoU and box-edge
    error (% of the reference box's larger side) as median / p95 / max, and detector CPU ms per frame."""
    from pipeline.faces import DetectorConfig, FaceDetector
    from pipeline.video import sample_frames

    hd = hd_videos(work) + hd_videos(work, [SMALL_FACE_SPEC])
    clips = [("HD", p) for p in hd] + [("sample", p) for p in sorted(SAMPLE_VIDEOS.glob("*.mp4"))]
    frames = {p: list(sample_frames(p, n_frames)[1]) for _, p in clips}
    default = DetectorConfig()
    settings = [("full resolution (reference)", dict(max_side=None, face_px=None)),
                (f"default: face_px {default.face_px}, levels {default.min_side}..{default.max_side}", {}),
                *[(f"face_px {v}", dict(face_px=v)) for v in (32, 48, 64, 96) if v != default.face_px],
                ("one pass at max_side 1280 (previous default)", dict(face_px=None)),
                ("one pass at max_side 640", dict(max_side=640, face_px=None))]
    results = {}
    for label, kw in settings:
        det = FaceDetector(dataclasses.replace(default, **kw))
        det.detect([frames[clips[0][1]][0]])  # warm-up (session, priors)
        per = {}
        for _, p in clips:
            t0 = time.process_time()
            dets = det.detect(frames[p])
            per[p] = (dets, (time.process_time() - t0) / len(frames[p]) * 1000)
        results[label] = per
    # Every face of the full-resolution pass (its first is the face that pass keeps with max_faces 1).
    every = FaceDetector(dataclasses.replace(default, max_side=None, face_px=None, max_faces=100))
    ref = {p: every.detect(frames[p]) for _, p in clips}
    lines = [f"detection resolution vs one pass at full frame resolution, {n_frames} frames per clip, the kept face "
             f"(max_faces 1). found: the kept face is one of the reference's faces (IoU >= 0.5); same: it is the "
             f"face the reference keeps; missed: no face kept where the reference has one; extra: a face kept that "
             f"the reference does not have. Box agreement with the matching reference face: IoU, and edge error = "
             f"largest of the 4 box edges' errors, % of the reference box's larger side (median / p95 / max)"]
    for group in ("HD", "sample"):
        paths = [p for g, p in clips if g == group]
        lines.append(f"  {group} clips: " + ", ".join(p.stem for p in paths) +
                     f" ({sum(1 for p in paths for r in ref[p] if len(r))} frames with a reference face)")
        for label, _ in settings:
            ious, errs, found, same, missed, extra, n_ref, ms = [], [], 0, 0, 0, 0, 0, []
            for p in paths:
                dets, t = results[label][p]
                ms.append(t)
                for d, r in zip(dets, ref[p]):
                    n_ref += len(r) > 0
                    if len(d) == 0:
                        missed += len(r) > 0
                        continue
                    overlaps = [_iou(d.boxes[0], rb) for rb in r.boxes]
                    k = int(np.argmax(overlaps)) if overlaps else -1
                    if k < 0 or overlaps[k] < 0.5:
                        extra += 1
                        continue
                    found += 1
                    same += k == 0
                    rb = r.boxes[k]
                    ious.append(overlaps[k])
                    errs.append(float(np.abs(d.boxes[0] - rb).max() / max(rb[2] - rb[0], rb[3] - rb[1]) * 100))
            def q(v, f):
                return f"{f(v):.3f}" if v else "-"
            lines.append(f"    {label:<46}: found {found}/{n_ref} (same {same}), missed {missed}, extra {extra}; IoU "
                         f"median {q(ious, np.median)} min {q(ious, np.min)}; edge error median "
                         f"{q(errs, np.median)} % p95 {q(errs, lambda v: np.percentile(v, 95))} % max "
                         f"{q(errs, np.max)} %; detector {np.mean(ms):6.1f} CPU-ms/frame (per clip: "
                         + ", ".join(f"{t:.1f}" for t in ms) + ")")
    return lines


def landmark_check() -> list[str]:
    """ms per crop and distance to dlib's own points on its example faces, per landmark-detection setting."""
    from pipeline.crop import CROP_SCALE, CROP_SIZE, crop_face, crop_to_frame
    from pipeline.landmarks import LandmarkPredictor
    from tests.face_fixtures import FULL_SETS, example_faces

    faces = list(example_faces(FULL_SETS))
    crops = [(crop_face(img, box, CROP_SCALE, size), ref) for img, box, ref in faces for size in (256, CROP_SIZE)]
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
    from pipeline.faces import DetectorConfig, FaceDetector
    from pipeline.tasks import ExtractConfig, LandmarkConfig, preload_models
    from pipeline.video import probe

    os.environ.setdefault("OMP_NUM_THREADS", "1")
    import cv2

    cv2.setNumThreads(1)
    work = Path(args.workdir or tempfile.mkdtemp(prefix="bench_pipeline_"))
    work.mkdir(parents=True, exist_ok=True)
    if args.mode == "detection":
        print("\n".join(detection_check(work, args.frames)), flush=True)
        if args.workdir is None:
            shutil.rmtree(work)
        return
    vids = []
    if args.workload == "hd":
        vids = hd_videos(work)
    else:
        for src in sorted(SAMPLE_VIDEOS.glob("*.mp4")):
            for k in range(args.copies):
                dst = work / "videos" / f"{src.stem}_{k}.mp4"
                dst.parent.mkdir(exist_ok=True)
                shutil.copy(src, dst)
                vids.append(dst)
    items = _items(vids, args.frames)
    det_cfg = DetectorConfig()
    cfg = ExtractConfig(crop_size=args.crop_size, detector=det_cfg, source_root=str(vids[0].parent))
    lm_cfg = LandmarkConfig()
    load0 = os.getloadavg()
    geoms = sorted({f"{i.width}x{i.height}" for i in map(probe, vids)}, key=lambda g: int(g.split("x")[0]))
    print(f"workload {args.workload}: {len(items)} videos ({', '.join(geoms)}) x {args.frames} frames, crop "
          f"{args.crop_size}; loadavg before {load0[0]:.2f} {load0[1]:.2f} {load0[2]:.2f} on {os.cpu_count()} "
          f"cores", flush=True)

    preload_models(det_cfg, lm_cfg)
    # The baseline detects every selected frame at its full resolution, one pass (no downscale, no levels).
    detector = FaceDetector(dataclasses.replace(det_cfg, max_side=None, face_px=None))
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
        lines += [f"round {r + 1}: 1 process baseline (OpenCV all frames, full-res detect, PNG+JSON): {nb} faces, "
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
    if args.workload == "hd":
        lines += decode_floor(items, float(np.median([co for *_, co in rounds])))
    if not args.skip_dask:
        from distributed import Client

        from pipeline.cluster import local_cluster

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
