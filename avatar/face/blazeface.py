"""BlazeFace, MediaPipe's short-range face detector, run with LiteRT.

The model (``face_detection_short_range.tflite``, see :mod:`avatar.face.mediapipe_models`)
takes a 128x128 RGB image scaled to [-1, 1] and answers, for each of 896 fixed anchors, a
score logit and 16 numbers: the box (centre x, centre y, width, height) and six key
points (x, y), as offsets in input pixels from the anchor's centre. This module rebuilds
what MediaPipe's graph (``face_detection_short_range.pbtxt``) does around it:

* the anchors (:func:`anchors`): SSD anchors of two sizes of feature map, 16x16 with 2
  anchors per cell (stride 8) and 8x8 with 6 (three layers of stride 16), fixed size;
* the letterbox: the image is padded to a square (centred) before it is resized;
* decoding (:func:`decode`) and a weighted non-maximum suppression (:func:`suppress`,
  IoU 0.3: overlapping boxes are averaged with their scores as weights);
* scores are the logit's sigmoid; MediaPipe keeps detections from 0.5.

Key points, in this order (:data:`KEYPOINTS`): the subject's right eye (on the image's
left), left eye, nose tip, mouth centre, right ear tragion, left ear tragion.

The short-range model is made for faces that fill a good part of the frame (selfies,
a kiosk's camera). Smaller faces are found by ``upsample``: the image is also searched in
overlapping tiles of half (then a quarter of) its longer side.
"""

from __future__ import annotations

import contextlib
import os
import sys
import tempfile
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import cv2
import numpy as np

from avatar.types import Box

INPUT_SIZE = 128
KEYPOINTS = ("right_eye", "left_eye", "nose_tip", "mouth", "right_ear", "left_ear")
MIN_SCORE = 0.5
"""MediaPipe's ``min_score_thresh`` for this model."""
NMS_IOU = 0.3
"""MediaPipe's ``min_suppression_threshold``."""
_SCORE_CLIP = 100.0


@dataclass(frozen=True, slots=True, eq=False)
class FaceBox:
    """One face found by BlazeFace, in the pixels of the image searched.

    Attributes:
        box: axis-aligned box (x0, y0, x1, y1), continuous coordinates: pixel (i, j)
            covers [i, i + 1) x [j, j + 1).
        score: probability 0..1 (the sigmoid of the model's logit).
        keypoints: float32 (6, 2), in the order of :data:`KEYPOINTS`, same coordinates.
    """

    box: Box
    score: float
    keypoints: np.ndarray


def anchors() -> np.ndarray:
    """The 896 anchor centres of the short-range model, normalised to [0, 1].

    MediaPipe's ``SsdAnchorsCalculator`` with ``num_layers: 4``, ``strides: [8, 16, 16,
    16]``, one aspect ratio plus one interpolated scale per layer and
    ``fixed_anchor_size: true`` (every anchor is 1 x 1): the order is row by row, cell by
    cell, anchor by anchor.

    Returns:
        float32 (896, 2) of (x, y).
    """
    out = []
    for stride, per_cell in ((8, 2), (16, 6)):
        cells = INPUT_SIZE // stride
        ys, xs = np.mgrid[0:cells, 0:cells]
        centres = np.stack([(xs + 0.5) / cells, (ys + 0.5) / cells], axis=-1).reshape(-1, 2)
        out.append(np.repeat(centres, per_cell, axis=0))
    return np.concatenate(out).astype(np.float32)


_ANCHORS = anchors()


