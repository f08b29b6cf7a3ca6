"""Videos of one dataset split of the manifest: ``list_videos`` resolves ``datasets.<name>`` and a split to
``VideoItem`` rows, each dataset kind reading its own layout (official split files, label lists, metadata JSON);
every file the entry names is checked to exist first."""
from __future__ import annotations

import csv
import json
from pathlib import Path
from typing import Callable

from pipeline.manifest import FFPP_FAKE_SPLITS, SPLITS, DatasetEntry, Manifest, ManifestError, VideoItem
from pipeline.video import IMAGE_SUFFIXES, VIDEO_SUFFIXES


def _need(path: Path, key: str, manifest: Path, what: str = "file") -> Path:
    ok = path.is_file() if what == "file" else path.is_dir()
    if not ok:
        raise ManifestError(f"{manifest}: {key}: {what} {path} does not exist (check the dataset root or its "
                            f"environment variable)")
    return path


def _videos_in(folder: Path) -> list[Path]:
    return sorted(p for p in folder.iterdir() if p.suffix.lower() in VIDEO_SUFFIXES)


def list_videos(manifest: Manifest, dataset: str, split: str) -> list[VideoItem]:
    """Resolve ``dataset``/``split`` to its videos; every file the entry names is checked to exist first."""
    e = manifest.entry(dataset)
    if split not in SPLITS:
        raise ManifestError(f"split {split!r}: expected one of {', '.join(SPLITS)}")
    key = f"datasets.{dataset}"
    _need(e.root, f"{key}.root", manifest.path, "folder")
    rows = _LISTERS[e.kind](e, split, key, manifest.path)
    if not rows:
        raise ManifestError(f"{manifest.path}: {key}: split {split!r} has no videos (does the dataset define it?)")
    items, seen = [], set()
    seg = e.segments.get(split, (0.0, 1.0))
    for r in rows:
        if r["id"] in seen:
            raise ManifestError(f"{manifest.path}: {key}: video id {r['id']!r} appears twice in split {split!r}")
        seen.add(r["id"])
        p = Path(r["path"])
        items.append(VideoItem(id=r["id"], path=str(p if p.is_absolute() else e.root / p), rel_path=r["path"],
                               label=int(r["label"]), split=split, dataset=dataset,
                               method=r.get("method", "original"), source=r.get("source", ""),
                               target=r.get("target", ""), n_frames=e.frames[split], segment=seg))
    return items


def _ffpp(e: DatasetEntry, split: str, key: str, mpath: Path) -> list[dict]:
    raw = e.raw
    if split not in raw["splits"]:
        raise ManifestError(f"{mpath}: {key}.splits.{split}: not defined; expected a path to the official "
                            f"{split}.json pair list")
    sfile = _need(e.root / raw["splits"][split], f"{key}.splits.{split}", mpath)
    try:
        pairs = json.loads(sfile.read_text())
        pairs = [(str(a), str(b)) for a, b in pairs]
    except (json.JSONDecodeError, TypeError, ValueError) as ex:
        raise ManifestError(f"{sfile}: {key}.splits.{split}: expected a JSON list of [id, id] pairs ({ex})") from ex
    comp = raw["compression"]
    rows = []
    orig = raw.get("originals", "original_sequences/youtube")
    ids = sorted({i for p in pairs for i in p})
    for i in ids:
        rows.append({"id": f"original/{i}", "path": f"{orig}/{comp}/videos/{i}.mp4", "label": 0,
                     "method": "original", "source": i})
    if split not in raw.get("fake_splits", FFPP_FAKE_SPLITS):
        return rows
    for m in raw["methods"]:
        if m == "DeepFakeDetection":
            continue  # no official pair split: listed by the `dfd` kind instead
        for a, b in pairs:
            # A fake a_b (a's face swapped with b's, or b driving a) belongs to the split of its pair, both orders.
            for t, s in ((a, b), (b, a)):
                rows.append({"id": f"{m}/{t}_{s}", "path": f"manipulated_sequences/{m}/{comp}/videos/{t}_{s}.mp4",
                             "label": 1, "method": m, "target": t, "source": s})
    return rows


def _celebdf(e: DatasetEntry, split: str, key: str, mpath: Path) -> list[dict]:
    raw = e.raw
    lst = _need(e.root / raw["test_list"], f"{key}.test_list", mpath)
    test = {}
    for n, line in enumerate(lst.read_text().splitlines(), 1):
        if not line.strip():
            continue
        parts = line.split()
        # No header row: "<1 real | 0 fake> <folder>/<file>.mp4"
        if len(parts) != 2 or parts[0] not in ("0", "1"):
            raise ManifestError(f"{lst}:{n}: {key}.test_list: expected '<1|0> <folder>/<video>.mp4', got {line!r}")
        test[parts[1]] = 1 - int(parts[0])
    real_dirs = raw.get("real_dirs", ["Celeb-real", "YouTube-real"])
    fake_dirs = raw.get("fake_dirs", ["Celeb-synthesis"])
    if split == "test":
        rels = sorted(test)
    elif split == "train":
        rels = []
        for d in real_dirs + fake_dirs:
            folder = _need(e.root / d, f"{key}.real_dirs/fake_dirs", mpath, "folder")
            rels += [f"{d}/{p.name}" for p in _videos_in(folder) if f"{d}/{p.name}" not in test]
    else:
        return []
    rows = []
    for rel in rels:
        folder, stem = rel.split("/")[0], Path(rel).stem
        label = test[rel] if rel in test else int(folder in fake_dirs)
        method = "Celeb-synthesis" if label else "original"
        r = {"id": f"{folder}/{stem}", "path": rel, "label": label, "method": method}
        if label and stem.count("_") >= 2:  # idA_idB_NNNN: target A's video with B's face
            t, s, _ = stem.split("_", 2)
            r.update(target=t, source=s)
        rows.append(r)
    return rows


