"""Face detection with RetinaFace (batched); the square crop cut around a detected face is ``pipeline.crop``'s.

Backends (``FaceDetector(backend=...)``):

* ``mobilenet0.25`` (default): RetinaFace MobileNet-0.25 as ONNX, run with onnxruntime. Weights ship with
  the project as package data in ``pipeline/weights/retinaface_mobilenet0.25.onnx`` (MIT, see
  ``pipeline/weights/NOTICE``). Input: BGR float minus the per-channel mean (104, 117, 127).
* ``resnet50``: the paper's RetinaFace ResNet-50, network from the ``retinaface-pytorch`` package, run with
  torch. Its published weights are downloaded on first use when online, or given with ``weights=PATH``.
  Input: RGB normalised with ImageNet mean/std.

Both share the anchor layout (min sizes [[16, 32], [64, 128], [256, 512]] at strides 8/16/32) and the box
and keypoint encoding (variances 0.1 / 0.2); anchors, decoding and NMS below are this project's own numpy code.
"""
from __future__ import annotations

import warnings
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Sequence

import cv2
import numpy as np

from pipeline.errors import UserError, one_line
from pipeline.files import file_sha256

MIN_SIZES = ((16, 32), (64, 128), (256, 512))
STEPS = (8, 16, 32)
VARIANCES = (0.1, 0.2)
WEIGHTS_DIR = Path(__file__).resolve().parent / "weights"  # package data: installed with the package
MOBILENET_ONNX = WEIGHTS_DIR / "retinaface_mobilenet0.25.onnx"
RESNET50_URL = ("https://github.com/ternaus/retinaface/releases/download/0.01/"
                "retinaface_resnet50_2020-07-20-f168fae3c.zip")
BACKENDS = ("mobilenet0.25", "resnet50")


class DetectorWeightsError(UserError):
    """Detector weights are missing or unusable; the message says how to get them."""


@dataclass
class Detections:
    """Faces found in one frame, best first (by ``FaceDetector.keep``).

    boxes: (k, 4) float32 x1, y1, x2, y2 in frame pixels; scores: (k,) float32; kps5: (k, 5, 2) float32
    (left eye, right eye, nose, left and right mouth corners) in frame pixels.
    """
    boxes: np.ndarray
    scores: np.ndarray
    kps5: np.ndarray

    def __len__(self) -> int:
        return len(self.scores)


@dataclass
class DetectorConfig:
    """Settings of ``FaceDetector``; the defaults are the pipeline's."""
    backend: str = "mobilenet0.25"
    weights: str | None = None           # path; None = shipped MobileNet ONNX / published ResNet-50 URL
    score_threshold: float = 0.5
    nms_iou: float = 0.4
    max_faces: int = 1                   # faces kept per frame
    keep: str = "score"                  # order used to keep faces: "score" | "area"
    max_side: int | None = 1280          # finest detection level: frames with a longer side are downscaled to it
    face_px: int | None = 64             # detection resolution follows the faces (FaceDetector); None: one pass
    min_side: int = 160                  # longer side of the coarsest detection level (face_px mode)
    batch_size: int | None = None        # frames per network call; None: 1 on CPU, 16 on CUDA (see FaceDetector)
    threads: int = 1                     # intra-op threads (one worker process per core)
    device: str = "cpu"                  # resnet50 only
    extra: dict = field(default_factory=dict)


def prior_boxes(height: int, width: int) -> np.ndarray:
    """RetinaFace anchors for an input of ``height`` x ``width``.

    Returns:
        (P, 4) float32 (cx, cy, w, h) as fractions of the input size, in the order the network emits them
        (stride level, then row, column, then anchor size).
    """
    out = []
    for sizes, step in zip(MIN_SIZES, STEPS):
        fh, fw = int(np.ceil(height / step)), int(np.ceil(width / step))
        cy, cx = np.meshgrid((np.arange(fh) + 0.5) * step / height, (np.arange(fw) + 0.5) * step / width,
                             indexing="ij")
        level = np.empty((fh, fw, len(sizes), 4), np.float32)
        for a, s in enumerate(sizes):
            level[:, :, a, 0] = cx
            level[:, :, a, 1] = cy
            level[:, :, a, 2] = s / width
            level[:, :, a, 3] = s / height
        out.append(level.reshape(-1, 4))
    return np.concatenate(out)


