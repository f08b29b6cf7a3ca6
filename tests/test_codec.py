"""Shard crop codecs with levels (NAME:LEVEL): they write, read back exactly, and bad names fail clearly."""
import h5py
import numpy as np
import pytest

from pipeline.shard_codec import DEFAULT_COMPRESSION, check_compression
from pipeline.shard_writer import write_shard
from pipeline.shards import ShardReader


@pytest.mark.parametrize("codec", ["gzip:1", "gzip:9", "blosc-zstd:1", "blosc-zstd:9", "blosc-lz4:1", DEFAULT_COMPRESSION])
def test_codec_levels_round_trip(tmp_path, codec):
    rng = np.random.default_rng(0)
    faces = rng.integers(0, 256, (3, 48, 48, 3), dtype=np.uint8)
    faces[:, :24] = 7  # something to compress
    path = write_shard(tmp_path / "s.h5", faces, compression=codec)
    with ShardReader(path) as r:
        assert r.attrs["compression"] == codec
        for i in range(3):
            np.testing.assert_array_equal(r.face(i), faces[i])
    # plain h5py (+ hdf5plugin for Blosc) reads it, with the checksum on
    import hdf5plugin  # noqa: F401

    with h5py.File(path, "r") as f:
        np.testing.assert_array_equal(f["faces"][1], faces[1])
        assert f["faces"].fletcher32 and f["faces"].id.get_storage_size() < faces.nbytes


def test_codec_level_changes_the_filter(tmp_path):
    faces = np.tile(np.arange(48, dtype=np.uint8)[None, :, None, None], (2, 1, 48, 3))
    sizes = {}
    for codec in ("gzip:1", "gzip:9"):
        with h5py.File(write_shard(tmp_path / f"{codec[-1]}.h5", faces, compression=codec), "r") as f:
            sizes[codec] = f["faces"].compression_opts
    assert sizes == {"gzip:1": 1, "gzip:9": 9}


@pytest.mark.parametrize("bad, why", [("zip", "no codec 'zip'"), ("gzip:12", "level '12' is not 0-9"),
                                      ("lzf:3", "lzf has no levels"), ("blosc-zstd:x", "level 'x'")])
def test_bad_codec_names_fail_with_the_reason(tmp_path, bad, why):
    with pytest.raises(ValueError, match=why):
        check_compression(bad)
    with pytest.raises(ValueError, match="expected one of none, lzf, gzip"):
        write_shard(tmp_path / "s.h5", np.zeros((1, 8, 8, 3), np.uint8), compression=bad)
    assert not list(tmp_path.iterdir())  # nothing left behind
