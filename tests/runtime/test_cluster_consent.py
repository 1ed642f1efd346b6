"""One consent across two session nodes (#13): real ``likeness serve`` processes, one
throwaway PostgreSQL, real aiortc clients, the portal over HTTP.

Both nodes serve the same real face: their ``consent`` and ``avatars`` folders are
one shared folder (``tests/runtime/cluster.py``), as docs/deploy.md asks. The face is
prepared from the test photo and given to a person who signed up on node A's portal;
the liveness record that the live ceremony would make is written straight into the
store (the ceremony has its own tests), and the grant is issued through the portal.
Sessions run on node B; every withdrawal is made on node A:

- the person revokes through node A's portal: the session on node B ends within 1 s
  and no frame of the face arrives after its end;
- node B loses its database (through a TCP proxy the test cuts): its real-face session
  ends within the documented bound (``consent.blind_after_s`` after the loss is
  noticed) and its synthetic-face session goes on;
- the operator takes the face off a deployment's list on node A: its session on node
  B ends within 1 s.

The balancer plays no part in these (``test_balancer.py`` tests it): offers go to the
node under test directly. Skipped only without Debian's PostgreSQL.
"""

from __future__ import annotations

import asyncio
import json
import statistics
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import av
import httpx
import numpy as np
import pytest

from consent.epoch_feed import FeedOptions
from runtime.rtc_client import CompanionClient
from tests.consent.conftest import pg_cluster  # noqa: F401 - the throwaway PostgreSQL
from tests.runtime.cluster import NO_STUN, Cluster, PgProxy, open_client, start_cluster, until
from tests.serving import Server

pytestmark = pytest.mark.slow

BLIND_AFTER_S = 2.0  # consent.blind_after_s of both nodes (default 5)
CHECK_S = FeedOptions().check_s  # the feed's backstop read and its timeout (5 s, fixed)
RUNS = 5  # sessions ended per withdrawal test
IN_FLIGHT_S = 0.1  # a face frame sent just before the end may arrive after it (25 fps)
DEPLOYMENT = "browser-chat"  # consent.deployment: an offer naming none
PASSWORD = "correct horse battery staple"


class Portal:
    """One person signed in to a node's portal over HTTP: cookie jar and CSRF token."""

    def __init__(self, url: str) -> None:
        self.http = httpx.Client(base_url=f"{url}/api/consent", timeout=30)
        self.csrf = ""
        self.user: dict[str, Any] = {}

    def _enter(self, path: str, body: dict[str, str], status: int) -> Portal:
        answer = self.http.post(path, json=body)
        assert answer.status_code == status, answer.text
        me = self.http.get("/auth/me")
        assert me.status_code == 200, me.text
        self.csrf, self.user = me.json()["csrf_token"], me.json()["user"]
        return self

    def signup(self, email: str, name: str) -> Portal:
        return self._enter(
            "/auth/signup", {"email": email, "password": PASSWORD, "display_name": name}, 201
        )

    def signin(self, email: str) -> Portal:
        return self._enter("/auth/signin", {"email": email, "password": PASSWORD}, 200)

    def call(self, method: str, path: str, body: Any = None) -> httpx.Response:
        return self.http.request(method, path, json=body, headers={"X-CSRF-Token": self.csrf})


@dataclass
class World:
    cluster: Cluster
    store: Any  # a ConsentStore on the shared folder (the enrolment's stand-in)
    face: Any  # the PreparedAvatar both nodes serve
    shared: Path
    proxy: PgProxy  # between node B and PostgreSQL
    person: Portal  # the face's owner, signed in on node A
    operator: Portal  # signed in on node A

    @property
    def b(self) -> Server:
        return self.cluster.nodes["b"]

    def face_stored(self) -> bool:
        from avatar.store import AvatarStore

        return self.face.id in AvatarStore(self.shared / "avatars")

    def consented(self, deployments: list[str]) -> str:
        """The face in the shared folder, registered to the person with a passed liveness
        record, and a grant for ``deployments`` issued through node A's portal: its id.

        A revoke of a person's last grant deletes their data (the prepared face too),
        so each grant starts by putting the face back, as a new enrolment would."""
        from avatar.store import AvatarStore

        AvatarStore(self.shared / "avatars").save(self.face)
        subject = self.person.user["subject_id"]
        self.store.add_avatar(subject, self.face.id, np.zeros(128, np.float32))
        passed = self.store.record_liveness(
            subject,
            self.face.id,
            points={"digits": True, "turns": True, "lips": True, "identity": True},
            scores={"identity": 0.3},
            nonce=f"n-{time.monotonic_ns()}",
        )
        body = {
            "avatar_id": self.face.id,
            "liveness_id": passed.id,
            "allow_voice": False,
            "deployments": deployments,
            "purposes": ["companionship"],
            "expires_days": 1,
        }
        answer = self.person.call("POST", "/grants", body)
        assert answer.status_code == 201, answer.text
        return answer.json()["grant"]["id"]


