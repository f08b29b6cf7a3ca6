"""The evaluation protocol: which test sets, how they were prepared, and the protocol line printed
and stored next to every number (paper Table 1)."""
from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from pipeline.errors import UserError


class EvaluationError(UserError, ValueError):
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


@dataclass(frozen=True)
class TestSetSpec:
    """Which test sets to build (evaluate.py's --dataset/--split/--shards-root, --shards [--merge], --set)."""

    datasets: tuple[str, ...] = ()
    split: str = "test"
    shards_root: str = "shards"
    shards: tuple[str, ...] = ()
    merge: bool = False
    sets: tuple[str, ...] = ()


@dataclass(frozen=True)
class Scoring:
    """How every test set is scored; stored in its protocol. ``amp`` is the autocast dtype (None: float32)."""

    checkpoint: str = ""
    frames: int = 32
    flip: bool = True
    aggregate: str = "logit-mean"
    synthetic_fakes: str | None = None
    compression: str | None = None
    manifest: str | None = None
    loader_workers: int = 0
    amp: Any = None

    @property
    def precision(self) -> str:
        names = {"torch.bfloat16": "bf16 autocast", "torch.float16": "fp16 autocast"}
        return "float32" if self.amp is None else names.get(str(self.amp), f"{self.amp} autocast")


@dataclass
class TestSet:
    """One row group of the report: a name and the split folders whose videos form one test set."""

    name: str
    split_dirs: list[Path]
    dataset: str
    split: str
    protocol: dict = field(default_factory=dict)


def _index_of(d: Path) -> dict:
    from pipeline.shards import ShardError, load_index

    try:
        return load_index(d)
    except ShardError as e:
        raise EvaluationError(str(e)) from e


def _joined(values: list[str]) -> str:
    """One name for several folders: the common value, or the distinct values joined with '+'."""
    return "+".join(dict.fromkeys(values))


def _folder_set(name: str | None, folders: list[Path]) -> TestSet:
    indexes = [_index_of(d) for d in folders]
    dataset = _joined([ix.get("dataset", d.parent.name) for ix, d in zip(indexes, folders)])
    split = _joined([ix.get("split", d.name) for ix, d in zip(indexes, folders)])
    return TestSet(name or f"{dataset}/{split}", list(folders), dataset, split)


def parse_set(spec: str) -> tuple[str, list[Path]]:
    """``NAME=DIR[,DIR...]`` (``--set``) -> (name, folders)."""
    name, eq, dirs = spec.partition("=")
    folders = [Path(d) for d in dirs.split(",") if d.strip()]
    if not eq or not name.strip() or not folders:
        raise EvaluationError(f"--set {spec!r}: expected NAME=DIR[,DIR...], e.g. --set mine=shards/real,shards/fake")
    return name.strip(), folders


def resolve_test_sets(spec: TestSetSpec) -> list[TestSet]:
    """The test sets of a run, each a list of split folders that must hold an index.json:

    ``--dataset`` names (each ``--shards-root/NAME/--split`` is one set), ``--shards`` folders (each one set,
    or all of them one set with ``--merge``) and ``--set NAME=DIR,DIR`` (those folders as one set).
    """
    sets = [_folder_set(f"{name}/{spec.split}", [Path(spec.shards_root) / name / spec.split])
            for name in spec.datasets]
    shards = [Path(d) for d in spec.shards]
    if spec.merge and shards:
        sets.append(_folder_set(None, shards))
    else:
        sets += [_folder_set(None, [d]) for d in shards]
    for one in spec.sets:
        sets.append(_folder_set(*parse_set(one)))
    names = [s.name for s in sets]
    for s in sets:
        if names.count(s.name) > 1:  # two ad-hoc folders with the same index names: fall back to the paths
            s.name = ",".join(str(d) for d in s.split_dirs)
    if not sets:
        raise EvaluationError("give --dataset NAME (under --shards-root), --shards DIR [DIR ...] [--merge] or "
                              "--set NAME=DIR,DIR")
    return sets


