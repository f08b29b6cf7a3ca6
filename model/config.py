"""Typed training configuration: every settings dataclass of the project, with its defaults and checks.

A run is described by one :class:`Config`: every settings dataclass of the project lives here (model, loss,
data, SBI, BI, augmentation, optimiser, training loop, validation), and this module imports nothing else
from ``model/``, so reading a config loads neither torch nor OpenCV. ``validate_config`` rejects values that
type-check but cannot work together. Reading and writing configs (YAML files, ``key.sub=value`` overrides,
the plain dicts stored in runs and checkpoints) is ``model.config_io``.
"""
from __future__ import annotations

import dataclasses
import re
from dataclasses import dataclass, field
from typing import Any, Literal

from pipeline.errors import UserError

SECTIONS = ("model", "loss", "data", "sbi", "bi", "augment", "optim", "train", "val")


class ConfigError(UserError, ValueError):
    """An unknown key, a wrong type or an invalid combination in a training config."""


# Choices that the settings below validate against (the modules that implement them import them from here).
DECODER_MODES = ("efpn", "fpn", "none")
SIGMA_RULES = ("reference", "exact")
BLEND_RATIOS = (0.25, 0.5, 0.75, 1.0, 1.0, 1.0)


@dataclass
class ModelConfig:
    """Everything needed to rebuild the network (stored in every checkpoint as config["model"])."""

    backbone: str = "tf_efficientnet_b4"  # any timm EfficientNet (optionally with a ".tag")
    pretrained: bool = False  # ImageNet weights from timm (B4: AdvProp, tag ap_in1k)
    backbone_weights: str | None = None  # local weights file; overrides `pretrained`
    input_size: int = 384  # training / evaluation side, a multiple of 32
    decoder: str = "efpn"  # efpn | fpn | none
    skip_levels: tuple[int, ...] = (1, 2, 3)  # fused skips: 1 -> stride 32, 2 -> 16, 3 -> 8
    heads: dict[str, int] = field(default_factory=lambda: {"cls": 1, "hm": 1, "cstency": 256})
    head_conv: int = 64
    dropout: float = 0.4  # on the backbone endpoints, training only
    # Stochastic depth in the backbone's residual blocks, rate * block index / blocks (reference: 0.2).
    drop_path_rate: float = 0.2
    # Backbone BatchNorm momentum, PyTorch convention (the reference's TF momentum 0.99 = 0.01; timm: 0.1).
    backbone_bn_momentum: float = 0.01
    gamma_w: float = 1.0  # exponent of the E-FPN gate
    reference_padding: bool = False  # pad strided convs as the reference implementation does

    def __post_init__(self) -> None:
        self.skip_levels = tuple(int(i) for i in self.skip_levels)
        self.heads = {str(k): int(v) for k, v in dict(self.heads).items()}
        if self.decoder not in DECODER_MODES:
            raise ValueError(f"model.decoder must be one of {DECODER_MODES}, got {self.decoder!r}")
        if not set(self.skip_levels) <= {1, 2, 3}:
            raise ValueError(f"model.skip_levels must be a subset of (1, 2, 3), got {self.skip_levels}")
        if not self.heads or any(v < 1 for v in self.heads.values()):
            raise ValueError(f"model.heads must map head names to positive channel counts, got {self.heads}")
        if self.input_size % 32:
            raise ValueError(f"model.input_size must be a multiple of 32, got {self.input_size}")
        if not 0.0 <= self.dropout < 1.0:
            raise ValueError(f"model.dropout must be in [0, 1), got {self.dropout}")
        if not 0.0 <= self.drop_path_rate < 1.0:
            raise ValueError(f"model.drop_path_rate must be in [0, 1), got {self.drop_path_rate}")
        if not 0.0 < self.backbone_bn_momentum <= 1.0:
            raise ValueError(f"model.backbone_bn_momentum must be in (0, 1], got {self.backbone_bn_momentum}")

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> ModelConfig:
        """Build from a plain dict (e.g. a checkpoint's config["model"]); unknown keys are an error."""
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(d) - known)
        if unknown:
            raise ValueError(f"unknown model config keys {unknown}; known: {sorted(known)}")
        return cls(**d)

    def to_dict(self) -> dict[str, Any]:
        """Plain-Python dict (lists for tuples) suitable for YAML, JSON and checkpoints."""
        d = dataclasses.asdict(self)
        d["skip_levels"] = list(self.skip_levels)
        return d


