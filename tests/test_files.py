"""pipeline.files: atomic replacement, what a killed writer leaves, and the file hash."""
import hashlib
import os

import pytest

from pipeline import files, shards


def test_atomic_write_replaces_the_file_and_leaves_no_temporary(tmp_path):
    target = tmp_path / "index.json"
    target.write_text("old")
    assert files.atomic_write(target, "new ü") == target
    assert target.read_text(encoding="utf-8") == "new ü"
    files.atomic_write(target, b"\x00bytes")
    assert target.read_bytes() == b"\x00bytes" and sorted(tmp_path.iterdir()) == [target]


def test_atomic_path_writes_beside_the_target_under_a_per_process_name(tmp_path):
    target = tmp_path / "metrics.csv"
    with files.atomic_path(target) as tmp:
        assert tmp.parent == tmp_path and tmp.name == f"metrics.csv.{os.getpid()}.tmp"
        tmp.write_text("a,b\n")
        assert not target.exists()
    assert target.read_text() == "a,b\n" and not tmp.exists()


def test_a_failed_write_keeps_the_old_file_and_removes_its_temporary(tmp_path):
    target = tmp_path / "best.pt"
    target.write_text("old")
    with pytest.raises(RuntimeError, match="disk full"):
        with files.atomic_path(target) as tmp:
            tmp.write_text("half")
            raise RuntimeError("disk full")
    assert target.read_text() == "old" and sorted(tmp_path.iterdir()) == [target]


def test_a_killed_writers_temporary_is_an_unfinished_file_of_a_split(tmp_path):
    # verify and the resume logic find a split's unfinished files by this suffix
    assert files.TMP_SUFFIX == shards.TMP_SUFFIX
    target = tmp_path / "index.json"
    left = [tmp_path / "index.json.4242.tmp", tmp_path / "index.json.17.tmp"]
    for p in left + [tmp_path / "failures.jsonl.4242.tmp", tmp_path / "shard-00000.h5.host-1-abc.tmp"]:
        p.write_text("half")
    assert files.leftover_temporaries(target) == sorted(left)


def test_file_sha256_hashes_the_bytes_in_chunks(tmp_path):
    p = tmp_path / "weights.onnx"
    data = os.urandom(files.HASH_CHUNK * 2 + 5)
    p.write_bytes(data)
    assert files.file_sha256(p) == hashlib.sha256(data).hexdigest()


def test_a_full_disk_is_one_line_naming_the_folder(tmp_path, monkeypatch):
    """Fault matrix: a full disk ended with "No space left on device" naming no path."""
    import errno
    from pathlib import Path

    from pipeline.errors import UserError
    from pipeline.files import DiskFull, atomic_write

    def full(self, data):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(Path, "write_bytes", full)
    with pytest.raises(DiskFull) as e:
        atomic_write(tmp_path / "index.json", "{}")
    assert isinstance(e.value, UserError) and e.value.errno == errno.ENOSPC
    assert str(e.value).startswith(f"{tmp_path}: no space left on the device (") and "\n" not in str(e.value)
    assert not list(tmp_path.iterdir())
