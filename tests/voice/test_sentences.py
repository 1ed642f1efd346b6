"""Cutting LLM text into sentences for TTS, whole and streamed."""

from __future__ import annotations

import random

import pytest

from voice.sentences import SentenceCutter, split_sentences


@pytest.mark.parametrize(
    ("text", "sentences"),
    [
        ("Hello there. How are you? I am fine!", ["Hello there.", "How are you?", "I am fine!"]),
        ("One sentence only", ["One sentence only"]),
        ("Ends with a dot.", ["Ends with a dot."]),
        ("", []),
        ("   \n\n  ", []),
        ("Hi!!! Really?! Yes.", ["Hi!!!", "Really?!", "Yes."]),
        ("Line one\nLine two\n\nLine three", ["Line one", "Line two", "Line three"]),
        ("No dot at the end\nNext", ["No dot at the end", "Next"]),
        (
            "  Leading and trailing space.  Next one.  ",
            ["Leading and trailing space.", "Next one."],
        ),
        # abbreviations
        (
            "Mr. Smith went to Washington. He met Dr. Jones.",
            ["Mr. Smith went to Washington.", "He met Dr. Jones."],
        ),
        (
            "Mrs. Brown lives on Baker St. London is big.",
            ["Mrs. Brown lives on Baker St. London is big."],
        ),
        ("Fruit, e.g. Apples, is good. Yes.", ["Fruit, e.g. Apples, is good.", "Yes."]),
        ("That is, i.e. The point. Right.", ["That is, i.e. The point.", "Right."]),
        ("Bring pens, paper, etc. And snacks.", ["Bring pens, paper, etc. And snacks."]),
        ("It is approx. ten miles.", ["It is approx. ten miles."]),
        ("J. R. R. Tolkien wrote books. Nice.", ["J. R. R. Tolkien wrote books.", "Nice."]),
        ("(Dr. Who) is on. Watch.", ["(Dr. Who) is on.", "Watch."]),
        # numbers and dots inside words
        ("It costs 3.5 dollars. Cheap!", ["It costs 3.5 dollars.", "Cheap!"]),
        ("Pi is 3.14159 roughly.", ["Pi is 3.14159 roughly."]),
        ("Visit example.com today. OK.", ["Visit example.com today.", "OK."]),
        ("1. First item\n2. Second item", ["1. First item", "2. Second item"]),
        ("Version 2.0.1 is out. Update now.", ["Version 2.0.1 is out.", "Update now."]),
        # ellipses
        ("Well... maybe later.", ["Well... maybe later."]),
        ("I wonder… perhaps not.", ["I wonder… perhaps not."]),
        ("Wait... What was that? Nothing.", ["Wait...", "What was that?", "Nothing."]),
        ("And then...", ["And then..."]),
        # quotes and brackets after the end
        ('He said "stop." Then he left.', ['He said "stop."', "Then he left."]),
        ("(It was late.) We slept.", ["(It was late.)", "We slept."]),
        ("She asked, “Why?” I shrugged.", ["She asked, “Why?”", "I shrugged."]),
        # Chinese
        ("你好。今天天气很好！你呢？", ["你好。", "今天天气很好！", "你呢？"]),
        ("他说：“好。”然后走了。", ["他说：“好。”", "然后走了。"]),
        ("我想想……好吧。", ["我想想……好吧。"]),
        ("价格是3.5元。便宜！", ["价格是3.5元。", "便宜！"]),
        ("Hello. 你好。Bye.", ["Hello.", "你好。", "Bye."]),
    ],
)
def test_split_sentences(text: str, sentences: list[str]) -> None:
    assert split_sentences(text) == sentences


CORPUS = [
    "Hello there. How are you? I am fine! Mr. Smith paid 3.5 dollars, e.g. Cheap.",
    "Well... maybe later. Wait... What? 1. First\n2. Second\n\nDone…",
    'He said "stop." Then he left. (It was late.) We slept!',
    "你好。今天天气很好！你呢？他说：“好。”然后走了。",
    "word, " * 80 + "end. And " + "long " * 70 + "clause.",
    "汉" * 450 + "。",
    "Hi, I think that is a good idea, really. And then, we go.",
]


@pytest.mark.parametrize("text", CORPUS)
@pytest.mark.parametrize("min_first_chars", [None, 3])
def test_streamed_pieces_give_the_same_sentences(text: str, min_first_chars: int | None) -> None:
    whole = split_sentences(text, min_first_chars=min_first_chars)
    rng = random.Random(1234)
    for _ in range(20):
        cutter = SentenceCutter(min_first_chars=min_first_chars)
        got: list[str] = []
        i = 0
        while i < len(text):
            step = rng.randint(1, 8)
            got += cutter.feed(text[i : i + step])
            i += step
        got += cutter.flush()
        assert got == whole
    one_by_one = SentenceCutter(min_first_chars=min_first_chars)
    got = [s for ch in text for s in one_by_one.feed(ch)] + one_by_one.flush()
    assert got == whole


