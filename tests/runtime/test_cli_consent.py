"""The command line animates a real face only under a grant, and marks every frame.

Real parts only: a real consent store (SQLite in the test's data dir, as the CLI opens
it), signed grants, the real ``likeness`` process, and the mp4 it writes decoded with
PyAV; the watermark is read back with the data dir's key, as ``likeness consent
detect-watermark`` does, against every grant in the store.
"""

from __future__ import annotations

import json
import os
from datetime import timedelta
from pathlib import Path

import av
import numpy as np
import pytest
import soundfile as sf
from PIL import Image

from avatar.export import probe
from avatar.store import AvatarStore
from consent.keys import SigningKeys
from consent.store import utcnow
from consent.watermark import detect
from consent.watermark_key import WatermarkKey, key_dir
from runtime import components
from runtime.animation import FacePermit, FaceUse
from runtime.avatar_components import prepare_from_photo
from runtime.config import load_config
from runtime.errors import InputError
from runtime.label import AiLabel
from tests.conftest import espeak_wav
from tests.runtime.test_cli import run

pytestmark = pytest.mark.slow

ANIMATE = ("animate",)
SYNTH = ("avatar", "synth")


@pytest.fixture(scope="module")
def astronaut(tmp_path_factory) -> Path:
    from skimage import data

    path = tmp_path_factory.mktemp("photos") / "astronaut.png"
    Image.fromarray(data.astronaut()).save(path)
    return path


@pytest.fixture(scope="module")
def face_id(astronaut, tmp_path_factory) -> str:
    """The avatar id the CLI computes for the photo (the same code, the same defaults)."""
    settings = load_config(data_dir=tmp_path_factory.mktemp("prepare"))
    return prepare_from_photo(settings, astronaut, save=False).id


@pytest.fixture(scope="module")
def speech(tmp_path_factory) -> Path:
    return espeak_wav("Hello, it is good to see you.", tmp_path_factory.mktemp("s") / "s.wav")


class World:
    """The consent store of this test's data dir: one subject who owns the astronaut
    photo and a second photo (another face), no grant yet."""

    def __init__(self, data_dir: Path, face_id: str) -> None:
        self.data_dir = data_dir
        self.settings = load_config(data_dir=data_dir)
        self.store = components.consent_gate(self.settings).store
        self.keys = SigningKeys.load(data_dir / "consent" / "signing")
        self.face = face_id
        self.subject = self.store.add_subject("Astrid (test subject)").id
        self.store.add_avatar(self.subject, face_id, np.zeros(128, np.float32))
        self.other_face = "ab" * 32
        self.store.add_avatar(self.subject, self.other_face, np.zeros(128, np.float32))

    def grant(
        self,
        purposes=("offline-video",),
        deployments=("cli",),
        *,
        avatar: str | None = None,
        issued_ago: timedelta = timedelta(0),
        lasts: timedelta = timedelta(days=1),
        allow_face: bool = True,
    ):
        """Sign and store a grant issued ``issued_ago`` (after a passed liveness check)."""
        at = utcnow() - issued_ago
        avatar = avatar or self.face
        live = self.store.record_liveness(
            self.subject,
            avatar,
            points={"digits": True, "turns": True, "identity": True},
            scores={"identity": 0.3},
            nonce=os.urandom(8).hex(),
            now=at,
        )
        return self.store.issue(
            self.keys,
            subject_id=self.subject,
            avatar_id=avatar,
            deployments=list(deployments),
            purposes=list(purposes),
            expires_at=at + lasts,
            allow_face=allow_face,
            liveness_id=live.id,
            now=at,
        )

    def checks(self) -> list[dict]:
        """The audited gate decisions, oldest first."""
        entries, _seq, _hash = self.store.audit_log()
        return [e.data() for e in entries if e.action == "check"]

    def uses(self) -> list[tuple[str, dict]]:
        entries, _seq, _hash = self.store.audit_log()
        return [(e.action, e.data()) for e in entries if e.action in ("use_start", "use_end")]


@pytest.fixture
def world(_isolated_data_dir, face_id):
    """A consent store in the data dir the CLI of this test uses."""
    w = World(_isolated_data_dir, face_id)
    yield w
    w.store.close()


def refused(result) -> str:
    """The reason a refused command gave (its last stderr line), after checking exit 2."""
    assert result.returncode == 2, (result.returncode, result.stderr[-2000:])
    last = result.stderr.strip().splitlines()[-1]
    prefix = "likeness: error: no permission to use this face: "
    assert last.startswith(prefix), last
    return last.removeprefix(prefix)


