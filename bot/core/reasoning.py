"""Reasoning models (Qwen3-based ones such as T-pro) think aloud between `<think>` and
`</think>` before they answer. The thinking may be shown while it is written, but it is not
the reply: it is never stored as one, so it never goes back into later prompts."""

from __future__ import annotations

OPEN, CLOSE = "<think>", "</think>"


def split_reasoning(text: str) -> tuple[str, str]:
    """(reasoning, answer) of a reply as written so far. The reasoning comes first: either
    after `<think>`, or (when the chat template opened the block in the prompt) before a lone
    `</think>`; while the block is still open, everything written is reasoning."""
    stripped = text.lstrip()
    if stripped.startswith(OPEN):
        inside = stripped[len(OPEN) :]
        reasoning, closed, answer = inside.partition(CLOSE)
        return reasoning.strip(), answer.lstrip() if closed else ""
    before, closed, after = text.partition(CLOSE)
    if closed and OPEN not in before:
        return before.strip(), after.lstrip()
    return "", text


def answer_of(text: str) -> str:
    """What is stored and shown as the reply: the text without its reasoning."""
    return split_reasoning(text)[1]
