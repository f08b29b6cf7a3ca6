"""Video probing and frame sampling with ffmpeg (through ffmpeg-python), decoded straight to RGB numpy arrays.

No intermediate image files: ffmpeg's ``select`` filter keeps only the requested frame indices and writes raw
RGB24 bytes to a pipe, which is read one frame at a time (peak memory one frame per call of ``iter_frames``).

The ffmpeg binary is ``ffmpeg`` on PATH if present, otherwise the one shipped in the ``imageio-ffmpeg`` wheel.
Probing does not need ``ffprobe``: stream facts are parsed from ``ffmpeg -i`` and the frame count comes from
counting packets with a stream copy (no decoding).
"""
from __future__ import annotations

import os
import re
import shutil
import subprocess
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Iterator, Sequence

import ffmpeg
import numpy as np

from pipeline.errors import UserError


class VideoError(UserError):
    """A video cannot be probed or decoded; the message is one line naming the file and the reason."""


@lru_cache(maxsize=1)
def ffmpeg_exe() -> str:
    """Path of the ffmpeg binary: ``$FFMPEG_BINARY``, then ``ffmpeg`` on PATH, then imageio-ffmpeg's."""
    env = os.environ.get("FFMPEG_BINARY")
    if env:
        return env
    on_path = shutil.which("ffmpeg")
    if on_path:
        return on_path
    import imageio_ffmpeg

    return imageio_ffmpeg.get_ffmpeg_exe()


@dataclass(frozen=True)
class VideoInfo:
    """What the pipeline needs to know about a video before decoding it.

    width/height are the *displayed* size (after the rotation in the container's display matrix, which
    ffmpeg applies when decoding). n_frames is the number of video packets = decodable frames.
    """
    path: str
    width: int
    height: int
    fps: float
    n_frames: int
    duration: float
    rotation: int
    codec: str
    damage: str = ""   # non-empty when ffmpeg reported a truncated or corrupt stream (its message)
    sar: str = ""      # the pixel aspect ratio ("128:117") of a stream whose pixels are not square: its frames are
                       # decoded at the display size (width x height above), so faces are not stretched


_STREAM_RE = re.compile(r"Stream #\d+:\d+.*?: Video: (?P<codec>\w+).*?, (?P<w>\d{2,5})x(?P<h>\d{2,5})[, \[]")
_FPS_RE = re.compile(r"(?P<fps>[\d.]+) (fps|tbr)")
_DUR_RE = re.compile(r"Duration: (\d+):(\d+):([\d.]+)")
_ROT_RE = re.compile(r"rotation of (-?[\d.]+) degrees|rotate\s*:\s*(-?\d+)")
_SAR_RE = re.compile(r"\[SAR (\d+):(\d+) DAR")
_FRAMES_RE = re.compile(r"frame=\s*(\d+)")
_DAMAGE_RE = re.compile(r"^.*(partial file|corrupt input packet|Truncating packet|moov atom not found|"
                        r"Invalid data found).*$", re.MULTILINE)


def _last_error_line(stderr: str) -> str:
    lines = [ln.strip() for ln in stderr.strip().splitlines() if ln.strip()]
    return lines[-1] if lines else "ffmpeg gave no message"


IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp")
# Files taken as videos where a folder is scanned (ad-hoc inputs, the manifest's folder listings, predict).
VIDEO_SUFFIXES = (".mp4", ".avi", ".mov", ".mkv", ".webm", ".m4v", ".mpg", ".mpeg", ".flv", ".wmv", ".ts")


def image_sequence(folder: str | os.PathLike) -> list[Path]:
    """Frame images of a folder (datasets shipped as images, e.g. WildDeepfake), in natural name order."""
    def key(p: Path):
        return [int(t) if t.isdigit() else t for t in re.split(r"(\d+)", p.name)]
    return sorted((p for p in Path(folder).iterdir() if p.suffix.lower() in IMAGE_SUFFIXES), key=key)


def read_image(p: Path) -> np.ndarray:
    """(H, W, 3) uint8 RGB of an image file; raises ``VideoError`` for an unreadable or truncated one.

    OpenCV decodes a JPEG cut off mid-file without complaint, filling the missing rows with grey, so the
    end-of-image marker (JPEG ``FF D9``, PNG ``IEND``) is checked first.
    """
    import cv2

    try:
        data = Path(p).read_bytes()
    except OSError as e:
        raise VideoError(f"{p}: not a readable image ({e.strerror or e})") from e
    tail = data.rstrip(b"\x00\r\n ")[-12:]
    suffix = Path(p).suffix.lower()
    if suffix in (".jpg", ".jpeg") and data.startswith(b"\xff\xd8") and not tail.endswith(b"\xff\xd9"):
        raise VideoError(f"{p}: truncated JPEG (no end-of-image marker)")
    if suffix == ".png" and data.startswith(b"\x89PNG") and b"IEND" not in tail:
        raise VideoError(f"{p}: truncated PNG (no IEND chunk)")
    img = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_COLOR) if data else None
    if img is None:
        raise VideoError(f"{p}: not a readable image")
    return np.ascontiguousarray(img[:, :, ::-1])


