"""Training and evaluation Datasets over HDF5 face shards (see pipeline.shards for the schema).

Training (`TrainPairDataset`): real videos only. Every epoch draws `frames_per_video` frames per video afresh
(`set_epoch`), and each item is a (real, pseudo-fake) pair made from one frame: SBI by default, or BI with a
landmark-nearest donor from another video. Items carry uint8 images (cheap to pass between DataLoader
workers); `collate_pairs` stacks N pairs into 2N normalised images with labels and targets.
Evaluation (`EvalDataset`): the stored frames of real and fake videos, optionally with a synthetic fake copy
of every real video for data sets without fakes.

Reproducibility: an item's randomness comes only from np.random.default_rng([seed, epoch, index]), so a run
gives the same samples with any number of workers. HDF5 files are opened lazily in the process that reads
(ShardReader), so readers built before the DataLoader forks are safe.
"""
from __future__ import annotations

import argparse
import sys
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import cv2
import numpy as np
import torch
from torch.utils.data import Dataset

from model.augment import (AugmentConfig, apply_geometry, photometric_pair, random_erase, sample_geometry, warp,
                           warp_box)
from model.bi_index import build_donor_table
from model.synthesis import BIConfig, SBIConfig, bi, sbi, sbi_fake_for_eval
from model.targets import boundary, boundary_u8, make_targets
from pipeline.shards import ShardError, ShardReader, shard_paths

HEATMAP_STRIDE = 4


@dataclass
class DataConfig:
    """Where the training faces are and how pairs are made from them.

    shards: split folders (each with index.json), e.g. ["shards/ffpp/train"]; only real videos are used.
    frames_per_video: frames drawn afresh per video every epoch. image_size: network input side S
    (targets are S/4). synthesis: "sbi" (self-blended) or "bi" (blended with a landmark-nearest face of
    another video). target_mode: "reference" or "paper" (see model.targets.make_targets). augment: the
    training augmentations of model.augment. forehead: extend the masks over the forehead. seed: base of
    every per-sample generator (seed, epoch, index). bi_neighbours: donors kept per frame for BI.
    """

    shards: list[str] = field(default_factory=list)
    frames_per_video: int = 8
    image_size: int = 384
    synthesis: Literal["sbi", "bi"] = "sbi"
    target_mode: Literal["reference", "paper"] = "reference"
    augment: bool = True
    forehead: bool = False
    seed: int = 0
    bi_neighbours: int = 30


def video_key(row: dict) -> str:
    """A video id unique across data sets and methods: "<dataset>/<method>/<id>" (the method is not repeated
    when the id already starts with it, e.g. FF++ "Deepfakes/000_003" -> "ffpp/Deepfakes/000_003")."""
    vid, method = str(row.get("id", "")), str(row.get("method", ""))
    dataset = str(row.get("dataset", ""))
    return f"{dataset}/{vid}" if vid.startswith(method + "/") else f"{dataset}/{method}/{vid}"


def fit_face(face: np.ndarray, landmarks: np.ndarray | None, size: int) -> tuple[np.ndarray, np.ndarray | None]:
    """Resize an (S, S, 3) crop to (size, size, 3) (area filter when shrinking) and its landmarks with it."""
    s = face.shape[0]
    if s == size:
        return face, landmarks
    interp = cv2.INTER_AREA if size < s else cv2.INTER_LINEAR
    face = cv2.resize(face, (size, size), interpolation=interp)
    if landmarks is not None:
        landmarks = (landmarks + 0.5) * (size / s) - 0.5
    return face, landmarks


def to_tensor(images: np.ndarray) -> torch.Tensor:
    """uint8 (..., S, S, 3) -> float32 (..., 3, S, S) in [-1, 1] (x / 127.5 - 1)."""
    t = torch.from_numpy(np.ascontiguousarray(images))
    return t.movedim(-1, -3).float().div_(127.5).sub_(1.0)


class _Shards:
    """Readers of every finished shard of some split folders, with the per-face tables concatenated."""

    def __init__(self, split_dirs: list[str]):
        if not split_dirs:
            raise ValueError("no shard folders given (data.shards is empty)")
        self.readers = [ShardReader(p) for d in split_dirs for p in shard_paths(d)]
        if not self.readers:
            raise ValueError(f"no finished shards listed in {', '.join(map(str, split_dirs))}")

    def videos(self):
        """Yield (shard number, video row dict, rows of that video's faces sorted by frame index)."""
        for si, r in enumerate(self.readers):
            order = np.lexsort((r.frame_index, r.video))
            vids = r.video[order]
            starts = np.flatnonzero(np.r_[True, vids[1:] != vids[:-1]]) if len(vids) else []
            ends = list(starts[1:]) + [len(vids)]
            for a, b in zip(starts, ends):
                yield si, r.videos[int(vids[a])], order[a:b]


