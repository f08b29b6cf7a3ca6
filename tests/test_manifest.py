"""data_manifest.yaml: validation errors name the key and the expected form; each dataset kind lists its splits."""
import json
import os

import pytest
import yaml

from pipeline.adhoc import adhoc_items
from pipeline.listing import list_videos
from pipeline.manifest import ManifestError, load_manifest


def _write(tmp_path, datasets, defaults=None, name="m.yaml"):
    doc = {"version": 1, "datasets": datasets}
    if defaults is not None:
        doc["defaults"] = defaults
    p = tmp_path / name
    p.write_text(yaml.safe_dump(doc))
    return p


def _touch(path):
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(b"")


def test_project_manifest_is_valid(repo_root):
    m = load_manifest(repo_root / "data_manifest.yaml")
    assert {"ffpp", "cdf2", "dfd", "dfdc", "dfdcp", "dfw", "sample"} <= set(m.datasets)
    assert m.entry("ffpp").frames == {"train": 128, "val": 32, "test": 32}
    assert m.entry("ffpp").crop.size == 384 and m.entry("ffpp").crop.scale == 1.25
    train = list_videos(m, "sample", "train")
    test = list_videos(m, "sample", "test")
    val = list_videos(m, "sample", "val")
    assert [it.segment for it in train] == [(0.0, 0.6)] * 2 and [it.segment for it in test] == [(0.75, 1.0)] * 2
    assert [it.segment for it in val] == [(0.6, 0.75)] * 2


@pytest.mark.parametrize("entry, key, form", [
    ({"kind": "ffpp", "root": "x", "compression": "c32", "methods": ["Deepfakes"], "splits": {"train": "t.json"}},
     "datasets.d.compression", "one of raw, c23, c40"),
    ({"kind": "ffpp", "root": "x", "compression": "c23", "methods": ["DeepFake"], "splits": {}},
     "datasets.d.methods", "a non-empty list from"),
    ({"kind": "ffpp", "root": "x", "compression": "c23", "splits": {}}, "datasets.d.methods", "a list from"),
    ({"kind": "ffpp", "root": "x", "compression": "c23", "methods": ["Deepfakes"], "splits": {},
      "fake_splits": ["dev"]}, "datasets.d.fake_splits", "a list from"),
    ({"kind": "videos", "root": "x"}, "datasets.d.kind", "one of ffpp, celebdf"),
    ({"kind": "celebdf", "root": "x", "test_list": "l.txt", "frames": {"train": 0}}, "datasets.d.frames.train",
     "a positive integer"),
    ({"kind": "celebdf", "root": "x", "test_list": "l.txt", "crop": {"scale": 0.8}}, "datasets.d.crop.scale",
     "a number >= 1.0"),
    ({"kind": "celebdf", "root": "x", "test_list": "l.txt", "colour": 1}, "datasets.d.colour", "unknown key"),
    ({"kind": "celebdf", "test_list": "l.txt"}, "datasets.d.root", "a path string"),
    ({"kind": "list", "root": "x", "videos": [{"path": "a.mp4", "label": "fake"}]}, "datasets.d.videos[0].label",
     "0 (real) or 1 (fake)"),
    ({"kind": "list", "root": "x", "videos": [{"path": "a.mp4", "label": 0}], "segments": {"test": [0.7, 0.2]}},
     "datasets.d.segments.test", "0 <= start < end <= 1"),
])
def test_validation_errors_name_key_and_form(tmp_path, entry, key, form):
    with pytest.raises(ManifestError) as e:
        load_manifest(_write(tmp_path, {"d": entry}))
    msg = str(e.value)
    assert key in msg and form in msg and "m.yaml" in msg and "\n" not in msg


def test_top_level_and_env_errors(tmp_path, monkeypatch):
    with pytest.raises(ManifestError, match="manifest not found"):
        load_manifest(tmp_path / "none.yaml")
    (tmp_path / "bad.yaml").write_text("version: 1\ndatasets: [a\n")
    with pytest.raises(ManifestError, match="not valid YAML"):
        load_manifest(tmp_path / "bad.yaml")
    (tmp_path / "v2.yaml").write_text("version: 2\ndatasets: {}\n")
    with pytest.raises(ManifestError, match="version: expected 1"):
        load_manifest(tmp_path / "v2.yaml")
    monkeypatch.delenv("NO_SUCH_ROOT_VAR", raising=False)
    p = _write(tmp_path, {"d": {"kind": "list", "root": "${NO_SUCH_ROOT_VAR}",
                                "videos": [{"path": "a.mp4", "label": 0}]}})
    with pytest.raises(ManifestError, match=r"datasets.d.root: environment variable NO_SUCH_ROOT_VAR is not set"):
        load_manifest(p)
    monkeypatch.setenv("NO_SUCH_ROOT_VAR", str(tmp_path / "vids"))
    m = load_manifest(p)
    assert m.entry("d").root == tmp_path / "vids"
    with pytest.raises(ManifestError, match=r"datasets.d.root: folder .*vids does not exist"):
        list_videos(m, "d", "train")
    with pytest.raises(ManifestError, match="datasets.zz: no such dataset"):
        m.entry("zz")
    (tmp_path / "vids").mkdir()
    with pytest.raises(ManifestError, match="split 'dev'"):
        list_videos(m, "d", "dev")


