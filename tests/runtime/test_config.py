"""One config: TOML + LIKENESS_* environment, validated, secrets masked."""

from __future__ import annotations

from pathlib import Path

import pytest

from runtime.config import ensure_data_dir, load_config, masked_dump
from runtime.errors import ConfigError


def write(path: Path, text: str) -> Path:
    path.write_text(text)
    return path


def test_defaults_are_the_embedded_stack(monkeypatch, tmp_path):
    settings = load_config()
    assert settings.tts.backend == "piper"
    assert settings.dialogue.backend == "llamacpp"
    assert settings.asr.model == ""
    monkeypatch.delenv("LIKENESS_DATA_DIR")
    assert load_config().data_dir == Path("~/.local/share/likeness").expanduser()


def test_toml_then_env_then_overrides(tmp_path, monkeypatch):
    cfg = write(tmp_path / "c.toml", '[dialogue]\nbackend = "openai"\ntemperature = 0.2\n')
    assert load_config(cfg).dialogue.temperature == 0.2
    monkeypatch.setenv("LIKENESS_DIALOGUE__TEMPERATURE", "0.9")
    settings = load_config(cfg)
    assert settings.dialogue.temperature == 0.9 and settings.dialogue.backend == "openai"
    assert load_config(cfg, log_level="debug").log_level == "debug"


def test_config_path_from_environment(tmp_path, monkeypatch):
    cfg = write(tmp_path / "c.toml", '[persona]\nname = "Ada"\n')
    monkeypatch.setenv("LIKENESS_CONFIG", str(cfg))
    assert load_config().persona.name == "Ada"


@pytest.mark.parametrize(
    ("text", "key"),
    [
        ('[tts]\nbakend = "piper"\n', "tts.bakend: unknown configuration key"),
        ('colour = "red"\n', "colour: unknown configuration key"),
        ('[tts]\nbackend = "festival"\n', "tts.backend:"),
        ("[vad]\nmin_silence_ms = -5\n", "vad.min_silence_ms:"),
        ('[server]\nport = "eighty"\n', "server.port:"),
        ('[avatar]\nengine = "remote"\n', "avatar.engine:"),
        ("[avatar.ray]\nmax_batch_size = 8\nmax_ongoing_requests = 5\n", "avatar.ray: "),
        ("[avatar.ray]\nmin_replicas = 3\nmax_replicas = 2\n", "avatar.ray: "),
    ],
)
def test_bad_file_fails_naming_the_key(tmp_path, text, key):
    with pytest.raises(ConfigError) as info:
        load_config(write(tmp_path / "c.toml", text))
    assert str(info.value).startswith(key)


def test_ray_engine_settings(tmp_path, monkeypatch):
    """avatar.engine = "ray" and its pool, from the file and the environment; a batch
    Serve would cap (max_ongoing_requests below max_batch_size) says why."""
    assert load_config().avatar.engine == "local"
    cfg = write(tmp_path / "c.toml", '[avatar]\nengine = "ray"\n[avatar.ray]\nmax_replicas = 3\n')
    monkeypatch.setenv("LIKENESS_AVATAR__RAY__ADDRESS", "10.0.0.5:6379")
    ray = load_config(cfg).avatar.ray
    assert (ray.address, ray.max_replicas, ray.min_replicas) == ("10.0.0.5:6379", 3, 1)
    assert ray.max_ongoing_requests >= ray.max_batch_size
    with pytest.raises(ConfigError, match="max_ongoing_requests=4 is below max_batch_size=8"):
        load_config(avatar={"ray": {"max_ongoing_requests": 4}})


def test_unknown_env_variable_fails(monkeypatch):
    monkeypatch.setenv("LIKENESS_DIALOUGE__MODEL", "x")
    with pytest.raises(ConfigError, match="LIKENESS_DIALOUGE__MODEL: unknown"):
        load_config()


def test_bad_env_value_fails(monkeypatch):
    monkeypatch.setenv("LIKENESS_VAD__THRESHOLD", "loud")
    with pytest.raises(ConfigError, match="vad.threshold"):
        load_config()


def test_missing_and_broken_files(tmp_path):
    with pytest.raises(ConfigError, match="not found"):
        load_config(tmp_path / "nope.toml")
    with pytest.raises(ConfigError, match="not valid TOML"):
        load_config(write(tmp_path / "c.toml", "[tts\n"))


def test_secrets_are_masked(tmp_path, monkeypatch):
    monkeypatch.setenv("LIKENESS_DIALOGUE__API_KEY", "sk-live-123456")
    monkeypatch.setenv("LIKENESS_SAFETY__WEBHOOK_TOKEN", "tok-987")
    dumped = masked_dump(load_config())
    assert dumped["dialogue"]["api_key"] == "***"
    assert dumped["safety"]["webhook_token"] == "***"
    assert "sk-live-123456" not in repr(dumped) and "tok-987" not in repr(dumped)


def test_data_dir_holds_all_state(tmp_path):
    settings = load_config(data_dir=tmp_path / "state")
    ensure_data_dir(settings)
    for folder in (settings.log_dir, settings.cache_dir, settings.memory_dir):
        assert folder.is_dir() and folder.parent == tmp_path / "state"
    assert settings.alerts_path.parent == tmp_path / "state"


def test_log_redaction_masks_secret_fields_but_not_latencies():
    from runtime.logs import redact

    event = {
        "event": "sign-in",
        "password": "hunter2",
        "csrf_token": "c5rf",
        "nonce": "n0nce",
        "dialogue_api_key": "sk-1",
        "first_token": 812.0,
        "header": "Authorization: Bearer abc.def",
    }
    out = redact(None, "info", dict(event))
    assert "hunter2" not in repr(out) and "c5rf" not in repr(out) and "n0nce" not in repr(out)
    assert "sk-1" not in repr(out) and "abc.def" not in repr(out)
    assert out["first_token"] == 812.0 and out["event"] == "sign-in"
