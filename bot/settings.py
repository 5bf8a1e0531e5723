"""The one settings object: environment variables, a `.env` file beside the project, or a
systemd EnvironmentFile all feed it, with flat upper-case names."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Annotated, Literal

import platformdirs
from pydantic import ByteSize, Field, SecretStr, field_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

PROJECT_ROOT = Path(__file__).resolve().parent.parent
DEFAULT_API_URL = "https://api.telegram.org"


def default_data_dir() -> Path:
    # systemd's StateDirectory= exports STATE_DIRECTORY; elsewhere use the user's data folder.
    state = os.environ.get("STATE_DIRECTORY")
    if state:
        return Path(state.split(":")[0])
    return Path(platformdirs.user_data_dir("domovoy", appauthor=False))


class Settings(BaseSettings):
    model_config = SettingsConfigDict(
        env_file=PROJECT_ROOT / ".env",
        env_file_encoding="utf-8",
        extra="ignore",
        case_sensitive=False,
        # An EnvironmentFile line like `N_THREADS=` means "use the default".
        env_ignore_empty=True,
    )

    # Model core.
    model_path: Path | None = None
    lora_path: Path | None = None
    lora_scale: float = 1.0
    template: str = "gigasaiga"
    system_prompt: str | None = None
    n_ctx: int = Field(default=2048, ge=64)
    max_new_tokens: int = Field(default=512, ge=1)
    n_threads: int | None = Field(default=None, ge=1)
    n_batch: int = Field(default=512, ge=1)
    # Conversations decoded together; None: chosen from the RAM (up to 4).
    parallel: int | None = Field(default=None, ge=1)
    kv_type: Literal["f16", "q8_0"] = "f16"
    n_gpu_layers: int = 0
    use_mlock: bool = False
    temperature: float = Field(default=0.2, ge=0.0)
    top_p: float = Field(default=0.9, gt=0.0, le=1.0)
    top_k: int = Field(default=30, ge=0)
    repeat_penalty: float = Field(default=1.15, gt=0.0)
    seed: int | None = None

    # Kept conversation states (instant follow-ups); sizes take "2GB", "512MiB" or bytes.
    state_cache: bool = True
    state_cache_ram: ByteSize = ByteSize(2 * 1024**3)
    state_cache_disk: ByteSize = ByteSize(8 * 1024**3)
    # The window slides down to this fraction of N_CTX - MAX_NEW_TOKENS (1 = one turn at a time).
    window_low_watermark: float = Field(default=0.5, gt=0.0, le=1.0)

    # Storage.
    data_dir: Path = Field(default_factory=default_data_dir)
    database_url: str | None = None

    # Telegram.
    bot_token: SecretStr | None = None
    telegram_api_url: str = DEFAULT_API_URL
    allowed_users: Annotated[list[str], NoDecode] = Field(default_factory=list)
    admin_users: Annotated[list[str], NoDecode] = Field(default_factory=list)
    stream_edit_interval: float = Field(default=1.0, gt=0.0)
    use_drafts: bool = True

    # Hugging Face hub (huggingface_hub also reads HF_ENDPOINT itself).
    hf_token: SecretStr | None = None

    # Logging.
    log_level: str = "INFO"
    log_message_text: bool = False

    @field_validator("allowed_users", "admin_users", mode="before")
    @classmethod
    def _split_users(cls, value: object) -> object:
        if isinstance(value, str):
            return [part.strip() for part in value.replace(";", ",").split(",") if part.strip()]
        return value

    @field_validator("model_path", "lora_path", "system_prompt", mode="before")
    @classmethod
    def _empty_is_none(cls, value: object) -> object:
        # An EnvironmentFile line like `LORA_PATH=` means "not set".
        if isinstance(value, str) and not value.strip():
            return None
        return value

    @field_validator("telegram_api_url")
    @classmethod
    def _strip_slash(cls, value: str) -> str:
        return value.rstrip("/")

    @property
    def resolved_database_url(self) -> str:
        if self.database_url:
            return self.database_url
        return f"sqlite+aiosqlite:///{self.data_dir / 'domovoy.db'}"

    @property
    def models_dir(self) -> Path:
        return self.data_dir / "models"

    @property
    def state_cache_dir(self) -> Path:
        return self.data_dir / "state-cache"
