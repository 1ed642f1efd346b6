"""eSpeak NG: a tiny formant voice with exact phoneme and word timings.

It needs the system package (``apt-get install espeak-ng``), which brings the
``espeak-ng`` program and the ``libespeak-ng.so.1`` library it is a thin front end of.

How the timings are obtained: the ``espeak-ng`` program cannot print durations for its
own voices (``--pho`` writes only for MBROLA voices; ``-x``/``-X`` print phonemes with no
times), so this backend calls the same library through ``ctypes`` in synchronous mode
with phoneme events on. While it renders a sentence the engine hands over the samples
and, for every phoneme and word, an event with its position in the output
(``audio_position``, milliseconds). A phoneme lasts until the next phoneme event (pauses
are events with an empty name); a word spans its phonemes (those after its word event
and before the next one), so words never overlap. The times are the engine's own, for
the very samples it returns.

Text positions of word events count characters from 1; where eSpeak speaks one written
token as several words ("42" is "forty two") their spans overlap and are merged back
into one word timing for the written token.

libespeak-ng keeps global state (one voice, one set of parameters, one callback), so
every sentence holds a process-wide lock while it renders; a sentence takes about a
millisecond per word, so concurrent calls wait very little.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import threading
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import ClassVar

import numpy as np

from voice.errors import BackendError, BackendUnavailableError, ModelNotFoundError
from voice.tts.base import stream_by_sentence
from voice.types import SpeechChunk, Timing

# Constants from espeak-ng's public header, speak_lib.h.
_AUDIO_OUTPUT_SYNCHRONOUS = 2
_INITIALIZE_PHONEME_EVENTS = 0x0001
_INITIALIZE_PHONEME_IPA = 0x0002
_INITIALIZE_DONT_EXIT = 0x8000
_POS_CHARACTER = 1
_CHARS_UTF8 = 0x1
_ENDPAUSE = 0x1000
_EVENT_LIST_TERMINATED = 0
_EVENT_WORD = 1
_EVENT_PHONEME = 7
_PARAM_RATE, _PARAM_VOLUME, _PARAM_PITCH = 1, 2, 3

_INSTALL_HINT = "install it with `apt-get install espeak-ng` (macOS: `brew install espeak-ng`)"


class _EventId(ctypes.Union):
    _fields_: ClassVar = [
        ("number", ctypes.c_int),
        ("name", ctypes.c_char_p),
        ("string", ctypes.c_char * 8),
    ]


class _Event(ctypes.Structure):
    _fields_: ClassVar = [
        ("type", ctypes.c_int),
        ("unique_identifier", ctypes.c_uint),
        ("text_position", ctypes.c_int),
        ("length", ctypes.c_int),
        ("audio_position", ctypes.c_int),
        ("sample", ctypes.c_int),
        ("user_data", ctypes.c_void_p),
        ("id", _EventId),
    ]


# (event type, audio position in ms, text position from 1, length in chars, phoneme)
_RawEvent = tuple[int, int, int, int, str]

_Callback = ctypes.CFUNCTYPE(
    ctypes.c_int, ctypes.POINTER(ctypes.c_short), ctypes.c_int, ctypes.POINTER(_Event)
)


@dataclass(frozen=True, slots=True)
class EspeakOptions:
    """How eSpeak NG speaks.

    Attributes:
        voice: an eSpeak voice name, optionally with a variant ("en-us", "en-gb+f3");
            ``espeak-ng --voices`` lists them.
        words_per_minute: speaking rate, 80 to 450 (eSpeak's default is 175).
        pitch: base pitch, 0 to 99 (50 is eSpeak's default).
        amplitude: loudness, 0 to 200 (100 is eSpeak's default).
    """

    voice: str = "en-us"
    words_per_minute: int = 160
    pitch: int = 50
    amplitude: int = 100

    def __post_init__(self) -> None:
        for field, low, high in (
            ("words_per_minute", 80, 450),
            ("pitch", 0, 99),
            ("amplitude", 0, 200),
        ):
            value = getattr(self, field)
            if not low <= value <= high:
                raise ValueError(f"EspeakOptions.{field}={value} is outside {low}..{high}")


class _Engine:
    """The process's one libespeak-ng: use :func:`_engine`, and only under ``lock``."""

    def __init__(self, lib: ctypes.CDLL, sample_rate: int) -> None:
        self.lib = lib
        self.sample_rate = sample_rate
        self.lock = threading.Lock()
        self._pcm: list[np.ndarray] = []
        self._events: list[_RawEvent] = []
        self._callback = _Callback(self._on_synth)  # kept alive as long as the engine
        lib.espeak_SetSynthCallback(self._callback)

    def _on_synth(self, wav, count: int, events) -> int:  # called by espeak, lock held
        if wav and count > 0:
            self._pcm.append(np.ctypeslib.as_array(wav, shape=(count,)).copy())
        i = 0
        while events[i].type != _EVENT_LIST_TERMINATED:
            event = events[i]
            if event.type in (_EVENT_WORD, _EVENT_PHONEME):
                name = (
                    event.id.string.decode("utf-8", "replace")
                    if event.type == _EVENT_PHONEME
                    else ""
                )
                self._events.append(
                    (event.type, event.audio_position, event.text_position, event.length, name)
                )
            i += 1
        return 0  # 0: go on synthesising

    def select(self, options: EspeakOptions) -> None:
        """Set voice and parameters (lock held). Raises ModelNotFoundError on a bad voice."""
        if self.lib.espeak_SetVoiceByName(options.voice.encode()) != 0:
            raise ModelNotFoundError(
                f"eSpeak NG has no voice {options.voice!r}: list them with `espeak-ng --voices`"
            )
        self.lib.espeak_SetParameter(_PARAM_RATE, options.words_per_minute, 0)
        self.lib.espeak_SetParameter(_PARAM_PITCH, options.pitch, 0)
        self.lib.espeak_SetParameter(_PARAM_VOLUME, options.amplitude, 0)

    def render(self, text: str, options: EspeakOptions) -> tuple[np.ndarray, list[_RawEvent]]:
        """Synthesise ``text`` (blocking). Returns int16 samples and the raw events."""
        data = text.encode("utf-8")
        with self.lock:
            self._pcm, self._events = [], []
            self.select(options)
            flags = _CHARS_UTF8 | _ENDPAUSE
            status = self.lib.espeak_Synth(
                data, len(data) + 1, 0, _POS_CHARACTER, 0, flags, None, None
            )
            pcm, events = self._pcm, self._events
            self._pcm, self._events = [], []
        if status != 0:
            raise BackendError(f"espeak_Synth failed with status {status} on {text!r}")
        audio = np.concatenate(pcm) if pcm else np.zeros(0, dtype=np.int16)
        return audio, events


_ENGINE: _Engine | None = None
_ENGINE_LOCK = threading.Lock()


def _declare(lib: ctypes.CDLL) -> None:
    """Give ctypes the C signatures (speak_lib.h) of the functions used here."""
    c = ctypes
    lib.espeak_Initialize.argtypes = [c.c_int, c.c_int, c.c_char_p, c.c_int]
    lib.espeak_SetSynthCallback.argtypes = [_Callback]
    lib.espeak_SetVoiceByName.argtypes = [c.c_char_p]
    lib.espeak_SetParameter.argtypes = [c.c_int, c.c_int, c.c_int]
    lib.espeak_Synth.argtypes = [c.c_char_p, c.c_size_t, c.c_uint, c.c_int, c.c_uint, c.c_uint,
                                 c.c_void_p, c.c_void_p]  # fmt: skip


def _engine() -> _Engine:
    """Open and initialise libespeak-ng once per process.

    Raises:
        BackendUnavailableError: the library or its data is not installed.
    """
    global _ENGINE
    with _ENGINE_LOCK:
        if _ENGINE is None:
            name = ctypes.util.find_library("espeak-ng") or "libespeak-ng.so.1"
            try:
                lib = ctypes.CDLL(name)
            except OSError as err:
                raise BackendUnavailableError(
                    f"eSpeak NG is not installed: {_INSTALL_HINT}"
                ) from err
            _declare(lib)
            options = _INITIALIZE_PHONEME_EVENTS | _INITIALIZE_PHONEME_IPA | _INITIALIZE_DONT_EXIT
            rate = lib.espeak_Initialize(_AUDIO_OUTPUT_SYNCHRONOUS, 0, None, options)
            if rate <= 0:
                raise BackendUnavailableError(
                    f"eSpeak NG could not find its data (espeak-ng-data): {_INSTALL_HINT}"
                )
            _ENGINE = _Engine(lib, rate)
        return _ENGINE


class EspeakTTS:
    """Streams eSpeak NG speech one sentence at a time, with phoneme and word timings.

    Build it with :meth:`load`; then iterate :meth:`synthesize`.

    Attributes:
        name: "espeak".
        sample_rate: the engine's rate (22050 Hz).
        reports_timings: always True: every chunk carries phoneme timings, then word
            timings (``Timing.kind`` tells them apart).
    """

    name = "espeak"
    reports_timings = True

    def __init__(self, options: EspeakOptions, sample_rate: int) -> None:
        """Keep the options; most callers want :meth:`load`, which checks the engine."""
        self.options = options
        self.sample_rate = sample_rate

    @classmethod
    def load(cls, options: EspeakOptions | None = None) -> EspeakTTS:
        """Open the engine (once per process) and check that the voice exists.

        Raises:
            BackendUnavailableError: eSpeak NG is not installed (the message says how).
            ModelNotFoundError: the voice name is unknown.
        """
        options = options or EspeakOptions()
        engine = _engine()
        with engine.lock:
            engine.select(options)
        return cls(options, engine.sample_rate)

    async def synthesize(self, text: str) -> AsyncIterator[SpeechChunk]:
        """Speak ``text``, one chunk per sentence (``voice.sentences.split_sentences``).

        Empty or whitespace-only text, or text with no letters or digits, yields no
        chunk. Otherwise the last chunk has ``is_last=True``. Each sentence renders in a
        worker thread when the caller asks for it, so ``aclose()`` stops cleanly.

        Raises:
            BackendUnavailableError: the engine vanished since :meth:`load`.
            BackendError: the engine refused the text.
        """
        async for chunk in stream_by_sentence(text, self._render):
            yield chunk

    def _render(self, sentence: str, is_last: bool) -> SpeechChunk:
        samples, events = _engine().render(sentence, self.options)
        pcm = samples.astype(np.float32) / 32768.0
        duration = len(pcm) / self.sample_rate
        return SpeechChunk(
            pcm=pcm,
            sample_rate=self.sample_rate,
            text=sentence,
            timings=_timings(events, sentence, duration),
            is_last=is_last,
        )


def _timings(events: list[_RawEvent], text: str, duration: float) -> tuple[Timing, ...]:
    """Phoneme timings, then word timings, from eSpeak's events for one sentence."""
    marks = [(ms / 1000.0, name) for kind, ms, _, _, name in events if kind == _EVENT_PHONEME]
    phonemes: list[Timing] = []
    for i, (start, name) in enumerate(marks):
        if not name:  # a pause: it only ends the phoneme before it
            continue
        end = marks[i + 1][0] if i + 1 < len(marks) else duration
        start = min(start, duration)
        phonemes.append(Timing(name, "phoneme", start, min(max(end, start), duration)))

    spans: list[list] = []  # [start_seconds, first_char, end_char]
    for kind, ms, position, length, _ in events:
        if kind != _EVENT_WORD:
            continue
        first = max(position - 1, 0)
        if spans and first < spans[-1][2]:  # one written token spoken as several words
            spans[-1][2] = max(spans[-1][2], first + length)
        else:
            spans.append([min(ms / 1000.0, duration), first, first + length])
    words: list[Timing] = []
    for i, (start, first, last) in enumerate(spans):
        limit = spans[i + 1][0] if i + 1 < len(spans) else duration + 1.0
        own = [p for p in phonemes if start <= p.start < limit]
        word = text[first:last].strip()
        if word and own:  # a word spans its phonemes, so words never overlap
            words.append(Timing(word, "word", own[0].start, own[-1].end))
    return tuple(phonemes) + tuple(words)