@dataclass
class LossConfig:
    lambda_cls: float = 1.0
    lambda_hm: float = 10.0
    lambda_c: float = 100.0
    # Factor on the focal loss's positive term: the reference's "label smoothing" (0.72), which the paper
    # names as a regulariser; 1.0 switches it off.
    hm_pos_weight: float = 0.72
    cls_label_smoothing: float = 0.0  # targets y -> y (1 - s) + s / 2

    @classmethod
    def reference(cls) -> LossConfig:
        """The reference implementation's SBI weights."""
        return cls(lambda_cls=1.0, lambda_hm=100.0, lambda_c=100.0, hm_pos_weight=0.72)


@dataclass
class DataConfig:
    """Where the training faces are and how pairs and targets are made from them (config section ``data``).

    shards: split folders (each with index.json), e.g. ["shards/ffpp/train"]; only real videos are used.
    frames_per_video: frames drawn per video per epoch. redraw_frames: draw them afresh every epoch (the
    paper; the reference kept the epoch-0 draw, a bug: False reproduces it). image_size: network input side
    S (targets are S/4). synthesis: "sbi" (self-blended) or "bi" (blended with a landmark-nearest face of
    another video); their settings are the ``sbi`` and ``bi`` sections, the augmentation ``augment``.
    target_mode: "reference" or "paper" (see model.data.targets.make_targets). sigma_rule: "reference" (runs of
    uint8 B > 128 with the point counted twice, the reference's measured rule) or "exact" (runs of B > 0.5).
    heatmap_centre: "exact" (Gaussian peak on the point; the reference misplaces it one pixel up-left for
    about 45 % of the points, a bug: "reference" reproduces it). run_wrap: let run lengths wrap across rows
    (the reference's bug; off). seed: base of every per-sample generator (seed, epoch, index).
    bi_neighbours: donors kept per frame for BI. max_open_shards: open shard files per reading process (LRU).
    """

    shards: list[str] = field(default_factory=list)
    frames_per_video: int = 8
    redraw_frames: bool = True
    image_size: int = 384
    synthesis: Literal["sbi", "bi"] = "sbi"
    target_mode: Literal["reference", "paper"] = "reference"
    sigma_rule: Literal["reference", "exact"] = "reference"
    heatmap_centre: Literal["exact", "reference"] = "exact"
    run_wrap: bool = False
    seed: int = 0
    bi_neighbours: int = 30
    # Shard files each process (DataLoader worker) keeps open at once, least recently used closed first:
    # persistent workers would otherwise hold every shard open (8 GPUs x 4 workers x 300 shards = 9,600 files).
    max_open_shards: int = 32


@dataclass
class SBIConfig:
    """Parameters of the SBI recipe (config section ``sbi``). Pixel values refer to the `grid` raster (the
    recipe's 256 crops). Defaults are the reference implementation's measured behaviour."""

    grid: int = 256
    flip_p: float = 0.5                                   # landmark-aware h-flip before synthesis
    forehead: bool = False                                # extend the hulls over the forehead (68 points)
    translate: tuple[float, float] = (0.03, 0.015)       # max |shift| as a fraction of width, height
    scale: tuple[float, float] = (0.95, 1 / 0.95)
    elastic_alpha: float = 50.0
    elastic_sigma: float = 7.0
    resize_range: tuple[float, float] = (0.8, 1.25)       # per side, before the two blurs
    blur1_kernels: tuple[int, int] = (5, 25)              # odd sizes, inclusive
    blur1_float: bool = True                              # blur the float {0, 1} mask (erodes the hull)
    blur2_kernels: tuple[int, int] = (5, 25)
    blur2_sigma: tuple[int, int] = (5, 45)                # integer sigma, inclusive
    blend_ratios: tuple[float, ...] = BLEND_RATIOS
    margin: tuple[int, int] = (5, 24)                     # random crop margin per side, inclusive
    margin_symmetric: bool = True                         # one margin for all four sides (reference)
    rgb_shift_p: float = 0.3                              # source transform: RGB shift +-20
    hsv_p: float = 1.0                                    # source transform: hue/sat/value +-0.3
    brightness_contrast_p: float = 1.0                    # source transform: brightness/contrast +-0.1
    brightness_contrast: float = 0.1
    downscale_share: float = 0.5                          # down-up scale (else sharpen)

    def __post_init__(self) -> None:
        for name in ("blur1_kernels", "blur2_kernels"):
            lo, hi = getattr(self, name)
            if lo < 1 or hi < lo or lo % 2 == 0 or hi % 2 == 0:
                raise ValueError(f"sbi.{name} must be odd sizes lo <= hi, got {(lo, hi)}")
        if not self.blend_ratios or any(not 0 < r <= 1 for r in self.blend_ratios):
            raise ValueError(f"sbi.blend_ratios must be values in (0, 1], got {self.blend_ratios}")
        if not 0 <= self.margin[0] <= self.margin[1] < self.grid // 4:
            raise ValueError(f"sbi.margin must be 0 <= lo <= hi < grid / 4, got {self.margin}")


