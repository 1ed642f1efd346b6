"""The voice half of a companion, on files and the terminal.

``listen_file`` runs the whole loop offline — VAD turns → transcript → distress
check → streamed reply → speech — and ``chat_loop`` does the text-in, speech-out
part. Both speak through :func:`runtime.dialogue.speak.speak_reply`, the streaming
core a live session uses too: the LLM's sentences go to TTS as soon as each is
complete, while the LLM keeps writing.
"""

from __future__ import annotations

import asyncio
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from rich.progress import BarColumn, Progress, TextColumn, TimeRemainingColumn

from runtime import components
from runtime.config import Settings
from runtime.dialogue.conversation import Conversation
from runtime.dialogue.speak import speak_reply
from runtime.logs import get_logger
from runtime.safety import DistressAlert
from voice.audio import read_audio, write_wav
from voice.tts.base import TTSBackend
from voice.types import SpeechChunk, Transcript
from voice.vad import TurnEnded

log = get_logger("likeness.voiceloop")
STREAM_CHUNK_S = 0.1  # files are fed to the VAD as a live stream would be
TURN_GAP_S = 0.4


def _progress() -> Progress:
    return Progress(
        TextColumn("{task.description}"),
        BarColumn(),
        TextColumn("{task.percentage:>3.0f}%"),
        TimeRemainingColumn(),
        transient=True,
        disable=not sys.stderr.isatty(),
    )


def find_turns(settings: Settings, audio_path: Path) -> list[TurnEnded]:
    """Cut a recording into turns with the streaming VAD (fed 100 ms at a time)."""
    audio = read_audio(audio_path)
    detector = components.load_turn_detector(settings)
    step = int(STREAM_CHUNK_S * audio.sample_rate)
    turns: list[TurnEnded] = []
    with _progress() as progress:
        task = progress.add_task("finding turns", total=len(audio.pcm))
        for i in range(0, len(audio.pcm), step):
            turns += [e for e in detector.push(audio.pcm[i : i + step]) if isinstance(e, TurnEnded)]
            progress.update(task, completed=min(i + step, len(audio.pcm)))
    turns += [e for e in detector.flush() if isinstance(e, TurnEnded)]
    return turns


def transcribe_file(
    settings: Settings, audio_path: Path, model: str | None = None, language: str | None = None
) -> list[Transcript]:
    """Transcribe a recording turn by turn; one Transcript per VAD turn."""
    turns = find_turns(settings, audio_path)
    asr = components.load_asr(settings, model=model, language=language)
    results: list[Transcript] = []
    with _progress() as progress:
        task = progress.add_task("transcribing", total=len(turns))
        for turn in turns:
            heard = asr.transcribe_sync(turn.audio)
            results.append(
                Transcript(text=heard.text, language=heard.language, start=turn.start, end=turn.end)
            )
            progress.advance(task)
    return results


@dataclass(slots=True)
class SpokenReply:
    """What :func:`speak_reply` produced, with its latencies (seconds from the call)."""

    text: str = ""
    chunks: list[SpeechChunk] = field(default_factory=list)
    first_sentence_s: float | None = None
    first_audio_s: float | None = None

    def pcm(self) -> np.ndarray:
        """All audio of the reply, concatenated."""
        if not self.chunks:
            return np.zeros(0, dtype=np.float32)
        return np.concatenate([c.pcm for c in self.chunks])


async def collect_reply(
    conversation: Conversation, tts: TTSBackend, person: str, user_text: str, echo: bool = False
) -> SpokenReply:
    """Run :func:`speak_reply` to the end, timing the first sentence and audio."""
    reply = SpokenReply()
    started = time.perf_counter()

    def first_sentence(_sentence: str) -> None:
        if reply.first_sentence_s is None:
            reply.first_sentence_s = time.perf_counter() - started

    last = -1
    async for number, sentence, chunk in speak_reply(
        conversation, tts, person, user_text, on_sentence=first_sentence
    ):
        if number != last:
            last = number
            reply.text = f"{reply.text} {sentence}".strip()
            if echo:
                print(sentence, end=" ", flush=True)
        if reply.first_audio_s is None:
            reply.first_audio_s = time.perf_counter() - started
        reply.chunks.append(chunk)
    if echo:
        print(flush=True)
    return reply


@dataclass(slots=True)
class TurnReport:
    """One turn of ``likeness listen``."""

    start: float
    end: float
    transcript: str
    reply: str
    alert: str | None
    transcript_s: float
    first_sentence_s: float | None
    first_audio_s: float | None


@dataclass(slots=True)
class ListenReport:
    """Everything ``likeness listen`` did."""

    output: Path
    turns: list[TurnReport]

    def as_dict(self) -> dict[str, Any]:
        return {"output": str(self.output), "turns": [asdict(t) for t in self.turns]}


async def _alert(settings: Settings, alert: DistressAlert) -> None:
    for sink in components.alert_sinks(settings):
        try:
            await sink.send(alert)
        except Exception as err:  # noqa: BLE001 - one failed sink must not hide the others
            log.error("alert sink failed", sink=type(sink).__name__, error=str(err))


