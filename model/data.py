"""Training and evaluation Datasets over HDF5 face shards (work in progress: the config comes first)."""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal


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