class TrainPairDataset(Dataset):
    """(real, pseudo-fake) pairs from the real videos of `cfg.shards`.

    Frames without landmarks (landmark_ok False) cannot be blended: they are left out of the draw and
    counted in `self.skipped` ({"frames_without_landmarks", "videos_without_landmarks", "fake_videos"}),
    reported once as a warning; nothing is replaced. An epoch holds min(frames_per_video, usable frames)
    items per video, so len() is the same every epoch.

    __getitem__(i) -> dict: real, fake uint8 (S, S, 3); heatmap, consistency, boundary, mask float32
    (S/4, S/4) (the fake's targets; the real's are all zero); video_id str; frame_index int; kind str
    (mask type); ratio float (blend ratio).
    """

    def __init__(self, cfg: DataConfig, sbi_cfg: SBIConfig | None = None, bi_cfg: BIConfig | None = None,
                 augment_cfg: AugmentConfig | None = None):
        if cfg.image_size % HEATMAP_STRIDE:
            raise ValueError(f"data.image_size must be a multiple of {HEATMAP_STRIDE}, got {cfg.image_size}")
        if cfg.frames_per_video < 1:
            raise ValueError(f"data.frames_per_video must be >= 1, got {cfg.frames_per_video}")
        if cfg.synthesis not in ("sbi", "bi"):
            raise ValueError(f"data.synthesis must be 'sbi' or 'bi', got {cfg.synthesis!r}")
        if cfg.target_mode not in ("reference", "paper"):
            raise ValueError(f"data.target_mode must be 'reference' or 'paper', got {cfg.target_mode!r}")
        self.cfg = cfg
        self.sbi_cfg = sbi_cfg or SBIConfig(forehead=cfg.forehead)
        self.bi_cfg = bi_cfg or BIConfig(forehead=cfg.forehead)
        self.augment_cfg = (augment_cfg or AugmentConfig()) if cfg.augment else None
        self.shards = _Shards(cfg.shards)
        # All landmarks in memory (544 bytes a face, 50 MB for FF++'s 92k training frames): one HDF5 read per
        # item instead of two. Read with short-lived handles so nothing is open when workers fork.
        self.landmarks = [r.read("landmarks") if r.has_landmarks else None for r in self.shards.readers]
        for r in self.shards.readers:
            r.close()
        self.skipped = {"frames_without_landmarks": 0, "videos_without_landmarks": 0, "fake_videos": 0}
        # One entry per usable video: (video key, shard number, rows with landmarks sorted by frame index).
        self.videos: list[tuple[str, int, np.ndarray]] = []
        for si, row, rows in self.shards.videos():
            if int(row.get("label", 0)) != 0:
                self.skipped["fake_videos"] += 1
                continue
            ok = self.shards.readers[si].landmark_ok[rows]
            self.skipped["frames_without_landmarks"] += int((~ok).sum())
            if not ok.any():
                self.skipped["videos_without_landmarks"] += 1
                continue
            self.videos.append((video_key(row), si, rows[ok]))
        if not self.videos:
            raise ValueError(f"{', '.join(cfg.shards)}: no real video with landmarks to train on "
                             f"(skipped: {self.skipped}); run the landmark stage first")
        if any(self.skipped.values()):
            warnings.warn(f"TrainPairDataset: left out {self.skipped} in {', '.join(cfg.shards)}", stacklevel=2)
        self.donors = self._donor_table() if cfg.synthesis == "bi" else None
        self.epoch = 0
        self.items: list[tuple[int, int, int]] = []
        self.set_epoch(0)

    # ---------------------------------------------------------------------------------------- epochs
    def set_epoch(self, epoch: int) -> None:
        """Draw the frames of `epoch`: for video v, `frames_per_video` distinct frames (all if fewer) chosen by
        np.random.default_rng([seed, epoch, v, 1]) (independent of workers and of other videos)."""
        self.epoch = int(epoch)
        items = []
        for v, (_, si, rows) in enumerate(self.videos):
            rng = np.random.default_rng([self.cfg.seed, self.epoch, v, 1])
            k = min(self.cfg.frames_per_video, len(rows))
            pick = np.sort(rng.choice(len(rows), k, replace=False))
            items.extend((v, si, int(rows[j])) for j in pick)
        self.items = items

    def __len__(self) -> int:
        return len(self.items)

    # ------------------------------------------------------------------------------------------- BI
    def _donor_table(self) -> tuple[np.ndarray, np.ndarray]:
        """(faces (F, 2) shard/row of every usable frame, donors (F, k) indices into faces)."""
        faces, lms, vids = [], [], []
        for v, (_, si, rows) in enumerate(self.videos):
            faces.append(np.stack([np.full(len(rows), si), rows], 1))
            lms.append(self.landmarks[si][rows])
            vids.append(np.full(len(rows), v))
        faces_arr = np.concatenate(faces)
        table = build_donor_table(np.concatenate(lms), np.concatenate(vids), k=self.cfg.bi_neighbours,
                                  rng=np.random.default_rng([self.cfg.seed, 2]))
        if (table[:, 0] < 0).any():
            raise ValueError("BI needs at least two videos with landmarks")
        self._face_pos = {(int(s), int(r)): i for i, (s, r) in enumerate(faces_arr)}
        return faces_arr, table

    def donor_of(self, si: int, row: int, rng: np.random.Generator) -> tuple[int, int]:
        """(shard, row) of a donor drawn uniformly among the k nearest of face (si, row)."""
        faces, table = self.donors
        cands = table[self._face_pos[(si, row)]]
        cands = cands[cands >= 0]
        d = int(cands[int(rng.integers(len(cands)))])
        return int(faces[d, 0]), int(faces[d, 1])

    # ------------------------------------------------------------------------------------------ items
    def _read(self, si: int, row: int) -> tuple[np.ndarray, np.ndarray]:
        reader = self.shards.readers[si]
        face, lm = reader.face(row), self.landmarks[si][row]
        if not np.isfinite(lm).all():
            raise ValueError(f"{reader.path}: face {row} is marked landmark_ok but its landmarks are not finite")
        return fit_face(face, lm, self.cfg.image_size)

    def __getitem__(self, index: int) -> dict:
        v, si, row = self.items[index]
        rng = np.random.default_rng([self.cfg.seed, self.epoch, index])
        face, lm = self._read(si, row)
        try:
            if self.cfg.synthesis == "sbi":
                pair = sbi(face, lm, rng, self.sbi_cfg)
            else:
                dsi, drow = self.donor_of(si, row, rng)
                donor, donor_lm = self._read(dsi, drow)
                pair = bi(face, lm, donor, donor_lm, rng, self.bi_cfg)
        except ValueError as e:
            raise ValueError(f"{self.shards.readers[si].path}: face {row}: {e}") from e
        out = self.cfg.image_size
        hm_size = out // HEATMAP_STRIDE
        geom = sample_geometry(rng, self.augment_cfg, pair.real.shape[0], pair.crop)
        geo = geom.norm_map()
        real, fake = apply_geometry(pair.real, geom, out), apply_geometry(pair.fake, geom, out)
        # The fake equals the real outside this box: photometric_pair only processes the fake near it.
        box = warp_box(pair.box, geo, pair.real.shape[0], out)
        mask = warp(pair.mask, geo, hm_size)
        if self.cfg.target_mode == "reference":
            # The reference stores B as floor(255 B) and resamples that uint8 map to heatmap size.
            b = warp(boundary_u8(pair.mask), geo, hm_size).astype(np.float32) / 255.0
        else:
            b = warp(boundary(pair.mask), geo, hm_size)
        if self.augment_cfg is not None:
            real, fake = photometric_pair(real, fake, box, rng, self.augment_cfg)
            (real, fake), (b, mask) = random_erase([real, fake], [b, mask], rng, self.augment_cfg)
        heatmap, consistency = make_targets(np.clip(b, 0.0, 1.0), self.cfg.target_mode, rng)
        reader = self.shards.readers[si]
        return {"real": real, "fake": fake, "heatmap": heatmap, "consistency": consistency, "boundary": b,
                "mask": mask, "video_id": self.videos[v][0], "frame_index": int(reader.frame_index[row]),
                "kind": pair.kind, "ratio": pair.ratio}


