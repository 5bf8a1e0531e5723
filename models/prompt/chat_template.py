"""The base of every chat template: messages in, segments and token ids out.

A template turns messages into segments: `Special` pieces go in by token id, `Text` pieces are
tokenized with special-token parsing off. A user who types `</s>` therefore gets the characters
`</s>`, never the end-of-turn token.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal

from models.prompt.segments import Segment, encode_segments, render_segments
from models.prompt.tokenizer import Tokenizer

Role = Literal["system", "user", "bot"]

SAIGA_SYSTEM = (
    "Ты — Сайга, русскоязычный автоматический ассистент. Ты разговариваешь с людьми и помогаешь им."
)
# Most templates call the bot "assistant".
OPENAI_ROLES = {"system": "system", "user": "user", "bot": "assistant"}
RUGPT35_SYSTEM = (
    "Ты — ruGPT-3.5, русскоязычный автоматический ассистент. "
    "Ты разговариваешь с людьми и помогаешь им."
)


@dataclass(frozen=True)
class ChatMessage:
    role: Role
    content: str


class ChatTemplate:
    """Base: subclasses describe the format; this class turns it into text and token ids.

    `head` comes once at the start, `message` for each message, `generation_prompt` at the end.
    Content is stripped, as the reference implementations do.
    """

    name: str = ""
    default_system_prompt: str | None = None
    stop_pieces: tuple[str, ...] = ()

    def head(self, system: str | None) -> list[Segment]:
        return []

    def message(self, message: ChatMessage) -> list[Segment]:
        raise NotImplementedError

    def generation_prompt(self) -> list[Segment]:
        raise NotImplementedError

    def segments(
        self, messages: Sequence[ChatMessage], *, add_generation_prompt: bool = True
    ) -> list[Segment]:
        system = next((m.content.strip() for m in messages if m.role == "system"), None)
        out = self.head(system)
        for message in messages:
            out += self.message(ChatMessage(message.role, message.content.strip()))
        if add_generation_prompt:
            out += self.generation_prompt()
        return out

    def render(self, messages: Sequence[ChatMessage], *, add_generation_prompt: bool = True) -> str:
        return render_segments(self.segments(messages, add_generation_prompt=add_generation_prompt))

    def encode(
        self,
        messages: Sequence[ChatMessage],
        tokenizer: Tokenizer,
        *,
        add_generation_prompt: bool = True,
    ) -> list[int]:
        segments = self.segments(messages, add_generation_prompt=add_generation_prompt)
        return encode_segments(segments, tokenizer)

    def stop_token_ids(self, tokenizer: Tokenizer) -> set[int]:
        """The template's end-of-turn pieces and every token the vocabulary marks as ending
        generation (its EOS/EOT), as llama.cpp's own chat loop stops on them."""
        return {tokenizer.token_id(piece) for piece in self.stop_pieces} | tokenizer.eog_ids()