def test_ffpp_official_pairs(tmp_path):
    root = tmp_path / "ffpp"
    (root / "splits").mkdir(parents=True)
    (root / "splits" / "train.json").write_text(json.dumps([["071", "054"], ["000", "003"]]))
    (root / "splits" / "test.json").write_text(json.dumps([["953", "974"]]))
    p = _write(tmp_path, {"ffpp": {"kind": "ffpp", "root": str(root), "compression": "c40",
                                   "methods": ["Deepfakes", "FaceSwap"],
                                   "splits": {"train": "splits/train.json", "test": "splits/test.json"}}})
    m = load_manifest(p)
    train = list_videos(m, "ffpp", "train")
    ids = {it.id for it in train}
    assert {"original/000", "original/003", "original/054", "original/071"} <= ids
    assert len(train) == 4 and all(it.label == 0 for it in train) and not any("953" in i for i in ids)
    assert len(list_videos(m, "ffpp", "test")) == 2 + 4  # fakes are listed in test by default (fake_splits)
    p = _write(tmp_path, {"ffpp": {"kind": "ffpp", "root": str(root), "compression": "c40",
                                   "methods": ["Deepfakes", "FaceSwap"], "fake_splits": ["train", "test"],
                                   "splits": {"train": "splits/train.json", "test": "splits/test.json"}}})
    m = load_manifest(p)
    train = list_videos(m, "ffpp", "train")
    ids = {it.id for it in train}
    assert {"Deepfakes/071_054", "Deepfakes/054_071", "FaceSwap/000_003", "FaceSwap/003_000"} <= ids
    assert len(train) == 4 + 2 * 2 * 2 and not any("953" in i for i in ids)
    fake = next(it for it in train if it.id == "Deepfakes/071_054")
    assert fake.label == 1 and fake.rel_path == "manipulated_sequences/Deepfakes/c40/videos/071_054.mp4"
    assert fake.target == "071" and fake.source == "054" and fake.n_frames == 128
    real = next(it for it in train if it.id == "original/000")
    assert real.label == 0 and real.rel_path == "original_sequences/youtube/c40/videos/000.mp4"
    assert len(list_videos(m, "ffpp", "test")) == 2 + 4
    with pytest.raises(ManifestError, match=r"datasets.ffpp.splits.val: not defined"):
        list_videos(m, "ffpp", "val")
    (root / "splits" / "train.json").write_text('{"a": 1}')
    with pytest.raises(ManifestError, match="list of \\[id, id\\] pairs"):
        list_videos(m, "ffpp", "train")


def test_celebdf_list_without_header(tmp_path):
    root = tmp_path / "cdf"
    for rel in ("Celeb-real/id0_0000.mp4", "Celeb-real/id0_0001.mp4", "YouTube-real/00000.mp4",
                "Celeb-synthesis/id0_id1_0000.mp4", "Celeb-synthesis/id1_id0_0002.mp4"):
        _touch(root / rel)
    (root / "List_of_testing_videos.txt").write_text("1 Celeb-real/id0_0001.mp4\n0 Celeb-synthesis/id1_id0_0002.mp4\n")
    m = load_manifest(_write(tmp_path, {"cdf2": {"kind": "celebdf", "root": str(root),
                                                 "test_list": "List_of_testing_videos.txt"}}))
    test = {it.id: it for it in list_videos(m, "cdf2", "test")}
    assert set(test) == {"Celeb-real/id0_0001", "Celeb-synthesis/id1_id0_0002"}  # first line is data, not header
    assert test["Celeb-real/id0_0001"].label == 0 and test["Celeb-synthesis/id1_id0_0002"].label == 1
    assert test["Celeb-synthesis/id1_id0_0002"].target == "id1" and test["Celeb-real/id0_0001"].n_frames == 32
    train = {it.id: it.label for it in list_videos(m, "cdf2", "train")}
    assert train == {"Celeb-real/id0_0000": 0, "YouTube-real/00000": 0, "Celeb-synthesis/id0_id1_0000": 1}
    (root / "List_of_testing_videos.txt").write_text("label path\n")
    with pytest.raises(ManifestError, match=r"List_of_testing_videos.txt:1: datasets.cdf2.test_list"):
        list_videos(m, "cdf2", "test")


