"""What the Ray Serve pool adds to a chunk: the same chunks through the local engine and
through a one-replica pool, one session, back to back::

    python -m avatar.deploy.ray_overhead [--checkpoint DIR] [--chunks 60] [--wait-s 0]

Without ``--checkpoint`` a tiny random-weight student is saved to a temporary folder
(timing only). The pool is a private Ray in this process (``address = "local"``) with
one CPU replica; the local engine runs the same checkpoint with one torch thread, as
the replica does. Printed as JSON: per chunk, the local engine's time, the pool's
round trip, the model's own time inside the replica, and their difference (the
transfer, routing and the batch wait). Medians over ``--chunks`` chunks after warm-up.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from avatar.deploy.ray_serve import PoolOptions, connect_ray
from avatar.pipelines.ray_engine import RayEngine
from avatar.pipelines.runner import RunnerSpec, load_runner
from avatar.pipelines.scheduler import BatchScheduler, ChunkRequest


def _inputs(spec: RunnerSpec, avatar, rng: np.random.Generator) -> ChunkRequest:
    k, c, d = spec.chunk_frames, spec.context_frames, spec.code_dim
    return ChunkRequest(
        avatar,
        rng.standard_normal((1, k, d)).astype(np.float32),
        np.repeat(avatar.source_code[:, None], c, axis=1).astype(np.float32),
        (-6 + rng.standard_normal((1, spec.mel_rows, spec.n_mels))).astype(np.float32),
        None,
        np.ones((1, 2), np.float32),
    )


async def _time_chunks(engine: BatchScheduler, chunks: int) -> tuple[list[float], list[float]]:
    """Round trip and model time (ms) of each chunk, after 5 unmeasured ones."""
    spec, rng = engine.spec, np.random.default_rng(0)
    crop = rng.uniform(-1, 1, (1, 3, spec.image_size, spec.image_size)).astype(np.float32)
    avatar = await engine.encode("overhead", crop)
    trips, model = [], []
    for i in range(chunks + 5):
        started = time.perf_counter()
        result = await engine.chunk(_inputs(spec, avatar, rng))
        if i >= 5:
            trips.append(1000 * (time.perf_counter() - started))
            model.append(result.motion_ms + result.render_ms)
    engine.release("overhead")
    return trips, model


def _tiny_checkpoint(folder: Path) -> str:
    from avatar.models import DualBranchGenerator, GeneratorConfig

    torch.manual_seed(0)
    DualBranchGenerator(GeneratorConfig.tiny().as_student()).save_pretrained(folder)
    return str(folder)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--checkpoint", default="")
    parser.add_argument("--chunks", type=int, default=60)
    parser.add_argument("--wait-s", type=float, default=0.0, help="batch_wait_timeout_s")
    args = parser.parse_args()
    torch.set_num_threads(1)
    with tempfile.TemporaryDirectory() as tmp:
        checkpoint = args.checkpoint or _tiny_checkpoint(Path(tmp) / "tiny")
        local = BatchScheduler(load_runner("torch", checkpoint, steps=2, device="cpu"), 0.0)
        local_ms, _ = asyncio.run(_time_chunks(local, args.chunks))
        asyncio.run(local.aclose())
        connect_ray("local")
        pool = PoolOptions(
            checkpoint,
            device="cpu",
            app="likeness-overhead",
            batch_wait_timeout_s=args.wait_s,
            gpus_per_replica=0,
        )
        engine = RayEngine.connect(pool, deploy=True)
        trips, model = asyncio.run(_time_chunks(engine, args.chunks))
    med = statistics.median
    outside = [t - m for t, m in zip(trips, model, strict=True)]
    print(
        json.dumps(
            {
                "chunks": args.chunks,
                "batch_wait_timeout_s": args.wait_s,
                "checkpoint": args.checkpoint or "tiny random student",
                "local_chunk_ms_p50": round(med(local_ms), 2),
                "ray_round_trip_ms_p50": round(med(trips), 2),
                "ray_model_ms_p50": round(med(model), 2),
                "ray_outside_model_ms_p50": round(med(outside), 2),
                "ray_minus_local_ms_p50": round(med(trips) - med(local_ms), 2),
            },
            indent=2,
        )
    )


if __name__ == "__main__":
    main()
