"""The default recipe against the reference implementation's measured training-pair distribution, and the
named switches that deviate from it (docs/fidelity.md).

The reference figures come from running its own data code on dlib's 43 example faces
(`../shared/reference/sbi_distribution.json`, copied in tests/data/reference). Our pairs are drawn the same
way: the 43 faces as 1.25x crops at 384 px (the pipeline's geometry), 48 draws each.
"""
from __future__ import annotations

import warnings

import cv2
import numpy as np
import pytest
import torch

from model.config import AugmentConfig, DataConfig, ModelConfig, SBIConfig
from model.config_io import load_config
from model.data.augment import sample_geometry
from model.data.datasets import EvalDataset, TrainPairDataset
from model.data.face_scale import REFERENCE_TEST_SCALE, eval_view, resolve_face_scale, training_face_scales
from model.data.pair_stats import compare, load_reference, pair_figures
from model.data.sbi import random_margin, soften_mask
from model.data.tensors import tensor_to_uint8
from model.net.laanet import build_model
from tests.face_fixtures import FULL_SETS, write_example_split

DRAWS_PER_FACE = 48          # as the reference measurement


@pytest.fixture(scope="module")
def example_split(tmp_path_factory):
    return write_example_split(tmp_path_factory.mktemp("examples"), 384, FULL_SETS, frames=1)


@pytest.fixture(scope="module")
def default_figures(example_split):
    cfg = load_config(None)            # the defaults are the recipe of configs/laanet_sbi.yaml
    cfg.data.shards, cfg.data.frames_per_video, cfg.data.seed = [str(example_split)], 1, 317
    ds = TrainPairDataset(cfg.data, cfg.sbi, cfg.bi, cfg.augment)
    figures = []
    for epoch in range(DRAWS_PER_FACE):
        ds.set_epoch(epoch)
        figures.extend(pair_figures(ds[i]) for i in range(len(ds)))
    return figures


def test_default_pairs_match_the_reference_distribution(default_figures):
    assert len(default_figures) == 43 * DRAWS_PER_FACE
    rows = compare(default_figures, load_reference())
    names = {r.name for r in rows}
    assert {"mean M96_gt05", "mean M96_eq1", "mean B96_gt05", "mean peaks", "mean consistency_gt05",
            "mean absdiff_inside_M05", "mean face_scale", "hull type extended", "blend ratio 1.0",
            "rate geo/RandomErasing", "rate train_color/ImageCompression"} <= names
    off = [r.line() for r in rows if not r.ok]
    assert not off, "\n".join(off)


def test_the_shipped_recipe_config_is_the_default_recipe():
    from pathlib import Path

    from model.config_io import config_to_dict

    root = Path(__file__).resolve().parents[1] / "configs"
    a, b = config_to_dict(load_config(root / "laanet_sbi.yaml")), config_to_dict(load_config(None))
    for section in ("data", "sbi", "bi", "augment", "loss", "optim", "val"):
        differ = {k for k in a[section] if a[section][k] != b[section][k]} - {"shards", "num_workers",
                                                                             "frames_per_video"}
        assert not differ, (section, differ)


def test_first_blur_erodes_the_hull_by_half_its_kernel():
    """SPEC section 2 step 5: blurring the FLOAT mask and keeping values == 1 keeps only pixels whose whole
    k1 x k1 window lies in the hull (a k1 // 2 erosion); on a uint8 mask it keeps almost everything."""
    g = 256
    mask = np.zeros((g, g), np.uint8)
    cv2.circle(mask, (128, 128), 80, 1, -1)
    k1 = 25
    cfg = SBIConfig(resize_range=(1.0, 1.0), blur1_kernels=(k1, k1), blur2_kernels=(1, 1), blur2_sigma=(1, 1))
    eroded = soften_mask(mask, np.random.default_rng(0), cfg) >= 0.999
    kept = cv2.erode(mask, np.ones((k1, k1), np.uint8)).astype(bool)
    assert abs(int(eroded.sum()) - int(kept.sum())) <= 0.01 * kept.sum()
    assert (eroded & ~mask.astype(bool)).sum() == 0
    cfg_u8 = SBIConfig(resize_range=(1.0, 1.0), blur1_kernels=(k1, k1), blur2_kernels=(1, 1),
                       blur2_sigma=(1, 1), blur1_float=False)
    plain = soften_mask(mask, np.random.default_rng(0), cfg_u8) >= 0.999
    assert plain.sum() > 0.99 * mask.sum() > 1.3 * eroded.sum()


