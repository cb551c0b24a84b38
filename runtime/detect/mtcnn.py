"""MTCNN face detection with five landmarks, in numpy + OpenCV + onnxruntime (no torch).

The cascade follows facenet-pytorch's ``detect_face`` (whose weights we run, converted to ONNX by
``edgecloak.export.convert.mtcnn``): an image pyramid through PNet proposes 12 x 12 windows,
non-maximum suppression (NMS) and box regression refine them, RNet (24 x 24 crops) rejects most,
ONet (48 x 48 crops) scores the rest and places the landmarks. Preprocessing is facenet-pytorch's:
RGB, not transposed, ``(x - 127.5) / 128``, area resampling; its box and landmark coordinate
conventions are kept, so numbers are comparable with its ``MTCNN.detect``.

Where we differ, and why:

- Speed on small CPUs: PNet and RNet run on a copy downscaled so its longest side is at most
  ``max_side`` (default 1024). In that copy faces are searched down to
  ``max(min_face_size * s, 12)`` pixels (``s`` the downscale factor, 12 PNet's window), so the
  smallest face found in the photo is ``max(min_face_size, 12 / s)`` pixels: 20 px up to a
  1707 px photo, 47 px on a 4000 px one. ONet then runs on crops of the FULL-resolution photo,
  so boxes and landmarks keep full precision. ``max_side=None`` disables the downscale.
- Faces at the photo edge: like facenet-pytorch, a box that sticks out of the photo is clipped
  and its crop stretched to a square. (Zero-padding, as the original MTCNN does, changes which
  edge faces are found -- on our photo set it lost a half-visible face at the left edge -- so we
  keep facenet-pytorch's choice.) But facenet-pytorch then maps ONet's landmarks through the
  unclipped box, which misplaces them by up to the clipped fraction (15-20 % of the face width
  for a face cut at 15 %); here they go through the part of the box the crop really shows
  (about 2 %).

Resampling is torch's ``interpolate(mode="area")`` (adaptive average pooling) reproduced exactly
with summed-area tables; OpenCV's INTER_AREA differs on fractional ratios, and that was enough to
lose a borderline face. Box arithmetic is float32 like torch's. With ``max_side=None``, on the
118 identity photos and t1.jpg (136 faces), boxes agree with facenet-pytorch's ``detect_face``
(run on our torch modules) to 1e-3 px and scores to 1e-6; landmarks agree except on edge faces.

Example:
    >>> from pathlib import Path
    >>> from edgecloak.runtime.detect.mtcnn import MTCNNDetector
    >>> from edgecloak.runtime.image_io import load_image
    >>> detector = MTCNNDetector.from_dir(Path("models/mtcnn"))  # doctest: +SKIP
    >>> faces = detector.detect(load_image("group.jpg"))  # doctest: +SKIP
    >>> faces[0].landmarks.shape, faces[0].score > 0.9  # doctest: +SKIP
    ((5, 2), True)
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Sequence

import cv2
import numpy as np
import onnxruntime as ort

from edgecloak.errors import ModelError, NoFaceError
from edgecloak.runtime.parallel import cpu_threads

_PNET_CELL = 12
_PNET_STRIDE = 2
_BATCH = 256  # R/O-Net crops per ORT call: bounds memory on photos with thousands of proposals


@dataclass(frozen=True, eq=False)
class DetectedFace:
    """One face: box, confidence and five landmarks, in the photo's pixel coordinates.

    ``box`` is (x1, y1, x2, y2) float64, ``score`` ONet's face probability, ``landmarks`` a (5, 2)
    float64 array of (x, y): left eye, right eye, nose, left mouth corner, right mouth corner,
    "left" as seen in the image. The arrays are read-only.

    Example:
        >>> face = DetectedFace(np.array([10.0, 20, 110, 140]), 0.99, np.zeros((5, 2)))
        >>> face.width, face.height
        (100.0, 120.0)
    """

    box: np.ndarray
    score: float
    landmarks: np.ndarray = field(repr=False)

    def __post_init__(self) -> None:
        box = np.array(self.box, dtype=np.float64).reshape(4)
        landmarks = np.array(self.landmarks, dtype=np.float64).reshape(5, 2)
        box.setflags(write=False)
        landmarks.setflags(write=False)
        object.__setattr__(self, "box", box)
        object.__setattr__(self, "landmarks", landmarks)
        object.__setattr__(self, "score", float(self.score))

    @property
    def width(self) -> float:
        return float(self.box[2] - self.box[0])

    @property
    def height(self) -> float:
        return float(self.box[3] - self.box[1])


class MTCNNDetector:
    """MTCNN over three ONNX graphs (``pnet.onnx``, ``rnet.onnx``, ``onet.onnx``).

    Args:
        pnet, rnet, onet: paths to the graphs written by ``edgecloak.export.convert.mtcnn``.
        min_face_size: smallest face searched, in photo pixels (see the module notes for how the
            detection downscale raises it on large photos).
        thresholds: face-probability cut-offs for PNet, RNet, ONet.
        factor: pyramid step between scales (facenet-pytorch: 0.709, about 1/sqrt(2)).
        max_side: longest side of the copy PNet/RNet see; None to search at full resolution.
        providers: onnxruntime execution providers (default CPU).
        session_options: onnxruntime session options (default: ``default_session_options()``).

    Example:
        >>> det = MTCNNDetector("pnet.onnx", "rnet.onnx", "onet.onnx", min_face_size=40)  # doctest: +SKIP
        >>> [round(f.score, 3) for f in det.detect(rgb)]  # doctest: +SKIP
        [0.999]
    """

    def __init__(
        self,
        pnet: str | os.PathLike[str],
        rnet: str | os.PathLike[str],
        onet: str | os.PathLike[str],
        min_face_size: float = 20,
        thresholds: tuple[float, float, float] = (0.6, 0.7, 0.7),
        factor: float = 0.709,
        max_side: int | None = 1024,
        providers: Sequence[str | tuple[str, dict]] | None = None,
        session_options: ort.SessionOptions | None = None,
    ) -> None:
        if min_face_size < _PNET_CELL:
            raise ValueError(f"min_face_size must be >= {_PNET_CELL} pixels, got {min_face_size}")
        if not 0 < factor < 1:
            raise ValueError(f"factor must be in (0, 1), got {factor}")
        if max_side is not None and max_side < 4 * _PNET_CELL:
            raise ValueError(f"max_side must be None or >= {4 * _PNET_CELL}, got {max_side}")
        self.min_face_size = float(min_face_size)
        self.thresholds = tuple(float(t) for t in thresholds)
        self.factor = float(factor)
        self.max_side = max_side
        providers = list(providers) if providers is not None else ["CPUExecutionProvider"]
        if session_options is None:
            session_options = default_session_options()
        self._pnet = _session(pnet, providers, session_options)
        self._rnet = _session(rnet, providers, session_options)
        self._onet = _session(onet, providers, session_options)

    @classmethod
    def from_dir(cls, directory: str | os.PathLike[str], **kwargs: object) -> "MTCNNDetector":
        """Load ``pnet.onnx``, ``rnet.onnx`` and ``onet.onnx`` from one folder.

        Example:
            >>> det = MTCNNDetector.from_dir("~/.cache/edgecloak/models/mtcnn", max_side=1600)  # doctest: +SKIP
        """
        directory = Path(directory).expanduser()
        paths = [directory / f"{name}.onnx" for name in ("pnet", "rnet", "onet")]
        return cls(*paths, **kwargs)  # type: ignore[arg-type]

    def largest_face(self, rgb: np.ndarray, source: str = "image") -> DetectedFace:
        """The face with the largest box (the photo's subject); ``NoFaceError(source)`` if none.

        Example:
            >>> face = detector.largest_face(load_image("me.jpg"), "me.jpg")  # doctest: +SKIP
        """
        found = self.detect(rgb)
        if not found:
            raise NoFaceError(source)
        return max(found, key=lambda f: float((f.box[2] - f.box[0]) * (f.box[3] - f.box[1])))

    def detect(self, rgb: np.ndarray) -> list[DetectedFace]:
        """All faces in an H x W x 3 uint8 RGB photo, highest score first (ties: left to right).

        Example:
            >>> faces = detector.detect(load_image("photo.jpg"))  # doctest: +SKIP
        """
        if not (isinstance(rgb, np.ndarray) and rgb.dtype == np.uint8 and rgb.ndim == 3 and rgb.shape[2] == 3):
            raise ValueError(f"expected an H x W x 3 uint8 RGB array, got {getattr(rgb, 'dtype', type(rgb))} {getattr(rgb, 'shape', '')}")
        height, width = rgb.shape[:2]
        if min(height, width) < _PNET_CELL:
            return []
        small, s = self._detection_copy(rgb)
        min_face = max(self.min_face_size * s, float(_PNET_CELL))

        boxes = self._stage_pnet(small, min_face)
        if len(boxes):
            boxes = self._stage_rnet(small, boxes)
        if len(boxes) and s != 1.0:
            boxes = _rescale_boxes(boxes, 1.0 / s)
        if not len(boxes):
            return []
        boxes, points = self._stage_onet(rgb, boxes)

        order = np.lexsort((boxes[:, 1], boxes[:, 0], -boxes[:, 4]))  # score desc, then x, then y
        return [DetectedFace(boxes[i, :4], boxes[i, 4], points[i]) for i in order]

    # -- stages ---------------------------------------------------------------------------------

    def _detection_copy(self, rgb: np.ndarray) -> tuple[np.ndarray, float]:
        longest = max(rgb.shape[:2])
        if self.max_side is None or longest <= self.max_side:
            return rgb, 1.0
        s = self.max_side / longest
        size = (max(1, round(rgb.shape[1] * s)), max(1, round(rgb.shape[0] * s)))
        small = cv2.resize(rgb, size, interpolation=cv2.INTER_AREA)
        # The exact per-axis ratio differs from s by rounding; use the mean, the error is < 1 px.
        s = 0.5 * (small.shape[1] / rgb.shape[1] + small.shape[0] / rgb.shape[0])
        return small, s

    def _stage_pnet(self, image: np.ndarray, min_face: float) -> np.ndarray:
        """Proposals (n, 5) [x1, y1, x2, y2, score], regressed and squared."""
        height, width = image.shape[:2]
        m = _PNET_CELL / min_face
        scales = []
        min_side = min(height, width) * m
        scale = m
        while min_side >= _PNET_CELL:
            scales.append(scale)
            scale *= self.factor
            min_side *= self.factor

        integral = _integral(image)  # one summed-area table serves every pyramid level
        per_scale = []
        for scale in scales:
            resized = _area_resize(integral, int(height * scale + 1), int(width * scale + 1))
            reg, prob = self._pnet.run(None, {"input": _normalise(resized[None])})
            cand = _generate_boxes(reg[0], prob[0, 1], scale, self.thresholds[0])
            if len(cand):
                per_scale.append(cand[_nms(cand[:, :4], cand[:, 4], 0.5)])
        if not per_scale:
            return np.zeros((0, 5))
        boxes = np.concatenate(per_scale)
        boxes = boxes[_nms(boxes[:, :4], boxes[:, 4], 0.7)]
        # PNet's regression is relative to the window size without facenet-pytorch's usual +1.
        w = boxes[:, 2] - boxes[:, 0]
        h = boxes[:, 3] - boxes[:, 1]
        regressed = boxes[:, :4] + boxes[:, 5:9] * np.stack([w, h, w, h], axis=1)
        return _square(np.concatenate([regressed, boxes[:, 4:5]], axis=1))

    def _stage_rnet(self, image: np.ndarray, boxes: np.ndarray) -> np.ndarray:
        crops, _ = _crop_batch(image, boxes, 24)
        reg, prob = _run_batched(self._rnet, crops)
        keep = prob[:, 1] > self.thresholds[1]
        boxes = np.concatenate([boxes[keep, :4], prob[keep, 1:2]], axis=1)
        reg = reg[keep]
        pick = _nms(boxes[:, :4], boxes[:, 4], 0.7)
        return _square(_regress(boxes[pick], reg[pick]))

    def _stage_onet(self, image: np.ndarray, boxes: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        crops, frames = _crop_batch(image, boxes, 48)
        reg, marks, prob = _run_batched(self._onet, crops)
        keep = prob[:, 1] > self.thresholds[2]
        boxes = np.concatenate([boxes[keep, :4], prob[keep, 1:2]], axis=1)
        reg, marks, frames = reg[keep], marks[keep], frames[keep]
        w = boxes[:, 2] - boxes[:, 0] + 1
        h = boxes[:, 3] - boxes[:, 1] + 1
        # facenet-pytorch: x = x1 - 1 + w * mark. Through the crop's frame, so that faces at the
        # photo edge (clipped, stretched crops) get their landmarks where ONet saw them.
        xs = boxes[:, 0:1] - 1 + w[:, None] * (frames[:, 0:1] + marks[:, :5] * frames[:, 2:3])
        ys = boxes[:, 1:2] - 1 + h[:, None] * (frames[:, 1:2] + marks[:, 5:] * frames[:, 3:4])
        points = np.stack([xs, ys], axis=2)  # (n, 5, 2)
        boxes = _regress(boxes, reg)
        pick = _nms(boxes[:, :4], boxes[:, 4], 0.7, method="min", plus_one=True)
        return boxes[pick], points[pick]


def default_session_options() -> ort.SessionOptions:
    """ORT's default thread count, with intra-op spin-waiting off.

    MTCNN makes many small calls (a dozen pyramid levels, R/O-Net batches of a few crops). With
    spinning on, idle worker threads busy-wait between them and fight whatever else runs: on a
    loaded 2-core machine, detection on small photos took 0.26 s each with spinning and 0.07 s
    without. Large photos still get both cores for PNet's big maps.

    Example:
        >>> default_session_options().intra_op_num_threads
        0
    """
    options = ort.SessionOptions()
    options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    if os.environ.get("EDGECLOAK_THREADS"):  # a multi-worker run gave each worker its share
        options.intra_op_num_threads = cpu_threads()
    return options


# -- helpers (facenet-pytorch's conventions: boxes are 1-based inclusive pixel ranges) -------------


def _session(path: str | os.PathLike[str], providers: list, options: ort.SessionOptions | None) -> ort.InferenceSession:
    path = Path(path)
    if not path.is_file():
        raise ModelError(f"{path}: MTCNN graph missing; run the model conversion (edgecloak.export.convert.mtcnn) first")
    try:
        return ort.InferenceSession(str(path), sess_options=options, providers=providers)
    except Exception as exc:  # ORT raises its own exception types
        raise ModelError(f"{path}: onnxruntime cannot load this graph ({str(exc).splitlines()[0]}); re-convert it") from exc


def _normalise(batch_nhwc: np.ndarray) -> np.ndarray:
    """N x H x W x 3 pixel values (0..255) -> float32 N x 3 x H x W in facenet-pytorch's (x - 127.5) / 128."""
    x = (batch_nhwc.astype(np.float32) - 127.5) * 0.0078125
    return np.ascontiguousarray(x.transpose(0, 3, 1, 2))


def _integral(image: np.ndarray) -> np.ndarray:
    """Summed-area table, (H + 1) x (W + 1) x C float64, zero first row and column (exact for uint8)."""
    height, width, channels = image.shape
    table = np.zeros((height + 1, width + 1, channels), dtype=np.float64)
    np.cumsum(image, axis=0, dtype=np.float64, out=table[1:, 1:])
    np.cumsum(table[1:, 1:], axis=1, out=table[1:, 1:])
    return table


def _area_bins(n_in: int, n_out: int) -> tuple[np.ndarray, np.ndarray]:
    """torch's adaptive-pooling windows: [floor(i * n_in / n_out), ceil((i + 1) * n_in / n_out))."""
    i = np.arange(n_out, dtype=np.int64)
    return (i * n_in) // n_out, -((-(i + 1) * n_in) // n_out)


def _area_resize(integral: np.ndarray, out_h: int, out_w: int) -> np.ndarray:
    """Resample to out_h x out_w exactly as torch ``interpolate(mode="area")`` (adaptive average
    pooling) does, from a summed-area table; float32, not rounded (facenet-pytorch feeds floats).

    OpenCV's INTER_AREA weighs fractional pixels and bilinear-upsamples instead, which moves
    borderline faces across the thresholds; matching torch keeps facenet-pytorch's detections.
    """
    ys, ye = _area_bins(integral.shape[0] - 1, out_h)
    xs, xe = _area_bins(integral.shape[1] - 1, out_w)
    top, bottom = integral[ys], integral[ye]
    sums = bottom[:, xe] - bottom[:, xs] - top[:, xe] + top[:, xs]
    area = ((ye - ys)[:, None] * (xe - xs)[None, :]).astype(np.float64)
    return (sums / area[:, :, None]).astype(np.float32)


def _generate_boxes(reg: np.ndarray, prob: np.ndarray, scale: float, threshold: float) -> np.ndarray:
    """PNet output map -> (n, 9) [x1, y1, x2, y2, score, dx1, dy1, dx2, dy2] in image pixels."""
    ys, xs = np.nonzero(prob >= threshold)
    if len(ys) == 0:
        return np.zeros((0, 9))
    # float32 on purpose, as in facenet-pytorch: boxes are later truncated to whole pixels, and
    # float64 rounding flips some of them, moving a small face's box by a pixel.
    cells = np.stack([xs, ys], axis=1).astype(np.float32)
    q1 = np.floor((_PNET_STRIDE * cells + 1) / scale)
    q2 = np.floor((_PNET_STRIDE * cells + _PNET_CELL) / scale)
    return np.concatenate([q1, q2, prob[ys, xs][:, None], reg[:, ys, xs].T], axis=1).astype(np.float32)


def _nms(boxes: np.ndarray, scores: np.ndarray, threshold: float, method: str = "union", plus_one: bool = False) -> np.ndarray:
    """Indices kept by greedy NMS, best score first (stable on ties, so results are deterministic).

    ``union`` is IoU; ``min`` divides the overlap by the smaller box (ONet's final pass).
    ``plus_one`` counts boxes as inclusive pixel ranges, as facenet-pytorch's numpy NMS does;
    its torchvision NMS (first two stages) does not.
    """
    if len(boxes) == 0:
        return np.zeros(0, dtype=np.int64)
    one = 1.0 if plus_one else 0.0
    x1, y1, x2, y2 = (boxes[:, i] for i in range(4))
    area = np.maximum(x2 - x1 + one, 0) * np.maximum(y2 - y1 + one, 0)
    order = np.argsort(-scores, kind="stable")
    keep = []
    while order.size:
        i = order[0]
        keep.append(i)
        rest = order[1:]
        w = np.maximum(0.0, np.minimum(x2[i], x2[rest]) - np.maximum(x1[i], x1[rest]) + one)
        h = np.maximum(0.0, np.minimum(y2[i], y2[rest]) - np.maximum(y1[i], y1[rest]) + one)
        inter = w * h
        if method == "min":
            overlap = inter / np.maximum(np.minimum(area[i], area[rest]), 1e-12)
        else:
            overlap = inter / np.maximum(area[i] + area[rest] - inter, 1e-12)
        order = rest[overlap <= threshold]
    return np.asarray(keep, dtype=np.int64)


def _regress(boxes: np.ndarray, reg: np.ndarray) -> np.ndarray:
    """Apply R/O-Net box regression (offsets relative to the inclusive box size)."""
    out = boxes.copy()
    w = boxes[:, 2] - boxes[:, 0] + 1
    h = boxes[:, 3] - boxes[:, 1] + 1
    out[:, :4] = boxes[:, :4] + reg[:, :4] * np.stack([w, h, w, h], axis=1)
    return out


def _square(boxes: np.ndarray) -> np.ndarray:
    """Grow each box to a square around its centre (facenet-pytorch's ``rerec``)."""
    out = boxes.copy()
    w = boxes[:, 2] - boxes[:, 0]
    h = boxes[:, 3] - boxes[:, 1]
    side = np.maximum(w, h)
    out[:, 0] = boxes[:, 0] + 0.5 * (w - side)
    out[:, 1] = boxes[:, 1] + 0.5 * (h - side)
    out[:, 2] = out[:, 0] + side
    out[:, 3] = out[:, 1] + side
    return out


def _rescale_boxes(boxes: np.ndarray, k: float) -> np.ndarray:
    """Map boxes from the detection copy to the photo: the covered span [x1 - 1, x2] scales by k."""
    out = boxes.copy()
    out[:, 0:2] = (boxes[:, 0:2] - 1) * k + 1
    out[:, 2:4] = boxes[:, 2:4] * k
    return out


def _crop_batch(image: np.ndarray, boxes: np.ndarray, size: int) -> tuple[np.ndarray, np.ndarray]:
    """Crop each box (clipped to the photo, as facenet-pytorch does) and area-resize it to ``size``.

    Returns the crops (N x size x size x 3 float32) and, per crop, the part of its box it shows as
    fractions (x0, y0, width, height) of the box: (0, 0, 1, 1) unless the box sticks out of the
    photo. The nets see clipped crops stretched to a square, so their landmark outputs are
    fractions of that clipped part; ``_stage_onet`` maps them back through these fractions.
    """
    height, width = image.shape[:2]
    # facenet-pytorch: truncate, then take rows y1-1 .. y2-1 (1-based inclusive -> 0-based).
    coords = np.trunc(boxes[:, :4]).astype(np.int64)
    crops = np.zeros((len(boxes), size, size, 3), dtype=np.float32)
    frames = np.tile(np.array([0.0, 0.0, 1.0, 1.0]), (len(boxes), 1))
    for k, (x1, y1, x2, y2) in enumerate(coords):
        x0, y0 = x1 - 1, y1 - 1
        cw, ch = max(x2 - x0, 1), max(y2 - y0, 1)
        sx0, sy0, sx1, sy1 = max(x0, 0), max(y0, 0), min(x2, width), min(y2, height)
        if sx1 <= sx0 or sy1 <= sy0:
            continue  # the box lies outside the photo: an all-black crop, which the nets reject
        crops[k] = _area_resize(_integral(image[sy0:sy1, sx0:sx1]), size, size)
        frames[k] = ((sx0 - x0) / cw, (sy0 - y0) / ch, (sx1 - sx0) / cw, (sy1 - sy0) / ch)
    return crops, frames


def _run_batched(session: ort.InferenceSession, crops: np.ndarray) -> list[np.ndarray]:
    parts = [session.run(None, {"input": _normalise(crops[i : i + _BATCH])}) for i in range(0, len(crops), _BATCH)]
    return [np.concatenate([p[j] for p in parts]) for j in range(len(parts[0]))]
