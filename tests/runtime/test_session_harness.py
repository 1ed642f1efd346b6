"""A live session, frames in and frames out, on a virtual clock (``session_harness``).

The person is a tone on the inbound track; the peer is what the two outbound tracks
send. Every time below is media time, exact: nothing sleeps and nothing races.
"""

from __future__ import annotations

from dataclasses import replace

import pytest

from tests.runtime.session_harness import FakeGenerator, FakeLLM, FakeTTS, Harness, run

FPS = 25
BLOCK_S = 0.02
QUESTION = "What is your favourite colour?"


def test_a_reply_is_anchored_so_lips_and_sound_share_one_clock(tmp_path):
    """The first speaking frame and the first sample of the reply are sent at the same
    media time T (a video slot); block n of the audio plays at T + n·20 ms and frame i
    shows at T + (i − i₀)/fps; each caption is sent when its sentence starts playing."""

    async def scenario(clock):
        async with Harness(clock, tmp_path, [QUESTION], ["One two three four. Five six."]) as h:
            h.mic.say(1.0, at=0.5)
            await h.wait_for("reply")
            await h.until(clock.t + 3.0)
            return h, h.history()

    h, history = run(scenario)
    speech = h.sinks.speech()
    frames = h.sinks.speaking_frames()
    assert [b for _, b in speech] == list(range(60)), "six words of 0.2 s, each block once"
    start = speech[0][0]
    assert start * FPS == pytest.approx(round(start * FPS)), "the reply starts on a video slot"
    assert all(t == pytest.approx(start + b * BLOCK_S) for t, b in speech), speech
    assert len(frames) == 30, frames
    assert frames[0][0] == pytest.approx(start), "first frame and first sample together"
    first = frames[0][1]
    assert all(t == pytest.approx(start + (i - first) / FPS) for t, i in frames), frames
    replies = [(t, m["text"]) for t, m in h.events if m["type"] == "reply"]
    assert replies == [
        (pytest.approx(start), "One two three four."),
        (pytest.approx(start + 0.8), "Five six."),
    ]
    assert h.first("state", state="speaking")[0] == pytest.approx(start)
    assert history == [("user", QUESTION), ("assistant", "One two three four. Five six.")]


def test_barge_in_stops_sound_and_lips_at_once_and_keeps_only_what_was_heard(tmp_path):
    """Spoken over 0.2 s into the reply: from the interruption on, not one more block of
    the reply plays and no new speaking frame shows after the next slot; the LLM is
    stopped; the history keeps exactly the words played ("One two" of 0.25 s words)."""

    async def scenario(clock):
        tts = FakeTTS(word_s=0.25)
        llm = FakeLLM(["One two three four. Five six seven eight."])
        async with Harness(clock, tmp_path, [QUESTION, ""], tts=tts, llm=llm) as h:
            h.mic.say(1.0, at=0.5)
            started, _ = await h.wait_for("reply")
            h.mic.say(1.0, at=started + 0.2)
            await h.wait_for("interrupted")
            await h.until(clock.t + 3.0)
            return h, started, h.history()

    h, started, history = run(scenario)
    cut, interrupted = h.first("interrupted")
    speech = h.sinks.speech()
    # A frame leaving at the very instant of the cut was sent before it (and heard).
    assert speech and [(t, b) for t, b in speech if t > cut + 1e-6] == [], "sound after the cut"
    played = len(speech) * BLOCK_S
    assert 0.4375 <= played < 0.625, f"{played:.2f} s played: 2 of 4 words heard"
    assert interrupted["heard"] == "One two"
    assert history == [("user", QUESTION), ("assistant", "One two")]
    late = [(t, i) for t, i in h.sinks.speaking_frames() if t > cut + 1 / FPS + 1e-6]
    assert not late, f"speaking frames shown after the cut: {late}"
    assert h.generator.cleared == 1
    assert h.llm.closed, "the LLM's stream was closed"
    assert (cut, {"type": "state", "state": "listening"}) in h.events, "listening again at once"


