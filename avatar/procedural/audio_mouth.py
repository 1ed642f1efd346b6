"""Mouth motion from the speech audio itself, for speech that comes without timings.

The audio is cut into 10 ms hops as it arrives (any chunk size; a chunk's
leftover samples wait for the next one). For every hop we keep its energy and
two spectral hints over a 20 ms window: the centroid of the spectrum below
5 kHz (low for rounded vowels such as "oo", high for spread ones such as "ee")
and the share of energy above 3.5 kHz (hiss: s, sh, f). A frame at time ``t``
looks at the hops around ``t + lead`` (the lips move slightly before the sound),
turns their energy into decibels against a running peak, and maps that to an
opening between 0 and 1, smoothed so that the mouth opens fast and closes a
little slower. The running peak makes loud and quiet voices open alike.

A frame needs the audio up to ``t + lead + window / 2``; :attr:`AudioMouth.covered`
says how far the pushed audio goes, so a streaming caller knows when a frame is
ready. Frames must be asked for in increasing time (the smoothing carries state).
"""

from __future__ import annotations

import math

import numpy as np

HOP_S = 0.01


class AudioMouth:
    """Streaming audio analysis for one speech segment.

    Args:
        sample_rate: rate of every chunk given to :meth:`push`.
        lead: how far ahead of a frame's time the analysis is centred (seconds).
        window: length of the analysis around that centre (seconds).
    """

    def __init__(self, sample_rate: int, lead: float = 0.02, window: float = 0.04) -> None:
        self.sample_rate = int(sample_rate)
        self.lead = lead
        self.window = window
        self.hop = max(1, round(self.sample_rate * HOP_S))
        self.hop_s = self.hop / self.sample_rate
        self._pending = np.zeros(0, np.float32)
        self._previous = np.zeros(self.hop, np.float32)
        self._fft_n = 1 << int(math.ceil(math.log2(2 * self.hop)))
        freqs = np.fft.rfftfreq(self._fft_n, 1.0 / self.sample_rate)
        self._band = (freqs >= 80) & (freqs <= 5000)
        self._band_freqs = freqs[self._band]
        self._high = freqs >= 3500
        self._voice = freqs >= 80
        self._window = np.hanning(2 * self.hop).astype(np.float32)
        # Per hop: mean square, spectral centroid (Hz), high-frequency share.
        self._stats = np.zeros((0, 3), np.float32)
        self._first_hop = 0  # index of the first hop still kept in _stats
        self._ref_db = -22.0
        self._state = np.zeros(3, np.float32)  # smoothed open, wide, round
        self._last_t: float | None = None

    @property
    def covered(self) -> float:
        """Seconds of audio analysed so far (whole hops)."""
        return (self._first_hop + len(self._stats)) * self.hop_s

    def push(self, pcm: np.ndarray) -> None:
        """Analyse more audio (mono float32 at :attr:`sample_rate`)."""
        data = np.concatenate([self._pending, np.asarray(pcm, np.float32).reshape(-1)])
        count = len(data) // self.hop
        self._pending = data[count * self.hop :]
        if count == 0:
            return
        hops = data[: count * self.hop].reshape(count, self.hop)
        frames = np.concatenate([np.vstack([self._previous, hops[:-1]]), hops], axis=1)
        self._previous = hops[-1].copy()
        spectrum = np.abs(np.fft.rfft(frames * self._window, self._fft_n, axis=1)) ** 2
        band = spectrum[:, self._band]
        band_sum = band.sum(axis=1) + 1e-12
        centroid = (band * self._band_freqs).sum(axis=1) / band_sum
        high = spectrum[:, self._high].sum(axis=1) / (spectrum[:, self._voice].sum(axis=1) + 1e-12)
        stats = np.stack([np.mean(hops * hops, axis=1), centroid, high], 1).astype(np.float32)
        self._stats = np.concatenate([self._stats, stats])

    def frame(self, t: float) -> np.ndarray:
        """Mouth values for the frame at ``t`` seconds into the segment.

        Returns:
            float32 array (open, wide, round, activity), each 0..1; ``activity`` is
            how clearly the voice is sounding (0 in silence).
        """
        dt = 0.04 if self._last_t is None else max(t - self._last_t, 1e-3)
        self._last_t = t
        centre = t + self.lead
        lo = int(math.floor((centre - self.window / 2) / self.hop_s))
        hi = int(math.ceil((centre + self.window / 2) / self.hop_s))
        idx = np.arange(max(lo, self._first_hop), min(hi, self._first_hop + len(self._stats)))
        if len(idx):
            mid = (idx + 0.5) * self.hop_s
            w = np.clip(1.0 - np.abs(mid - centre) / (self.window / 2 + self.hop_s), 0.05, 1.0)
            rows = self._stats[idx - self._first_hop]
            power = float(np.sum(w * rows[:, 0]) / np.sum(w) * len(idx) / max(hi - lo, 1))
            loud = w * rows[:, 0]
            centroid = float(np.sum(loud * rows[:, 1]) / (np.sum(loud) + 1e-12))
            high = float(np.sum(loud * rows[:, 2]) / (np.sum(loud) + 1e-12))
        else:
            power, centroid, high = 0.0, 1000.0, 0.0
        self._forget(lo - 8)
        db = 10.0 * math.log10(power + 1e-10)
        # A running peak, falling 6 dB a second, never below -40 dBFS.
        self._ref_db = max(db, self._ref_db - 6.0 * dt, -40.0)
        level = (db - (self._ref_db - 24.0)) / 24.0
        activity = min(max((db - (self._ref_db - 32.0)) / 12.0, 0.0), 1.0)
        opening = min(max(level, 0.0), 1.0) ** 1.5 if db > -62.0 else 0.0
        hiss = min(max((high - 0.25) / 0.4, 0.0), 1.0)
        opening *= 1.0 - 0.55 * hiss  # fricatives: teeth nearly together
        voiced = activity * (1.0 - hiss)
        rounding = min(max((1150.0 - centroid) / 600.0, 0.0), 1.0) * voiced
        spread = min(max((centroid - 1500.0) / 1400.0, 0.0), 1.0) * (0.4 + 0.6 * voiced) * 0.8
        target = np.array([opening, spread * activity, rounding], np.float32)
        tau = np.where(target > self._state, 0.02, 0.06).astype(np.float32)
        tau[1:] = 0.07
        alpha = 1.0 - np.exp(-dt / tau)
        self._state += alpha * (target - self._state)
        return np.array([*self._state, activity], np.float32)

    def _forget(self, before_hop: int) -> None:
        """Drop hop statistics older than ``before_hop`` (frames only move forward)."""
        drop = before_hop - self._first_hop
        if drop > 64:
            self._stats = self._stats[drop:]
            self._first_hop += drop
