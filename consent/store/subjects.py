"""Subjects and their avatars (photos), with embeddings encrypted per subject."""

from __future__ import annotations

import hashlib
import re
from pathlib import Path
from typing import Any

import numpy as np
from sqlalchemy.exc import IntegrityError

from consent import ConsentError
from consent.errors import GrantError, NotFoundError, ShreddedError, StoreError
from consent.models import Avatar, Subject
from consent.store.records import SubjectInfo, new_id, utcnow

_HEX64 = re.compile(r"^[0-9a-f]{64}$")


class SubjectsMixin:
    """:class:`consent.store.ConsentStore`'s subject and avatar methods."""

    def add_subject(self, display_name: str, *, subject_id: str | None = None) -> SubjectInfo:
        """Record a new subject. ``display_name`` is stored as given (any text)."""
        if not isinstance(display_name, str) or not display_name.strip():
            raise GrantError("a subject needs a non-empty display name")
        info = SubjectInfo(subject_id or new_id(), display_name, utcnow())
        try:
            with self._write("add subject") as (s, _state):
                s.add(Subject(id=info.id, display_name=display_name, created_at=info.created_at))
        except StoreError as exc:
            if isinstance(exc.__cause__, IntegrityError):
                raise GrantError(f"subject {info.id!r} already exists") from exc
            raise
        return info

    def subject(self, subject_id: str) -> SubjectInfo:
        """The subject with that id (``NotFoundError`` if none)."""
        with self._read("subject") as s:
            row = s.get(Subject, subject_id)
            if row is None:
                raise NotFoundError(f"no subject {subject_id!r}")
            return SubjectInfo(row.id, row.display_name, row.created_at)

    def add_avatar(self, subject_id: str, avatar_id: str, embedding: Any) -> str:
        """Record a photo of a subject and its face embedding (encrypted with the subject key).

        Args:
            subject_id: the subject.
            avatar_id: the photo's sha256 hex (:func:`photo_hash`).
            embedding: the face embedding (any 1-d float array); stored as float32.
        """
        if not _HEX64.match(avatar_id):
            raise GrantError("avatar id must be the photo's sha256 in lower-case hex")
        vector = np.asarray(embedding, dtype=np.float32).reshape(-1)
        if vector.size == 0 or not np.all(np.isfinite(vector)):
            raise GrantError("face embedding must be a non-empty vector of finite numbers")
        with self._write("add avatar") as (s, _state):
            if s.get(Subject, subject_id) is None:
                raise NotFoundError(f"no subject {subject_id!r}")
            existing = s.get(Avatar, avatar_id)
            if existing is not None and existing.subject_id != subject_id:
                raise GrantError("this photo is already registered to another subject")
            blob = self.keys.encrypt(subject_id, vector.tobytes())
            if existing is None:
                s.add(
                    Avatar(id=avatar_id, subject_id=subject_id, embedding=blob, created_at=utcnow())
                )
            else:
                existing.embedding, existing.deleted_at = blob, None
        return avatar_id

    def avatar_embedding(self, avatar_id: str) -> np.ndarray:
        """The decrypted face embedding of an avatar.

        Raises:
            NotFoundError: no such avatar.
            ShreddedError: it was deleted or its subject's key was shredded.
        """
        with self._read("avatar embedding") as s:
            row = s.get(Avatar, avatar_id)
            if row is None:
                raise NotFoundError(f"no avatar {avatar_id!r}")
            subject, blob = row.subject_id, row.embedding
        if blob is None:
            raise ShreddedError(f"the embedding of avatar {avatar_id} was deleted")
        return np.frombuffer(self.keys.decrypt(subject, bytes(blob)), dtype=np.float32).copy()

    def encrypted_embedding(self, avatar_id: str) -> bytes | None:
        """The stored ciphertext of an avatar's embedding (None once deleted)."""
        with self._read("avatar embedding") as s:
            row = s.get(Avatar, avatar_id)
            if row is None:
                raise NotFoundError(f"no avatar {avatar_id!r}")
            return None if row.embedding is None else bytes(row.embedding)

    def subject_of_avatar(self, avatar_id: str) -> str | None:
        """The subject a photo belongs to, or None when unknown."""
        with self._read("avatar") as s:
            row = s.get(Avatar, avatar_id)
            return None if row is None else row.subject_id

    def subject_dir(self, subject_id: str) -> Path:
        """The directory for this subject's files (created); removed when it is purged."""
        if self.files_dir is None:
            raise ConsentError("this store has no files_dir")
        path = self.files_dir / hashlib.sha256(subject_id.encode()).hexdigest()[:32]
        path.mkdir(parents=True, exist_ok=True, mode=0o700)
        return path


__all__ = ["SubjectsMixin"]
