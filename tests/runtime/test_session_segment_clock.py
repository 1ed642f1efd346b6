"""The pure segment clock of a session: anchors, held audio, captions, frame times, heard words.

No event loop, no tracks: every number is exact.
"""

from __future__ import annotations

import numpy as np
import pytest

from runtime.segment_clock import LEAD_S, Segment, SegmentClock
from voice.types import SpeechChunk

RATE = 48_000


def chunk(seconds: float, text: str = "") -> SpeechChunk:
    return SpeechChunk(pcm=np.zeros(round(seconds * RATE), np.float32), sample_rate=RATE, text=text)


@pytest.mark.parametrize(
    ("now", "queued_until", "anchor"),
    [
        (1.0, 0.0, 1.08),  # 1.06 → the next 40 ms slot
        (1.0, 2.01, 2.04),  # after the audio already queued, on a slot
        (1.0, 2.0, 2.0),  # exactly on a slot stays there
        (0.0, 0.0, 0.08),
        (0.94, 0.0, 1.0),  # 1.0 itself (no float drift to 1.04)
    ],
)
def test_the_anchor_is_the_first_slot_after_now_plus_lead_and_the_queued_audio(
    now, queued_until, anchor
):
    assert LEAD_S == 0.06
    assert SegmentClock(fps=25).start_time(now, queued_until) == pytest.approx(anchor, abs=1e-9)


def test_audio_pushed_before_the_first_frame_is_held_then_scheduled_from_the_anchor():
    clock = SegmentClock(fps=25)
    segment = clock.open(turn=3)
    one, two, three = chunk(0.5), chunk(0.3), chunk(0.4)
    assert clock.push(segment, "Hello there.", one).play_now is False
    assert clock.push(segment, "Hello there.", two).play_now is False
    held = clock.push(segment, "How are you?", three)
    assert (held.offset, held.play_now, held.caption) == (pytest.approx(0.8), False, None)
    assert segment.length == pytest.approx(1.2)
    assert [o for o, _ in segment.sentences] == [0.0, pytest.approx(0.8)]

    plan = clock.anchor(segment, first_pts=7.2, now=10.0, queued_until=0.0)
    assert plan.at == pytest.approx(10.08) and segment.anchor == plan.at
    assert plan.held == (one, two, three)  # in order, the first at the anchor
    assert plan.captions == (
        (pytest.approx(10.08), "Hello there."),
        (pytest.approx(10.88), "How are you?"),
    )
    assert plan.finished is False
    assert clock.current is segment and clock.pending == ()
    # A frame's media time follows its pts from the first frame's.
    assert segment.frame_time(7.2) == pytest.approx(10.08)
    assert segment.frame_time(7.2 + 0.04 * 11) == pytest.approx(10.08 + 0.44)

    # Once anchored, audio plays at once (continuing the run); a new sentence gets its
    # caption at its own media time, a chunk of the same sentence none.
    more = clock.push(segment, "How are you?", chunk(0.2))
    assert (more.play_now, more.caption) == (True, None)
    last = clock.push(segment, "Fine.", chunk(0.3))
    assert last.play_now and last.caption == (pytest.approx(10.08 + 1.4), "Fine.")


def test_a_finished_reply_anchored_late_says_so():
    clock = SegmentClock(fps=25)
    segment = clock.open(turn=1)
    clock.push(segment, "Short.", chunk(0.2))
    segment.done = True
    assert clock.anchor(segment, 0.0, now=0.0, queued_until=0.0).finished is True


def test_frames_find_their_reply_in_order():
    clock = SegmentClock(fps=25)
    first, second = clock.open(1), clock.open(2)
    assert clock.segment_for(5) is first and first.generator_id == 5
    clock.anchor(first, 0.0, now=0.0, queued_until=0.0)
    assert clock.segment_for(5) is first  # still the current one
    assert clock.segment_for(6) is second and second.generator_id == 6
    clock.anchor(second, 1.0, now=1.0, queued_until=1.5)
    assert clock.segment_for(6) is second
    assert clock.segment_for(7) is second  # nothing pending: the current one


def test_an_unanchored_segment_has_no_frame_time():
    with pytest.raises(ValueError):
        Segment(turn=1).frame_time(0.0)


def spoken(anchor: float = 2.0) -> Segment:
    """Two sentences: "One two three four." over 1.0 s, then "Five six." over 0.5 s."""
    clock = SegmentClock(fps=25)
    segment = clock.open(1)
    clock.push(segment, "One two three four.", chunk(1.0))
    clock.push(segment, "Five six.", chunk(0.5))
    segment.anchor = anchor
    return segment


@pytest.mark.parametrize(
    ("played", "heard"),
    [
        (-0.5, ""),  # cut before the reply began
        (0.0, ""),
        (0.1, ""),  # 0.4 of a word: rounds to none
        (0.2, "One"),  # 0.8 of a word
        (0.62, "One two"),  # 2.48 words
        (0.63, "One two three"),  # 2.52 words
        (1.0, "One two three four."),
        (1.1, "One two three four."),  # 0.2 of "Five six." is 0.4 words
        (1.3, "One two three four. Five"),  # 1.2 words
        (9.0, "One two three four. Five six."),
    ],
)
def test_heard_text_is_the_words_played_before_the_cut(played, heard):
    assert spoken(anchor=2.0).heard_text(2.0 + played) == heard


def test_nothing_is_heard_of_a_reply_that_never_played():
    segment = spoken()
    segment.anchor = None
    assert segment.heard_text(100.0) == ""


def test_interrupt_forgets_every_reply_and_returns_what_was_heard_of_the_playing_one():
    clock = SegmentClock(fps=25)
    playing = clock.open(1)
    clock.push(playing, "One two three four.", chunk(1.0))
    clock.anchor(playing, 0.0, now=0.0, queued_until=0.0)  # anchored at 0.08
    clock.open(2)
    assert clock.interrupt(heard_until=0.08 + 0.5) == "One two"
    assert clock.current is None and clock.pending == ()
    assert clock.interrupt(heard_until=5.0) == ""
    waiting = clock.open(3)  # pushed, not anchored: nothing of it was heard
    clock.push(waiting, "Seven eight.", chunk(0.5))
    assert clock.interrupt(heard_until=5.0) == ""
