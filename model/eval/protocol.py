"""The evaluation protocol: which test sets, how they were prepared, and the protocol line printed
and stored next to every number (paper Table 1)."""
from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np


class EvaluationError(ValueError):
    """A test set or option that cannot be evaluated; evaluate.py prints it as one line."""


# Human-readable dataset variants for the protocol; a name not listed is reported as given.
DATASET_VARIANTS = {
    "ffpp": "FaceForensics++",
    "ff++": "FaceForensics++",
    "cdf2": "Celeb-DF v2",
    "celebdf": "Celeb-DF v2",
    "dfd": "DeepFakeDetection (Google/Jigsaw)",
    "dfdc": "DFDC full test set (5,000 videos)",
    "dfdcp": "DFDC-Preview (the reference implementation's 'DFDC')",
    "dfdc_preview": "DFDC-Preview (the reference implementation's 'DFDC')",
    "dfw": "WildDeepfake",
    "wilddeepfake": "WildDeepfake",
    "sample": "embedded sample clips (demo)",
}


_COMPRESSION_RE = re.compile(r"(?:^|[/_\-])(c0|c23|c40|raw)(?:$|[/_\-])")


@dataclass
class TestSet:
    """One row group of the report: a named split folder with its protocol."""

    name: str
    split_dir: Path
    dataset: str
    split: str
    protocol: dict = field(default_factory=dict)


def resolve_test_sets(args) -> list[TestSet]:
    """``--dataset`` names under ``--shards-root`` plus ``--shards`` folders; each must hold an index.json."""
    from pipeline.shards import ShardError, load_index

    def index_of(d: Path) -> dict:
        try:
            return load_index(d)
        except ShardError as e:
            raise EvaluationError(str(e)) from e

    sets = []
    for name in args.dataset:
        d = Path(args.shards_root) / name / args.split
        index = index_of(d)
        sets.append(TestSet(f"{name}/{args.split}", d, index.get("dataset", name), index.get("split", args.split)))
    for folder in args.shards:
        d = Path(folder)
        index = index_of(d)
        dataset, split = index.get("dataset", d.parent.name), index.get("split", d.name)
        sets.append(TestSet(f"{dataset}/{split}", d, dataset, split))
    names = [s.name for s in sets]
    for s in sets:
        if names.count(s.name) > 1:  # two ad-hoc folders with the same index names: fall back to the path
            s.name = str(s.split_dir)
    if not sets:
        raise EvaluationError("give --dataset NAME (under --shards-root) or --shards DIR")
    return sets


def infer_compression(paths: list[str]) -> str:
    """The FF++-style compression tag shared by all video paths (c0 / c23 / c40 / raw), else "as stored"."""
    tags = {m.group(1) for p in paths if (m := _COMPRESSION_RE.search(p))}
    if len(tags) == 1 and all(_COMPRESSION_RE.search(p) for p in paths):
        return tags.pop()
    if tags:
        return "mixed: " + ", ".join(sorted(tags))
    return "unknown (not in the video paths; pass --compression)"


def shard_protocol(split_dir: Path) -> dict:
    """Facts about how the faces were prepared, read from the shards and the split's failures log.

    Videos the pipeline could not decode, or where no sampled frame had a face, have no face to score and
    are absent from the metrics; they are counted here so that the report says so.
    """
    from pipeline.shards import FAILURES_NAME, ShardReader, load_index, shard_paths

    paths, attrs, no_face_frames, faceless_videos = [], {}, 0, 0
    for p in shard_paths(split_dir):
        r = ShardReader(p)
        attrs = attrs or r.attrs
        paths += [v.get("path", "") for v in r.videos]
        no_face_frames += len(r.no_face)
        faceless_videos += len(r.videos) - len(np.unique(r.video))
        r.close()
    failures: dict[str, int] = {}
    log = split_dir / load_index(split_dir).get("failures", FAILURES_NAME)
    if log.is_file():
        for line in log.read_text().splitlines():
            if line.strip():
                stage = json.loads(line).get("stage", "?")
                failures[stage] = failures.get(stage, 0) + 1
    return {"compression": infer_compression(paths), "crop_scale": attrs.get("crop_scale"),
            "crop_size": attrs.get("crop_size"), "detector": attrs.get("detector"),
            "sampled_frames_without_face": no_face_frames, "videos_without_faces": faceless_videos,
            "pipeline_failures": failures}


def protocol_line(p: dict) -> str:
    return (f"{p['dataset']} [{p['variant']}] split={p['split']} compression={p['compression']} "
            f"frames/video={p['frames_per_video']} flip={'on' if p['flip_test'] else 'off'} "
            f"aggregation={p['aggregation']} fakes={p['fakes']} faces={p.get('face_scale', '?')} ckpt sha256={p['checkpoint_sha256'][:12]}")


def build_protocol(ts: TestSet, args, image_size: int, sha: str, device) -> dict:
    """Everything a test set's numbers depend on, stored and printed next to them."""
    prep = shard_protocol(ts.split_dir)
    return {
        "dataset": ts.dataset,
        "variant": DATASET_VARIANTS.get(ts.dataset.lower(), ts.dataset),
        "split": ts.split,
        "compression": args.compression or prep["compression"],
        "frames_per_video": args.frames or "all stored",
        "flip_test": bool(args.flip),
        "aggregation": args.aggregate,
        "score": "cls head",
        "fakes": f"synthetic ({args.synthetic_fakes})" if args.synthetic_fakes else "dataset",
        "input_size": image_size,
        "crop_scale": prep["crop_scale"],
        "detector": prep["detector"],
        "sampled_frames_without_face": prep["sampled_frames_without_face"],
        "videos_without_faces (not scored)": prep["videos_without_faces"],
        "pipeline_failures_by_stage": prep["pipeline_failures"],
        "precision": "bf16 autocast" if (args.amp and device.type == "cuda") else "float32",
        "checkpoint": str(args.checkpoint),
        "checkpoint_sha256": sha,
    }
