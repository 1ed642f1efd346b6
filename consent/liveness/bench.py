"""How long :func:`~consent.liveness.verify.verify_clip` takes on this machine.

``bench_liveness(20)`` renders a synthetic 20 s consent clip (see
:mod:`consent.liveness.testclips`), loads the face models and Whisper, verifies the
clip once and returns the seconds per stage. Rendering and loading are not counted in
``total``; they are reported apart.
"""

from __future__ import annotations

import random
import tempfile
import time
from pathlib import Path

from avatar.face import FaceAnalyzer, FaceOptions
from consent.liveness.challenge import InMemoryNonceBook, issue_challenge
from consent.liveness.testclips import make_clip, reference_photo
from consent.liveness.verify import load_asr, verify_clip


def bench_liveness(seconds: float = 20.0, seed: int = 0, backend: str = "mediapipe") -> dict:
    """Verify one synthetic clip of ``seconds`` with the face ``backend`` and time it.

    Returns:
        ``{"clip_seconds", "render", "load", "decode", "faces", "embed", "asr",
        "total", "passed"}``; times in seconds, ``total`` is the whole verify call.
    """
    t0 = time.perf_counter()
    analyzer = FaceAnalyzer.load(FaceOptions(backend=backend))
    asr = load_asr()
    photo = reference_photo(seed)
    reference = analyzer.embed(photo, analyzer.analyze(photo))
    load = time.perf_counter() - t0
    challenge = issue_challenge(random.Random(seed), now=1_000.0)
    book = InMemoryNonceBook()
    book.register(challenge)
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / "bench.webm"
        t0 = time.perf_counter()
        make_clip(path, challenge.digits, challenge.turns, seed=seed, duration=seconds)
        render = time.perf_counter() - t0
        result = verify_clip(
            path, challenge, reference, 1_040.0, analyzer, asr, nonces=book, started_at=1_010.0
        )
    out = {"clip_seconds": float(seconds), "render": render, "load": load}
    out.update({k: result.timings.get(k, 0.0) for k in ("decode", "faces", "embed", "asr")})
    out["total"] = result.timings["total"]
    out["passed"] = result.passed
    return out


if __name__ == "__main__":  # python -m consent.liveness.bench
    for key, value in bench_liveness().items():
        print(f"{key:>12}: {value:.3f}" if isinstance(value, float) else f"{key:>12}: {value}")
