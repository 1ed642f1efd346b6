"""Enrolment: from an uploaded photo and a live ceremony to a stored liveness record.

The portal's enrolment routes call this service; it holds the face analyzer and the
Whisper model (loaded once by :meth:`Enrolment.load`) and decides everything on the
server. Life of an enrolment::

    enrolment = Enrolment.load(settings, store)              # blocking: models load here
    avatar_id = enrolment.add_photo(subject_id, photo_bytes)  # exactly one face, or refused
    opened = enrolment.open_ceremony(subject_id, avatar_id, now=time.time())
    ...  # consent.ceremony.live drives opened.ceremony over WebRTC, then
    record = opened.finish(result, now=time.time())           # record.id: the grant's
    opened.close()                                            # the next ceremony may start

A grant rests only on a live ceremony. An uploaded clip (:meth:`Enrolment.challenge`,
:meth:`Enrolment.submit`) is still checked, for an operator's review, but its record
carries a failed ``live`` point, so no grant can rest on it.

Every method is blocking (models, database, files): call them from a worker thread in
async code. Checks run one at a time (a lock), since each takes the CPU for seconds.

Failures a person can fix raise :class:`EnrolmentError` with an HTTP-like ``status``
and a plain-words message for that person. A clip is kept only when
``keep_clips_days > 0``: then encrypted with the subject's data key in the subject's
folder (``ConsentStore.subject_dir``), deleted by :meth:`Enrolment.sweep_clips` once
its retention has passed, and gone at once when the subject is purged.
"""

from __future__ import annotations

import io
import math
import os
import random
import re
import secrets
import threading
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from avatar.errors import AvatarError
from avatar.face import FaceAnalyzer, FaceOptions, align_face, as_rgb
from avatar.face.align import map_mesh
from avatar.store import AvatarStore
from avatar.types import PreparedAvatar
from consent import ConsentError
from consent.ceremony.engine import Ceremony, CeremonyOptions
from consent.ceremony.plan import plan_ceremony
from consent.errors import GrantError, NotFoundError, ShreddedError
from consent.liveness.challenge import Challenge, issue_challenge
from consent.liveness.nonces import UNKNOWN, USED, DatabaseNonceBook, StoredChallenge, nonce_hash
from consent.liveness.result import sentence
from consent.liveness.verify import (
    LivenessOptions,
    LivenessResult,
    Point,
    load_asr,
    verify_clip,
)
from consent.store import ConsentStore, LivenessInfo, photo_hash
from voice.types import AudioChunk
from voice.vad import SileroVAD

_JPEG = b"\xff\xd8\xff"
_PNG = b"\x89PNG\r\n\x1a\n"
_CLIP_NAME = re.compile(r"^clip-([0-9a-f]{1,64})-(\d{1,12})\.enc$")
DAY_S = 86_400.0
CLIP_REVIEW_ONLY = "An uploaded clip is checked for review only; a grant needs the live ceremony."
BUSY = "Another live check is running on this server: wait a minute, then try again."


class EnrolmentError(ConsentError):
    """A photo or clip was refused, or an enrolment step cannot be taken.

    Attributes:
        status: the HTTP status a route should answer with (400 bad input, 404 unknown,
            409 already used, 410 deleted, 413 too large, 415 wrong type, 422 no usable
            face, 429 too many challenges).
        message: plain words for the person (also ``str(error)``).
    """

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.message = message


