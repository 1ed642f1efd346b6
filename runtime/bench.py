"""Benchmarks. Each returns ``{"bench", "machine", "config", "metrics", "runs"}``:
``metrics`` is the flat table the CLI prints; ``runs`` keeps every raw sample.

Figures are medians over ``repeats`` runs after one warm-up run.
"""

from __future__ import annotations

import asyncio
import os
import platform
import statistics
import time
from typing import Any

import numpy as np

from runtime import components
from runtime.config import Settings
from runtime.dialogue.base import GenerationOptions, Message
from runtime.dialogue.llamacpp import default_threads
from voice.audio import resample
from voice.types import AudioChunk
from voice.vad import FRAME

BENCH_TEXT = (
    "Good morning, it is lovely to see you again today. It is a bright and quiet day outside. "
    "Would you like to hear about the garden, or shall we talk about your family?"
)
# A new prompt each run, so the figures are not those of llama.cpp's prompt cache.
BENCH_TOPICS = ("the sea", "a garden", "the moon", "a cat", "a river", "the mountains")


def machine_info() -> dict[str, Any]:
    """Where the figures were measured."""
    info: dict[str, Any] = {
        "cpu": platform.processor() or platform.machine(),
        "cores": os.cpu_count(),
        "python": platform.python_version(),
    }
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as fh:
            for line in fh:
                if line.startswith("model name"):
                    info["cpu"] = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    try:
        import torch

        info["gpu"] = torch.cuda.get_device_name(0) if torch.cuda.is_available() else None
    except ImportError:
        info["gpu"] = None
    return info


def _median(values: list[float]) -> float:
    return float(statistics.median(values))


async def _bench_tts(settings: Settings, repeats: int) -> tuple[dict[str, float], dict, AudioChunk]:
    started = time.perf_counter()
    tts = await components.load_tts(settings)
    load_s = time.perf_counter() - started
    first: list[float] = []
    rtf: list[float] = []
    audio = np.zeros(0, np.float32)
    for i in range(repeats + 1):
        t0 = time.perf_counter()
        t_first = None
        parts = []
        async for chunk in tts.synthesize(BENCH_TEXT):
            t_first = t_first if t_first is not None else time.perf_counter() - t0
            parts.append(chunk.pcm)
        total = time.perf_counter() - t0
        audio = np.concatenate(parts)
        if i:  # the first run warms caches
            first.append(t_first or total)
            rtf.append(total / (len(audio) / tts.sample_rate))
    speech = AudioChunk(pcm=resample(audio, tts.sample_rate, 16_000), sample_rate=16_000)
    metrics = {
        f"tts_{tts.name}_load_s": load_s,
        f"tts_{tts.name}_first_audio_ms": _median(first) * 1000,
        f"tts_{tts.name}_rtf": _median(rtf),
    }
    return metrics, {"first_audio_s": first, "rtf": rtf}, speech


def _bench_asr(
    settings: Settings, speech: AudioChunk, repeats: int
) -> tuple[dict[str, float], dict, str]:
    started = time.perf_counter()
    asr = components.load_asr(settings)
    load_s = time.perf_counter() - started
    times: list[float] = []
    text = ""
    for i in range(repeats + 1):
        t0 = time.perf_counter()
        text = asr.transcribe_sync(speech).text
        if i:
            times.append(time.perf_counter() - t0)
    metrics = {
        "asr_load_s": load_s,
        "asr_audio_s": speech.duration,
        "asr_latency_ms": _median(times) * 1000,
        "asr_rtf": _median(times) / speech.duration,
    }
    return metrics, {"latency_s": times}, text


def _bench_vad(settings: Settings, speech: AudioChunk) -> dict[str, float]:
    detector = components.load_turn_detector(settings)
    frames = len(speech.pcm) // FRAME
    t0 = time.perf_counter()
    detector.push(speech.pcm[: frames * FRAME])
    elapsed = time.perf_counter() - t0
    return {"vad_frame_ms": elapsed / max(frames, 1) * 1000}