def test_margin_is_one_value_for_all_sides_unless_switched():
    rng = np.random.default_rng(0)
    for _ in range(50):
        x0, y0, x1, y1 = random_margin(rng)
        assert x0 == y0 == 1 - x1 == 1 - y1 and 5 / 256 <= x0 <= 24 / 256
    rng = np.random.default_rng(0)
    boxes = [random_margin(rng, SBIConfig(margin_symmetric=False)) for _ in range(50)]
    assert any(len({b[0], b[1], 1 - b[2], 1 - b[3]}) > 1 for b in boxes)


def _forced(kind: int, **kw) -> tuple[AugmentConfig, np.random.Generator]:
    """A config and generator for which sample_geometry picks one-of step `kind` (0 crop, 1 scale, 2 erase)."""
    cfg = AugmentConfig(geometry_p=1.0, hflip_p=0.0, **kw)
    for seed in range(100):
        rng = np.random.default_rng(seed)
        probe = np.random.default_rng(seed)
        probe.random(), probe.random()
        if int(probe.integers(3)) == kind:
            return cfg, rng
    raise AssertionError("no seed picks that step")


def _both_sides(kind: int, crop, **switch) -> tuple:
    """The geometry of step `kind` drawn with the default config and with `switch` (same draws)."""
    cfg, rng = _forced(kind)
    default = sample_geometry(rng, cfg, crop)
    cfg, rng = _forced(kind, **switch)
    return default, sample_geometry(rng, cfg, crop)


def test_crop_mode_switch_changes_only_the_crop_scale():
    crop = (0.05, 0.05, 0.95, 0.95)
    shift, zoom = _both_sides(0, crop, crop_mode="zoom")
    assert shift.applied == zoom.applied == ("RandomCrop",) and shift.window == zoom.window
    assert shift.kept == pytest.approx(0.9)                       # the reference: scale unchanged, padded
    assert zoom.kept < shift.kept or shift.window == crop          # zoom: the window fills the output


def test_scale_about_switch_moves_the_fixed_point_only():
    centre, corner = _both_sides(1, (0.0, 0.0, 1.0, 1.0), scale_about="corner")
    assert centre.norm[0, 0] == corner.norm[0, 0] != 1.0          # same zoom factor
    assert centre.norm[0, 0] * 0.5 + centre.norm[0, 2] == pytest.approx(0.5)   # centre stays put
    assert corner.norm[0, 2] == 0.0                                # top-left corner stays put


def test_erasing_blacks_images_and_zeroes_targets(example_split):
    cfg, rng = _forced(2)
    geom = sample_geometry(rng, cfg, (0.0, 0.0, 1.0, 1.0))
    assert geom.applied == ("RandomErasing",)
    from model.data.augment import apply_geometry

    img = np.full((64, 64, 3), 200, np.uint8)
    out, m = apply_geometry(img, geom, 64), apply_geometry(np.ones((16, 16), np.float32), geom, 16, is_map=True)
    assert (out == 0).all(axis=2).mean() > 0.01 and (m == 0).mean() > 0.01
    keep = AugmentConfig(geometry_p=1.0, hflip_p=0.0, erase_targets=False)
    geom2 = sample_geometry(np.random.default_rng(0), keep, (0.0, 0.0, 1.0, 1.0))
    if geom2.erase is not None:
        assert (apply_geometry(np.ones((16, 16), np.float32), geom2, 16, is_map=True) == 1).all()


