"""The shard files a Dataset reads from: every finished shard of some split folders (`ShardPool`).

HDF5 files are opened lazily in the process that reads (ShardReader), so readers built before the DataLoader
forks are safe, and at most `data.max_open_shards` are open at once per process (least recently used closed
first).
"""
from __future__ import annotations

import os
from collections import OrderedDict

import numpy as np

from model.config import ConfigError
from pipeline.crop import CROP_SCALE
from pipeline.shards import ShardError, ShardReader, shard_paths


def video_key(row: dict) -> str:
    """A video id unique across data sets and methods: "<dataset>/<method>/<id>" (the method is not repeated
    when the id already starts with it, e.g. FF++ "Deepfakes/000_003" -> "ffpp/Deepfakes/000_003")."""
    vid, method = str(row.get("id", "")), str(row.get("method", ""))
    dataset = str(row.get("dataset", ""))
    return f"{dataset}/{vid}" if vid.startswith(method + "/") else f"{dataset}/{method}/{vid}"


class ShardPool:
    """Readers of every finished shard of some split folders, with the per-face tables concatenated.

    `open(si)` hands out reader `si` for reading crops and keeps at most `max_open` shard files open in the
    calling process, closing the least recently used one first: a persistent DataLoader worker reads from
    every shard over an epoch, and without a bound it would hold all of them open for the whole run.
    """

    def __init__(self, split_dirs: list[str], max_open: int = 32):
        if not split_dirs:
            raise ConfigError("no shard folders given (data.shards is empty)")
        if max_open < 1:
            raise ValueError(f"max_open must be >= 1, got {max_open}")
        self.readers = [ShardReader(p) for d in split_dirs for p in shard_paths(d)]
        if not self.readers:
            raise ShardError(f"no finished shards listed in {', '.join(map(str, split_dirs))}")
        # Face scale of each shard's stored crops (crop side / face-box side).
        self.crop_scales = [float(r.attrs.get("crop_scale", CROP_SCALE)) for r in self.readers]
        self.max_open = int(max_open)
        self._lru: OrderedDict[int, None] = OrderedDict()  # shards this process opened, oldest first
        self._lru_pid = os.getpid()

    def open(self, si: int) -> ShardReader:
        """Reader `si`, marked most recently used; the oldest open shard is closed beyond `max_open`."""
        if self._lru_pid != os.getpid():  # a forked worker: the parent's handles are not ours to close
            self._lru, self._lru_pid = OrderedDict(), os.getpid()
        self._lru[si] = None
        self._lru.move_to_end(si)
        while len(self._lru) > self.max_open:
            old, _ = self._lru.popitem(last=False)
            self.readers[old].close()
        return self.readers[si]

    def close(self) -> None:
        """Close every shard this process opened."""
        for r in self.readers:
            r.close()
        self._lru.clear()

    def videos(self):
        """Yield (shard number, video row dict, rows of that video's faces sorted by frame index)."""
        for si, r in enumerate(self.readers):
            order = np.lexsort((r.frame_index, r.video))
            vids = r.video[order]
            starts = np.flatnonzero(np.r_[True, vids[1:] != vids[:-1]]) if len(vids) else []
            ends = list(starts[1:]) + [len(vids)]
            for a, b in zip(starts, ends):
                yield si, r.videos[int(vids[a])], order[a:b]
