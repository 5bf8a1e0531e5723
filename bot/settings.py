"""The one settings object: environment variables, a `.env` file beside the project, or a
systemd EnvironmentFile all feed it, with flat upper-case names (`BOT_TOKEN`, `N_CTX`).

Inside, the settings are grouped by what they configure; each group's field names are the
flat names, so `N_CTX` is `settings.model.n_ctx`, and each group turns itself into the
config object of the part it configures (`to_config()`).
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, Literal

import platformdirs
from pydantic import BaseModel, ByteSize, Field, SecretStr, field_validator, model_validator
from pydantic_settings import (
    BaseSettings,
    DotEnvSettingsSource,
    EnvSettingsSource,
    NoDecode,
    PydanticBaseSettingsSource,
    SettingsConfigDict,
)

if TYPE_CHECKING:
    from models.runtime.engine import SamplingParams
    from models.runtime.loader import ModelConfig
    from models.runtime.state_cache import StateCacheConfig

PROJECT_ROOT = Path(__file__).resolve().parent.parent
DEFAULT_API_URL = "https://api.telegram.org"


def default_data_dir() -> Path:
    # systemd's StateDirectory= exports STATE_DIRECTORY; elsewhere use the user's data folder.
    state = os.environ.get("STATE_DIRECTORY")
    if state:
        return Path(state.split(":")[0])
    return Path(platformdirs.user_data_dir("domovoy", appauthor=False))


def _empty_is_none(value: object) -> object:
    # An EnvironmentFile line like `LORA_PATH=` means "not set".
    if isinstance(value, str) and not value.strip():
        return None
    return value


class TelegramSettings(BaseModel):
    bot_token: SecretStr | None = None
    telegram_api_url: str = DEFAULT_API_URL
    allowed_users: Annotated[list[str], NoDecode] = Field(default_factory=list)
    admin_users: Annotated[list[str], NoDecode] = Field(default_factory=list)
    stream_edit_interval: float = Field(default=1.0, gt=0.0)
    # Groups have no drafts: a reply streams by editing one message, and Telegram allows a
    # group about 20 messages a minute, edits included.
    group_edit_interval: float = Field(default=3.0, gt=0.0)
    use_drafts: bool = True
    # Bot API 10.1 rich messages (Markdown rendered by Telegram, the Stop button) in private
    # chats; without them, or on a server that lacks them, drafts with HTML are used.
    use_rich_messages: bool = True
    # Telegram's flood limits, kept per chat by bot/telegram/sender.py for every send and edit.
    chat_message_interval: float = Field(default=1.0, ge=0.0)
    group_messages_per_minute: int = Field(default=20, ge=1)

    def edit_interval(self, private: bool) -> float:
        """Seconds between two updates of a streamed reply in this kind of chat."""
        if private:
            return self.stream_edit_interval
        return max(self.stream_edit_interval, self.group_edit_interval)

    @field_validator("allowed_users", "admin_users", mode="before")
    @classmethod
    def _split_users(cls, value: object) -> object:
        if isinstance(value, str):
            return [part.strip() for part in value.replace(";", ",").split(",") if part.strip()]
        return value

    @field_validator("telegram_api_url")
    @classmethod
    def _strip_slash(cls, value: str) -> str:
        return value.rstrip("/")


class ModelSettings(BaseModel):
    model_path: Path | None = None
    lora_path: Path | None = None
    lora_scale: float = 1.0
    template: str = "gigasaiga"
    system_prompt: str | None = None
    # Unset: the model's trained context capped by this machine's RAM (models.files.context).
    n_ctx: int | None = Field(default=None, ge=64)
    max_new_tokens: int = Field(default=512, ge=1)
    n_threads: int | None = Field(default=None, ge=1)
    n_batch: int = Field(default=512, ge=1)
    # Conversations decoded together; None: chosen from the RAM (up to 4).
    parallel: int | None = Field(default=None, ge=1)
    kv_type: Literal["f16", "q8_0"] = "f16"
    n_gpu_layers: int = 0
    use_mlock: bool = False
    # The window slides down to this fraction of N_CTX - MAX_NEW_TOKENS (1 = one turn at a time).
    window_low_watermark: float = Field(default=0.5, gt=0.0, le=1.0)

    _none_when_empty = field_validator("model_path", "lora_path", "system_prompt", mode="before")(
        _empty_is_none
    )

    def to_config(self, model_path: Path, n_ctx: int, seed: int | None) -> ModelConfig:
        """`n_ctx`: the context chosen for this model (`N_CTX`, or the trained one capped by
        RAM when it is not set)."""
        from models.runtime.loader import ModelConfig

        return ModelConfig(
            model_path=model_path,
            n_ctx=n_ctx,
            n_threads=self.n_threads,
            n_batch=self.n_batch,
            n_gpu_layers=self.n_gpu_layers,
            use_mlock=self.use_mlock,
            lora_path=self.lora_path,
            lora_scale=self.lora_scale,
            seed=seed,
        )


class SamplingSettings(BaseModel):
    temperature: float = Field(default=0.2, ge=0.0)
    top_p: float = Field(default=0.9, gt=0.0, le=1.0)
    top_k: int = Field(default=30, ge=0)
    repeat_penalty: float = Field(default=1.15, gt=0.0)
    seed: int | None = None

    def to_config(self) -> SamplingParams:
        from models.runtime.engine import SamplingParams

        return SamplingParams(
            temperature=self.temperature,
            top_p=self.top_p,
            top_k=self.top_k,
            repeat_penalty=self.repeat_penalty,
        )


class StateCacheSettings(BaseModel):
    """Kept conversation states (instant follow-ups); sizes take "2GB", "512MiB" or bytes."""

    state_cache: bool = True
    state_cache_ram: ByteSize = ByteSize(2 * 1024**3)
    state_cache_disk: ByteSize = ByteSize(8 * 1024**3)

    def to_config(self, directory: Path) -> StateCacheConfig:
        from models.runtime.state_cache import StateCacheConfig

        return StateCacheConfig(
            enabled=self.state_cache,
            ram_bytes=int(self.state_cache_ram),
            disk_bytes=int(self.state_cache_disk),
            directory=directory,
        )


class EngineSettings(BaseModel):
    """Where replies are generated: in this process, or on llama.cpp/vLLM servers."""

    engine: Literal["local", "remote"] = "local"
    # Comma-separated base URLs of OpenAI-compatible servers, e.g. http://gpu1:8080.
    engine_urls: Annotated[list[str], NoDecode] = Field(default_factory=list)
    engine_api_key: SecretStr | None = None
    # llama-server's /completion, vLLM's /v1/completions; auto asks the server (GET /props).
    engine_api: Literal["auto", "llama-server", "openai"] = "auto"
    # The `model` field of /v1/completions requests (vLLM's served model name); empty: the
    # server's first model.
    engine_model: str | None = None
    engine_connect_timeout: float = Field(default=5.0, gt=0.0)
    # Longest silence inside a reply (first token included) before the stream counts as cut.
    engine_read_timeout: float = Field(default=120.0, gt=0.0)
    engine_health_interval: float = Field(default=5.0, gt=0.0)
    # How long a reply waits for a healthy server (the user is told) before it fails.
    engine_wait: float = Field(default=300.0, ge=0.0)

    _none_when_empty = field_validator("engine_model", mode="before")(_empty_is_none)

    @field_validator("engine_urls", mode="before")
    @classmethod
    def _split_urls(cls, value: object) -> object:
        if isinstance(value, str):
            urls = [part.strip().rstrip("/") for part in value.split(",") if part.strip()]
            # The OpenAI base URL people copy from vLLM's docs ends in /v1: the server is above.
            return [url.removesuffix("/v1") for url in urls]
        return value


class WebhookSettings(BaseModel):
    """Set WEBHOOK_URL to take updates by webhook (several processes behind a load balancer)
    instead of long polling."""

    # The public HTTPS address Telegram posts to, e.g. https://bot.example.org/telegram.
    webhook_url: str | None = None
    webhook_secret: SecretStr | None = None
    # Where this process listens (behind the reverse proxy or load balancer).
    webhook_host: str = "127.0.0.1"
    webhook_port: int = Field(default=8081, ge=1, le=65535)
    # The path this process serves; empty: the path of WEBHOOK_URL.
    webhook_path: str | None = None
    # How many connections at once Telegram may open to WEBHOOK_URL (all processes together):
    # 1..100 on api.telegram.org (40 is its default), up to 100000 on a local Bot API server.
    webhook_max_connections: int = Field(default=40, ge=1, le=100_000)

    _none_when_empty = field_validator("webhook_url", "webhook_path", mode="before")(_empty_is_none)


class StorageSettings(BaseModel):
    data_dir: Path = Field(default_factory=default_data_dir)
    database_url: str | None = None

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


GROUPS: dict[str, type[BaseModel]] = {
    "telegram": TelegramSettings,
    "model": ModelSettings,
    "sampling": SamplingSettings,
    "cache": StateCacheSettings,
    "storage": StorageSettings,
    "engine": EngineSettings,
    "webhook": WebhookSettings,
}


class Settings(BaseSettings):
    model_config = SettingsConfigDict(
        env_file=PROJECT_ROOT / ".env",
        env_file_encoding="utf-8",
        extra="ignore",
        case_sensitive=False,
        # An EnvironmentFile line like `N_THREADS=` means "use the default".
        env_ignore_empty=True,
    )

    telegram: TelegramSettings = Field(default_factory=TelegramSettings)
    model: ModelSettings = Field(default_factory=ModelSettings)
    sampling: SamplingSettings = Field(default_factory=SamplingSettings)
    cache: StateCacheSettings = Field(default_factory=StateCacheSettings)
    storage: StorageSettings = Field(default_factory=StorageSettings)
    engine: EngineSettings = Field(default_factory=EngineSettings)
    webhook: WebhookSettings = Field(default_factory=WebhookSettings)

    # Hugging Face hub (huggingface_hub also reads HF_ENDPOINT itself).
    hf_token: SecretStr | None = None
    log_level: str = "INFO"
    log_message_text: bool = False

    @model_validator(mode="before")
    @classmethod
    def _nest_flat_names(cls, values: Any) -> Any:
        """`BOT_TOKEN=...` (or `bot_token=` in code) lands in its group."""
        if not isinstance(values, dict):
            return values
        nested = dict(values)
        for name, model in GROUPS.items():
            picked = {key: nested.pop(key) for key in list(nested) if key in model.model_fields}
            if picked:
                current = nested.get(name)
                base = current.model_dump() if isinstance(current, BaseModel) else current or {}
                nested[name] = {**base, **picked}
        return nested

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        assert isinstance(dotenv_settings, DotEnvSettingsSource)
        return (
            init_settings,
            _FlatEnv(settings_cls),
            _FlatDotEnv(
                settings_cls,
                env_file=dotenv_settings.env_file,
                env_file_encoding=dotenv_settings.env_file_encoding,
            ),
        )


def _flat_names() -> set[str]:
    names = {name for model in GROUPS.values() for name in model.model_fields}
    return names | {"hf_token", "log_level", "log_message_text"}


class _FlatEnv(EnvSettingsSource):
    """Environment variables by their flat names; `Settings` puts each in its group."""

    def __call__(self) -> dict[str, Any]:
        names = _flat_names()
        return {key: value for key, value in self.env_vars.items() if key in names}


class _FlatDotEnv(DotEnvSettingsSource):
    def __call__(self) -> dict[str, Any]:
        names = _flat_names()
        return {key: value for key, value in self.env_vars.items() if key in names}
