"""The live ceremony's engine on a virtual clock: prompts one at a time, human reaction
times, early stops. Runs a bona fide synthetic person (a 3-D head that answers) and
variants of it that answer too soon, too late, or not at all.
"""

from __future__ import annotations

import dataclasses
import random

import numpy as np
import pytest

from avatar.face import FaceAnalyzer
from consent.ceremony.actors import LivePerson, persona
from consent.ceremony.engine import Ceremony, CeremonyOptions
from consent.ceremony.plan import plan_ceremony
from consent.ceremony.simulate import simulate
from consent.liveness.verify import load_asr
from voice.types import AudioChunk
from voice.vad import SileroVAD

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def models():
    analyzer = FaceAnalyzer.load()
    asr = load_asr()

    def transcribe(pcm: np.ndarray) -> str:
        return asr.transcribe_sync(AudioChunk(pcm, 16_000)).text

    return analyzer, transcribe


def _run(models, who, plan_seed: int = 5, actor=None):
    analyzer, transcribe = models
    person = actor or LivePerson(who)
    photo = LivePerson(who).photo()
    reference = analyzer.embed(photo, analyzer.analyze(photo))
    plan = plan_ceremony(rng=random.Random(plan_seed))
    return simulate(person, plan, reference, analyzer, transcribe, SileroVAD.load(), seed=plan_seed)


def test_a_genuine_ceremony_reveals_each_prompt_after_the_last_answer(models):
    run = _run(models, persona(3))
    assert run.result.passed, run.result.explain()
    line = run.ceremony.timeline()
    assert [e["kind"] for e in line] == [p.kind for p in run.ceremony.plan.prompts]
    low = CeremonyOptions().gap_s[0]
    for before, after in zip(line, line[1:], strict=False):
        assert before["done_at"] is not None
        assert after["sent_at"] >= before["done_at"] + low - 1e-6, (before, after)
    for e in line:
        assert e["shown_at"] is not None and e["sent_at"] <= e["shown_at"]


def test_an_answer_known_in_advance_is_refused(models):
    eager = dataclasses.replace(persona(3), reaction_s=(0.0, 0.08))
    run = _run(models, eager)
    assert not run.result.passed
    reaction = run.result.point("reaction")
    assert not reaction.passed and "sooner than a person can react" in reaction.reason


def test_a_slow_answer_is_refused(models):
    slow = dataclasses.replace(persona(3), reaction_s=(2.4, 2.7))
    run = _run(models, slow)
    reaction = run.result.point("reaction")
    assert not reaction.passed and "at most 2.0 s" in reaction.reason


class _Absent(LivePerson):
    """Sits in front of the camera and does nothing that is asked."""

    def on_prompt(self, prompt, shown_at):
        if prompt.kind == "flash":
            super().on_prompt(prompt, shown_at)


def test_nobody_answering_ends_the_ceremony_at_the_first_digits(models):
    who = persona(3)
    run = _run(models, who, actor=_Absent(who))
    assert not run.result.passed
    first = run.result.points[0]
    assert first.name == "ceremony" and "read the digits" in first.reason
    kinds = [e["kind"] for e in run.ceremony.timeline()]
    assert kinds == ["flash", "digits"]  # nothing more was revealed


def test_the_page_cannot_claim_it_showed_a_prompt_before_it_was_sent(models):
    analyzer, transcribe = models
    who = persona(3)
    person = LivePerson(who)
    plan = plan_ceremony(rng=random.Random(2))
    ceremony = Ceremony(
        plan,
        np.zeros(128),
        analyzer,
        transcribe,
        SileroVAD.load(),
        rng=random.Random(0),
        started_at=0.0,
    )
    sent = []
    t = 0.0
    while not sent and t < 5.0:
        ceremony.push_frame(t, person.frame(t))
        sent = ceremony.poll(t)
        t += 1 / 15
    assert sent and sent[0].kind == "flash"
    sent_at = ceremony.timeline()[0]["sent_at"]
    ceremony.shown(sent[0].id, ack_at=sent_at + 0.2, since_shown_s=100.0)
    assert ceremony.timeline()[0]["shown_at"] == pytest.approx(sent_at)
    assert ceremony.poll(t) == []  # the flash is still running: nothing else yet
