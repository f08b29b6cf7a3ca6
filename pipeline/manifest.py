"""``data_manifest.yaml``: where each dataset lives, how its files are laid out, labels and official splits.

``load_manifest(path)`` checks the whole file's structure up front and ``list_videos(manifest, dataset, split)``
resolves one split to ``VideoItem`` rows (reading official split files, label lists, metadata JSON) before
any frame is decoded; a wrong or missing entry raises ``ManifestError`` naming the key and the expected form.

Schema (see docs/pipeline.md for the full description)::

    version: 1
    defaults:
      frames: {train: 128, val: 32, test: 32}   # frames per video per split
      crop: {scale: 1.25, size: 384}
      shard_size: 1GiB                       # shards hold whole videos up to this size
    datasets:
      <name>:
        kind: ffpp | celebdf | dfd | dfdc | dfdcp | wilddeepfake | list
        root: ${ENV_VAR:-default/path}           # environment variables expanded, relative to the manifest
        ... kind-specific keys ...
        frames: {...}   crop: {...}   shard_size: SIZE   segments: {split: [start, end]}  (optional overrides)
"""
from __future__ import annotations

import csv
import hashlib
import json
import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Sequence

import yaml

from pipeline.video import IMAGE_SUFFIXES, VIDEO_SUFFIXES

SPLITS = ("train", "val", "test")
KINDS = ("ffpp", "celebdf", "dfd", "dfdc", "dfdcp", "wilddeepfake", "list")
FFPP_METHODS = ("Deepfakes", "Face2Face", "FaceSwap", "NeuralTextures", "FaceShifter", "DeepFakeDetection")
FFPP_COMPRESSIONS = ("raw", "c23", "c40")
# Splits of FF++ whose manipulated videos are listed. The SBI and BI recipes train on real videos only (their fakes
# are synthesised from them), so by default the train split holds the 720 originals and not the 2,880 fakes,
# which would be 80 % of its storage; `fake_splits: [train, val, test]` lists them too (e.g. for BI research).
FFPP_FAKE_SPLITS = ("val", "test")


class ManifestError(Exception):
    """The manifest (or a file it points to) is wrong; the message names the key and the expected form."""


@dataclass(frozen=True)
class VideoItem:
    """One video (or, for image datasets, one folder of frames) to prepare.

    id: unique within the dataset (e.g. ``Deepfakes/000_003``); path: absolute file or folder;
    rel_path: relative to the dataset root; label: 0 real / 1 fake; method: ``original`` or the manipulation;
    source/target: identities where the dataset names them; segment: fraction [start, end) of the video
    this split may sample from; n_frames: frames to sample.
    """
    id: str
    path: str
    rel_path: str
    label: int
    split: str
    dataset: str
    method: str = "original"
    source: str = ""
    target: str = ""
    n_frames: int = 32
    segment: tuple[float, float] = (0.0, 1.0)


@dataclass(frozen=True)
class CropSettings:
    scale: float = 1.25
    size: int = 384


@dataclass(frozen=True)
class DatasetEntry:
    """A validated ``datasets.<name>`` entry."""
    name: str
    kind: str
    root: Path
    raw: dict
    frames: dict
    crop: CropSettings
    shard_bytes: int
    segments: dict

    @property
    def hash(self) -> str:
        """Short hash of the entry (recorded in shards to tie them to the manifest that made them)."""
        blob = json.dumps(self.raw, sort_keys=True, default=str).encode()
        return hashlib.sha256(blob).hexdigest()[:16]


@dataclass(frozen=True)
class Manifest:
    path: Path
    datasets: dict[str, DatasetEntry]

    def entry(self, name: str) -> DatasetEntry:
        if name not in self.datasets:
            raise ManifestError(f"{self.path}: datasets.{name}: no such dataset; defined: "
                                f"{', '.join(sorted(self.datasets))}")
        return self.datasets[name]


_ENV_RE = re.compile(r"\$\{(?P<var>[A-Za-z_][A-Za-z0-9_]*)(:-(?P<default>[^}]*))?\}")


def expand_env(value: str, key: str, where: Path) -> str:
    """Expand ``${VAR}`` and ``${VAR:-default}``; an unset variable without a default is an error."""
    def sub(m: re.Match) -> str:
        var = m.group("var")
        if var in os.environ:
            return os.environ[var]
        if m.group("default") is not None:
            return m.group("default")
        raise ManifestError(f"{where}: {key}: environment variable {var} is not set and has no default "
                            f"(write ${{{var}:-/some/path}})")
    return _ENV_RE.sub(sub, value)


