"""A benchmark of face tracking in video: landmarks and head pose per frame, each backend.

The video is the astronaut photo (scikit-image's, 512x512, face about 91 px wide) moving
slowly: up to 12 px sideways, 6 px up and down and 4 degrees of in-plane rotation, so
a tracker must follow it. Frames are made before each one is timed; only the face work
is timed:

* "mediapipe": :class:`~avatar.face.mediapipe_backend.MeshTracker` (the mesh on the crop
  the previous frame's mesh gives; BlazeFace only on the first frame and when the face
  is lost), then :func:`~avatar.face.mesh_pose.mesh_head_pose`;
* "dlib": the HOG detector on the first frame only, then the 68-point shape predictor in
  a box that follows the previous frame's landmarks, then
  :func:`~avatar.face.pose.head_pose` (how the consent checks follow a face).

It does not pin itself to a core: run it under ``taskset -c 0`` (the CLI, ``likeness
bench face``, pins itself) so that one thread means one core. LiteRT runs one thread,
OpenCV is set to one.
"""

from __future__ import annotations

import math
import statistics
import time
from collections.abc import Callable, Iterator, Sequence

import cv2
import numpy as np

from avatar.types import Box

BENCH_BACKENDS = ("dlib", "mediapipe")


def moving_frames(image: np.ndarray, count: int) -> Iterator[np.ndarray]:
    """``count`` frames of ``image`` moved slowly about its centre (see the module doc)."""
    height, width = image.shape[:2]
    centre = (width / 2, height / 2)
    for t in range(count):
        phase = 2 * math.pi * t / 100
        matrix = cv2.getRotationMatrix2D(centre, 4.0 * math.sin(phase), 1.0)
        matrix[:, 2] += (12.0 * math.sin(phase), 6.0 * math.sin(2 * phase))
        yield cv2.warpAffine(image, matrix, (width, height), borderMode=cv2.BORDER_REFLECT)


def bench_face_tracking(
    backends: Sequence[str] = BENCH_BACKENDS, frames: int = 300, image: np.ndarray | None = None
) -> dict:
    """Time landmarks + head pose per tracked frame on each backend (blocking).

    Args:
        backends: names from :data:`BENCH_BACKENDS`.
        frames: video frames per backend (the first, with detection, is timed apart).
        image: the picture to move; None uses the astronaut (512x512).

    Returns:
        ``{"metrics": {...}, "per_backend": {name: {...}}}``; per backend: frame_ms_mean,
        frame_ms_p50, frame_ms_p95 (tracked frames: landmarks and pose), landmarks_ms and
        pose_ms (means), first_frame_ms (detection included), detections (detector runs).
        ``metrics`` holds the same figures flattened as ``<backend>_<figure>``.

    Raises:
        ValueError: an unknown backend name, or fewer than 2 frames.
        ModelNotFoundError: a backend's models are missing (the message says how to get
            them).
        RuntimeError: a backend lost the face (nothing to time).
    """
    unknown = [b for b in backends if b not in BENCH_BACKENDS]
    if unknown:
        raise ValueError(f"unknown face backends {unknown}: choose from {BENCH_BACKENDS}")
    if frames < 2:
        raise ValueError(f"bench_face_tracking needs at least 2 frames, got {frames}")
    if image is None:
        import skimage.data

        image = skimage.data.astronaut()
    cv2.setNumThreads(1)
    per_backend = {}
    for name in backends:
        step = _mediapipe_step() if name == "mediapipe" else _dlib_step()
        per_backend[name] = _time(step, moving_frames(image, frames))
    metrics = {f"{n}_{k}": v for n, figures in per_backend.items() for k, v in figures.items()}
    return {"metrics": metrics, "per_backend": per_backend}


# A step takes a frame and returns (seconds placing landmarks, seconds fitting the pose,
# detector runs so far), or None when it lost the face.
Step = Callable[[np.ndarray], tuple[float, float, int] | None]


def _time(step: Step, frames: Iterator[np.ndarray]) -> dict[str, float]:
    first = next(frames)
    start = time.perf_counter()
    if step(first) is None:
        raise RuntimeError("bench_face_tracking: no face in the first frame")
    first_ms = (time.perf_counter() - start) * 1000
    totals, marks, poses, detections = [], [], [], 0
    for frame in frames:
        start = time.perf_counter()
        out = step(frame)
        total = time.perf_counter() - start
        if out is None:
            raise RuntimeError("bench_face_tracking: the face was lost")
        totals.append(total * 1000)
        marks.append(out[0] * 1000)
        poses.append(out[1] * 1000)
        detections = out[2]
    ordered = sorted(totals)
    return {
        "frame_ms_mean": statistics.fmean(totals),
        "frame_ms_p50": statistics.median(totals),
        "frame_ms_p95": ordered[min(len(ordered) - 1, int(0.95 * len(ordered)))],
        "landmarks_ms": statistics.fmean(marks),
        "pose_ms": statistics.fmean(poses),
        "first_frame_ms": first_ms,
        "detections": detections,
        "frames": len(totals) + 1,
    }


def _mediapipe_step() -> Step:
    from avatar.face.mediapipe_backend import MediaPipeBackend
    from avatar.face.mesh_pose import mesh_head_pose

    tracker = MediaPipeBackend.load(num_threads=1).tracker()

    def step(frame: np.ndarray) -> tuple[float, float, int] | None:
        start = time.perf_counter()
        mesh = tracker.update(frame)
        if mesh is None:
            return None
        mesh.landmarks68()
        placed = time.perf_counter()
        mesh_head_pose(mesh.points)
        return placed - start, time.perf_counter() - placed, tracker.detections

    return step


def _dlib_step() -> Step:
    from avatar.face.dlib_backend import DlibBackend
    from avatar.face.pose import head_pose

    backend = DlibBackend.load()
    state: dict = {"box": None, "centre": None, "detections": 0}

    def step(frame: np.ndarray) -> tuple[float, float, int] | None:
        start = time.perf_counter()
        if state["box"] is None:
            found = backend.detect(frame, 1)
            state["detections"] += 1
            if not found:
                return None
            state["box"] = max(found, key=lambda d: d.box.width * d.box.height).box
        landmarks = backend.landmarks(frame, state["box"])
        centre = landmarks.mean(axis=0)
        if state["centre"] is not None:  # move the box with the face, same size
            dx, dy = (centre - state["centre"]).tolist()
            b = state["box"]
            state["box"] = Box(b.x0 + dx, b.y0 + dy, b.x1 + dx, b.y1 + dy)
        state["centre"] = centre
        placed = time.perf_counter()
        head_pose(landmarks, frame.shape)
        return placed - start, time.perf_counter() - placed, state["detections"]

    return step
