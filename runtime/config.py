"""One configuration: a TOML file plus ``LIKENESS_*`` environment variables.

Precedence, highest first: keyword overrides (tests, CLI flags) > environment >
TOML file > defaults. Nested keys use ``__`` in the environment, e.g.
``LIKENESS_DIALOGUE__BASE_URL``. An unknown key, in the file or the environment,
or a bad value fails at start-up with a :class:`~runtime.errors.ConfigError` that
names the key. Read the config once (:func:`load_config`) and pass the parts on.

All state lives under ``data_dir`` (``LIKENESS_DATA_DIR``): database, keys,
caches, memory and logs, so a test or a second instance can point elsewhere.
"""

from __future__ import annotations

import os
import tomllib
from pathlib import Path
from typing import Any, Literal

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    SecretStr,
    ValidationError,
    field_validator,
    model_validator,
)
from pydantic_settings import (
    BaseSettings,
    PydanticBaseSettingsSource,
    SettingsConfigDict,
    TomlConfigSettingsSource,
)

from runtime.errors import ConfigError

ENV_PREFIX = "LIKENESS_"
# Variables that steer loading itself rather than a config key.
_LOADER_ENV = {"LIKENESS_CONFIG"}


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


def _expand_user(value: str) -> str:
    return os.path.expanduser(value) if value else value


class VADConfig(_Section):
    """Voice activity detection and end of turn."""

    threshold: float = Field(0.5, ge=0.05, le=0.95, description="speech probability threshold")
    min_silence_ms: int = Field(700, ge=50, le=10_000, description="silence that ends a turn")
    min_speech_ms: int = Field(250, ge=30, le=10_000, description="shorter bursts are ignored")
    speech_pad_ms: int = Field(150, ge=0, le=2_000, description="audio kept around speech")
    max_turn_s: float = Field(30.0, gt=1, le=600, description="a turn is cut after this long")
    pause_ms: int = Field(
        300,
        ge=0,
        le=10_000,
        description="at a pause this long, transcribe; end the turn there if the words form "
        "a finished sentence (0: always wait min_silence_ms; no effect unless shorter)",
    )


class ASRConfig(_Section):
    """Speech recognition (faster-whisper)."""

    model: str = Field("", description="hub name (tiny.en, base, ...) or local path; '' = embedded")
    device: Literal["cpu", "cuda", "auto"] = "cpu"
    compute_type: str = Field("int8", description="CTranslate2 compute type")
    language: str | None = Field("en", description="ISO code, or null to detect")
    beam_size: int = Field(1, ge=1, le=10)
    cpu_threads: int = Field(0, ge=0, le=256, description="0 = CTranslate2's default")
    partials: bool = Field(False, description="emit partial hypotheses while speaking")
    partial_interval_ms: int = Field(1000, ge=200, le=10_000)


class TTSConfig(_Section):
    """Speech synthesis."""

    backend: Literal["piper", "espeak", "coqui"] = "piper"
    piper_model: str = Field("", description="path to a piper .onnx voice; '' = embedded Joe")
    length_scale: float = Field(1.0, gt=0.3, le=3.0, description="piper: >1 speaks slower")
    piper_memory_arena: bool = Field(
        False, description="piper: ONNX Runtime's arena (~10 % faster; keeps its peak memory)"
    )
    espeak_voice: str = "en-us"
    espeak_wpm: int = Field(160, ge=60, le=450)
    coqui_model: str = "tts_models/multilingual/multi-dataset/xtts_v2"
    coqui_reference: str = Field("", description="reference recording for voice cloning")
    coqui_language: str = "en"

    _paths = field_validator("piper_model", "coqui_reference")(_expand_user)


class DialogueConfig(_Section):
    """The LLM that writes replies."""

    backend: Literal["llamacpp", "openai"] = "llamacpp"
    model_path: str = Field("", description="llamacpp: GGUF path; '' = embedded SmolLM2-135M")
    n_threads: int = Field(0, ge=0, le=256, description="llamacpp threads; 0 = half the cores")
    base_url: str = Field("http://localhost:11434/v1", description="openai: endpoint base URL")
    model: str = Field("", description="openai: model name")
    api_key: SecretStr | None = Field(None, description="openai: API key (masked)")
    timeout_s: float = Field(30.0, gt=0, le=600, description="overall request timeout")
    first_token_timeout_s: float = Field(15.0, gt=0, le=600)
    max_tokens: int = Field(160, ge=1, le=8192)
    temperature: float = Field(0.7, ge=0, le=2)
    history_turns: int = Field(12, ge=0, le=1000, description="turns kept per person")
    retries: int = Field(1, ge=0, le=5, description="retries before the first sentence")

    _paths = field_validator("model_path")(_expand_user)


