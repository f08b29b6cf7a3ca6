"""``data_manifest.yaml``: where each dataset lives, how its files are laid out, labels and official splits.

``load_manifest(path)`` checks the whole file's structure up front; ``pipeline.listing.list_videos(manifest,
dataset, split)`` then resolves one split to ``VideoItem`` rows (reading official split files, label lists,
metadata JSON) before any frame is decoded, and ``pipeline.adhoc.adhoc_items`` makes them from ``--input``
globs and folders instead. A wrong or missing entry raises ``ManifestError`` naming the key and the expected
form.

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

import hashlib
import json
import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from pipeline.crop import CROP_SCALE, CROP_SIZE
from pipeline.errors import UserError

SPLITS = ("train", "val", "test")
KINDS = ("ffpp", "celebdf", "dfd", "dfdc", "dfdcp", "wilddeepfake", "list")
FFPP_METHODS = ("Deepfakes", "Face2Face", "FaceSwap", "NeuralTextures", "FaceShifter", "DeepFakeDetection")
FFPP_COMPRESSIONS = ("raw", "c23", "c40")
# Splits of FF++ whose manipulated videos are listed. The SBI and BI recipes train on real videos only (their fakes
# are synthesised from them), so by default the train split holds the 720 originals and not the 2,880 fakes,
# which would be 80 % of its storage; `fake_splits: [train, val, test]` lists them too (e.g. for BI research).
FFPP_FAKE_SPLITS = ("val", "test")


class ManifestError(UserError):
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
    scale: float = CROP_SCALE
    size: int = CROP_SIZE


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


def _paths(e: dict, keys: dict[str, KeySpec], where: Path, key: str) -> None:
    """The path keys of ``e`` (``KeySpec.path``): a non-empty string each, or a list of them (``type`` list)."""
    for k, spec in keys.items():
        if not spec.path or k not in e:
            continue
        v = e[k]
        if spec.type is list:
            _expect(isinstance(v, list) and all(isinstance(x, str) and x for x in v), where, f"{key}.{k}", spec.help,
                    v)
        else:
            _expect(isinstance(v, str) and v, where, f"{key}.{k}", spec.help, v)


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


@dataclass(frozen=True)
class KeySpec:
    """One kind-specific key of a ``datasets.<name>`` entry, as data.

    help: the form shown in errors ("expected <help>"). type: of the value (str, list or dict). path: the value
    names files or folders relative to the dataset root (a non-empty string, or a list of them for type list;
    the lister checks that they exist). required: the entry must have the key.
    """
    help: str
    type: type = str
    path: bool = False
    required: bool = False


# The keys of each kind besides the common ones (_COMMON). Path keys are checked by their type alone; the others
# by their kind's own checks below (choices, nested mappings), whose errors show the same help.
KIND_KEYS: dict[str, dict[str, KeySpec]] = {
    "ffpp": {
        "compression": KeySpec("one of raw, c23, c40", required=True),
        "methods": KeySpec(f"a list from {list(FFPP_METHODS)}", list, required=True),
        "splits": KeySpec("a mapping {train: train.json, val: val.json, test: test.json} (official pair lists)",
                          dict, required=True),
        "originals": KeySpec("a folder relative to root (default original_sequences/youtube)", path=True),
        "fake_splits": KeySpec("a list from ['train', 'val', 'test'] (default [val, test])", list),
    },
    "celebdf": {
        "test_list": KeySpec("a file relative to root (List_of_testing_videos.txt)", path=True, required=True),
        "real_dirs": KeySpec("a list of folders", list, path=True),
        "fake_dirs": KeySpec("a list of folders", list, path=True),
    },
    "dfd": {
        "compression": KeySpec("one of raw, c23, c40", required=True),
        "originals": KeySpec("a folder", path=True),
        "manipulated": KeySpec("a folder", path=True),
    },
    "dfdc": {
        "videos": KeySpec("a folder relative to root", path=True, required=True),
        "labels": KeySpec("a CSV with columns filename,label", path=True, required=True),
    },
    "dfdcp": {"metadata": KeySpec("dataset.json relative to root", path=True, required=True)},
    "wilddeepfake": {
        "layout": KeySpec("a mapping {train: {real: dir, fake: dir}, test: {...}}", dict, required=True),
    },
    "list": {"videos": KeySpec("a list of {path, label} (label 0 real / 1 fake)", list, required=True)},
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
        out[name] = _dataset_entry(name, e, path, frames, crop, shard_bytes)
    return Manifest(path=path, datasets=out)


def _dataset_entry(name: str, e: Any, path: Path, frames: dict, crop: CropSettings, shard_bytes: int
                   ) -> DatasetEntry:
    """The checked ``datasets.<name>`` entry ``e``; ``frames``, ``crop`` and ``shard_bytes`` are the defaults."""
    key = f"datasets.{name}"
    _expect(isinstance(e, dict), path, key, "a mapping", e)
    kind = e.get("kind")
    _expect(kind in KINDS, path, f"{key}.kind", f"one of {', '.join(KINDS)}", kind)
    keys = KIND_KEYS[kind]
    _retired(e, path, key)
    _known_keys(e, _COMMON | set(keys), path, key)
    for k, spec in keys.items():
        if spec.required:
            _expect(k in e, path, f"{key}.{k}", spec.help, None)
    _paths(e, keys, path, key)
    if "description" in e:
        _expect(isinstance(e["description"], str), path, f"{key}.description", "a string", e["description"])
    root = e.get("root")
    _expect(isinstance(root, str) and root, path, f"{key}.root", "a path string (may use ${ENV:-default})", root)
    root_path = Path(expand_env(root, f"{key}.root", path)).expanduser()
    if not root_path.is_absolute():
        root_path = (path.parent / root_path).resolve()
    if kind in ("ffpp", "dfd"):
        _expect(e["compression"] in FFPP_COMPRESSIONS, path, f"{key}.compression", keys["compression"].help,
                e["compression"])
    if kind == "ffpp":
        _check_ffpp(e, path, key, keys)
    if kind == "list":
        _check_list_videos(e, path, key, keys)
    if kind == "wilddeepfake":
        _check_layout(e, path, key, keys)
    return DatasetEntry(name=name, kind=kind, root=root_path, raw=e,
                        frames=_frames(e.get("frames"), path, f"{key}.frames", frames),
                        crop=_crop(e.get("crop"), path, f"{key}.crop", crop),
                        shard_bytes=_shard_size(e.get("shard_size"), path, f"{key}.shard_size", shard_bytes),
                        segments=_segments(e.get("segments"), path, f"{key}.segments"))


def _check_ffpp(e: dict, path: Path, key: str, keys: dict[str, KeySpec]) -> None:
    m = e["methods"]
    _expect(isinstance(m, list) and m and set(m) <= set(FFPP_METHODS), path, f"{key}.methods",
            f"a non-empty list from {list(FFPP_METHODS)}", m)
    _expect(isinstance(e["splits"], dict), path, f"{key}.splits", keys["splits"].help, e["splits"])
    _known_keys(e["splits"], SPLITS, path, f"{key}.splits")
    for sp, f in e["splits"].items():
        _expect(isinstance(f, str) and f, path, f"{key}.splits.{sp}", "a JSON file relative to root", f)
    fs = e.get("fake_splits", list(FFPP_FAKE_SPLITS))
    _expect(isinstance(fs, list) and set(fs) <= set(SPLITS), path, f"{key}.fake_splits",
            f"a list from {list(SPLITS)}", fs)


def _check_list_videos(e: dict, path: Path, key: str, keys: dict[str, KeySpec]) -> None:
    vids = e["videos"]
    _expect(isinstance(vids, list) and vids, path, f"{key}.videos", keys["videos"].help, vids)
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


def _check_layout(e: dict, path: Path, key: str, keys: dict[str, KeySpec]) -> None:
    lay = e["layout"]
    _expect(isinstance(lay, dict), path, f"{key}.layout", keys["layout"].help, lay)
    _known_keys(lay, SPLITS, path, f"{key}.layout")
    for sp, v in lay.items():
        _expect(isinstance(v, dict), path, f"{key}.layout.{sp}", "a mapping {real: dir, fake: dir}", v)
        _known_keys(v, ("real", "fake"), path, f"{key}.layout.{sp}")
        for lab, folder in v.items():
            _expect(isinstance(folder, str) and folder, path, f"{key}.layout.{sp}.{lab}",
                    "a folder relative to root", folder)