def test_a_sentence_is_returned_once_the_next_piece_arrives() -> None:
    cutter = SentenceCutter()
    assert cutter.feed("Hello") == []
    assert cutter.feed(" there.") == []  # the next word could be lower case
    assert cutter.feed(" How") == ["Hello there."]
    assert cutter.feed(" are you?") == []
    assert cutter.feed(" I") == ["How are you?"]
    assert cutter.feed(" am") == []
    assert cutter.flush() == ["I am"]


def test_chinese_sentence_is_returned_on_the_next_character() -> None:
    cutter = SentenceCutter()
    assert cutter.feed("你好。") == []  # a closing quote may still follow
    assert cutter.feed("我") == ["你好。"]
    assert cutter.flush() == ["我"]


def test_newline_cuts_at_once() -> None:
    cutter = SentenceCutter()
    assert cutter.feed("Title\n") == ["Title"]
    assert cutter.feed("\n\nBody") == []
    assert cutter.flush() == ["Body"]


def test_several_sentences_in_one_piece() -> None:
    cutter = SentenceCutter()
    assert cutter.feed("One. Two. Three. Fo") == ["One.", "Two.", "Three."]
    assert cutter.flush() == ["Fo"]


def test_flush_resets_for_the_next_reply() -> None:
    cutter = SentenceCutter(min_first_chars=3)
    assert cutter.feed("Well then, this is it. ") == ["Well then,"]
    assert cutter.flush() == ["this is it."]
    assert cutter.flush() == []
    # the next reply gets its early first cut again
    assert cutter.feed("Right then, again. ") == ["Right then,"]
    assert cutter.flush() == ["again."]


def test_long_clause_is_cut_at_its_last_comma_within_max_chars() -> None:
    text = "word " * 30 + "pause, " + "more " * 60 + "end."
    sentences = split_sentences(text, max_chars=200)
    assert sentences[0] == ("word " * 30 + "pause,").strip()
    assert " ".join(sentences) == " ".join(text.split())
    assert all(len(s) <= 200 for s in sentences)


def test_long_clause_prefers_the_last_comma() -> None:
    text = "a, " + "b, " * 30 + "c " * 100
    first = split_sentences(text, max_chars=50)[0]
    assert first.endswith(",")
    assert 45 <= len(first) <= 50


def test_long_clause_without_commas_is_cut_at_a_space() -> None:
    text = " ".join(f"w{i}" for i in range(200))
    sentences = split_sentences(text, max_chars=100)
    assert len(sentences) > 1
    assert all(len(s) <= 100 for s in sentences)
    assert " ".join(sentences) == text  # no word is split


def test_long_chinese_clause_is_cut_hard_or_at_a_chinese_comma() -> None:
    assert [len(s) for s in split_sentences("汉" * 450, max_chars=200)] == [200, 200, 50]
    text = "汉" * 150 + "，" + "字" * 150 + "。"
    assert split_sentences(text, max_chars=200) == ["汉" * 150 + "，", "字" * 150 + "。"]


def test_thousands_separator_is_not_a_soft_break() -> None:
    text = "x" * 95 + " 1,000 " + "y" * 100
    sentences = split_sentences(text, max_chars=100)
    assert "1,000" in " ".join(sentences)
    assert all(not s.endswith("1,") for s in sentences)


def test_short_text_is_not_cut_at_commas_by_default() -> None:
    assert split_sentences("Well, I think, maybe, yes.") == ["Well, I think, maybe, yes."]


@pytest.mark.parametrize(
    ("min_first_chars", "sentences"),
    [
        (1, ["Well,", "I think that is a good idea, really.", "And then, we go."]),
        (5, ["Well, I think that is a good idea,", "really.", "And then, we go."]),
        (100, ["Well, I think that is a good idea, really.", "And then, we go."]),
    ],
)
def test_min_first_chars_cuts_only_the_first_sentence(
    min_first_chars: int, sentences: list[str]
) -> None:
    text = "Well, I think that is a good idea, really. And then, we go."
    assert split_sentences(text, min_first_chars=min_first_chars) == sentences


def test_min_first_chars_with_chinese_comma() -> None:
    assert split_sentences("好的，我明白了。谢谢，再见。", min_first_chars=2) == [
        "好的，",
        "我明白了。",
        "谢谢，再见。",
    ]


@pytest.mark.parametrize(("kwargs", "message"), [
    ({"max_chars": 5}, "max_chars"),
    ({"min_first_chars": 0}, "min_first_chars"),
])  # fmt: skip
def test_bad_limits_are_refused(kwargs: dict[str, int], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        SentenceCutter(**kwargs)