class PersonaConfig(_Section):
    """Who the companion is."""

    name: str = Field("Robin", min_length=1, max_length=60)
    tone: str = "warm, patient and kind"
    language: str = "en"
    eldercare: bool = Field(False, description="slow, clear, short sentences and simple words")
    max_sentences: int = Field(3, ge=1, le=20)


class SafetyConfig(_Section):
    """Eldercare distress alerts."""

    enabled: bool = True
    phrases: dict[str, list[str]] | None = Field(
        None, description="per category (fall, pain, help, confusion, self_harm); replaces defaults"
    )
    extra_phrases: dict[str, list[str]] = Field(
        default_factory=dict, description="per category, added to the defaults"
    )
    webhook_url: str = Field("", description="POST alerts here; '' = log only")
    webhook_token: SecretStr | None = None
    webhook_timeout_s: float = Field(5.0, gt=0, le=120)


class AvatarRayConfig(_Section):
    """``avatar.engine = "ray"``: the neural generator on a Ray Serve GPU pool that every
    session node calls (docs/ray-serve.md). The model keys (checkpoint, runtime, device,
    steps, compile) are the avatar section's, read by the replicas."""

    address: str = Field(
        "auto",
        description="'auto' = the cluster `ray start` runs here; HOST:PORT or ray://HOST:PORT; "
        "'local' = a private Ray in this process (one host)",
    )
    app: str = Field(
        "likeness-generator", min_length=1, max_length=100, description="Serve application name"
    )
    deploy: bool = Field(
        True, description="deploy the pool when it is not running (else wait for another node)"
    )
    wait_s: float = Field(120.0, gt=0, le=3600, description="wait this long for the pool")
    call_timeout_s: float = Field(
        10.0, gt=0, le=300, description="a chunk taking longer fails (retryable)"
    )
    max_batch_size: int = Field(8, ge=1, le=256, description="most chunks in one model call")
    batch_wait_timeout_s: float = Field(
        0.005, ge=0, le=1, description="a replica's first chunk waits this long for others"
    )
    max_ongoing_requests: int = Field(
        16, ge=1, le=4096, description="requests one replica takes at once (>= max_batch_size)"
    )
    min_replicas: int = Field(1, ge=1, le=1024, description="replicas kept running")
    max_replicas: int = Field(
        1, ge=1, le=1024, description="autoscaling ceiling (= min_replicas: fixed)"
    )
    gpus_per_replica: float = Field(1.0, ge=0, le=16, description="0 = CPU replicas")
    cpus_per_replica: float = Field(1.0, gt=0, le=256, description="also its torch threads")

    @model_validator(mode="after")
    def _batches_can_fill(self) -> AvatarRayConfig:
        if self.max_ongoing_requests < self.max_batch_size:
            raise ValueError(
                f"max_ongoing_requests={self.max_ongoing_requests} is below max_batch_size="
                f"{self.max_batch_size}: Serve would never batch more than "
                f"{self.max_ongoing_requests} chunks; set it >= {self.max_batch_size}"
            )
        if self.max_replicas < self.min_replicas:
            raise ValueError(
                f"max_replicas={self.max_replicas} is below min_replicas={self.min_replicas}"
            )
        return self