@dataclass(frozen=True, slots=True)
class EnrolmentOptions:
    """Limits of the enrolment service.

    Attributes:
        max_photo_bytes: larger photo uploads are refused (413).
        max_photo_pixels: photos with more pixels are refused before decoding (413).
        min_photo_side: photos with a shorter side are refused (422).
        max_clip_bytes: larger clip uploads are refused (413).
        challenge_ttl_s: seconds a challenge stays valid (60 to 120).
        challenges_per_hour: challenges one subject may be issued per hour (429 beyond).
        keep_clips_days: 0 discards every clip after its check; more keeps it encrypted
            for that many days.
        avatar_size: side of the prepared face crop saved for animation.
        liveness: the thresholds of the uploaded clip's check.
        ceremony: the thresholds and timing of the live ceremony.
    """

    max_photo_bytes: int = 10_000_000
    max_photo_pixels: int = 40_000_000
    min_photo_side: int = 64
    max_clip_bytes: int = 50_000_000
    challenge_ttl_s: float = 90.0
    challenges_per_hour: int = 20
    keep_clips_days: int = 0
    avatar_size: int = 512
    liveness: LivenessOptions = field(default_factory=LivenessOptions)
    ceremony: CeremonyOptions = field(default_factory=CeremonyOptions)

    def __post_init__(self) -> None:
        if self.max_photo_bytes < 1 or self.max_clip_bytes < 1:
            raise ValueError("EnrolmentOptions: byte limits must be positive")
        if not 60.0 <= self.challenge_ttl_s <= 120.0:
            raise ValueError("EnrolmentOptions.challenge_ttl_s must be 60..120")
        if self.challenges_per_hour < 1:
            raise ValueError("EnrolmentOptions.challenges_per_hour must be at least 1")
        if not 0 <= self.keep_clips_days <= 365:
            raise ValueError("EnrolmentOptions.keep_clips_days must be 0..365")

    @classmethod
    def from_settings(cls, settings: Any) -> EnrolmentOptions:
        """Options from ``runtime.config.Settings`` (consent, portal and avatar sections)."""
        return cls(
            challenges_per_hour=settings.portal.challenges_per_hour,
            keep_clips_days=settings.consent.keep_clips_days,
            avatar_size=settings.avatar.size,
        )


def face_options(settings: Any) -> FaceOptions:
    """The face rules of enrolment: the configured ones, but exactly one face."""
    a = settings.avatar
    return FaceOptions(
        max_side=a.max_side,
        min_face_px=a.min_face_px,
        multiple="refuse",
        max_abs_yaw_deg=a.max_abs_yaw_deg,
        backend=a.landmarks,
    )


def result_json(result: LivenessResult, record: LivenessInfo) -> dict:
    """The wire body of ``POST /api/consent/enrol/clip`` for a checked clip (and the
    fields the live ceremony's result message shares with it)."""
    return {
        "passed": result.passed,
        "liveness_id": record.id,
        "avatar_id": record.avatar_id,
        "points": [{"name": p.name, "passed": p.passed, "reason": p.reason} for p in result.points],
        "seconds": round(float(result.timings.get("total", 0.0)), 3),
    }