@pytest.fixture(scope="module")
def world(request, tmp_path_factory) -> Iterator[World]:
    from skimage import data

    from avatar.face import FaceAnalyzer
    from avatar.face.prepare import prepare_photo
    from consent.portal import accounts
    from consent.store import ConsentStore

    postgres = request.getfixturevalue("pg_cluster")
    database = postgres.new_database()
    root = tmp_path_factory.mktemp("cluster-consent")
    shared = root / "shared"
    face = prepare_photo(data.astronaut(), FaceAnalyzer.load(), size=512)
    proxy = PgProxy(postgres.port)
    env = {
        "LIKENESS_SERVER__AVATARS": json.dumps([face.id]),
        "LIKENESS_CONSENT__BLIND_AFTER_S": str(BLIND_AFTER_S),
        "LIKENESS_PORTAL__COOKIE_SECURE": "false",  # plain HTTP on 127.0.0.1
    }
    try:
        with start_cluster(
            root,
            database,
            env=env,
            databases={"b": proxy.url(database)},
            shared=shared,
            balancer=False,
        ) as cluster:
            store = ConsentStore.open(shared, url=database)
            try:
                url = cluster.nodes["a"].url
                person = Portal(url).signup("eileen@example.org", "Eileen (test subject)")
                accounts.create_user(
                    store,
                    email="op@example.org",
                    display_name="operator",
                    role="operator",
                    password=PASSWORD,
                )
                operator = Portal(url).signin("op@example.org")
                yield World(cluster, store, face, shared, proxy, person, operator)
                person.http.close()
                operator.http.close()
            finally:
                store.close()
    finally:
        proxy.close()


def brightness_into(values: list[float]) -> Callable[[float, av.VideoFrame], None]:
    """A client's video hook: each frame's mean brightness (0-255), measured on a 32x32
    copy (cheap: the test's two cores also run both nodes)."""

    def record(_delivered: float, frame: av.VideoFrame) -> None:
        small = frame.reformat(width=32, height=32, format="rgb24").to_ndarray()
        values.append(float(small.mean()))

    return record


def timeline(client: CompanionClient, values: list[float]) -> list[tuple[float, float]]:
    """(arrival, brightness) of each frame the client got. The arrival is when the
    frame's first packet came in (``stamp_arrivals``), not when the decoder handed it
    over: under load that lags by 100 ms and more, after the session's end event."""
    arrived = client.got.video_arrived
    assert len(arrived) == len(values), "one brightness per frame"
    return list(zip(arrived, values, strict=True))


def shows_face(brightness: float) -> bool:
    """Anything but a black frame counts as the face (the AI label included)."""
    return brightness >= 5


def last_face_after(frames: list[tuple[float, float]], withdrawn_at: float, ended_at: float):
    """Check that the face was shown up to the withdrawal and that no frame of it came
    after the session's end (one in flight allowed); returns the last face frame's time."""
    shown = [b for t, b in frames if withdrawn_at - 0.5 <= t < withdrawn_at]
    assert len(shown) >= 5, f"{len(shown)} frames in the 0.5 s before the withdrawal"
    assert all(b > 20 for b in shown), "the face is shown until the withdrawal"
    last_face = max(t for t, b in frames if shows_face(b))
    assert last_face <= ended_at + IN_FLIGHT_S, (
        f"the face still arrived {last_face - ended_at:.2f} s after the session ended"
    )
    return last_face


async def face_session(world: World, deployment: str | None = None):
    """A session of the real face on node B, listening for a second; (client, the
    brightness of every frame it gets, see :func:`timeline`)."""
    values: list[float] = []
    client = await open_client(
        world.b.url,
        avatar=world.face.id,
        deployment=deployment,
        on_video=brightness_into(values),
        stamp_arrivals=True,
    )
    try:
        await client.wait_for("state", 10, state="listening")
        await asyncio.sleep(1.0)
    except BaseException:
        await client.close()
        raise
    return client, values


async def refused_offer(world: World) -> tuple[httpx.Response, float]:
    """A new real-face offer to node B that must be refused: the answer, how long it took."""
    offer = CompanionClient(
        world.b.url, avatar=world.face.id, keep_video=False, configuration=NO_STUN
    )
    began = time.monotonic()
    try:
        with pytest.raises(httpx.HTTPStatusError) as refused:
            await offer.connect(http_timeout_s=10)
    finally:
        await offer.pc.close()
    return refused.value.response, time.monotonic() - began


