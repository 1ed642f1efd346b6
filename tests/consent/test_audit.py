"""The audit chain: intact after real use; an edited or deleted row is detected."""

from __future__ import annotations

import pytest
from sqlalchemy import text

from consent.audit import verify_chain
from consent.gate import ConsentGate

from .conftest import World


@pytest.fixture
def used(world: World) -> World:
    g = world.grant()
    gate = ConsentGate(world.store, world.keys)
    gate.check(avatar_id=world.avatar, deployment="kiosk", purpose="eldercare")
    world.store.append_audit(
        "runtime", "use_start", world.subject, {"deployment": "kiosk", "session": "s1"}
    )
    world.store.append_audit(
        "runtime", "use_end", world.subject, {"deployment": "kiosk", "session": "s1"}
    )
    world.store.revoke(g.id, by="subject", reason="done")
    return world


def test_chain_intact(used: World):
    entries, head_seq, _ = used.store.audit_log()
    actions = [e.action for e in entries]
    assert actions == ["liveness", "grant", "check", "use_start", "use_end", "revoke", "delete"]
    assert [e.seq for e in entries] == list(range(1, 8)) and head_seq == 7
    assert entries[2].data()["allowed"] is True
    assert verify_chain(used.store) == []


def test_unknown_action_refused(store):
    with pytest.raises(Exception, match="unknown audit action"):
        store.append_audit("x", "tamper", None, {})


def test_edited_row_detected(used: World):
    with used.store.engine.begin() as conn:
        conn.execute(text("UPDATE audit SET actor = 'someone else' WHERE seq = 3"))
    problems = verify_chain(used.store)
    assert [(p.seq, p.kind) for p in problems] == [(3, "hash_mismatch")]


def test_edited_details_detected(used: World):
    with used.store.engine.begin() as conn:
        conn.execute(
            text("UPDATE audit SET details = :d WHERE seq = 3"), {"d": '{"allowed":false}'}
        )
    assert any(p.kind == "hash_mismatch" and p.seq == 3 for p in verify_chain(used.store))


def test_deleted_row_detected(used: World):
    with used.store.engine.begin() as conn:
        conn.execute(text("DELETE FROM audit WHERE seq = 4"))
    kinds = {(p.seq, p.kind) for p in verify_chain(used.store)}
    assert (5, "gap") in kinds and (5, "prev_mismatch") in kinds


def test_deleted_tail_detected(used: World):
    with used.store.engine.begin() as conn:
        conn.execute(text("DELETE FROM audit WHERE seq >= 6"))
    assert [p.kind for p in verify_chain(used.store)] == ["head_mismatch"]


def test_rehashed_edit_still_breaks_the_next_link(used: World):
    """Recomputing an edited row's own hash does not hide it: the next row no longer links."""
    from consent.audit import recompute

    entries, _, _ = used.store.audit_log()
    edited = entries[2].__class__(
        **{**{f: getattr(entries[2], f) for f in entries[2].__slots__}, "actor": "forger"}
    )
    new_hash = recompute(edited)
    with used.store.engine.begin() as conn:
        conn.execute(
            text("UPDATE audit SET actor = 'forger', hash = :h WHERE seq = 3"), {"h": new_hash}
        )
    assert [(p.seq, p.kind) for p in verify_chain(used.store)] == [(4, "prev_mismatch")]


def test_concurrent_writers_keep_one_chain(world: World):
    """Writers from several threads are serialised: no forks, no lost epoch bumps."""
    from concurrent.futures import ThreadPoolExecutor

    grants = [world.grant() for _ in range(4)]

    def work(i: int) -> None:
        world.store.append_audit("runtime", "use_start", world.subject, {"n": i})
        if i < len(grants):
            world.store.revoke(grants[i].id, by="subject", reason=f"r{i}")

    with ThreadPoolExecutor(8) as pool:
        list(pool.map(work, range(16)))
    assert world.store.epoch() == 4
    assert verify_chain(world.store) == []
