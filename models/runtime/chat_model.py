"""Everything needed to chat with one model: tokenizer, template, window and engine."""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Sequence
from dataclasses import dataclass

import llama_cpp

from models.engines import Engine
from models.errors import ModelLoadError
from models.prompt.templates import ChatMessage, ChatTemplate, get_template
from models.prompt.tokenizer import LlamaTokenizer, Tokenizer
from models.prompt.window import DEFAULT_LOW_WATERMARK, Window, WindowResult
from models.runtime.context import Runtime
from models.runtime.engine import ChatEngine, SamplingParams
from models.runtime.follow_up import digest, splice
from models.runtime.loader import ModelConfig
from models.runtime.state_cache import StateCache, StateCacheConfig
from models.runtime.state_file import FileStamp, StateIdentity

logger = logging.getLogger(__name__)


@dataclass
class ChatModel:
    name: str
    tokenizer: Tokenizer
    template: ChatTemplate
    window: Window
    engine: Engine

    @property
    def default_system_prompt(self) -> str | None:
        return self.template.default_system_prompt

    def build_prompt(
        self, system: str | None, history: Sequence[ChatMessage], *, key: str | None = None
    ) -> WindowResult:
        """The window over `history`. With the conversation's `key` (the one its requests are
        submitted with), the previous reply goes in as the exact ids the model generated, so
        that a follow-up evaluates only the new turn."""
        window = self.window.fit(system, history)
        if key is None:
            return window
        window = splice(
            window,
            template=self.template,
            tokenizer=self.tokenizer,
            system=system,
            previous=self.engine.last_prompt(key),
            transcript=self.engine.transcript(key),
        )
        self.engine.note_prompt(key, digest(system, window.messages), window.tokens)
        return window

    async def close(self) -> None:
        await self.engine.close()


def fit_context(config: ModelConfig, trained: int) -> ModelConfig:
    """Never ask for more context than the model was trained with: GPT-2 models abort in C."""
    if trained <= 0:
        raise ModelLoadError(f"The model file {config.model_path} does not say its context length.")
    if config.n_ctx > trained:
        logger.warning(
            "N_CTX=%d exceeds the model's trained context; using %d", config.n_ctx, trained
        )
        return dataclasses.replace(config, n_ctx=trained)
    return config


def state_identity(config: ModelConfig, runtime: Runtime) -> StateIdentity:
    """What a kept state was made with; a file made with anything else is stale."""
    params = runtime.params
    return StateIdentity(
        model=FileStamp.of(config.model_path),
        lora=FileStamp.of(config.lora_path) if config.lora_path is not None else None,
        lora_scale=float(config.lora_scale),
        n_ctx=config.n_ctx,
        n_batch=int(params.n_batch),
        n_ubatch=int(params.n_ubatch),
        type_k=int(params.type_k),
        type_v=int(params.type_v),
        flash_attn=int(params.flash_attn_type),
        n_gpu_layers=config.n_gpu_layers,
        llama_cpp=str(llama_cpp.__version__),
        n_seq_max=int(params.n_seq_max),
    )


def make_state_cache(
    settings: StateCacheConfig | None, config: ModelConfig, runtime: Runtime
) -> StateCache | None:
    if settings is None or not settings.enabled:
        return None
    cache = StateCache(
        state_identity(config, runtime),
        ram_bytes=settings.ram_bytes,
        disk_bytes=settings.disk_bytes,
        directory=settings.directory,
    )
    logger.info(
        "Keeping conversation states: %d MB in RAM, %d MB on disk%s",
        settings.ram_bytes // 2**20,
        cache.disk_budget // 2**20,
        f" in {settings.directory}" if settings.directory else "",
    )
    return cache


def load_chat_model(
    config: ModelConfig,
    *,
    template: str,
    max_new_tokens: int,
    sampling: SamplingParams | None = None,
    state_cache: StateCacheConfig | None = None,
    window_low_watermark: float = DEFAULT_LOW_WATERMARK,
    parallel: int | None = None,
    kv_type: str = "f16",
) -> ChatModel:
    """Blocking: loads the weights. Call it from a thread when an event loop is running.

    `state_cache` defaults to keeping conversation states in RAM only (`StateCacheConfig()`);
    pass `StateCacheConfig(enabled=False)` to turn it off. `parallel` conversations decode
    together (None: as many as the RAM allows, up to 4); `kv_type` is f16 or q8_0.
    """
    tokenizer = LlamaTokenizer.from_file(config.model_path)
    config = fit_context(config, tokenizer.n_ctx_train)
    chat_template = get_template(template, tokenizer)
    stop_ids = chat_template.stop_token_ids(tokenizer)
    window = Window(
        chat_template,
        tokenizer,
        n_ctx=config.n_ctx,
        reserve=max_new_tokens,
        low_watermark=window_low_watermark,
    )
    window.check_system(chat_template.default_system_prompt)
    runtime = Runtime(config, parallel=parallel, kv_type=kv_type)
    sampling = sampling or SamplingParams()
    if sampling.seed is None and config.seed is not None:
        sampling = dataclasses.replace(sampling, seed=config.seed)
    try:
        cache = make_state_cache(
            state_cache if state_cache is not None else StateCacheConfig(), config, runtime
        )
    except BaseException:
        runtime.close()
        raise
    engine = ChatEngine(
        runtime, n_ctx=config.n_ctx, stop_ids=stop_ids, sampling=sampling, state_cache=cache
    )
    logger.info(
        "Loaded %s: PARALLEL=%d, N_CTX=%d, threads=%s, gpu_layers=%d, lora=%s",
        config.model_path.name,
        runtime.parallel,
        config.n_ctx,
        config.n_threads or "auto",
        config.n_gpu_layers,
        config.lora_path.name if config.lora_path else "none",
    )
    name = config.model_path.stem
    if config.lora_path is not None:
        name += f"+{config.lora_path.stem}@{config.lora_scale:g}"
    return ChatModel(
        name=name, tokenizer=tokenizer, template=chat_template, window=window, engine=engine
    )