def _first_readable_image(frames: list[Path]) -> np.ndarray:
    """The first image of a sequence that decodes (a bad first frame must not hide the whole folder)."""
    err = None
    for p in frames:
        try:
            return read_image(p)
        except VideoError as e:
            err = e
    raise VideoError(f"{Path(frames[0]).parent}: no readable image among {len(frames)} ({err})")


def probe(path: str | os.PathLike) -> VideoInfo:
    """Stream facts of the first video stream of ``path``; raises ``VideoError`` (file and reason) if unreadable.

    A folder is treated as an image sequence (one frame per image, name order; fps 0).
    """
    path = str(path)
    if not os.path.exists(path):
        raise VideoError(f"{path}: no such file")
    if os.path.isdir(path):
        frames = image_sequence(path)
        if not frames:
            raise VideoError(f"{path}: folder holds no {'/'.join(IMAGE_SUFFIXES)} images")
        h, w = _first_readable_image(frames).shape[:2]
        return VideoInfo(path=path, width=w, height=h, fps=0.0, n_frames=len(frames), duration=0.0, rotation=0,
                         codec="images")
    if os.path.getsize(path) == 0:
        raise VideoError(f"{path}: empty file (0 bytes)")
    # One ffmpeg call prints the header (codec, size, fps, rotation) and counts packets by stream copy.
    cmd = [ffmpeg_exe(), "-hide_banner", "-nostdin", "-i", path, "-map", "0:v:0", "-c", "copy", "-f", "null", "-"]
    proc = subprocess.run(cmd, capture_output=True, text=True, errors="replace")
    err = proc.stderr
    m = _STREAM_RE.search(err)
    if proc.returncode != 0 or m is None:
        # A file ffmpeg opened (it printed the input header) but without a video stream, e.g. audio only:
        # ffmpeg's own last line ("Error opening output files") would say nothing useful.
        opened = "Input #" in err and m is None
        reason = "no video stream" if opened or proc.returncode == 0 else _last_error_line(err)
        raise VideoError(f"{path}: not a readable video ({reason})")
    stream_line = err[m.start():err.find("\n", m.start())]
    fps_m = _FPS_RE.search(stream_line)
    fps = float(fps_m.group("fps")) if fps_m else 0.0
    dur_m = _DUR_RE.search(err)
    duration = int(dur_m.group(1)) * 3600 + int(dur_m.group(2)) * 60 + float(dur_m.group(3)) if dur_m else 0.0
    frames = _FRAMES_RE.findall(err)
    n_frames = int(frames[-1]) if frames else 0
    rot_m = _ROT_RE.search(err)
    rotation = int(round(float(rot_m.group(1) or rot_m.group(2)))) % 360 if rot_m else 0
    w, h = int(m.group("w")), int(m.group("h"))
    sar_m = _SAR_RE.search(stream_line)
    sar = ""
    if sar_m and int(sar_m.group(1)) > 0 and int(sar_m.group(2)) > 0 and sar_m.group(1) != sar_m.group(2):
        sar = f"{sar_m.group(1)}:{sar_m.group(2)}"
        w = max(2, int(round(w * int(sar_m.group(1)) / int(sar_m.group(2)) / 2)) * 2)  # the display width
    if rotation in (90, 270):
        w, h = h, w
    if n_frames == 0:
        raise VideoError(f"{path}: video stream has no frames")
    dmg = _DAMAGE_RE.search(err)
    damage = re.sub(r"^\[[^]]*\]\s*", "", dmg.group(0).strip()) if dmg else ""
    return VideoInfo(path=path, width=w, height=h, fps=fps, n_frames=n_frames, duration=duration,
                     rotation=rotation, codec=m.group("codec"), damage=damage, sar=sar)


def sample_indices(n_frames: int, n: int, segment: tuple[float, float] = (0.0, 1.0)) -> np.ndarray:
    """``n`` evenly spaced frame indices inside a fraction ``segment`` of a video of ``n_frames`` frames.

    The segment [a, b) (fractions of the video) lets splits of one video use disjoint frames. When the
    segment holds fewer than ``n`` frames, every frame in it is returned.

    Returns:
        (k,) int64 sorted unique indices, k <= n.
    """
    a, b = segment
    if not 0.0 <= a < b <= 1.0:
        raise ValueError(f"segment must satisfy 0 <= start < end <= 1, got {segment}")
    lo = int(np.floor(a * n_frames))
    hi = max(lo + 1, int(np.floor(b * n_frames)))  # exclusive
    hi = min(hi, n_frames)
    count = hi - lo
    if n <= 0 or count <= 0:
        return np.zeros(0, np.int64)
    if n >= count:
        return np.arange(lo, hi, dtype=np.int64)
    # Centre each pick in its 1/n-th of the segment so neither end is favoured.
    idx = lo + np.floor((np.arange(n) + 0.5) * count / n).astype(np.int64)
    return np.unique(idx)