def class_refusal(name: str, n_real: int, n_fake: int, synthetic: str | None, several_folders: bool) -> str | None:
    """Why a test set cannot be scored with ranking metrics (one class only), or None when it can."""
    if n_real and n_fake:
        return None
    merge = " (or evaluate the folders as one set: --merge, or --set NAME=REAL_DIR,FAKE_DIR)" if several_folders \
        else " (several folders as one set: --set NAME=REAL_DIR,FAKE_DIR)"
    if n_real:
        hint = (f"no real face had landmarks for a synthetic ({synthetic}) fake; add fakes" if synthetic
                else "add fakes or use --synthetic-fakes sbi")
        return f"{name}: only real videos ({n_real}): AUC needs both; {hint}{merge}"
    if n_fake:
        return f"{name}: only fake videos ({n_fake}): AUC needs both; add real videos{merge}"
    return f"{name}: no video with a face to score"


def duplicate_video(name: str, dataset) -> str | None:
    """Why a test set cannot be scored because two stored videos share one key (they would be averaged into
    one "video", e.g. two merged folders that both hold ``clip1.mp4`` with the same label), or None."""
    from model.data.pool import video_key

    seen: dict[str, int] = {}
    for si, row, _ in dataset.shards.videos():
        key = video_key(row)
        if key in seen:
            a, b = dataset.shards.readers[seen[key]].path, dataset.shards.readers[si].path
            return (f"{name}: video {key} is stored twice ({a} and {b}); one set cannot hold the same video id "
                    f"twice (prepare the folders with distinct file names or evaluate them as separate sets)")
        seen[key] = si
    return None


def faces_per_video(video_ids: list[str]) -> dict:
    """Median / min / max faces per video of a list with one video id per face (what is actually scored)."""
    _, counts = np.unique(np.asarray(video_ids, dtype=object).astype(str), return_counts=True)
    if not len(counts):
        return {"median": 0, "min": 0, "max": 0}
    med = float(np.median(counts))
    return {"median": int(med) if med.is_integer() else med, "min": int(counts.min()), "max": int(counts.max())}


def infer_compression(paths: list[str]) -> str:
    """The FF++-style compression tag shared by all video paths (c0 / c23 / c40 / raw), else "as stored"."""
    tags = {m.group(1) for p in paths if (m := _COMPRESSION_RE.search(p))}
    if len(tags) == 1 and all(_COMPRESSION_RE.search(p) for p in paths):
        return tags.pop()
    if tags:
        return "mixed: " + ", ".join(sorted(tags))
    return "unknown (not in the video paths; pass --compression)"


def resolve_compression(given: str | None, manifest_path: str | Path | None, datasets: dict[str, set[str]],
                        paths: list[str]) -> str:
    """Compression of the source videos as the protocol states it, with where it comes from.

    given: ``--compression``; datasets: ``{dataset name: manifest hashes recorded in its shards}``. The
    manifest's ``datasets.<name>.compression`` wins over the file names; an entry whose hash differs from the
    one recorded in the shards is used but marked. Without an entry, the FF++-style tag of the video paths,
    marked "guessed from file names".
    """
    if given:
        return f"{given} (given by --compression)"
    found, changed = {}, False
    mpath = Path(manifest_path) if manifest_path else None
    if mpath is not None and mpath.is_file():
        from pipeline.manifest import ManifestError, load_manifest

        try:
            manifest = load_manifest(mpath)
        except (ManifestError, OSError):
            manifest = None
        for name, hashes in datasets.items():
            entry = manifest.datasets.get(name) if manifest else None
            if entry is not None and "compression" in entry.raw:
                found[name] = str(entry.raw["compression"])
                changed |= any(h and h != entry.hash for h in hashes)
    if found and len(found) == len(datasets):
        values = sorted(set(found.values()))
        where = ", ".join(f"datasets.{n}.compression" for n in found)
        note = "; the entry changed since these shards were made" if changed else ""
        return f"{'mixed: ' if len(values) > 1 else ''}{', '.join(values)} (from {mpath.name} {where}{note})"
    guess = infer_compression(paths)
    if guess.startswith("unknown"):
        return "unknown (not in the manifest or the file names; pass --compression)"
    return f"{guess} (guessed from file names)"