def test_noise_and_blur_are_off_by_default_and_switchable(example_split):
    def applied(aug: AugmentConfig) -> set[str]:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            ds = TrainPairDataset(DataConfig(shards=[str(example_split)], frames_per_video=1), augment_cfg=aug)
        return {a for i in range(10) for a in ds[i]["applied"]}

    default = applied(AugmentConfig())
    assert not {"colour/GaussNoise", "colour/GaussianBlur"} & default
    on = applied(AugmentConfig(noise_p=1.0, blur_p=1.0))
    assert {"colour/GaussNoise", "colour/GaussianBlur"} <= on


def test_redraw_frames_switch(tmp_path):
    split = write_example_split(tmp_path, 96, frames=10)
    picks = {}
    for redraw in (True, False):
        ds = TrainPairDataset(DataConfig(shards=[str(split)], frames_per_video=3, image_size=96,
                                         redraw_frames=redraw))
        ds.set_epoch(0)
        first = list(ds.items)
        ds.set_epoch(1)
        picks[redraw] = first == ds.items
    assert picks == {True: False, False: True}


def test_backbone_stochastic_depth_and_bn_momentum_are_built():
    model = build_model(ModelConfig(backbone="tf_efficientnet_b0", input_size=128))
    blocks = [m for m in model.backbone.body.modules() if hasattr(m, "drop_path") and hasattr(m, "has_skip")]
    rates = [float(getattr(b.drop_path, "drop_prob", 0.0)) for b in blocks]
    n = len(blocks)
    assert rates == pytest.approx([0.2 * i / n for i in range(n)])
    bn_backbone = {m.momentum for m in model.backbone.modules() if isinstance(m, torch.nn.BatchNorm2d)}
    bn_rest = {m.momentum for name, m in model.named_modules()
               if isinstance(m, torch.nn.BatchNorm2d) and not name.startswith("backbone.")}
    assert bn_backbone == {0.01} and bn_rest == {0.1}
    eps = {m.eps for m in model.backbone.modules() if isinstance(m, torch.nn.BatchNorm2d)}
    assert eps == {1e-3}
    plain = build_model(ModelConfig(backbone="tf_efficientnet_b0", input_size=128, drop_path_rate=0.0,
                                    backbone_bn_momentum=0.1))
    assert {m.momentum for m in plain.backbone.modules() if isinstance(m, torch.nn.BatchNorm2d)} == {0.1}


def test_face_scale_train_vs_test():
    scales = training_face_scales(SBIConfig(), AugmentConfig(), 1.25, n=4000)
    ref = load_reference()["margin_and_scale"]["final_side_over_face_box"]["stats"]
    assert np.median(scales) == pytest.approx(ref["q50"], rel=0.02)
    assert np.percentile(scales, 95) == pytest.approx(ref["q95"], rel=0.02)
    assert REFERENCE_TEST_SCALE == pytest.approx(1.2012, abs=1e-4)
    assert resolve_face_scale("train-median") == pytest.approx(np.median(scales), rel=0.01)
    face = np.zeros((256, 256, 3), np.uint8)
    face[5:251, 5:251] = 255                                     # the reference's test view cuts 5 px
    view = eval_view(face, 64, 1.25, REFERENCE_TEST_SCALE)
    assert view.min() == 255
    assert eval_view(face, 64, 1.25, None).min() == 0
    with pytest.raises(ValueError, match="at least"):
        eval_view(face, 64, 1.25, 1.5)


def test_face_scale_command_prints_both_sides(capsys, tmp_path):
    from model.data.preview import main

    assert main(["face-scale", "--png", str(tmp_path / "scales.png")]) == 0
    out = capsys.readouterr().out
    assert "training   median" in out and "evaluation reference 1.201" in out
    assert (tmp_path / "scales.png").stat().st_size > 1000


