"""Mouth shapes (visemes) from phoneme or word timings.

A :class:`MouthShape` is five numbers the renderer understands: how far the jaw is
open, how much the lips stretch sideways or round forward, whether they are
pressed together (p, b, m) and whether the lower lip touches the upper teeth
(f, v). The table maps IPA symbols, as Piper and eSpeak NG write them, to shapes;
ARPAbet symbols ("AA1", "M") are mapped to IPA first. When only word timings are
known, a rough letter-to-sound guess spreads each word's time over its sounds.

:class:`VisemeTrack` collects timings as chunks arrive and answers the shape at
any time with a little coarticulation: each sound pulls the mouth towards its
shape with a weight that falls off outside its interval, and bilabial closures
and lip-to-teeth contacts win where they sound.
"""

from __future__ import annotations

import math
import unicodedata
from collections.abc import Iterable
from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True, slots=True)
class MouthShape:
    """A mouth pose; every field is 0 at rest.

    Attributes:
        open: jaw opening, 0 (closed) to 1 (wide open, as in "ah").
        wide: lips stretched sideways (as in "ee"), 0 to 1.
        round: lips rounded and pushed forward (as in "oo"), 0 to 1.
        press: lips pressed together (p, b, m), 0 to 1; it closes the mouth.
        teeth: lower lip against the upper teeth (f, v), 0 to 1.
    """

    open: float = 0.0
    wide: float = 0.0
    round: float = 0.0
    press: float = 0.0
    teeth: float = 0.0

    def as_array(self) -> np.ndarray:
        return np.array([self.open, self.wide, self.round, self.press, self.teeth], np.float32)

    @classmethod
    def from_array(cls, values: np.ndarray) -> MouthShape:
        v = np.clip(np.asarray(values, np.float64), 0.0, 1.0)
        return cls(float(v[0]), float(v[1]), float(v[2]), float(v[3]), float(v[4]))


REST = MouthShape()


def _s(open_: float, wide: float = 0.0, round_: float = 0.0, press: float = 0.0, teeth=0.0):
    return MouthShape(open_, wide, round_, press, teeth)


# IPA symbol -> (shape, dominance). Dominance is how strongly a sound holds its shape
# against its neighbours (lip closures and rounding hold, tongue-only sounds yield).
VISEMES: dict[str, tuple[MouthShape, float]] = {
    # open and central vowels
    "a": (_s(0.95, 0.25), 1.0),
    "ɑ": (_s(1.0, 0.1), 1.0),
    "æ": (_s(0.85, 0.45), 1.0),
    "ä": (_s(0.95, 0.2), 1.0),
    "ɐ": (_s(0.6, 0.15), 0.8),
    "ʌ": (_s(0.62, 0.15), 0.8),
    "ə": (_s(0.42, 0.1), 0.6),
    "ɚ": (_s(0.38, 0.0, 0.35), 0.7),
    "ɝ": (_s(0.42, 0.0, 0.4), 0.8),
    "ɜ": (_s(0.45, 0.05, 0.25), 0.8),
    # front vowels: lips spread
    "ɛ": (_s(0.6, 0.5), 0.9),
    "e": (_s(0.45, 0.6), 0.9),
    "ɪ": (_s(0.32, 0.65), 0.8),
    "i": (_s(0.22, 0.85), 0.9),
    "ɨ": (_s(0.25, 0.5), 0.8),
    "y": (_s(0.2, 0.0, 0.9), 1.0),
    # back vowels: lips rounded
    "ɔ": (_s(0.7, 0.0, 0.55), 1.0),
    "ɒ": (_s(0.85, 0.0, 0.4), 1.0),
    "o": (_s(0.48, 0.0, 0.8), 1.0),
    "ʊ": (_s(0.3, 0.0, 0.75), 0.9),
    "u": (_s(0.22, 0.0, 1.0), 1.1),
    "ɯ": (_s(0.25, 0.3), 0.8),
    # consonants
    "p": (_s(0.0, 0.0, 0.0, 1.0), 3.0),
    "b": (_s(0.0, 0.0, 0.0, 1.0), 3.0),
    "m": (_s(0.0, 0.0, 0.0, 1.0), 3.0),
    "f": (_s(0.08, 0.2, 0.0, 0.0, 1.0), 2.5),
    "v": (_s(0.08, 0.2, 0.0, 0.0, 1.0), 2.5),
    "θ": (_s(0.16, 0.2, 0.0, 0.0, 0.4), 1.4),
    "ð": (_s(0.16, 0.2, 0.0, 0.0, 0.4), 1.2),
    "s": (_s(0.1, 0.55), 1.4),
    "z": (_s(0.1, 0.5), 1.3),
    "ʃ": (_s(0.18, 0.0, 0.65), 1.6),
    "ʒ": (_s(0.18, 0.0, 0.6), 1.5),
    "tʃ": (_s(0.16, 0.0, 0.6), 1.6),
    "dʒ": (_s(0.16, 0.0, 0.55), 1.5),
    "w": (_s(0.12, 0.0, 0.95), 1.8),
    "ʍ": (_s(0.12, 0.0, 0.95), 1.8),
    "j": (_s(0.2, 0.55), 0.9),
    "ɹ": (_s(0.22, 0.0, 0.45), 1.0),
    "r": (_s(0.25, 0.0, 0.3), 0.9),
    "ɾ": (_s(0.28, 0.2), 0.5),
    "l": (_s(0.3, 0.2), 0.6),
    "ɫ": (_s(0.3, 0.1, 0.2), 0.6),
    "t": (_s(0.18, 0.3), 0.7),
    "d": (_s(0.2, 0.3), 0.6),
    "n": (_s(0.2, 0.25), 0.6),
    "k": (_s(0.3, 0.15), 0.5),
    "g": (_s(0.3, 0.15), 0.5),
    "ɡ": (_s(0.3, 0.15), 0.5),
    "ŋ": (_s(0.28, 0.15), 0.5),
    "x": (_s(0.3, 0.1), 0.5),
    "h": (_s(0.4, 0.1), 0.3),
    "ʔ": (_s(0.15), 0.4),
}