def shard_protocol(split_dirs: list[Path]) -> dict:
    """Facts about how the faces were prepared, read from the shards and the failures logs of the folders.

    Videos the pipeline could not decode, or where no sampled frame had a face, have no face to score and
    are absent from the metrics; they are counted here so that the report says so. ``faces_stored``: median /
    min / max faces stored per video; ``datasets``: {dataset name: manifest hashes recorded in its shards}.
    """
    from pipeline.shards import FAILURES_NAME, ShardReader, load_index, shard_paths

    paths, attrs, no_face_frames, faceless_videos, stored = [], {}, 0, 0, []
    datasets: dict[str, set[str]] = {}
    failures: dict[str, int] = {}
    for split_dir in split_dirs:
        index = load_index(split_dir)
        for p in shard_paths(split_dir):
            r = ShardReader(p)
            attrs = attrs or r.attrs
            paths += [v.get("path", "") for v in r.videos]
            for v in r.videos:
                datasets.setdefault(str(v.get("dataset") or index.get("dataset", "")), set()).add(
                    str(r.attrs.get("manifest_hash", "")))
            no_face_frames += len(r.no_face)
            counts = np.bincount(np.asarray(r.video, dtype=np.int64), minlength=len(r.videos))
            faceless_videos += int((counts == 0).sum())
            stored += [f"{p}:{i}" for i, c in enumerate(counts) for _ in range(int(c))]
            r.close()
        log = split_dir / index.get("failures", FAILURES_NAME)
        if log.is_file():
            for line in log.read_text().splitlines():
                if line.strip():
                    stage = json.loads(line).get("stage", "?")
                    failures[stage] = failures.get(stage, 0) + 1
    return {"paths": paths, "datasets": datasets, "crop_scale": attrs.get("crop_scale"),
            "crop_size": attrs.get("crop_size"), "detector": attrs.get("detector"),
            "faces_stored": faces_per_video(stored),
            "sampled_frames_without_face": no_face_frames, "videos_without_faces": faceless_videos,
            "pipeline_failures": failures}


def _fpv(d: dict) -> str:
    return f"{d['median']} (min {d['min']}, max {d['max']})" if d["min"] != d["max"] else str(d["median"])


def protocol_line(p: dict) -> str:
    return (f"{p['dataset']} [{p['variant']}] split={p['split']} videos={p['videos']} "
            f"compression={p['compression']} frames/video={_fpv(p['frames_per_video'])} "
            f"flip={'on' if p['flip_test'] else 'off'} aggregation={p['aggregation']} fakes={p['fakes']} "
            f"faces={p.get('face_scale', '?')} ckpt sha256={p['checkpoint_sha256'][:12]}")


def build_protocol(ts: TestSet, scoring: Scoring, image_size: int, sha: str) -> dict:
    """Everything a test set's numbers depend on, stored and printed next to them.

    ``frames_per_video`` is filled in by the caller from the faces actually scored (`faces_per_video`), and
    ``videos`` with the real / fake counts; here they hold the stored counts.
    """
    prep = shard_protocol(ts.split_dirs)
    return {
        "dataset": ts.dataset,
        "variant": DATASET_VARIANTS.get(ts.dataset.lower(), ts.dataset),
        "split": ts.split,
        "folders": ", ".join(str(d) for d in ts.split_dirs),
        "videos": "?",
        "compression": resolve_compression(scoring.compression, scoring.manifest, prep["datasets"], prep["paths"]),
        "frames_per_video": prep["faces_stored"],
        "frames_per_video_stored": prep["faces_stored"],
        "frames_per_video_requested": scoring.frames or "all stored",
        "flip_test": bool(scoring.flip),
        "aggregation": scoring.aggregate,
        "score": "cls head",
        "fakes": f"synthetic ({scoring.synthetic_fakes})" if scoring.synthetic_fakes else "dataset",
        "input_size": image_size,
        "crop_scale": prep["crop_scale"],
        "detector": prep["detector"],
        "sampled_frames_without_face": prep["sampled_frames_without_face"],
        "videos_without_faces (not scored)": prep["videos_without_faces"],
        "pipeline_failures_by_stage": prep["pipeline_failures"],
        "precision": scoring.precision,
        "checkpoint": str(scoring.checkpoint),
        "checkpoint_sha256": sha,
    }