def test_validation_fakes_switch(tmp_path):
    from model.eval.validation import build_val_loader
    from pipeline.shard_index import write_index
    from pipeline.shard_writer import write_shard

    split = write_example_split(tmp_path, 96, frames=2)
    fake_split = tmp_path / "withfakes"
    from pipeline.shards import ShardReader, shard_paths

    r = ShardReader(shard_paths(split)[0])
    faces, lms = r.read("faces"), r.read("landmarks")
    r.close()
    write_shard(fake_split / "shard-00000.h5", faces,
                videos=[{"id": "000", "label": 0}, {"id": "001", "label": 1, "method": "Deepfakes"}],
                video=np.array([0, 0] + [1] * (len(faces) - 2)), landmarks=lms)
    write_index(fake_split, dataset="x", split="val")
    base = [f"val.shards=[{fake_split}]", "val.num_workers=0", "data.image_size=96", "model.input_size=96"]
    loader, mode = build_val_loader(load_config(None, base))
    vids = {loader.dataset.item_video_id(i) for i in range(len(loader.dataset))}
    assert "val.fakes=sbi" in mode and not any("Deepfakes" in v for v in vids) and any(v.endswith("/sbi") for v in vids)
    loader, mode = build_val_loader(load_config(None, base + ["val.fakes=real"]))
    vids = {loader.dataset.item_video_id(i) for i in range(len(loader.dataset))}
    assert "val.fakes=real" in mode and any("Deepfakes" in v for v in vids) and not any(v.endswith("/sbi") for v in vids)
    with pytest.raises(ValueError, match="no fake video"):
        build_val_loader(load_config(None, [f"val.shards=[{split}]", "val.fakes=real"]))


def test_eval_dataset_shows_faces_at_the_reference_test_scale(example_split):
    full = EvalDataset([str(example_split)], 384, face_scale=None)[0]["image"]
    ref = EvalDataset([str(example_split)], 384)[0]["image"]
    assert not torch.equal(full, ref)
    assert ref.shape == full.shape == (3, 384, 384)


def test_ffpp_manifest_entry_is_c0_as_in_the_paper():
    from pathlib import Path

    import yaml

    manifest = yaml.safe_load((Path(__file__).resolve().parents[1] / "data_manifest.yaml").read_text())
    assert manifest["datasets"]["ffpp"]["compression"] == "raw"


def test_configs_of_older_checkpoints_still_load():
    from model.config_io import config_from_dict, config_to_dict

    old = config_to_dict(load_config(None))
    for section in ("sbi", "bi", "augment"):
        del old[section]
    old["data"].update({"augment": False, "forehead": True})
    old["val"]["synthetic_fakes"] = old["val"].pop("fakes")
    cfg = config_from_dict(old)
    assert cfg.augment.enabled is False and cfg.sbi.forehead and cfg.bi.forehead and cfg.val.fakes == "sbi"


def test_every_setting_is_a_config_value_with_a_one_line_error():
    from model.config import ConfigError

    cfg = load_config(None, ["sbi.margin=[4,20]", "augment.crop_mode=zoom", "data.sigma_rule=exact",
                             "model.drop_path_rate=0.1", "optim.sam_bn_update=false", "train.freeze_bn=true",
                             "val.fakes=real", "val.face_scale=1.1", "augment.noise_p=0.2"])
    assert (cfg.sbi.margin, cfg.augment.crop_mode, cfg.data.sigma_rule, cfg.val.face_scale) == \
        ((4, 20), "zoom", "exact", 1.1)
    with pytest.raises(ConfigError, match="augment.crop_mode"):
        load_config(None, ["augment.crop_mode=stretch"])
    with pytest.raises(ConfigError, match="unknown config key 'sbi.blur'"):
        load_config(None, ["sbi.blur=3"])


