"""The server's secret watermark key: 32 random bytes, 0600, next to the signing keys.

The file is ``<data dir>/consent/signing/watermark.key`` (the folder that
``runtime.components.consent_gate`` opens for the Ed25519 keys; 0700). It is created on
first use. Whoever holds it can both detect and forge the grant-id watermark, so it is
never logged and never leaves the key folder. Do not rotate or delete it: frames
stamped with an old key can no longer be traced once the key is gone.
"""

from __future__ import annotations

import hashlib
import hmac
import os
import secrets
from pathlib import Path

from consent.errors import KeyFileError
from consent.keys import _create_private, _ensure_private_dir, _read_private

KEY_FILE = "watermark.key"
KEY_BYTES = 32


def key_dir(data_dir: str | os.PathLike[str]) -> Path:
    """The consent key folder of a data dir (shared with the signing keys)."""
    return Path(data_dir) / "consent" / "signing"


class WatermarkKey:
    """The secret that keys the watermark pattern. Build it with :meth:`load`.

    Args:
        secret: 32 random bytes.
    """

    def __init__(self, secret: bytes) -> None:
        if len(secret) != KEY_BYTES:
            raise KeyFileError(f"a watermark key must be {KEY_BYTES} bytes, got {len(secret)}")
        self._secret = secret
        # A public fingerprint (for logs and caches): not the key, and not enough to forge.
        self.key_id = hashlib.sha256(b"likeness-watermark-id|" + secret).hexdigest()[:16]

    @classmethod
    def load(cls, directory: str | os.PathLike[str], *, create: bool = True) -> WatermarkKey:
        """Open ``<directory>/watermark.key``, creating the folder (0700) and key (0600).

        Args:
            directory: the consent key folder (see :func:`key_dir`).
            create: make a new key when none exists (the server does); detection passes
                False, since a new key could never detect an old frame.

        Raises:
            KeyPermissionError: the folder or key file is readable by group/others.
            KeyFileError: the key is missing (``create=False``) or malformed.
        """
        path = Path(directory)
        file = path / KEY_FILE
        if not create and not file.exists():
            raise KeyFileError(
                f"no watermark key at {file}: frames are stamped with the key of the data "
                "dir that served them; point LIKENESS_DATA_DIR at that data dir"
            )
        _ensure_private_dir(path)
        if not file.exists():  # two nodes on a shared folder: both keep the first one's
            _create_private(file, secrets.token_bytes(KEY_BYTES))
        return cls(_read_private(file))

    def stream(self, label: str, nbytes: int) -> bytes:
        """``nbytes`` pseudo-random bytes for ``label`` (HMAC-SHA256 in counter mode)."""
        out = bytearray()
        counter = 0
        while len(out) < nbytes:
            msg = f"likeness-watermark/v1|{label}|{counter}".encode()
            out += hmac.digest(self._secret, msg, "sha256")
            counter += 1
        return bytes(out[:nbytes])

    def __eq__(self, other: object) -> bool:
        return isinstance(other, WatermarkKey) and hmac.compare_digest(self._secret, other._secret)

    def __hash__(self) -> int:  # equal keys share the cached pattern layout
        return hash(self.key_id)

    def __repr__(self) -> str:
        return f"WatermarkKey(key_id={self.key_id!r})"


__all__ = ["KEY_FILE", "WatermarkKey", "key_dir"]
