"""Converter for reference LAA-Net checkpoints.

The reference network is recomputed here independently, with plain torch.nn.functional ops, from a
random state dict laid out like the reference's (keys and shapes from the shipped keys file): a
lukemelas-style EfficientNet-B4 with TF-"same" padding fixed for a 380 input, then the E-FPN decoder
and the heads. The converted checkpoint must reproduce its outputs.
"""
import math
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from model import load_checkpoint
from model.convert import convert_reference, main, unwrap_reference_state

# Keys, shapes and dtypes of the reference implementation's state dict (configs/efn4_fpn_sbi_adv.yaml).
KEYS_FILE = Path(__file__).resolve().parent / "data" / "reference_state_dict_keys.tsv"
# EfficientNet-B4 stages as published: (blocks after depth scaling 1.8, stride of the first block).
B4_STAGES = [(2, 1), (4, 2), (4, 2), (6, 2), (6, 1), (8, 2), (2, 1)]
STATIC_PAD_SIZE = 380


def read_keys() -> list[tuple[str, tuple[int, ...], str]]:
    rows = []
    for line in KEYS_FILE.read_text().splitlines():
        if not line.strip() or line.startswith("#"):
            continue
        key, shape, dtype = line.split("\t")
        rows.append((key, tuple(int(s) for s in shape.strip("()").split(",") if s.strip()), dtype))
    return rows


def random_reference_state(seed: int = 0) -> dict[str, torch.Tensor]:
    """Random weights with the reference's keys/shapes; BN statistics plausible; Inception twins equal."""
    g = torch.Generator().manual_seed(seed)
    state = {}
    for key, shape, dtype in read_keys():
        if dtype == "int64":
            state[key] = torch.tensor(7, dtype=torch.int64)
        elif key.endswith("running_var"):
            state[key] = torch.rand(shape, generator=g) + 0.5
        elif key.endswith("running_mean") or key.endswith("bias"):
            state[key] = 0.1 * torch.randn(shape, generator=g)
        elif len(shape) == 1:  # BN scale
            state[key] = 0.5 + 0.5 * torch.rand(shape, generator=g)
        else:
            fan_in = math.prod(shape[1:])
            state[key] = torch.randn(shape, generator=g) / math.sqrt(fan_in)
    for key in list(state):
        if key.startswith("inception_block."):
            state[key] = state["deconv_4.0." + key[len("inception_block."):]].clone()
    return state