def collate_pairs(pairs: list[dict]) -> dict:
    """N pair dicts -> a batch of 2N images: the N reals first, then their N fakes in the same order
    (image j + N is the fake of image j).

    Returns image float32 (2N, 3, S, S) in [-1, 1]; label float32 (2N,) (0 real, 1 fake); heatmap float32
    (2N, 1, S/4, S/4); consistency float32 (2N, S/4, S/4) (zeros for the reals); video_id list[str] (2N);
    frame_index int64 (2N,).
    """
    n = len(pairs)
    images = np.stack([p["real"] for p in pairs] + [p["fake"] for p in pairs])
    hm = np.stack([p["heatmap"] for p in pairs])
    cons = np.stack([p["consistency"] for p in pairs])
    zeros = np.zeros_like(hm)
    frame = [p["frame_index"] for p in pairs]
    vids = [p["video_id"] for p in pairs]
    return {
        "image": to_tensor(images),
        "label": torch.cat([torch.zeros(n), torch.ones(n)]),
        "heatmap": torch.from_numpy(np.concatenate([zeros, hm]))[:, None],
        "consistency": torch.from_numpy(np.concatenate([zeros, cons])),
        "video_id": vids + vids,
        "frame_index": torch.tensor(frame + frame, dtype=torch.int64),
    }


