"""Training and evaluation Datasets over HDF5 face shards (see pipeline.shards for the schema).

Training (`TrainPairDataset`): real videos only. Every epoch draws `frames_per_video` frames per video afresh
(`set_epoch`), and each item is a (real, pseudo-fake) pair made from one frame: SBI by default, or BI with a
landmark-nearest donor from another video. Items carry uint8 images (cheap to pass between DataLoader
workers); `collate_pairs` stacks N pairs into 2N normalised images with labels and targets.
Evaluation (`EvalDataset`): the stored frames of real and fake videos, optionally with a synthetic fake copy
of every real video for data sets without fakes.

Reproducibility: an item's randomness comes only from np.random.default_rng([seed, epoch, index]), so a run
gives the same samples with any number of workers. Shard files are read through `model.data.pool` (opened
lazily, at most `data.max_open_shards` open per process). `EpochSampler` hands the training set
(epoch, index) keys, so persistent workers follow the epochs without a per-worker `set_epoch`.
"""
from __future__ import annotations

import warnings
from typing import NamedTuple

import numpy as np
import torch
from torch.utils.data import Dataset, DistributedSampler

from model.config import SIGMA_RULES, AugmentConfig, BIConfig, ConfigError, DataConfig, SBIConfig
from model.data.augment import apply_geometry, photometric_pair, sample_geometry, warp_box
from model.data.bi import bi
from model.data.bi_index import build_donor_table
from model.data.face_scale import REFERENCE_TEST_SCALE, eval_view, fit_face, view_fraction
from model.data.pool import ShardPool, video_key
from model.data.sbi import sbi, sbi_fake_for_eval
from model.data.targets import boundary, boundary_u8, make_targets
from model.data.tensors import to_tensor
from pipeline.shards import ShardError

HEATMAP_STRIDE = 4


class TrainVideo(NamedTuple):
    """A real video `TrainPairDataset` draws frames from."""

    key: str              # "<dataset>/<method>/<id>" (`video_key`)
    shard: int            # number of its shard in the dataset's `ShardPool`
    rows: np.ndarray      # rows of its frames with landmarks, sorted by frame index


class PairItem(NamedTuple):
    """One pair of `TrainPairDataset`'s current epoch: the frame a (real, pseudo-fake) pair is made from."""

    video: int            # index into `TrainPairDataset.videos`
    shard: int            # shard number in the `ShardPool`
    row: int              # the frame's row in that shard


class EvalItem(NamedTuple):
    """One frame `EvalDataset` serves (a stored frame, or the synthetic fake made from one)."""

    shard: int            # shard number in the `ShardPool`
    row: int              # the frame's row in that shard
    label: int            # 0 real, 1 fake
    video_id: str         # "<dataset>/<method>/<id>"; "<id of the real video>/sbi" (or "/bi") for synthetic fakes
    method: str
    synthetic: bool       # a synthetic fake of the stored (real) frame


