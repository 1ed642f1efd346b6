"""Voice: VAD, ASR, TTS backends, resampling and spoken-digit parsing.

This package imports none of likeness's other packages: it takes and returns
audio, text and timings (``voice.types``), never pipeline or consent objects.
"""

from voice.errors import VoiceError

__all__ = ["VoiceError"]
