"""Training pairs and evaluation items over real shards written with pipeline.shards."""
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch
from torch.utils.data import DataLoader

from model.config import AugmentConfig, DataConfig
from model.data.datasets import EvalDataset, TrainPairDataset, collate_eval, collate_pairs
from model.data.pool import video_key
from model.data.preview import main
from model.data.tensors import normalise_images, to_tensor
from pipeline.shard_index import write_index
from pipeline.shard_writer import write_shard
from tests.face_fixtures import load_faces

CROP = 160     # stored crop side
SIZE = 96      # network input in these tests (targets 24 x 24)


@pytest.fixture(scope="module")
def split_dir(tmp_path_factory) -> Path:
    """Two shards: 3 real videos of 4 frames (one frame without landmarks) and 1 fake video; plus a second
    real "method" whose video id repeats one of the first shard's ids."""
    faces = load_faces(CROP)
    d = tmp_path_factory.mktemp("shards") / "toy" / "train"
    imgs, lms, video, frame = [], [], [], []
    for v in range(4):
        for k in range(4):
            face, lm = faces[(v * 2 + k) % len(faces)]
            imgs.append(np.roll(face, k, axis=1))            # distinct frames of one "video"
            lms.append(lm + (k, 0))
            video.append(v)
            frame.append(10 * k)
    lms = np.stack(lms)
    lms[5] = np.nan                                          # video 1, frame 10: dlib found no face
    videos = [{"id": "000", "label": 0, "method": "original", "dataset": "toy"},
              {"id": "001", "label": 0, "method": "original", "dataset": "toy"},
              {"id": "002", "label": 0, "method": "original", "dataset": "toy"},
              {"id": "Deepfakes/000_001", "label": 1, "method": "Deepfakes", "dataset": "toy"}]
    write_shard(d / "shard-00000.h5", np.stack(imgs), videos=videos, video=np.array(video),
                frame_index=np.array(frame), landmarks=lms)
    write_shard(d / "shard-00001.h5", np.stack(imgs[:4]), videos=[{"id": "000", "label": 0, "method": "other",
                                                                    "dataset": "toy"}],
                video=np.zeros(4, int), frame_index=np.arange(4) * 10, landmarks=np.stack(lms[:4]))
    write_index(d, dataset="toy", split="train")
    return d


def make_dataset(split_dir, augment: AugmentConfig | None = None, **kw) -> TrainPairDataset:
    cfg = DataConfig(shards=[str(split_dir)], image_size=SIZE, frames_per_video=kw.pop("frames_per_video", 2), **kw)
    with pytest.warns(UserWarning, match="left out"):
        return TrainPairDataset(cfg, augment_cfg=augment)


def test_frames_without_landmarks_and_fake_videos_are_skipped_and_counted(split_dir):
    ds = make_dataset(split_dir, frames_per_video=8)
    assert ds.skipped == {"frames_without_landmarks": 1, "videos_without_landmarks": 0, "fake_videos": 1}
    assert len(ds.videos) == 4 and len(ds) == 4 + 3 + 4 + 4      # every usable frame once
    assert all(not (si == 0 and row == 5) for _, si, row in ds.items)
    assert len({key for key, _, _ in ds.videos}) == 4


