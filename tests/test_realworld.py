"""bench.realworld: the clip table, the person split, the metrics, and the whole command on the sample clips."""
import csv
import json
import math
from pathlib import Path

import pytest

from bench import realworld as rw

HEADER = ["file", "label", "dataset", "method", "pair", "person", "size", "seconds", "source_repo", "commit",
          "source_path", "licence"]


def _people(val: bool, n: int) -> list[str]:
    """Person names on one side of the fixed split."""
    names = [f"person{i}" for i in range(200) if rw.is_val_person(f"person{i}") == val]
    return names[:n]


def _videos(tmp_path: Path, sample_videos_dir: Path) -> Path:
    """A videos folder laid out as ../shared/data/videos, made of the two embedded sample clips."""
    root = tmp_path / "videos"
    ham, car = sample_videos_dir / "short_hamilton_clip.mp4", sample_videos_dir / "carphone_pristine.mp4"
    rows = []
    (root / "talking_heads").mkdir(parents=True)
    for person, src in zip(_people(False, 2) + _people(True, 1), (ham, car, car)):
        name = f"{person}.mp4"
        (root / "talking_heads" / name).symlink_to(src)
        rows.append([f"talking_heads/{name}", "real", "other", "real talking head", "", person])
    for label, method, ds, src in (("real", "original (c40)", "ffpp", ham), ("fake", "Deepfakes (c40)", "ffpp", car),
                                   ("fake", "DFDC fake (256 px face-crop clip)", "dfdc", ham)):
        name = f"{ds}_{label}_{len(rows)}.mp4"
        (root / "labelled" / label).mkdir(parents=True, exist_ok=True)
        (root / "labelled" / label / name).symlink_to(src)
        rows.append([f"labelled/{label}/{name}", label, ds, method, "", ds])
    with (root / "CLIPS.tsv").open("w", newline="") as f:
        w = csv.writer(f, delimiter="\t")
        w.writerow(HEADER)
        for r in rows:
            w.writerow(r + [""] * (len(HEADER) - len(r)))
    return root


def test_clip_table_and_person_split(tmp_path, sample_videos_dir):
    root = _videos(tmp_path, sample_videos_dir)
    clips = rw.read_clips(root)
    assert len(clips) == 6
    fake = [c for c in clips if c.label == 1]
    assert sorted(c.method for c in fake) == ["DFDC fake", "Deepfakes"]
    train, val = rw.split_training_clips(clips)
    assert len(train) == 2 and len(val) == 1
    assert not {c.person for c in train} & {c.person for c in val}
    assert all(c.file.startswith("talking_heads/") for c in train + val)


def test_labelled_clip_without_a_row_is_refused(tmp_path, sample_videos_dir):
    root = _videos(tmp_path, sample_videos_dir)
    (root / "labelled" / "fake" / "stray.mp4").symlink_to(sample_videos_dir / "carphone_pristine.mp4")
    with pytest.raises(SystemExit, match="no row for labelled clip labelled/fake/stray.mp4"):
        rw.read_clips(root)


def test_metrics_rows_and_intervals():
    real = [rw.Clip(f"labelled/real/r{i}.mp4", 0, "ffpp" if i < 3 else "dfd", "real", f"p{i}") for i in range(5)]
    fake = [rw.Clip(f"labelled/fake/f{i}.mp4", 1, "ffpp" if i < 4 else "dfdc",
                    "Deepfakes" if i < 2 else "FaceSwap" if i < 4 else "DFDC fake", f"p{i}") for i in range(6)]
    # every fake above every real except one FaceSwap clip, which ties below two reals
    scores = [0.1, 0.2, 0.3, 0.4, 0.5] + [0.9, 0.8, 0.35, 0.7, 0.95, 0.99]
    scored = list(zip(real + fake, scores))
    m = rw.metrics_of(scored, n_boot=200)
    assert m["all"]["n_real"] == 5 and m["all"]["n_fake"] == 6
    assert m["all"]["auc"] == pytest.approx(1 - 2 / 30)
    assert m["method Deepfakes (vs all reals)"]["auc"] == 1.0
    assert m["method FaceSwap (vs all reals)"]["auc"] == pytest.approx(1 - 2 / 10)
    assert m["dataset ffpp (vs ffpp reals)"]["n_real"] == 3
    assert m["dataset dfdc (vs all reals)"]["n_fake"] == 2
    lo, hi = m["all"]["ci95"]["auc"]
    assert lo <= m["all"]["auc"] <= hi and lo < hi


