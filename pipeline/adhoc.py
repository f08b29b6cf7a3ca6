"""Ad-hoc inputs (``extract-frames --input``): videos from globs, files or folders, labelled per input or
read from folder names, without a manifest."""
from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Sequence

from pipeline.manifest import ManifestError, VideoItem
from pipeline.video import VIDEO_SUFFIXES

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
        # A dangling link named like a video is kept: its task fails with a line and a failures row, not silence.
        files += [os.path.join(root, n) for n in names if os.path.splitext(n)[1].lower() in VIDEO_SUFFIXES
                  and (os.path.isfile(os.path.join(root, n)) or os.path.islink(os.path.join(root, n)))]
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
        if not os.path.lexists(expanded):  # a typo, before any work (a dangling link is kept: its task logs it)
            raise ManifestError(f"--input {pattern!r}: no such file or folder")
        paths = [expanded]
    # A glob's labels are read from the folders below its fixed part ('data/*/x.mp4' -> below data/).
    fixed = re.split(r"[*?\[]", expanded, maxsplit=1)[0]
    base = os.path.abspath(fixed if fixed.endswith(os.sep) else os.path.dirname(fixed) or ".")
    return [(os.path.abspath(p), base) for p in paths]


def method_from_folders(folders: Sequence[str]) -> str | None:
    """The manipulation method of a fake video from its folders: the folder right below the first one that says
    fake (``fake/Deepfakes/x.mp4``, ``manipulated_sequences/Face2Face/c23/videos/x.mp4``); None without one."""
    for i, name in enumerate(folders):
        if label_from_folders([name]) == 1:
            return folders[i + 1] if i + 1 < len(folders) else None
    return None


def adhoc_items(pattern: str | Sequence[str], label: int | None | Sequence[int | None], n_frames: int,
                dataset: str = "adhoc", split: str = "test", method: str | None = None) -> list[VideoItem]:
    """Videos of one ad-hoc split from one or more inputs, each a glob (``'videos/*.mp4'``), a file or a folder
    (its video files, recursively), with one label per input (0 real, 1 fake). A label of None reads it from the
    folder names between the input and the file, and for a folder input its own name too (``label_from_folders``:
    ``mine/real/a.mp4``, ``mine/fake/b.mp4``, FF++'s ``original_sequences``/``manipulated_sequences``).

    A fake video's method is ``method`` when given, else the folder below its fake folder (``fake/<method>/``,
    ``method_from_folders``), else "unknown"; real videos are "original".

    Ids are paths relative to the inputs' common folder, without suffix. An input that does not exist or matches
    nothing is an error, and so is a video whose folders name no label; a dangling link is kept as an item (it
    fails later with a logged, named error).
    """
    patterns = [pattern] if isinstance(pattern, str) else list(pattern)
    labels = list(label) if isinstance(label, (list, tuple)) else [label] * len(patterns)
    if len(labels) != len(patterns):
        raise ManifestError(f"{len(patterns)} --input but {len(labels)} --label: give one --label for all "
                            f"inputs, one per --input (in order), or --label-from-folder")
    found: list[tuple[str, int, str]] = []
    for pat, lab in zip(patterns, labels):
        for path, base in _expand_input(pat):
            rel_parts = Path(os.path.relpath(path, base)).parts[:-1]
            if lab is None:
                lab_f = label_from_folders(rel_parts)
                if lab_f is None:
                    raise ManifestError(f"{path}: no folder between {base} and the file says real or fake "
                                        f"(e.g. real/, fake/, original_sequences/); give --label for this input")
            else:
                lab_f = int(lab)
            kind = "original" if lab_f == 0 else (method or method_from_folders(rel_parts) or "unknown")
            found.append((path, lab_f, kind))
    seen_paths: set[str] = set()
    found = [f for f in found if not (f[0] in seen_paths or seen_paths.add(f[0]))]
    common = os.path.commonpath([p for p, _, _ in found]) if len(found) > 1 else os.path.dirname(found[0][0])
    if len(found) > 1 and common in {p for p, _, _ in found}:
        common = os.path.dirname(common)
    items = []
    seen: dict[str, int] = {}
    for p, lab, kind in found:
        rel = os.path.relpath(p, common)
        vid = str(Path(rel).with_suffix(""))
        if vid in seen:
            seen[vid] += 1
            vid = f"{vid}#{seen[vid]}"
        else:
            seen[vid] = 0
        items.append(VideoItem(id=vid, path=p, rel_path=rel, label=lab, split=split,
                               dataset=dataset, method=kind,
                               n_frames=n_frames))
    return items
