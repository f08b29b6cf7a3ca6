"""Training config: defaults, YAML + overrides, unknown keys and wrong types named, round trips."""
from pathlib import Path

import pytest
import yaml

from model.config import Config, ConfigError
from model.config_io import config_from_dict, config_to_dict, load_config, save_config

CONFIGS = sorted((Path(__file__).resolve().parents[1] / "configs").rglob("*.yaml"))


def test_defaults_follow_the_paper_recipe():
    cfg = load_config(None)
    assert (cfg.optim.lr_start, cfg.optim.lr_peak, cfg.optim.warmup_fraction) == (5e-5, 2e-4, 0.25)
    assert cfg.optim.sam and cfg.optim.sam_rho == 0.05 and cfg.optim.weight_decay == 1e-4
    assert cfg.train.freeze_backbone_epochs == 6 and cfg.train.batch_pairs == 8
    assert cfg.data.frames_per_video == 8
    assert (cfg.loss.lambda_hm, cfg.loss.lambda_c) == (10.0, 100.0)


@pytest.mark.parametrize("path", CONFIGS, ids=lambda p: p.name)
def test_every_shipped_config_loads(path):
    cfg = load_config(path)
    assert isinstance(cfg, Config)


def test_reference_and_ablation_configs_differ_where_documented(repo_root):
    ref = load_config(repo_root / "configs/laanet_sbi_reference.yaml")
    assert (ref.loss.lambda_hm, ref.loss.lambda_c, ref.loss.hm_pos_weight) == (100.0, 100.0, 0.72)
    no_hm = load_config(repo_root / "configs/ablations/laanet_sbi_no_heatmap.yaml")
    assert "hm" not in no_hm.model.heads and no_hm.loss.lambda_hm == 0.0
    assert no_hm.data.shards == ["shards/ffpp/train"]  # inherited from its base
    assert load_config(repo_root / "configs/ablations/laanet_sbi_plain_fpn.yaml").model.decoder == "fpn"
    assert load_config(repo_root / "configs/laanet_bi.yaml").data.synthesis == "bi"


def test_overrides_are_typed():
    cfg = load_config(None, ["optim.lr_peak=3e-4", "train.epochs=7", "model.skip_levels=[1,2]",
                             "val.shards=[a,b]", "train.compile=true", "model.heads={cls: 1}"])
    assert cfg.optim.lr_peak == pytest.approx(3e-4) and isinstance(cfg.optim.lr_peak, float)
    assert cfg.train.epochs == 7 and cfg.model.skip_levels == (1, 2)
    assert cfg.val.shards == ["a", "b"] and cfg.train.compile is True and cfg.model.heads == {"cls": 1}
    # an int where a float is expected is fine; the reverse is not
    assert load_config(None, ["optim.sam_rho=1"]).optim.sam_rho == 1.0


@pytest.mark.parametrize("override, key", [
    ("optim.lr_peek=1e-3", "optim.lr_peek"),
    ("trian.epochs=3", "trian"),
    ("model.heads.cls.x=1", "model.heads"),
])
def test_unknown_key_is_named(override, key):
    with pytest.raises(ConfigError, match=key.replace(".", r"\.")):
        load_config(None, [override])


def test_unknown_key_in_yaml_names_file_and_key(tmp_path):
    path = tmp_path / "bad.yaml"
    path.write_text("train:\n  epochs: 3\n  batch_size: 16\n")
    with pytest.raises(ConfigError, match=r"bad\.yaml.*train\.batch_size"):
        load_config(path)


@pytest.mark.parametrize("override, key", [
    ("train.epochs=2.5", "train.epochs"),
    ("train.epochs=ten", "train.epochs"),
    ("optim.sam=1", "optim.sam"),
    ("train.amp=fp8", "train.amp"),
    ("data.shards=x", "data.shards"),
    ("optim.betas=[0.9]", "optim.betas"),
])
def test_wrong_type_is_named(override, key):
    with pytest.raises(ConfigError, match=key.replace(".", r"\.")):
        load_config(None, [override])


def test_inconsistent_values_rejected():
    with pytest.raises(ConfigError, match="accum_steps"):
        load_config(None, ["train.batch_pairs=8", "optim.accum_steps=3"])
    with pytest.raises(ConfigError, match="image_size"):
        load_config(None, ["data.image_size=256"])
    with pytest.raises(ConfigError, match="decoder"):
        load_config(None, ["model.decoder=unet"])


def test_dict_round_trip(tmp_path):
    cfg = load_config(None, ["train.epochs=3", "model.skip_levels=[2,3]", "val.shards=[v]"])
    data = config_to_dict(cfg)
    assert data["model"]["skip_levels"] == [2, 3]
    assert config_from_dict(data) == cfg
    save_config(cfg, tmp_path / "config.yaml")
    assert load_config(tmp_path / "config.yaml") == cfg
    assert yaml.safe_load((tmp_path / "config.yaml").read_text())["train"]["epochs"] == 3


def test_yaml_12_scalars_off_stays_a_string_and_exponents_are_floats(tmp_path):
    cfg = load_config(None, ["train.amp=off", "optim.lr_peak=3e-4", "val.shards=[on, no]"])
    assert cfg.train.amp == "off" and cfg.optim.lr_peak == pytest.approx(3e-4)
    assert cfg.val.shards == ["on", "no"]
    path = tmp_path / "c.yaml"
    path.write_text("optim:\n  lr_start: 1e-5\ntrain:\n  amp: off\n")
    cfg = load_config(path)
    assert cfg.optim.lr_start == pytest.approx(1e-5) and cfg.train.amp == "off"