async def withdrawn(client: CompanionClient, within_s: float) -> tuple[dict, float]:
    """The session's end event and its arrival time; then a second for stragglers."""
    ended = await client.wait_for("state", within_s, state="ended")
    ended_at = client.got.first("state", state="ended")
    await asyncio.sleep(1.0)  # whatever node B still sends arrives meanwhile
    return ended, ended_at


def spread(name: str, seconds: list[float]) -> str:
    ms = sorted(1000 * s for s in seconds)
    return (
        f"{name}: median {statistics.median(ms):.0f} ms, min {ms[0]:.0f}, max {ms[-1]:.0f} "
        f"({len(ms)} runs)"
    )


async def test_a_revoke_on_node_a_ends_the_face_on_node_b_within_a_second(world):
    """The person revokes their only grant on node A's portal; the session on node B
    ends within 1 s with no frame of the face after its end, and node A's purge of the
    person's data deleted the prepared face from the folder node B serves it from."""
    took, last = [], []
    for run in range(RUNS):
        grant_id = await asyncio.to_thread(world.consented, [DEPLOYMENT])
        client, values = await face_session(world)
        try:
            revoked_at = time.monotonic()
            answer = await asyncio.to_thread(
                world.person.call,
                "POST",
                f"/grants/{grant_id}/revoke",
                {"confirm": True, "reason": "changed my mind"},
            )
            answered_at = time.monotonic()
            ended, ended_at = await withdrawn(client, 5)
        finally:
            await client.close()
        assert answer.status_code == 200, answer.text
        assert answer.json()["data_deleted"] is True, "the only grant: the data goes with it"
        assert ended["reason"] == "permission withdrawn"
        last_face = last_face_after(timeline(client, values), revoked_at, ended_at)
        assert not world.face_stored(), "node A's purge did not reach the shared folder"
        took.append(ended_at - revoked_at)
        last.append(last_face - revoked_at)
        print(
            f"run {run}: revoke on A -> session on B ended {1000 * took[-1]:.0f} ms "
            f"(portal answered after {1000 * (answered_at - revoked_at):.0f} ms), "
            f"last face frame {1000 * last[-1]:.0f} ms after the revoke"
        )
        # The design's promise. Measured 48-344 ms (median 91 ms, 30 revokes over 6 runs,
        # 2-core machine at load 5-7 from other tests, nice 19): ~3x under the bound.
        assert took[-1] <= 1.0, f"run {run}: took {took[-1]:.2f} s"
    print(spread("revoke on A -> session on B ended", took))
    print(spread("revoke on A -> last face frame from B", last))


async def test_the_operator_taking_the_face_off_a_deployment_on_node_a_ends_it_on_node_b(world):
    """A registered deployment shows only the faces its operator listed: the operator
    empties the list on node A; the session of that deployment on node B ends within
    1 s (the grant itself still stands)."""
    name = "ward-b"
    grant_id = await asyncio.to_thread(world.consented, [name])
    listed = {"description": "ward B", "avatars": [world.face.id]}
    made = await asyncio.to_thread(
        world.operator.call, "POST", "/deployments", {"name": name} | listed
    )
    assert made.status_code == 201, made.text
    took = []
    try:
        for run in range(RUNS):
            if run:
                put = await asyncio.to_thread(
                    world.operator.call, "PUT", f"/deployments/{name}", listed
                )
                assert put.status_code == 200, put.text
            client, values = await face_session(world, deployment=name)
            try:
                edited_at = time.monotonic()
                edit = await asyncio.to_thread(
                    world.operator.call,
                    "PUT",
                    f"/deployments/{name}",
                    {"description": "ward B", "avatars": []},
                )
                ended, ended_at = await withdrawn(client, 5)
            finally:
                await client.close()
            assert edit.status_code == 200, edit.text
            assert ended["reason"] == "permission withdrawn"
            last_face = last_face_after(timeline(client, values), edited_at, ended_at)
            took.append(ended_at - edited_at)
            print(
                f"run {run}: face taken off {name!r} on A -> session on B ended "
                f"{1000 * took[-1]:.0f} ms, last face frame {1000 * (last_face - edited_at):.0f}"
                " ms after the edit"
            )
            # Measured 50-166 ms (median 84 ms, 28 edits over 6 runs, same machine).
            assert took[-1] <= 1.0, f"run {run}: took {took[-1]:.2f} s"
    finally:
        await asyncio.to_thread(
            world.person.call, "POST", f"/grants/{grant_id}/revoke", {"confirm": True}
        )
    print(spread("deployment edit on A -> session on B ended", took))


