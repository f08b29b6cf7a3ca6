"""Convert a checkpoint of the reference LAA-Net implementation into this project's format.

    python -m model.convert REFERENCE.pth OUT.pt [--trust-pickle]

The reference stores a lukemelas-style EfficientNet (``_conv_stem``, ``_blocks.N._depthwise_conv``,
``_bn0``, ``_conv_head``...), decoder stages ``deconv_1..4`` (its Inception block appears twice, as
``inception_block.*`` and ``deconv_4.0.*``: one module under two names) and heads ``hm``, ``cls``,
``cstency``. Files may wrap the state dict (``{'state_dict': ...}``) and prefix keys with ``module.``
(DataParallel). The output is a checkpoint that ``model.load_checkpoint`` rebuilds, with
``reference_padding=True`` so the network pads exactly like the reference and gives its outputs.
"""
from __future__ import annotations

import sys
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
import torch.nn as nn

from model.checkpoint import CheckpointError, CheckpointNotFound
from model.net.backbone import map_efficientnet_keys
from pipeline.errors import exit_status
from pipeline.files import file_sha256

# Reference decoder/head prefixes -> ours (first match wins).
DECODER_PREFIXES = (
    ("deconv_1.0.", "decoder.levels.0.transform.0."),
    ("deconv_2.0.", "decoder.levels.1.transform.0."),
    ("deconv_2.1.", "decoder.levels.1.transform.1."),
    ("deconv_2.2.", "decoder.levels.1.transform.2."),
    ("deconv_3.0.", "decoder.levels.2.transform.0."),
    ("deconv_3.1.", "decoder.levels.2.transform.1."),
    ("deconv_3.2.", "decoder.levels.2.transform.2."),
    ("deconv_4.0.pw_block.", "decoder.levels.3.transform.0.pw."),
    ("deconv_4.0.conv3_block.", "decoder.levels.3.transform.0.conv3."),
    ("deconv_4.0.conv5_block.", "decoder.levels.3.transform.0.conv5."),
    ("deconv_4.1.", "decoder.levels.3.transform.1."),
    ("deconv_4.2.", "decoder.levels.3.transform.2."),
    ("hm.0.", "heads.hm.conv.0."), ("hm.1.", "heads.hm.conv.1."), ("hm.3.", "heads.hm.out."),
    ("cls.0.", "heads.cls.conv.0."), ("cls.1.", "heads.cls.conv.1."), ("cls.5.", "heads.cls.out."),
    ("cstency.0.", "heads.cstency.conv.0."), ("cstency.1.", "heads.cstency.conv.1."),
    ("cstency.3.", "heads.cstency.out."),
)
# The second name of the reference's shared Inception module.
INCEPTION_ALIAS = ("inception_block.", "deconv_4.0.")

# (stem channels, number of blocks, head channels) of the lukemelas EfficientNets -> timm model.
EFFICIENTNET_BY_SHAPE = {
    (32, 16, 1280): "tf_efficientnet_b0", (32, 23, 1280): "tf_efficientnet_b1",
    (32, 23, 1408): "tf_efficientnet_b2", (40, 26, 1536): "tf_efficientnet_b3",
    (48, 32, 1792): "tf_efficientnet_b4", (48, 39, 2048): "tf_efficientnet_b5",
    (56, 45, 2304): "tf_efficientnet_b6", (64, 55, 2560): "tf_efficientnet_b7",
}


def _describe(obj: Any) -> str:
    if isinstance(obj, Mapping):
        keys = list(obj)[:6]
        return f"a {type(obj).__name__} with {len(obj)} keys, first {keys}"
    return f"a {type(obj).__name__}"


