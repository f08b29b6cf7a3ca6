"""Training-pair throughput on ONE core, against a straightforward full-resolution implementation of the recipe.

    python -m bench.bench_data                      # shard built from the shipped dlib example faces (384 crops)
    python -m bench.bench_data --shards DIR         # a prepared split folder (real pipeline shards)
    python -m bench.bench_data --donor-table 92000  # also time the BI donor table on N synthetic faces
    python -m bench.bench_data forehead             # mask coverage with and without the forehead extension
    python -m bench.bench_data fidelity             # our pairs vs the reference's measured distribution

A "pair" is what TrainPairDataset + collate_pairs deliver: a (real, SBI fake) pair read from a shard, with
training augmentation, as float tensors at --size plus size/4 targets. The baseline does the same work the
way the recipe is usually written: masks, warps, blurs and the blend at full crop resolution in float, the
source transforms and the training augmentation through albumentations (the reference's transform types,
rates and ranges), targets from the full-resolution boundary. `fidelity` compares our default pairs with
the reference implementation's measured distribution (../shared/reference/sbi_distribution.json): every
figure we can compute, ours, the reference's and the gap. Both run in this process with one thread (cv2, torch).
"""
from __future__ import annotations

import argparse
import math
import os
import tempfile
import time
from pathlib import Path

import cv2
import numpy as np

from tests.face_fixtures import FULL_SETS, SMALL_SET, example_crops, write_example_split


def build_shard(root: Path, size: int, frames: int = 16) -> Path:
    """A split folder with one video per fixture face, `frames` slightly shifted frames each."""
    return write_example_split(root, size, SMALL_SET, frames)