# ARPAbet (CMUdict) -> IPA, for backends that speak ARPAbet.
ARPABET = {
    "AA": "ɑ", "AE": "æ", "AH": "ʌ", "AO": "ɔ", "AW": "aʊ", "AX": "ə", "AXR": "ɚ", "AY": "aɪ",
    "B": "b", "CH": "tʃ", "D": "d", "DH": "ð", "DX": "ɾ", "EH": "ɛ", "ER": "ɝ", "EY": "eɪ",
    "F": "f", "G": "ɡ", "HH": "h", "IH": "ɪ", "IX": "ɨ", "IY": "i", "JH": "dʒ", "K": "k",
    "L": "l", "M": "m", "N": "n", "NG": "ŋ", "OW": "oʊ", "OY": "ɔɪ", "P": "p", "R": "ɹ",
    "S": "s", "SH": "ʃ", "T": "t", "TH": "θ", "UH": "ʊ", "UW": "u", "V": "v", "W": "w",
    "Y": "j", "Z": "z", "ZH": "ʒ",
}  # fmt: skip

_IGNORED = set("ˈˌːˑ.‿͜͡ ")
_NEUTRAL = (_s(0.25, 0.1), 0.5)
_KEYS_BY_LENGTH = sorted(VISEMES, key=len, reverse=True)


def plain_ipa(symbol: str) -> str:
    """One phoneme symbol as bare IPA: an ARPAbet symbol ("AY1") read as its IPA
    equivalent, stress and length marks, ties and diacritics removed, ASCII lower-cased."""
    text = symbol.strip()
    arpa = text.rstrip("012").upper()
    if arpa in ARPABET and text[:1].isupper():
        text = ARPABET[arpa]
    text = "".join(
        ch for ch in unicodedata.normalize("NFD", text)
        if ch not in _IGNORED and not unicodedata.combining(ch)
    )  # fmt: skip
    return text.lower() if text.isascii() else text


def phoneme_shapes(symbol: str) -> list[tuple[MouthShape, float]]:
    """The shape(s) of one phoneme symbol, in order (diphthongs give two).

    Stress and length marks and diacritics are ignored; an ARPAbet symbol is read
    as its IPA equivalent; an unknown symbol gives a neutral half-open shape.
    """
    text = plain_ipa(symbol)
    out: list[tuple[MouthShape, float]] = []
    i = 0
    while i < len(text):
        for key in _KEYS_BY_LENGTH:
            if text.startswith(key, i):
                out.append(VISEMES[key])
                i += len(key)
                break
        else:
            i += 1  # a symbol we do not know: skip it
    return out or ([_NEUTRAL] if text else [])


# A rough spelling-to-sound guess, for word timings only. Longest match first.
_LETTERS = {
    "tch": "tʃ", "igh": "aɪ", "ough": "oʊ",
    "th": "θ", "sh": "ʃ", "ch": "tʃ", "ph": "f", "wh": "w", "ng": "ŋ", "ck": "k", "qu": "kw",
    "oo": "u", "ee": "i", "ea": "i", "ie": "i", "ou": "aʊ", "ow": "aʊ", "oa": "o", "ai": "eɪ",
    "ay": "eɪ", "oi": "ɔɪ", "oy": "ɔɪ", "au": "ɔ", "aw": "ɔ", "ew": "ju", "er": "ɚ", "ar": "ɑɹ",
    "or": "ɔɹ", "ir": "ɝ", "ur": "ɝ",
    "a": "æ", "e": "ɛ", "i": "ɪ", "o": "ɑ", "u": "ʌ", "y": "i",
    "b": "b", "c": "k", "d": "d", "f": "f", "g": "ɡ", "h": "h", "j": "dʒ", "k": "k", "l": "l",
    "m": "m", "n": "n", "p": "p", "q": "k", "r": "ɹ", "s": "s", "t": "t", "v": "v", "w": "w",
    "x": "ks", "z": "z",
}  # fmt: skip
_LETTER_KEYS = sorted(_LETTERS, key=len, reverse=True)
_VOWEL_LETTERS = set("aeiouy")


