"""A cache of prepared avatars on disk, one folder per avatar id.

Layout: ``<root>/<id>/face.png`` (the aligned crop), ``landmarks.npy``,
``meta.json`` and, for a face prepared by a mesh backend, ``mesh.npy`` (the
468-point mesh in the crop's pixels). Writes go to a temporary folder renamed into place, so a crash
never leaves a half-written avatar. Photos only: a stored avatar is never
synthetic, whatever its files say — synthetic faces are drawn by code on demand.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import tempfile
from dataclasses import asdict
from pathlib import Path

import cv2
import numpy as np

from avatar.errors import AvatarError, ImageInputError
from avatar.types import Box, HeadPose, PreparedAvatar

_ID = re.compile(r"^[0-9a-f]{8,64}$")


class AvatarStore:
    """Prepared photo avatars under ``root`` (normally ``<data dir>/avatars``)."""

    def __init__(self, root: str | Path) -> None:
        self.root = Path(root)

    def _folder(self, avatar_id: str) -> Path:
        if not _ID.match(avatar_id):
            raise ImageInputError(f"{avatar_id!r} is not an avatar id")
        return self.root / avatar_id

    def __contains__(self, avatar_id: str) -> bool:
        try:
            return (self._folder(avatar_id) / "meta.json").is_file()
        except ImageInputError:
            return False

    def save(self, avatar: PreparedAvatar) -> Path:
        """Store ``avatar`` (replacing an earlier copy); returns its folder.

        Raises:
            AvatarError: a synthetic avatar was given (those are never stored).
        """
        if avatar.synthetic:
            raise AvatarError("synthetic avatars are drawn on demand and never stored")
        folder = self._folder(avatar.id)
        self.root.mkdir(parents=True, exist_ok=True, mode=0o700)
        tmp = Path(tempfile.mkdtemp(prefix=f".{avatar.id}.", dir=self.root))
        try:
            bgr = cv2.cvtColor(avatar.image, cv2.COLOR_RGB2BGR)
            if not cv2.imwrite(str(tmp / "face.png"), bgr):
                raise OSError(f"could not write {tmp / 'face.png'}")
            np.save(tmp / "landmarks.npy", avatar.landmarks.astype(np.float32))
            if avatar.mesh is not None:
                np.save(tmp / "mesh.npy", np.asarray(avatar.mesh, np.float32))
            meta = {
                "id": avatar.id,
                "pose": asdict(avatar.pose) if avatar.pose else None,
                "source_box": asdict(avatar.source_box) if avatar.source_box else None,
                "warnings": list(avatar.warnings),
            }
            (tmp / "meta.json").write_text(json.dumps(meta, indent=2))
            if folder.exists():
                shutil.rmtree(folder)
            os.replace(tmp, folder)
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise
        return folder

    def load(self, avatar_id: str) -> PreparedAvatar:
        """The stored avatar.

        Raises:
            ImageInputError: no such avatar, or its files are damaged.
        """
        folder = self._folder(avatar_id)
        try:
            meta = json.loads((folder / "meta.json").read_text())
            bgr = cv2.imread(str(folder / "face.png"), cv2.IMREAD_COLOR)
            landmarks = np.load(folder / "landmarks.npy")
            mesh_file = folder / "mesh.npy"
            mesh = np.load(mesh_file) if mesh_file.is_file() else None
        except FileNotFoundError:
            raise ImageInputError(f"no prepared avatar {avatar_id}") from None
        except (OSError, ValueError) as err:
            raise ImageInputError(f"prepared avatar {avatar_id} is damaged: {err}") from None
        if bgr is None or landmarks.shape != (68, 2):
            raise ImageInputError(f"prepared avatar {avatar_id} is damaged")
        if mesh is not None and (mesh.ndim != 2 or mesh.shape[1] != 3):
            raise ImageInputError(f"prepared avatar {avatar_id} is damaged: mesh {mesh.shape}")
        return PreparedAvatar(
            id=meta["id"],
            image=cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB),
            landmarks=landmarks.astype(np.float32),
            synthetic=False,
            pose=HeadPose(**meta["pose"]) if meta.get("pose") else None,
            source_box=Box(**meta["source_box"]) if meta.get("source_box") else None,
            warnings=tuple(meta.get("warnings", ())),
            mesh=None if mesh is None else mesh.astype(np.float32),
        )

    def delete(self, avatar_id: str) -> bool:
        """Remove a stored avatar (e.g. on revoke); True if it existed."""
        folder = self._folder(avatar_id)
        if not folder.exists():
            return False
        shutil.rmtree(folder)
        return True
