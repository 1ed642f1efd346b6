"""``likeness bench consent --attacks``: APCER per attack class and BPCER, measured.

Vocabulary of ISO/IEC 30107-3: an *attack presentation* is an attempt to pass the
ceremony with something other than the live person (:data:`consent.ceremony.attacks.ATTACKS`);
APCER (attack presentation classification error rate) is, per class, the share of
attacks that passed; BPCER (bona fide presentation classification error rate) is the
share of genuine ceremonies that were refused. Bona fide runs are
:class:`consent.ceremony.actors.LivePerson` with :func:`~consent.ceremony.actors.persona`
``0..n-1``; attacks target those personas in turn.

Each run is a whole simulated ceremony (:func:`consent.ceremony.simulate.simulate`):
the same engine as a live one, on a virtual clock. Runs are independent and spread
over ``jobs`` worker processes, each with its own models, one thread each.
"""

from __future__ import annotations

import math
import os
import random
import time
from collections.abc import Callable
from concurrent.futures import ProcessPoolExecutor
from typing import Any

import numpy as np

from consent.ceremony.attacks import ATTACKS

_MODELS: dict[str, Any] = {}


def _load(backend: str) -> dict[str, Any]:
    if "asr" not in _MODELS:
        import cv2

        cv2.setNumThreads(1)
        from consent.liveness.verify import load_asr

        _MODELS["asr"] = load_asr()
    if backend not in _MODELS:
        from avatar.face import FaceAnalyzer, FaceOptions

        _MODELS[backend] = FaceAnalyzer.load(FaceOptions(backend=backend))
    return {"analyzer": _MODELS[backend], "asr": _MODELS["asr"]}


def run_one(kind: str, index: int, seed: int = 0, backend: str = "mediapipe") -> dict[str, Any]:
    """One ceremony: ``kind`` "bona_fide" or an attack class, against persona ``index``,
    judged with the face backend ``backend`` ("mediapipe" or "dlib").

    Returns the outcome, the failed points and the measured figures (no pixels).
    """
    from consent.ceremony.actors import LivePerson, persona
    from consent.ceremony.attacks import make_attack
    from consent.ceremony.plan import plan_ceremony
    from consent.ceremony.simulate import simulate
    from voice.types import AudioChunk
    from voice.vad import SileroVAD

    models = _load(backend)
    analyzer, asr = models["analyzer"], models["asr"]
    began = time.perf_counter()
    if kind == "bona_fide":
        actor: Any = LivePerson(persona(index))
        photo = actor.photo()
    else:
        actor, photo = make_attack(
            kind, index, seed * 1000 + index, lambda img: analyzer.analyze(img).landmarks
        )
    reference = analyzer.embed(photo, analyzer.analyze(photo))
    plan = plan_ceremony(rng=random.Random(f"{seed}:{kind}:{index}"))

    def transcribe(pcm: np.ndarray) -> str:
        return asr.transcribe_sync(AudioChunk(pcm, 16_000)).text

    run = simulate(
        actor, plan, reference, analyzer, transcribe, SileroVAD.load(), seed=seed * 7919 + index
    )
    result, ceremony = run.result, run.ceremony
    light = ceremony.light_result()
    depths = ceremony.turn_depths()
    scores = {p.name: (float(p.score) if math.isfinite(p.score) else None) for p in result.points}
    return {
        "kind": kind,
        "index": index,
        "backend": backend,
        "passed": result.passed,
        "failed": [p.name for p in result.failures],
        "reasons": {p.name: p.reason for p in result.failures},
        "scores": scores,
        "light": None
        if light is None
        else {
            "correlation": light.correlation,
            "face_gain": light.face_gain,
            "wall_ratio": light.wall_ratio if math.isfinite(light.wall_ratio) else None,
            "lag_s": light.lag_s,
        },
        "depth": depths,
        "cpu_s": result.timings.get("cpu", 0.0),
        "judge_s": result.timings.get("judge", 0.0),
        "ceremony_s": result.timings.get("duration", 0.0),
        "frames": result.timings.get("frames", 0.0),
        "wall_s": time.perf_counter() - began,
    }


def _init_worker() -> None:
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    try:
        import torch

        torch.set_num_threads(1)
    except ImportError:
        pass


def _task(args: tuple[str, int, int, str]) -> dict[str, Any]:
    return run_one(*args)