# ------------------------------------------------------------------------------------------------ baseline
class Baseline:
    """The recipe written plainly: full-resolution float masks and blend, albumentations transforms."""

    def __init__(self, split: Path, size: int, seed: int = 0):
        import albumentations as A

        from pipeline.shards import ShardReader, shard_paths

        self.reader = ShardReader(shard_paths(split)[0])
        self.ok = np.flatnonzero(self.reader.landmark_ok)
        self.size = size
        self.rng = np.random.default_rng(seed)
        self.source_tf = A.Compose([
            A.RGBShift((-20, 20), (-20, 20), (-20, 20), p=0.3),
            A.HueSaturationValue((-0.3, 0.3), (-0.3, 0.3), (-0.3, 0.3), p=1),
            A.RandomBrightnessContrast((-0.1, 0.1), (-0.1, 0.1), p=1),
            A.OneOf([A.Downscale(scale_range=(0.25, 0.5), p=1), A.Sharpen((0.2, 0.5), (0.5, 1.0), p=1)], p=1),
        ], seed=seed)
        self.aug = A.Compose([
            A.HorizontalFlip(p=0.5),
            A.OneOf([A.Affine(translate_percent=(-0.07, 0.07), p=1), A.Affine(scale=(0.85, 1.15), p=1),
                     A.CoarseDropout(num_holes_range=(1, 1), hole_height_range=(0.14, 0.57),
                                     hole_width_range=(0.14, 0.57), fill=0, p=1)], p=0.5),
            A.Resize(size, size),
            A.RGBShift((-20, 20), (-20, 20), (-20, 20), p=0.3),
            A.HueSaturationValue((-0.3, 0.3), (-0.3, 0.3), (-0.3, 0.3), p=0.3),
            A.RandomBrightnessContrast((-0.3, 0.3), (-0.3, 0.3), p=0.3),
            A.ImageCompression(quality_range=(40, 100), p=0.5),
        ], additional_targets={"image1": "image", "mask1": "mask"}, seed=seed)

    def pair(self, i: int):
        import torch

        from model.data.blend import to_pixels
        from model.data.masks import MASK_KINDS, hull_mask
        from model.data.sbi import affine_about_centre, elastic_warp, flip_face
        from model.data.targets import make_targets

        rng = self.rng
        row = int(self.ok[i % len(self.ok)])
        face, lm = self.reader.face(row), self.reader.landmarks(row)
        s = face.shape[0]
        if rng.random() < 0.5:
            face, lm = flip_face(face, lm)
        mask = hull_mask(lm, (s, s), MASK_KINDS[int(rng.integers(4))]).astype(np.float32)
        src, tgt = face.copy(), face.copy()
        if rng.random() < 0.5:
            src = self.source_tf(image=src)["image"]
        else:
            tgt = self.source_tf(image=tgt)["image"]
        mat = to_pixels(affine_about_centre(rng.uniform(0.95, 1 / 0.95), rng.uniform(-0.03, 0.03),
                                            rng.uniform(-0.015, 0.015)), s, s)
        src = cv2.warpAffine(src, mat, (s, s), borderMode=cv2.BORDER_REFLECT_101)
        mask = cv2.warpAffine(mask, mat, (s, s))
        mask = elastic_warp(mask, rng, 50.0, 7.0 * s / 256, coarse=1)
        # Blur at full resolution (kernels scaled to this crop size so the masks match the 256-px recipe).
        f = s / 256
        h2, w2 = (max(8, int(s * rng.uniform(0.8, 1.25))) for _ in range(2))
        m = cv2.resize((mask >= 0.5).astype(np.float32), (w2, h2))
        k1 = 2 * int(f * rng.integers(2, 13)) + 1
        m = cv2.GaussianBlur(m, (k1, k1), 0)
        m = (m / m.max() >= 1.0).astype(np.float32)          # the reference keeps only the values == 1
        k2 = 2 * int(f * rng.integers(2, 13)) + 1
        m = cv2.GaussianBlur(m, (k2, k2), float(rng.integers(5, 46)) * f)
        m = cv2.resize(m / m.max(), (s, s))
        r = [0.25, 0.5, 0.75, 1, 1, 1][int(rng.integers(6))]
        self.last = (m, r)
        w = (r * m)[..., None]
        fake = (w * src.astype(np.float32) + (1 - w) * tgt.astype(np.float32)).round().astype(np.uint8)
        c = int(rng.integers(5, 25)) * s // 256                # one margin for all four sides
        crop = (slice(c, s - c), slice(c, s - c))
        b = (np.floor(255 * 4 * m * (1 - m))).astype(np.uint8)
        out = self.aug(image=tgt[crop], image1=fake[crop], mask=b[crop], mask1=m[crop])
        b96 = cv2.resize(out["mask"], (self.size // 4, self.size // 4), interpolation=cv2.INTER_LINEAR)
        hm, cons = make_targets(b96.astype(np.float32) / 255.0)
        real_t = torch.from_numpy(out["image"]).permute(2, 0, 1).float() / 127.5 - 1
        fake_t = torch.from_numpy(out["image1"]).permute(2, 0, 1).float() / 127.5 - 1
        return real_t, fake_t, torch.from_numpy(hm), torch.from_numpy(cons)


# ------------------------------------------------------------------------------------------------ timing
def time_loop(fn, n: int, warmup: int = 5) -> tuple[float, float]:
    """(wall seconds, process CPU seconds) per call. On a shared machine the CPU time is the better
    estimate of the single-core cost; the wall time includes waiting for the CPU."""
    for i in range(warmup):
        fn(i)
    t0, c0 = time.perf_counter(), time.process_time()
    for i in range(n):
        fn(i)
    return (time.perf_counter() - t0) / n, (time.process_time() - c0) / n


def mask_stats(mask: np.ndarray, ratio: float) -> tuple[float, ...]:
    """(area of M >= 0.5, area of B > 0.5, mean B, ratio == 1, ratio) for one soft mask, areas as fractions."""
    b = 4 * mask * (1 - mask)
    return float((mask >= 0.5).mean()), float((b > 0.5).mean()), float(b.mean()), float(ratio == 1.0), float(ratio)


def throughput(args) -> None:
    import torch

    from model.config import DataConfig
    from model.data.datasets import TrainPairDataset, collate_pairs
    from model.data.sbi import sbi

    cv2.setNumThreads(1)
    torch.set_num_threads(1)
    with tempfile.TemporaryDirectory() as tmp:
        split = Path(args.shards) if args.shards else build_shard(Path(tmp), args.size)
        ds = TrainPairDataset(DataConfig(shards=[str(split)], image_size=args.size, seed=0))
        n_items = len(ds)
        load0 = os.getloadavg()

        def ours(i):
            batch.append(ds[i % n_items])
            if len(batch) == 8:
                collate_pairs(batch)
                batch.clear()

        batch: list = []
        t_ours, c_ours = time_loop(ours, args.n)
        reader = ds.shards.readers[0]
        rows = np.flatnonzero(reader.landmark_ok)
        t_read, c_read = time_loop(lambda i: reader.face(int(rows[i % len(rows)])), args.n)
        rng = np.random.default_rng(0)
        lms = ds.landmarks[0]
        spread = rows[:: max(1, len(rows) // 16)][:16]          # frames from all videos
        faces = [reader.face(int(r)) for r in spread]
        t_sbi, c_sbi = time_loop(lambda i: sbi(faces[i % len(spread)], lms[int(spread[i % len(spread)])], rng),
                                 args.n)
        base = Baseline(split, args.size)
        stats_base = []

        base_rows = []

        def base_pair(i):
            base.pair(i)
            stats_base.append(mask_stats(*base.last))
            base_rows.append(int(base.ok[i % len(base.ok)]))

        t_base, c_base = time_loop(base_pair, max(20, args.n // 3))
        stats_ours = []
        for row in base_rows:                                 # the baseline's frames, in its order
            p = sbi(reader.face(row), lms[row], rng)
            stats_ours.append(mask_stats(p.mask, p.ratio))
        from model.data.targets import point_sigmas, reference_points

        peaks, sigmas = [], []
        for i in range(min(100, n_items)):
            b = ds[i]["boundary"]
            ys, xs, _ = reference_points(b)
            peaks.append(len(ys))
            sigmas.extend(point_sigmas(b, ys, xs))
        ds_bi = TrainPairDataset(DataConfig(shards=[str(split)], image_size=args.size, seed=0, synthesis="bi"))
        t_bi, c_bi = time_loop(lambda i: collate_pairs([ds_bi[i % len(ds_bi)]]), max(20, args.n // 3))
        load1 = os.getloadavg()
        crop = reader.crop_size
        reader.close()

    need = 16 / 2 / args.step_s      # pairs per second to feed one step of 16 images every step_s
    print(f"bench_data: {1 / c_ours:.1f} pairs/s per core by CPU time ({1 / t_ours:.1f} by wall clock) "
          f"(TrainPairDataset SBI + augmentation + collate, {crop}px shard crops -> {args.size}px images + "
          f"{args.size // 4}px targets) vs baseline {1 / c_base:.1f} ({1 / t_base:.1f} wall) pairs/s "
          f"(full-resolution float recipe + albumentations): x{c_base / c_ours:.2f}")
    print(f"  CPU ms per pair: {1e3 * c_ours:.2f} = shard read {1e3 * c_read:.2f} + SBI synthesis {1e3 * c_sbi:.2f} "
          f"+ augmentation/targets/collate {1e3 * (c_ours - c_read - c_sbi):.2f}; baseline {1e3 * c_base:.2f}")
    print(f"  BI pairs (donor among the 30 landmark-nearest of other videos): {1 / c_bi:.1f} pairs/s per core by CPU "
          f"time ({1 / t_bi:.1f} wall)")
    print(f"  reference targets over {len(peaks)} fakes: median {np.median(peaks):.0f} vulnerable points per fake "
          f"(5-95 %: {np.percentile(peaks, 5):.0f}-{np.percentile(peaks, 95):.0f}), Gaussian sigma median "
          f"{np.median(sigmas):.2f} px (5-95 %: {np.percentile(sigmas, 5):.2f}-{np.percentile(sigmas, 95):.2f})")
    print(f"  DataLoader workers to feed 16 images per {args.step_s:g} s step ({need:.0f} pairs/s): "
          f"{math.ceil(need / (1 / c_ours))} at the CPU-time rate, {math.ceil(need / (1 / t_ours))} at the wall-clock "
          f"rate (baseline: {math.ceil(need / (1 / c_base))})")
    so, sb = np.array(stats_ours), np.array(stats_base)
    print(f"  same recipe? over {len(so)} masks each, ours vs baseline: area M>=0.5 {100 * so[:, 0].mean():.1f} % vs "
          f"{100 * sb[:, 0].mean():.1f} % of the crop; boundary B>0.5 {100 * so[:, 1].mean():.2f} % vs "
          f"{100 * sb[:, 1].mean():.2f} %; mean B {so[:, 2].mean():.4f} vs {sb[:, 2].mean():.4f}; blend ratio 1 "
          f"in {100 * so[:, 3].mean():.0f} % vs {100 * sb[:, 3].mean():.0f} %, mean r {so[:, 4].mean():.3f} vs "
          f"{sb[:, 4].mean():.3f}")
    print(f"  loadavg before {tuple(round(x, 2) for x in load0)} after {tuple(round(x, 2) for x in load1)} "
          f"on {os.cpu_count()} cpus; {args.n} pairs timed")
    if args.donor_table:
        donor_table_bench(args.donor_table)


def donor_table_bench(n: int) -> None:
    """Time build_donor_table on n synthetic faces in videos of 128 frames (FF++ train: 92k frames)."""
    from model.data.bi_index import build_donor_table

    rng = np.random.default_rng(0)
    n_videos = max(2, n // 128)
    base = rng.normal(size=(68, 2)) * 30 + 150
    per_video = base + rng.normal(size=(n_videos, 1, 68, 2)) * 4
    lm = (per_video + rng.normal(size=(n_videos, 128, 68, 2)) * 1.0).reshape(-1, 68, 2)[:n].astype(np.float32)
    video = np.repeat(np.arange(n_videos), 128)[:n]
    t0, c0 = time.perf_counter(), time.process_time()
    table = build_donor_table(lm, video, k=30)
    dt, dc = time.perf_counter() - t0, time.process_time() - c0
    print(f"bench_data: BI donor table for {len(lm)} faces / {n_videos} videos (k=30, 16384 candidates, shortlist "
          f"120): {dt:.1f} s wall, {dc:.1f} s CPU, {table.shape}; "
          f"loadavg {tuple(round(x, 2) for x in os.getloadavg())}")


# ---------------------------------------------------------------------------------------------- forehead
def skin_fraction(img: np.ndarray, region: np.ndarray, reference: np.ndarray) -> float:
    """Fraction of `region` pixels whose YCrCb chroma is within the 90 % Mahalanobis radius of the
    `reference` pixels' chroma (a per-face skin model)."""
    ycc = cv2.cvtColor(img, cv2.COLOR_RGB2YCrCb).reshape(-1, 3)[:, 1:].astype(np.float64)
    ref = ycc[reference.reshape(-1) > 0]
    mean, cov = ref.mean(0), np.cov(ref.T) + np.eye(2)
    inv = np.linalg.inv(cov)

    def maha(x):
        d = x - mean
        return np.einsum("ij,jk,ik->i", d, inv, d)

    thr = np.quantile(maha(ref), 0.9)
    sel = ycc[region.reshape(-1) > 0]
    return float((maha(sel) <= thr).mean()) if len(sel) else float("nan")


def forehead_report(args) -> None:
    from model.data.masks import BROWS, EYE_A, EYE_B, FOREHEAD_RATIO, MASK_KINDS, hull_mask

    size = 384
    faces = example_crops(size, FULL_SETS)
    print(f"forehead extension on {len(faces)} real faces (dlib's example training and testing sets), {size} px 1.25x crops "
          f"(default height ratio {FOREHEAD_RATIO}):")
    yy, xx = np.mgrid[0:size, 0:size]
    per_ratio = {}
    for ratio in args.ratios:
        area = {k: [] for k in MASK_KINDS}
        above, skin_added, skin_upper, added_px = [], [], [], []
        above_plain = []
        for img, lm in faces:
            v = lm[EYE_B].mean(0) - lm[EYE_A].mean(0)
            v /= np.linalg.norm(v)
            u = np.array([v[1], -v[0]])
            height = (np.stack([xx, yy], -1) - lm[BROWS].mean(0)) @ u      # > 0: above the mean brow line
            for k in MASK_KINDS:
                plain = hull_mask(lm, (size, size), k)
                ext = hull_mask(lm, (size, size), k, True, ratio)
                area[k].append(ext.sum() / plain.sum())
            plain = hull_mask(lm, (size, size), "facehull")
            ext = hull_mask(lm, (size, size), "facehull", True, ratio)
            above_plain.append(((plain > 0) & (height > 0)).sum() / plain.sum())
            above.append(((ext > 0) & (height > 0)).sum() / ext.sum())
            added = (ext > 0) & (plain == 0)
            added_px.append(added.sum() / size ** 2)
            # Skin model from the cheeks and nose: inside the 68-point hull, between nostrils and mouth corners
            # levels... i.e. below the nostrils' top and above the mouth corners.
            nostril = (lm[[31, 35]].mean(0) - lm[BROWS].mean(0)) @ u
            mouth = (lm[[48, 54]].mean(0) - lm[BROWS].mean(0)) @ u
            ref = (plain > 0) & (height < nostril * 0.6) & (height > mouth)
            if ref.sum() > 50 and added.any():
                skin_added.append(skin_fraction(img, added, ref))
                skin_upper.append(skin_fraction(img, (plain > 0) & (height < 0) & (height > nostril * 0.6), ref))
        per_ratio[ratio] = area
        kinds = ", ".join(f"{k} x{np.mean(area[k]):.2f}" for k in MASK_KINDS)
        print(f"  height ratio {ratio:.2f}: mask area with/without forehead (mean) {kinds}; full-hull share above the "
              f"brow line {100 * np.mean(above_plain):.1f} % -> {100 * np.mean(above):.1f} %; added area "
              f"{100 * np.mean(added_px):.1f} % of the crop, {100 * np.nanmean(skin_added):.1f} % of it skin-coloured "
              f"(eye band inside the 68-point hull: {100 * np.nanmean(skin_upper):.1f} %)")
    if args.png:
        tiles = []
        for img, lm in faces[:8]:
            plain = hull_mask(lm, (size, size), "facehull")
            ext = hull_mask(lm, (size, size), "facehull", True)
            t = img.copy()
            t[plain > 0] = (0.6 * t[plain > 0] + (0, 100, 0)).astype(np.uint8)
            t[(ext > 0) & (plain == 0)] = (0.6 * t[(ext > 0) & (plain == 0)] + (100, 0, 100)).astype(np.uint8)
            tiles.append(cv2.resize(t, (192, 192), interpolation=cv2.INTER_AREA))
        while len(tiles) % 4:
            tiles.append(np.zeros_like(tiles[0]))
        grid = np.concatenate([np.concatenate(tiles[i:i + 4], 1) for i in range(0, len(tiles), 4)], 0)
        Path(args.png).parent.mkdir(parents=True, exist_ok=True)
        cv2.imwrite(args.png, grid[..., ::-1])
        print(f"  {args.png}: 68-point hull (green) and the default forehead extension (magenta)")


# ---------------------------------------------------------------------------------------------- fidelity
def fidelity_report(args) -> None:
    """Draw the default pairs on dlib's 43 example faces (1.25x crops at --size, --draws per face, as the
    reference measurement) and print every figure of the reference JSON we can compute: ours, the
    reference's, the gap, the tolerance of tests/test_fidelity.py. Writes a PNG of the gaps."""
    import warnings

    from model.config_io import load_config
    from model.data.datasets import TrainPairDataset
    from model.data.pair_stats import compare, load_reference, pair_figures

    cv2.setNumThreads(1)
    cfg = load_config(args.config, args.overrides)
    reference = load_reference()
    with tempfile.TemporaryDirectory() as tmp:
        split = write_example_split(Path(tmp), args.size, FULL_SETS, frames=1)
        cfg.data.shards, cfg.data.frames_per_video, cfg.data.image_size = [str(split)], 1, args.size
        cfg.data.seed = 317
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            ds = TrainPairDataset(cfg.data, cfg.sbi, cfg.bi, cfg.augment)
        figures, c_pairs = [], 0.0
        for epoch in range(args.draws):
            ds.set_epoch(epoch)
            for i in range(len(ds)):
                c0 = time.process_time()
                item = ds[i]
                c_pairs += time.process_time() - c0
                figures.append(pair_figures(item))
    rows = compare(figures, reference)
    print(f"bench_data fidelity: {len(figures)} pairs ({len(ds)} faces x {args.draws} draws, config "
          f"{args.config or 'defaults'} {' '.join(args.overrides)}) vs the reference implementation's own data code "
          f"({reference['setup']['samples']} pairs on the same faces); {len(figures) / c_pairs:.1f} pairs/s per core "
          f"(CPU time, items only)")
    for r in rows:
        print("  " + r.line())
    off = [r for r in rows if not r.ok]
    print(f"  {len(rows) - len(off)} of {len(rows)} figures within tolerance")
    if args.png:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        fig, ax = plt.subplots(figsize=(8, 0.22 * len(rows) + 1), dpi=110)
        ratio = [r.gap / r.tolerance for r in rows]
        ax.barh(range(len(rows)), ratio, color=["#228833" if r.ok else "#cc3311" for r in rows])
        ax.axvline(-1, color="k", ls="--", lw=0.8)
        ax.axvline(1, color="k", ls="--", lw=0.8)
        ax.set_yticks(range(len(rows)), [r.name for r in rows], fontsize=6)
        ax.invert_yaxis()
        ax.set_xlabel("gap to the reference / tolerance (|x| <= 1 passes)")
        ax.set_title(f"training pairs vs the reference implementation ({len(figures)} pairs)", fontsize=9)
        fig.tight_layout()
        Path(args.png).parent.mkdir(parents=True, exist_ok=True)
        fig.savefig(args.png)
        plt.close(fig)
        print(f"  {args.png}: gaps as a fraction of each tolerance")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("mode", nargs="?", choices=("throughput", "forehead", "fidelity"), default="throughput")
    parser.add_argument("--shards", help="split folder to read (default: a shard built from the fixtures)")
    parser.add_argument("--size", type=int, default=384)
    parser.add_argument("-n", type=int, default=300, help="pairs to time")
    parser.add_argument("--step-s", type=float, default=0.25, help="GPU step time for the worker estimate")
    parser.add_argument("--donor-table", type=int, default=0, help="also time the BI donor table on N faces")
    parser.add_argument("--png", default=None, help="forehead / fidelity mode: PNG path (default out/bench/<mode>.png)")
    parser.add_argument("--draws", type=int, default=48, help="fidelity mode: draws per face (the reference: 48)")
    parser.add_argument("--config", default=None, help="fidelity mode: training config (default: the defaults)")
    parser.add_argument("overrides", nargs="*", help="fidelity mode: config overrides key.sub=value")
    parser.add_argument("--ratios", type=float, nargs="+", default=[0.5, 0.7, 0.9],
                        help="forehead mode: forehead heights (x nose length) to measure")
    args = parser.parse_args()
    if args.png is None and args.mode != "throughput":
        args.png = f"out/bench/{args.mode}.png"
    {"forehead": forehead_report, "fidelity": fidelity_report, "throughput": throughput}[args.mode](args)


if __name__ == "__main__":
    main()
