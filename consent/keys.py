"""Key material: the server's Ed25519 signing keys and per-subject data keys.

Layout of a key directory (mode 0700, every file 0600)::

    <dir>/current                 key id of the signing key in use
    <dir>/ed25519-<key id>.key    the current private key (raw 32 bytes)
    <dir>/ed25519-<key id>.pub    every public key ever used (raw 32 bytes), to verify old grants
    <dir>/master.key              the master key that wraps the subject keys (SubjectKeys)
    <dir>/subjects/<sha256>.key   one wrapped 256-bit data key per subject (SubjectKeys)

A key file or directory that group or others can access is refused with
``KeyPermissionError`` (the message gives the ``chmod`` that fixes it); nothing is
loosened or fixed silently.

Several nodes may share one key directory (docs/deploy.md): a key made when none is
there is created exclusively (:func:`_create_private`), so of two processes making it
at once both end up using the first one's, never each its own.
"""

from __future__ import annotations

import errno
import hashlib
import os
import secrets
import stat
from collections.abc import Mapping
from pathlib import Path

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat

from consent.errors import DecryptError, KeyFileError, KeyPermissionError, ShreddedError

_CURRENT = "current"
_MASTER = "master.key"
_FORMAT = b"\x01"  # version byte of every ciphertext this module writes
_NONCE = 12


def key_id_of(public: Ed25519PublicKey) -> str:
    """The short id of a public key: the first 16 hex digits of sha256 of its raw bytes."""
    raw = public.public_bytes(Encoding.Raw, PublicFormat.Raw)
    return hashlib.sha256(raw).hexdigest()[:16]


def _check_private_dir(path: Path) -> None:
    mode = stat.S_IMODE(path.stat().st_mode)
    if mode & 0o077:
        raise KeyPermissionError(
            f"key directory {path} has mode {mode:04o}: group/others may read it; "
            f"run `chmod 700 {path}` (it must be 0700)"
        )


def _ensure_private_dir(path: Path) -> None:
    try:
        path.mkdir(mode=0o700, parents=True)
    except FileExistsError:
        pass  # there already (another node on a shared folder may have just made it)
    else:
        os.chmod(path, 0o700)  # mkdir's mode is masked by the umask
    _check_private_dir(path)


def _read_private(path: Path) -> bytes:
    """Read a key file after checking that only its owner can access it."""
    try:
        mode = stat.S_IMODE(path.stat().st_mode)
    except FileNotFoundError as exc:
        raise KeyFileError(f"key file {path} is missing") from exc
    if mode & 0o077:
        raise KeyPermissionError(
            f"key file {path} has mode {mode:04o}: group/others may read it; "
            f"run `chmod 600 {path}` (it must be 0600)"
        )
    return path.read_bytes()