def _expect(cond: bool, where: Path, key: str, form: str, got: Any) -> None:
    if not cond:
        raise ManifestError(f"{where}: {key}: expected {form}, got {got!r}")


def _is_int(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)  # YAML `true` is a bool, never a count


def _known_keys(d: dict, allowed: Any, where: Path, key: str) -> None:
    """Every key of mapping ``d`` (at path ``key``) must be in ``allowed``; a typo is named with a suggestion."""
    import difflib

    allowed = sorted(allowed)
    for k in d:
        if k not in allowed:
            close = difflib.get_close_matches(str(k), allowed, n=1)
            hint = f" (did you mean {close[0]!r}?)" if close else ""
            prefix = f"{key}." if key else ""
            raise ManifestError(f"{where}: {prefix}{k}: unknown key{hint}; valid keys here: {', '.join(allowed)}")


def _strings(e: dict, keys: dict[str, str], where: Path, key: str) -> None:
    """Keys of ``e`` whose values must be non-empty strings (folders, files) or lists of them (form says so)."""
    for k, form in keys.items():
        if k not in e:
            continue
        v = e[k]
        if form.startswith("a list"):
            _expect(isinstance(v, list) and all(isinstance(x, str) and x for x in v), where, f"{key}.{k}", form, v)
        else:
            _expect(isinstance(v, str) and v, where, f"{key}.{k}", form, v)


def _frames(d: Any, where: Path, key: str, base: dict) -> dict:
    if d is None:
        return dict(base)
    _expect(isinstance(d, dict), where, key, "a mapping {train: N, val: N, test: N}", d)
    _known_keys(d, SPLITS, where, key)
    out = dict(base)
    for s, n in d.items():
        _expect(_is_int(n) and n > 0, where, f"{key}.{s}",
                "a positive integer", n)
        out[s] = n
    return out


def _crop(d: Any, where: Path, key: str, base: CropSettings) -> CropSettings:
    if d is None:
        return base
    _expect(isinstance(d, dict), where, key, "a mapping {scale: 1.25, size: 384}", d)
    _known_keys(d, ("scale", "size"), where, key)
    scale = d.get("scale", base.scale)
    size = d.get("size", base.size)
    _expect(isinstance(scale, (int, float)) and not isinstance(scale, bool) and scale >= 1.0, where,
            f"{key}.scale", "a number >= 1.0", scale)
    _expect(isinstance(size, int) and not isinstance(size, bool) and 16 <= size <= 2048, where, f"{key}.size",
            "an integer in [16, 2048]", size)
    return CropSettings(float(scale), int(size))


def _retired(d: dict, where: Path, key: str) -> None:
    if "videos_per_shard" in d:
        raise ManifestError(f"{where}: {key + '.' if key else ''}videos_per_shard: no longer used (one Dask task "
                            f"per video; shards are packed up to a size): remove it, or write shard_size: 1GiB")


def _shard_size(v: Any, where: Path, key: str, base: int | None) -> int:
    from pipeline.shards import DEFAULT_SHARD_BYTES, parse_size

    if v is None:
        return base if base is not None else DEFAULT_SHARD_BYTES
    try:
        return parse_size(v)  # refuses booleans, floats and sizes under 1 byte too
    except ValueError:
        raise ManifestError(f"{where}: {key}: expected a size such as 1GiB or 512MB, got {v!r}") from None


def _segments(d: Any, where: Path, key: str) -> dict:
    if d is None:
        return {}
    _expect(isinstance(d, dict), where, key, "a mapping {split: [start, end]} with fractions 0 <= start < end <= 1", d)
    _known_keys(d, SPLITS, where, key)
    out = {}
    for s, seg in d.items():
        _expect(isinstance(seg, (list, tuple)) and len(seg) == 2
                and all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in seg)
                and 0 <= seg[0] < seg[1] <= 1, where, f"{key}.{s}", "[start, end] with 0 <= start < end <= 1", seg)
        out[s] = (float(seg[0]), float(seg[1]))
    return out