# -------------------------------------------------------------------------------------------- evaluation
class EvalDataset(Dataset):
    """Stored frames of every video (real and fake) of some split folders, for validation and testing.

    frames_per_video: None keeps every stored frame; k keeps k evenly spaced ones (by frame order).
    synthetic_fakes: None, "sbi" or "bi": also add, for every REAL video, a fake video made of synthetic
    fakes of its frames (id "<video id>/sbi" or "/bi", label 1, method "sbi"/"bi"). SBI fakes come from
    `sbi_fake_for_eval` seeded by (seed, shard, row), so they are the same in every run and worker; BI uses
    the nearest-landmark donor (from another real video) of each frame. Frames without landmarks are kept as
    real frames but get no synthetic fake; they are counted in `self.skipped`.

    Items: image float32 tensor (3, S, S) in [-1, 1]; label int; video_id str ("<dataset>/<method>/<id>");
    method str; frame_index int; shard str (path); row int.
    """

    def __init__(self, split_dirs: list[str], image_size: int, frames_per_video: int | None = None,
                 synthetic_fakes: str | None = None, seed: int = 0):
        if synthetic_fakes not in (None, "sbi", "bi"):
            raise ValueError(f"synthetic_fakes must be None, 'sbi' or 'bi', got {synthetic_fakes!r}")
        if frames_per_video is not None and frames_per_video < 1:
            raise ValueError(f"frames_per_video must be None or >= 1, got {frames_per_video}")
        self.image_size = int(image_size)
        self.synthetic_fakes = synthetic_fakes
        self.seed = int(seed)
        self.shards = _Shards(list(split_dirs))
        self.skipped = {"frames_without_landmarks": 0}
        # (shard, row, label, video_id, method, synthetic)
        self.items: list[tuple[int, int, int, str, str, bool]] = []
        fakes = []
        for si, row, rows in self.shards.videos():
            if frames_per_video is not None and len(rows) > frames_per_video:
                rows = rows[np.unique(np.round(np.linspace(0, len(rows) - 1, frames_per_video)).astype(int))]
            key, label, method = video_key(row), int(row.get("label", 0)), str(row.get("method", ""))
            self.items.extend((si, int(r), label, key, method, False) for r in rows)
            if synthetic_fakes and label == 0:
                ok = self.shards.readers[si].landmark_ok[rows]
                self.skipped["frames_without_landmarks"] += int((~ok).sum())
                fakes.extend((si, int(r), 1, f"{key}/{synthetic_fakes}", synthetic_fakes, True) for r in rows[ok])
        self.items.extend(fakes)
        if self.skipped["frames_without_landmarks"]:
            warnings.warn(f"EvalDataset: {self.skipped['frames_without_landmarks']} real frames have no landmarks "
                          f"and get no synthetic fake", stacklevel=2)
        self._donors = self._bi_donors(fakes) if synthetic_fakes == "bi" else None

    def _bi_donors(self, fakes: list) -> dict[tuple[int, int], tuple[int, int]]:
        """Nearest donor (another real video) for every frame that gets a BI fake."""
        if not fakes:
            return {}
        faces = [(si, r) for si, r, *_ in fakes]
        lms = np.stack([self.shards.readers[si].landmarks(r) for si, r in faces])
        vids = np.unique([f[3] for f in fakes], return_inverse=True)[1]
        for reader in self.shards.readers:
            reader.close()
        table = build_donor_table(lms, vids, k=1)
        if (table[:, 0] < 0).any():
            raise ValueError("synthetic_fakes='bi' needs at least two real videos with landmarks")
        return {faces[i]: faces[int(table[i, 0])] for i in range(len(faces))}

    def __len__(self) -> int:
        return len(self.items)

    def item_video_id(self, index: int) -> str:
        """video_id of item `index` without reading any image."""
        return self.items[index][3]

    def __getitem__(self, index: int) -> dict:
        si, row, label, key, method, synthetic = self.items[index]
        reader = self.shards.readers[si]
        face = reader.face(row)
        if synthetic:
            lm = reader.landmarks(row)
            seed = np.random.SeedSequence([self.seed, si, row])
            if self.synthetic_fakes == "sbi":
                face = sbi_fake_for_eval(face, lm, seed)
            else:
                dsi, drow = self._donors[(si, row)]
                donor = self.shards.readers[dsi]
                face = bi(face, lm, donor.face(drow), donor.landmarks(drow), np.random.default_rng(seed)).fake
        face, _ = fit_face(face, None, self.image_size)
        return {"image": to_tensor(face), "label": label, "video_id": key, "method": method,
                "frame_index": int(reader.frame_index[row]), "shard": str(reader.path), "row": row}