def decode(loc: np.ndarray, kps: np.ndarray, priors: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Network offsets -> boxes and keypoints as fractions of the input size.

    Args:
        loc: (P, 4) box regression; kps: (P, 10) keypoint regression; priors: (P, 4) from ``prior_boxes``.
    Returns:
        boxes (P, 4) x1, y1, x2, y2; kps5 (P, 5, 2) x, y.
    """
    v0, v1 = VARIANCES
    centre = priors[:, :2] + loc[:, :2] * v0 * priors[:, 2:]
    size = priors[:, 2:] * np.exp(loc[:, 2:] * v1)
    boxes = np.concatenate([centre - size / 2, centre + size / 2], axis=1)
    k = kps.reshape(-1, 5, 2)
    kps5 = priors[:, None, :2] + k * v0 * priors[:, None, 2:]
    return boxes, kps5


def nms(boxes: np.ndarray, scores: np.ndarray, iou: float) -> np.ndarray:
    """Greedy non-maximum suppression. boxes (k, 4), scores (k,); returns kept indices, best first."""
    order = np.argsort(-scores, kind="stable")
    x1, y1, x2, y2 = boxes.T
    area = np.maximum(x2 - x1, 0) * np.maximum(y2 - y1, 0)
    keep = []
    while order.size:
        i = order[0]
        keep.append(i)
        rest = order[1:]
        w = np.maximum(0.0, np.minimum(x2[i], x2[rest]) - np.maximum(x1[i], x1[rest]))
        h = np.maximum(0.0, np.minimum(y2[i], y2[rest]) - np.maximum(y1[i], y1[rest]))
        inter = w * h
        overlap = inter / np.maximum(area[i] + area[rest] - inter, 1e-9)
        order = rest[overlap <= iou]
    return np.asarray(keep, np.int64)


class _OnnxMobileNet:
    name = "retinaface_mobilenet0.25"

    def __init__(self, cfg: DetectorConfig):
        import onnxruntime as ort

        path = Path(cfg.weights) if cfg.weights else MOBILENET_ONNX
        if not path.is_file():
            raise DetectorWeightsError(f"{path}: RetinaFace MobileNet-0.25 ONNX weights not found (they ship in "
                                       f"the package's pipeline/weights/ folder; pass --detector-weights PATH)")
        opts = ort.SessionOptions()
        opts.intra_op_num_threads = cfg.threads
        opts.inter_op_num_threads = 1
        self.session = ort.InferenceSession(str(path), sess_options=opts, providers=["CPUExecutionProvider"])
        self.weights_path = path
        self.mean = np.array([104.0, 117.0, 127.0], np.float32)  # BGR order, as the exported graph expects

    def __call__(self, batch_rgb: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """batch_rgb (B, H, W, 3) uint8 -> loc (B, P, 4), face probability (B, P), kps (B, P, 10)."""
        # One C++ pass for RGB->BGR, mean subtraction and NCHW (numpy's three passes cost ~5 ms per 640x360
        # frame, half the network's own time on one core). With swapRB the mean is given in BGR order.
        x = cv2.dnn.blobFromImages(list(batch_rgb), 1.0, None, tuple(float(m) for m in self.mean), swapRB=True,
                                   crop=False)
        loc, conf, kps = self.session.run(["loc", "conf", "landmarks"], {"input": x})
        return loc, conf[..., 1], kps


class _TorchResNet50:
    name = "retinaface_resnet50"

    def __init__(self, cfg: DetectorConfig):
        import torch
        from retinaface.network import RetinaFace  # network definition only; decoding is ours

        self.torch = torch
        torch.set_num_threads(cfg.threads)
        self.device = torch.device(cfg.device)
        state, self.weights_path = _resnet50_state_dict(cfg.weights)  # first: a missing file fails fast
        with warnings.catch_warnings():
            # the package passes torchvision's deprecated `pretrained=False`; the weights come from `state`
            warnings.simplefilter("ignore", UserWarning)
            self.net = RetinaFace(name="Resnet50", pretrained=False, in_channels=256, out_channels=256,
                                  return_layers={"layer2": 1, "layer3": 2, "layer4": 3})
        self.net.load_state_dict(_resnet50_weights(state, self.weights_path, self.net.state_dict()))
        self.net.eval().to(self.device)
        self.mean = np.array([0.485, 0.456, 0.406], np.float32) * 255
        self.std = np.array([0.229, 0.224, 0.225], np.float32) * 255

    def __call__(self, batch_rgb: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        torch = self.torch
        x = (batch_rgb.astype(np.float32) - self.mean) / self.std
        with torch.inference_mode():
            t = torch.from_numpy(np.ascontiguousarray(x.transpose(0, 3, 1, 2))).to(self.device)
            loc, conf, kps = self.net(t)
            prob = torch.softmax(conf, dim=-1)[..., 1]
        return loc.cpu().numpy(), prob.cpu().numpy(), kps.cpu().numpy()


def _resnet50_state_dict(weights: str | None) -> tuple[dict, Path]:
    """Load the ResNet-50 RetinaFace state dict from ``weights`` or the published URL (cached by torch.hub)."""
    import torch

    if weights:
        path = Path(weights)
        if not path.is_file():
            raise DetectorWeightsError(f"{path}: RetinaFace ResNet-50 weights file not found")
        try:
            if path.suffix == ".zip":
                import zipfile

                with zipfile.ZipFile(path) as z:
                    member = next(n for n in z.namelist() if not n.endswith("/"))
                    cache = Path(torch.hub.get_dir()) / "checkpoints"
                    cache.mkdir(parents=True, exist_ok=True)
                    z.extract(member, cache)
                    path = cache / member
            return torch.load(path, map_location="cpu", weights_only=True), path
        except Exception as e:  # any unreadable file: one line naming it (re-raised)
            raise DetectorWeightsError(f"{path}: not a RetinaFace ResNet-50 weights file (.pth, or the published "
                                       f".zip holding one): {one_line(e, with_type=True)}") from e
    cache = Path(torch.hub.get_dir()) / "checkpoints"
    cached = cache / Path(RESNET50_URL).name
    try:
        state = torch.hub.load_state_dict_from_url(RESNET50_URL, map_location="cpu", progress=True,
                                                   weights_only=True)
    except (OSError, RuntimeError) as e:  # URLError is an OSError; offline machines land here
        raise DetectorWeightsError(
            f"RetinaFace ResNet-50 weights are not cached ({cached}) and could not be downloaded ({e}). "
            f"On a machine with internet, download {RESNET50_URL}, copy it here and pass "
            f"--detector-weights PATH (the .zip or the .pth inside it)") from e
    return state, cached


def _resnet50_weights(state, path: Path, expected: dict) -> dict:
    """``state`` (a loaded weights file) as the network's state dict; a file that is not one is one line naming it."""
    if not isinstance(state, dict) or not all(isinstance(k, str) for k in state):
        raise DetectorWeightsError(f"{path}: not a RetinaFace ResNet-50 state dict (found {type(state).__name__})")
    state = {k.removeprefix("module."): v for k, v in state.items()}
    missing, unexpected = sorted(set(expected) - set(state)), sorted(set(state) - set(expected))
    wrong = sorted(k for k in set(expected) & set(state)
                   if getattr(state[k], "shape", None) != expected[k].shape)
    if missing or unexpected or wrong:
        raise DetectorWeightsError(f"{path}: not RetinaFace ResNet-50 weights: {len(missing)} of its {len(expected)} "
                                   f"tensors missing (e.g. {missing[:2]}), {len(unexpected)} unexpected (e.g. "
                                   f"{unexpected[:2]}), {len(wrong)} of another shape")
    return state


class FaceDetector:
    """Batched RetinaFace: ``detect(frames)`` -> one ``Detections`` per frame.

    Build once per process (it loads the network); frames of one call may differ in size (they are run in
    batches of equal size). Results are always in the original frame's pixels.

    Detection resolution (chosen for the faces, not the frame): the levels of a frame are its size capped at
    ``max_side`` (the finest), then halved while the longer side stays >= ``min_side``. A frame is detected
    at the coarsest level first and moves finer until a level finds ``max_faces`` faces whose larger box side
    is at least ``face_px`` pixels at that level (a face found too small says how much finer to go, so levels
    in between are skipped); the finest level's result is taken as it is.
    So a talking head (a 300-px face in a 720p frame) is detected at the 320-px level, 75 px there, with 1/16
    of the pixels of a 1280 pass, while a small face (a crowd, a 60-px face in a large frame) or a frame
    without faces climbs to the finest level and is detected as a single pass at ``max_side`` would (at most
    ~1.33x its cost: each level has 1/4 of the pixels of the next). ``face_px=None`` is that single pass. With ``max_faces`` > 1 a frame with fewer
    faces also climbs to the finest level, so none of a crowd is lost to the coarse levels.
    """

    def __init__(self, cfg: DetectorConfig | None = None, **overrides):
        cfg = replace(cfg) if cfg is not None else DetectorConfig()  # a copy: defaults get resolved below
        for k, v in overrides.items():
            if not hasattr(cfg, k):
                raise TypeError(f"unknown detector option {k!r}")
            setattr(cfg, k, v)
        if cfg.backend not in BACKENDS:
            raise ValueError(f"unknown detector backend {cfg.backend!r}; expected one of {', '.join(BACKENDS)}")
        if cfg.keep not in ("score", "area"):
            raise ValueError(f"detector keep must be 'score' or 'area', got {cfg.keep!r}")
        if cfg.batch_size is None:
            # Measured on one CPU core (onnxruntime, one thread, 640x360 frames): 8.6 ms/frame one at a time,
            # 10-14 ms/frame in batches of 8 (cache pressure); batching pays off on a GPU.
            cfg.batch_size = 16 if str(cfg.device).startswith("cuda") else 1
        self.cfg = cfg
        self.net = _OnnxMobileNet(cfg) if cfg.backend == "mobilenet0.25" else _TorchResNet50(cfg)
        self.name = self.net.name
        self.weights_sha256 = file_sha256(self.net.weights_path)
        self._priors: dict[tuple[int, int], np.ndarray] = {}

    def _priors_for(self, h: int, w: int) -> np.ndarray:
        if (h, w) not in self._priors:
            self._priors[(h, w)] = prior_boxes(h, w)
        return self._priors[(h, w)]

    def levels(self, height: int, width: int) -> list[float]:
        """Detection scales (network input / frame pixels) of a ``height`` x ``width`` frame, coarsest first."""
        cfg = self.cfg
        long = max(height, width)
        top = min(1.0, cfg.max_side / long) if cfg.max_side else 1.0
        scales = [top]
        if cfg.face_px:
            while long * scales[-1] / 2 >= cfg.min_side:
                scales.append(scales[-1] / 2)
        return scales[::-1]

    def detect(self, frames: Sequence[np.ndarray]) -> list[Detections]:
        """Detect faces in RGB uint8 frames, each (H, W, 3). Returns one ``Detections`` per frame, in order."""
        out: list[Detections | None] = [None] * len(frames)
        by_shape: dict[tuple[int, ...], list[int]] = {}
        for i, f in enumerate(frames):
            if f.ndim != 3 or f.shape[2] != 3 or f.dtype != np.uint8:
                raise ValueError(f"frame {i}: expected (H, W, 3) uint8 RGB, got {f.shape} {f.dtype}")
            by_shape.setdefault(f.shape, []).append(i)
        for shape, ids in by_shape.items():
            h, w = shape[:2]
            scales = self.levels(h, w)
            queue: dict[int, list[int]] = {0: ids}  # level -> frames to detect there
            for level, scale in enumerate(scales):
                todo = queue.pop(level, [])
                for i, det in zip(todo, self._detect_at(frames, todo, h, w, scale)):
                    nxt = self._next_level(det, scales, level)
                    if nxt is None:
                        out[i] = det
                    else:
                        queue.setdefault(nxt, []).append(i)
        return out  # type: ignore[return-value]

    def _next_level(self, det: Detections, scales: list[float], level: int) -> int | None:
        """None when ``det`` (found at ``scales[level]``) is final: the finest level, or max_faces faces each
        >= face_px there. Otherwise the level to try next: the first at which the smallest face found would
        reach face_px (a face found gives its own scale), or simply the next one when fewer faces were found."""
        if level == len(scales) - 1:
            return None
        if len(det) == 0:
            return level + 1
        if len(det) < self.cfg.max_faces:
            return level + 1
        smallest = float(np.min(np.maximum(det.boxes[:, 2] - det.boxes[:, 0], det.boxes[:, 3] - det.boxes[:, 1])))
        if smallest * scales[level] >= self.cfg.face_px:
            return None
        return next((k for k in range(level + 1, len(scales)) if smallest * scales[k] >= self.cfg.face_px),
                    len(scales) - 1)

    def _detect_at(self, frames: Sequence[np.ndarray], ids: list[int], h: int, w: int, scale: float
                   ) -> list[Detections]:
        """Detections of frames ``ids`` (all h x w) run at ``scale``, mapped back to frame pixels."""
        nh, nw = max(1, round(h * scale)), max(1, round(w * scale))
        priors = self._priors_for(nh, nw)
        res = []
        for start in range(0, len(ids), self.cfg.batch_size):
            chunk = ids[start:start + self.cfg.batch_size]
            batch = np.stack([frames[i] if (nh, nw) == (h, w) else
                              cv2.resize(frames[i], (nw, nh), interpolation=cv2.INTER_AREA) for i in chunk])
            loc, prob, kps = self.net(batch)
            # boxes come out as fractions of the input, which covers the whole frame: scale by the frame's size
            res += [self._postprocess(loc[b], prob[b], kps[b], priors, w, h)
                    for b in range(len(chunk))]
        return res

    def _postprocess(self, loc, prob, kps, priors, width: float, height: float) -> Detections:
        cfg = self.cfg
        sel = np.flatnonzero(prob > cfg.score_threshold)
        if sel.size == 0:
            return Detections(np.zeros((0, 4), np.float32), np.zeros(0, np.float32), np.zeros((0, 5, 2), np.float32))
        boxes, kps5 = decode(loc[sel], kps[sel], priors[sel])
        scores = prob[sel]
        keep = nms(boxes, scores, cfg.nms_iou)
        boxes, kps5, scores = boxes[keep], kps5[keep], scores[keep]
        boxes = boxes * np.array([width, height, width, height], np.float32)
        kps5 = kps5 * np.array([width, height], np.float32)
        if cfg.keep == "area":
            order = np.argsort(-(boxes[:, 2] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 1]), kind="stable")
        else:
            order = np.arange(len(scores))  # nms already returns best score first
        order = order[:cfg.max_faces]
        return Detections(boxes[order].astype(np.float32), scores[order].astype(np.float32),
                          kps5[order].astype(np.float32))