def _temp_private(path: Path, data: bytes) -> Path:
    """``data`` in a new 0600 temp file beside ``path``, on disk; returns the temp file."""
    tmp = path.with_name(f".{path.name}.{secrets.token_hex(4)}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    try:
        os.fchmod(fd, 0o600)
        os.write(fd, data)
        os.fsync(fd)
    finally:
        os.close(fd)
    return tmp


def _write_private(path: Path, data: bytes) -> None:
    """Write ``data`` to a new 0600 file atomically (temp file + rename)."""
    os.replace(_temp_private(path, data), path)


_NO_LINKS = {errno.EPERM, errno.ENOTSUP, errno.EOPNOTSUPP}  # a file system without hard links


def _create_private(path: Path, data: bytes) -> bool:
    """Create ``path`` (0600) holding ``data`` unless it exists; True if this call made it.

    Atomic and exclusive (a hard link of a temp file, which fails where ``path``
    exists, unlike a rename): of two processes creating the same key at once, the
    second keeps the first one's file. On a file system without hard links it falls
    back to a rename (the last writer wins).
    """
    tmp = _temp_private(path, data)
    try:
        os.link(tmp, path)
    except FileExistsError:
        return False
    except OSError as err:
        if err.errno not in _NO_LINKS:
            raise
        os.replace(tmp, path)
        return True
    finally:
        tmp.unlink(missing_ok=True)
    return True


class SigningKeys:
    """The server's Ed25519 signing keys: one current private key, every public key kept.

    Build it with :meth:`load` (creates the directory and a first key when missing).
    Sign with :meth:`sign`; verify grants against :meth:`public_keys`; :meth:`rotate`
    makes a new current key and destroys the old private key while keeping its public
    key, so grants signed before the rotation still verify.
    """

    def __init__(self, directory: Path, private: Ed25519PrivateKey, public: dict) -> None:
        self.directory = directory
        self._private = private
        self._public: dict[str, Ed25519PublicKey] = dict(public)
        self.key_id = key_id_of(private.public_key())

    @classmethod
    def load(cls, directory: str | os.PathLike[str]) -> SigningKeys:
        """Open the key directory, creating it (0700) and a first key (0600) if needed.

        Raises:
            KeyPermissionError: the directory or a key file is readable by group/others.
            KeyFileError: a key file is missing or malformed.
        """
        path = Path(directory)
        _ensure_private_dir(path)
        if not (path / _CURRENT).exists():
            cls._create_key(path, replace=False)
        return cls._read(path)

    @staticmethod
    def _create_key(path: Path, *, replace: bool) -> str:
        """Make a key pair and make it current (``replace``: even if a key is current).

        Without ``replace`` it becomes current only if no key is (another node may make
        one at the same moment): else its private key is deleted unused (the public one
        stays, verifying nothing) and the current key is the other node's.
        """
        private = Ed25519PrivateKey.generate()
        kid = key_id_of(private.public_key())
        raw_public = private.public_key().public_bytes(Encoding.Raw, PublicFormat.Raw)
        _write_private(path / f"ed25519-{kid}.pub", raw_public)
        _write_private(path / f"ed25519-{kid}.key", private.private_bytes_raw())
        if replace:
            _write_private(path / _CURRENT, kid.encode("ascii"))
        elif not _create_private(path / _CURRENT, kid.encode("ascii")):
            (path / f"ed25519-{kid}.key").unlink()
        return kid

    @classmethod
    def _read(cls, path: Path) -> SigningKeys:
        kid = _read_private(path / _CURRENT).decode("ascii", "replace").strip()
        raw = _read_private(path / f"ed25519-{kid}.key")
        try:
            private = Ed25519PrivateKey.from_private_bytes(raw)
        except ValueError as exc:
            raise KeyFileError(f"key file {path / f'ed25519-{kid}.key'} is malformed") from exc
        if key_id_of(private.public_key()) != kid:
            raise KeyFileError(f"key file for {kid} in {path} holds a different key")
        public: dict[str, Ed25519PublicKey] = {}
        for pub_path in sorted(path.glob("ed25519-*.pub")):
            try:
                key = Ed25519PublicKey.from_public_bytes(_read_private(pub_path))
            except ValueError as exc:
                raise KeyFileError(f"public key file {pub_path} is malformed") from exc
            public[key_id_of(key)] = key
        public[kid] = private.public_key()
        return cls(path, private, public)

    def sign(self, data: bytes) -> bytes:
        """Sign ``data`` with the current key; the signer's id is :attr:`key_id`."""
        return self._private.sign(data)

    def public_keys(self) -> dict[str, Ed25519PublicKey]:
        """Every public key ever used here, by key id (a copy: safe to hand to ``gate.check``)."""
        return dict(self._public)

    def rotate(self) -> str:
        """Make a new current key; destroy the old private key, keep its public key.

        Returns:
            The new key id. Grants signed earlier keep verifying with the old public key.
        """
        old = self.directory / f"ed25519-{self.key_id}.key"
        kid = self._create_key(self.directory, replace=True)
        fresh = self._read(self.directory)
        self._private, self._public, self.key_id = fresh._private, fresh._public, kid
        old.unlink(missing_ok=True)
        return kid


class SubjectKeys:
    """One random 256-bit AES-GCM data key per subject, wrapped with a master key.

    Crypto-shredding: :meth:`shred` deletes the subject's wrapped key, after which every
    ciphertext made for that subject is unreadable for good (``ShreddedError``). A
    subject that consents again gets a new key; old ciphertext stays unreadable.
    Build it with :meth:`load`.
    """

    def __init__(self, directory: Path, master: bytes) -> None:
        self.directory = directory
        self._master = AESGCM(master)

    @classmethod
    def load(cls, directory: str | os.PathLike[str]) -> SubjectKeys:
        """Open (or create) the key directory, its ``master.key`` and ``subjects/``.

        Raises:
            KeyPermissionError: the directory or a key file is readable by group/others.
            KeyFileError: the master key is malformed.
        """
        path = Path(directory)
        _ensure_private_dir(path)
        _ensure_private_dir(path / "subjects")
        master_path = path / _MASTER
        if not master_path.exists():
            _create_private(master_path, secrets.token_bytes(32))
        master = _read_private(master_path)
        if len(master) != 32:
            raise KeyFileError(f"master key {master_path} must hold 32 bytes, has {len(master)}")
        return cls(path, master)

    def _path(self, subject: str) -> Path:
        # The file name is a hash: subject ids never reach the file system as paths.
        digest = hashlib.sha256(subject.encode("utf-8")).hexdigest()
        return self.directory / "subjects" / f"{digest}.key"

    def _key(self, subject: str, *, create: bool) -> bytes:
        path = self._path(subject)
        if not path.exists():
            if not create:
                raise ShreddedError(
                    f"no data key for subject {subject!r}: it was shredded (or never made); "
                    "the data encrypted for this subject cannot be read"
                )
            nonce = secrets.token_bytes(_NONCE)
            wrapped = self._master.encrypt(nonce, secrets.token_bytes(32), subject.encode())
            _create_private(path, nonce + wrapped)
        blob = _read_private(path)
        try:
            return self._master.decrypt(blob[:_NONCE], blob[_NONCE:], subject.encode())
        except InvalidTag as exc:
            raise KeyFileError(f"wrapped key {path} does not open with the master key") from exc

    def has_key(self, subject: str) -> bool:
        """True while the subject has a data key (False after :meth:`shred`)."""
        return self._path(subject).exists()

    def encrypt(self, subject: str, data: bytes) -> bytes:
        """Encrypt ``data`` for ``subject`` (creating its key on first use).

        The subject id is bound as associated data, so ciphertext cannot be moved to
        another subject.
        """
        key = AESGCM(self._key(subject, create=True))
        nonce = secrets.token_bytes(_NONCE)
        return _FORMAT + nonce + key.encrypt(nonce, data, subject.encode("utf-8"))

    def decrypt(self, subject: str, blob: bytes) -> bytes:
        """Decrypt what :meth:`encrypt` made for ``subject``.

        Raises:
            ShreddedError: the subject's key was destroyed.
            DecryptError: the ciphertext was altered or made for another subject/key.
        """
        if len(blob) < 1 + _NONCE + 16 or blob[:1] != _FORMAT:
            raise DecryptError("ciphertext is truncated or not in this module's format")
        key = AESGCM(self._key(subject, create=False))
        try:
            return key.decrypt(blob[1 : 1 + _NONCE], blob[1 + _NONCE :], subject.encode("utf-8"))
        except InvalidTag as exc:
            raise DecryptError(
                f"ciphertext does not open with the data key of subject {subject!r}"
            ) from exc

    def shred(self, subject: str) -> bool:
        """Destroy the subject's data key. Returns False when it had none.

        The wrapped key file is overwritten and deleted. Its bytes are useless without
        the master key, and the key itself exists nowhere else.
        """
        path = self._path(subject)
        if not path.exists():
            return False
        size = path.stat().st_size
        with open(path, "r+b") as fh:
            fh.write(secrets.token_bytes(size))
            fh.flush()
            os.fsync(fh.fileno())
        path.unlink()
        return True


def public_keys_of(keys: SigningKeys | Mapping[str, Ed25519PublicKey]) -> dict:
    """The ``{key id: public key}`` mapping of ``keys`` (a SigningKeys or a mapping)."""
    if isinstance(keys, SigningKeys):
        return keys.public_keys()
    return dict(keys)


__all__ = ["SigningKeys", "SubjectKeys", "key_id_of", "public_keys_of"]