def collate_eval(items: list[dict]) -> dict:
    """Stack EvalDataset items: image (B, 3, S, S), label int64 (B,), frame_index int64 (B,), row int64 (B,);
    video_id, method, shard as lists."""
    return {
        "image": torch.stack([it["image"] for it in items]),
        "label": torch.tensor([it["label"] for it in items], dtype=torch.int64),
        "video_id": [it["video_id"] for it in items],
        "method": [it["method"] for it in items],
        "frame_index": torch.tensor([it["frame_index"] for it in items], dtype=torch.int64),
        "shard": [it["shard"] for it in items],
        "row": torch.tensor([it["row"] for it in items], dtype=torch.int64),
    }


# ------------------------------------------------------------------------------------------------ preview
def preview_grid(dataset: TrainPairDataset, n: int, cell: int = 192) -> np.ndarray:
    """uint8 RGB grid, one row per sample: real | fake | mask | boundary | heatmap | consistency."""
    def gray(m: np.ndarray) -> np.ndarray:
        g = cv2.resize((np.clip(m, 0, 1) * 255).astype(np.uint8), (cell, cell), interpolation=cv2.INTER_NEAREST)
        return cv2.applyColorMap(g, cv2.COLORMAP_INFERNO)[..., ::-1]

    rows = []
    for i in range(min(n, len(dataset))):
        p = dataset[i]
        tiles = [cv2.resize(p["real"], (cell, cell), interpolation=cv2.INTER_AREA),
                 cv2.resize(p["fake"], (cell, cell), interpolation=cv2.INTER_AREA)]
        tiles += [gray(p[k]) for k in ("mask", "boundary", "heatmap", "consistency")]
        rows.append(np.concatenate(tiles, 1))
    header = np.full((28, rows[0].shape[1], 3), 255, np.uint8)
    for j, name in enumerate(("real", "fake", "mask M", "boundary B", "heatmap H", "consistency C")):
        cv2.putText(header, name, (j * cell + 6, 20), cv2.FONT_HERSHEY_SIMPLEX, 0.55, (0, 0, 0), 1, cv2.LINE_AA)
    return np.concatenate([header] + rows, 0)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m model.data", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("preview", help="write a PNG grid of training pairs and their targets")
    p.add_argument("--shards", nargs="+", required=True, help="split folder(s) with index.json")
    p.add_argument("--out", required=True, help="output PNG path")
    p.add_argument("-n", type=int, default=6, help="number of samples (rows)")
    p.add_argument("--synthesis", choices=("sbi", "bi"), default="sbi")
    p.add_argument("--target-mode", choices=("reference", "paper"), default="reference")
    p.add_argument("--image-size", type=int, default=384)
    p.add_argument("--forehead", action="store_true", help="extend the masks over the forehead")
    p.add_argument("--no-augment", action="store_true")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--epoch", type=int, default=0)
    args = parser.parse_args(argv)
    cfg = DataConfig(shards=list(args.shards), synthesis=args.synthesis, target_mode=args.target_mode,
                     image_size=args.image_size, forehead=args.forehead, augment=not args.no_augment,
                     seed=args.seed)
    try:
        ds = TrainPairDataset(cfg)
        ds.set_epoch(args.epoch)
        grid = preview_grid(ds, args.n)
    except (ValueError, ShardError) as e:
        print(f"preview: {e}", file=sys.stderr)
        return 2
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    if not cv2.imwrite(str(out), grid[..., ::-1]):
        print(f"{out}: could not write the PNG", file=sys.stderr)
        return 1
    print(f"{out}: {min(args.n, len(ds))} samples of {len(ds)} ({len(ds.videos)} videos, epoch {args.epoch}, "
          f"skipped {ds.skipped})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
