"""Everything needed to chat with one model: tokenizer, template, window and engine."""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Sequence
from dataclasses import dataclass

from models.engine import ChatEngine, SamplingParams
from models.errors import ModelLoadError
from models.loader import ModelConfig, load_llama
from models.templates import ChatMessage, ChatTemplate, get_template
from models.tokenizer import LlamaTokenizer, Tokenizer
from models.window import Window, WindowResult

logger = logging.getLogger(__name__)


@dataclass
class ChatModel:
    name: str
    tokenizer: Tokenizer
    template: ChatTemplate
    window: Window
    engine: ChatEngine

    @property
    def default_system_prompt(self) -> str | None:
        return self.template.default_system_prompt

    def build_prompt(self, system: str | None, history: Sequence[ChatMessage]) -> WindowResult:
        return self.window.fit(system, history)

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


def load_chat_model(
    config: ModelConfig,
    *,
    template: str,
    max_new_tokens: int,
    sampling: SamplingParams | None = None,
) -> ChatModel:
    """Blocking: loads the weights. Call it from a thread when an event loop is running."""
    tokenizer = LlamaTokenizer.from_file(config.model_path)
    config = fit_context(config, tokenizer.n_ctx_train)
    chat_template = get_template(template, tokenizer)
    stop_ids = chat_template.stop_token_ids(tokenizer)
    window = Window(chat_template, tokenizer, n_ctx=config.n_ctx, reserve=max_new_tokens)
    window.check_system(chat_template.default_system_prompt)
    llama = load_llama(config)
    engine = ChatEngine(
        llama,  # type: ignore[arg-type]
        n_ctx=config.n_ctx,
        n_batch=config.n_batch,
        stop_ids=stop_ids,
        sampling=sampling,
    )
    name = config.model_path.stem
    if config.lora_path is not None:
        name += f"+{config.lora_path.stem}@{config.lora_scale:g}"
    return ChatModel(
        name=name, tokenizer=tokenizer, template=chat_template, window=window, engine=engine
    )
