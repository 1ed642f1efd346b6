"""Run the scripted exchanges through a real :class:`Conversation`, and sum them up.

Every turn goes through ``Conversation.reply`` as in a session: the persona's prompt,
the person's memory (one person per exchange, forgotten before and after), prompt
warming between turns, the sentence cut and the persona's sentence limit. The
distress detector reads each of the person's turns first, as the session does.
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from runtime.convsuite.checks import CHECKS, Verdict, judge_turn
from runtime.convsuite.exchanges import SITUATIONS, Exchange
from runtime.dialogue.conversation import Conversation
from runtime.errors import DialogueError
from runtime.safety import DistressDetector


@dataclass(frozen=True, slots=True)
class TurnResult:
    """What the person said, what they heard, and the verdicts on it.

    Attributes:
        user: the person's words.
        reply: the sentences the companion said, joined by spaces.
        seconds: from the question to the reply's last sentence.
        alert: the category of the safety alert the words raised, or None.
        verdicts: every check that applies to the turn.
        error: the backend's error, when the reply failed (then ``reply`` is what was
            said before it).
    """

    user: str
    reply: str
    seconds: float
    alert: str | None
    verdicts: tuple[Verdict, ...]
    error: str | None = None


@dataclass(frozen=True, slots=True)
class ExchangeResult:
    """One exchange, turn by turn."""

    exchange: Exchange
    turns: tuple[TurnResult, ...]

    def outcome(self) -> dict[str, bool]:
        """Per check that applied to some turn: whether every such turn passed."""
        result: dict[str, bool] = {}
        for turn in self.turns:
            for verdict in turn.verdicts:
                result[verdict.check] = result.get(verdict.check, True) and verdict.passed
        return result

    @property
    def passed(self) -> bool:
        """Every check passed on every turn."""
        return all(self.outcome().values())

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready: the exchange, its turns, replies and failed checks."""
        return {
            "id": self.exchange.id,
            "situation": self.exchange.situation,
            "passed": self.passed,
            "checks": self.outcome(),
            "turns": [
                {
                    "user": t.user,
                    "reply": t.reply,
                    "seconds": round(t.seconds, 3),
                    "alert": t.alert,
                    **({"error": t.error} if t.error else {}),
                    "failed": {v.check: v.reason for v in t.verdicts if not v.passed},
                }
                for t in self.turns
            ],
        }


async def run_exchange(
    conversation: Conversation, exchange: Exchange, detector: DistressDetector | None
) -> ExchangeResult:
    """Talk through ``exchange`` as a new person; judge every reply.

    A reply the backend fails (after the conversation's retries) is judged as what was
    said before the failure, and the error is kept with the turn.
    """
    person = f"convsuite-{exchange.id}"
    conversation.memory.forget(person)
    turns: list[TurnResult] = []
    try:
        for turn in exchange.turns:
            alert = detector.check(turn.user) if detector is not None else None
            started = time.perf_counter()
            said: list[str] = []
            error = None
            try:
                async for sentence in conversation.reply(person, turn.user):
                    said.append(sentence.strip())
            except DialogueError as exc:  # judged as what was said; the suite goes on
                error = str(exc)
            seconds = time.perf_counter() - started
            await conversation.warmed()
            reply = " ".join(s for s in said if s)
            verdicts = tuple(judge_turn(turn, reply, conversation.persona, alert))
            category = alert.category if alert is not None else None
            turns.append(TurnResult(turn.user, reply, seconds, category, verdicts, error))
    finally:
        conversation.memory.forget(person)
    return ExchangeResult(exchange, tuple(turns))


async def run_suite(
    conversation: Conversation,
    exchanges: Sequence[Exchange],
    detector: DistressDetector | None,
    on_exchange: Callable[[ExchangeResult], None] | None = None,
) -> list[ExchangeResult]:
    """Run ``exchanges`` in order, one person each; ``on_exchange`` after each."""
    results = []
    for exchange in exchanges:
        result = await run_exchange(conversation, exchange, detector)
        results.append(result)
        if on_exchange is not None:
            on_exchange(result)
    return results


def _rate(passed: int, total: int) -> float | None:
    return passed / total if total else None


def summarise(results: Sequence[ExchangeResult]) -> dict[str, Any]:
    """Pass rates per check and per situation, and overall, over exchanges.

    A check's rate counts the exchanges it applied to; a situation's rate counts its
    exchanges that passed every check; ``turn_checks`` counts single verdicts.
    """
    outcomes = [r.outcome() for r in results]
    checks: dict[str, dict[str, Any]] = {}
    for check in CHECKS:
        applied = [o[check] for o in outcomes if check in o]
        if applied:
            passed = sum(applied)
            checks[check] = {
                "passed": passed,
                "exchanges": len(applied),
                "rate": _rate(passed, len(applied)),
            }
    situations: dict[str, dict[str, Any]] = {}
    for situation in SITUATIONS:
        mine = [(r, o) for r, o in zip(results, outcomes, strict=True)
                if r.exchange.situation == situation]  # fmt: skip
        if not mine:
            continue
        failing: dict[str, int] = {}
        for _, outcome in mine:
            for check, ok in outcome.items():
                if not ok:
                    failing[check] = failing.get(check, 0) + 1
        passed = sum(r.passed for r, _ in mine)
        situations[situation] = {
            "passed": passed,
            "exchanges": len(mine),
            "rate": _rate(passed, len(mine)),
            "failing": failing,
        }
    verdicts = [v for r in results for t in r.turns for v in t.verdicts]
    seconds = [t.seconds for r in results for t in r.turns]
    passed_all = sum(r.passed for r in results)
    return {
        "overall": {
            "exchanges": len(results),
            "turns": len(seconds),
            "passed": passed_all,
            "rate": _rate(passed_all, len(results)),
            "turn_checks": len(verdicts),
            "turn_checks_passed": sum(v.passed for v in verdicts),
            "turn_check_rate": _rate(sum(v.passed for v in verdicts), len(verdicts)),
            "reply_p50_s": statistics.median(seconds) if seconds else None,
            "errors": sum(t.error is not None for r in results for t in r.turns),
        },
        "checks": checks,
        "situations": situations,
    }


def _pct(rate: float | None) -> str:
    return "n/a" if rate is None else f"{100 * rate:.0f} %"


def check_rows(summary: dict[str, Any]) -> list[list[str]]:
    """Table rows: check, passed / exchanges, rate."""
    return [
        [check, f"{row['passed']} / {row['exchanges']}", _pct(row["rate"])]
        for check, row in summary["checks"].items()
    ]


def situation_rows(summary: dict[str, Any]) -> list[list[str]]:
    """Table rows: situation, exchanges passing every check, rate, failing checks."""
    rows = []
    for situation, row in summary["situations"].items():
        failing = ", ".join(f"{c} {n}" for c, n in sorted(row["failing"].items())) or "-"
        rows.append(
            [situation, f"{row['passed']} / {row['exchanges']}", _pct(row["rate"]), failing]
        )
    overall = summary["overall"]
    rows.append(["all", f"{overall['passed']} / {overall['exchanges']}", _pct(overall["rate"]),
                 f"turn checks {_pct(overall['turn_check_rate'])}"])  # fmt: skip
    return rows
