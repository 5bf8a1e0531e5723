"""The chat template embedded in a GGUF file (TEMPLATE=gguf), rendered with Jinja."""

from __future__ import annotations

import re
import uuid
from collections.abc import Sequence

import jinja2
from jinja2.sandbox import ImmutableSandboxedEnvironment

from models.errors import TemplateError
from models.prompt.chat_template import OPENAI_ROLES, ChatMessage, ChatTemplate
from models.prompt.segments import Markup, Segment, Text
from models.prompt.tokenizer import Tokenizer


class GgufTemplate(ChatTemplate):
    """The Jinja chat template embedded in the GGUF file.

    The template is rendered with unique markers in place of the contents; the markers then
    split the text into template parts (special tokens parsed) and contents (never parsed).
    """

    name = "gguf"

    def __init__(self, source: str, *, bos: str = "", eos: str = "") -> None:
        env = ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True)
        # Hugging Face templates call this to refuse conversations they cannot format.
        env.globals["raise_exception"] = _raise_template_error
        try:
            self._template = env.from_string(source)
        except jinja2.TemplateError as exc:
            raise TemplateError(
                f"The model file's chat template is not valid Jinja ({exc}); use another TEMPLATE."
            ) from exc
        self._bos, self._eos = bos, eos
        self.stop_pieces = (eos,) if eos else ()

    def segments(
        self, messages: Sequence[ChatMessage], *, add_generation_prompt: bool = True
    ) -> list[Segment]:
        markers = {f"\x00{uuid.uuid4().hex}\x00": m.content.strip() for m in messages}
        try:
            rendered = self._template.render(
                messages=[
                    {"role": OPENAI_ROLES[m.role], "content": marker}
                    for m, marker in zip(messages, markers, strict=True)
                ],
                add_generation_prompt=add_generation_prompt,
                bos_token=self._bos,
                eos_token=self._eos,
            )
        except jinja2.TemplateError as exc:
            raise TemplateError(
                f"The model file's chat template failed ({exc}); use another TEMPLATE."
            ) from exc
        # Templates may move a message (Mistral's puts the system prompt into the newest user
        # message): take the contents in the order they appear.
        if not markers:
            return [Markup(rendered)]
        found = re.compile("(" + "|".join(map(re.escape, markers)) + ")")
        parts = found.split(rendered)
        missing = [
            m.role for m, marker in zip(messages, markers, strict=True) if marker not in parts[1::2]
        ]
        if any(role != "system" for role in missing):
            raise TemplateError("The GGUF chat template dropped a message; use another TEMPLATE.")
        return [Text(markers[part]) if i % 2 else Markup(part) for i, part in enumerate(parts)]

    def stop_token_ids(self, tokenizer: Tokenizer) -> set[int]:
        eos = {tokenizer.token_id(self._eos)} if self._eos else set()
        return eos | tokenizer.eog_ids()


def _raise_template_error(message: str) -> None:
    raise TemplateError(f"The model file's chat template refused the conversation: {message}")
