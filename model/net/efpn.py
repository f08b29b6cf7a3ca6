"""The Enhanced FPN decoder of LAA-Net (paper eq. 9) and its ablations (plain FPN, no FPN).

The decoder is a loop over one fusion step. At level i the previous decoder tensor G_{i-1} is
transformed into D_i (a 3x3 ConvBNReLU that reduces channels to the skip's, then a 4x4 stride-2
transposed conv + BN when the skip is at a finer stride), and D_i is fused with the backbone skip x:
    efpn:  G_i = [D_i, (1 - sigmoid(D_i))^gamma_w * x]   (the decoder gates what the skip adds)
    fpn:   G_i = [D_i, x]
    none / level not fused:  G_i = D_i
A last level (Inception block, transposed conv, BN) brings the result to stride 4 and a ReLU gives F.

EfficientNet-B4 at 384 x 384 (channels x side):
    x1 1792x12 -> D1 448x12 -> G1 896x12 -> D2 160x24 -> G2 320x24 -> D3 56x48 -> G3 112x48
    -> Inception(112) -> ConvT -> BN -> ReLU -> F 112x96
"""
from __future__ import annotations

import math
from collections.abc import Sequence

import torch
import torch.nn as nn

from model.config import DECODER_MODES


def conv_bn_relu(cin: int, cout: int, kernel: int) -> nn.Sequential:
    """kxk conv (no bias, 'same' padding) + BatchNorm + ReLU; children named 0, 1, 2."""
    return nn.Sequential(nn.Conv2d(cin, cout, kernel, padding=kernel // 2, bias=False),
                         nn.BatchNorm2d(cout), nn.ReLU(inplace=True))


class Inception(nn.Module):
    """Four-branch block (B, C, H, W) -> (B, 4 * (C // 4), H, W).

    Branches: P(x), conv3(P(x)), conv5(P(x)), P(maxpool3x3(x)), with ONE pointwise ConvBNReLU P
    (C -> C/4) shared by the first and the last branch, as in the reference implementation (its
    checkpoints hold a single P).
    """

    def __init__(self, channels: int):
        super().__init__()
        branch = channels // 4
        self.pw = conv_bn_relu(channels, branch, 1)
        self.conv3 = conv_bn_relu(branch, branch, 3)
        self.conv5 = conv_bn_relu(branch, branch, 5)
        self.pool = nn.MaxPool2d(3, stride=1, padding=1)
        self.out_channels = 4 * branch

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        p = self.pw(x)
        return torch.cat([p, self.conv3(p), self.conv5(p), self.pw(self.pool(x))], dim=1)


def upsample2x(channels: int) -> list[nn.Module]:
    """4x4 stride-2 transposed conv (padding 1, no bias) + BN: (B, C, H, W) -> (B, C, 2H, 2W)."""
    return [nn.ConvTranspose2d(channels, channels, 4, stride=2, padding=1, bias=False),
            nn.BatchNorm2d(channels)]


class FusionLevel(nn.Module):
    """One decoder level: D = transform(G_prev), then G = fuse(D, skip).

    Args:
        transform: G_prev (B, Cin, h, w) -> D (B, Cd, h', w').
        fuse: "efpn" (gated concat), "fpn" (concat) or "none" (G = D, skip ignored).
        gamma_w: exponent of the gate (1 - sigmoid(D)).
    """

    def __init__(self, transform: nn.Sequential, fuse: str, gamma_w: float = 1.0):
        super().__init__()
        if fuse not in DECODER_MODES:
            raise ValueError(f"fuse must be one of {DECODER_MODES}, got {fuse!r}")
        self.transform = transform
        self.fuse = fuse
        self.gamma_w = float(gamma_w)

    def forward(self, g: torch.Tensor, skip: torch.Tensor | None = None) -> torch.Tensor:
        d = self.transform(g)
        if self.fuse == "none" or skip is None:
            return d
        if self.fuse == "efpn":
            gate = torch.sigmoid(-d)  # = 1 - sigmoid(d), without cancellation for large d
            if self.gamma_w != 1.0:
                gate = gate.pow(self.gamma_w)
            skip = gate * skip
        return torch.cat([d, skip], dim=1)


class Decoder(nn.Module):
    """E-FPN / FPN / plain deconv decoder: (x1, x2, x3, x4) -> F (B, C_F, 8 * h1, 8 * w1).

    Args:
        channels: backbone channels {"x1", "x2", "x3", "x4"}.
        mode: "efpn", "fpn" or "none".
        skip_levels: which skips are fused: 1 -> x2 (stride 32), 2 -> x3 (stride 16), 3 -> x4 (stride 8).
        gamma_w: gate exponent for "efpn".
    Attributes:
        out_channels: C_F (112 for B4 with every level fused).
    """

    SKIPS = (("x2", 32), ("x3", 16), ("x4", 8))

    def __init__(self, channels: dict[str, int], mode: str = "efpn",
                 skip_levels: Sequence[int] = (1, 2, 3), gamma_w: float = 1.0):
        super().__init__()
        if mode not in DECODER_MODES:
            raise ValueError(f"decoder must be one of {DECODER_MODES}, got {mode!r}")
        bad = sorted(set(skip_levels) - {1, 2, 3})
        if bad:
            raise ValueError(f"skip_levels must be a subset of (1, 2, 3), got {tuple(skip_levels)}")
        self.mode = mode
        self.fused = tuple(i in skip_levels and mode != "none" for i in (1, 2, 3))
        levels = []
        cin, stride = channels["x1"], 32
        for (name, skip_stride), fused in zip(self.SKIPS, self.fused):
            cd = channels[name]
            layers = [conv_bn_relu(cin, cd, 3)]
            if skip_stride < stride:
                layers += upsample2x(cd)
            levels.append(FusionLevel(nn.Sequential(*layers), mode if fused else "none", gamma_w))
            cin, stride = cd * (2 if fused else 1), skip_stride
        inception = Inception(cin)
        levels.append(FusionLevel(nn.Sequential(inception, *upsample2x(inception.out_channels)), "none"))
        self.levels = nn.ModuleList(levels)
        self.out_channels = inception.out_channels
        self.reset_parameters()

    def reset_parameters(self) -> None:
        """Transposed convs start as per-channel bilinear 2x upsampling (weights 0 across channels)."""
        for m in self.modules():
            if isinstance(m, nn.ConvTranspose2d):
                nn.init.zeros_(m.weight)
                k = m.kernel_size[0]
                f = math.ceil(k / 2)
                c = (2 * f - 1 - f % 2) / (2.0 * f)
                ramp = torch.tensor([1 - abs(i / f - c) for i in range(k)])
                kernel = ramp[:, None] * ramp[None, :]
                with torch.no_grad():
                    for ch in range(min(m.in_channels, m.out_channels)):
                        m.weight[ch, ch] = kernel

    def forward(self, x1: torch.Tensor, x2: torch.Tensor, x3: torch.Tensor,
                x4: torch.Tensor) -> torch.Tensor:
        g = x1
        for level, skip in zip(self.levels, (x2, x3, x4, None)):
            g = level(g, skip)
        return torch.relu(g)