def select_expr(indices: Sequence[int], leaf: int = 8) -> str:
    """ffmpeg ``select`` expression true exactly on frame numbers ``indices``.

    Built as a balanced tree of sums: ffmpeg's expression parser rejects a flat chain of ~100+ terms
    ("Cannot allocate memory"), while nesting depth here grows only with log2(len(indices)).
    """
    idx = list(indices)
    if len(idx) <= leaf:
        return "+".join(f"eq(n,{i})" for i in idx)  # ffmpeg-python escapes the commas
    h = len(idx) // 2
    return f"({select_expr(idx[:h], leaf)})+({select_expr(idx[h:], leaf)})"


def iter_frames(path: str | os.PathLike, indices: Sequence[int], info: VideoInfo | None = None,
                threads: int | None = None, bad_frames: list | None = None) -> Iterator[tuple[int, np.ndarray]]:
    """Decode only frames ``indices`` of ``path``; yields ``(frame_index, frame)`` in increasing order.

    ``threads`` caps ffmpeg's decoder threads (1 when each worker process owns one core; None = ffmpeg's
    choice).

    frame: (H, W, 3) uint8 RGB, displayed orientation. If the stream ends early (a truncated file), the
    generator stops after the last decodable frame and raises ``VideoError`` saying how many were missing.

    For an image folder, ``bad_frames`` (a list) collects ``(frame_index, image file, reason)`` of images that
    cannot be read, and only those frames are skipped; without it the first bad image raises ``VideoError``.
    """
    path = str(path)
    info = info or probe(path)
    idx = sorted({int(i) for i in indices})
    if not idx:
        return
    if info.codec == "images":
        files = image_sequence(path)
        for i in idx:
            try:
                frame = read_image(files[i])
            except VideoError as e:
                if bad_frames is None:
                    raise
                bad_frames.append((i, str(files[i]), str(e).split(": ", 1)[-1]))
                continue
            yield i, frame
        return
    expr = select_expr(idx)
    in_opts = {"threads": threads} if threads else {}
    video = ffmpeg.input(path, **in_opts).video.filter("select", expr)
    if info.sar:  # non-square pixels: decode at the display size, so faces are not stretched
        video = video.filter("scale", info.width, info.height).filter("setsar", 1)
    stream = (video
              .output("pipe:", format="rawvideo", pix_fmt="rgb24", fps_mode="passthrough", loglevel="error"))
    proc = stream.run_async(cmd=ffmpeg_exe(), pipe_stdout=True, pipe_stderr=True, quiet=True)
    frame_bytes = info.width * info.height * 3
    got = 0
    try:
        for i in idx:
            buf = proc.stdout.read(frame_bytes)
            if len(buf) < frame_bytes:
                break
            got += 1
            yield i, np.frombuffer(buf, np.uint8).reshape(info.height, info.width, 3)
    finally:
        proc.stdout.close()
        stderr = proc.stderr.read().decode(errors="replace")
        proc.stderr.close()
        proc.wait()
    if got < len(idx):
        reason = _last_error_line(stderr) if stderr.strip() else "stream ended early"
        raise VideoError(f"{path}: decoded {got} of {len(idx)} requested frames; frame {idx[got]} and later are "
                         f"missing ({reason})")


def read_frames(path: str | os.PathLike, indices: Sequence[int], info: VideoInfo | None = None) -> np.ndarray:
    """All frames ``indices`` at once: (k, H, W, 3) uint8 RGB in increasing index order."""
    info = info or probe(path)
    frames = [f for _, f in iter_frames(path, indices, info)]
    if not frames:
        return np.zeros((0, info.height, info.width, 3), np.uint8)
    return np.stack(frames)


def sample_frames(path: str | os.PathLike, n: int, segment: tuple[float, float] = (0.0, 1.0)
                  ) -> tuple[np.ndarray, np.ndarray]:
    """Probe ``path`` and decode ``n`` evenly spaced frames.

    Returns:
        (indices (k,) int64, frames (k, H, W, 3) uint8 RGB), k <= n.
    """
    info = probe(path)
    indices = sample_indices(info.n_frames, n, segment)
    return indices, read_frames(path, indices, info)


def is_video_path(path: str | os.PathLike) -> bool:
    """True for the container extensions the ad-hoc mode picks up from a folder."""
    return Path(path).suffix.lower() in {".mp4", ".avi", ".mov", ".mkv", ".webm", ".m4v", ".mpg", ".mpeg"}
