"""Chunked motion generation: the chunk schedule, per-chunk noise, one-shot and streaming.

Motion is generated in chunks of ``K`` video frames. Chunk ``i`` covers frames
``[i·K, (i+1)·K)`` and is a function of exactly:

- the seed and ``i`` (its noise comes from a ``torch.Generator`` seeded with
  :func:`chunk_seed`, drawn on the CPU in float32);
- its audio window: mel rows ``[(i·K − C − A)·m, ((i+1)·K + L)·m)`` (``C`` context frames,
  ``A`` = the audio encoder's receptive field − 1, ``L`` look-ahead frames, ``m`` mel rows
  per frame), rows outside the audio given read as silence (``SILENCE_LOG_MEL``), and the
  viseme ids of the same frames (0 outside);
- the context: the last ``C`` frames generated before it (the given initial context for
  chunk 0);
- the identity tokens, the model's weights and the sampler's options.

So a chunk never depends on audio after its look-ahead (causality), and
:func:`generate_motion` (one shot: it runs this same schedule over all the audio) and
:class:`MotionStream` (chunk by chunk as audio arrives) give **bit-identical** codes for
the same seed, context, audio and batch size, on the same device and thread settings.
When the audio ends (``flush``), the frames past its end are silence, exactly as one shot
sees them. The window has a fixed size, so every call has static shapes (for export).
"""

from __future__ import annotations

import hashlib
import math
from dataclasses import dataclass
from typing import Protocol

import torch
from torch import Tensor

from avatar.models.audio_encoder import SILENCE_LOG_MEL
from avatar.models.chunk import ChunkModel, ChunkSampler, chunk_codes
from avatar.models.config import GeneratorConfig
from avatar.models.errors import ModelInputError

MotionModel = ChunkModel
"""What chunked generation needs of a model (``DualBranchGenerator`` fits)."""


class MotionSampler(ChunkSampler, Protocol):
    """A flow-matching sampler (``FlowMatchingTeacher`` or ``FlowMatchingStudent``)."""

    guidance_embedded: bool


@dataclass(frozen=True, slots=True)
class ChunkLayout:
    """Frame arithmetic of the chunk schedule (all counts in video frames unless named).

    Attributes:
        chunk_frames: K.
        context_frames: C.
        lookahead_frames: L.
        audio_context_frames: A, extra audio before the context (receptive field − 1).
        mel_per_frame: m, mel rows per video frame.
        n_mels: mel bins.
    """

    chunk_frames: int
    context_frames: int
    lookahead_frames: int
    audio_context_frames: int
    mel_per_frame: int
    n_mels: int

    @classmethod
    def from_config(cls, config: GeneratorConfig) -> ChunkLayout:
        """The layout a generator config implies."""
        d = config.dit
        return cls(
            d.chunk_frames,
            d.context_frames,
            d.lookahead_frames,
            config.audio_context_frames,
            config.audio.mel_per_frame,
            config.audio.n_mels,
        )

    @property
    def window_frames(self) -> int:
        """Frames of audio one chunk reads (A + C + K + L)."""
        return (
            self.audio_context_frames
            + self.context_frames
            + self.chunk_frames
            + self.lookahead_frames
        )

    def window_start(self, index: int) -> int:
        """First frame of chunk ``index``'s audio window (negative before the audio)."""
        return index * self.chunk_frames - self.context_frames - self.audio_context_frames

    def window_end(self, index: int) -> int:
        """One past the last frame chunk ``index`` may hear: its end plus the look-ahead."""
        return (index + 1) * self.chunk_frames + self.lookahead_frames

    def mel_needed(self, index: int) -> int:
        """Mel rows that must have arrived before chunk ``index`` can be generated."""
        return self.window_end(index) * self.mel_per_frame

    def n_chunks(self, n_frames: int) -> int:
        """Chunks needed to cover ``n_frames`` frames."""
        return math.ceil(n_frames / self.chunk_frames)


def chunk_seed(seed: int, index: int) -> int:
    """The noise seed of chunk ``index`` of a generation seeded with ``seed``."""
    digest = hashlib.sha256(f"likeness.motion:{seed}:{index}".encode()).digest()
    return int.from_bytes(digest[:8], "little") & ((1 << 63) - 1)


def chunk_noise(
    seed: int, index: int, shape: tuple[int, ...], device: torch.device | str, dtype: torch.dtype
) -> Tensor:
    """Chunk ``index``'s starting noise: drawn on the CPU in float32, then moved."""
    g = torch.Generator(device="cpu").manual_seed(chunk_seed(seed, index))
    return torch.randn(shape, generator=g, dtype=torch.float32).to(device=device, dtype=dtype)


def _rows(signal: Tensor, offset: int, start: int, length: int, fill: float) -> Tensor:
    """Rows ``[start, start + length)`` of a signal held from row ``offset`` on; ``fill``
    where it holds nothing."""
    n = signal.shape[1]
    out = signal.new_full((signal.shape[0], length, *signal.shape[2:]), fill)
    lo, hi = max(start, offset), min(start + length, offset + n)
    if hi > lo:
        out[:, lo - start : hi - start] = signal[:, lo - offset : hi - offset]
    return out