def unwrap_reference_state(obj: Any, source: str | Path) -> dict[str, torch.Tensor]:
    """The reference state dict inside a loaded file: unwraps ``{'state_dict': ...}`` (also ``model``,
    ``net``) and strips ``module.`` prefixes; raises naming what was found if it is not one."""
    found = obj
    for _ in range(3):
        if isinstance(obj, Mapping) and "_conv_stem.weight" not in obj and not any(
                isinstance(k, str) and k.endswith("_conv_stem.weight") for k in obj):
            inner = next((obj[k] for k in ("state_dict", "model", "net") if isinstance(obj.get(k), Mapping)),
                         None)
            if inner is None:
                break
            obj = inner
    if not isinstance(obj, Mapping):
        raise CheckpointError(f"{source}: not an LAA-Net reference checkpoint: found {_describe(found)}")
    state = {}
    for key, value in obj.items():
        if not isinstance(key, str) or not torch.is_tensor(value):
            raise CheckpointError(f"{source}: not an LAA-Net reference checkpoint: found {_describe(found)} "
                             f"with a non-tensor entry {key!r}")
        while key.startswith("module."):
            key = key[len("module."):]
        state[key] = value
    needed = ("_conv_stem.weight", "_conv_head.weight", "deconv_1.0.0.weight", "deconv_4.1.weight")
    absent = [k for k in needed if k not in state]
    if absent:
        raise CheckpointError(f"{source}: not an LAA-Net reference checkpoint (missing {absent}): "
                         f"found {_describe(found)}")
    return state


def infer_model_config(state: Mapping[str, torch.Tensor], source: str | Path = "<state dict>"):
    """The ModelConfig of a reference state dict (backbone variant, heads, skip levels)."""
    from model.config import ModelConfig

    n_blocks = 1 + max(int(k.split(".")[1]) for k in state if k.startswith("_blocks."))
    shape = (state["_conv_stem.weight"].shape[0], n_blocks, state["_conv_head.weight"].shape[0])
    if shape not in EFFICIENTNET_BY_SHAPE:
        raise CheckpointError(f"{source}: unknown EfficientNet (stem {shape[0]}, {shape[1]} blocks, head {shape[2]})")
    heads = {}
    for name, out_key in (("cls", "cls.5.weight"), ("hm", "hm.3.weight"), ("cstency", "cstency.3.weight")):
        if out_key in state:
            heads[name] = int(state[out_key].shape[0])
    if not heads:
        raise CheckpointError(f"{source}: no cls/hm/cstency head found")
    head_conv = int(state[f"{next(iter(heads))}.0.weight"].shape[0])
    # A fused level doubles the next conv's input channels (decoder width == skip width).
    skip_levels = []
    for level, (conv_key, width_key) in enumerate((("deconv_2.0.0.weight", "deconv_1.0.0.weight"),
                                                   ("deconv_3.0.0.weight", "deconv_2.0.0.weight"),
                                                   ("deconv_4.0.pw_block.0.weight", "deconv_3.0.0.weight")),
                                                  start=1):
        if state[conv_key].shape[1] == 2 * state[width_key].shape[0]:
            skip_levels.append(level)
    return ModelConfig(backbone=EFFICIENTNET_BY_SHAPE[shape], pretrained=False, decoder="efpn",
                       skip_levels=tuple(skip_levels), heads=heads, head_conv=head_conv,
                       reference_padding=True)