def test_a_barge_in_while_the_face_holds_the_reply_back_stores_only_what_was_heard(tmp_path):
    """The cancel lands in the session's own push (the generator applies back-pressure),
    not inside speak_reply, while the LLM is still writing: the reply generator must be
    closed there and then, so the LLM stops and the stored reply is what was heard.

    Without closing it, the LLM went on, and the whole written reply was stored after
    the barge-in had trimmed nothing."""
    seen_at_cut: dict[str, object] = {}

    async def scenario(clock):
        generator = FakeGenerator(hold_after=4)  # the 5th push waits until clear_buffer
        llm = FakeLLM(["One two three four. Five six seven eight. Nine ten."], stall_after=9)
        tts = FakeTTS(word_s=0.25)
        async with Harness(
            clock, tmp_path, [QUESTION, ""], generator=generator, llm=llm, tts=tts
        ) as h:

            def on_event(message):
                if message["type"] == "interrupted":
                    seen_at_cut.update(closed=h.llm.closed, history=h.history())

            h.on_event = on_event
            h.mic.say(1.0, at=0.5)
            started, _ = await h.wait_for("reply")
            h.mic.say(1.0, at=started + 0.2)
            await h.wait_for("interrupted")
            await h.until(clock.t + 3.0)
            return h, h.history()

    h, history = run(scenario)
    assert h.generator.pushes == 5, "the cut came while the 5th chunk waited in push_audio"
    assert seen_at_cut["closed"] is True, "the LLM was stopped before the barge-in finished"
    assert seen_at_cut["history"] == [("user", QUESTION), ("assistant", "One two")]
    assert history == [("user", QUESTION), ("assistant", "One two")]
    assert h.llm.words_sent == 9, "nothing was written after the cut"


def test_a_barge_in_before_any_reply_played_keeps_no_reply(tmp_path):
    """Spoken over while the LLM has not written its first word (it takes 2 s): the
    reply is stopped as soon as the speech is detected, nothing of it is sent, and the
    history keeps the question and no reply."""

    async def scenario(clock):
        llm = FakeLLM(["One two three four."], delay=2.0)  # the first word takes 2 s
        async with Harness(clock, tmp_path, [QUESTION, ""], llm=llm) as h:
            h.mic.say(1.0, at=0.5)
            await h.wait_for("transcript")
            spoke, _ = h.mic.say(1.0, at=clock.t + 0.1)
            await h.wait_for("interrupted")
            await h.until(clock.t + 1.0)
            return h, spoke, h.history()

    h, spoke, history = run(scenario)
    cut, interrupted = h.first("interrupted")
    assert interrupted["heard"] == ""
    assert cut - spoke < 0.4, f"interrupted {cut - spoke:.2f} s after the person spoke"
    assert (h.llm.words_sent, h.llm.closed) == (0, True), "the LLM stopped before a word"
    assert h.sinks.speech() == [] and h.sinks.speaking_frames() == []
    assert history == [("user", QUESTION)]


# ---------------------------------------------------------------------- consent


@pytest.fixture
def granted(tmp_path):
    """A consent store in the data dir with Ann's face granted for kiosk/eldercare."""
    from avatar.synthetic import make_demo_avatar
    from consent.keys import SigningKeys
    from runtime import components
    from runtime.config import load_config
    from tests.consent.conftest import World

    gate = components.consent_gate(load_config(data_dir=tmp_path))
    world = World(gate.store, SigningKeys.load(tmp_path / "consent" / "signing"), "Ann")
    grant = world.grant()
    face = replace(make_demo_avatar(128), id=world.avatar, synthetic=False)
    yield gate, world, grant, face
    gate.store.close()


def admission_for(gate, face):
    from runtime.admission import AdmissionCheck, ConsentUse

    check = AdmissionCheck(
        gate, "kiosk", "eldercare", face=ConsentUse(gate, face.id, "kiosk", "eldercare")
    )
    assert check().allowed  # as the offer asks it
    return check


CONSENT = {"consent": {"recheck_ms": 200}}