# Keys each kind requires (besides kind/root) and optional ones, with the form shown in errors.
_KIND_KEYS: dict[str, tuple[dict[str, str], dict[str, str]]] = {
    "ffpp": ({"compression": "one of raw, c23, c40", "methods": f"a list from {list(FFPP_METHODS)}",
              "splits": "a mapping {train: train.json, val: val.json, test: test.json} (official pair lists)"},
             {"originals": "a folder relative to root (default original_sequences/youtube)",
              "fake_splits": "a list from ['train', 'val', 'test'] (default [val, test])"}),
    "celebdf": ({"test_list": "a file relative to root (List_of_testing_videos.txt)"},
                {"real_dirs": "a list of folders", "fake_dirs": "a list of folders"}),
    "dfd": ({"compression": "one of raw, c23, c40"}, {"originals": "a folder", "manipulated": "a folder"}),
    "dfdc": ({"videos": "a folder relative to root", "labels": "a CSV with columns filename,label"}, {}),
    "dfdcp": ({"metadata": "dataset.json relative to root"}, {}),
    "wilddeepfake": ({"layout": "a mapping {train: {real: dir, fake: dir}, test: {...}}"}, {}),
    "list": ({"videos": "a list of {path, label} (label 0 real / 1 fake)"}, {}),
}
_COMMON = {"kind", "root", "frames", "crop", "shard_size", "segments", "description"}


def load_manifest(path: str | os.PathLike = "data_manifest.yaml") -> Manifest:
    """Parse and validate the manifest; raises ``ManifestError`` naming the first wrong key."""
    path = Path(path)
    if not path.is_file():
        raise ManifestError(f"{path}: manifest not found (pass --manifest PATH)")
    try:
        doc = yaml.safe_load(path.read_text())
    except yaml.YAMLError as e:
        raise ManifestError(f"{path}: not valid YAML ({str(e).splitlines()[0]})") from e
    _expect(isinstance(doc, dict), path, "<top level>", "a mapping with keys version, defaults, datasets", doc)
    _known_keys(doc, ("version", "defaults", "datasets"), path, "")
    _expect(_is_int(doc.get("version")) and doc.get("version") == 1, path, "version", "1", doc.get("version"))
    defaults = doc.get("defaults") or {}
    _expect(isinstance(defaults, dict), path, "defaults", "a mapping", defaults)
    _retired(defaults, path, "defaults")
    _known_keys(defaults, ("frames", "crop", "shard_size"), path, "defaults")
    frames = _frames(defaults.get("frames"), path, "defaults.frames", {"train": 128, "val": 32, "test": 32})
    crop = _crop(defaults.get("crop"), path, "defaults.crop", CropSettings())
    shard_bytes = _shard_size(defaults.get("shard_size"), path, "defaults.shard_size", None)
    ds = doc.get("datasets")
    _expect(isinstance(ds, dict) and ds, path, "datasets", "a non-empty mapping of dataset names", ds)
    out = {}
    for name, e in ds.items():
        key = f"datasets.{name}"
        _expect(isinstance(e, dict), path, key, "a mapping", e)
        kind = e.get("kind")
        _expect(kind in KINDS, path, f"{key}.kind", f"one of {', '.join(KINDS)}", kind)
        required, optional = _KIND_KEYS[kind]
        _retired(e, path, key)
        _known_keys(e, _COMMON | set(required) | set(optional), path, key)
        for k, form in required.items():
            _expect(k in e, path, f"{key}.{k}", form, None)
        paths = ("a folder", "a file", "a CSV", "dataset.json", "a list of folders")
        _strings(e, {k: f for k, f in {**required, **optional}.items() if f.startswith(paths)}, path, key)
        if "description" in e:
            _expect(isinstance(e["description"], str), path, f"{key}.description", "a string", e["description"])
        root = e.get("root")
        _expect(isinstance(root, str) and root, path, f"{key}.root", "a path string (may use ${ENV:-default})", root)
        root_path = Path(expand_env(root, f"{key}.root", path)).expanduser()
        if not root_path.is_absolute():
            root_path = (path.parent / root_path).resolve()
        if kind in ("ffpp", "dfd"):
            _expect(e["compression"] in FFPP_COMPRESSIONS, path, f"{key}.compression", "one of raw, c23, c40",
                    e["compression"])
        if kind == "ffpp":
            m = e["methods"]
            _expect(isinstance(m, list) and m and set(m) <= set(FFPP_METHODS), path, f"{key}.methods",
                    f"a non-empty list from {list(FFPP_METHODS)}", m)
            _expect(isinstance(e["splits"], dict), path, f"{key}.splits", required["splits"], e["splits"])
            _known_keys(e["splits"], SPLITS, path, f"{key}.splits")
            for sp, f in e["splits"].items():
                _expect(isinstance(f, str) and f, path, f"{key}.splits.{sp}", "a JSON file relative to root", f)
            fs = e.get("fake_splits", list(FFPP_FAKE_SPLITS))
            _expect(isinstance(fs, list) and set(fs) <= set(SPLITS), path, f"{key}.fake_splits",
                    f"a list from {list(SPLITS)}", fs)
        if kind == "list":
            vids = e["videos"]
            _expect(isinstance(vids, list) and vids, path, f"{key}.videos", required["videos"], vids)
            for i, v in enumerate(vids):
                form = "{path: file, label: 0 or 1, optional id, method, splits: [train, test, ...]}"
                _expect(isinstance(v, dict), path, f"{key}.videos[{i}]", form, v)
                _known_keys(v, ("path", "label", "id", "method", "splits"), path, f"{key}.videos[{i}]")
                _expect(isinstance(v.get("path"), str) and v["path"], path, f"{key}.videos[{i}].path", "a file path",
                        v.get("path"))
                _expect(_is_int(v.get("label")) and v["label"] in (0, 1), path, f"{key}.videos[{i}].label",
                        "0 (real) or 1 (fake)", v.get("label"))
                for k in ("id", "method"):
                    if k in v:
                        _expect(isinstance(v[k], str) and v[k], path, f"{key}.videos[{i}].{k}", "a string", v[k])
                sp = v.get("splits", list(SPLITS))
                _expect(isinstance(sp, list) and set(sp) <= set(SPLITS), path, f"{key}.videos[{i}].splits",
                        f"a list from {list(SPLITS)}", sp)
        if kind == "wilddeepfake":
            lay = e["layout"]
            _expect(isinstance(lay, dict), path, f"{key}.layout", required["layout"], lay)
            _known_keys(lay, SPLITS, path, f"{key}.layout")
            for sp, v in lay.items():
                _expect(isinstance(v, dict), path, f"{key}.layout.{sp}", "a mapping {real: dir, fake: dir}", v)
                _known_keys(v, ("real", "fake"), path, f"{key}.layout.{sp}")
                for lab, folder in v.items():
                    _expect(isinstance(folder, str) and folder, path, f"{key}.layout.{sp}.{lab}",
                            "a folder relative to root", folder)
        out[name] = DatasetEntry(name=name, kind=kind, root=root_path, raw=e,
                                 frames=_frames(e.get("frames"), path, f"{key}.frames", frames),
                                 crop=_crop(e.get("crop"), path, f"{key}.crop", crop), shard_bytes=_shard_size(e.get("shard_size"), path, f"{key}.shard_size", shard_bytes),
                                 segments=_segments(e.get("segments"), path, f"{key}.segments"))
    return Manifest(path=path, datasets=out)


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