def sample_chunk(
    model: MotionModel,
    sampler: MotionSampler,
    *,
    mel_window: Tensor,
    viseme_window: Tensor | None,
    context: Tensor,
    id_tokens: Tensor,
    seed: int,
    index: int,
) -> Tensor:
    """Generate chunk ``index`` from its audio window and context (its seeded noise, then
    :func:`avatar.models.chunk.chunk_codes`, the one chunk every runtime runs).

    Args:
        model: the generator (its audio encoder and motion transformer are used).
        sampler: teacher or student sampler; must match the transformer's kind.
        mel_window: [B, window_frames·m, n_mels] (see the module doc for its rows).
        viseme_window: [B, window_frames] int64, or None.
        context: the previous C frames' motion codes [B, C, code_dim].
        id_tokens: [B, N, token_dim].
        seed: the generation's seed.
        index: the chunk's index.

    Returns:
        Motion codes [B, K, code_dim]; append them to the context for the next chunk.
    """
    shape = (mel_window.shape[0], model.config.dit.chunk_frames, model.config.code_dim)
    return chunk_codes(
        model,
        sampler,
        mel=mel_window,
        visemes=viseme_window,
        context=context,
        id_tokens=id_tokens,
        noise=chunk_noise(seed, index, shape, mel_window.device, mel_window.dtype),
    )


def _check_inputs(
    config: GeneratorConfig,
    mel: Tensor | None,
    visemes: Tensor | None,
    context: Tensor,
    id_tokens: Tensor,
) -> int:
    """Check shapes and values; returns the batch size."""
    b = context.shape[0]
    c, dim = config.dit.context_frames, config.code_dim
    if context.ndim != 3 or tuple(context.shape[1:]) != (c, dim):
        raise ModelInputError(
            f"context must be [B, {c}, {dim}] motion codes (e.g. the avatar's source code "
            f"repeated {c} times), got {list(context.shape)}"
        )
    if id_tokens.ndim != 3 or id_tokens.shape[0] != b:
        raise ModelInputError(
            f"id_tokens must be [{b}, N, token_dim] like the context's batch, "
            f"got {list(id_tokens.shape)}"
        )
    n_mels = config.audio.n_mels
    if mel is not None and (mel.ndim != 3 or mel.shape[0] != b or mel.shape[2] != n_mels):
        raise ModelInputError(f"mel must be [{b}, T_mel, {n_mels}] log-mel, got {list(mel.shape)}")
    if mel is not None and not mel.is_floating_point():
        raise ModelInputError(f"mel must be floating point, got {mel.dtype}")
    if visemes is not None:
        if visemes.ndim != 2 or visemes.shape[0] != b or visemes.dtype != torch.int64:
            raise ModelInputError(
                f"visemes must be [{b}, T] int64 ids, got {list(visemes.shape)} {visemes.dtype}"
            )
        top = config.audio.n_visemes - 1
        if visemes.numel() and (int(visemes.min()) < 0 or int(visemes.max()) > top):
            raise ModelInputError(f"viseme ids must be in [0, {top}] (0 = silence)")
    return b


def generate_motion(
    model: MotionModel,
    sampler: MotionSampler,
    mel: Tensor,
    id_tokens: Tensor,
    *,
    seed: int,
    context: Tensor,
    visemes: Tensor | None = None,
    n_frames: int | None = None,
) -> Tensor:
    """Generate motion for a whole utterance (one shot) by running the chunk schedule.

    Call it under ``torch.inference_mode()`` unless you train through it.

    Args:
        model: the generator.
        sampler: teacher or student sampler.
        mel: [B, T_mel, n_mels] log-mel of the speech.
        id_tokens: the avatar's identity tokens [B, N, token_dim].
        seed: noise seed; same seed, same result.
        context: motion codes before the first frame [B, C, code_dim].
        visemes: optional viseme ids per video frame [B, T] int64.
        n_frames: frames to generate; ``T_mel // mel_per_frame`` when None.

    Returns:
        Motion codes [B, n_frames, code_dim].

    Raises:
        ModelInputError: a tensor of the wrong shape, type or values, or no frames.
    """
    config = model.config
    _check_inputs(config, mel, visemes, context, id_tokens)
    layout = ChunkLayout.from_config(config)
    m, w = layout.mel_per_frame, layout.window_frames
    total = mel.shape[1] // m if n_frames is None else n_frames
    if total < 1:
        raise ModelInputError(f"no frames to generate: {mel.shape[1]} mel rows, n_frames={total}")
    chunks = []
    for index in range(layout.n_chunks(total)):
        start = layout.window_start(index)
        chunk = sample_chunk(
            model,
            sampler,
            mel_window=_rows(mel, 0, start * m, w * m, SILENCE_LOG_MEL),
            viseme_window=None if visemes is None else _rows(visemes, 0, start, w, 0),
            context=context,
            id_tokens=id_tokens,
            seed=seed,
            index=index,
        )
        chunks.append(chunk)
        context = torch.cat([context, chunk], dim=1)[:, -layout.context_frames :]
    return torch.cat(chunks, dim=1)[:, :total]


