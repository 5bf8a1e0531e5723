from __future__ import annotations

from pathlib import Path

import pytest

from bot.settings import Settings


def test_env_file_with_empty_lines_means_defaults(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("STATE_DIRECTORY", raising=False)
    env = tmp_path / "domovoy.env"
    example = Path(__file__).resolve().parent.parent / ".env.example"
    env.write_text(example.read_text(encoding="utf-8") + "BOT_TOKEN=123:secret\n")
    settings = Settings(_env_file=env)  # type: ignore[call-arg]
    assert settings.model.model_path is None
    assert settings.model.n_threads is None
    assert settings.model.lora_path is None
    assert settings.model.system_prompt is None
    assert settings.storage.data_dir.is_absolute()
    assert settings.storage.resolved_database_url.startswith("sqlite+aiosqlite:////")
    assert settings.model.template == "gigasaiga"
    assert (settings.sampling.temperature, settings.sampling.top_p, settings.sampling.top_k) == (
        0.2,
        0.9,
        30,
    )
    assert settings.sampling.repeat_penalty == 1.15
    assert settings.telegram.bot_token is not None
    assert settings.telegram.bot_token.get_secret_value() == "123:secret"
    assert "123:secret" not in repr(settings)  # "webhook_secret" is a field name


def test_user_lists_as_typed_in_an_env_file(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("ALLOWED_USERS", " 123, @Alice ;456,")
    monkeypatch.setenv("ADMIN_USERS", "")
    settings = Settings(_env_file=None)  # type: ignore[call-arg]
    assert settings.telegram.allowed_users == ["123", "@Alice", "456"]
    assert settings.telegram.admin_users == []


def test_systemd_state_directory_is_the_data_dir(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("DATA_DIR", raising=False)
    monkeypatch.setenv("STATE_DIRECTORY", "/var/lib/domovoy")
    settings = Settings(_env_file=None)  # type: ignore[call-arg]
    assert settings.storage.data_dir == Path("/var/lib/domovoy")
    assert settings.storage.models_dir == Path("/var/lib/domovoy/models")


def test_bad_number_is_named(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("N_CTX", "lots")
    with pytest.raises(ValueError, match="n_ctx"):
        Settings(_env_file=None)  # type: ignore[call-arg]
