"""Server-sent events off an aiohttp response, with a limit on silence."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from typing import Any

import aiohttp


class StreamSilent(Exception):
    """No byte arrived for ENGINE_READ_TIMEOUT seconds."""


async def events(response: aiohttp.ClientResponse, silence: float) -> AsyncIterator[dict[str, Any]]:
    """The JSON of each `data:` line until `[DONE]` or the end of the body. Comment lines
    (llama-server's pings) count as signs of life but carry nothing. A line may be longer
    than aiohttp's readline allows (a final event can carry the whole prompt)."""
    buffer = b""
    while True:
        try:
            data = await asyncio.wait_for(response.content.readany(), silence)
        except TimeoutError as exc:
            raise StreamSilent(f"no data for {silence:g} s") from exc
        if not data:
            return
        buffer += data
        *lines, buffer = buffer.split(b"\n")
        for raw in lines:
            line = raw.strip()
            if not line.startswith(b"data:"):
                continue  # blank lines end events; ":" lines are comments
            payload = line[5:].strip()
            if payload == b"[DONE]":
                return
            event = json.loads(payload)
            if isinstance(event, dict):
                yield event
