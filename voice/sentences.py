"""Cut text into sentences for TTS, all at once or as LLM tokens arrive.

``split_sentences`` cuts a whole text; ``SentenceCutter`` cuts a stream: ``feed`` each
piece and speak what it returns, then ``flush`` at the end of the reply. Both follow the
same rules, and the cuts do not depend on how the text was split into pieces.

Rules:

- A sentence ends at a newline, or after ``.`` ``!`` ``?`` ``…`` (with any run of them and
  closing quotes or brackets) when whitespace follows. Chinese ``。！？`` need no space.
- ``.`` and ``…`` do not end a sentence when the next word starts in lower case
  ("Well... maybe", "approx. ten"), after a known abbreviation ("Mr.", "e.g.", "etc.",
  see ``ABBREVIATIONS``), after a single capital letter ("J. R. R. Tolkien") or after a
  list number at the start ("1. First"). A dot with no space after it (3.5, example.com)
  never does.
- A clause that reaches ``max_chars`` without a sentence end is cut after its last comma,
  semicolon or colon within ``max_chars`` (Chinese ，；：、 too); with none, at its last
  space; with none (Chinese), at ``max_chars``. TTS can then start on a long clause.
- With ``min_first_chars`` set, the first sentence of a reply is also cut at the first
  comma (semicolon, colon) that has at least that many characters before it, so that the
  first audio comes sooner. Off by default.

To decide, the cutter sometimes needs the next visible character, so a sentence is
returned when the piece after its end arrives, or at ``flush``.
"""

from __future__ import annotations

TERMINATORS = frozenset(".!?…。！？")
CJK_TERMINATORS = frozenset("。！？")
CLOSERS = frozenset("\"')]}”’」』》）】")
SOFT_BREAKS = frozenset(",;:，；：、")
CJK_SOFT_BREAKS = frozenset("，；：、")
ABBREVIATIONS = frozenset(
    {"mr", "mrs", "ms", "dr", "st", "prof", "sr", "jr", "vs", "etc", "e.g", "i.e", "eg", "ie",
     "cf", "approx", "mt", "fig", "ave", "dept", "inc", "ltd"}
)  # fmt: skip


def split_sentences(
    text: str, *, max_chars: int = 200, min_first_chars: int | None = None
) -> list[str]:
    """Cut a whole text into sentences, stripped, without empty ones.

    Args:
        text: the text.
        max_chars: longest clause before a forced cut (see the module doc).
        min_first_chars: when set, cut the first sentence early at a comma.

    Returns:
        The sentences in order.
    """
    cutter = SentenceCutter(max_chars=max_chars, min_first_chars=min_first_chars)
    return cutter.feed(text) + cutter.flush()


class SentenceCutter:
    """Incremental sentence cutter for one stream of replies.

    Call ``feed`` with each piece of text and send what it returns to TTS; call ``flush``
    when the reply ends (or is interrupted) to get the rest. After ``flush`` the cutter
    is ready for the next reply.

    Args:
        max_chars: longest clause before a forced cut; at least 20.
        min_first_chars: when set (at least 1), the first sentence of each reply is cut at
            the first comma after this many characters.

    Raises:
        ValueError: a limit is out of range.
    """

    def __init__(self, *, max_chars: int = 200, min_first_chars: int | None = None) -> None:
        if max_chars < 20:
            raise ValueError(f"max_chars must be at least 20, got {max_chars}")
        if min_first_chars is not None and min_first_chars < 1:
            raise ValueError(f"min_first_chars must be at least 1, got {min_first_chars}")
        self._max_chars = max_chars
        self._min_first = min_first_chars
        self._buf = ""
        self._emitted = False

    def feed(self, piece: str) -> list[str]:
        """Add a piece of text and return the sentences it completes (maybe none)."""
        self._buf += piece
        return self._cut(final=False)

    def flush(self) -> list[str]:
        """Return the remaining sentences, the unfinished last one included; then reset."""
        out = self._cut(final=True)
        rest = self._buf.strip()
        if rest:
            out.append(rest)
        self._buf = ""
        self._emitted = False
        return out

    def _cut(self, *, final: bool) -> list[str]:
        out: list[str] = []
        while (end := self._find_cut(final)) is not None:
            sentence, self._buf = self._buf[:end].strip(), self._buf[end:].lstrip()
            if sentence:
                out.append(sentence)
                self._emitted = True
        return out

    def _find_cut(self, final: bool) -> int | None:
        """Where the first sentence of the buffer ends; None when unknown yet."""
        buf, n = self._buf, len(self._buf)
        early = self._min_first if not self._emitted else None
        i = 0
        while i < n and i < self._max_chars:
            ch = buf[i]
            if ch == "\n":
                return i + 1
            if ch in TERMINATORS:
                end = i
                while end < n and buf[end] in TERMINATORS:
                    end += 1
                while end < n and buf[end] in CLOSERS:
                    end += 1
                verdict = self._ends_sentence(i, end, final)
                if verdict is None:
                    return None
                if verdict:
                    return end
                i = end
                continue
            if early is not None and ch in SOFT_BREAKS and len(buf[:i].strip()) >= early:
                verdict = self._soft_break(i, final)
                if verdict is None:
                    return None
                if verdict:
                    return i + 1
            i += 1
        if n > self._max_chars:
            return self._forced_cut()
        return None

    def _ends_sentence(self, start: int, end: int, final: bool) -> bool | None:
        """Whether the terminators at ``buf[start:end]`` end a sentence."""
        buf, n = self._buf, len(self._buf)
        if end == n:
            return True if final else None
        group = buf[start:end]
        if any(ch in CJK_TERMINATORS for ch in group):
            return True
        if not buf[end].isspace():
            return False
        if "!" in group or "?" in group:
            return True
        nxt = end
        while nxt < n and buf[nxt].isspace():
            if buf[nxt] == "\n":
                return True
            nxt += 1
        if nxt == n:
            return True if final else None
        if buf[nxt].islower():
            return False
        if group.rstrip("".join(CLOSERS)) == ".":
            word = buf[:start].split()[-1] if buf[:start].split() else ""
            word = word.lstrip("\"'([{“‘")
            if word.lower() in ABBREVIATIONS:
                return False
            if len(word) == 1 and word.isalpha() and word.isupper():
                return False
            if buf[:start].strip().isdigit():
                return False
        return True

    def _soft_break(self, i: int, final: bool) -> bool | None:
        """Whether the comma-like ``buf[i]`` may end a piece ("1,000" may not)."""
        if self._buf[i] in CJK_SOFT_BREAKS:
            return True
        if i + 1 == len(self._buf):
            return True if final else None
        return self._buf[i + 1].isspace()

    def _forced_cut(self) -> int:
        """Cut a clause of more than ``max_chars``: comma, else space, else hard."""
        window = self._buf[: self._max_chars]
        for i in range(len(window) - 1, 0, -1):
            if window[i] in SOFT_BREAKS and self._soft_break(i, final=False):
                return i + 1
        space = window.rstrip().rfind(" ")
        return space if space > 0 else self._max_chars