async def listen_file(
    settings: Settings, audio_path: Path, output: Path, person: str = "default"
) -> ListenReport:
    """The whole voice loop on a recording; writes every reply into ``output``.

    Each turn's transcript is checked for distress first; an alert goes to the
    configured sinks (log file, webhook) separately from the reply.
    """
    turns = await asyncio.to_thread(find_turns, settings, audio_path)
    asr = await asyncio.to_thread(components.load_asr, settings)
    tts = await components.load_tts(settings)
    backend = await components.load_dialogue(settings)
    conversation = components.conversation(settings, backend)
    detector = components.distress_detector(settings)
    reports: list[TurnReport] = []
    pcm: list[np.ndarray] = []
    try:
        for turn in turns:
            started = time.perf_counter()
            heard = await asr.transcribe(turn.audio)
            transcript_s = time.perf_counter() - started
            if not heard.text:
                continue
            alert = detector.check(heard.text, person_id=person) if detector else None
            if alert is not None:
                await _alert(settings, alert)
            reply = await collect_reply(conversation, tts, person, heard.text)
            reports.append(
                TurnReport(
                    start=turn.start,
                    end=turn.end,
                    transcript=heard.text,
                    reply=reply.text,
                    alert=alert.category if alert else None,
                    transcript_s=transcript_s,
                    first_sentence_s=reply.first_sentence_s,
                    first_audio_s=reply.first_audio_s,
                )
            )
            pcm += [reply.pcm(), np.zeros(int(TURN_GAP_S * tts.sample_rate), np.float32)]
    finally:
        await backend.aclose()
    audio = np.concatenate(pcm) if pcm else np.zeros(0, np.float32)
    write_wav(output, audio, tts.sample_rate)
    return ListenReport(output=output, turns=reports)


@dataclass(frozen=True, slots=True)
class SayResult:
    path: Path
    duration: float
    first_audio_s: float


async def say_to_file(
    settings: Settings, text: str, output: Path, backend: str | None = None
) -> SayResult:
    """Synthesise ``text`` (sentence by sentence) into a WAV file."""
    tts = await components.load_tts(settings, backend=backend)
    started = time.perf_counter()
    first: float | None = None
    chunks: list[np.ndarray] = []
    async for chunk in tts.synthesize(text):
        first = first if first is not None else time.perf_counter() - started
        chunks.append(chunk.pcm)
    audio = np.concatenate(chunks) if chunks else np.zeros(0, np.float32)
    write_wav(output, audio, tts.sample_rate)
    return SayResult(output, len(audio) / tts.sample_rate, first or 0.0)


async def chat_loop(
    settings: Settings, person: str, audio_dir: Path | None, speak: bool = True
) -> None:
    """Read lines from stdin; stream each reply as text and write it as speech."""
    folder = audio_dir or settings.data_dir / "chat"
    folder.mkdir(parents=True, exist_ok=True)
    tts = await components.load_tts(settings) if speak else None
    backend = await components.load_dialogue(settings)
    conversation = components.conversation(settings, backend)
    detector = components.distress_detector(settings)
    interactive = sys.stdin.isatty()
    count = 0
    try:
        while True:
            if interactive:
                print("you> ", end="", flush=True)
            line = await asyncio.to_thread(sys.stdin.readline)
            if not line:
                break
            text = line.strip()
            if not text:
                continue
            if text in {"/quit", "/exit"}:
                break
            alert = detector.check(text, person_id=person) if detector else None
            if alert is not None:
                await _alert(settings, alert)
            print(f"{settings.persona.name}> ", end="", flush=True)
            if tts is None:
                async for sentence in conversation.reply(person, text):
                    print(sentence, end=" ", flush=True)
                print(flush=True)
                continue
            reply = await collect_reply(conversation, tts, person, text, echo=True)
            count += 1
            path = write_wav(folder / f"reply-{count:03d}.wav", reply.pcm(), tts.sample_rate)
            print(f"  [audio: {path}]", file=sys.stderr, flush=True)
    finally:
        await backend.aclose()


DEMO_QUESTION = "Hello! My name is Sam. Could you tell me something nice about the sea?"


def _animate_demo(settings: Settings, speech: Path, output: Path) -> Path:
    from runtime.animation import animate_to_file, speech_from_file
    from runtime.avatar_components import SYNTHETIC_REF, resolve_avatar

    face = resolve_avatar(settings, SYNTHETIC_REF)
    return animate_to_file(settings, face, speech_from_file(speech), output).path


async def run_demo(settings: Settings, interactive: bool) -> None:
    """The embedded companion: speak a question with Piper, answer it offline, show the
    reply on the synthetic demo face (an mp4), then chat."""
    folder = settings.data_dir / "demo"
    folder.mkdir(parents=True, exist_ok=True)
    question = folder / "question.wav"
    await say_to_file(settings, DEMO_QUESTION, question)
    print(f"question spoken into {question}")
    report = await listen_file(settings, question, folder / "reply.wav", person="demo")
    for turn in report.turns:
        print(f"you: {turn.transcript}")
        print(f"{settings.persona.name}: {turn.reply}")
        print(
            f"  transcript {turn.transcript_s * 1000:.0f} ms, first sentence "
            f"{(turn.first_sentence_s or 0) * 1000:.0f} ms, first audio "
            f"{(turn.first_audio_s or 0) * 1000:.0f} ms"
        )
    print(f"spoken reply: {report.output}")
    clip = await asyncio.to_thread(_animate_demo, settings, report.output, folder / "reply.mp4")
    print(f"the synthetic demo face (drawn by code, not a person) speaking it: {clip}")
    if interactive:
        print("\nNow type to chat (/quit to leave); replies are also written as WAV files.")
        await chat_loop(settings, person="demo", audio_dir=folder)