def test_a_revoke_withdraws_the_face_within_one_recheck(tmp_path, granted):
    """Revoked at R while the companion speaks: by R + 200 ms (one re-check) the session
    has ended with "permission withdrawn"; the face and the voice were sent until then
    and not one frame or sample after; the use was audited from start to end."""
    gate, world, grant, face = granted

    async def scenario(clock):
        check = admission_for(gate, face)
        replies = ["One two three four five six seven eight nine ten."]
        async with Harness(
            clock, tmp_path, [QUESTION], replies, avatar=face, consent=check, config=CONSENT
        ) as h:
            h.mic.say(1.0, at=0.5)
            started, _ = await h.wait_for("reply")
            await h.until(started + 0.5)
            revoked = clock.t
            gate.store.revoke(grant.id, by="subject", reason="changed my mind")
            await h.wait_for("state", state="ended")
            await h.until(clock.t + 1.0)
            return h, revoked

    h, revoked = run(scenario)
    ended, message = h.first("state", state="ended")
    assert message["reason"] == "permission withdrawn"
    assert revoked < ended <= revoked + 0.2 + 1e-9, f"ended {ended - revoked:.3f} s after"
    before = [seen for t, seen in h.sinks.video if revoked - 0.5 <= t < revoked]
    assert before and all(isinstance(s, tuple) and s[1] for s in before), "speaking until R"
    # (A frame or block leaving at the very instant of the end went before it.)
    assert [(t, s) for t, s in h.sinks.video if t > ended + 1e-6] == [], "a frame after the end"
    assert [(t, b) for t, b in h.sinks.speech() if t > ended + 1e-6] == [], "sound after the end"
    assert h.sinks.speech()[-1][0] == pytest.approx(ended), "the voice went on until the end"
    entries, _seq, _head = gate.store.audit_log()
    mine = [e.data() for e in entries if e.data().get("session") == h.session.id]
    assert [e.action for e in entries if e.data().get("session") == h.session.id] == [
        "use_start",
        "use_end",
    ], mine
    checks = [e.data()["allowed"] for e in entries if e.action == "check"]
    assert checks == [True, True, False], "the offer, the watch's first check, the re-check"


def test_a_new_grant_is_followed_by_the_watermark(tmp_path, granted):
    """A second grant, then the first revoked: the session goes on, and from the next
    re-check its frames carry the second grant's id."""
    from consent.watermark import payload_of

    gate, world, grant, face = granted

    async def scenario(clock):
        check = admission_for(gate, face)
        async with Harness(clock, tmp_path, avatar=face, consent=check, config=CONSENT) as h:
            await h.until(1.0)
            first = h.session.stamp.watermark.payload
            second = world.grant()
            gate.store.revoke(grant.id, by="subject", reason="a new grant")
            await h.until(1.0 + 0.2 + 1e-3)  # one re-check period (and a float's width)
            return h, first, second, h.session.stamp.watermark.payload

    h, first, second, now = run(scenario)
    assert first == payload_of(grant.id)
    assert now == payload_of(second.id)
    assert h.first("state", state="ended")[1]["reason"] == "test over"


def test_an_unlisted_face_is_refused_by_the_same_admission(tmp_path, granted):
    """The offer's decision and the session's re-check are one function: a registered
    deployment that does not list the face refuses it, in plain words, with a 403."""
    from consent.portal.deployments import save_deployment

    gate, world, grant, face = granted
    check = admission_for(gate, face)
    save_deployment(gate.store, name="kiosk", description="", avatars=[], by="op", create=True)
    refused = check()
    assert (refused.allowed, refused.status) == (False, 403)
    assert refused.reason == "deployment 'kiosk' is not set up to show this face"