def bench_attacks(
    bona_fide: int = 40,
    per_class: int = 5,
    classes: tuple[str, ...] = ATTACKS,
    seed: int = 0,
    jobs: int = 1,
    on_run: Callable[[dict[str, Any]], None] | None = None,
    backend: str = "mediapipe",
) -> dict[str, Any]:
    """Run ``bona_fide`` genuine ceremonies and ``per_class`` attacks of each class.

    Args:
        bona_fide: genuine runs (personas 0..n-1).
        per_class: attacks per class (against personas 0..per_class-1).
        classes: which attack classes.
        seed: varies plans, timings and noise.
        jobs: worker processes.
        on_run: called with each run's figures as it finishes (a progress bar).
        backend: the face backend that judges ("mediapipe" or "dlib").

    Returns:
        ``{"metrics": {...}, "classes": {...}, "bona_fide": {...}, "runs": [...]}``.
    """
    unknown = [c for c in classes if c not in ATTACKS]
    if unknown:
        raise ValueError(f"unknown attack classes {unknown}; known: {', '.join(ATTACKS)}")
    tasks = [("bona_fide", i, seed, backend) for i in range(bona_fide)]
    tasks += [(kind, j, seed, backend) for kind in classes for j in range(per_class)]
    runs: list[dict[str, Any]] = []
    began = time.perf_counter()
    if jobs <= 1:
        for task in tasks:
            runs.append(_task(task))
            if on_run:
                on_run(runs[-1])
    else:
        import multiprocessing

        ctx = multiprocessing.get_context("spawn")
        with ProcessPoolExecutor(jobs, mp_context=ctx, initializer=_init_worker) as pool:
            for found in pool.map(_task, tasks):
                runs.append(found)
                if on_run:
                    on_run(found)
    return summarise(runs, classes, time.perf_counter() - began)


def summarise(
    runs: list[dict[str, Any]], classes: tuple[str, ...], wall_s: float
) -> dict[str, Any]:
    """APCER per class, BPCER, what caught each class, and the spread of every measure."""
    genuine = [r for r in runs if r["kind"] == "bona_fide"]
    metrics: dict[str, Any] = {}
    per_class: dict[str, Any] = {}
    for kind in classes:
        mine = [r for r in runs if r["kind"] == kind]
        if not mine:
            continue
        passed = sum(r["passed"] for r in mine)
        caught: dict[str, int] = {}
        for r in mine:
            for name in r["failed"]:
                caught[name] = caught.get(name, 0) + 1
        per_class[kind] = {
            "runs": len(mine),
            "passed": passed,
            "apcer": passed / len(mine),
            "caught_by": dict(sorted(caught.items(), key=lambda kv: -kv[1])),
            "measures": _spread(mine),
        }
        metrics[f"apcer_{kind}"] = passed / len(mine)
    refused = [r for r in genuine if not r["passed"]]
    bona = {
        "runs": len(genuine),
        "refused": len(refused),
        "bpcer": len(refused) / len(genuine) if genuine else None,
        "refusals": [
            {"index": r["index"], "failed": r["failed"], "reasons": r["reasons"]} for r in refused
        ],
        "measures": _spread(genuine),
    }
    if genuine:
        metrics["bpcer"] = bona["bpcer"]
        cpu = [r["cpu_s"] / max(r["ceremony_s"], 1e-9) for r in genuine]
        metrics["cpu_per_ceremony_second"] = float(np.median(cpu))
        metrics["judge_s_max"] = float(max(r["judge_s"] for r in genuine))
        metrics["ceremony_s_median"] = float(np.median([r["ceremony_s"] for r in genuine]))
    metrics["apcer_max"] = max((c["apcer"] for c in per_class.values()), default=None)
    metrics["runs"] = len(runs)
    metrics["wall_s"] = wall_s
    return {"metrics": metrics, "classes": per_class, "bona_fide": bona, "runs": runs}


def _spread(runs: list[dict[str, Any]]) -> dict[str, Any]:
    """Min, median and max of each measure over ``runs`` (to size thresholds)."""
    series: dict[str, list[float]] = {}

    def add(name: str, value: Any) -> None:
        if isinstance(value, int | float) and math.isfinite(value):
            series.setdefault(name, []).append(float(value))

    for r in runs:
        for name, value in r["scores"].items():
            add(name, value)
        if r["light"]:
            for name, value in r["light"].items():
                add(f"light_{name}", value)
        for d in r["depth"]:
            add("depth_explained", d)
    return {
        name: {"min": min(v), "median": float(np.median(v)), "max": max(v), "n": len(v)}
        for name, v in sorted(series.items())
    }


def table_rows(result: dict[str, Any]) -> list[list[str]]:
    """Rows of the printed table: one per attack class, then bona fide."""
    rows = []
    for kind, c in result["classes"].items():
        caught = ", ".join(f"{k} {v}" for k, v in list(c["caught_by"].items())[:4])
        rows.append([kind, str(c["runs"]), f"{c['apcer']:.0%}", caught])
    b = result["bona_fide"]
    if b["runs"]:
        refused = {}
        for r in b["refusals"]:
            for name in r["failed"]:
                refused[name] = refused.get(name, 0) + 1
        rows.append(
            [
                "bona fide (BPCER)",
                str(b["runs"]),
                f"{b['bpcer']:.1%}",
                ", ".join(f"{k} {v}" for k, v in refused.items()) or "-",
            ]
        )
    return rows


__all__ = ["bench_attacks", "run_one", "summarise", "table_rows"]