class TrainPairDataset(Dataset):
    """(real, pseudo-fake) pairs from the real videos of `cfg.shards`.

    Frames without landmarks (landmark_ok False) cannot be blended: they are left out of the draw and
    counted in `self.skipped` ({"frames_without_landmarks", "videos_without_landmarks", "fake_videos"}),
    reported once as a warning; nothing is replaced. An epoch holds min(frames_per_video, usable frames)
    items per video, so len() is the same every epoch.

    __getitem__(i) -> dict: real, fake uint8 (S, S, 3); heatmap, consistency, boundary, mask float32
    (S/4, S/4) (the fake's targets; the real's are all zero); video_id str; frame_index int; kind str
    (mask type); ratio float (blend ratio); flipped bool and aug_side str (synthesis draws); applied
    tuple[str] (every augmentation step that fired, "source/...", "geo/...", "colour/..."); face_scale
    float (image side / face-box side of this pair).
    """

    def __init__(self, cfg: DataConfig, sbi_cfg: SBIConfig | None = None, bi_cfg: BIConfig | None = None,
                 augment_cfg: AugmentConfig | None = None):
        if cfg.image_size % HEATMAP_STRIDE:
            raise ConfigError(f"data.image_size must be a multiple of {HEATMAP_STRIDE}, got {cfg.image_size}")
        if cfg.frames_per_video < 1:
            raise ConfigError(f"data.frames_per_video must be >= 1, got {cfg.frames_per_video}")
        if cfg.synthesis not in ("sbi", "bi"):
            raise ConfigError(f"data.synthesis must be 'sbi' or 'bi', got {cfg.synthesis!r}")
        if cfg.target_mode not in ("reference", "paper"):
            raise ConfigError(f"data.target_mode must be 'reference' or 'paper', got {cfg.target_mode!r}")
        if cfg.sigma_rule not in SIGMA_RULES:
            raise ConfigError(f"data.sigma_rule must be one of {SIGMA_RULES}, got {cfg.sigma_rule!r}")
        self.cfg = cfg
        self.sbi_cfg = sbi_cfg or SBIConfig()
        self.bi_cfg = bi_cfg or BIConfig()
        self.augment_cfg = augment_cfg or AugmentConfig()
        self.shards = ShardPool(cfg.shards, cfg.max_open_shards)
        # All landmarks in memory (544 bytes a face, 50 MB for FF++'s 92k training frames): one HDF5 read per
        # item instead of two. Read with short-lived handles so nothing is open when workers fork.
        self.landmarks = []
        for r in self.shards.readers:  # one file open at a time
            self.landmarks.append(r.read("landmarks") if r.has_landmarks else None)
            r.close()
        self.skipped = {"frames_without_landmarks": 0, "videos_without_landmarks": 0, "fake_videos": 0}
        # One entry per usable video.
        self.videos: list[TrainVideo] = []
        for si, row, rows in self.shards.videos():
            if int(row.get("label", 0)) != 0:
                self.skipped["fake_videos"] += 1
                continue
            ok = self.shards.readers[si].landmark_ok[rows]
            self.skipped["frames_without_landmarks"] += int((~ok).sum())
            if not ok.any():
                self.skipped["videos_without_landmarks"] += 1
                continue
            self.videos.append(TrainVideo(video_key(row), si, rows[ok]))
        if not self.videos:
            raise ShardError(f"{', '.join(cfg.shards)}: no real video with landmarks to train on "
                             f"(skipped: {self.skipped}); run the landmark stage first")
        if any(self.skipped.values()):
            warnings.warn(f"TrainPairDataset: left out {self.skipped} in {', '.join(cfg.shards)}", stacklevel=2)
        self.donors = self._donor_table() if cfg.synthesis == "bi" else None
        self.epoch = 0
        self.items: list[PairItem] = []
        self.set_epoch(0)

    # ---------------------------------------------------------------------------------------- epochs
    def set_epoch(self, epoch: int) -> None:
        """Make `epoch` the epoch of plain integer indices (see `__getitem__` for (epoch, index) keys)."""
        self._draw(epoch)

    def _draw(self, epoch: int) -> None:
        """Draw the frames of `epoch`: for video v, `frames_per_video` distinct frames (all if fewer) chosen by
        np.random.default_rng([seed, epoch, v, 1]) (independent of workers and of other videos); with
        data.redraw_frames False, the epoch-0 frames every epoch (the synthesis is still drawn afresh)."""
        self.epoch = int(epoch)
        draw_epoch = self.epoch if self.cfg.redraw_frames else 0
        items = []
        for v, (_, si, rows) in enumerate(self.videos):
            rng = np.random.default_rng([self.cfg.seed, draw_epoch, v, 1])
            k = min(self.cfg.frames_per_video, len(rows))
            pick = np.sort(rng.choice(len(rows), k, replace=False))
            items.extend(PairItem(v, si, int(rows[j])) for j in pick)
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
            raise ShardError("BI needs at least two videos with landmarks")
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
        reader = self.shards.open(si)
        face, lm = reader.face(row), self.landmarks[si][row]
        if not np.isfinite(lm).all():
            raise ShardError(f"{reader.path}: face {row} is marked landmark_ok but its landmarks are not finite")
        return fit_face(face, lm, self.cfg.image_size)

    def __getitem__(self, key: int | tuple[int, int]) -> dict:
        """Pair `key`: an index into the current epoch's draw, or an (epoch, index) tuple (`EpochSampler`).

        The tuple form carries the epoch with every index, so persistent DataLoader workers, whose dataset
        copies never see the main process's `set_epoch`, still draw each epoch's frames and synthesis.
        """
        if isinstance(key, tuple):
            epoch, index = (int(k) for k in key)
            if epoch != self.epoch:
                self._draw(epoch)
        else:
            index = int(key)
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
            raise ShardError(f"{self.shards.readers[si].path}: face {row}: {e}") from e
        out = self.cfg.image_size
        hm_size = out // HEATMAP_STRIDE
        size_in = pair.real.shape[0]
        geom = sample_geometry(rng, self.augment_cfg, pair.crop, size_in)
        real, fake = apply_geometry(pair.real, geom, out), apply_geometry(pair.fake, geom, out)
        # The fake equals the real outside this box: photometric_pair only processes the fake near it.
        box = warp_box(pair.box, geom.full_map(), size_in, out)
        mask = apply_geometry(pair.mask, geom, hm_size, is_map=True)
        if self.cfg.target_mode == "reference":
            # The reference stores B as floor(255 B) and resamples that uint8 map to heatmap size.
            b = apply_geometry(boundary_u8(pair.mask), geom, hm_size, is_map=True).astype(np.float32) / 255.0
        else:
            b = apply_geometry(boundary(pair.mask), geom, hm_size, is_map=True)
        colour_applied: tuple[str, ...] = ()
        if self.augment_cfg.enabled:
            real, fake, colour_applied = photometric_pair(real, fake, box, rng, self.augment_cfg)
        heatmap, consistency = make_targets(np.clip(b, 0.0, 1.0), self.cfg.target_mode, rng,
                                            sigma_rule=self.cfg.sigma_rule, centre=self.cfg.heatmap_centre,
                                            wrap=self.cfg.run_wrap)
        reader = self.shards.readers[si]
        applied = (tuple(f"source/{a}" for a in pair.applied) + tuple(f"geo/{a}" for a in geom.applied)
                   + tuple(f"colour/{a}" for a in colour_applied))
        return {"real": real, "fake": fake, "heatmap": heatmap, "consistency": consistency, "boundary": b,
                "mask": mask, "video_id": self.videos[v].key, "frame_index": int(reader.frame_index[row]),
                "kind": pair.kind, "ratio": pair.ratio, "flipped": pair.flipped, "aug_side": pair.aug_side,
                "applied": applied, "face_scale": self.shards.crop_scales[si] * geom.kept}


