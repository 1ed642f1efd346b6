"""Spoken-digit parsing: what Whisper writes when a person reads digits aloud."""

from __future__ import annotations

import random

import pytest

from voice.digits import digits_match, draw_code, parse_digits, read_code


@pytest.mark.parametrize(
    ("text", "digits"),
    [
        # numerals as the recogniser often writes them
        ("4729", "4729"),
        ("4, 7, 2, 9.", "4729"),
        ("4 7 2 9", "4729"),
        ("4-7-2-9", "4729"),
        ("47 29", "4729"),
        ("My code is 4729.", "4729"),
        ("４７２９", "4729"),
        ("٤٧٢٩", "4729"),  # Arabic-Indic digits are decimal digits too
        # digit words
        ("four seven two nine", "4729"),
        ("Four. Seven. Two. Nine.", "4729"),
        ("FOUR SEVEN TWO NINE", "4729"),
        ("four, seven, two, nine", "4729"),
        ("four-seven-two-nine", "4729"),
        ("my code is four eight two nine one five", "482915"),
        ("zero one two three four five six seven eight nine", "0123456789"),
        ("nought one", "01"),
        ("niner niner", "99"),
        ("4 seven 2 nine", "4729"),
        # zero as "oh" / "o"
        ("four oh two", "402"),
        ("four o two", "402"),
        ("oh two four", "024"),
        ("two four oh", "240"),
        ("oh oh seven", "007"),
        ("four, oh, two", "402"),
        # number words
        ("forty seven twenty nine", "4729"),
        ("forty-seven twenty-nine", "4729"),
        ("twenty-one", "21"),
        ("twenty one", "21"),
        ("twenty", "20"),
        ("nineteen", "19"),
        ("ten eleven twelve", "101112"),
        ("nineteen eighty four", "1984"),
        ("one hundred and five", "105"),
        ("one hundred five", "105"),
        ("a hundred", "100"),
        ("three hundred", "300"),
        ("four hundred twenty", "420"),
        ("nine hundred ninety nine", "999"),
        ("two thousand and nineteen", "2019"),
        ("two thousand three hundred and forty five", "2345"),
        ("twenty, one", "201"),  # punctuation ends a number
        ("seven four hundred", "7400"),
        # double / triple
        ("double seven", "77"),
        ("triple one", "111"),
        ("treble two", "222"),
        ("four double seven two", "4772"),
        ("double oh seven", "007"),
        ("double trouble", ""),
    ],
)
def test_english_and_numerals(text: str, digits: str) -> None:
    assert parse_digits(text) == digits


@pytest.mark.parametrize(
    ("text", "digits"),
    [
        # between digits, homophones are digits
        ("four for two", "442"),
        ("four fore two", "442"),
        ("seven to nine", "729"),
        ("seven too nine", "729"),
        ("one won two", "112"),
        ("seven ate nine", "789"),
        ("three free four", "334"),
        ("three tree four", "334"),
        ("four too to two", "4222"),
        ("four, to, nine", "429"),
        ("4 for 2", "442"),
        ("double for seven", "447"),  # "double four seven" misheard
        # elsewhere they are words
        ("my code is for you: four seven", "47"),
        ("I went to the store", ""),
        ("to four seven nine", "479"),
        ("four seven nine too", "479"),
        ("I won", ""),
        ("I ate breakfast", ""),
        ("free tree", ""),
        ("the code for four seven", "47"),
        # "oh" as an interjection is not zero
        ("Oh, four two", "42"),
        ("Oh my code is four two", "42"),
        ("four two, oh", "42"),
        ("o", ""),
    ],
)
def test_ambiguous_words(text: str, digits: str) -> None:
    assert parse_digits(text) == digits


@pytest.mark.parametrize(
    ("text", "digits"),
    [
        ("四七二九", "4729"),
        ("四 七 二 九", "4729"),
        ("四，七，二，九。", "4729"),
        ("我的号码是四七二九。", "4729"),
        ("零〇", "00"),
        ("两两", "22"),
        ("幺三八", "138"),
        ("一零零", "100"),
        ("十", "10"),
        ("十二", "12"),
        ("二十", "20"),
        ("二十一", "21"),
        ("一百零五", "105"),
        ("一百二十", "120"),
        ("一百二", "120"),  # colloquial: the digit takes the next lower place
        ("一千零二十", "1020"),
        ("两千", "2000"),
        ("四七二十一", "4721"),
        ("十二零五", "1205"),
        ("三十岁", "30"),
        # a lone numeral inside words is a word
        ("等一下", ""),
        ("两个人", ""),
        ("等一下，四七二九", "4729"),
        ("四７二九", "4729"),
        ("my code is 四七 two nine", "4729"),
    ],
)
def test_chinese(text: str, digits: str) -> None:
    assert parse_digits(text) == digits


@pytest.mark.parametrize(
    "text",
    ["", "   ", "hello there", "I don't know", "...", "你好", "and and", "hundredth"],
)
def test_no_digits(text: str) -> None:
    assert parse_digits(text) == ""


def test_curly_apostrophe_words_are_ignored() -> None:
    assert parse_digits("It\u2019s four seven, o\u2019clock") == "47"


@pytest.mark.parametrize(
    ("expected", "spoken", "result"),
    [
        ("4729", "four seven two nine", True),
        ("4729", "4, 7, 2, 9.", True),
        ("47 29", "forty seven twenty nine", True),
        ("4729", "四七二九", True),
        ("４７２９", "4729", True),
        ("0402", "oh four oh two", True),
        ("4729", "four seven two", False),
        ("4729", "four seven two nine nine", False),
        ("4729", "four seven two nine four seven two nine", False),
        ("4729", "nine two seven four", False),
        ("4729", "", False),
    ],
)
def test_digits_match(expected: str, spoken: str, result: bool) -> None:
    assert digits_match(expected, spoken) is result


@pytest.mark.parametrize("expected", ["", "abc", "  -  "])
def test_digits_match_rejects_a_challenge_without_digits(expected: str) -> None:
    with pytest.raises(ValueError, match="expected digits"):
        digits_match(expected, "four")


@pytest.mark.parametrize(
    ("text", "code", "heard"),
    [
        ("For, 0, 7.", "407", "407"),
        ("4, 0, to.", "402", "402"),
        ("To four seven.", "247", "247"),
        ("Four seven nine.", "479", "479"),
        # The cheapest wrong answers: the lenient reading helps only the code itself.
        ("For, 0, 7.", "07", "07"),
        ("For, 0, 7.", "447", "07"),
        ("Far, 0, 7.", "407", "07"),  # no homophone: never read as 4
        ("For you, 0, 7.", "407", "07"),  # a word between: not at the edge
        ("The code is for you.", "4", ""),
        ("", "407", ""),
    ],
)
def test_read_code_reads_a_homophone_at_the_edge_only_as_the_code(
    text: str, code: str, heard: str
) -> None:
    assert read_code(text, code) == heard


def test_draw_code_never_repeats_a_digit_and_uses_all_ten() -> None:
    rng = random.Random(0)
    codes = [draw_code(rng, 3) for _ in range(2000)]
    assert all(len(c) == 3 and c[0] != c[1] and c[1] != c[2] for c in codes)
    assert {c[0] for c in codes} == set("0123456789")
    follows = {c[1] for c in codes if c[0] == "4"}
    assert follows == set("012356789")
    with pytest.raises(ValueError, match="at least 1"):
        draw_code(rng, 0)