# ----- independent functional reference ------------------------------------------------------------
def _pad_conv(x, w, b, stride, size, groups=1):
    """Conv with TF-'same' padding computed statically for a `size` input (applied to any input)."""
    k = w.shape[-1]
    out = -(-size // stride)
    total = max((out - 1) * stride + k - size, 0)
    x = F.pad(x, (total // 2, total - total // 2, total // 2, total - total // 2))
    return F.conv2d(x, w, b, stride, 0, 1, groups)


def _bn(x, s, p, eps):
    return F.batch_norm(x, s[p + ".running_mean"], s[p + ".running_var"], s[p + ".weight"], s[p + ".bias"],
                        False, 0.0, eps)


def reference_forward(s: dict, x: torch.Tensor) -> dict:
    eps = 1e-3
    size = STATIC_PAD_SIZE
    x = F.silu(_bn(_pad_conv(x, s["_conv_stem.weight"], None, 2, size), s, "_bn0", eps))
    size = -(-size // 2)
    n, ends = 0, {}
    for stage, (repeats, stride0) in enumerate(B4_STAGES):
        for r in range(repeats):
            p, stride, inp = f"_blocks.{n}.", stride0 if r == 0 else 1, x
            if p + "_expand_conv.weight" in s:
                x = F.silu(_bn(F.conv2d(x, s[p + "_expand_conv.weight"]), s, p + "_bn0", eps))
            dw = s[p + "_depthwise_conv.weight"]
            x = F.silu(_bn(_pad_conv(x, dw, None, stride, size, groups=dw.shape[0]), s, p + "_bn1", eps))
            size = -(-size // stride)
            se = F.adaptive_avg_pool2d(x, 1)
            se = F.conv2d(F.silu(F.conv2d(se, s[p + "_se_reduce.weight"], s[p + "_se_reduce.bias"])),
                          s[p + "_se_expand.weight"], s[p + "_se_expand.bias"])
            x = torch.sigmoid(se) * x
            x = _bn(F.conv2d(x, s[p + "_project_conv.weight"]), s, p + "_bn2", eps)
            if stride == 1 and x.shape == inp.shape:
                x = x + inp
            n += 1
        ends[stage] = x
    x1 = F.silu(_bn(F.conv2d(x, s["_conv_head.weight"]), s, "_bn1", eps))
    x2, x3, x4 = ends[6], ends[4], ends[2]

    def cbr(t, p, pad):
        return F.relu(_bn(F.conv2d(t, s[p + ".0.weight"], None, 1, pad), s, p + ".1", 1e-5))

    def up(t, p):
        return _bn(F.conv_transpose2d(t, s[p + ".1.weight"], None, 2, 1), s, p + ".2", 1e-5)

    def gate(d, skip):
        return torch.cat([d, (1 - torch.sigmoid(d)) * skip], 1)

    g1 = gate(cbr(x1, "deconv_1.0", 1), x2)
    g2 = gate(up(cbr(g1, "deconv_2.0", 1), "deconv_2"), x3)
    g3 = gate(up(cbr(g2, "deconv_3.0", 1), "deconv_3"), x4)
    pw = cbr(g3, "inception_block.pw_block", 0)
    inc = torch.cat([pw, cbr(pw, "inception_block.conv3_block", 1), cbr(pw, "inception_block.conv5_block", 2),
                     cbr(F.max_pool2d(g3, 3, 1, 1), "inception_block.pw_block", 0)], 1)
    f = F.relu(up(inc, "deconv_4"))

    def head(name, out_idx):
        h = F.relu(_bn(F.conv2d(f, s[f"{name}.0.weight"], s[f"{name}.0.bias"], 1, 1), s, f"{name}.1", 1e-5))
        return F.conv2d(h, s[f"{name}.{out_idx}.weight"], s[f"{name}.{out_idx}.bias"])

    hcls = F.relu(_bn(F.conv2d(f, s["cls.0.weight"], s["cls.0.bias"], 1, 1), s, "cls.1", 1e-5))
    cls = F.linear(hcls.mean((2, 3)), s["cls.5.weight"], s["cls.5.bias"])
    return {"cls": cls, "hm": head("hm", 3), "cstency": head("cstency", 3)}


def _rel_err(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a - b).abs().max() / b.abs().max().clamp(min=1e-12))


@pytest.fixture(scope="module")
def reference_file(tmp_path_factory):
    """A reference-like file: {'state_dict': {'module.' + key: tensor}, 'epoch': 12}."""
    state = random_reference_state()
    path = tmp_path_factory.mktemp("ref") / "reference.pth"
    torch.save({"state_dict": {"module." + k: v for k, v in state.items()}, "epoch": 12}, path)
    return path, state


@pytest.mark.slow
def test_converted_checkpoint_reproduces_reference_network(reference_file, tmp_path):
    path, state = reference_file
    out = convert_reference(path, tmp_path / "converted.pt")
    ckpt = torch.load(out, weights_only=True)
    assert ckpt["config"]["model"]["reference_padding"] is True
    assert ckpt["epoch"] == 12
    model = load_checkpoint(out)
    assert not model.training
    x = torch.rand(1, 3, 384, 384, generator=torch.Generator().manual_seed(1)) * 2 - 1
    with torch.no_grad():
        ours = model(x)
        ref = reference_forward(state, x)
    for key in ("cls", "hm", "cstency"):
        assert ours[key].shape == ref[key].shape
        assert _rel_err(ours[key], ref[key]) < 1e-4, key
    # The padding fix matters: with timm's dynamic padding the same weights give other outputs.
    model.backbone.body.blocks[2][0].conv_dw = _dynamic_pad_twin(model.backbone.body.blocks[2][0].conv_dw)
    with torch.no_grad():
        unpadded = model(x)
    assert _rel_err(unpadded["hm"], ref["hm"]) > 1e-3


def _dynamic_pad_twin(conv):
    from timm.layers import Conv2dSame

    twin = Conv2dSame(conv.in_channels, conv.out_channels, conv.kernel_size, conv.stride, groups=conv.groups,
                      bias=False)
    twin.weight = conv.weight
    return twin


def test_unwrap_variants_give_the_same_state():
    state = {k: v for k, v in random_reference_state().items()}
    plain = unwrap_reference_state(state, "plain")
    wrapped = unwrap_reference_state({"state_dict": {"module." + k: v for k, v in state.items()}}, "wrapped")
    assert plain.keys() == wrapped.keys() == state.keys()


def test_rejects_files_that_are_not_reference_checkpoints(tmp_path):
    not_ckpt = tmp_path / "optimizer_only.pth"
    torch.save({"optimizer": {"lr": 0.1}, "epoch": 3}, not_ckpt)
    with pytest.raises(ValueError, match=r"optimizer_only.pth: not an LAA-Net reference checkpoint.*found"):
        convert_reference(not_ckpt, tmp_path / "out.pt")
    tensor_file = tmp_path / "tensor.pth"
    torch.save(torch.zeros(3), tensor_file)
    with pytest.raises(ValueError, match="found a Tensor"):
        convert_reference(tensor_file, tmp_path / "out.pt")
    text = tmp_path / "notes.pth"
    text.write_text("hello")
    with pytest.raises(ValueError, match="notes.pth: not a PyTorch checkpoint"):
        convert_reference(text, tmp_path / "out.pt")
    truncated = tmp_path / "truncated.pth"
    truncated.write_bytes(not_ckpt.read_bytes()[:100])
    with pytest.raises(ValueError, match="truncated.pth: cannot be read by torch.load"):
        convert_reference(truncated, tmp_path / "out.pt")
    assert main([str(text), str(tmp_path / "out.pt")]) == 1
    assert not (tmp_path / "out.pt").exists()


def test_rejects_inconsistent_inception_twins(tmp_path):
    state = random_reference_state()
    state["inception_block.pw_block.0.weight"] = state["inception_block.pw_block.0.weight"] + 1
    path = tmp_path / "tampered.pth"
    torch.save(state, path)
    with pytest.raises(ValueError, match="differ, but they are one module"):
        convert_reference(path, tmp_path / "out.pt")