@dataclass
class BIConfig:
    """Parameters of BI (blended images; config section ``bi``). Pixel values refer to the `grid` raster."""

    grid: int = 256
    forehead: bool = False
    grid_cells: int = 4                                  # piecewise-affine control grid (cells per side)
    jitter: float = 0.03                                 # control point jitter, fraction of the side
    morph_kernels: tuple[int, int] = (3, 15)             # odd erode/dilate kernel sizes
    feather_kernels: tuple[int, int] = (5, 25)           # odd Gaussian kernel for the final feathering


@dataclass
class AugmentConfig:
    """Probabilities and ranges of the training augmentation (config section ``augment``)."""

    enabled: bool = True
    hflip_p: float = 0.5
    geometry_p: float = 0.5                          # p of the one-of {crop, scale, erase} step
    crop_max: float = 0.14                           # random crop: side cut c per axis in {0, 0.01, ..., crop_max}
    crop_mode: Literal["shift", "zoom"] = "shift"    # shift: window kept at scale, black padding (reference)
    scale_limit: float = 0.15                        # random scale factor in 1 +- scale_limit
    scale_about: Literal["centre", "corner"] = "centre"   # corner: the reference's top-left zoom
    erase_area: tuple[float, float] = (0.02, 0.33)   # random erasing: box area as a fraction of the image
    erase_aspect: tuple[float, float] = (0.3, 3.3)
    erase_value: int = 0                             # black, as the reference
    erase_targets: bool = True                       # zero the targets under the erased box (reference)
    rgb_shift_p: float = 0.3
    rgb_shift: float = 20.0
    hsv_p: float = 0.3
    hsv_shift: float = 0.3
    brightness_contrast_p: float = 0.3
    brightness: float = 0.3
    contrast: float = 0.3
    jpeg_p: float = 0.5
    jpeg_quality: tuple[int, int] = (40, 100)
    blur_p: float = 0.0                              # paper lists it; reference SBI path: off
    blur_sigma: tuple[float, float] = (0.3, 1.5)
    noise_p: float = 0.0                             # paper lists it; reference SBI path: off
    noise_std: tuple[float, float] = (2.0, 10.0)     # in uint8 levels
    # Resolution: downscale (area) by a factor drawn in downscale_factor, JPEG (when drawn) at that size,
    # upscale back (bilinear): a face that was small in a compressed video, magnified by the crop. In neither
    # the paper nor the reference: off by default (a CPU-recipe trial, configs/laanet_lite0_cpu.yaml).
    downscale_p: float = 0.0
    downscale_factor: tuple[float, float] = (1.5, 3.0)

    def __post_init__(self) -> None:
        if self.crop_mode not in ("shift", "zoom"):
            raise ValueError(f"augment.crop_mode must be 'shift' or 'zoom', got {self.crop_mode!r}")
        if self.scale_about not in ("centre", "corner"):
            raise ValueError(f"augment.scale_about must be 'centre' or 'corner', got {self.scale_about!r}")
        if not 0.0 <= self.crop_max < 0.5:
            raise ValueError(f"augment.crop_max must be in [0, 0.5), got {self.crop_max}")
        if not 0.0 <= self.scale_limit < 1.0:
            raise ValueError(f"augment.scale_limit must be in [0, 1), got {self.scale_limit}")
        if not 1.0 <= self.downscale_factor[0] <= self.downscale_factor[1]:
            raise ValueError(f"augment.downscale_factor must be [lo, hi] with 1 <= lo <= hi, got {self.downscale_factor}")


