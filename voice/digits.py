"""Spoken-digit parsing for the consent check ("read these digits aloud").

``parse_digits`` turns what the recogniser wrote into the digit string the person
spoke; ``read_code`` does the same knowing the code that was asked for; ``digits_match``
compares it with the challenge; ``draw_code`` draws a code that reads aloud clearly. All
but ``draw_code`` are pure functions.

What is understood:

- numerals, full-width numerals and other Unicode decimal digits ("4729", "４７２９");
- English digit words, "oh"/"o" and "nought" for zero, "niner" for nine;
- number words up to the thousands ("forty seven" -> 47, "one hundred and five" -> 105,
  "nineteen" -> 19, "twenty-one" -> 21); a number ends at punctuation or a non-number
  word, so "twenty, one" -> "201";
- "double"/"triple" before a single digit ("double seven" -> "77");
- Chinese digits, phone style included ("四七二九", "零"/"〇" -> 0, "两" -> 2, "幺" -> 1),
  and Chinese numbers up to the thousands ("十二" -> 12, "二十一" -> 21, "一百零五" -> 105).

Ambiguous words. Whisper often writes a homophone for a digit ("for", "fore", "to",
"too", "won", "ate", "free", "tree"). Such a word counts as a digit only when it sits
*between* digits (a run of ambiguous words with a digit on both sides), so "my code is
for you: four seven" gives "47" and "four for two" gives "442". At the edge of a digit run
it is dropped: "to four seven nine" gives "479". That errs towards a mismatch, never
towards a false match. ``read_code`` knows the code, and reads such a word at the edge
as its digit when only that reading gives the code ("For, 0, 7." for 407): a person
who said "four" must not be refused because the recogniser wrote "for", and what Whisper
tiny.en writes differs between CPUs (its int8 kernels do). A word that is no homophone
is never read: tiny.en wrote "Far, 3, 3." for "four, three, three" here, and that stays
a mismatch. "oh"/"o" is also a word ("Oh, four two"), so it counts when it is between
digits or touches a digit or "double"/"triple" with no punctuation in between ("four oh
two", "double oh seven").

Limits: other words are ignored, so a number word used as a word ("this one") counts as
a digit. A lone Chinese numeral inside Chinese words ("等一下", "两个") is taken as a word,
not a digit, so a one-digit answer written among Chinese words is not read.
"""

from __future__ import annotations

import random
import re
import unicodedata
from collections.abc import Callable

_UNITS = {
    "zero": 0, "nought": 0, "naught": 0, "one": 1, "two": 2, "three": 3, "four": 4,
    "five": 5, "six": 6, "seven": 7, "eight": 8, "nine": 9, "niner": 9,
}  # fmt: skip
_TEENS = {
    "ten": 10, "eleven": 11, "twelve": 12, "thirteen": 13, "fourteen": 14, "fifteen": 15,
    "sixteen": 16, "seventeen": 17, "eighteen": 18, "nineteen": 19,
}  # fmt: skip
_TENS = {
    "twenty": 20, "thirty": 30, "forty": 40, "fourty": 40, "fifty": 50, "sixty": 60,
    "seventy": 70, "eighty": 80, "ninety": 90,
}  # fmt: skip
_HOMOPHONES = {
    "for": 4, "fore": 4, "to": 2, "too": 2, "won": 1, "ate": 8, "free": 3, "tree": 3,
}  # fmt: skip
_ZEROS = {"oh", "o"}
_MULTIPLIERS = {"double": 2, "triple": 3, "treble": 3}

_ZH_DIGITS = {
    "零": 0, "〇": 0, "一": 1, "幺": 1, "二": 2, "两": 2, "三": 3, "四": 4, "五": 5,
    "六": 6, "七": 7, "八": 8, "九": 9,
}  # fmt: skip
_ZH_UNITS = {"十": 10, "百": 100, "千": 1000}
_ZH_CHARS = "".join(_ZH_DIGITS) + "".join(_ZH_UNITS)

_TOKEN = re.compile(
    rf"(?P<num>\d+)|(?P<zh>[{_ZH_CHARS}]+)|(?P<word>[a-z]+(?:'[a-z]+)*)|(?P<punct>[^\s\w])"
)
_HAN = re.compile(r"[\u3400-\u9fff\uf900-\ufaff]")
_DASHES = re.compile(r"[-\u2010-\u2015]")

