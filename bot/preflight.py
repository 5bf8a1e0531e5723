"""Checks that run before anything heavy is imported or loaded: a missing token or model file
must end the start at once with one sentence of what to set."""

from __future__ import annotations

import re
import urllib.parse
from dataclasses import dataclass, field
from pathlib import Path

from bot.settings import Settings
from bot.telegram.access import AccessPolicy


class StartupError(Exception):
    """A one-sentence reason the bot cannot start, meant for the operator."""


# What @BotFather hands out: the bot's numeric id, a colon, 35 characters of URL-safe base64.
TOKEN_FORMAT = re.compile(r"[0-9]{1,20}:[A-Za-z0-9_-]{35}")


def bot_token(settings: Settings) -> str:
    token = (
        settings.telegram.bot_token.get_secret_value().strip()
        if settings.telegram.bot_token
        else ""
    )
    if not token:
        raise StartupError("BOT_TOKEN is not set: put the token from @BotFather into BOT_TOKEN.")
    if TOKEN_FORMAT.fullmatch(token) is None:
        # The token itself is never printed: it is a password.
        raise StartupError(
            "BOT_TOKEN is not a bot token (digits, a colon and 35 letters, digits, - or _): "
            "copy it from @BotFather again."
        )
    return token


def model_path(settings: Settings) -> Path:
    path = settings.model.model_path
    if path is None and settings.engine.engine == "remote":
        raise StartupError(
            "ENGINE=remote needs MODEL_PATH too: the GGUF file the servers run, whose "
            "vocabulary builds the prompts here."
        )
    if path is None:
        raise StartupError(
            "MODEL_PATH is not set: point it at a GGUF model file "
            "(`domovoy models download` fetches one)."
        )
    if not path.is_file():
        raise StartupError(f"The model file {path} does not exist: set MODEL_PATH to a GGUF file.")
    return path


def access_policy(settings: Settings) -> AccessPolicy:
    try:
        return AccessPolicy.from_lists(
            settings.telegram.allowed_users, settings.telegram.admin_users
        )
    except ValueError as exc:
        raise StartupError(f"ALLOWED_USERS/ADMIN_USERS: {exc}.") from exc


def engine_urls(settings: Settings) -> None:
    if settings.engine.engine == "remote" and not settings.engine.engine_urls:
        raise StartupError(
            "ENGINE=remote needs ENGINE_URLS: the addresses of your llama-server or vLLM "
            "servers, e.g. http://gpu1:8080."
        )


# Telegram's rule for setWebhook's secret_token.
SECRET_FORMAT = re.compile(r"[A-Za-z0-9_-]{1,256}")


@dataclass(frozen=True)
class Webhook:
    """Webhook mode, checked: where Telegram posts, the path served here, the secret."""

    url: str
    path: str
    secret: str = field(repr=False)  # a password: never in a repr or a log


def webhook(settings: Settings) -> Webhook | None:
    """None in polling mode (WEBHOOK_URL unset)."""
    config = settings.webhook
    if config.webhook_url is None:
        return None
    url = config.webhook_url.strip()
    parts = urllib.parse.urlsplit(url)
    if parts.scheme not in ("https", "http") or not parts.hostname:
        raise StartupError(
            "WEBHOOK_URL is not a web address: set it to the public HTTPS address Telegram "
            "posts to, e.g. https://bot.example.org/telegram."
        )
    secret = config.webhook_secret.get_secret_value() if config.webhook_secret else ""
    if not secret:
        raise StartupError(
            "WEBHOOK_SECRET is not set: webhook mode needs a secret of 1-256 letters, digits, "
            "_ or - (e.g. `openssl rand -hex 32`)."
        )
    if SECRET_FORMAT.fullmatch(secret) is None:
        # The secret itself is never printed: it is a password.
        raise StartupError(
            "WEBHOOK_SECRET may only hold 1-256 letters A-Z a-z, digits, _ and -: "
            "generate one with `openssl rand -hex 32`."
        )
    path = config.webhook_path or parts.path or "/"
    if not path.startswith("/"):
        raise StartupError(f"WEBHOOK_PATH must start with /, like /telegram (not {path!r}).")
    return Webhook(url, path, secret)


def check(settings: Settings) -> None:
    bot_token(settings)
    engine_urls(settings)
    model_path(settings)
    access_policy(settings)
    webhook(settings)


def describe_invalid_settings(exc: BaseException) -> str | None:
    """One line naming each bad setting by its environment name, or None for other errors."""
    from pydantic import ValidationError

    if not isinstance(exc, ValidationError):
        return None
    return "; ".join(f"{str(error['loc'][-1]).upper()}: {error['msg']}" for error in exc.errors())