@dataclass
class OptimConfig:
    """SAM over Adam with the paper's warm-up-then-linear-decay learning rate.

    The LR rises linearly from ``lr_start`` to ``lr_peak`` over the first ``warmup_fraction`` of all
    optimiser steps, then falls linearly to 0 at the last step.
    """

    lr_start: float = 5e-5
    lr_peak: float = 2e-4
    warmup_fraction: float = 0.25
    weight_decay: float = 1e-4  # Adam's L2 term (added to the gradient), as in the paper's recipe
    betas: tuple[float, float] = (0.9, 0.999)
    sam: bool = True
    sam_rho: float = 0.05
    sam_adaptive: bool = False  # ASAM: perturbation scaled by |w|
    # BN running statistics in the SAM second pass (at the perturbed weights): updated as in the first pass
    # (the reference), or kept fixed so each batch counts once (false).
    sam_bn_update: bool = True
    grad_clip: float = 0.0  # max global grad norm; 0 disables
    accum_steps: int = 1  # split each loader batch into this many micro-batches (small GPUs)
    # Linear scaling rule (Goyal et al. 2017): lr_start and lr_peak hold for a global batch of
    # lr_base_batch_pairs pairs; a global batch of B pairs uses them x B / lr_base_batch_pairs. "none": as given.
    lr_scaling: Literal["linear", "none"] = "linear"
    lr_base_batch_pairs: int = 8  # the paper's 8 pairs = 16 images per step


@dataclass
class TrainConfig:
    """Training loop: epochs, batch, freezing, precision, workers, logging and output."""

    epochs: int = 100
    # Frames per optimiser step over ALL processes (global batch); each gives a (real, fake) pair, so 2x images
    # per step. Under DDP every process takes batch_pairs / world_size (which must divide evenly).
    batch_pairs: int = 8
    # "per_process": batch_pairs per process, the global batch growing with the world size (this code's
    # behaviour before the global batch; checkpoints written then are read with it).
    batch_scope: Literal["global", "per_process"] = "global"
    freeze_backbone_epochs: int = 6  # backbone weights frozen for epochs < this
    # While frozen, also keep backbone BN in eval mode (running statistics fixed). The reference keeps it in
    # training mode (batch statistics, running statistics updated): false.
    freeze_bn: bool = False
    max_steps_per_epoch: int = 0  # 0 = the whole epoch; >0 caps it (demo, benchmarks)
    num_workers: int = 4
    device: str = "auto"  # auto | cpu | cuda | cuda:N
    threads: int = 0  # intra-op CPU threads (torch.set_num_threads); 0 = torch's default
    amp: Literal["auto", "off", "bf16", "fp16"] = "auto"  # auto: bf16 (or fp16 + scaler) on CUDA, off on CPU
    channels_last: bool = True
    compile: bool = False
    deterministic: bool = False  # torch.use_deterministic_algorithms + cuDNN deterministic
    seed: int = 0
    out_dir: str = "runs"
    run_name: str = ""  # empty: <config file stem>-<UTC timestamp>
    log_every: int = 10  # optimiser steps between scalar logs
    check_replicas: bool = True  # DDP: verify all ranks hold identical weights after each epoch


