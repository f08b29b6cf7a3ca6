"""LAA-Net: EfficientNet backbone + E-FPN decoder + {cls, hm, cstency} heads.

    x (B, 3, H, W) in [-1, 1]
      -> backbone endpoints x1..x4 (dropout in training)
      -> decoder F (B, 112, H/4, W/4)
      -> heads: cls (B, 1) logit, hm (B, 1, H/4, W/4) logits, cstency (B, 256, H/4, W/4) embeddings
No activation inside the model: sigmoids live in the losses and in scoring.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
import torch.nn as nn

from model.config import ModelConfig
from model.net.backbone import Backbone, WeightsNotFound
from model.net.efpn import Decoder

# Heads that give one value per image (global average pool + Linear); every other head is dense.
IMAGE_LEVEL_HEADS = ("cls",)
# Initial bias of the heatmap logits: sigmoid(-2.19) ~ 0.1, the CenterNet focal-loss prior.
HM_BIAS_INIT = -2.19


class Head(nn.Module):
    """Conv3x3(C_F -> head_conv, bias) + BN + ReLU, then a 1x1 conv (dense head, (B, out, h, w)) or
    global average pooling + Linear (image-level head, (B, out))."""

    def __init__(self, cin: int, head_conv: int, cout: int, image_level: bool):
        super().__init__()
        self.conv = nn.Sequential(nn.Conv2d(cin, head_conv, 3, padding=1, bias=True),
                                  nn.BatchNorm2d(head_conv), nn.ReLU(inplace=True))
        self.image_level = image_level
        self.out = nn.Linear(head_conv, cout) if image_level else nn.Conv2d(head_conv, cout, 1)

    def forward(self, f: torch.Tensor) -> torch.Tensor:
        h = self.conv(f)
        if self.image_level:
            return self.out(h.mean(dim=(2, 3)))
        return self.out(h)


class LAANet(nn.Module):
    """The LAA-Net detector. ``forward(x)`` -> dict of the enabled heads (see module docstring)."""

    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.config = cfg
        self.backbone = Backbone(cfg.backbone, cfg.pretrained, cfg.backbone_weights, cfg.reference_padding,
                                 drop_path_rate=cfg.drop_path_rate, bn_momentum=cfg.backbone_bn_momentum)
        self.dropout = nn.Dropout(cfg.dropout)
        self.decoder = Decoder(self.backbone.channels, cfg.decoder, cfg.skip_levels, cfg.gamma_w)
        self.heads = nn.ModuleDict({
            name: Head(self.decoder.out_channels, cfg.head_conv, cout, name in IMAGE_LEVEL_HEADS)
            for name, cout in cfg.heads.items()})
        if "hm" in self.heads:
            nn.init.constant_(self.heads["hm"].out.bias, HM_BIAS_INIT)
        self.backbone_bn_frozen = False

    def forward(self, x: torch.Tensor, heads: tuple[str, ...] | None = None) -> dict[str, torch.Tensor]:
        """x (B, 3, H, W), H and W multiples of 32 -> {"cls": (B, 1), "hm": (B, 1, H/4, W/4),
        "cstency": (B, 256, H/4, W/4)} (keys of the enabled heads). ``heads``: run only these of the enabled
        heads (scoring needs only "cls"; the others' convolutions at H/4 are skipped)."""
        if x.ndim != 4 or x.shape[1] != 3 or x.shape[2] % 32 or x.shape[3] % 32:
            raise ValueError(f"expected input (B, 3, H, W) with H, W multiples of 32, got {tuple(x.shape)}")
        feats = [self.dropout(t) for t in self.backbone(x)]
        f = self.decoder(*feats)
        return {name: head(f) for name, head in self.heads.items() if heads is None or name in heads}

    def train(self, mode: bool = True) -> LAANet:
        super().train(mode)
        if mode and self.backbone_bn_frozen:
            for m in self.backbone.modules():
                if isinstance(m, nn.modules.batchnorm._BatchNorm):
                    m.eval()
        return self


def build_model(cfg: ModelConfig | dict[str, Any]) -> LAANet:
    """Build LAA-Net from a ModelConfig or a dict of its fields (random decoder/heads init)."""
    if isinstance(cfg, dict):
        cfg = ModelConfig.from_dict(cfg)
    if cfg.backbone_weights is not None and not Path(cfg.backbone_weights).is_file():
        raise WeightsNotFound(f"{cfg.backbone_weights}: backbone weights file not found")
    return LAANet(cfg)


def set_backbone_frozen(model: LAANet, frozen: bool, freeze_bn: bool = False) -> None:
    """Freeze (or unfreeze) the backbone's parameters; with ``freeze_bn`` also keep its BatchNorm
    layers in eval mode (running statistics fixed) until unfrozen, across ``model.train()`` calls.
    Without it (the reference) frozen BN layers normalise with batch statistics and update their
    running statistics as in training."""
    for p in model.backbone.parameters():
        p.requires_grad_(not frozen)
    model.backbone_bn_frozen = bool(frozen and freeze_bn)
    model.train(model.training)
