"""Chat prompt templates, built at the token level.

A template turns messages into segments: `Special` pieces go in by token id, `Text` pieces are
tokenized with special-token parsing off. A user who types `</s>` therefore gets the characters
`</s>`, never the end-of-turn token. Adjacent text pieces are merged before tokenizing so the
ids match what the model saw in training (Hugging Face tokenizers split on special tokens and
encode the runs between them). The base class is in `chat_template`, the GGUF-embedded
template in `gguf_template`.
"""

from __future__ import annotations

from collections.abc import Sequence

from models.errors import TemplateError
from models.prompt.chat_template import (
    OPENAI_ROLES,
    RUGPT35_SYSTEM,
    SAIGA_SYSTEM,
    ChatMessage,
    ChatTemplate,
    Role,
)
from models.prompt.gguf_template import GgufTemplate
from models.prompt.segments import (
    Markup,
    Segment,
    Special,
    Text,
    encode_segments,
    expand_markup,
    merge_text,
    render_segments,
)
from models.prompt.tokenizer import Tokenizer

__all__ = [
    "RUGPT35_SYSTEM",
    "SAIGA_SYSTEM",
    "ChatMessage",
    "ChatTemplate",
    "GgufTemplate",
    "Markup",
    "Role",
    "Segment",
    "Special",
    "Text",
    "encode_segments",
    "expand_markup",
    "merge_text",
    "render_segments",
]


class SaigaTemplate(ChatTemplate):
    """`<s>{role}\\n{content}</s>\\n` per message; the bot's reply follows `<s>bot`."""

    name = "gigasaiga"
    default_system_prompt = SAIGA_SYSTEM
    stop_pieces = ("</s>",)

    def message(self, message: ChatMessage) -> list[Segment]:
        return [
            Special("<s>"),
            Text(f"{message.role}\n{message.content}"),
            Special("</s>"),
            Text("\n"),
        ]

    def generation_prompt(self) -> list[Segment]:
        return [Special("<s>"), Text("bot")]


class SaigaV2Template(SaigaTemplate):
    """Saiga v2 (Saiga Mistral 7B): `<s>{role}\\n{content}</s>` per message with nothing
    between turns, as rulm's `internal_prompts/saiga_v2.json` trained it; the reply follows
    `<s>bot\\n`, as its author's llama.cpp chat script prompts it."""

    name = "saiga_v2"

    def message(self, message: ChatMessage) -> list[Segment]:
        return [Special("<s>"), Text(f"{message.role}\n{message.content}"), Special("</s>")]

    def generation_prompt(self) -> list[Segment]:
        return [Special("<s>"), Text("bot\n")]


class RuGpt35Template(SaigaTemplate):
    name = "rugpt35"
    default_system_prompt = RUGPT35_SYSTEM


class SaigaLlama3Template(ChatTemplate):
    name = "saiga_llama3"
    default_system_prompt = SAIGA_SYSTEM
    stop_pieces = ("<|eot_id|>",)

    def head(self, system: str | None) -> list[Segment]:
        return [Special("<|begin_of_text|>")]

    def message(self, message: ChatMessage) -> list[Segment]:
        return [
            Special("<|start_header_id|>"),
            Text(OPENAI_ROLES[message.role]),
            Special("<|end_header_id|>"),
            Text(f"\n\n{message.content}"),
            Special("<|eot_id|>"),
        ]

    def generation_prompt(self) -> list[Segment]:
        return [
            Special("<|start_header_id|>"),
            Text("assistant"),
            Special("<|end_header_id|>"),
            Text("\n\n"),
        ]


class ChatMLTemplate(ChatTemplate):
    name = "chatml"
    default_system_prompt: str | None = SAIGA_SYSTEM
    stop_pieces = ("<|im_end|>",)

    def message(self, message: ChatMessage) -> list[Segment]:
        return [
            Special("<|im_start|>"),
            Text(f"{OPENAI_ROLES[message.role]}\n{message.content}"),
            Special("<|im_end|>"),
            Text("\n"),
        ]

    def generation_prompt(self) -> list[Segment]:
        return [Special("<|im_start|>"), Text("assistant\n")]


class GigaChatTemplate(ChatTemplate):
    """GigaChat-20B-A3B-instruct, as llama.cpp's own `gigachat` template lays it out."""

    name = "gigachat"
    default_system_prompt = None
    stop_pieces = ("<|message_sep|>",)

    def head(self, system: str | None) -> list[Segment]:
        if system is None:
            return [Special("<s>")]
        return [Special("<s>"), Text(system), Special("<|message_sep|>")]

    def message(self, message: ChatMessage) -> list[Segment]:
        if message.role == "user":
            return [
                Text("user"),
                Special("<|role_sep|>"),
                Text(message.content),
                Special("<|message_sep|>"),
                Text("available functions"),
                Special("<|role_sep|>"),
                Text("[]"),
                Special("<|message_sep|>"),
            ]
        if message.role == "bot":
            return [
                Text("assistant"),
                Special("<|role_sep|>"),
                Text(message.content),
                Special("<|message_sep|>"),
            ]
        return []  # the system prompt is part of the head

    def generation_prompt(self) -> list[Segment]:
        return [Text("assistant"), Special("<|role_sep|>")]