def _dfd(e: DatasetEntry, split: str, key: str, mpath: Path) -> list[dict]:
    if split != "test":
        return []  # DFD has no official split: the whole set is a cross-dataset test set
    raw, comp = e.raw, e.raw["compression"]
    rows = []
    for sub, label, method in ((raw.get("originals", "original_sequences/actors"), 0, "original"),
                               (raw.get("manipulated", "manipulated_sequences/DeepFakeDetection"), 1,
                                "DeepFakeDetection")):
        folder = _need(e.root / sub / comp / "videos", f"{key}.{'originals' if label == 0 else 'manipulated'}",
                       mpath, "folder")
        for p in _videos_in(folder):
            rows.append({"id": f"{method}/{p.stem}", "path": f"{sub}/{comp}/videos/{p.name}", "label": label,
                         "method": method})
    return rows


def _dfdc(e: DatasetEntry, split: str, key: str, mpath: Path) -> list[dict]:
    if split != "test":
        return []
    raw = e.raw
    labels = _need(e.root / raw["labels"], f"{key}.labels", mpath)
    folder = _need(e.root / raw["videos"], f"{key}.videos", mpath, "folder")
    with labels.open(newline="") as f:
        reader = csv.DictReader(f)
        if not reader.fieldnames or not {"filename", "label"} <= set(reader.fieldnames):
            raise ManifestError(f"{labels}: {key}.labels: expected CSV columns filename,label; got "
                                f"{reader.fieldnames}")
        rows = []
        for r in reader:
            lab = r["label"].strip()
            if lab not in ("0", "1"):
                raise ManifestError(f"{labels}: {key}.labels: label of {r['filename']} must be 0 or 1, got {lab!r}")
            rows.append({"id": Path(r["filename"]).stem, "path": str((folder / r["filename"]).relative_to(e.root)),
                         "label": int(lab), "method": "DFDC" if lab == "1" else "original"})
    return rows


def _dfdcp(e: DatasetEntry, split: str, key: str, mpath: Path) -> list[dict]:
    meta = _need(e.root / e.raw["metadata"], f"{key}.metadata", mpath)
    try:
        doc = json.loads(meta.read_text())
    except json.JSONDecodeError as ex:
        raise ManifestError(f"{meta}: {key}.metadata: not valid JSON ({ex})") from ex
    rows = []
    for rel, info in sorted(doc.items()):
        if not isinstance(info, dict) or info.get("label") not in ("real", "fake") or "set" not in info:
            raise ManifestError(f"{meta}: {key}.metadata: entry {rel!r} must have label real|fake and set "
                                f"train|test, got {info!r}")
        if info["set"] != split:
            continue
        label = int(info["label"] == "fake")
        parts = Path(rel).parts
        rows.append({"id": str(Path(rel).with_suffix("")), "path": rel, "label": label,
                     "method": parts[0] if label else "original",
                     "target": str(info.get("target_id", "")), "source": str(info.get("source_id", ""))})
    return rows


def _wilddeepfake(e: DatasetEntry, split: str, key: str, mpath: Path) -> list[dict]:
    # WildDeepfake ships face images, not videos: each sequence folder of frames is one "video"
    # (frames read in name order by pipeline.video), after its tar.gz archives have been extracted.
    lay = e.raw["layout"].get(split)
    if lay is None:
        return []
    rows = []
    for cls, label in (("real", 0), ("fake", 1)):
        if cls not in lay:
            continue
        top = _need(e.root / lay[cls], f"{key}.layout.{split}.{cls}", mpath, "folder")
        seq_dirs = sorted({p.parent for p in top.rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES})
        for d in seq_dirs:
            rel = str(d.relative_to(e.root))
            rows.append({"id": f"{cls}/{d.relative_to(top)}", "path": rel, "label": label,
                         "method": "WildDeepfake" if label else "original"})
    return rows


def _list(e: DatasetEntry, split: str, key: str, mpath: Path) -> list[dict]:
    rows = []
    for v in e.raw["videos"]:
        splits = v.get("splits", list(SPLITS))
        if split not in splits:
            continue
        p = Path(v["path"])
        rows.append({"id": v.get("id", str(p.with_suffix(""))), "path": v["path"], "label": v["label"],
                     "method": v.get("method", "original" if v["label"] == 0 else "unknown")})
    return rows


_LISTERS: dict[str, Callable[[DatasetEntry, str, str, Path], list[dict]]] = {
    "ffpp": _ffpp, "celebdf": _celebdf, "dfd": _dfd, "dfdc": _dfdc, "dfdcp": _dfdcp,
    "wilddeepfake": _wilddeepfake, "list": _list,
}
