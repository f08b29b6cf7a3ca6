"""LAA-Net network contracts on CPU: shapes, size, freezing, ablations, init, checkpoints, errors.

Most tests use a small EfficientNet (tf_efficientnet_b0) at small inputs; the default B4 is built
once to check the parameter count and the SPEC shapes at 384.
"""
import os

import pytest
import torch
import torch.nn as nn

from model import build_model, load_checkpoint
from model.checkpoint import save_checkpoint
from model.config import ModelConfig
from model.net.efpn import FusionLevel
from model.net.laanet import HM_BIAS_INIT, set_backbone_frozen
from model.train.losses import LAALoss

SMALL = {"backbone": "tf_efficientnet_b0", "input_size": 128}


@pytest.fixture(scope="module")
def small_model():
    torch.manual_seed(0)
    return build_model(SMALL)


def test_default_config_size_and_shapes():
    model = build_model(ModelConfig()).eval()
    assert sum(p.numel() for p in model.parameters()) == 27_128_786
    assert sum(p.numel() for p in model.backbone.parameters()) == 17_548_616
    assert model.backbone.channels == {"x1": 1792, "x2": 448, "x3": 160, "x4": 56}
    x = torch.zeros(1, 3, 384, 384)
    with torch.no_grad():
        feats = model.backbone(x)
        out = model(x)
    assert [tuple(t.shape[1:]) for t in feats] == [(1792, 12, 12), (448, 12, 12), (160, 24, 24), (56, 48, 48)]
    assert {k: tuple(v.shape) for k, v in out.items()} == {
        "cls": (1, 1), "hm": (1, 1, 96, 96), "cstency": (1, 256, 96, 96)}


