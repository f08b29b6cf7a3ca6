"""``inspect``: a text summary of shards and a PNG contact sheet of crops with their landmarks drawn."""
from __future__ import annotations

import json
import os
from collections import Counter
from functools import lru_cache
from pathlib import Path

import cv2
import numpy as np

from pipeline.shards import FAILURES_NAME, INDEX_NAME, ShardError, ShardReader, load_index


def _shards(path: Path) -> list[Path]:
    if path.is_file():
        return [path]
    if (path / INDEX_NAME).exists():
        return [path / s["file"] for s in load_index(path)["shards"]]
    found = sorted(path.glob("*.h5"))
    if not found:
        raise ShardError(f"{path}: no shards (neither a .h5 file nor a folder with index.json or *.h5)")
    return found


def summarize(path: str | os.PathLike) -> str:
    """Multi-line summary: counts, labels, methods, landmark coverage, frames without a face, attributes."""
    path = Path(path)
    lines = []
    if path.is_dir() and (path / INDEX_NAME).exists():
        idx = load_index(path)
        lines.append(f"{path}: dataset {idx.get('dataset')!r} split {idx.get('split')!r}, {len(idx['shards'])} "
                     f"shards, {idx['n_videos']} videos, {idx['n_faces']} faces")
        fails = path / idx.get("failures", FAILURES_NAME)
        if fails.exists():
            stages = Counter(json.loads(line)["stage"] for line in fails.read_text().splitlines() if line.strip())
            lines.append(f"  failures.jsonl: {sum(stages.values())} rows " + ", ".join(f"{k}={v}" for k, v in
                                                                                    sorted(stages.items())))
    labels, methods = Counter(), Counter()
    n_faces = n_ok = n_noface = 0
    attrs = None
    for p in _shards(path):
        with ShardReader(p) as r:
            attrs = attrs or r.attrs
            n_faces += len(r)
            n_ok += int(r.landmark_ok.sum())
            n_noface += len(r.no_face)
            per_video = np.bincount(r.video, minlength=len(r.videos))
            for v, row in enumerate(r.videos):
                labels["fake" if row["label"] else "real"] += 1
                methods[row["method"]] += 1
                lines.append(f"  {p.name} video {row['id']} ({'fake' if row['label'] else 'real'}, {row['method']},"
                             f" {row['width']}x{row['height']}, {row['n_frames']} frames @ {row['fps']:.2f}): "
                             f"{per_video[v]} crops")
    lines.append(f"  videos: {dict(labels)}; methods: {dict(methods)}")
    lines.append(f"  faces: {n_faces}; with landmarks: {n_ok} ({100 * n_ok / max(n_faces, 1):.1f} %); "
                 f"sampled frames without a face: {n_noface}")
    if attrs:
        keys = ("schema_version", "crop_size", "crop_scale", "detector", "compression", "landmarks_done",
                "landmark_detector", "created")
        lines.append("  attrs: " + ", ".join(f"{k}={attrs.get(k)}" for k in keys))
    return "\n".join(lines)


def draw_landmarks(crop: np.ndarray, points: np.ndarray) -> np.ndarray:
    """Copy of an (S, S, 3) RGB crop with (68, 2) points drawn (nothing drawn for NaN points)."""
    img = crop.copy()
    r = max(1, crop.shape[0] // 128)
    for x, y in points:
        if np.isfinite(x) and np.isfinite(y):
            cv2.circle(img, (int(round(x)), int(round(y))), r, (0, 255, 0), -1, lineType=cv2.LINE_AA)
    return img


@lru_cache(maxsize=1)
def _caption_font(size: int = 11):
    """DejaVu Sans from matplotlib's own files: it has Latin, Greek and Cyrillic glyphs, where OpenCV's Hershey
    fonts draw every non-ASCII character as '?'."""
    from matplotlib import font_manager
    from PIL import ImageFont

    return ImageFont.truetype(font_manager.findfont("DejaVu Sans"), size)


def draw_caption(img: np.ndarray, text: str) -> np.ndarray:
    """Copy of an (H, W, 3) RGB tile with ``text`` (any unicode) in white on a dark outline at the bottom left."""
    from PIL import Image, ImageDraw

    pil = Image.fromarray(img)
    ImageDraw.Draw(pil).text((3, img.shape[0] - 16), text, font=_caption_font(), fill=(255, 255, 255),
                             stroke_width=1, stroke_fill=(0, 0, 0))
    return np.asarray(pil).copy()


def contact_sheet(path: str | os.PathLike, png: str | os.PathLike, n: int = 24, tile: int = 160) -> Path:
    """Write a grid of up to ``n`` crops (spread evenly over all shards) with landmarks and captions."""
    refs = []
    for p in _shards(Path(path)):
        with ShardReader(p) as r:
            refs += [(p, i) for i in range(len(r))]
    if not refs:
        raise ShardError(f"{path}: no crops to show")
    pick = [refs[int(k)] for k in np.unique(np.linspace(0, len(refs) - 1, min(n, len(refs))).round().astype(int))]
    tiles = []
    readers: dict[Path, ShardReader] = {}
    for p, i in pick:
        r = readers.setdefault(p, ShardReader(p))
        img = draw_landmarks(r.face(i), r.landmarks(i))
        img = cv2.resize(img, (tile, tile), interpolation=cv2.INTER_AREA)
        row = r.video_row(i)
        img = draw_caption(img, f"{row['id'][-14:]} f{r.frame_index[i]}")
        if not r.landmark_ok[i]:
            cv2.putText(img, "no landmarks", (3, 14), cv2.FONT_HERSHEY_SIMPLEX, 0.4, (255, 80, 80), 1, cv2.LINE_AA)
        tiles.append(img)
    for r in readers.values():
        r.close()
    cols = min(8, len(tiles))
    while len(tiles) % cols:
        tiles.append(np.zeros_like(tiles[0]))
    grid = np.concatenate([np.concatenate(tiles[k:k + cols], axis=1) for k in range(0, len(tiles), cols)], axis=0)
    png = Path(png)
    png.parent.mkdir(parents=True, exist_ok=True)
    if not cv2.imwrite(str(png), cv2.cvtColor(grid, cv2.COLOR_RGB2BGR)):
        raise ShardError(f"{png}: could not write the PNG")
    return png