@pytest.mark.slow
def test_resampled_metrics_equal_the_one_by_one_metrics_with_ties():
    """The bootstrap scores all resamples at once; each one equals AUC and AP of its resampled clips computed
    alone (scikit-learn), ties between reals and fakes included."""
    import numpy as np

    rng = np.random.default_rng(1)
    labels = np.r_[np.zeros(13), np.ones(41)].astype(int)
    scores = np.round(rng.random(54) + 0.3 * labels, 1)  # one decimal: many ties
    real, fake = np.flatnonzero(labels == 0), np.flatnonzero(labels == 1)
    counts, expected = np.zeros((40, 54)), []
    for b in range(40):
        idx = np.concatenate([rng.choice(real, real.size), rng.choice(fake, fake.size)])
        np.add.at(counts[b], idx, 1.0)
        expected.append(rw.auc_ap(labels[idx], scores[idx]))
    auc, ap = rw.resampled_auc_ap(labels, scores, counts)
    np.testing.assert_allclose(np.c_[auc, ap], np.array(expected), rtol=0, atol=1e-12)
    ci = rw.bootstrap_ci(labels, scores, 500)
    full_auc, full_ap = rw.auc_ap(labels, scores)
    assert ci["auc"][0] < full_auc < ci["auc"][1] and ci["ap"][0] < full_ap < ci["ap"][1]


@pytest.mark.slow  # about 66 s: the whole command on the sample clips (make test-all, CI)
def test_realworld_command_end_to_end(tmp_path, sample_videos_dir):
    """The whole command on the sample clips with a tiny network: prepare, train both variants, evaluate,
    and the report, figures, per-clip scores and the selected checkpoint where the interface says."""
    root = _videos(tmp_path, sample_videos_dir)
    out = tmp_path / "out"
    args = ["--videos", str(root), "--out", str(out), "--quick", "--frames", "4", "--bootstrap", "50",
            "--jobs", "1", "model.input_size=64", "data.image_size=64", "data.frames_per_video=4",
            "train.batch_pairs=2", "train.epochs=2", "train.max_steps_per_epoch=2", "train.num_workers=0",
            "model.head_conv=16"]
    summary = rw.main(args)
    assert (out / "laanet" / "best.pt").is_file()
    assert (out / "report.md").read_text().startswith("# Does a model trained by this code detect real deepfakes?")
    saved = json.loads((out / "summary.json").read_text())
    # the untrained network is evaluated last (it fills a freed slot) but still heads the table
    assert list(saved["runs"]) == ["untrained", "laanet", "cls_only"]
    for run in saved["runs"].values():
        assert 0.0 <= run["metrics"]["all"]["auc"] <= 1.0 and run["eval_minutes"] > 0
    assert (out / "roc.png").stat().st_size > 0 and (out / "selection.png").stat().st_size > 0
    with (out / "scores.csv").open() as f:
        rows = list(csv.DictReader(f))
    assert len(rows) == 3 and not any(math.isnan(float(r["laanet"])) for r in rows)
    assert summary["data"]["train_clips"] == 1  # quick mode: every third training clip
    # A second run reuses every stage: nothing is prepared or trained again.
    before = (out / "laanet" / "best.pt").stat().st_mtime
    rw.main(args)
    assert (out / "laanet" / "best.pt").stat().st_mtime == before
    # Other settings never reuse a finished run silently: the command stops and names the folder.
    with pytest.raises(SystemExit, match="laanet: holds a run with other settings"):
        rw.main([a if a != "model.head_conv=16" else "model.head_conv=8" for a in args])
