"""Token-exact follow-ups: the next prompt carries the ids the model generated, not a
re-tokenization of the reply's text.

Detokenizing and tokenizing again rarely gives the same ids, and every id that differs from
the kept state makes the engine evaluate the whole reply again. So when a conversation's next
prompt is built, and the history up to the previous reply is exactly what the previous prompt
was made of, and the stored reply is the text the model produced, the prompt becomes

    previous prompt ids + generated ids + the template's tokens after the reply's text
    (end of the bot's message, the new user message, the generation prompt)

and a cached follow-up evaluates only that last part.
"""

from __future__ import annotations

import dataclasses
import hashlib
import uuid
from collections.abc import Sequence

from models.prompt.templates import ChatMessage, ChatTemplate, Text, encode_segments, merge_text
from models.prompt.tokenizer import Tokenizer
from models.prompt.window import WindowResult
from models.runtime.scheduler import Transcript


def digest(system: str | None, messages: Sequence[ChatMessage]) -> bytes:
    """Names a prompt's messages without keeping their text."""
    h = hashlib.blake2b(digest_size=16)
    # surrogatepass: a lone surrogate (the storage keeps them) must hash, not raise.
    h.update(f"{system}\0".encode("utf-8", "surrogatepass") if system is not None else b"\1")
    for message in messages:
        h.update(f"{message.role}\0{message.content.strip()}\0".encode("utf-8", "surrogatepass"))
    return h.digest()


def tail_after_reply(
    template: ChatTemplate,
    tokenizer: Tokenizer,
    system: str | None,
    messages: Sequence[ChatMessage],
) -> list[int] | None:
    """The tokens that follow the text of the bot message `messages[-2]`, or None when the
    template does not end that text at a token boundary."""
    marker = f"REPLY{uuid.uuid4().hex}"
    head = [ChatMessage("system", system)] if system else []
    marked = [*messages[:-2], ChatMessage("bot", marker), messages[-1]]
    segments = merge_text(template.segments([*head, *marked]))
    found = [i for i, s in enumerate(segments) if isinstance(s, Text) and marker in s.text]
    if len(found) != 1:
        return None
    index = found[0]
    text = segments[index]
    assert isinstance(text, Text)
    if not text.text.endswith(marker):
        return None  # the reply's text runs into template text: no clean boundary
    return encode_segments(segments[index + 1 :], tokenizer)


def splice(
    window: WindowResult,
    *,
    template: ChatTemplate,
    tokenizer: Tokenizer,
    system: str | None,
    previous: tuple[bytes, tuple[int, ...]] | None,
    transcript: Transcript | None,
) -> WindowResult:
    """`window` with the previous reply's generated ids in place of its re-tokenization,
    when that is exactly the same conversation; otherwise `window` unchanged."""
    messages = window.messages
    if previous is None or transcript is None or len(messages) < 2 or not transcript.generated:
        return window
    reply, newest = messages[-2], messages[-1]
    if reply.role != "bot" or newest.role != "user":
        return window
    if reply.content.strip() != transcript.text.strip():
        return window  # edited, or stored differently: the text is what counts
    if previous != (digest(system, messages[:-2]), transcript.prompt):
        return window  # the window slid, the system prompt changed, or another reply
    tail = tail_after_reply(template, tokenizer, system, messages)
    if tail is None:
        return window
    tokens = [*transcript.prompt, *transcript.generated, *tail]
    if len(tokens) > window.budget:
        return window
    return dataclasses.replace(window, tokens=tokens)