class MotionStream:
    """Chunk-by-chunk motion generation as audio arrives (same result as one shot).

    ::

        stream = MotionStream(gen, sampler, avatar.id_tokens, seed=7, context=ctx)
        for mel_piece in features:                 # any number of mel rows at a time
            for chunk in stream.push(mel_piece):   # [B, K, code_dim] as soon as covered
                ...
        for chunk in stream.flush():               # end of speech: the rest, last one cut
            ...

    Args:
        model: the generator.
        sampler: teacher or student sampler.
        id_tokens: the avatar's identity tokens [B, N, token_dim].
        seed: noise seed.
        context: motion codes before the first frame [B, C, code_dim].
        with_visemes: True if every push carries viseme ids.
    """

    def __init__(
        self,
        model: MotionModel,
        sampler: MotionSampler,
        id_tokens: Tensor,
        *,
        seed: int,
        context: Tensor,
        with_visemes: bool = False,
    ):
        config = model.config
        self._batch = _check_inputs(config, None, None, context, id_tokens)
        self._model, self._sampler = model, sampler
        self._id_tokens, self._seed, self._context = id_tokens, seed, context
        self._layout = ChunkLayout.from_config(config)
        self._with_visemes = with_visemes
        self._mel = context.new_zeros((self._batch, 0, config.audio.n_mels))
        self._mel_offset = 0  # absolute mel row of self._mel[:, 0]
        self._vis = torch.zeros((self._batch, 0), dtype=torch.int64, device=context.device)
        self._vis_offset = 0
        self._next = 0
        self._closed = False

    @property
    def next_index(self) -> int:
        """Index of the next chunk this stream will produce."""
        return self._next

    @property
    def mel_rows(self) -> int:
        """Mel rows pushed so far."""
        return self._mel_offset + self._mel.shape[1]

    def push(self, mel: Tensor, visemes: Tensor | None = None) -> list[Tensor]:
        """Add audio; returns every chunk whose audio (with look-ahead) has now arrived.

        Args:
            mel: [B, n, n_mels], the next ``n`` mel rows (n may be 0).
            visemes: the next viseme ids [B, n_v] int64, iff ``with_visemes``.

        Raises:
            ModelInputError: after :meth:`flush`, or inputs that do not fit.
        """
        if self._closed:
            raise ModelInputError("this MotionStream was flushed; start a new one")
        if (visemes is not None) != self._with_visemes:
            need = "needs" if self._with_visemes else "takes no"
            raise ModelInputError(f"this MotionStream {need} visemes (with_visemes)")
        _check_inputs(self._model.config, mel, visemes, self._context, self._id_tokens)
        self._mel = torch.cat([self._mel, mel], dim=1)
        if visemes is not None:
            self._vis = torch.cat([self._vis, visemes], dim=1)
        out = []
        while self._ready(self._next):
            out.append(self._emit())
        return out

    def flush(self) -> list[Tensor]:
        """End of the audio: returns the remaining chunks (the last one cut to the audio's
        end) and closes the stream. Frames past the audio hear silence."""
        if self._closed:
            return []
        self._closed = True
        total = self.mel_rows // self._layout.mel_per_frame
        out = []
        while self._next < self._layout.n_chunks(total):
            start = self._next * self._layout.chunk_frames
            out.append(self._emit()[:, : total - start])
        return out

    def _ready(self, index: int) -> bool:
        if self.mel_rows < self._layout.mel_needed(index):
            return False
        seen = self._vis_offset + self._vis.shape[1]
        return not self._with_visemes or seen >= self._layout.window_end(index)

    def _emit(self) -> Tensor:
        layout, index = self._layout, self._next
        m, w, start = layout.mel_per_frame, layout.window_frames, layout.window_start(index)
        chunk = sample_chunk(
            self._model,
            self._sampler,
            mel_window=_rows(self._mel, self._mel_offset, start * m, w * m, SILENCE_LOG_MEL),
            viseme_window=_rows(self._vis, self._vis_offset, start, w, 0)
            if self._with_visemes
            else None,
            context=self._context,
            id_tokens=self._id_tokens,
            seed=self._seed,
            index=index,
        )
        self._context = torch.cat([self._context, chunk], dim=1)[:, -layout.context_frames :]
        self._next += 1
        # Drop audio that no later window reads.
        keep_from = max(layout.window_start(self._next), 0)
        drop = min(keep_from * m - self._mel_offset, self._mel.shape[1])
        if drop > 0:
            self._mel, self._mel_offset = self._mel[:, drop:], self._mel_offset + drop
        drop = min(keep_from - self._vis_offset, self._vis.shape[1])
        if drop > 0:
            self._vis, self._vis_offset = self._vis[:, drop:], self._vis_offset + drop
        return chunk