class Enrolment:
    """Photos, live ceremonies (and, for review, clip checks) of people enrolling their face.

    Build it with :meth:`load`; ``__init__`` takes parts already loaded.

    Args:
        store: the consent store (migrated).
        analyzer: a loaded face analyzer; its options should refuse several faces
            (:func:`face_options`).
        asr: a Whisper recogniser from :func:`consent.liveness.verify.load_asr`.
        avatars: where the prepared face is saved for animation (id = the photo's
            sha256, the id grants name); None saves nothing.
        options: limits; None uses the defaults.
        rng: where the codes and turns come from: None draws them from ``secrets``;
            tests pass a seeded ``random.Random`` (the nonce is always from ``secrets``).
    """

    def __init__(
        self,
        store: ConsentStore,
        analyzer: FaceAnalyzer,
        asr: Any,
        avatars: AvatarStore | None = None,
        options: EnrolmentOptions | None = None,
        rng: random.Random | None = None,
    ) -> None:
        self.store = store
        self.analyzer = analyzer
        self.asr = asr
        self.avatars = avatars
        self.options = options or EnrolmentOptions()
        self.book = DatabaseNonceBook(store.engine, store.keys)
        self._rng = rng
        self._lock = threading.Lock()  # the face analyzer and Whisper, one call at a time
        self._ceremony_slot = threading.Lock()  # one live ceremony at a time

    @classmethod
    def load(
        cls,
        settings: Any,
        store: ConsentStore,
        *,
        analyzer: FaceAnalyzer | None = None,
        asr: Any = None,
    ) -> Enrolment:
        """Load the face models and Whisper once (blocking, a few seconds).

        Args:
            settings: ``runtime.config.Settings``: ``asr.model``, the ``avatar`` face
                rules, ``consent.keep_clips_days``, ``portal.challenges_per_hour`` and
                ``avatars_dir`` are read.
            store: the consent store the records go to.
            analyzer: an already loaded analyzer to share (else one is loaded).
            asr: an already loaded digits recogniser to share (else one is loaded).

        Returns:
            The service; hand it to the portal (``PortalContext.enrolment``).
        """
        return cls(
            store,
            analyzer or FaceAnalyzer.load(face_options(settings)),
            asr or load_asr(settings.asr.model),
            AvatarStore(settings.avatars_dir),
            EnrolmentOptions.from_settings(settings),
        )

    # ---- photo ----------------------------------------------------------------------

    def add_photo(self, subject_id: str, data: bytes) -> str:
        """Check a photo, record its face for ``subject_id`` and prepare it for animation.

        Args:
            subject_id: the person the photo shows (the caller checked who may act).
            data: the uploaded JPEG or PNG bytes.

        Returns:
            The avatar id (the photo's sha256): ask for a challenge with it next.

        Raises:
            EnrolmentError: empty (400), too large (413), not a JPEG/PNG (415), not
                decodable, no face, several faces, face too small or turned (422),
                unknown subject (404), photo registered to someone else (409).
        """
        rgb = self._decode_photo(data)
        with self._lock:
            try:
                face = self.analyzer.analyze(rgb)
                embedding = self.analyzer.embed(rgb, face)
            except AvatarError as err:
                message = sentence(str(err).replace("the image", "the photo"))
                raise EnrolmentError(422, message) from None
        avatar_id = photo_hash(bytes(data))
        try:
            self.store.add_avatar(subject_id, avatar_id, embedding)
        except NotFoundError:
            raise EnrolmentError(404, "This person is not registered: sign in again.") from None
        except GrantError as err:
            raise EnrolmentError(409, sentence(str(err))) from None
        if self.avatars is not None:
            aligned = align_face(rgb, face.landmarks, size=self.options.avatar_size)
            self.avatars.save(
                PreparedAvatar(
                    id=avatar_id,
                    image=aligned.crop,
                    landmarks=aligned.landmarks,
                    synthetic=False,
                    pose=face.pose,
                    source_box=aligned.source_box(),
                    warnings=face.warnings,
                    mesh=None if face.mesh is None else map_mesh(face.mesh.points, aligned.matrix),
                )
            )
        return avatar_id

    def _decode_photo(self, data: bytes) -> np.ndarray:
        opts = self.options
        if not data:
            raise EnrolmentError(400, "The photo is empty: choose a photo file.")
        if len(data) > opts.max_photo_bytes:
            raise EnrolmentError(
                413,
                f"The photo is too large ({len(data) / 1e6:.1f} MB, at most "
                f"{opts.max_photo_bytes / 1e6:.0f} MB): choose a smaller photo.",
            )
        if not (bytes(data[:3]) == _JPEG or bytes(data[:8]) == _PNG):
            raise EnrolmentError(415, "This file is not a JPEG or PNG photo: choose a photo.")
        try:
            with Image.open(io.BytesIO(data), formats=("JPEG", "PNG")) as img:
                if img.width * img.height > opts.max_photo_pixels:
                    raise EnrolmentError(
                        413,
                        f"The photo has too many pixels ({img.width}x{img.height}): choose a "
                        f"photo under {opts.max_photo_pixels / 1e6:.0f} megapixels.",
                    )
                if min(img.width, img.height) < opts.min_photo_side:
                    raise EnrolmentError(
                        422,
                        f"The photo is too small ({img.width}x{img.height}): choose a photo "
                        f"at least {opts.min_photo_side} pixels on each side.",
                    )
                img.load()
                upright = ImageOps.exif_transpose(img)
                if upright.mode in ("RGBA", "LA", "PA") or "transparency" in upright.info:
                    rgba = upright.convert("RGBA")
                    upright = Image.alpha_composite(Image.new("RGBA", rgba.size, "white"), rgba)
                return as_rgb(np.asarray(upright.convert("RGB")))
        except EnrolmentError:
            raise
        except (UnidentifiedImageError, OSError, ValueError, SyntaxError, AvatarError):
            raise EnrolmentError(
                422, "The photo could not be read (it may be damaged): choose another photo."
            ) from None

    # ---- challenges -------------------------------------------------------------------

    def challenge(self, subject_id: str, avatar_id: str, now: float) -> StoredChallenge:
        """Issue a new challenge for ``subject_id`` to answer with the face of ``avatar_id``.

        Returns:
            The challenge; send ``.to_json()`` to the browser.

        Raises:
            EnrolmentError: the photo is not this subject's (404) or was deleted (410),
                or too many challenges were issued in the last hour (429).
        """
        self._own_photo(subject_id, avatar_id)
        self._within_rate(subject_id, now)
        challenge = issue_challenge(self._rng, ttl_s=self.options.challenge_ttl_s, now=now)
        return self.book.register(challenge, subject_id, avatar_id)

    def _within_rate(self, subject_id: str, now: float) -> None:
        limit = self.options.challenges_per_hour
        if self.book.issued_since(subject_id, now - 3600.0) >= limit:
            raise EnrolmentError(
                429,
                f"Too many checks were started in the last hour (at most {limit}): "
                "wait a while, then try again.",
            )

    def pending(self, subject_id: str, now: float) -> StoredChallenge | None:
        """The subject's newest unused, unexpired challenge (to resume), or None."""
        found = self.book.pending(subject_id, now)
        return found if found is not None and found.challenge.nonce else None

    def _own_photo(self, subject_id: str, avatar_id: str) -> np.ndarray:
        if self.store.subject_of_avatar(avatar_id) != subject_id:
            raise EnrolmentError(404, "This photo is unknown: upload your photo first.")
        try:
            return self.store.avatar_embedding(avatar_id)
        except (ShreddedError, NotFoundError):
            raise EnrolmentError(410, "This photo was deleted: upload it again.") from None

    # ---- the live ceremony ------------------------------------------------------------

    def open_ceremony(self, subject_id: str, avatar_id: str, now: float) -> OpenCeremony:
        """Start a live ceremony for ``subject_id`` with the face of ``avatar_id``.

        Plans the prompts, registers the plan's nonce as a challenge (counted by the
        hourly limit) and uses it up at once: the ceremony starts now, and its nonce
        point says whether that worked. Only one ceremony runs per server at a time.

        Returns:
            The open ceremony: drive ``.ceremony`` (``consent.ceremony.live``), then call
            ``.finish(result, now)`` and always ``.close()``.

        Raises:
            EnrolmentError: the photo is not this subject's (404) or was deleted (410),
                too many checks in the last hour (429), another ceremony is running (503).
        """
        reference = self._own_photo(subject_id, avatar_id)
        self._within_rate(subject_id, now)
        if not self._ceremony_slot.acquire(blocking=False):
            raise EnrolmentError(503, BUSY)
        try:
            plan = plan_ceremony(rng=self._rng)
            challenge = Challenge(
                nonce=plan.nonce,
                digits=plan.digits,
                turns=plan.turns,  # type: ignore[arg-type]
                issued_at=now,
                expires_at=now + self.options.challenge_ttl_s,
            )
            self.book.register(challenge, subject_id, avatar_id)
            verdict = self.book.consume(plan.nonce, now, subject_id, avatar_id)
            nonce = Point("nonce", verdict.ok, 1.0 if verdict.ok else 0.0, verdict.reason)
            ceremony = Ceremony(
                plan,
                reference,
                self.analyzer,
                self._transcribe,
                SileroVAD.load(),
                self.options.ceremony,
                nonce=nonce,
            )
        except BaseException:
            self._ceremony_slot.release()
            raise
        return OpenCeremony(
            secrets.token_hex(8), subject_id, avatar_id, ceremony, self._lock, self, plan.nonce
        )

    def _transcribe(self, pcm: np.ndarray) -> str:
        return self.asr.transcribe_sync(AudioChunk(pcm, 16_000)).text

    # ---- the uploaded clip (review only) ----------------------------------------------

    def submit(
        self, subject_id: str, nonce: str, clip: bytes, started_at: float, now: float
    ) -> tuple[LivenessResult, LivenessInfo]:
        """Check a recorded clip against its challenge and store the outcome, for review.

        The outcome never passes: a failed ``live`` point (:data:`CLIP_REVIEW_ONLY`)
        follows the clip's own points, so no grant can rest on an uploaded clip (an
        attacker forges one offline from a photo). The nonce is used up whatever the
        outcome. The raw clip is discarded after the
        check unless ``keep_clips_days > 0`` (then kept encrypted, see the module doc).

        Args:
            subject_id: who uploads (the challenge must have been issued to them).
            nonce: the challenge's nonce.
            clip: the recorded WebM (or MP4) bytes.
            started_at: when recording started, unix seconds, as the browser says.
            now: when the upload arrived, unix seconds (the server's clock).

        Returns:
            (result, record): show every point of ``result`` (``result_json``); the
            clip's own points say whether it would have held.

        Raises:
            EnrolmentError: bad upload (400/413), unknown challenge (404), challenge
                already used (409), photo deleted (410), or an unreadable clip (400,
                after the attempt was recorded as failed).
        """
        if not clip:
            raise EnrolmentError(400, "The uploaded clip is empty: record it again.")
        if len(clip) > self.options.max_clip_bytes:
            raise EnrolmentError(
                413,
                f"The clip is too large ({len(clip) / 1e6:.0f} MB, at most "
                f"{self.options.max_clip_bytes / 1e6:.0f} MB): record only the code and turns.",
            )
        if not isinstance(started_at, int | float) or not math.isfinite(started_at):
            raise EnrolmentError(400, "The recording's start time is missing: record again.")
        found = self.book.lookup(nonce, subject_id) if nonce else None
        if found is None:
            raise EnrolmentError(404, UNKNOWN)
        if found.used_at is not None:
            raise EnrolmentError(409, USED)
        reference = self._own_photo(subject_id, found.avatar_id)
        challenge = replace(found.challenge, nonce=nonce)
        with self._lock:
            result = verify_clip(
                bytes(clip),
                challenge,
                reference,
                now,
                self.analyzer,
                self.asr,
                nonces=self.book.bound(subject_id, found.avatar_id),
                started_at=float(started_at),
                options=self.options.liveness,
            )
        review = Point("live", False, 0.0, CLIP_REVIEW_ONLY)
        result = replace(result, passed=False, points=(*result.points, review))
        record = self._record(subject_id, found.avatar_id, nonce, result, now)
        if self.options.keep_clips_days > 0:
            self._keep_clip(subject_id, record.id, bytes(clip), now)
        unreadable = [p for p in result.points if p.name == "clip"]
        if unreadable:
            raise EnrolmentError(
                400, f"{unreadable[0].reason} Ask for a new code, then record again."
            )
        return result, record

    def _record(
        self, subject_id: str, avatar_id: str, nonce: str, result: LivenessResult, now: float
    ) -> LivenessInfo:
        scores = {p.name: float(p.score) for p in result.points if math.isfinite(p.score)}
        timings = result.timings
        scores["check_seconds"] = float(timings.get("total", timings.get("duration", 0.0)))
        try:
            record = self.store.record_liveness(
                subject_id,
                avatar_id,
                points={p.name: p.passed for p in result.points},
                scores=scores,
                nonce=nonce_hash(nonce),
                now=datetime.fromtimestamp(now, UTC),
            )
        except GrantError:  # a concurrent upload of the same challenge recorded first
            raise EnrolmentError(409, USED) from None
        self.book.record_outcome(nonce, record.id, {p.name: p.reason for p in result.points})
        return record

    def reasons(self, liveness_id: str) -> dict[str, str]:
        """The plain-words reason of every point of a stored check ({} when unknown)."""
        found = self.book.by_liveness(liveness_id)
        return dict(found.reasons or {}) if found is not None else {}

    # ---- kept clips ---------------------------------------------------------------------

    def _clips_dir(self, subject_id: str) -> Path:
        folder = self.store.subject_dir(subject_id) / "clips"
        folder.mkdir(mode=0o700, exist_ok=True)
        return folder

    def _keep_clip(self, subject_id: str, liveness_id: str, clip: bytes, now: float) -> Path:
        expires = int(now + self.options.keep_clips_days * DAY_S)
        path = self._clips_dir(subject_id) / f"clip-{liveness_id}-{expires}.enc"
        blob = self.store.keys.encrypt(subject_id, clip)
        tmp = path.with_name(f".{path.name}.{secrets.token_hex(4)}.tmp")
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        try:
            os.write(fd, blob)
            os.fsync(fd)
        finally:
            os.close(fd)
        os.replace(tmp, path)
        return path

    def kept_clips(self, subject_id: str) -> list[tuple[str, float, Path]]:
        """(liveness id, expiry in unix seconds, encrypted file) of each kept clip."""
        if self.store.files_dir is None:
            return []
        out = []
        for path in sorted(self._clips_dir(subject_id).glob("clip-*.enc")):
            match = _CLIP_NAME.match(path.name)
            if match:
                out.append((match.group(1), float(match.group(2)), path))
        return out

    def read_kept_clip(self, subject_id: str, liveness_id: str) -> bytes | None:
        """The decrypted clip of a check, if it is still kept (ShreddedError after a purge)."""
        for kept_id, _expires, path in self.kept_clips(subject_id):
            if kept_id == liveness_id:
                return self.store.keys.decrypt(subject_id, path.read_bytes())
        return None

    def sweep_clips(self, now: float) -> int:
        """Delete every kept clip whose retention ended at or before ``now`` (see
        :func:`sweep_clips`)."""
        return sweep_clips(self.store, now)


