"""Small 2-D helpers shared by the renderer and the synthetic face."""

from __future__ import annotations

import numpy as np


def curve(points: np.ndarray, closed: bool = False, samples: int = 10) -> np.ndarray:
    """A Catmull-Rom spline through ``points`` (N, 2); open ends are extrapolated.

    Args:
        points: the points to pass through, in order.
        closed: join the last point back to the first.
        samples: points per segment.

    Returns:
        (M, 2) float64 points along the spline; an open curve ends on its last point.
    """
    p = np.asarray(points, np.float64)
    if closed:
        ext = np.concatenate([p[-1:], p, p[:2]])
    else:
        ext = np.concatenate([2 * p[:1] - p[1:2], p, 2 * p[-1:] - p[-2:-1]])
    segments = len(p) if closed else len(p) - 1
    t = np.linspace(0.0, 1.0, samples, endpoint=False)[None, :, None]
    p0, p1, p2, p3 = (ext[k : k + segments][:, None, :] for k in range(4))
    out = 0.5 * (
        2 * p1
        + (p2 - p0) * t
        + (2 * p0 - 5 * p1 + 4 * p2 - p3) * t**2
        + (3 * p1 - p0 - 3 * p2 + p3) * t**3
    )
    out = out.reshape(-1, 2)
    return out if closed else np.concatenate([out, p[-1:]])


def to_fixed(points: np.ndarray, shift: int = 4) -> np.ndarray:
    """Points as int32 with ``shift`` fractional bits, for OpenCV's sub-pixel drawing."""
    return np.round(np.asarray(points) * (1 << shift)).astype(np.int32)