def word_sounds(word: str) -> list[tuple[str, float]]:
    """Guess the sounds of a written word: (IPA, relative duration) pairs.

    Vowels count double. A silent final "e" is dropped. Non-letters are ignored.
    """
    text = "".join(ch for ch in word.lower() if ch.isalpha())
    if len(text) > 2 and text.endswith("e") and text[-2] not in _VOWEL_LETTERS:
        text = text[:-1]
    out: list[tuple[str, float]] = []
    i = 0
    while i < len(text):
        for key in _LETTER_KEYS:
            if text.startswith(key, i):
                out.append((_LETTERS[key], 2.0 if key[0] in _VOWEL_LETTERS else 1.0))
                i += len(key)
                break
        else:
            i += 1
    return out


@dataclass(slots=True)
class _Key:
    start: float
    end: float
    shape: np.ndarray
    dominance: float


class VisemeTrack:
    """Timed mouth shapes of one speech segment, filled as chunks arrive.

    Call :meth:`add` with each chunk's timings and the chunk's start time in the
    segment; then :meth:`shape_at` any time. Phoneme timings are used when a chunk
    has any; otherwise its word timings are spread over guessed sounds.
    """

    # How far (s) a sound's pull reaches before it (the lips anticipate) and after
    # it (they let go sooner), and how far a closure's reaches.
    anticipation: float = 0.06
    carryover: float = 0.025
    closure_spread: float = 0.018

    def __init__(self) -> None:
        self._keys: list[_Key] = []
        self._starts = np.zeros(0)

    def __len__(self) -> int:
        return len(self._keys)

    @property
    def end(self) -> float:
        """Where the last sound ends (0 with none)."""
        return max((k.end for k in self._keys[-8:]), default=0.0)

    def add(self, timings: Iterable, offset: float = 0.0) -> None:
        """Add the timings of one chunk that starts ``offset`` seconds into the segment."""
        items = [t for t in timings if t.end > t.start or t.kind == "phoneme"]
        phonemes = [t for t in items if t.kind == "phoneme"]
        if phonemes:
            for t in phonemes:
                self._add_sounds(phoneme_shapes(t.symbol), offset + t.start, offset + t.end)
        else:
            for t in items:
                if t.kind != "word":
                    continue
                sounds = word_sounds(t.symbol)
                total = sum(w for _, w in sounds) or 1.0
                start, span = offset + t.start, max(t.end - t.start, 0.0)
                for ipa, weight in sounds:
                    end = start + span * weight / total
                    self._add_sounds(phoneme_shapes(ipa), start, end)
                    start = end
        self._keys.sort(key=lambda k: k.start)
        self._starts = np.array([k.start for k in self._keys])

    def _add_sounds(self, shapes: list[tuple[MouthShape, float]], start: float, end: float):
        if not shapes:
            return
        end = max(end, start + 0.01)
        # A diphthong spends a little more time on its first part.
        cuts = [start] + [
            start + (end - start) * (0.6 if len(shapes) == 2 and i == 1 else i / len(shapes))
            for i in range(1, len(shapes))
        ] + [end]  # fmt: skip
        for (shape, dominance), a, b in zip(shapes, cuts[:-1], cuts[1:], strict=True):
            self._keys.append(_Key(a, b, shape.as_array(), dominance))

    def shape_at(self, t: float) -> MouthShape:
        """The mouth shape at ``t`` seconds into the segment (rest between sounds)."""
        return MouthShape.from_array(self.values_at(t))

    def values_at(self, t: float) -> np.ndarray:
        """:meth:`shape_at` as an array (open, wide, round, press, teeth)."""
        reach = 4 * self.anticipation
        hi = int(np.searchsorted(self._starts, t + reach))
        total = np.zeros(5, np.float64)
        weight_sum = 0.0
        closure = np.zeros(2)  # press, teeth
        inside_any = False
        for key in self._keys[max(0, hi - 12) : hi]:
            if key.end < t - reach:
                continue
            ahead, behind = key.start - t, t - key.end
            distance = max(ahead, behind, 0.0)
            inside_any = inside_any or distance == 0.0
            spread = self.anticipation if ahead > 0 else self.carryover
            w = key.dominance * math.exp(-((distance / spread) ** 2))
            total += w * key.shape
            weight_sum += w
            c = math.exp(-((distance / self.closure_spread) ** 2))
            closure = np.maximum(closure, key.shape[3:5] * c)
        # Silence pulls towards rest: fully where no sound is, weakly at a sound's edge.
        rest = 0.0 if inside_any else 1.0
        weight_sum += rest
        if weight_sum <= 0:
            return np.zeros(5, np.float32)
        out = total / weight_sum
        out[3:5] = closure
        out[0] *= 1.0 - closure[0]  # pressed lips close the mouth
        out[0] = out[0] * (1.0 - 0.6 * closure[1]) + 0.08 * closure[1]
        return out.astype(np.float32)