class Qwen3Template(ChatMLTemplate):
    """ChatML as Qwen3 models (T-lite, T-pro) were tuned on it, with reasoning turned off.

    The generation prompt carries an empty `<think></think>` block, as Qwen3's own template
    writes it for `enable_thinking=False`: on a CPU a reasoning model would think for minutes
    before the first word of the answer.
    """

    name = "qwen3"
    default_system_prompt = None

    def generation_prompt(self) -> list[Segment]:
        return [
            Special("<|im_start|>"),
            Text("assistant\n"),
            Special("<think>"),
            Text("\n\n"),
            Special("</think>"),
            Text("\n\n"),
        ]


class MistralTemplate(ChatTemplate):
    """Mistral's `[INST]` format as the Mistral Nemo template writes it.

    Mistral models have no system role: the system prompt goes into the newest user message,
    as Mistral's own template puts it. Spaces are the tokenizer's business (a SentencePiece
    tokenizer adds one after each control token, Tekken does not).
    """

    name = "mistral"
    default_system_prompt = None
    stop_pieces = ("</s>",)

    def segments(
        self, messages: Sequence[ChatMessage], *, add_generation_prompt: bool = True
    ) -> list[Segment]:
        system = next((m.content.strip() for m in messages if m.role == "system"), None)
        turns = [m for m in messages if m.role != "system"]
        last_user = max((i for i, m in enumerate(turns) if m.role == "user"), default=-1)
        out: list[Segment] = [Special("<s>")]
        for i, message in enumerate(turns):
            content = message.content.strip()
            if message.role == "user":
                if i == last_user and system:
                    content = f"{system}\n\n{content}"
                out += [Special("[INST]"), Text(content), Special("[/INST]")]
            else:
                out += [Text(content), Special("</s>")]
        return out


class YandexTemplate(ChatTemplate):
    """YandexGPT-5-Lite-instruct, as its published template and llama.cpp's `yandex` lay it out.

    The model knows no system role; like llama.cpp, the system prompt opens the first user
    message. A turn ends with a blank line; the reply starts after `[SEP]`.
    """

    name = "yandex"
    default_system_prompt = None
    stop_pieces = ("</s>",)

    def segments(
        self, messages: Sequence[ChatMessage], *, add_generation_prompt: bool = True
    ) -> list[Segment]:
        system = next((m.content.strip() for m in messages if m.role == "system"), None)
        out: list[Segment] = [Special("<s>")]
        first = True
        for message in messages:
            content = message.content.strip()
            if message.role == "user":
                if first and system:
                    content = f"{system}\n{content}"
                first = False
                out.append(Text(f" Пользователь: {content}\n\n"))
            elif message.role == "bot":
                out.append(Text(f" Ассистент: {content}\n\n"))
        if add_generation_prompt:
            out += [Text(" Ассистент:"), Special("[SEP]")]
        return out


BUILTIN_TEMPLATES: dict[str, type[ChatTemplate]] = {
    cls.name: cls
    for cls in (
        SaigaTemplate,
        SaigaV2Template,
        RuGpt35Template,
        SaigaLlama3Template,
        ChatMLTemplate,
        Qwen3Template,
        GigaChatTemplate,
        MistralTemplate,
        YandexTemplate,
    )
}
TEMPLATE_NAMES = (*BUILTIN_TEMPLATES, "gguf")


def get_template(name: str, tokenizer: Tokenizer | None = None) -> ChatTemplate:
    if name in BUILTIN_TEMPLATES:
        return BUILTIN_TEMPLATES[name]()
    if name == "gguf":
        metadata = tokenizer.metadata if tokenizer else {}
        source = metadata.get("tokenizer.chat_template")
        if not source:
            raise TemplateError(
                "TEMPLATE=gguf, but the model file has no embedded chat template; "
                f"choose one of: {', '.join(BUILTIN_TEMPLATES)}."
            )
        assert tokenizer is not None
        return GgufTemplate(
            source, bos=tokenizer.special_piece("bos"), eos=tokenizer.special_piece("eos")
        )
    raise TemplateError(f"Unknown TEMPLATE {name!r}; choose one of: {', '.join(TEMPLATE_NAMES)}.")
