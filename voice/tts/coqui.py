"""Coqui XTTS-v2: speech in a cloned voice, only behind a voice consent.

Optional: ``pip install 'likeness[coqui]'`` installs ``coqui-tts``. The XTTS-v2 weights
are under the Coqui Public Model License (non-commercial); ``coqui-tts`` downloads them
on first use and asks the operator to accept that license (``COQUI_TOS_AGREED=1``).
This module never accepts it on anyone's behalf.

Consent: :meth:`CoquiTTS.load` asks the voice clone gate before it touches any model
file, and :meth:`CoquiTTS.synthesize` asks again before every sentence, so a revoked
grant stops a reply at the next sentence boundary.

Timings: XTTS does not expose an alignment, so chunks carry none
(``reports_timings`` is False); a consumer that needs mouth shapes derives them from
the audio.
"""

from __future__ import annotations

import threading
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from voice.errors import (
    AudioInputError,
    BackendError,
    BackendUnavailableError,
    ConsentRequiredError,
    ModelNotFoundError,
)
from voice.tts.base import (
    VoiceCloneGate,
    VoiceCloneRequest,
    deny_all_clones,
    stream_by_sentence,
)
from voice.types import SpeechChunk

XTTS_V2 = "tts_models/multilingual/multi-dataset/xtts_v2"


@dataclass(frozen=True, slots=True)
class CoquiOptions:
    """Which cloning model to run and whose voice to clone.

    Attributes:
        model: a Coqui model name (downloaded by ``coqui-tts`` into its cache) or the path
            of a local model folder holding ``config.json`` and the checkpoint.
        reference: a few seconds of clean speech of the person whose voice is cloned.
            Required; the consent gate is asked about exactly this recording.
        language: language of the text, as XTTS names it ("en", "de", "zh-cn", ...).
        device: torch device for the model ("cpu", "cuda", "cuda:1").
    """

    model: str = XTTS_V2
    reference: Path | None = None
    language: str = "en"
    device: str = "cpu"


class CoquiTTS:
    """Streams cloned-voice speech one sentence at a time, while consent holds.

    Build it with :meth:`load`. ``__init__`` only records the options and the gate.

    Attributes:
        name: "coqui".
        sample_rate: the model's output rate (24000 Hz for XTTS-v2); 0 until loaded.
        reports_timings: False: XTTS gives no alignment.
    """

    name = "coqui"
    reports_timings = False

    def __init__(
        self,
        options: CoquiOptions,
        *,
        clone_gate: VoiceCloneGate = deny_all_clones,
        voice_id: str | None = None,
        purpose: str = "companion",
    ) -> None:
        """Record what to load and the gate to ask; call :meth:`load` to get a usable one.

        Raises:
            AudioInputError: ``options.reference`` is not set.
        """
        if options.reference is None:
            raise AudioInputError(
                "CoquiOptions.reference is missing: a cloned voice needs a reference "
                "recording of the consenting person"
            )
        self.options = options
        self.sample_rate = 0
        self._gate = clone_gate
        self._request = VoiceCloneRequest(
            reference=Path(options.reference), voice_id=voice_id, purpose=purpose
        )
        self._engine: Any = None
        self._lock = threading.Lock()  # one generation at a time per model instance

    @classmethod
    def load(
        cls,
        options: CoquiOptions,
        clone_gate: VoiceCloneGate = deny_all_clones,
        voice_id: str | None = None,
        purpose: str = "companion",
    ) -> CoquiTTS:
        """Ask the gate, then load the model (blocking; minutes on a first download).

        Args:
            options: model, reference recording, language, device.
            clone_gate: returns True only where a valid voice grant covers the request.
                The default refuses every clone.
            voice_id: the avatar or subject whose voice this is, for the gate.
            purpose: the deployment or purpose scope, for the gate.

        Raises:
            ConsentRequiredError: the gate refused; nothing was loaded. Obtain a voice
                grant through the consent portal and pass the consent gate.
            AudioInputError: the reference recording is missing.
            BackendUnavailableError: ``coqui-tts`` is not installed.
            ModelNotFoundError: ``options.model`` is neither a model name nor a model folder.
            BackendError: the model failed to load.
        """
        backend = cls(options, clone_gate=clone_gate, voice_id=voice_id, purpose=purpose)
        if not backend._request.reference.is_file():  # the gate may hash the recording
            raise AudioInputError(f"Reference recording not found: {backend._request.reference}")
        backend._require_consent()
        try:
            from TTS.api import TTS
        except ImportError as err:
            raise BackendUnavailableError(
                "Coqui TTS is not installed: pip install 'likeness[coqui]'"
            ) from err
        model = Path(options.model)
        is_name = options.model.startswith("tts_models/")
        if not is_name and not (options.model and (model / "config.json").is_file()):
            raise ModelNotFoundError(
                f"Coqui model {options.model!r} is neither a model name (tts_models/...) nor "
                f"a folder with config.json; the default is {XTTS_V2!r}"
            )
        try:
            if is_name:
                engine = TTS(model_name=options.model, progress_bar=False)
            else:
                engine = TTS(
                    model_path=str(model),
                    config_path=str(model / "config.json"),
                    progress_bar=False,
                )
            backend._engine = engine.to(options.device)
        except Exception as err:  # coqui and torch raise many unrelated types
            raise BackendError(f"Coqui could not load {options.model}: {err}") from err
        backend.sample_rate = int(backend._engine.synthesizer.output_sample_rate)
        return backend

    def _require_consent(self) -> None:
        if not self._gate(self._request):
            raise ConsentRequiredError(
                f"No voice consent for {self._request.voice_id or 'this voice'} "
                f"({self._request.reference.name}, purpose {self._request.purpose!r}): "
                "a voice grant is needed before this voice is cloned"
            )

    async def synthesize(self, text: str) -> AsyncIterator[SpeechChunk]:
        """Speak ``text`` in the cloned voice, one chunk per sentence.

        The consent gate is asked before each sentence; empty text yields no chunk.

        Raises:
            ConsentRequiredError: the grant is missing or was revoked; stop the reply.
            BackendError: not loaded (use :meth:`load`), or the model failed.
        """
        async for chunk in stream_by_sentence(text, self._render, self._require_consent):
            yield chunk

    def _render(self, sentence: str, is_last: bool) -> SpeechChunk:
        if self._engine is None:
            raise BackendError("CoquiTTS is not loaded: build it with CoquiTTS.load()")
        try:
            with self._lock:
                wav = self._engine.tts(
                    text=sentence,
                    speaker_wav=str(self._request.reference),
                    language=self.options.language,
                )
        except Exception as err:  # coqui and torch raise many unrelated types
            raise BackendError(f"Coqui failed on {sentence!r}: {err}") from err
        pcm = np.clip(np.asarray(wav, dtype=np.float32).reshape(-1), -1.0, 1.0)
        return SpeechChunk(pcm=pcm, sample_rate=self.sample_rate, text=sentence, is_last=is_last)