# Kinds of the items the number reader works on.
_K_LIT, _K_UNIT, _K_TEEN, _K_TENS, _K_HUNDRED, _K_THOUSAND, _K_MULT, _K_AND, _K_GAP = range(9)
_K_AMB, _K_OH = 100, 101  # ambiguous words, turned into _K_UNIT or _K_GAP by _resolve
_NUMBER_KINDS = {_K_UNIT, _K_TEEN, _K_TENS, _K_HUNDRED, _K_THOUSAND}
Item = tuple[int, int | str]
_Reader = Callable[[list[Item], int], tuple[int | None, int]]
_WORDS: dict[str, Item] = {
    **{w: (_K_UNIT, v) for w, v in _UNITS.items()},
    **{w: (_K_TEEN, v) for w, v in _TEENS.items()},
    **{w: (_K_TENS, v) for w, v in _TENS.items()},
    **{w: (_K_MULT, v) for w, v in _MULTIPLIERS.items()},
    **{w: (_K_AMB, v) for w, v in _HOMOPHONES.items()},
    **{w: (_K_OH, 0) for w in _ZEROS},
    "hundred": (_K_HUNDRED, 100), "thousand": (_K_THOUSAND, 1000), "and": (_K_AND, 0),
}  # fmt: skip


def parse_digits(text: str) -> str:
    """Return the digits spoken in ``text``, in order, as a string of ASCII digits.

    Args:
        text: a transcript, in English or Chinese or both.

    Returns:
        The digits, e.g. ``"4729"`` for "four seven two nine"; ``""`` when there are none.
        Compare it with the challenge, or call ``digits_match``.
    """
    return "".join(_read_items(_resolve(_lex(text))))


def read_code(text: str, code: str) -> str:
    """The digits spoken in ``text``, read in the light of the ``code`` that was asked for.

    Like :func:`parse_digits`, except that a homophone at the edge of the digits ("For,
    0, 7.") counts as its digit when that reading, and only it, gives ``code``. So the
    answer is ``code`` exactly when the person said it, and otherwise what
    ``parse_digits`` heard (for the error message).

    Args:
        text: a transcript.
        code: the digits asked for, ASCII ("407").
    """
    strict = parse_digits(text)
    if strict == code:
        return strict
    lenient = "".join(_read_items(_resolve(_lex(text), edges=True)))
    return lenient if lenient == code else strict


def draw_code(rng: random.Random, count: int) -> str:
    """``count`` random digits to read aloud, no digit the same as the one before it.

    A run of one digit is where a recogniser miscounts: Whisper tiny.en wrote "7, 7, 7,
    7." for "7, 7, 7." and "2, 10." for "2, 2." (3 of 150 groups of Piper speech wrong,
    0 of 400 without such runs), and a person reading "4 4 4" aloud stumbles too. It
    leaves 10 * 9**(count - 1) codes, enough for a fresh code (it proves a live answer,
    it is no password).

    Raises:
        ValueError: ``count`` < 1.
    """
    if count < 1:
        raise ValueError(f"draw_code: count must be at least 1, got {count}")
    out = [rng.randrange(10)]
    while len(out) < count:
        out.append((out[-1] + 1 + rng.randrange(9)) % 10)
    return "".join(map(str, out))


def digits_match(expected: str, spoken_text: str) -> bool:
    """Tell whether the person said exactly the expected digits.

    The match is strict: a missing, extra or repeated digit is a mismatch, and the caller
    should ask the person to read the digits again.

    Args:
        expected: the challenge; characters that are not digits are ignored ("47 29").
        spoken_text: the transcript of what the person said.

    Returns:
        True when the digits spoken equal the expected digits.

    Raises:
        ValueError: ``expected`` holds no digit.
    """
    norm = unicodedata.normalize("NFKC", expected)
    wanted = "".join(_decimal(ch) for ch in norm if ch.isdecimal())
    if not wanted:
        raise ValueError(f"expected digits, got {expected!r}")
    return parse_digits(spoken_text) == wanted


def _decimal(ch: str) -> str:
    return str(unicodedata.decimal(ch))


def _lex(text: str) -> list[Item]:
    """Split the text into items; ambiguous words stay ``_K_AMB``/``_K_OH``."""
    norm = unicodedata.normalize("NFKC", text).lower().replace("\u2019", "'")
    norm = _DASHES.sub(" ", norm)
    items: list[Item] = []
    for m in _TOKEN.finditer(norm):
        kind = m.lastgroup
        tok = m.group()
        if kind == "num":
            items.append((_K_LIT, "".join(_decimal(ch) for ch in tok)))
        elif kind == "zh":
            before = norm[m.start() - 1] if m.start() else ""
            after = norm[m.end()] if m.end() < len(norm) else ""
            if len(tok) == 1 and (_HAN.match(before) or _HAN.match(after)):
                items.append((_K_GAP, tok))  # a word such as 一下 or 两个
            else:
                items.extend((_K_LIT, value) for value in _parse_zh(tok))
        elif kind == "punct":
            items.append((_K_GAP, "."))
        else:
            items.append(_WORDS.get(tok, (_K_GAP, tok)))
    return items


def _is_digitish(item: Item) -> bool:
    return item[0] in _NUMBER_KINDS or item[0] in (_K_LIT, _K_MULT)