class AvatarConfig(_Section):
    """Faces and the video generator."""

    backend: Literal["procedural", "neural"] = "procedural"
    engine: Literal["local", "ray"] = Field(
        "local", description="neural: run the model in this process, or on a Ray Serve pool"
    )
    ray: AvatarRayConfig = AvatarRayConfig()
    size: int = Field(512, ge=128, le=2048, description="output frames are size x size")
    checkpoint: str = Field("", description="neural: a save_pretrained folder or .safetensors")
    runtime: Literal["torch", "onnx"] = Field("torch", description="neural: how it runs")
    device: str = Field("auto", description="neural: auto | cpu | cuda | cuda:N")
    steps: int = Field(2, ge=1, le=64, description="neural: sampler steps per chunk")
    compile: bool = Field(
        False, description="neural, torch: torch.compile the per-chunk work (CUDA graphs)"
    )
    audio_weight: float = Field(1.0, ge=0, le=10, description="neural: say of audio on motion")
    identity_weight: float = Field(1.0, ge=0, le=10, description="neural: say of the photo")
    seed: int = Field(0, ge=0, description="neural: noise seed (chunks derive theirs from it)")
    fps: float = Field(25.0, ge=5, le=60)
    sway: float = Field(1.0, ge=0, le=3, description="head sway amplitude; 0 = still")
    landmarks: str = Field(
        "mediapipe",
        description='face landmark backend: "mediapipe" (Apache-2.0), "dlib" (not commercial)',
    )
    multiple_faces: Literal["largest", "refuse"] = "largest"
    min_face_px: int = Field(80, ge=20, le=2000, description="smaller faces are refused")
    max_abs_yaw_deg: float = Field(40.0, ge=5, le=90, description="more turned = profile")
    max_side: int = Field(1600, ge=256, le=10_000, description="bigger photos are downscaled")


class IceServerConfig(_Section):
    """One STUN or TURN server (``urls`` as in the browser's ``RTCIceServer``).

    A TURN server without ``username``/``credential`` gets credentials minted per
    session from ``server.turn_secret`` (:mod:`runtime.turn`).
    """

    urls: list[str] = Field(min_length=1, description="stun:, turn: or turns: URLs")
    username: str = Field("", description="static TURN user ('' = minted)")
    credential: SecretStr | None = Field(None, description="static TURN password (masked)")

    @field_validator("urls", mode="before")
    @classmethod
    def _one_url(cls, value: Any) -> Any:
        return [value] if isinstance(value, str) else value

    @field_validator("urls")
    @classmethod
    def _schemes(cls, value: list[str]) -> list[str]:
        for url in value:
            if not url.lower().startswith(("stun:", "stuns:", "turn:", "turns:")):
                raise ValueError(f"{url!r} is not a stun:, turn: or turns: URL")
        return value


class ServerConfig(_Section):
    """``likeness serve``: the ASGI app, WebRTC sessions and the web pages."""

    host: str = "127.0.0.1"
    port: int = Field(8080, ge=1, le=65535)
    max_sessions: int = Field(4, ge=1, le=256, description="more get 503 busy")
    media_timeout_s: float = Field(20.0, gt=1, le=3600, description="no client audio: close")
    avatar: str = Field("synthetic", description="default face of a session")
    avatars: list[str] = Field(
        default_factory=list, description="prepared avatar ids clients may ask for"
    )
    tls_cert: str = Field("", description="PEM certificate: serve https (LAN kiosks)")
    tls_key: str = Field("", description="PEM private key for tls_cert")
    ice_servers: list[IceServerConfig] = Field(
        default_factory=list,
        description="STUN/TURN servers for pages and the server (a plain URL string works too)",
    )
    ice_transport_policy: Literal["all", "relay"] = Field(
        "all", description="pages' iceTransportPolicy; 'relay' = media only through TURN"
    )
    turn_secret: SecretStr | None = Field(
        None, description="coturn static-auth-secret: TURN credentials minted per session"
    )
    turn_secret_file: str = Field("", description="file holding turn_secret (instead of it)")
    turn_ttl_s: int = Field(600, ge=30, le=86_400, description="minted TURN credential lifetime")
    ice_per_minute: int = Field(
        12, ge=1, le=10_000, description="POST /api/rtc/ice per client address"
    )
    keep_session_memory: bool = Field(
        False, description="keep a session's conversation after it ends (privacy: off)"
    )
    # Both measured together in a 4-minute soak: RSS 1.41 -> 1.19 GB, growth after the
    # first minute 2.9 % -> 0.1 %, turn latency unchanged (docs/benchmarks.md, Soak).
    malloc_arenas: int = Field(
        2, ge=0, le=64, description="glibc malloc arenas (0 = glibc's default: 8 per core)"
    )
    release_memory_s: float = Field(
        30.0, ge=0, le=3600, description="return freed memory to the system this often (0 = never)"
    )

    @field_validator("ice_servers", mode="before")
    @classmethod
    def _plain_urls(cls, value: Any) -> Any:
        """Backwards compatible: ``["stun:host:3478"]`` means ``[{urls = "stun:..."}]``."""
        if isinstance(value, list):
            return [{"urls": v} if isinstance(v, str) else v for v in value]
        return value

    _secret_path = field_validator("turn_secret_file")(_expand_user)