class OpenCeremony:
    """A live ceremony opened by :meth:`Enrolment.open_ceremony` (one per server at once).

    Attributes:
        id: names the ceremony in logs and in the portal's answer.
        subject_id: whose ceremony it is.
        avatar_id: the photo the live face is compared with.
        ceremony: the judge; call it from one worker thread, holding ``lock``.
        lock: the service's model lock (the face analyzer and Whisper are shared).
    """

    def __init__(
        self,
        id: str,
        subject_id: str,
        avatar_id: str,
        ceremony: Ceremony,
        lock: threading.Lock,
        service: Enrolment,
        nonce: str,
    ) -> None:
        self.id = id
        self.subject_id = subject_id
        self.avatar_id = avatar_id
        self.ceremony = ceremony
        self.lock = lock
        self._service = service
        self._nonce = nonce
        self._record: LivenessInfo | None = None
        self._closed = False

    def finish(self, result: LivenessResult, now: float) -> LivenessInfo:
        """Store the outcome as a liveness record (once; blocking: the database).

        Returns:
            The record: a passed one's id is the ``liveness_id`` of the grant request.
        """
        if self._record is None:
            self._record = self._service._record(
                self.subject_id, self.avatar_id, self._nonce, result, now
            )
        return self._record

    def close(self) -> None:
        """Let the next ceremony start (idempotent). Call it whatever happened."""
        if not self._closed:
            self._closed = True
            self._service._ceremony_slot.release()


def sweep_clips(store: ConsentStore, now: float) -> int:
    """Delete every kept liveness clip of ``store`` whose retention ended by ``now``.

    Needs no loaded models: the retention sweep (``consent.retention.sweep_forever``,
    ``likeness consent sweep``) calls it. Returns how many were deleted.
    """
    if store.files_dir is None or not store.files_dir.exists():
        return 0
    deleted = 0
    for path in store.files_dir.glob("*/clips/clip-*.enc"):
        match = _CLIP_NAME.match(path.name)
        if match and float(match.group(2)) <= now:
            path.unlink(missing_ok=True)
            deleted += 1
    return deleted


__all__ = [
    "CLIP_REVIEW_ONLY",
    "Enrolment",
    "EnrolmentError",
    "EnrolmentOptions",
    "OpenCeremony",
    "face_options",
    "result_json",
    "sweep_clips",
]