def test_dfd_dfdc_dfdcp_wilddeepfake(tmp_path):
    dfd = tmp_path / "dfd"
    _touch(dfd / "original_sequences/actors/c23/videos/01__walk.mp4")
    _touch(dfd / "manipulated_sequences/DeepFakeDetection/c23/videos/01_02__walk__X.mp4")
    dfdc = tmp_path / "dfdc"
    _touch(dfdc / "test/videos/aaa.mp4")
    _touch(dfdc / "test/videos/bbb.mp4")
    (dfdc / "test/labels.csv").write_text("filename,label\naaa.mp4,1\nbbb.mp4,0\n")
    dfdcp = tmp_path / "dfdcp"
    dfdcp.mkdir()
    (dfdcp / "dataset.json").write_text(json.dumps({
        "method_A/1/1_A/00196.mp4": {"label": "fake", "set": "test", "target_id": 1, "source_id": 2},
        "original_videos/2/00001.mp4": {"label": "real", "set": "test"},
        "original_videos/3/00002.mp4": {"label": "real", "set": "train"}}))
    dfw = tmp_path / "dfw"
    _touch(dfw / "real_test/10/real/0/0.png")
    _touch(dfw / "real_test/10/real/0/1.png")
    _touch(dfw / "fake_test/7/fake/3/0.png")
    m = load_manifest(_write(tmp_path, {
        "dfd": {"kind": "dfd", "root": str(dfd), "compression": "c23"},
        "dfdc": {"kind": "dfdc", "root": str(dfdc), "videos": "test/videos", "labels": "test/labels.csv"},
        "dfdcp": {"kind": "dfdcp", "root": str(dfdcp), "metadata": "dataset.json"},
        "dfw": {"kind": "wilddeepfake", "root": str(dfw),
                "layout": {"test": {"real": "real_test", "fake": "fake_test"}}}}))
    assert {(it.id, it.label) for it in list_videos(m, "dfd", "test")} == {
        ("original/01__walk", 0), ("DeepFakeDetection/01_02__walk__X", 1)}
    assert {(it.id, it.label) for it in list_videos(m, "dfdc", "test")} == {("aaa", 1), ("bbb", 0)}
    p = {(it.id, it.label, it.method) for it in list_videos(m, "dfdcp", "test")}
    assert p == {("method_A/1/1_A/00196", 1, "method_A"), ("original_videos/2/00001", 0, "original")}
    assert len(list_videos(m, "dfdcp", "train")) == 1
    w = {(it.id, it.label, it.rel_path) for it in list_videos(m, "dfw", "test")}
    assert w == {("real/10/real/0", 0, "real_test/10/real/0"), ("fake/7/fake/3", 1, "fake_test/7/fake/3")}
    with pytest.raises(ManifestError, match="has no videos"):
        list_videos(m, "dfd", "train")
    (dfdc / "test/labels.csv").write_text("name,fake\n")
    with pytest.raises(ManifestError, match="expected CSV columns filename,label"):
        list_videos(m, "dfdc", "test")


def test_adhoc_items(tmp_path):
    for rel in ("a/x.mp4", "b/x.mp4", "b/y.mp4"):
        _touch(tmp_path / rel)
    items = adhoc_items(str(tmp_path / "*" / "*.mp4"), 1, 8)
    assert [it.id for it in items] == ["a/x", "b/x", "b/y"] and all(it.label == 1 for it in items)
    assert items[0].rel_path == "a/x.mp4" and items[0].n_frames == 8
    with pytest.raises(ManifestError, match="no file matches"):
        adhoc_items(str(tmp_path / "*.avi"), 0, 8)
    with pytest.raises(ManifestError, match="missing.mp4': no such file or folder"):  # fails up front now
        adhoc_items(str(tmp_path / "missing.mp4"), 0, 8)