def decode(path: Path, count: int = 4) -> list[np.ndarray]:
    """``count`` frames spread over the clip, decoded as RGB."""
    with av.open(str(path)) as container:
        frames = [f.to_ndarray(format="rgb24") for f in container.decode(video=0)]
    picks = np.linspace(2, len(frames) - 1, count).round().astype(int)
    return [frames[i] for i in picks]


def label_contrast(image: np.ndarray) -> float:
    """Mean luma of the label's glyph pixels minus that of its dark backing.

    The visible label draws white text on a darkened patch; on a frame without it the
    two sets of pixels are picture alike (a difference near 0).
    """
    label = AiLabel(image.shape[0])
    rows, cols = label.box()
    drawn = label.apply(np.zeros_like(image))[rows, cols].max(axis=2)
    glyph, backing = drawn > 200, drawn < 20
    luma = image[rows, cols].astype(np.float32) @ np.array([0.299, 0.587, 0.114], np.float32)
    return float(luma[glyph].mean() - luma[backing].mean())


def marks(world: World, frames: list[np.ndarray]):
    key = WatermarkKey.load(key_dir(world.data_dir), create=False)
    candidates = [record.grant.id for record in world.store.all_grants()]
    return [detect(key, image, candidates) for image in frames]


def test_a_photo_without_a_grant_is_refused_and_nothing_is_written(world, astronaut, speech):
    out_dir = world.data_dir / "out"
    out_dir.mkdir()
    for command in (ANIMATE, SYNTH):
        result = run(*command, str(astronaut), str(speech), "-o", str(out_dir / "clip.mp4"))
        assert refused(result) == f"no consent grant exists for avatar {world.face}"
    assert list(out_dir.iterdir()) == [], "no file, not even a partial one"
    assert world.face not in AvatarStore(world.settings.avatars_dir), "the face is not kept"
    decisions = world.checks()
    assert [(d["purpose"], d["allowed"]) for d in decisions] == [
        ("offline-video", False),
        ("training-data", False),
    ]
    assert all(d["avatar_id"] == world.face and d["deployment"] == "cli" for d in decisions)
    assert world.uses() == [], "a refused face is never used"


CASES = {
    "revoked": (dict(), "was revoked"),
    "expired": (dict(issued_ago=timedelta(days=2), lasts=timedelta(days=1)), "expired at"),
    "wrong-purpose": (dict(purposes=("companionship",)), "does not cover purpose"),
    "wrong-deployment": (dict(deployments=("kiosk",)), "does not cover deployment 'cli'"),
    "face-not-allowed": (dict(allow_face=False), "does not allow animating the face"),
    "another-face": (dict(avatar="other"), "no consent grant exists for avatar"),
}


@pytest.mark.parametrize("case", sorted(CASES))
@pytest.mark.parametrize("command", [ANIMATE, SYNTH], ids=["animate", "synth"])
def test_a_grant_that_does_not_cover_the_use_is_refused(case, command, world, astronaut, speech):
    overrides, expected = CASES[case]
    purpose = "offline-video" if command == ANIMATE else "training-data"
    args = {"purposes": (purpose,), **overrides}
    if args.get("avatar") == "other":
        args["avatar"] = world.other_face
    issued = world.grant(**args)
    if case == "revoked":
        world.store.revoke(issued.id, by="subject", reason="changed my mind")
    out = world.data_dir / "clip.mp4"
    result = run(*command, str(astronaut), str(speech), "-o", str(out))
    reason = refused(result)
    assert expected in reason, reason
    if case != "another-face":
        assert reason.startswith(f"grant {issued.id} "), reason
    if case == "wrong-purpose":
        assert reason.endswith(f"does not cover purpose {purpose!r}"), reason
    assert not out.exists() and not out.with_suffix(".landmarks.npz").exists()
    assert not [p for p in world.data_dir.iterdir() if p.name.startswith(".clip.")], "no temp"
    last = world.checks()[-1]
    assert last["allowed"] is False and last["reason"] == reason
    assert last["purpose"] == purpose and last["avatar_id"] == world.face


