"""Progress of a run: a tqdm bar over videos, fed by worker events on a topic of this run only (two runs on
one scheduler do not mix) and counting each video once, however often its task is retried."""
from __future__ import annotations

import threading
import time
from typing import Callable

PROGRESS_TOPIC_PREFIX = "laanet-pipeline-progress-"  # + run id: one topic per run
ProgressFn = Callable[[dict], None]


class ProgressBar:
    """tqdm over videos with frames/s in the postfix; fed by task events and results (thread-safe).

    Every event names its ``key`` (a video, or a block of a shard) and its ``group`` (the task's video or
    shard); an event whose key was seen is ignored, and ``finish_group`` tops the count up to the group's
    videos when its result arrives and ignores its later events. A retried task, or an event that arrives
    after its result, therefore never counts a video twice.
    """

    def __init__(self, total: int, desc: str, unit_frames: str = "frames"):
        from tqdm import tqdm

        self.bar = tqdm(total=total, desc=desc, unit="video", dynamic_ncols=True)
        self.frames = 0
        self.faces = 0
        self.t0 = time.perf_counter()
        self.unit_frames = unit_frames
        self.lock = threading.Lock()
        self.seen: set[str] = set()
        self.counted: dict[str, int] = {}
        self.closed: set[str] = set()

    def __call__(self, ev: dict) -> None:
        with self.lock:
            key, group = ev.get("key"), ev.get("group", ev.get("key"))
            if key is not None and (key in self.seen or group in self.closed):
                return
            self.seen.add(key)
            self.counted[group] = self.counted.get(group, 0) + ev.get("videos", 0)
            self._add(ev.get("videos", 0), ev.get("frames", 0), ev.get("faces", 0))

    def finish_group(self, group: str, videos: int, frames: int = 0, faces: int = 0) -> None:
        """A task's result: its group counts ``videos`` in all (frames and faces only if no event came)."""
        with self.lock:
            if group in self.closed:
                return
            self.closed.add(group)
            had_events = group in self.counted
            self._add(max(0, videos - self.counted.get(group, 0)), 0 if had_events else frames,
                      0 if had_events else faces)

    def _add(self, videos: int, frames: int, faces: int) -> None:
        self.frames += frames
        self.faces += faces
        dt = max(time.perf_counter() - self.t0, 1e-9)
        self.bar.set_postfix_str(f"{self.frames / dt:.1f} {self.unit_frames}/s, {self.faces} faces", refresh=False)
        self.bar.update(min(videos, self.bar.total - self.bar.n))

    def write(self, msg: str) -> None:
        self.bar.write(msg)

    def close(self) -> None:
        self.bar.close()