class ConsentConfig(_Section):
    """Where grants live and what a session asks permission for."""

    database_url: SecretStr = Field(
        SecretStr(""), description="'' = SQLite under the data dir; or postgresql+psycopg://..."
    )
    deployment: str = Field("browser-chat", description="deployment of an offer naming none")
    purpose: str = Field("companionship", description="purpose sessions ask for")
    recheck_ms: int = Field(
        200, ge=50, le=1000, description="revocation epoch poll per session (SQLite only)"
    )
    # PostgreSQL pushes epoch moves to every node (consent/epoch_feed.py). A node whose
    # channel is down this long may miss a revoke, so it ends its real-face sessions.
    # 5 s rides out a PostgreSQL restart or a dropped link (reconnects retry every
    # 0.1-1 s); past it, a revoke made meanwhile could go unheard, so real faces stop
    # (docs/deployment.md, "Several nodes, one consent store"). The same bound holds for
    # a session's re-check (SQLite too): retried while the database fails, then it ends.
    blind_after_s: float = Field(
        5.0,
        ge=1,
        le=60,
        description="consent database or its revocation channel down this long: real faces end",
    )
    keep_clips_days: int = Field(
        0, ge=0, le=365, description="0 = liveness clips are discarded after the check"
    )
    retention_days: int = Field(
        30, ge=0, le=3650, description="days after a grant expires before its data is purged"
    )
    sweep_interval_s: int = Field(
        3600, ge=10, le=86400, description="how often the server runs the retention sweep"
    )
    watermark: bool = Field(True, description="invisible grant-id watermark in every frame")


class PortalConfig(_Section):
    """The consent portal: sign-in, sessions and limits (pages under /portal/)."""

    origin: str = Field(
        "", description="public origin, e.g. https://consent.example.org ('' = from request)"
    )
    rp_id: str = Field("", description="WebAuthn relying party id ('' = origin's host)")
    rp_name: str = Field("likeness consent", max_length=64)
    open_signup: bool = Field(True, description="people may create their own account")
    session_hours: float = Field(12.0, gt=0, le=720, description="sign-in lifetime")
    cookie_secure: bool = Field(True, description="Secure cookies (browsers allow localhost)")
    signin_per_minute: int = Field(10, ge=1, le=1000, description="per client address")
    challenges_per_hour: int = Field(20, ge=1, le=1000, description="per user")


class KioskProfile(_Section):
    """How a kiosk looks and speaks (the page's URL parameters override the look)."""

    avatar: str = Field("synthetic", description="face (must be allowed in server.avatars)")
    volume: float = Field(1.0, ge=0, le=1)
    slow_speech: bool = Field(True, description="eldercare speech: slow, clear, short")
    caption_scale: float = Field(1.6, ge=0.5, le=4)
    persona_name: str = Field("", max_length=60, description="'' = persona.name")


class KioskConfig(KioskProfile):
    """The default kiosk profile, plus named ones (``/kiosk.html?profile=NAME``)."""

    profiles: dict[str, KioskProfile] = Field(default_factory=dict)


