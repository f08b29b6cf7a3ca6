"""Look at the training data: ``python -m model.data preview`` (a PNG grid of training pairs and their targets)
and ``python -m model.data face-scale`` (training face scales beside evaluation's, `model.data.face_scale`).
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

import cv2
import numpy as np

from model.data.datasets import TrainPairDataset
from model.data.face_scale import face_scale_report
from pipeline.crop import CROP_SCALE
from pipeline.errors import exit_status


def spread_indices(dataset: TrainPairDataset, n: int) -> list[int]:
    """``n`` pair indices spread over the videos: the first frame of every k-th video (one row per video while
    there are enough videos), then further frames of the same videos."""
    first: dict[int, list[int]] = {}
    for i, item in enumerate(dataset.items):
        first.setdefault(item.video, []).append(i)
    videos = list(first)
    if not videos:
        return []
    picks = [first[v][0] for v in (videos[int(j)] for j in np.linspace(0, len(videos) - 1, min(n, len(videos))))]
    extra = [i for v in videos for i in first[v][1:]]
    return list(dict.fromkeys(picks + extra[: max(0, n - len(picks))]))[:n]


def _colour_bar(height: int, width: int = 18) -> np.ndarray:
    """A vertical INFERNO bar (1 at the top, 0 at the bottom) with its end values."""
    ramp = np.linspace(255, 0, height).astype(np.uint8)[:, None].repeat(width, 1)
    bar = cv2.applyColorMap(ramp, cv2.COLORMAP_INFERNO)[..., ::-1]
    out = np.full((height, width + 22, 3), 255, np.uint8)
    out[:, :width] = bar
    for text, y in (("1", 12), ("0", height - 4)):
        cv2.putText(out, text, (width + 4, y), cv2.FONT_HERSHEY_SIMPLEX, 0.4, (0, 0, 0), 1, cv2.LINE_AA)
    return out


def preview_grid(dataset: TrainPairDataset, n: int, cell: int = 192) -> np.ndarray:
    """uint8 RGB grid, one row per sample spread over the videos (``spread_indices``): real | fake | mask |
    boundary | heatmap | consistency, each row captioned with its video, frame, hull type and blend ratio, and a
    colour bar for the maps (all in [0, 1])."""
    def gray(m: np.ndarray) -> np.ndarray:
        g = cv2.resize((np.clip(m, 0, 1) * 255).astype(np.uint8), (cell, cell), interpolation=cv2.INTER_NEAREST)
        return cv2.applyColorMap(g, cv2.COLORMAP_INFERNO)[..., ::-1]

    rows = []
    for i in spread_indices(dataset, n):
        p = dataset[i]
        tiles = [cv2.resize(p["real"], (cell, cell), interpolation=cv2.INTER_AREA),
                 cv2.resize(p["fake"], (cell, cell), interpolation=cv2.INTER_AREA)]
        tiles += [gray(p[k]) for k in ("mask", "boundary", "heatmap", "consistency")]
        caption = np.full((20, cell * len(tiles), 3), 255, np.uint8)
        ratio = f"{p['ratio']:.2f}" if isinstance(p.get("ratio"), (int, float)) else str(p.get("ratio"))
        cv2.putText(caption, f"{p['video_id']}  frame {p['frame_index']}  hull {p['kind']}  blend ratio {ratio}",
                    (6, 15), cv2.FONT_HERSHEY_SIMPLEX, 0.45, (0, 0, 0), 1, cv2.LINE_AA)
        rows += [caption, np.concatenate(tiles, 1)]
    header = np.full((28, cell * 6, 3), 255, np.uint8)
    for j, name in enumerate(("real", "fake", "mask M", "boundary B", "heatmap H", "consistency C")):
        cv2.putText(header, name, (j * cell + 6, 20), cv2.FONT_HERSHEY_SIMPLEX, 0.55, (0, 0, 0), 1, cv2.LINE_AA)
    grid = np.concatenate([header] + rows, 0)
    bar = np.full((grid.shape[0], 40, 3), 255, np.uint8)
    bar[28:28 + cell] = _colour_bar(cell)
    return np.concatenate([grid, bar], 1)


def _load_run_config(path: str | None, overrides: list[str]):
    from model.config_io import load_config

    return load_config(path, overrides)


EXAMPLES = """examples:
  python -m model preview --shards shards/sample/train --out out/preview.png -n 6
  python -m model preview --shards shards/ffpp/train --config configs/laanet_sbi.yaml --out out/ffpp_pairs.png
  python -m model face-scale --config configs/laanet_sbi.yaml --png out/face_scale.png
"""


def get_args_parser() -> argparse.ArgumentParser:
    from model import cli as flags

    parser = flags.parser("python -m model.data", __doc__.splitlines()[0], EXAMPLES)
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("preview", help="write a PNG grid of training pairs and their targets",
                       formatter_class=flags.HelpFormatter)
    p.add_argument("--shards", nargs="+", required=True, help="split folder(s) with index.json")
    p.add_argument("--out", required=True, help="the PNG this command writes")
    p.add_argument("-n", type=int, default=6, help="number of samples (rows)")
    p.add_argument("--config", help="training config whose data/sbi/bi/augment settings to use (default: defaults)")
    p.add_argument("--epoch", type=int, default=0, help="the epoch whose frame draw to show")
    p.add_argument("overrides", nargs="*", help="config overrides key.sub=value, e.g. augment.enabled=false")
    f = sub.add_parser("face-scale", help="print the training face-scale distribution beside evaluation's",
                       formatter_class=flags.HelpFormatter)
    f.add_argument("--config", help="training config (default: the defaults, i.e. the paper recipe)")
    f.add_argument("--crop-scale", type=float, default=CROP_SCALE, help="face scale of the stored crops")
    f.add_argument("--png", help="also write a histogram PNG")
    f.add_argument("overrides", nargs="*", help="config overrides key.sub=value")
    return parser


def main(argv: list[str] | None = None) -> int:
    """``python -m model preview|face-scale``: exit status 0, 1 on a data or config problem (one line), 2 on usage."""
    args = get_args_parser().parse_args(argv)
    return exit_status(args.command, _run, args)


def _run(args: argparse.Namespace) -> int:
    cfg = _load_run_config(args.config, args.overrides)
    if args.command == "face-scale":
        print(face_scale_report(cfg, args.crop_scale, args.png))
        return 0
    cfg.data.shards = list(args.shards)
    ds = TrainPairDataset(cfg.data, cfg.sbi, cfg.bi, cfg.augment)
    ds.set_epoch(args.epoch)
    grid = preview_grid(ds, args.n)
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    if not cv2.imwrite(str(out), grid[..., ::-1]):
        print(f"{out}: could not write the PNG", file=sys.stderr)
        return 1
    print(f"{out}: {len(spread_indices(ds, args.n))} samples of {len(ds)} ({len(ds.videos)} videos, epoch {args.epoch}, "
          f"skipped {ds.skipped})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