class EpochSampler(DistributedSampler):
    """A DistributedSampler whose items are (epoch, index) keys for `TrainPairDataset`.

    The epoch is set in the main process (`set_epoch`) and travels with every index to the workers, so
    persistent DataLoader workers draw each epoch's frames and pseudo-fakes although their dataset copies
    were made once. Shuffling is the DistributedSampler's: a function of (seed, epoch) only.
    """

    def __iter__(self):
        epoch = self.epoch
        return ((epoch, i) for i in super().__iter__())


def collate_pairs(pairs: list[dict]) -> dict:
    """N pair dicts -> a batch of 2N images: the N reals first, then their N fakes in the same order
    (image j + N is the fake of image j).

    Returns image uint8 (2N, S, S, 3) RGB (the trainer normalises on its device, `normalise_images`: a
    quarter of the bytes to move and no float conversion in the loader workers, 0.8 ms per pair on one
    core); label float32 (2N,) (0 real, 1 fake); heatmap float32 (2N, 1, S/4, S/4); consistency float32
    (2N, S/4, S/4) (zeros for the reals); video_id list[str] (2N); frame_index int64 (2N,).
    """
    n = len(pairs)
    images = np.stack([p["real"] for p in pairs] + [p["fake"] for p in pairs])
    hm = np.stack([p["heatmap"] for p in pairs])
    cons = np.stack([p["consistency"] for p in pairs])
    zeros = np.zeros_like(hm)
    frame = [p["frame_index"] for p in pairs]
    vids = [p["video_id"] for p in pairs]
    return {
        "image": torch.from_numpy(images),
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

    only_real: leave the fake videos out (validation on synthetic fakes of the reals only).
    max_open_shards: shard files kept open at once per process (least recently used closed first).
    face_scale: faces are shown at this many face-box sides (the central part of the stored crop, see
    `eval_view`); default the reference's test geometry, None the whole stored crop.

    Items: image float32 tensor (3, S, S) in [-1, 1]; label int; video_id str ("<dataset>/<method>/<id>");
    method str; frame_index int; shard str (path); row int.
    """

    def __init__(self, split_dirs: list[str], image_size: int, frames_per_video: int | None = None,
                 synthetic_fakes: str | None = None, seed: int = 0,
                 face_scale: float | None = REFERENCE_TEST_SCALE, only_real: bool = False, max_open_shards: int = 32):
        if synthetic_fakes not in (None, "sbi", "bi"):
            raise ValueError(f"synthetic_fakes must be None, 'sbi' or 'bi', got {synthetic_fakes!r}")
        if frames_per_video is not None and frames_per_video < 1:
            raise ValueError(f"frames_per_video must be None or >= 1, got {frames_per_video}")
        self.image_size = int(image_size)
        self.synthetic_fakes = synthetic_fakes
        self.seed = int(seed)
        self.shards = ShardPool(list(split_dirs), max_open_shards)
        self.face_scale = face_scale
        for cs in set(self.shards.crop_scales):
            view_fraction(cs, face_scale)                               # fail now, not in a worker
        self.skipped = {"frames_without_landmarks": 0}
        self.items: list[EvalItem] = []
        fakes = []
        for si, row, rows in self.shards.videos():
            if frames_per_video is not None and len(rows) > frames_per_video:
                rows = rows[np.unique(np.round(np.linspace(0, len(rows) - 1, frames_per_video)).astype(int))]
            key, label, method = video_key(row), int(row.get("label", 0)), str(row.get("method", ""))
            if only_real and label != 0:
                continue
            self.items.extend(EvalItem(si, int(r), label, key, method, False) for r in rows)
            if synthetic_fakes and label == 0:
                ok = self.shards.readers[si].landmark_ok[rows]
                self.skipped["frames_without_landmarks"] += int((~ok).sum())
                fakes.extend(EvalItem(si, int(r), 1, f"{key}/{synthetic_fakes}", synthetic_fakes, True)
                             for r in rows[ok])
        self.items.extend(fakes)
        if self.skipped["frames_without_landmarks"]:
            warnings.warn(f"EvalDataset: {self.skipped['frames_without_landmarks']} real frames have no landmarks "
                          f"and get no synthetic fake", stacklevel=2)
        self._donors = self._bi_donors(fakes) if synthetic_fakes == "bi" else None

    def _bi_donors(self, fakes: list[EvalItem]) -> dict[tuple[int, int], tuple[int, int]]:
        """Nearest donor (another real video) for every frame that gets a BI fake."""
        if not fakes:
            return {}
        faces = [(f.shard, f.row) for f in fakes]
        lms = np.stack([self.shards.open(si).landmarks(r) for si, r in faces])
        vids = np.unique([f.video_id for f in fakes], return_inverse=True)[1]
        self.shards.close()  # nothing open when workers fork
        table = build_donor_table(lms, vids, k=1)
        if (table[:, 0] < 0).any():
            raise ShardError("synthetic_fakes='bi' needs at least two real videos with landmarks")
        return {faces[i]: faces[int(table[i, 0])] for i in range(len(faces))}

    def __len__(self) -> int:
        return len(self.items)

    def item_video_id(self, index: int) -> str:
        """video_id of item `index` without reading any image."""
        return self.items[index].video_id

    def __getitem__(self, index: int) -> dict:
        si, row, label, key, method, synthetic = self.items[index]
        reader = self.shards.open(si)
        face = reader.face(row)
        if synthetic:
            lm = reader.landmarks(row)
            seed = np.random.SeedSequence([self.seed, si, row])
            if self.synthetic_fakes == "sbi":
                face = sbi_fake_for_eval(face, lm, seed)
            else:
                dsi, drow = self._donors[(si, row)]
                donor = self.shards.open(dsi)
                face = bi(face, lm, donor.face(drow), donor.landmarks(drow), np.random.default_rng(seed)).fake
        face = eval_view(face, self.image_size, self.shards.crop_scales[si], self.face_scale)
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