def test_a_face_taken_off_the_deployment_list_is_withdrawn_within_one_recheck(tmp_path, granted):
    """The operator saves the kiosk's list without the face while it is shown: the
    grant still holds, but the session ends within one re-check, as for a revoke."""
    from consent.portal.deployments import save_deployment

    gate, world, grant, face = granted
    save_deployment(
        gate.store, name="kiosk", description="", avatars=[face.id], by="op", create=True
    )

    async def scenario(clock):
        check = admission_for(gate, face)
        async with Harness(clock, tmp_path, avatar=face, consent=check, config=CONSENT) as h:
            await h.until(1.0)
            removed = clock.t
            save_deployment(
                gate.store, name="kiosk", description="", avatars=[], by="op", create=False
            )
            await h.wait_for("state", state="ended")
            return h, removed

    h, removed = run(scenario)
    ended, message = h.first("state", state="ended")
    assert message["reason"] == "permission withdrawn"
    assert removed < ended <= removed + 0.2 + 1e-9, f"ended {ended - removed:.3f} s after"
    assert [(t, s) for t, s in h.sinks.video if t > ended + 1e-6] == [], "a frame after the end"


def database_gone(gate, data_dir):
    """The consent database stops answering, as when its volume is lost: its folder is
    moved away and the store's pooled connections are closed (a new one cannot open).
    Returns a function that brings it back."""
    here, away = data_dir / "consent", data_dir / "consent-away"
    here.rename(away)
    gate.store.close()
    return lambda: away.rename(here)


FAIL_CLOSED = {"consent": {"recheck_ms": 200, "blind_after_s": 1.0}}


def test_a_consent_database_that_stops_answering_withdraws_the_face_after_the_bound(
    tmp_path, granted
):
    """The database goes at F while the face is shown: the re-checks fail and are retried
    every 200 ms, and once the first failed read is ``blind_after_s`` (1 s) old the
    session ends as on a refusal (fail closed), with the plain reason logged; not one
    frame after the end. The synthetic face needs no consent and is never re-checked."""
    from structlog.testing import capture_logs

    from consent.gate import UNCHECKED

    gate, world, grant, face = granted

    async def scenario(clock):
        check = admission_for(gate, face)
        async with Harness(clock, tmp_path, avatar=face, consent=check, config=FAIL_CLOSED) as h:
            await h.until(1.0)
            failed = clock.t
            database_gone(gate, tmp_path)
            await h.wait_for("state", state="ended")
            return h, failed

    with capture_logs() as logs:
        h, failed = run(scenario)
    ended, message = h.first("state", state="ended")
    assert message["reason"] == "permission withdrawn"
    # The first failed read comes at the next poll (within 200 ms), the end 1 s after it.
    assert failed + 1.0 < ended <= failed + 0.2 + 1.0 + 1e-9, f"ended {ended - failed:.3f} s after"
    assert [(t, s) for t, s in h.sinks.video if t > ended + 1e-6] == [], "a frame after the end"
    retries = [e for e in logs if e["event"] == "consent re-check failed; retrying"]
    assert len(retries) >= 4 and "database unavailable" in retries[0]["error"]
    [withdrawn] = [e for e in logs if e["event"] == "permission withdrawn"]
    assert withdrawn["reason"] == UNCHECKED

    async def synthetic(clock):
        async with Harness(clock, tmp_path, config=FAIL_CLOSED) as h:
            await h.until(3.0)
            return h

    assert run(synthetic).first("state", state="ended")[1]["reason"] == "test over"


def test_a_consent_database_back_within_the_bound_keeps_the_session(tmp_path, granted):
    """Gone for 0.5 s, less than ``blind_after_s``: the retried re-check gets its answer
    and the face goes on; a revoke after that still ends the session within one re-check."""
    gate, world, grant, face = granted

    async def scenario(clock):
        check = admission_for(gate, face)
        async with Harness(clock, tmp_path, avatar=face, consent=check, config=FAIL_CLOSED) as h:
            await h.until(1.0)
            back = database_gone(gate, tmp_path)
            await h.until(1.5)
            back()
            await h.until(4.0)
            assert h.first("state", state="ended") is None, "ended by a blip within the bound"
            revoked = clock.t
            gate.store.revoke(grant.id, by="subject", reason="changed my mind")
            await h.wait_for("state", state="ended")
            return h, revoked

    h, revoked = run(scenario)
    ended, message = h.first("state", state="ended")
    assert message["reason"] == "permission withdrawn"
    assert revoked <= ended <= revoked + 0.2 + 1e-9  # (a poll may fall on the instant)
