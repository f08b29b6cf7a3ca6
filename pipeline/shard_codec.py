"""Compressions of shard crops: which HDF5 filters a shard is written with, and the filters a reader needs."""
from __future__ import annotations

from pathlib import Path
from typing import Any

import h5py

# Chosen with bench/bench_codec.py on 384-px crops of HD videos: the smallest bytes per face among the codecs
# that read >= 1200 random faces per CPU-second (a tenth of a ~120 pairs/s training core's time) and write
# >= 150 (a tenth of preprocessing's time). Blosc-zstd level 3 stores ~56 % of raw where Blosc-LZ4 stored
# ~74 %; LZ4 reads ~2.5x faster (`--compression blosc-lz4` where reading speed matters more than disk).
# Blosc needs `import hdf5plugin` before h5py reads the crops (ShardReader does it).
DEFAULT_COMPRESSION = "blosc-zstd:3"
COMPRESSIONS = ("none", "lzf", "gzip", "blosc-lz4", "blosc-lz4hc", "blosc-zstd")


def compression_kwargs(compression: str) -> dict[str, Any]:
    """h5py ``create_dataset`` keyword arguments for a compression name: one of ``COMPRESSIONS``, optionally
    with a level, ``NAME:LEVEL`` (0-9; gzip and blosc-* only), e.g. ``blosc-zstd:3``."""
    def bad(why: str) -> ValueError:
        return ValueError(f"unknown shard compression {compression!r} ({why}); expected one of "
                          f"{', '.join(COMPRESSIONS)}, with ':LEVEL' (0-9) for gzip and blosc-*")

    name, _, level_text = str(compression).partition(":")
    if name not in COMPRESSIONS:
        raise bad(f"no codec {name!r}")
    if level_text:
        if name in ("none", "lzf"):
            raise bad(f"{name} has no levels")
        if not level_text.isdigit() or not 0 <= int(level_text) <= 9:
            raise bad(f"level {level_text!r} is not 0-9")
    level = int(level_text) if level_text else None
    if name == "none":
        return {}
    if name == "lzf":
        return {"compression": "lzf"}
    if name == "gzip":
        return {"compression": "gzip", "compression_opts": 4 if level is None else level}
    import hdf5plugin  # registers the Blosc filter with HDF5; only needed for this choice

    # Byte shuffle does nothing for uint8 pixels and only costs time.
    return dict(hdf5plugin.Blosc(cname=name.split("-", 1)[1], clevel=5 if level is None else level,
                                 shuffle=hdf5plugin.Blosc.NOSHUFFLE))


def check_compression(compression: str) -> str:
    """``compression`` if it names a shard compression, else ``ValueError`` saying why (for CLI checks)."""
    compression_kwargs(compression)
    return compression


def ensure_filters_for(path: Path, f: h5py.File) -> None:
    """Register hdf5plugin filters when a shard was written with Blosc (plain h5py lacks them)."""
    if str(f.attrs.get("compression", "")).startswith("blosc"):
        import hdf5plugin  # noqa: F401  (import registers the filters)
