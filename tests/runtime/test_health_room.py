"""``GET /health/room``: the load balancer's check says whether a node can take a session.

The real app without its lifespan (no models loaded): the companion's state is set by
hand, so each case costs milliseconds."""

from __future__ import annotations

import pytest
from starlette.testclient import TestClient

from runtime.config import load_config
from runtime.server import create_app


@pytest.fixture
def node():
    app = create_app(load_config(server={"max_sessions": 2}))
    return app.state.companion, TestClient(app)  # no lifespan: nothing is loaded


def test_a_loading_node_has_no_room(node):
    _, client = node
    room = client.get("/health/room")
    assert room.status_code == 503
    assert room.json()["room"] is False and room.json()["status"] == "loading"


@pytest.mark.parametrize(
    ("sessions", "code", "room"), [(0, 200, True), (1, 200, True), (2, 503, False)]
)
def test_room_until_the_node_is_full(node, sessions, code, room):
    companion, client = node
    companion.models = object()  # ready
    companion.sessions.update({f"s{i}": (None, None) for i in range(sessions)})
    answer = client.get("/health/room")
    assert answer.status_code == code
    assert answer.json()["room"] is room
    assert answer.json()["sessions"] == sessions and answer.json()["max_sessions"] == 2
    # Plain /health keeps its meaning: a full node is alive and ready, only busy.
    health = client.get("/health")
    assert health.status_code == 200 and health.json()["status"] == "ready"
    assert "room" not in health.json()