def test_adhoc_label_from_folder_and_several_inputs(tmp_path):
    mine = tmp_path / "mine"
    for rel in ("real/a.mp4", "real/sub/b.mov", "fake/c.mp4", "fake/notes.txt"):
        _touch(mine / rel)
    items = adhoc_items(str(mine), None, 8)
    assert {it.id: it.label for it in items} == {"real/a": 0, "real/sub/b": 0, "fake/c": 1}
    assert all(os.path.isabs(it.path) for it in items)
    # FF++'s own layout, and names where only part of the word list matches
    ff = tmp_path / "ff"
    _touch(ff / "original_sequences/youtube/c23/videos/000.mp4")
    _touch(ff / "manipulated_sequences/Deepfakes/c23/videos/000_003.mp4")
    _touch(ff / "Celeb-synthesis/id0_id1_0000.mp4")
    assert {it.id: it.label for it in adhoc_items(str(ff), None, 8)} == {
        "original_sequences/youtube/c23/videos/000": 0, "manipulated_sequences/Deepfakes/c23/videos/000_003": 1,
        "Celeb-synthesis/id0_id1_0000": 1}
    # a folder named real itself, globs, and one --label per --input
    items = adhoc_items([str(mine / "real"), str(mine / "fake" / "*.mp4")], [None, 1], 8)
    assert {it.id: it.label for it in items} == {"real/a": 0, "real/sub/b": 0, "fake/c": 1}
    _touch(tmp_path / "other" / "x.mp4")
    with pytest.raises(ManifestError, match=r"x.mp4: no folder .* says real or fake"):
        adhoc_items(str(tmp_path / "other"), None, 8)
    with pytest.raises(ManifestError, match="2 --input but 3 --label"):
        adhoc_items([str(mine), str(ff)], [0, 1, 1], 8)
    with pytest.raises(ManifestError, match="holds no video files"):
        (tmp_path / "empty").mkdir()
        adhoc_items(str(tmp_path / "empty"), 0, 8)


def test_adhoc_folder_input_follows_symlinked_folders_once(tmp_path):
    """A folder input descends into symlinked folders (clusters link datasets in); a link loop and a second
    link to the same folder add nothing."""
    store = tmp_path / "store"
    _touch(store / "clips" / "a.mp4")
    _touch(store / "more" / "b.mp4")
    mine = tmp_path / "mine"
    (mine / "real").mkdir(parents=True)
    (mine / "real" / "linked").symlink_to(store / "clips")
    (mine / "real" / "again").symlink_to(store / "clips")
    (mine / "real" / "linked_more").symlink_to(store / "more")
    (store / "more" / "loop").symlink_to(mine / "real")  # mine/real -> more -> loop -> mine/real
    items = adhoc_items(str(mine), None, 8)
    assert sorted(it.id for it in items) == ["again/a", "linked_more/b"]  # ids relative to the common folder
    assert all(it.label == 0 for it in items)


@pytest.mark.parametrize("doc, key, form", [
    ({"defaults": {"shard_sise": "1GB"}}, "defaults.shard_sise", "did you mean 'shard_size'"),
    ({"defaults": {"shard_size": True}}, "defaults.shard_size", "a size such as 1GiB"),
    ({"defaults": {"videos_per_shard": 16}}, "defaults.videos_per_shard: no longer used", "shard_size: 1GiB"),
    ({"dataset": {}}, ": dataset: unknown key", "did you mean 'datasets'"),
    ({"defaults": {"frames": {"trian": 4}}}, "defaults.frames.trian", "did you mean 'train'"),
    ({"defaults": {"crop": {"size": 64, "scael": 1.3}}}, "defaults.crop.scael", "did you mean 'scale'"),
    ({"d": {"shard_size": "big"}}, "datasets.d.shard_size", "a size such as 1GiB"),
    ({"d": {"videos": [{"path": "a.mp4", "label": True}]}}, "datasets.d.videos[0].label", "0 (real) or 1"),
    ({"d": {"videos": [{"path": "a.mp4", "label": 0, "lable": 1}]}}, "datasets.d.videos[0].lable", "unknown key"),
    ({"d": {"description": 3}}, "datasets.d.description", "a string"),
    ({"w": {"kind": "wilddeepfake", "layout": {"train": {"real": 5}}}}, "datasets.w.layout.train.real", "a folder"),
])
def test_typos_and_wrong_types_at_every_level_name_the_key(tmp_path, doc, key, form):
    base = {"version": 1, "datasets": {"d": {"kind": "list", "root": "x", "videos": [{"path": "a.mp4", "label": 0}]}}}
    for k, v in doc.items():
        if k in ("defaults", "dataset"):
            base[k] = v
        else:
            base["datasets"] = {k: {**({"kind": "list", "root": "x", "videos": [{"path": "a.mp4", "label": 0}]}
                                       if k == "d" else {"root": "x"}), **v}}
    p = tmp_path / "m.yaml"
    p.write_text(yaml.safe_dump(base))
    with pytest.raises(ManifestError) as e:
        load_manifest(p)
    msg = str(e.value)
    assert key in msg and form in msg and "\n" not in msg, msg