def test_first_blur_shortcut_equals_the_blur_it_replaces():
    """The erosion shortcut keeps the pixels where the float Gaussian blur reaches its maximum, up to float
    rounding of the blur (a window holding values a hair below 1 can still sum to the maximum): at most a
    few pixels per mask, under 1 % of the kept area."""
    from model.data.sbi import _first_blur_core

    rng = np.random.default_rng(0)
    for _ in range(20):
        mask = np.zeros((256, 256), np.float32)
        c = rng.integers(60, 196, 2)
        cv2.ellipse(mask, (int(c[0]), int(c[1])), (int(rng.integers(20, 70)), int(rng.integers(20, 70))),
                    float(rng.uniform(0, 180)), 0, 360, 1.0, -1)
        m = cv2.resize(mask, (int(rng.integers(205, 320)), int(rng.integers(205, 320))))
        k = int(rng.choice([5, 11, 17, 25]))
        blurred = cv2.GaussianBlur(m, (k, k), 0)
        expected = blurred / blurred.max() >= 1.0
        ours = _first_blur_core(m, k, True) > 0
        assert expected.sum() > 100 and (ours != expected).sum() <= max(2, 0.01 * expected.sum())


def test_a_checkpoint_written_before_these_settings_existed_loads(tmp_path):
    """A checkpoint whose config predates the sbi/bi/augment sections and the backbone regularisation keys
    (the layout this code wrote until this round) rebuilds its network and its training config."""
    from model.checkpoint import load_checkpoint, read_checkpoint, save_checkpoint
    from model.config_io import config_from_dict, config_to_dict

    model = build_model(ModelConfig(backbone="tf_efficientnet_b0", input_size=64, head_conv=16))
    old = config_to_dict(load_config(None))
    old["model"] = {k: v for k, v in model.config.to_dict().items()
                    if k not in ("drop_path_rate", "backbone_bn_momentum")}
    for section in ("sbi", "bi", "augment"):
        del old[section]
    old["data"].update({"augment": True, "forehead": False})
    old["val"]["synthetic_fakes"] = old["val"].pop("fakes")
    del old["val"]["face_scale"]
    old["data"]["image_size"] = old["model"]["input_size"]
    for k in ("redraw_frames", "sigma_rule", "heatmap_centre", "run_wrap"):
        del old["data"][k]
    path = save_checkpoint(tmp_path / "old.pt", {"model": model.state_dict(), "config": old, "epoch": 1, "step": 3})
    loaded = load_checkpoint(path)
    x = torch.zeros(1, 3, 64, 64)
    model.eval()
    torch.testing.assert_close(loaded(x)["cls"], model(x)["cls"])
    cfg = config_from_dict(read_checkpoint(path)["config"])
    assert cfg.augment.enabled and cfg.val.fakes == "sbi" and cfg.data.sigma_rule == "reference"


def test_validation_perturb_degrades_every_face_after_synthesis(tmp_path):
    from model.config import ConfigError
    from model.eval import perturb
    from model.eval.validation import build_val_loader

    split = write_example_split(tmp_path, 96, frames=2)
    base = [f"val.shards=[{split}]", "val.num_workers=0", "data.image_size=96", "model.input_size=96", "val.batch_size=64"]
    clean_loader, _ = build_val_loader(load_config(None, base))
    loader, mode = build_val_loader(load_config(None, [*base, "val.perturb=jpeg:4"]))
    assert "jpeg level 4 (20; val.perturb)" in mode
    clean, degraded = next(iter(clean_loader)), next(iter(loader))
    assert clean["video_id"] == degraded["video_id"] and any(v.endswith("/sbi") for v in degraded["video_id"])
    # each face (real and pseudo-fake) is its clean self re-encoded as JPEG quality 20, with the validation seed
    for i in (0, len(clean["video_id"]) - 1):
        want = perturb.jpeg(tensor_to_uint8(clean["image"][i]), 20)
        assert np.array_equal(tensor_to_uint8(degraded["image"][i]), want)
    for bad in ("jpeg:9", "jpeg"):
        with pytest.raises(ConfigError, match="val.perturb"):
            load_config(None, [*base, f"val.perturb={bad}"])
    with pytest.raises(ConfigError, match="unknown perturbation 'fog'"):
        build_val_loader(load_config(None, [*base, "val.perturb=fog:2"]))