def test_pairs_have_the_contract_shapes_and_are_reproducible(split_dir):
    ds = make_dataset(split_dir)
    item = ds[0]
    assert item["real"].shape == item["fake"].shape == (SIZE, SIZE, 3) and item["real"].dtype == np.uint8
    for k in ("heatmap", "consistency", "boundary", "mask"):
        assert item[k].shape == (SIZE // 4, SIZE // 4) and item[k].dtype == np.float32
    assert item["heatmap"].max() == 1.0 and 0 <= item["boundary"].min() and item["boundary"].max() <= 1
    again = make_dataset(split_dir)[0]
    for k in ("real", "fake", "heatmap", "consistency"):
        np.testing.assert_array_equal(item[k], again[k])
    other = make_dataset(split_dir, seed=1)[0]
    assert not np.array_equal(item["fake"], other["fake"])


def test_collate_gives_2n_normalised_images_with_zero_targets_for_reals(split_dir):
    ds = make_dataset(split_dir)
    batch = collate_pairs([ds[i] for i in range(3)])
    assert batch["image"].shape == (6, SIZE, SIZE, 3) and batch["image"].dtype == torch.uint8
    images = normalise_images(batch["image"])                     # what the trainer does on its device
    assert images.shape == (6, 3, SIZE, SIZE) and images.dtype == torch.float32
    assert -1.0 <= float(images.min()) and float(images.max()) <= 1.0
    assert torch.equal(images, to_tensor(batch["image"].numpy()))
    assert batch["label"].tolist() == [0, 0, 0, 1, 1, 1] and batch["label"].dtype == torch.float32
    assert batch["heatmap"].shape == (6, 1, SIZE // 4, SIZE // 4)
    assert batch["consistency"].shape == (6, SIZE // 4, SIZE // 4)
    assert not batch["heatmap"][:3].any() and not batch["consistency"][:3].any()
    assert all(float(batch["heatmap"][i].max()) == 1.0 for i in range(3, 6))
    assert batch["video_id"][:3] == batch["video_id"][3:] and batch["frame_index"].dtype == torch.int64
    real0 = ds[0]["real"]
    np.testing.assert_allclose(images[0].permute(1, 2, 0).numpy(), real0 / 127.5 - 1.0, atol=1e-6)


def test_frames_are_redrawn_every_epoch(split_dir):
    ds = make_dataset(split_dir, frames_per_video=1)
    draws = set()
    for epoch in range(6):
        ds.set_epoch(epoch)
        assert len(ds) == 4
        draws.add(tuple(row for _, _, row in ds.items))
    assert len(draws) > 1
    ds.set_epoch(2)
    first = list(ds.items)
    ds.set_epoch(3)
    ds.set_epoch(2)
    assert ds.items == first


def test_same_batches_with_any_number_of_workers(split_dir):
    ds = make_dataset(split_dir)
    ds.set_epoch(1)
    plain = next(iter(DataLoader(ds, batch_size=4, collate_fn=collate_pairs, num_workers=0)))
    forked = next(iter(DataLoader(ds, batch_size=4, collate_fn=collate_pairs, num_workers=2)))
    assert torch.equal(plain["image"], forked["image"]) and torch.equal(plain["heatmap"], forked["heatmap"])


def test_bi_pairs_take_donors_from_other_videos(split_dir):
    ds = make_dataset(split_dir, synthesis="bi", bi_neighbours=3)
    faces, table = ds.donors
    own = {tuple(f): v for v, (_, si, rows) in enumerate(ds.videos) for f in [(si, r) for r in rows]}
    for i, donors in enumerate(table):
        assert all(own[tuple(faces[d])] != own[tuple(faces[i])] for d in donors if d >= 0)
    item = ds[0]
    assert item["heatmap"].max() == 1.0 and not np.array_equal(item["real"], item["fake"])


def test_eval_dataset_ids_are_unique_across_methods(split_dir):
    ds = EvalDataset([str(split_dir)], SIZE)
    ids = {ds.item_video_id(i) for i in range(len(ds))}
    assert ids == {"toy/original/000", "toy/original/001", "toy/original/002", "toy/Deepfakes/000_001",
                   "toy/other/000"}
    assert len(ds) == 20
    item = ds[0]
    assert item["image"].shape == (3, SIZE, SIZE) and item["image"].dtype == torch.float32
    assert set(item) == {"image", "label", "video_id", "method", "frame_index", "shard", "row"}
    labels = {ds[i]["video_id"]: ds[i]["label"] for i in range(len(ds))}
    assert labels["toy/Deepfakes/000_001"] == 1 and labels["toy/original/000"] == 0
    batch = collate_eval([ds[i] for i in range(5)])
    assert batch["image"].shape == (5, 3, SIZE, SIZE) and batch["label"].dtype == torch.int64


def test_eval_frames_per_video_are_evenly_spaced(split_dir):
    ds = EvalDataset([str(split_dir)], SIZE, frames_per_video=2)
    frames = sorted(ds[i]["frame_index"] for i in range(len(ds)) if ds.item_video_id(i) == "toy/original/000")
    assert frames == [0, 30]


def test_eval_synthetic_sbi_fakes_are_deterministic_and_skip_frames_without_landmarks(split_dir):
    with pytest.warns(UserWarning, match="no landmarks"):
        ds = EvalDataset([str(split_dir)], SIZE, synthetic_fakes="sbi")
    assert ds.skipped["frames_without_landmarks"] == 1
    fake_idx = [i for i in range(len(ds)) if ds.item_video_id(i).endswith("/sbi")]
    assert len(fake_idx) == 16 - 1 and len(ds) == 20 + 15     # every real frame with landmarks, not the fake video
    a, b = ds[fake_idx[0]], ds[fake_idx[0]]
    assert a["label"] == 1 and a["method"] == "sbi" and torch.equal(a["image"], b["image"])
    real = next(ds[i] for i in range(len(ds)) if ds.item_video_id(i) + "/sbi" == a["video_id"]
                and ds[i]["frame_index"] == a["frame_index"])
    assert not torch.equal(real["image"], a["image"])


def test_video_key_does_not_repeat_the_method():
    assert video_key({"dataset": "ffpp", "method": "Deepfakes", "id": "Deepfakes/000_003"}) == "ffpp/Deepfakes/000_003"
    assert video_key({"dataset": "ffpp", "method": "Face2Face", "id": "000_003"}) == "ffpp/Face2Face/000_003"


def test_preview_command_writes_a_png(split_dir, tmp_path):
    out = tmp_path / "grid.png"
    with pytest.warns(UserWarning):
        assert main(["preview", "--shards", str(split_dir), "--out", str(out), "-n", "2",
                     f"data.image_size={SIZE}", f"model.input_size={SIZE}"]) == 0
    grid = cv2.imread(str(out))
    assert grid is not None and grid.shape[1] == 6 * 192 + 40 and grid.shape[0] > 2 * 192  # + the colour bar


def test_preview_rows_spread_over_the_videos(split_dir):
    """The preview drew the first N pairs, so every row was the same video; now one row per video first."""
    from model.config import DataConfig
    from model.data.preview import spread_indices

    with pytest.warns(UserWarning):
        ds = TrainPairDataset(DataConfig(shards=[str(split_dir)], image_size=SIZE, frames_per_video=2))
    n_videos = len(ds.videos)
    picks = spread_indices(ds, n_videos)
    assert len({ds.items[i].video for i in picks}) == n_videos
    more = spread_indices(ds, n_videos + 1)
    assert len(more) == n_videos + 1 and len(set(more)) == len(more)


def test_pair_shortcuts_equal_processing_the_whole_fake():
    """Crop-and-resize equals the affine warp of the same geometry (up to OpenCV's fixed-point rounding), the
    fake equals the real outside its mapped box, and photometric_pair (which processes the fake only near
    that box) gives exactly what processing the whole fake gives."""
    from model.config import AugmentConfig
    from model.data.augment import apply_geometry, photometric, photometric_pair, sample_geometry, warp, warp_box
    from model.data.sbi import sbi

    faces = load_faces(192)
    cfg = AugmentConfig(rgb_shift_p=0.7, hsv_p=0.7, brightness_contrast_p=0.7, blur_p=0.5, noise_p=0.5,
                        jpeg_p=0.7, geometry_p=0.8)
    resized = 0
    for i in range(24):
        rng = np.random.default_rng(i)
        face, lm = faces[i % len(faces)]
        pair = sbi(face, lm, rng)
        geom = sample_geometry(rng, cfg, pair.crop, 192)
        real, fake = apply_geometry(pair.real, geom, 192), apply_geometry(pair.fake, geom, 192)
        if not geom.applied or geom.applied == ("HorizontalFlip",):
            resized += 1           # the crop-and-resize path: compare with the plain warp
            assert np.abs(real.astype(int) - warp(pair.real, geom.full_map(), 192)).max() <= 4
        box = warp_box(pair.box, geom.full_map(), 192, 192)
        outside = np.ones(fake.shape[:2], bool)
        outside[box[1]:box[3], box[0]:box[2]] = False
        assert np.array_equal(fake[outside], real[outside])
        a, b, _ = photometric_pair(real, fake, box, np.random.default_rng(100 + i), cfg)
        c, d = photometric([real, fake], np.random.default_rng(100 + i), cfg)
        assert np.array_equal(a, c) and np.array_equal(b, d)
    assert resized > 0


def test_downscale_compresses_at_the_small_size_and_leaves_the_default_stream_alone():
    """The resolution step shrinks the image, JPEG-codes it at that size and enlarges it back, for the real and
    the (whole) fake alike; switched off, it draws nothing, so default pairs are the ones they were."""
    import cv2

    from model.config import AugmentConfig
    from model.data.augment import PhotometricDraw, _jpeg, apply_photometric, draw_photometric, photometric_pair

    img = np.random.default_rng(0).integers(0, 256, (64, 64, 3), dtype=np.uint8)
    out = apply_photometric(img, PhotometricDraw(downscale=2.0, jpeg_quality=30))
    expect = cv2.resize(_jpeg(cv2.resize(img, (32, 32), interpolation=cv2.INTER_AREA), 30), (64, 64),
                        interpolation=cv2.INTER_LINEAR)
    assert np.array_equal(out, expect)
    assert out.astype(float).std() < 0.7 * img.astype(float).std()        # the pixel-level detail is gone

    fake = img.copy()
    fake[20:40, 20:40] = 255 - fake[20:40, 20:40]
    cfg = AugmentConfig(downscale_p=1.0, jpeg_p=1.0)
    real_out, fake_out, applied = photometric_pair(img, fake, (20, 20, 40, 40), np.random.default_rng(3), cfg)
    draw = draw_photometric(np.random.default_rng(3), cfg, 64)
    assert "Downscale" in applied and np.array_equal(fake_out, apply_photometric(fake, draw))
    assert np.array_equal(real_out, apply_photometric(img, draw))

    def state_after(c):
        rng = np.random.default_rng(7)
        draw_photometric(rng, c, 64)
        return rng.random()
    assert state_after(AugmentConfig()) != state_after(AugmentConfig(downscale_p=1e-12))
    assert state_after(AugmentConfig()) == state_after(AugmentConfig(downscale_factor=(2.0, 2.0)))
    with pytest.raises(ValueError, match="downscale_factor"):
        AugmentConfig(downscale_factor=(0.5, 2.0))


def test_eval_synthetic_bi_fakes_use_another_video(split_dir):
    with pytest.warns(UserWarning, match="no landmarks"):
        ds = EvalDataset([str(split_dir)], SIZE, synthetic_fakes="bi")
    keys = {(si, row): key for si, row, _, key, _, synthetic in ds.items if not synthetic}
    assert ds._donors and all(keys[t] != keys[d] for t, d in ds._donors.items())
    i = next(i for i in range(len(ds)) if ds.item_video_id(i).endswith("/bi"))
    a, b = ds[i], ds[i]
    assert a["label"] == 1 and torch.equal(a["image"], b["image"])


def test_paper_targets_and_no_augmentation(split_dir):
    ds = make_dataset(split_dir, target_mode="paper", augment=AugmentConfig(enabled=False))
    item = ds[1]
    b = item["boundary"]
    peaks = item["heatmap"] == 1.0
    assert peaks.any() and np.all(b[peaks] == b.max())               # Gaussians sit on the global argmax set
    np.testing.assert_allclose(item["consistency"], 1.0 - np.abs(b.max() - b), atol=1e-6)


def test_preview_reports_a_folder_without_shards_in_one_line(tmp_path, capsys):
    assert main(["preview", "--shards", str(tmp_path), "--out", str(tmp_path / "g.png")]) == 1
    err = capsys.readouterr().err
    assert err.startswith("preview: ") and str(tmp_path) in err and len(err.strip().splitlines()) == 1