def decode(
    regressors: np.ndarray, logits: np.ndarray, min_score: float = MIN_SCORE
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Turn the model's raw outputs into boxes, scores and key points (normalised input
    coordinates, 0..1 across the 128x128 input).

    Args:
        regressors: (896, 16) raw box and key point offsets.
        logits: (896,) raw scores.
        min_score: drop anchors whose probability is below this.

    Returns:
        boxes (N, 4) as (x0, y0, x1, y1), scores (N,), keypoints (N, 6, 2); float32.
    """
    clipped = np.clip(logits.astype(np.float64), -_SCORE_CLIP, _SCORE_CLIP)
    scores = 1.0 / (1.0 + np.exp(-clipped))
    keep = scores >= min_score
    raw = regressors[keep] / INPUT_SIZE
    centre = _ANCHORS[keep]
    mid = raw[:, 0:2] + centre
    half = raw[:, 2:4] / 2
    boxes = np.concatenate([mid - half, mid + half], axis=1)
    keypoints = raw[:, 4:16].reshape(-1, 6, 2) + centre[:, None, :]
    return boxes.astype(np.float32), scores[keep].astype(np.float32), keypoints.astype(np.float32)


def iou(box: np.ndarray, others: np.ndarray) -> np.ndarray:
    """Intersection over union of one (4,) box with each of (N, 4) boxes (x0, y0, x1, y1)."""
    lo = np.maximum(box[:2], others[:, :2])
    hi = np.minimum(box[2:], others[:, 2:])
    inter = np.prod(np.clip(hi - lo, 0, None), axis=1)
    area = np.prod(box[2:] - box[:2])
    areas = np.prod(others[:, 2:] - others[:, :2], axis=1)
    return inter / np.maximum(area + areas - inter, 1e-12)


def suppress(
    boxes: np.ndarray,
    scores: np.ndarray,
    keypoints: np.ndarray,
    threshold: float = NMS_IOU,
    weighted: bool = True,
) -> list[tuple[np.ndarray, float, np.ndarray]]:
    """Non-maximum suppression, weighted (MediaPipe's ``WEIGHTED``) or plain.

    The best remaining box takes every remaining box that overlaps it by more than
    ``threshold`` IoU (itself included); weighted, the kept box and key points are those
    boxes' score-weighted mean, plain, the best one's. The score is the best one's.

    Args:
        boxes: (N, 4) boxes (x0, y0, x1, y1).
        scores: (N,) scores.
        keypoints: (N, K, 2) key points.
        threshold: IoU above which two boxes are the same face.
        weighted: average the overlapping boxes (True) or keep the best (False).

    Returns:
        (box (4,), score, keypoints (K, 2)) per face, best first.
    """
    order = np.argsort(-scores, kind="stable")
    out = []
    while order.size:
        best = order[0]
        overlap = iou(boxes[best], boxes[order]) > threshold
        overlap[0] = True
        group = order[overlap]
        if weighted:
            w = scores[group] / scores[group].sum()
            box = (boxes[group] * w[:, None]).sum(axis=0)
            points = (keypoints[group] * w[:, None, None]).sum(axis=0)
        else:
            box, points = boxes[best], keypoints[best]
        out.append((box.astype(np.float32), float(scores[best]), points.astype(np.float32)))
        order = order[~overlap]
    return out


class BlazeFace:
    """The short-range BlazeFace detector. Build it with :meth:`load`.

    Safe to share between threads (one LiteRT interpreter behind a lock).

    Args:
        interpreter: an ``ai_edge_litert.interpreter.Interpreter`` with the model loaded
            and its tensors allocated.
        weighted_nms: average overlapping detections (MediaPipe's choice) or keep the best.
    """

    def __init__(self, interpreter: Any, weighted_nms: bool = True) -> None:
        self._interpreter = interpreter
        self._input = interpreter.get_input_details()[0]["index"]
        outputs = {d["name"]: d["index"] for d in interpreter.get_output_details()}
        self._regressors = outputs["regressors"]
        self._classificators = outputs["classificators"]
        self._weighted = weighted_nms
        self._lock = threading.Lock()
        self.runs = 0
        """How many times the network has run (each tile counts); for tests and metrics."""

    @classmethod
    def load(cls, model: Path, num_threads: int = 1) -> BlazeFace:
        """Load the model file (a few ms; blocking).

        Args:
            model: ``face_detection_short_range.tflite``, found by
                :func:`avatar.face.mediapipe_models.model_file`.
            num_threads: LiteRT's CPU threads.
        """
        return cls(load_interpreter(model, num_threads))

    def detect(self, image: np.ndarray, upsample: int = 0) -> list[FaceBox]:
        """Find faces in a uint8 RGB image.

        Args:
            image: uint8 RGB (H, W, 3).
            upsample: 0 searches the whole image once; each step more also searches
                overlapping tiles half as large (faces half as small); 1 costs about 10
                runs of the network, 2 about 60.

        Returns:
            Faces scoring at least :data:`MIN_SCORE`, best first, in ``image``'s pixels.
        """
        height, width = image.shape[:2]
        side = max(height, width)
        boxes, scores, points = [], [], []
        for level in range(upsample + 1):
            tile = max(1, round(side / 2**level))
            for x0, y0 in _tiles(width, height, tile):
                found = self._run(image, x0, y0, tile)
                if level > 0:
                    # A tile sees parts of larger faces: keep only the faces it is for.
                    small = (found[0][:, 2:] - found[0][:, :2]).max(axis=1) < 0.5 * tile
                    found = tuple(part[small] for part in found)
                boxes.append(found[0])
                scores.append(found[1])
                points.append(found[2])
        merged = suppress(
            np.concatenate(boxes),
            np.concatenate(scores),
            np.concatenate(points),
            weighted=self._weighted,
        )
        out = []
        for box, score, keypoints in merged:
            x0, y0 = max(float(box[0]), 0.0), max(float(box[1]), 0.0)
            x1, y1 = min(float(box[2]), float(width)), min(float(box[3]), float(height))
            if x1 - x0 < 1 or y1 - y0 < 1:
                continue
            out.append(FaceBox(Box(x0, y0, x1, y1), score, keypoints))
        return out

    def _run(
        self, image: np.ndarray, x0: int, y0: int, side: int
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Run the network on the square (x0, y0, side) of ``image`` (black outside it);
        boxes and key points come back in ``image``'s pixels."""
        square = _square(image, x0, y0, side)
        interp = cv2.INTER_AREA if side > INPUT_SIZE else cv2.INTER_LINEAR
        small = cv2.resize(square, (INPUT_SIZE, INPUT_SIZE), interpolation=interp)
        tensor = (small.astype(np.float32) / 127.5 - 1.0)[None]
        with self._lock:
            self._interpreter.set_tensor(self._input, tensor)
            self._interpreter.invoke()
            regressors = self._interpreter.get_tensor(self._regressors)[0]
            logits = self._interpreter.get_tensor(self._classificators)[0, :, 0]
            self.runs += 1
        boxes, scores, points = decode(regressors, logits)
        boxes = boxes * side + np.float32([x0, y0, x0, y0])
        points = points * side + np.float32([x0, y0])
        return boxes, scores, points


def load_interpreter(model: Path, num_threads: int = 1) -> Any:
    """A LiteRT interpreter for ``model`` with its tensors allocated.

    Raises:
        ModelNotFoundError: ``ai-edge-litert`` is not installed (the message says how).
    """
    try:
        from ai_edge_litert.interpreter import Interpreter
    except ImportError as err:
        from avatar.errors import ModelNotFoundError

        raise ModelNotFoundError(
            "ai-edge-litert is not installed: pip install ai-edge-litert==2.3.0"
        ) from err
    interpreter = Interpreter(model_path=str(model), num_threads=num_threads)
    with _native_info_dropped():
        interpreter.allocate_tensors()
    return interpreter


@contextlib.contextmanager
def _native_info_dropped() -> Iterator[None]:
    """Drop the native runtime's "INFO:" lines written to file descriptor 2 in the block;
    pass its other lines (warnings, errors) on to ``sys.stderr``.

    LiteRT's first allocation in a process writes "INFO: Created TensorFlow Lite XNNPACK
    delegate for CPU." straight to the descriptor; with the mediapipe backend every
    ``likeness`` command printed it, and an error then took two lines instead of one.
    """
    sys.stderr.flush()
    saved = os.dup(2)
    with tempfile.TemporaryFile() as caught:
        os.dup2(caught.fileno(), 2)
        try:
            yield
        finally:
            os.dup2(saved, 2)
            os.close(saved)
            caught.seek(0)
            text = caught.read().decode("utf-8", "replace")
            kept = [line for line in text.splitlines(keepends=True) if not line.startswith("INFO:")]
            if kept:
                sys.stderr.write("".join(kept))


def _tiles(width: int, height: int, tile: int) -> list[tuple[int, int]]:
    """Top-left corners of square tiles of side ``tile`` covering the image with half a
    tile of overlap; along a side shorter than a tile, one tile centred on it."""

    def starts(length: int) -> list[int]:
        if tile >= length:
            return [(length - tile) // 2]
        count = int(np.ceil((length - tile) / (tile / 2))) + 1
        return [round(v) for v in np.linspace(0.0, length - tile, count)]

    return [(x, y) for y in starts(height) for x in starts(width)]


def _square(image: np.ndarray, x0: int, y0: int, side: int) -> np.ndarray:
    """The square of ``image`` at (x0, y0), ``side`` pixels, black where it leaves the image."""
    height, width = image.shape[:2]
    if x0 >= 0 and y0 >= 0 and x0 + side <= width and y0 + side <= height:
        return image[y0 : y0 + side, x0 : x0 + side]
    out = np.zeros((side, side, 3), np.uint8)
    sx0, sy0 = max(x0, 0), max(y0, 0)
    sx1, sy1 = min(x0 + side, width), min(y0 + side, height)
    out[sy0 - y0 : sy1 - y0, sx0 - x0 : sx1 - x0] = image[sy0:sy1, sx0:sx1]
    return out