@pytest.mark.parametrize("hw", [(64, 64), (96, 128), (128, 128)])
def test_output_shapes_and_dtypes(small_model, hw):
    h, w = hw
    with torch.no_grad():
        out = small_model.eval()(torch.rand(2, 3, h, w) * 2 - 1)
    assert out["cls"].shape == (2, 1)
    assert out["hm"].shape == (2, 1, h // 4, w // 4)
    assert out["cstency"].shape == (2, 256, h // 4, w // 4)
    assert all(v.dtype == torch.float32 and torch.isfinite(v).all() for v in out.values())


def test_bad_input_shape_is_rejected(small_model):
    with pytest.raises(ValueError, match="multiples of 32"):
        small_model(torch.zeros(1, 3, 100, 128))


def _grad_flags(model, x):
    model.zero_grad(set_to_none=True)
    out = model(x)
    sum(v.float().mean() for v in out.values()).backward()
    backbone = any(p.grad is not None and p.grad.abs().sum() > 0 for p in model.backbone.parameters())
    decoder = any(p.grad is not None and p.grad.abs().sum() > 0 for p in model.decoder.parameters())
    return backbone, decoder


def test_freezing_stops_backbone_gradients_and_bn_statistics():
    torch.manual_seed(0)
    model = build_model(SMALL).train()
    x = torch.rand(2, 3, 64, 64) * 2 - 1
    assert _grad_flags(model, x) == (True, True)
    set_backbone_frozen(model, True, freeze_bn=True)
    model.train()  # must not bring the backbone's BN back to training mode
    bn = model.backbone.body.bn1
    before = bn.running_mean.clone()
    assert _grad_flags(model, x) == (False, True)
    assert torch.equal(bn.running_mean, before) and not bn.training
    assert model.decoder.training
    set_backbone_frozen(model, False)
    assert bn.training
    assert _grad_flags(model, x) == (True, True)
    assert not torch.equal(bn.running_mean, before)


def test_freezing_can_keep_bn_statistics_updating():
    model = build_model(SMALL).train()
    set_backbone_frozen(model, True, freeze_bn=False)
    bn = model.backbone.body.bn1
    before = bn.running_mean.clone()
    model(torch.rand(1, 3, 64, 64))
    assert not torch.equal(bn.running_mean, before)


def test_fusion_level_gating():
    d = torch.tensor([[[[0.0, 2.0]]]])
    skip = torch.tensor([[[[4.0, 4.0]]]])
    identity = nn.Sequential()
    efpn = FusionLevel(identity, "efpn")(d, skip)
    assert torch.allclose(efpn[0, 1, 0], torch.tensor([2.0, 4.0 * (1 - torch.sigmoid(torch.tensor(2.0)))]))
    assert torch.allclose(efpn[0, 0], d[0, 0])
    sq = FusionLevel(identity, "efpn", gamma_w=2.0)(d, skip)
    assert torch.allclose(sq[0, 1, 0], torch.tensor([1.0, 4.0 * (1 - torch.sigmoid(torch.tensor(2.0))) ** 2]))
    assert torch.equal(FusionLevel(identity, "fpn")(d, skip), torch.cat([d, skip], 1))
    assert torch.equal(FusionLevel(identity, "none")(d, skip), d)


def _level_inputs(model):
    """Input channels of each decoder level (3x3 reduction conv, or the Inception's pointwise conv)."""
    first = [lvl.transform[0] for lvl in model.decoder.levels]
    return [m.pw[0].in_channels if hasattr(m, "pw") else m[0].in_channels for m in first]


def test_ablation_switches_change_the_architecture(small_model):
    c = small_model.backbone.channels  # b0: x1 1280, x2 320, x3 112, x4 40
    in_channels = _level_inputs(small_model)
    assert in_channels == [c["x1"], 2 * c["x2"], 2 * c["x3"], 2 * c["x4"]]
    assert small_model.decoder.out_channels == 2 * c["x4"]

    fpn = build_model({**SMALL, "decoder": "fpn"})
    assert fpn.decoder.fused == (True, True, True)
    fpn.load_state_dict(small_model.state_dict())  # same parameters, only the gate differs
    x = torch.rand(1, 3, 64, 64) * 2 - 1
    with torch.no_grad():
        assert not torch.allclose(fpn.eval()(x)["hm"], small_model.eval()(x)["hm"])

    none = build_model({**SMALL, "decoder": "none"})
    assert _level_inputs(none) == [
        c["x1"], c["x2"], c["x3"], c["x4"]]
    assert all(lvl.fuse == "none" for lvl in none.decoder.levels)

    partial = build_model({**SMALL, "skip_levels": (1, 3)})
    assert [lvl.fuse for lvl in partial.decoder.levels] == ["efpn", "none", "efpn", "none"]
    assert _level_inputs(partial)[1:] == [
        2 * c["x2"], c["x3"], 2 * c["x4"]]

    cls_only = build_model({**SMALL, "heads": {"cls": 1}})
    with torch.no_grad():
        out = cls_only.eval()(x)
    assert set(out) == {"cls"}
    for model in (none, partial):
        with torch.no_grad():
            out = model.eval()(x)
        assert out["hm"].shape == (1, 1, 16, 16) and out["cstency"].shape == (1, 256, 16, 16)


def test_initialisation(small_model):
    assert torch.allclose(small_model.heads["hm"].out.bias, torch.tensor(HM_BIAS_INIT))
    # transposed convs start as per-channel bilinear upsampling: a constant map stays constant inside
    up = small_model.decoder.levels[1].transform[1]
    assert isinstance(up, nn.ConvTranspose2d)
    with torch.no_grad():
        y = up(torch.ones(1, up.in_channels, 6, 6))
    assert torch.allclose(y[:, :, 1:-1, 1:-1], torch.ones_like(y[:, :, 1:-1, 1:-1]))
    assert up.weight[0, 1].abs().sum() == 0


def test_dropout_only_in_training(small_model):
    x = torch.rand(1, 3, 64, 64)
    small_model.eval()
    with torch.no_grad():
        a, b = small_model(x)["hm"], small_model(x)["hm"]
    assert torch.equal(a, b)
    small_model.train()
    with torch.no_grad():
        c, d = small_model(x)["hm"], small_model(x)["hm"]
    small_model.eval()
    assert not torch.equal(c, d)


def test_bf16_autocast_has_no_nan(small_model):
    model = small_model.train()
    x = torch.rand(2, 3, 64, 64) * 2 - 1
    batch = {"label": torch.tensor([0.0, 1.0]), "heatmap": torch.zeros(2, 1, 16, 16),
             "consistency": torch.zeros(2, 16, 16)}
    batch["heatmap"][1, 0, 5, 5] = 1.0
    batch["consistency"][1, 4:8, 4:8] = 0.9
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = model(x)
        total, terms = LAALoss()(out, batch)
    assert out["hm"].dtype == torch.bfloat16
    assert torch.isfinite(total) and all(torch.isfinite(v) for v in terms.values())
    model.zero_grad(set_to_none=True)
    total.backward()
    assert all(torch.isfinite(p.grad).all() for p in model.parameters() if p.grad is not None)
    model.eval()


def test_checkpoint_round_trip(small_model, tmp_path):
    path = tmp_path / "run" / "last.pt"
    cfg = small_model.config.to_dict()
    save_checkpoint(path, {"model": small_model.state_dict(), "config": {"model": cfg}, "epoch": 3, "step": 30})
    assert path.is_file() and not list((tmp_path / "run").glob("last.pt*.tmp"))
    loaded = load_checkpoint(path)
    assert not loaded.training and loaded.config.backbone == "tf_efficientnet_b0"
    x = torch.rand(1, 3, 64, 64)
    with torch.no_grad():
        assert torch.equal(loaded(x)["cstency"], small_model.eval()(x)["cstency"])


def test_load_checkpoint_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match="missing.pt"):
        load_checkpoint(tmp_path / "missing.pt")
    bad = tmp_path / "bad.pt"
    torch.save({"state_dict": {"_conv_stem.weight": torch.zeros(1)}}, bad)
    with pytest.raises(ValueError, match=r"bad.pt: not an LAA-Net checkpoint.*model.convert"):
        load_checkpoint(bad)
    text = tmp_path / "text.pt"
    text.write_text("not a checkpoint")
    with pytest.raises(ValueError, match="text.pt: not a readable LAA-Net checkpoint"):
        load_checkpoint(text)


def test_config_validation():
    with pytest.raises(ValueError, match="unknown model config keys"):
        ModelConfig.from_dict({"decodr": "efpn"})
    with pytest.raises(ValueError, match="model.decoder"):
        ModelConfig(decoder="unet")
    with pytest.raises(ValueError, match="skip_levels"):
        ModelConfig(skip_levels=(0, 1))
    cfg = ModelConfig.from_dict(ModelConfig(skip_levels=(1, 2)).to_dict())
    assert cfg.skip_levels == (1, 2) and cfg.heads == {"cls": 1, "hm": 1, "cstency": 256}


def test_pretrained_offline_names_the_file_to_provide(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(RuntimeError, match=r"tf_efficientnet_b0.*backbone_weights=PATH"):
        build_model({**SMALL, "pretrained": True})


def test_pretrained_without_a_network_fails_in_seconds_naming_the_key(monkeypatch):
    """Fault matrix: model.pretrained=true offline (HF_HUB_OFFLINE unset) spent ~60 s in hub retries, then printed
    a traceback whose advice named a --backbone-weights flag train.py does not have."""
    import time

    from model.net.backbone import PretrainedUnavailable
    from pipeline.errors import UserError

    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    for proxy in ("HTTPS_PROXY", "https_proxy", "ALL_PROXY", "all_proxy"):
        monkeypatch.delenv(proxy, raising=False)
    monkeypatch.setenv("HF_ENDPOINT", "https://127.0.0.1:9")  # nothing listens there: refused at once
    t0 = time.perf_counter()
    with pytest.raises(PretrainedUnavailable) as e:
        build_model({**SMALL, "pretrained": True})
    assert time.perf_counter() - t0 < 10 and isinstance(e.value, UserError)
    msg = str(e.value)
    assert "model.backbone_weights=PATH" in msg and "huggingface.co/timm/tf_efficientnet_b0" in msg
    assert "--backbone-weights" not in msg and "\n" not in msg


def test_backbone_weights_from_local_file(small_model, tmp_path):
    state = {k: v.clone() for k, v in small_model.backbone.body.state_dict().items()}
    state["classifier.weight"] = torch.zeros(1000, 1280)  # timm files carry the ImageNet classifier
    path = tmp_path / "b0.pth"
    torch.save(state, path)
    model = build_model({**SMALL, "backbone_weights": str(path)})
    assert torch.equal(model.backbone.body.conv_stem.weight, small_model.backbone.body.conv_stem.weight)
    with pytest.raises(FileNotFoundError, match="nope.pth"):
        build_model({**SMALL, "backbone_weights": str(tmp_path / "nope.pth")})
    torch.save({"conv_stem.weight": torch.zeros(2)}, tmp_path / "wrong.pth")
    with pytest.raises(ValueError, match="wrong.pth: does not match the backbone"):
        build_model({**SMALL, "backbone_weights": str(tmp_path / "wrong.pth")})


def test_hf_offline_is_set_for_tests():
    assert os.environ.get("HF_HUB_OFFLINE") == "1"


def test_backbone_weights_in_the_reference_layout(small_model, tmp_path):
    """A lukemelas-style file (the reference's ImageNet weights layout) loads into the timm backbone."""
    ds = {"conv_dw": "_depthwise_conv", "bn1": "_bn1", "se.conv_reduce": "_se_reduce",
          "se.conv_expand": "_se_expand", "conv_pw": "_project_conv", "bn2": "_bn2"}
    ir = {"conv_pw": "_expand_conv", "bn1": "_bn0", "conv_dw": "_depthwise_conv", "bn2": "_bn1",
          "se.conv_reduce": "_se_reduce", "se.conv_expand": "_se_expand", "conv_pwl": "_project_conv",
          "bn3": "_bn2"}
    top = {"conv_stem": "_conv_stem", "bn1": "_bn0", "conv_head": "_conv_head", "bn2": "_bn1"}
    body = small_model.backbone.body
    flat = [f"blocks.{s}.{i}." for s, stage in enumerate(body.blocks) for i in range(len(stage))]
    state = {}
    for key, value in body.state_dict().items():
        if key.startswith("blocks."):
            n = next(j for j, p in enumerate(flat) if key.startswith(p))
            rest = key[len(flat[n]):]
            table = ds if n == 0 else ir  # b0: only the first block has no expansion
            module = next(m for m in sorted(table, key=len, reverse=True) if rest.startswith(m + "."))
            state[f"_blocks.{n}.{table[module]}{rest[len(module):]}"] = value.clone()
        else:
            module, _, param = key.partition(".")
            state[f"{top[module]}.{param}"] = value.clone()
    state["_fc.weight"] = torch.zeros(1000, 1280)
    path = tmp_path / "efficientnet-b0-lukemelas.pth"
    torch.save(state, path)
    model = build_model({**SMALL, "backbone_weights": str(path)})
    for key, value in body.state_dict().items():
        assert torch.equal(model.backbone.body.state_dict()[key], value), key


def test_python_m_model_lists_and_runs_the_tools(repo_root):
    import subprocess
    import sys

    env = {"HF_HUB_OFFLINE": "1", "PATH": "/usr/bin:/bin"}
    out = subprocess.run([sys.executable, "-m", "model", "--help"], cwd=repo_root, capture_output=True,
                         text=True, env=env)
    assert out.returncode == 0 and all(c in out.stdout for c in ("convert", "predict", "preview", "face-scale"))
    out = subprocess.run([sys.executable, "-m", "model", "face-scale"], cwd=repo_root, capture_output=True,
                         text=True, env=env)
    assert out.returncode == 0 and "training   median" in out.stdout
    bad = subprocess.run([sys.executable, "-m", "model", "train"], cwd=repo_root, capture_output=True, text=True,
                         env=env)
    assert bad.returncode == 2 and "unknown command 'train'" in bad.stderr