class Settings(BaseSettings):
    """The effective configuration. Build it with :func:`load_config`."""

    model_config = SettingsConfigDict(
        env_prefix=ENV_PREFIX,
        env_nested_delimiter="__",
        extra="forbid",
        frozen=True,
        case_sensitive=False,
    )

    data_dir: Path = Field(
        Path("~/.local/share/likeness"), description="all state lives here (LIKENESS_DATA_DIR)"
    )
    log_level: Literal["debug", "info", "warning", "error"] = "info"
    log_format: Literal["console", "json"] = "console"
    vad: VADConfig = VADConfig()
    asr: ASRConfig = ASRConfig()
    tts: TTSConfig = TTSConfig()
    dialogue: DialogueConfig = DialogueConfig()
    persona: PersonaConfig = PersonaConfig()
    safety: SafetyConfig = SafetyConfig()
    avatar: AvatarConfig = AvatarConfig()
    server: ServerConfig = ServerConfig()
    kiosk: KioskConfig = KioskConfig()
    consent: ConsentConfig = ConsentConfig()
    portal: PortalConfig = PortalConfig()

    @field_validator("data_dir")
    @classmethod
    def _expand(cls, value: Path) -> Path:
        return value.expanduser()

    # Set per load by load_config(); pydantic-settings reads it in settings_customise_sources.
    _toml_path: Path | None = None

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        sources: list[PydanticBaseSettingsSource] = [init_settings, env_settings]
        if cls._toml_path is not None:
            sources.append(TomlConfigSettingsSource(settings_cls, toml_file=cls._toml_path))
        return tuple(sources)

    # Paths under the data directory: the one place that knows the layout.
    @property
    def log_dir(self) -> Path:
        return self.data_dir / "logs"

    @property
    def cache_dir(self) -> Path:
        return self.data_dir / "cache"

    @property
    def memory_dir(self) -> Path:
        return self.data_dir / "memory"

    @property
    def avatars_dir(self) -> Path:
        return self.data_dir / "avatars"

    @property
    def alerts_path(self) -> Path:
        return self.data_dir / "alerts.jsonl"


def _known_env_names(model: type[BaseModel], prefix: str) -> set[str]:
    names: set[str] = set()
    for name, field in model.model_fields.items():
        key = f"{prefix}{name}".upper()
        names.add(key)
        annotation = field.annotation
        if isinstance(annotation, type) and issubclass(annotation, BaseModel):
            names |= _known_env_names(annotation, f"{key}__")
    return names


def _check_env(environ: dict[str, str]) -> None:
    known = _known_env_names(Settings, ENV_PREFIX) | _LOADER_ENV
    for name in environ:
        if name.upper().startswith(ENV_PREFIX) and name.upper() not in known:
            raise ConfigError(f"{name}: unknown configuration variable")


def _check_toml(path: Path) -> None:
    if not path.is_file():
        raise ConfigError(f"config file {path}: not found")
    try:
        with path.open("rb") as fh:
            tomllib.load(fh)
    except tomllib.TOMLDecodeError as err:
        raise ConfigError(f"config file {path}: not valid TOML ({err})") from None


def _describe(err: ValidationError) -> str:
    first = err.errors()[0]
    key = ".".join(str(part) for part in first["loc"]) or "config"
    if first["type"] == "extra_forbidden":
        return f"{key}: unknown configuration key"
    return f"{key}: {first['msg']} (got {first.get('input')!r})"


def load_config(path: str | Path | None = None, **overrides: Any) -> Settings:
    """Read, validate and return the effective configuration.

    Args:
        path: TOML file; defaults to ``$LIKENESS_CONFIG`` when set, else none.
        **overrides: top-level keys that win over file and environment.

    Raises:
        ConfigError: unknown key or bad value; the message starts with the key.
    """
    _check_env(dict(os.environ))
    chosen = path or os.environ.get("LIKENESS_CONFIG") or None
    toml_path = Path(chosen).expanduser() if chosen else None
    if toml_path is not None:
        _check_toml(toml_path)
    Settings._toml_path = toml_path
    try:
        return Settings(**overrides)
    except ValidationError as err:
        raise ConfigError(_describe(err)) from None
    finally:
        Settings._toml_path = None


def masked_dump(settings: Settings) -> dict[str, Any]:
    """The effective config as plain data with every secret replaced by ``'***'``."""

    def walk(value: Any) -> Any:
        if isinstance(value, SecretStr):
            return "***" if value.get_secret_value() else ""
        if isinstance(value, BaseModel):
            return {name: walk(getattr(value, name)) for name in type(value).model_fields}
        if isinstance(value, Path):
            return str(value)
        if isinstance(value, list):
            return [walk(v) for v in value]
        return value

    return walk(settings)


def ensure_data_dir(settings: Settings) -> Path:
    """Create the data directory and its sub-folders (private to the user)."""
    for folder in (settings.data_dir, settings.log_dir, settings.cache_dir, settings.memory_dir):
        folder.mkdir(parents=True, exist_ok=True, mode=0o700)
    return settings.data_dir