# How long a node may go on showing a real face once its database is gone: the feed
# notices a reset connection at once and goes blind ``blind_after_s`` later; a silent
# link is noticed only by the backstop read (sent after ``check_s`` of silence), and
# blind ``blind_after_s`` after that read went unanswered. Before, the bound ran from
# when psycopg gave the read up (its timeout, then 10 s cancelling it): 20.06 s here
# with a 12 s bound (docs/deployment.md's 2 x check_s + blind_after_s).
NOTICED_S = {"closed": 0.0, "silent": CHECK_S}
# Measured (2-core machine at load 5-7, nice 19): closed 2.02-2.30 s against its 2 s
# bound (7 runs), silent 4.83-6.91 s against its 7 s bound (6 runs: the cut falls
# anywhere in the 5 s between two backstop reads, so up to 7 s is expected).
SLACK_S = 1.0  # the session's end reaching the client, on a loaded 2-core machine


@pytest.mark.parametrize("how", ["closed", "silent"])
async def test_node_b_cut_off_from_the_database_ends_real_faces_not_synthetic_ones(world, how):
    """Node B's every connection to PostgreSQL is cut (``closed``: reset and refused,
    the database gone; ``silent``: nothing goes through and nothing says so, a cut
    link). Its real-face session ends no sooner than ``blind_after_s`` (a blip rides
    through) and within the bound; its synthetic-face session goes on; a new
    real-face offer gets 503; node A still hears the channel."""
    await asyncio.to_thread(world.consented, [DEPLOYMENT])
    client, values = await face_session(world)
    synthetic_values: list[float] = []
    synthetic = await open_client(
        world.b.url, on_video=brightness_into(synthetic_values), stamp_arrivals=True
    )
    bound = NOTICED_S[how] + BLIND_AFTER_S + SLACK_S
    try:
        await synthetic.wait_for("state", 10, state="listening")
        cut_at = time.monotonic()
        await asyncio.to_thread(world.proxy.cut, how)
        if how == "closed":  # riding through: B cannot read its database, but still listens
            early, early_took = await refused_offer(world)
        ended, ended_at = await withdrawn(client, bound + 20)  # failing: how late
        health = {name: await world.cluster.health(name) for name in ("a", "b")}
        refused, refused_took = await refused_offer(world)
        await asyncio.sleep(1.0)
        synthetic_ended = synthetic.got.first("state", state="ended")
    finally:
        await asyncio.to_thread(world.proxy.restore)
        await client.close()

    async def listening() -> bool:
        return (await world.cluster.health("b"))["revocation_channel"]["state"] == "listening"

    try:
        await until(listening, 15, "node B hears the revocation channel again")
    finally:
        await synthetic.close()
    took = ended_at - cut_at
    print(
        f"{how}: database cut -> real-face session on B ended {took:.2f} s "
        f"(bound {bound - SLACK_S:g} s + {SLACK_S:g} s slack); a new real-face offer "
        f"then refused {refused.status_code} in {refused_took:.2f} s"
    )
    assert ended["reason"] == "permission withdrawn"
    assert BLIND_AFTER_S <= took <= bound, f"ended {took:.2f} s after the cut"
    frames = timeline(client, values)
    last_face_after(frames, cut_at + BLIND_AFTER_S, ended_at)  # shown while riding through
    assert health["b"]["revocation_channel"]["state"] == "blind", health["b"]
    assert health["a"]["revocation_channel"]["state"] == "listening", health["a"]
    # 503: the balancer moves the offer to another node. While riding through, the
    # database unreadable (before, a 500 no balancer retries); once blind, no read at
    # all (before, the read hung over a silent link).
    if how == "closed":
        assert early.status_code == 503, early.text
        assert "consent database" in early.json()["error"], early.text
        print(f"closed: a real-face offer while riding through refused 503 in {early_took:.2f} s")
    assert refused.status_code == 503, refused.text
    assert "revocation channel" in refused.json()["error"], refused.text
    assert synthetic_ended is None, "the synthetic face needs no grant: it goes on"
    after = [b for t, b in timeline(synthetic, synthetic_values) if 0 <= t - ended_at <= 2]
    assert len(after) >= 25 and all(b > 20 for b in after), (
        f"{len(after)} synthetic frames in the 2 s after the real face ended"
    )
    assert "real faces refused" in (world.b.log.read_text())
