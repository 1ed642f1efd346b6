"""Consent: signing keys, grants, the store, the audit log and the gate.

Hierarchy of errors (``consent/errors.py``)::

    ConsentError            root of every error this package raises
    ├── KeyFileError        a key file or key directory is missing, unreadable or malformed
    │   └── KeyPermissionError   a key file or directory is readable by group/others
    ├── ShreddedError       a subject's data key was destroyed: the data is gone for good
    ├── DecryptError        ciphertext was altered or belongs to another subject/key
    ├── GrantError          a grant cannot be made or used as asked (bad fields, scope)
    │   └── LivenessRequiredError  no passed, fresh, unused liveness record for the grant
    ├── NotFoundError       no subject / avatar / grant / liveness record with that id
    ├── AlreadyRevokedError the grant was revoked before (revocation is irreversible)
    └── StoreError          the database failed; ``retryable`` says whether to try again
"""


class ConsentError(Exception):
    """Root of every error raised by ``consent``."""

    retryable: bool = False


__all__ = ["ConsentError"]