def test_the_other_command_s_purpose_does_not_cover_this_one(world, astronaut, speech):
    """A grant for offline video does not allow training data, and back."""
    video = world.grant(purposes=("offline-video",))
    result = run(*SYNTH, str(astronaut), str(speech), "-o", str(world.data_dir / "clip.mp4"))
    assert refused(result) == f"grant {video.id} does not cover purpose 'training-data'"


@pytest.mark.parametrize(
    ("command", "purpose", "deployment"),
    [(ANIMATE, "offline-video", "cli"), (SYNTH, "training-data", "dataset-lab")],
    ids=["animate", "synth-with-deployment"],
)
def test_a_valid_grant_writes_frames_labelled_and_watermarked_with_its_id(
    command, purpose, deployment, world, astronaut, speech
):
    # Another grant of the same person for another photo (also valid): detection must
    # name the grant this clip was made under, not just "some grant".
    decoy = world.grant((purpose,), (deployment,), avatar=world.other_face)
    issued = world.grant((purpose,), (deployment,))
    out = world.data_dir / "clip.mp4"
    extra = () if deployment == "cli" else ("--deployment", deployment)
    result = run(*command, str(astronaut), str(speech), "-o", str(out), *extra)
    assert result.returncode == 0, result.stderr[-2000:]
    assert f"watermarked: grant {issued.id}" in result.stderr
    info = probe(out)  # a playable clip, the speech muxed in and as long as the video
    assert info["width"] == 512 and info["height"] == 512
    assert abs(info["audio_duration"] - info["video_duration"]) <= 1 / info["fps"]
    assert abs(info["video_duration"] - sf.info(speech).duration) <= 1 / info["fps"] + 1e-6
    frames = decode(out)
    contrast = [label_contrast(image) for image in frames]
    assert min(contrast) > 80, contrast
    found = marks(world, frames)
    assert all(m.found and m.grant_id == issued.id for m in found), [
        (m.grant_id, round(m.score, 1)) for m in found
    ]
    assert decoy.id != issued.id and not any(m.synthetic for m in found)
    allowed = world.checks()[-1]
    assert allowed["allowed"] is True and allowed["grant_id"] == issued.id
    assert (allowed["purpose"], allowed["deployment"]) == (purpose, deployment)
    uses = world.uses()
    assert [action for action, _ in uses] == ["use_start", "use_end"]
    assert uses[0][1]["session"] == uses[1][1]["session"]
    assert uses[0][1]["avatar_id"] == world.face and uses[0][1]["deployment"] == deployment


def test_the_synthetic_face_needs_no_grant_and_says_synthetic(world, speech):
    out = world.data_dir / "clip.mp4"
    result = run(*SYNTH, "synthetic", str(speech), "-o", str(out))
    assert result.returncode == 0, result.stderr[-2000:]
    frames = decode(out)
    contrast = [label_contrast(image) for image in frames]
    assert min(contrast) > 80, contrast
    world.grant(("training-data",))  # a real grant among the candidates: not matched
    found = marks(world, frames)
    assert all(m.found and m.synthetic and m.grant_id is None for m in found), [
        (m.grant_id, round(m.score, 1)) for m in found
    ]
    assert world.checks() == [], "the synthetic face is never put to the gate"


def test_bench_avatar_on_a_photo_needs_a_benchmark_grant(world, astronaut):
    out = world.data_dir / "bench.json"
    args = ("bench", "avatar", "--face", str(astronaut), "--seconds", "1", "--json", str(out))
    world.grant(("offline-video",))
    assert "does not cover purpose 'benchmark'" in refused(run(*args))
    assert not out.exists()
    issued = world.grant(("benchmark",))
    result = run(*args)
    assert result.returncode == 0, result.stderr[-2000:]
    assert json.loads(out.read_text())["metrics"]["fps"] > 0
    assert world.checks()[-1]["grant_id"] == issued.id


def test_a_revoke_after_the_check_ends_the_permit(world, astronaut):
    """In process: a permit confirmed after a revoke refuses, so nothing would be written."""
    settings = load_config(data_dir=world.data_dir)
    issued = world.grant()
    face = prepare_from_photo(settings, astronaut, save=False)
    with FacePermit.ask(settings, face, FaceUse()) as permit:
        assert permit.confirm() == issued.id
        world.store.revoke(issued.id, by="subject", reason="changed my mind")
        with pytest.raises(InputError, match=f"grant {issued.id} was revoked"):
            permit.confirm()
    assert [a for a, _ in world.uses()] == ["use_start", "use_end"]