def _resolve(items: list[Item], edges: bool = False) -> list[Item]:
    """Turn ambiguous words into digits (``_K_UNIT``) or gaps, as the module doc says.

    ``edges``: a run of ambiguous words with a digit on one side only counts too.
    """
    out = list(items)
    n = len(out)
    i = 0
    while i < n:  # runs of ambiguous words (punctuation may separate them)
        if out[i][0] not in (_K_AMB, _K_OH):
            i += 1
            continue
        j = i
        while j < n and (out[j][0] in (_K_AMB, _K_OH) or out[j] == (_K_GAP, ".")):
            j += 1
        left = next((out[k] for k in range(i - 1, -1, -1) if out[k] != (_K_GAP, ".")), None)
        right = out[j] if j < n else None
        sides = [x is not None and _is_digitish(x) for x in (left, right)]
        if all(sides) or (edges and any(sides)):
            for k in range(i, j):
                if out[k][0] in (_K_AMB, _K_OH):
                    out[k] = (_K_UNIT, out[k][1])
        i = j
    changed = True
    while changed:  # "oh" touching a digit, to a fixed point ("oh oh seven")
        changed = False
        for k, item in enumerate(out):
            if item[0] != _K_OH:
                continue
            near = [out[x] for x in (k - 1, k + 1) if 0 <= x < n]
            if any(_is_digitish(x) for x in near):
                out[k] = (_K_UNIT, 0)
                changed = True
    return [(_K_GAP, it[1]) if it[0] in (_K_AMB, _K_OH) else it for it in out]


def _read_items(items: list[Item]) -> list[str]:
    """Read numbers and digits from the resolved items."""
    out: list[str] = []
    i = 0
    while i < len(items):
        kind, value = items[i]
        if kind == _K_LIT:
            out.append(str(value))
            i += 1
        elif kind == _K_MULT:
            if i + 1 < len(items) and items[i + 1][0] == _K_UNIT:
                out.append(str(items[i + 1][1]) * int(value))
                i += 2
            else:
                i += 1
        elif kind in _NUMBER_KINDS:
            number, i = _take_number(items, i)
            out.append(str(number))
        else:
            i += 1
    return out


def _kind(items: list[Item], i: int) -> int:
    return items[i][0] if i < len(items) else _K_GAP


def _below_hundred(items: list[Item], i: int) -> tuple[int | None, int]:
    kind = _kind(items, i)
    if kind == _K_TENS:
        value = int(items[i][1])
        if _kind(items, i + 1) == _K_UNIT and items[i + 1][1] != 0:
            return value + int(items[i + 1][1]), i + 2
        return value, i + 1
    if kind in (_K_TEEN, _K_UNIT):
        return int(items[i][1]), i + 1
    return None, i


def _with_rest(items: list[Item], j: int, head: int, read: _Reader) -> tuple[int, int]:
    """After "hundred"/"thousand": an optional "and", then the rest of the number."""
    k = j + 1 if _kind(items, j) == _K_AND else j
    rest, k2 = read(items, k)
    return (head + rest, k2) if rest is not None else (head, j)


def _below_thousand(items: list[Item], i: int) -> tuple[int | None, int]:
    value, j = _below_hundred(items, i)
    if _kind(items, j) != _K_HUNDRED:
        return value, j
    head = (1 if value is None else value) * 100
    return _with_rest(items, j + 1, head, _below_hundred)


def _take_number(items: list[Item], i: int) -> tuple[int, int]:
    """Read one number starting at a number word; always moves past ``i``."""
    value, j = _below_thousand(items, i)
    if _kind(items, j) == _K_THOUSAND:
        head = (1 if value is None else value) * 1000
        return _with_rest(items, j + 1, head, _below_thousand)
    assert value is not None
    return value, j


def _parse_zh(run: str) -> list[str]:
    """Read a run of Chinese numerals: digits one by one, or numbers with 十/百/千."""
    out: list[str] = []
    i = 0
    while i < len(run):
        value, j = _zh_number(run, i)
        if value is None:
            out.append(str(_ZH_DIGITS[run[i]]))
            i += 1
        else:
            out.append(str(value))
            i = j
    return out


def _zh_number(run: str, i: int) -> tuple[int | None, int]:
    """Read a Chinese number at ``i``; None when no unit character follows a digit there."""
    total, j, last_unit, used, zero_seen = 0, i, 10**9, False, False
    while j < len(run):
        ch = run[j]
        if used and _ZH_DIGITS.get(ch) == 0 and run[j + 1 : j + 2] not in ("", "零", "〇"):
            zero_seen = True  # the placeholder in 一百零五
            j += 1
            continue
        digit = _ZH_DIGITS.get(ch)
        k = j + 1 if digit is not None else j
        if k < len(run) and run[k] in _ZH_UNITS and _ZH_UNITS[run[k]] < last_unit:
            last_unit = _ZH_UNITS[run[k]]
            total += (1 if digit is None else digit) * last_unit
            used, zero_seen, j = True, False, k + 1
            continue
        if digit and used:
            # 一百二 is 120 and 一百零二 is 102.
            total += digit * (1 if zero_seen else max(last_unit // 10, 1))
            j = k
        break
    return (total, j) if used else (None, i)
