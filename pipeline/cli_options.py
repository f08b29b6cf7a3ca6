"""The options of ``python -m pipeline``'s commands (Typer declarations shared by the commands in
``pipeline.cli``): the choices, the options every stage takes, and extract-frames' own."""
from __future__ import annotations

import enum
from pathlib import Path

import typer

from pipeline.faces import DetectorConfig
from pipeline.shard_codec import COMPRESSIONS, DEFAULT_COMPRESSION


class Label(str, enum.Enum):
    real = "real"
    fake = "fake"


class Backend(str, enum.Enum):
    mobilenet = "mobilenet0.25"
    resnet50 = "resnet50"


class OnError(str, enum.Enum):
    skip = "skip"
    raise_ = "raise"


_DATASET = typer.Option(None, "--dataset", "-d", help="Dataset name from the manifest (e.g. ffpp, cdf2, sample).")
_SPLIT = typer.Option("train", "--split", "-s", help="Split: train, val or test.")
_MANIFEST = typer.Option(Path("data_manifest.yaml"), "--manifest", help="Dataset manifest (YAML).")
_WORKERS = typer.Option(None, "--dask-workers", "-w", min=0,
                        help="Dask worker processes on this machine (default: one per core; 0 = run in this "
                             "process without Dask).")
# Old spellings, kept for one release: each prints one deprecation line (see _renamed).
_OLD_WORKERS = typer.Option(None, "--workers", min=0, hidden=True, help="Deprecated: --dask-workers.")
_OLD_OUT = typer.Option(None, "--out", "-o", hidden=True, help="Deprecated: --shards-root.")
_SCHEDULER = typer.Option(None, "--scheduler",
                          help="Address of an existing Dask scheduler (tcp://host:port); overrides --dask-workers.")
_SCHEDULER_FILE = typer.Option(None, "--scheduler-file",
                               help="Scheduler file written by `dask scheduler --scheduler-file FILE` (dask-mpi, "
                                    "SLURM); overrides --dask-workers. Without --scheduler/--scheduler-file, "
                                    "DASK_SCHEDULER_ADDRESS is used unless --dask-workers is given.")
_ON_ERROR = typer.Option(OnError.skip, "--on-error",
                         help="skip: log a failed video in failures.jsonl and go on; raise: stop at the "
                              "first one.")


def _shards_root(help_text: str):
    return typer.Option(Path("shards"), "--shards-root", help=help_text)


# Options of extract-frames.
_INPUT = typer.Option(
    None, "--input", "-i",
    help="Ad-hoc mode instead of --dataset: a glob of videos (quote it: 'videos/*.mp4'), a file, or a folder "
         "(its videos, recursively). Repeat it to put several inputs into one split.")
_LABEL = typer.Option(
    None, "--label", help="Ad-hoc mode: the label of the --input videos; one for all inputs, or one per "
                          "--input in the same order.")
_LABEL_FROM_FOLDER = typer.Option(
    False, "--label-from-folder",
    help="Ad-hoc mode: read each video's label from the folder names below its --input (and a folder "
         "input's own name): real/, fake/, FF++'s original_sequences/ and manipulated_sequences/, "
         "Celeb-DF's Celeb-real/ and Celeb-synthesis/ (docs/pipeline.md lists the words).")
_FRAMES = typer.Option(None, "--frames", "-n", min=1,
                       help="Frames per video (default: the manifest's value for the split; "
                            "32 in ad-hoc mode).")
_CROP_SIZE = typer.Option(None, "--crop-size", min=16,
                          help="Side of the saved square crops in pixels (default: manifest, "
                               "384).")
_CROP_SCALE = typer.Option(None, "--crop-scale", min=1.0,
                           help="Crop side / larger detector-box side (default: manifest, "
                                "1.25).")
_DETECTOR = typer.Option(Backend.mobilenet, "--detector",
                         help="RetinaFace backend: mobilenet0.25 (weights shipped) or resnet50 "
                              "(the paper's; weights downloaded when online or --detector-weights).")
_DETECTOR_WEIGHTS = typer.Option(None, "--detector-weights",
                                 help="Detector weights file (.onnx for mobilenet0.25; "
                                      ".pth or the published .zip for resnet50).")
_SCORE_THRESHOLD = typer.Option(0.5, "--score-threshold", min=0.0, max=1.0,
                                help="Minimum detector confidence of a face.")
_MAX_FACES = typer.Option(1, "--max-faces", min=1, help="Faces kept per frame (each is one crop).")
_KEEP = typer.Option("score", "--keep", help="Which faces to keep first: score or area.")
_MAX_SIDE = typer.Option(1280, "--max-side", min=0,
                         help="Finest detection level: frames with a longer side are downscaled to it "
                              "(0 = never).")
_FACE_PX = typer.Option(DetectorConfig.face_px, "--face-px", min=0,
                        help="Detection resolution follows the faces: the coarsest level (halving from "
                             "--max-side, not below --min-side) where the kept faces are at least this "
                             "many pixels (0 = one pass at --max-side).")
_MIN_SIDE = typer.Option(DetectorConfig.min_side, "--min-side", min=16,
                         help="Longer side of the coarsest detection level (with --face-px).")
_BATCH_SIZE = typer.Option(None, "--batch-size", min=1,
                           help="Frames per detector call (default: 1 on CPU, where it is "
                                "fastest per core; 16 on a GPU).")
_DEVICE = typer.Option("cpu", "--device", help="Device of the resnet50 backend: auto (CUDA when available), cpu, "
                                                "cuda or cuda:N.")
_DECODE_THREADS = typer.Option(1, "--decode-threads", min=0,
                               help="ffmpeg decoder threads per video (1 suits one worker per core; more "
                                    "when workers are fewer than cores, e.g. with a GPU detector; 0 = "
                                    "ffmpeg's choice).")
_SHARD_SIZE = typer.Option(
    None, "--shard-size", help="Upper bound of a shard's size (e.g. 1GB, 512MB, 2GiB; default: the manifest's "
                               "shard_size, 1GiB); finished videos are packed into shards up to it (one Dask "
                               "task per video either way).")
_COMPRESSION = typer.Option(DEFAULT_COMPRESSION, "--compression",
                            help=f"HDF5 compression of the crops: {', '.join(COMPRESSIONS)}, with "
                                 f"':LEVEL' (0-9) for gzip and blosc-*, e.g. blosc-zstd:3.")
_LIMIT = typer.Option(None, "--limit", min=1, help="Only the first N videos (quick tries).")
_OVERWRITE = typer.Option(False, "--overwrite",
                          help="Remove the split folder's shards, staged videos, index and failures log first "
                               "and redo it (needed when settings or videos differ from those of its "
                               "shards).")