@dataclass
class ValConfig:
    """Validation each epoch; video-level AUC selects ``best.pt`` (see model.eval.validation).

    fakes: what the real validation videos are scored against: "sbi" (default, the reference: SBI
    pseudo-fakes of the val reals, so selection uses real data only), "bi", or "real" (the fake videos of
    ``shards``). face_scale: how faces are shown, as in evaluation ("reference": 1.20x the face box;
    "train-median"; "crop": the whole stored crop; or a number).
    """

    shards: list[str] = field(default_factory=list)
    frames_per_video: int = 8
    batch_size: int = 32
    num_workers: int = 2
    every: int = 1  # epochs between validations (the last epoch always validates); 0 disables validation
    fakes: Literal["sbi", "bi", "real"] = "sbi"
    face_scale: float | Literal["reference", "train-median", "crop"] = "reference"
    flip: bool = True  # flip test, as evaluation scores (the log says which protocol selected best.pt)
    max_videos: int = 0  # 0 = all; >0 keeps the first N videos (quick demos)
    # The AUC that selects best.pt: video-level (the reference), or frame-level, which still ranks epochs when
    # a small validation set (a few videos) puts every epoch's video AUC at 1.0.
    select: Literal["auc_video", "auc_frame"] = "auc_video"
    # "" (default): faces as stored. "NAME:LEVEL" (a robustness perturbation of model.eval.perturb, level 1..5,
    # e.g. "jpeg:4"): every validation face, real and pseudo-fake alike, is perturbed after synthesis, so selection
    # can ask for a detector that still works on degraded video (the paper's quality-agnostic claim).
    perturb: str = ""


@dataclass
class Config:
    """Everything one training run needs; see the module docstring for how it is resolved."""

    model: ModelConfig = field(default_factory=ModelConfig)
    loss: LossConfig = field(default_factory=LossConfig)
    data: DataConfig = field(default_factory=DataConfig)
    sbi: SBIConfig = field(default_factory=SBIConfig)
    bi: BIConfig = field(default_factory=BIConfig)
    augment: AugmentConfig = field(default_factory=AugmentConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    val: ValConfig = field(default_factory=ValConfig)


def validate_config(cfg: Config) -> None:
    """Reject values that type-check but cannot work together, naming the keys.

    Sub-configs with their own ``__post_init__`` checks (e.g. ModelConfig's decoder names) are rebuilt
    so those checks see the final values, not only the defaults.
    """
    for name in SECTIONS:
        sub = getattr(cfg, name)
        try:
            setattr(cfg, name, dataclasses.replace(sub))
        except (ValueError, TypeError) as err:
            raise ConfigError(f"{name}: {err}") from None
    if cfg.train.epochs < 1:
        raise ConfigError(f"train.epochs must be >= 1, got {cfg.train.epochs}")
    if cfg.train.batch_pairs < 1:
        raise ConfigError(f"train.batch_pairs must be >= 1, got {cfg.train.batch_pairs}")
    if cfg.optim.accum_steps < 1 or cfg.train.batch_pairs % cfg.optim.accum_steps:
        raise ConfigError(
            f"optim.accum_steps ({cfg.optim.accum_steps}) must be >= 1 and divide train.batch_pairs "
            f"({cfg.train.batch_pairs}): each micro-batch holds whole (real, fake) pairs"
        )
    if cfg.optim.lr_base_batch_pairs < 1:
        raise ConfigError(f"optim.lr_base_batch_pairs must be >= 1, got {cfg.optim.lr_base_batch_pairs}")
    if cfg.data.max_open_shards < 1:
        raise ConfigError(f"data.max_open_shards must be >= 1, got {cfg.data.max_open_shards}")
    if not 0.0 <= cfg.optim.warmup_fraction < 1.0:
        raise ConfigError(f"optim.warmup_fraction must be in [0, 1), got {cfg.optim.warmup_fraction}")
    if cfg.optim.sam and cfg.optim.sam_rho <= 0:
        raise ConfigError(f"optim.sam_rho must be > 0 when optim.sam is true, got {cfg.optim.sam_rho}")
    if cfg.train.freeze_backbone_epochs < 0:
        raise ConfigError(f"train.freeze_backbone_epochs must be >= 0, got {cfg.train.freeze_backbone_epochs}")
    if cfg.val.perturb and not re.fullmatch(r"[a-z]+:[1-5]", cfg.val.perturb):
        raise ConfigError(f"val.perturb must be '' or NAME:LEVEL with LEVEL 1..5 (e.g. jpeg:4), got {cfg.val.perturb!r}")
    if cfg.data.image_size != cfg.model.input_size:
        raise ConfigError(
            f"data.image_size ({cfg.data.image_size}) must equal model.input_size ({cfg.model.input_size})"
        )
