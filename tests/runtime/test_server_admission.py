"""The one admission decision of the server (an offer) and of a session (each re-check)."""

from __future__ import annotations

import pytest

from consent.gate import Decision
from runtime.admission import Admission, decide

FACE_OK = Decision(True, "grant g1 allows the face for 'eldercare' in 'kiosk'", grant_id="g1")
FACE_NO = Decision(False, "grant g1 was revoked", grant_id="g1")
VOICE_OK = Decision(True, "grant v1 allows the face and voice", grant_id="v1")
VOICE_NO = Decision(False, "grant v1 does not allow using the voice", grant_id="v1")


@pytest.mark.parametrize(
    ("face", "listed", "voice", "expected"),
    [
        # Refusals, in their fixed order: the face's grant first ...
        (
            FACE_NO,
            False,
            VOICE_NO,
            Admission(False, 403, "no permission to use this face: grant g1 was revoked", "g1"),
        ),
        # ... then the deployment's list of faces ...
        (
            FACE_OK,
            False,
            VOICE_NO,
            Admission(False, 403, "deployment 'kiosk' is not set up to show this face"),
        ),
        # ... then the cloned voice.
        (
            FACE_OK,
            True,
            VOICE_NO,
            Admission(
                False,
                403,
                "no permission to use this voice here: grant v1 does not allow using the voice",
            ),
        ),
        (
            None,
            None,
            VOICE_NO,
            Admission(
                False,
                403,
                "no permission to use this voice here: grant v1 does not allow using the voice",
            ),
        ),
        # Allowed: a listed or unregistered deployment, a stock or allowed voice.
        (FACE_OK, True, VOICE_OK, Admission(True, 200, FACE_OK.reason, "g1")),
        (FACE_OK, None, None, Admission(True, 200, FACE_OK.reason, "g1")),
        (None, None, None, Admission(True, 200, "the synthetic face needs no grant")),
        (None, None, VOICE_OK, Admission(True, 200, "the synthetic face needs no grant")),
    ],
)
def test_each_refusal_in_its_order_with_its_status_and_words(face, listed, voice, expected):
    assert decide(deployment="kiosk", face=face, listed=listed, voice=voice) == expected


BLIND = "this node lost its revocation channel to the consent database 6 s ago"


@pytest.mark.parametrize(
    ("face", "listed", "voice", "expected"),
    [
        # An otherwise admissible real face: 503, so the balancer tries another node.
        (FACE_OK, True, VOICE_OK, Admission(False, 503, BLIND, "g1")),
        (FACE_OK, None, None, Admission(False, 503, BLIND, "g1")),
        # Every other refusal comes first (it holds on any node) ...
        (
            FACE_NO,
            True,
            None,
            Admission(False, 403, f"no permission to use this face: {FACE_NO.reason}", "g1"),
        ),
        (
            FACE_OK,
            False,
            None,
            Admission(False, 403, "deployment 'kiosk' is not set up to show this face"),
        ),
        # ... and the synthetic face needs no grant, so no revocation channel either.
        (None, None, None, Admission(True, 200, "the synthetic face needs no grant")),
    ],
)
def test_a_node_blind_to_revocations_refuses_only_real_faces(face, listed, voice, expected):
    got = decide(deployment="kiosk", face=face, listed=listed, voice=voice, blind=BLIND)
    assert got == expected
