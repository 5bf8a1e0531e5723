"""Connect to the engine servers and build the `ChatModel` around them (ENGINE=remote).

Only the model file's vocabulary is loaded here: it builds the token-level prompts (so user
text can never forge control tokens, and the window counts exactly what the server sees) and
decodes the ids the server streams back.
"""

from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import aiohttp

from models.engines import SlotLedger
from models.errors import ModelError
from models.prompt.templates import get_template
from models.prompt.tokenizer import LlamaTokenizer
from models.prompt.window import DEFAULT_LOW_WATERMARK, Window
from models.remote.engine import RemoteEngine
from models.remote.pieces import Pieces
from models.remote.servers import ServerPool
from models.remote.slots import InProcessSlotLedger
from models.runtime.chat_model import ChatModel
from models.runtime.sampler import SamplingParams

logger = logging.getLogger(__name__)


class EngineStartError(ModelError):
    """No engine server could be used at the start."""


@dataclass(frozen=True)
class RemoteConfig:
    model_path: Path
    urls: list[str]
    template: str
    max_new_tokens: int
    api_key: str | None = field(default=None, repr=False)  # a secret: never in a repr
    api: Literal["auto", "llama-server", "openai"] = "auto"
    model: str | None = None
    n_ctx: int | None = None
    connect_timeout: float = 5.0
    read_timeout: float = 120.0
    health_interval: float = 5.0
    wait: float = 300.0
    sampling: SamplingParams = field(default_factory=SamplingParams)
    window_low_watermark: float = DEFAULT_LOW_WATERMARK


async def load_remote_model(config: RemoteConfig, ledger: SlotLedger | None = None) -> ChatModel:
    """The vocabulary, the template and an engine on the servers that answered; raises
    EngineStartError with one sentence when none did."""
    tokenizer = await asyncio.to_thread(LlamaTokenizer.from_file, config.model_path)
    template = get_template(config.template, tokenizer)
    headers = {"Authorization": f"Bearer {config.api_key}"} if config.api_key else {}
    # A reply's stream may last minutes: no total; but no read may wait longer than the
    # longest silence allowed inside a reply (the headers of an answer included).
    timeout = aiohttp.ClientTimeout(
        total=None,
        connect=config.connect_timeout,
        sock_connect=config.connect_timeout,
        sock_read=config.read_timeout,
    )
    session = aiohttp.ClientSession(headers=headers, timeout=timeout)
    try:
        pool = ServerPool(
            config.urls,
            session,
            api=config.api,
            model=config.model,
            health_interval=config.health_interval,
            quick_timeout=2 * config.connect_timeout + 1,
            n_vocab=tokenizer.n_vocab,
        )
        servers = list(pool.servers.values())
        up = await asyncio.gather(*(pool.probe(s) for s in servers))
        if not any(up):
            refusals = [s.refusal for s in servers if s.refusal]
            if refusals:
                raise EngineStartError(refusals[0])
            raise EngineStartError(
                "No engine server answered at ENGINE_URLS (" + ", ".join(config.urls) + "); "
                "start llama-server or vLLM there, or fix the addresses."
            )
        trained = tokenizer.n_ctx_train or 2**31
        n_ctx = min(config.n_ctx or trained, trained)
        served = [s.n_ctx for s in servers if s.reached and s.n_ctx]
        if served:
            n_ctx = min(n_ctx, *served)
        window = Window(
            template,
            tokenizer,
            n_ctx=n_ctx,
            reserve=config.max_new_tokens,
            low_watermark=config.window_low_watermark,
        )
        window.check_system(template.default_system_prompt)
        engine = RemoteEngine(
            session=session,
            pool=pool,
            ledger=ledger or InProcessSlotLedger(),
            pieces=Pieces(tokenizer),
            n_ctx=n_ctx,
            stop_ids=frozenset(template.stop_token_ids(tokenizer)),
            eog_ids=frozenset(tokenizer.eog_ids()),
            sampling=config.sampling,
            read_timeout=config.read_timeout,
            wait=config.wait,
            health_interval=config.health_interval,
        )
    except BaseException:
        await session.close()
        raise
    pool.start()
    for server in servers:
        logger.info(
            "engine server %s: %s, %s, %d slots, n_ctx %s",
            server.url,
            "up" if server.healthy else "down",
            server.dialect or "unknown",
            server.slots,
            server.n_ctx or "?",
        )
    name = f"{config.model_path.stem}@remote"
    return ChatModel(
        name=name, tokenizer=tokenizer, template=template, window=window, engine=engine
    )