async def _bench_llm(settings: Settings, repeats: int) -> tuple[dict[str, float], dict]:
    started = time.perf_counter()
    backend = await components.load_dialogue(settings)
    load_s = time.perf_counter() - started
    options = GenerationOptions(max_tokens=96, temperature=0.0)
    ttft: list[float] = []
    rates: list[float] = []
    cold = float("nan")
    try:
        for i in range(repeats + 1):
            topic = BENCH_TOPICS[i % len(BENCH_TOPICS)]
            messages = [Message("user", f"Tell me a story about {topic}.")]
            t0 = time.perf_counter()
            t_first = None
            pieces = 0
            async for _piece in backend.stream(messages, options):
                t_first = t_first if t_first is not None else time.perf_counter() - t0
                pieces += 1
            total = time.perf_counter() - t0
            if not i and t_first is not None:
                cold = t_first
            if i and t_first is not None:
                ttft.append(t_first)
                if total > t_first and pieces > 1:
                    rates.append((pieces - 1) / (total - t_first))
    finally:
        await backend.aclose()
    metrics = {
        "llm_load_s": load_s,
        "llm_first_token_cold_ms": cold * 1000,
        "llm_first_token_ms": _median(ttft) * 1000 if ttft else float("nan"),
        "llm_pieces_per_s": _median(rates) if rates else float("nan"),
    }
    return metrics, {"first_token_s": ttft, "pieces_per_s": rates}


async def _bench_turn(
    settings: Settings, speech: AudioChunk, repeats: int
) -> tuple[dict[str, float], dict]:
    """One whole turn after the person stopped speaking: transcript → first sentence
    → first audio, through the same streaming code the companion uses."""
    from runtime.voiceloop import collect_reply

    asr = await asyncio.to_thread(components.load_asr, settings)
    tts = await components.load_tts(settings)
    backend = await components.load_dialogue(settings)
    talk = components.conversation(settings, backend)
    stages: dict[str, list[float]] = {"transcript": [], "first_sentence": [], "first_audio": []}
    try:
        for i in range(repeats + 1):
            talk.memory.forget("bench")
            t0 = time.perf_counter()
            heard = await asr.transcribe(speech)
            t_text = time.perf_counter() - t0
            reply = await collect_reply(talk, tts, "bench", heard.text)
            if i and reply.first_audio_s is not None:
                stages["transcript"].append(t_text)
                stages["first_sentence"].append(t_text + (reply.first_sentence_s or 0.0))
                stages["first_audio"].append(t_text + reply.first_audio_s)
    finally:
        talk.memory.forget("bench")
        await backend.aclose()
    metrics = {f"turn_{k}_ms": _median(v) * 1000 for k, v in stages.items() if v}
    return metrics, stages


def bench_voice(settings: Settings, repeats: int = 5) -> dict[str, Any]:
    """ASR real-time factor, TTS first audio and RTF, LLM time to first token, VAD cost.

    The ASR input is the TTS output of :data:`BENCH_TEXT`, so no file is needed.
    """

    async def run() -> dict[str, Any]:
        tts_m, tts_runs, speech = await _bench_tts(settings, repeats)
        asr_m, asr_runs, heard = await asyncio.to_thread(_bench_asr, settings, speech, repeats)
        vad_m = await asyncio.to_thread(_bench_vad, settings, speech)
        llm_m, llm_runs = await _bench_llm(settings, repeats)
        turn_m, turn_runs = await _bench_turn(settings, speech, repeats)
        return {
            "bench": "voice",
            "machine": machine_info(),
            "config": {
                "tts": settings.tts.backend,
                "asr_model": settings.asr.model or "embedded tiny.en",
                "dialogue": settings.dialogue.backend,
                "llm_threads": settings.dialogue.n_threads or default_threads(),
                "repeats": repeats,
            },
            "metrics": {**asr_m, **tts_m, **vad_m, **llm_m, **turn_m},
            "runs": {
                "tts": tts_runs,
                "asr": asr_runs,
                "llm": llm_runs,
                "turn": turn_runs,
                "asr_text": heard,
            },
        }

    return asyncio.run(run())