def convert_state_dict(state: Mapping[str, torch.Tensor], model: nn.Module,
                       source: str | Path = "<state dict>") -> dict[str, torch.Tensor]:
    """Map an unwrapped reference state dict onto ``model``'s keys; checks names and shapes, casts
    floating tensors to the model's dtype (the reference trained in float64)."""
    # The shared Inception module is stored under both names; both copies must agree.
    alias_from, alias_to = INCEPTION_ALIAS
    rest = {}
    for key, value in state.items():
        if key.startswith(alias_from):
            twin = alias_to + key[len(alias_from):]
            if twin in state and not torch.equal(state[twin], value):
                raise CheckpointError(f"{source}: {key} and {twin} differ, but they are one module in the reference")
            continue
        rest[key] = value
    out = {f"backbone.body.{k}": v for k, v in map_efficientnet_keys(rest, model.backbone.body, source).items()}
    for key, value in rest.items():
        if key.startswith("_"):
            continue
        target = next((new + key[len(old):] for old, new in DECODER_PREFIXES if key.startswith(old)), None)
        if target is None:
            raise CheckpointError(f"{source}: unexpected key {key}")
        out[target] = value
    out = {k: v for k, v in out.items() if not k.startswith("backbone.body.classifier.")}
    ours = model.state_dict()
    missing = sorted(set(ours) - set(out))
    unexpected = sorted(set(out) - set(ours))
    if missing or unexpected:
        raise CheckpointError(f"{source}: keys do not match the network: missing {missing[:5]}, "
                         f"unexpected {unexpected[:5]}")
    for key, value in out.items():
        if tuple(value.shape) != tuple(ours[key].shape):
            raise CheckpointError(f"{source}: {key} has shape {tuple(value.shape)}, the network expects "
                             f"{tuple(ours[key].shape)}")
        if value.is_floating_point():
            out[key] = value.to(ours[key].dtype)
    return out


def convert_reference(src: str | Path, dst: str | Path, trust_pickle: bool = False) -> Path:
    """Read a reference checkpoint ``src``, write an LAA-Net checkpoint ``dst``; returns ``dst``."""
    from model.checkpoint import save_checkpoint
    from model.net.laanet import build_model

    src = Path(src)
    if not src.is_file():
        raise CheckpointNotFound(f"{src}: file not found")
    with open(src, "rb") as fh:
        head = fh.read(4)
    if not (head.startswith(b"PK\x03\x04") or head[:1] == b"\x80"):  # torch zip archive / legacy pickle
        raise CheckpointError(f"{src}: not a PyTorch checkpoint (neither a torch.save archive nor a pickle; "
                         f"starts with {head!r})")
    try:
        obj = torch.load(src, map_location="cpu", weights_only=not trust_pickle)
    except Exception as err:
        hint = "" if trust_pickle else " (it may hold non-tensor objects: if you trust it, use --trust-pickle)"
        raise CheckpointError(f"{src}: cannot be read by torch.load ({type(err).__name__}){hint}") from err
    state = unwrap_reference_state(obj, src)
    cfg = infer_model_config(state, src)
    model = build_model(cfg)
    weights = convert_state_dict(state, model, src)
    model.load_state_dict(weights, strict=True)
    epoch = obj.get("epoch") if isinstance(obj, Mapping) and isinstance(obj.get("epoch"), int) else None
    return save_checkpoint(dst, {
        "model": model.state_dict(),
        "config": {"model": cfg.to_dict()},
        "epoch": epoch,  # None: unknown
        "step": None,
        "converted_from": {"file": src.name, "sha256": file_sha256(src)},
    })


def main(argv: list[str] | None = None) -> int:
    """``python -m model.convert``: exit status 0, 1 when the input is not a usable reference checkpoint (one
    line naming it), 2 on a usage error."""
    from model import cli as flags

    parser = flags.parser(
        "python -m model.convert", __doc__.split("\n\n")[0],
        "examples:\n"
        "  python -m model.convert downloads/laanet_sbi_reference.pth runs/reference/best.pt\n"
        "  python evaluate.py --checkpoint runs/reference/best.pt --dataset cdf2 --split test\n\n"
        "The output is rebuilt with reference_padding=True (docs/model.md, docs/fidelity.md).")
    parser.add_argument("reference", type=Path, help="checkpoint of the reference implementation (.pth)")
    parser.add_argument("out", type=Path, help="where this command writes the converted checkpoint (.pt)")
    parser.add_argument("--trust-pickle", action="store_true",
                        help="allow arbitrary pickled objects in the input (only for files you trust; default: "
                             "off, tensors and plain containers only)")
    args = parser.parse_args(argv)

    def run() -> int:
        out = convert_reference(args.reference, args.out, args.trust_pickle)
        print(f"wrote {out} (load with model.load_checkpoint)")
        return 0

    return exit_status("model.convert", run)


if __name__ == "__main__":
    sys.exit(main())