# Words in a folder name that say what its videos are: `real/`, `fake/`, FF++'s `original_sequences/` and
# `manipulated_sequences/`, Celeb-DF's `Celeb-real/`, `YouTube-real/` and `Celeb-synthesis/`, WildDeepfake's
# `real_train/` and `fake_test/`. A name is split into words at every non-alphanumeric character.
REAL_WORDS = frozenset({"real", "reals", "original", "originals", "pristine", "genuine", "bonafide"})
FAKE_WORDS = frozenset({"fake", "fakes", "manipulated", "synthesis", "synthesized", "synthetic", "deepfake",
                        "deepfakes", "forged", "forgery", "swapped"})


def label_from_folders(folders: Sequence[str]) -> int | None:
    """0 (real) or 1 (fake) from the first folder name, top down, whose words name exactly one of the two
    (see ``REAL_WORDS``/``FAKE_WORDS``); None when no folder does."""
    for name in folders:
        words = set(re.split(r"[^0-9a-z]+", name.lower()))
        real, fake = bool(words & REAL_WORDS), bool(words & FAKE_WORDS)
        if real != fake:
            return 0 if real else 1
    return None


def _walk_videos(top: str) -> list[str]:
    """Video files below ``top``, recursively, following symlinked folders (a common layout on clusters); a
    folder reached a second time (a link loop, or two links to one folder) is read once."""
    seen, files = set(), []
    for root, dirs, names in os.walk(top, followlinks=True):
        real = os.path.realpath(root)
        if real in seen:
            dirs[:] = []
            continue
        seen.add(real)
        dirs.sort()  # the first link to a folder, in name order, names its files
        files += [os.path.join(root, n) for n in names
                  if os.path.splitext(n)[1].lower() in VIDEO_SUFFIXES and os.path.isfile(os.path.join(root, n))]
    return sorted(files)


