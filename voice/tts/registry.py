"""Build a TTS backend by name, and say which backends can run here.

Names: "piper" (embedded default, phoneme timings), "espeak" (system eSpeak NG, phoneme
and word timings), "coqui" (optional cloned voice, behind a voice consent gate).
"""

from __future__ import annotations

import importlib.util
from typing import Any

from voice.errors import VoiceError
from voice.tts.base import TTSBackend

BACKENDS = ("piper", "espeak", "coqui")


class UnknownBackendError(VoiceError, ValueError):
    """No TTS backend has that name; the message lists the names there are."""


def load_tts(name: str, options: object | None = None, **kw: Any) -> TTSBackend:
    """Build and load the backend ``name`` (blocking: run it off the event loop).

    Args:
        name: "piper", "espeak" or "coqui".
        options: that backend's options dataclass (``PiperOptions``, ``EspeakOptions``,
            ``CoquiOptions``); None uses its defaults.
        **kw: only for "coqui": ``clone_gate``, ``voice_id``, ``purpose``
            (see :meth:`voice.tts.coqui.CoquiTTS.load`).

    Returns:
        A loaded backend, ready for ``synthesize``.

    Raises:
        UnknownBackendError: ``name`` is not one of :data:`BACKENDS`.
        TypeError: ``options`` belong to another backend, or ``kw`` given to a backend
            that takes none.
        voice.errors.VoiceError: whatever the backend's ``load`` raises (missing model,
            missing package, refused consent), with a message that says what to do.
    """
    key = name.strip().lower()
    if key == "piper":
        from voice.tts.piper import PiperOptions, PiperTTS

        _no_extra(key, kw)
        return PiperTTS.load(_options(key, options, PiperOptions))
    if key == "espeak":
        from voice.tts.espeak import EspeakOptions, EspeakTTS

        _no_extra(key, kw)
        return EspeakTTS.load(_options(key, options, EspeakOptions))
    if key == "coqui":
        from voice.tts.coqui import CoquiOptions, CoquiTTS

        return CoquiTTS.load(_options(key, options, CoquiOptions), **kw)
    raise UnknownBackendError(f"Unknown TTS backend {name!r}: choose one of {', '.join(BACKENDS)}")


def _options(name: str, options: object | None, kind: type) -> Any:
    if options is None:
        return kind()
    if not isinstance(options, kind):
        raise TypeError(f"TTS backend {name!r} takes {kind.__name__}, not {type(options).__name__}")
    return options


def _no_extra(name: str, kw: dict[str, Any]) -> None:
    if kw:
        raise TypeError(f"TTS backend {name!r} takes no {', '.join(sorted(kw))}")


def available_backends() -> dict[str, str]:
    """Say, for each backend, whether it can run here and why not, without loading models.

    Returns:
        name -> a line starting with "ready" or "unavailable:", for a doctor command.
    """
    return {"piper": _piper_status(), "espeak": _espeak_status(), "coqui": _coqui_status()}


def _piper_status() -> str:
    if importlib.util.find_spec("piper") is None:
        return "unavailable: pip install piper-tts"
    from voice.errors import ModelNotFoundError
    from voice.tts.piper import default_model_path

    try:
        model = default_model_path()
    except ModelNotFoundError as err:
        return f"unavailable: {err}"
    if importlib.util.find_spec("onnx") is None:
        return f"ready ({model.stem}; no timings: pip install 'piper-tts[alignment]')"
    return f"ready ({model.stem}, phoneme timings)"


def _espeak_status() -> str:
    from voice.tts.espeak import _engine

    try:
        engine = _engine()
    except VoiceError as err:
        return f"unavailable: {err}"
    return f"ready (libespeak-ng, {engine.sample_rate} Hz, phoneme and word timings)"


def _coqui_status() -> str:
    if importlib.util.find_spec("TTS") is None:
        return "unavailable: pip install 'likeness[coqui]'"
    return "ready (cloned voices need a voice consent grant)"