def _expand_input(pattern: str) -> list[tuple[str, str]]:
    """(file, folder the label is read below) for a glob, a single file or a folder (its videos, recursively)."""
    import glob

    expanded = os.path.expanduser(pattern)
    if os.path.isdir(expanded):
        top = os.path.abspath(expanded)
        files = _walk_videos(top)
        if not files:
            raise ManifestError(f"--input {pattern!r}: the folder holds no video files "
                                f"({', '.join(VIDEO_SUFFIXES)})")
        return [(f, os.path.dirname(top)) for f in files]
    paths = sorted(glob.glob(expanded, recursive=True))
    if not paths:
        if any(c in pattern for c in "*?["):
            raise ManifestError(f"--input {pattern!r}: no file matches")
        paths = [expanded]  # a single named file: the pipeline reports it (and logs it) if it is missing
    # A glob's labels are read from the folders below its fixed part ('data/*/x.mp4' -> below data/).
    fixed = re.split(r"[*?\[]", expanded, maxsplit=1)[0]
    base = os.path.abspath(fixed if fixed.endswith(os.sep) else os.path.dirname(fixed) or ".")
    return [(os.path.abspath(p), base) for p in paths]


def adhoc_items(pattern: str | Sequence[str], label: int | None | Sequence[int | None], n_frames: int,
                dataset: str = "adhoc", split: str = "test") -> list[VideoItem]:
    """Videos of one ad-hoc split from one or more inputs, each a glob (``'videos/*.mp4'``), a file or a folder
    (its video files, recursively), with one label per input (0 real, 1 fake). A label of None reads it from the
    folder names between the input and the file, and for a folder input its own name too (``label_from_folders``:
    ``mine/real/a.mp4``, ``mine/fake/b.mp4``, FF++'s ``original_sequences``/``manipulated_sequences``).

    Ids are paths relative to the inputs' common folder, without suffix. Files that do not exist are kept as
    items (they fail later with a logged, named error); an input that matches nothing is an error, and so is a
    video whose folders name no label.
    """
    patterns = [pattern] if isinstance(pattern, str) else list(pattern)
    labels = list(label) if isinstance(label, (list, tuple)) else [label] * len(patterns)
    if len(labels) != len(patterns):
        raise ManifestError(f"{len(patterns)} --input but {len(labels)} --label: give one --label for all "
                            f"inputs, one per --input (in order), or --label-from-folder")
    found: list[tuple[str, int]] = []
    for pat, lab in zip(patterns, labels):
        for path, base in _expand_input(pat):
            if lab is None:
                rel_parts = Path(os.path.relpath(path, base)).parts[:-1]
                lab_f = label_from_folders(rel_parts)
                if lab_f is None:
                    raise ManifestError(f"{path}: no folder between {base} and the file says real or fake "
                                        f"(e.g. real/, fake/, original_sequences/); give --label for this input")
                found.append((path, lab_f))
            else:
                found.append((path, int(lab)))
    seen_paths: set[str] = set()
    found = [(p, lab) for p, lab in found if not (p in seen_paths or seen_paths.add(p))]
    common = os.path.commonpath([p for p, _ in found]) if len(found) > 1 else os.path.dirname(found[0][0])
    if len(found) > 1 and common in {p for p, _ in found}:
        common = os.path.dirname(common)
    items = []
    seen: dict[str, int] = {}
    for p, lab in found:
        rel = os.path.relpath(p, common)
        vid = str(Path(rel).with_suffix(""))
        if vid in seen:
            seen[vid] += 1
            vid = f"{vid}#{seen[vid]}"
        else:
            seen[vid] = 0
        items.append(VideoItem(id=vid, path=p, rel_path=rel, label=lab, split=split,
                               dataset=dataset, method="original" if lab == 0 else "unknown",
                               n_frames=n_frames))
    return items
