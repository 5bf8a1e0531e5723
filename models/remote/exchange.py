"""One request's way through the servers: pick one, hold a slot, stream the reply.

Before the first token a failing server costs nothing but time: the request goes to the next
healthy server (or waits for one, up to ENGINE_WAIT). After tokens arrived, a failure ends the
reply as "cut" with the text so far: starting again elsewhere would show the user a different
reply under the one already shown.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import logging
import time
import uuid
from typing import TYPE_CHECKING

import aiohttp

from models.engines import SlotClaim
from models.remote.dialects import Chunk, EngineProtocolError, parse, path, request_body
from models.remote.handle import RemoteGeneration
from models.remote.servers import EngineRefused, EngineUnavailable, Server
from models.remote.sse import StreamSilent, events
from models.runtime.generation import FinishReason
from models.runtime.scheduler import Transcript, remember

if TYPE_CHECKING:
    from models.remote.engine import RemoteEngine

logger = logging.getLogger(__name__)


class ServerFailed(Exception):
    """The server did not answer, answered 5xx, went silent or dropped the stream."""


async def serve(engine: RemoteEngine, handle: RemoteGeneration) -> None:
    key = handle.key if handle.key is not None else f"anonymous:{uuid.uuid4().hex}"
    avoid: set[str] = set()
    give_up_at: float | None = None
    try:
        while True:
            server = await engine.pool.pick(
                key, avoid=avoid, wait=engine.wait, waiting=handle.waiting_for_server
            )
            if server.url in avoid:
                # Every healthy server failed this request already: not in a tight loop.
                await asyncio.sleep(min(engine.pool_interval, 1.0))
            try:
                reason = await attempt(engine, handle, server, key)
            except ServerFailed as exc:
                engine.pool.mark_down(server, exc)
                if handle.generated:
                    logger.warning("the stream from %s was cut: %s", server.url, exc)
                    finish(engine, handle, "cut")
                    return
                avoid.add(server.url)
                now = time.monotonic()
                give_up_at = give_up_at or now + engine.wait
                if now >= give_up_at:
                    raise EngineUnavailable(
                        f"The engine servers failed this request for ENGINE_WAIT: {exc}"
                    ) from exc
                continue
            finish(engine, handle, reason)
            return
    except asyncio.CancelledError:
        if not handle.cancelled:
            raise
        task = asyncio.current_task()
        if task is not None:
            task.uncancel()
        finish(engine, handle, "cancelled", started=handle.first_token_at is not None)
    except Exception as exc:
        handle.settle(None, exc)


def finish(
    engine: RemoteEngine, handle: RemoteGeneration, reason: FinishReason, started: bool = True
) -> None:
    result = handle.finish(reason, started)
    if handle.key is not None and started and handle.key not in engine.dropped:
        transcript = Transcript(tuple(handle.prompt), tuple(handle.generated), result.text)
        remember(engine.transcripts, handle.key, transcript)


async def attempt(
    engine: RemoteEngine, handle: RemoteGeneration, server: Server, key: str
) -> FinishReason:
    """Stream the reply from `server`; the finish reason, or ServerFailed before it ended."""
    handle.server = server.url
    claim: contextlib.AbstractAsyncContextManager[SlotClaim | None]
    if server.dialect == "llama-server":
        claim = engine.ledger.claim(server.url, server.slots, key)
    else:
        claim = contextlib.nullcontext(None)
    engine.queue(handle, server.url)
    try:
        async with claim as slot:
            engine.unqueue(handle)
            handle.reset_reply(engine.pieces)
            handle.admitted_at = time.perf_counter()
            handle.started.set()
            return await exchange(engine, handle, server, slot, key)
    finally:
        engine.unqueue(handle)


async def exchange(
    engine: RemoteEngine,
    handle: RemoteGeneration,
    server: Server,
    slot: SlotClaim | None,
    key: str,
) -> FinishReason:
    n_ctx = min(engine.n_ctx, server.n_ctx or engine.n_ctx)
    n_predict = min(handle.max_new_tokens, n_ctx - len(handle.prompt))
    if n_predict <= 0:
        raise EngineRefused(
            f"the prompt of {len(handle.prompt)} tokens does not fit {server.url}'s context "
            f"of {n_ctx} tokens"
        )
    # vLLM's prefix cache shares blocks only between requests with the same salt; the key
    # names users, which the engine's logs need not see.
    salt = hashlib.sha256(key.encode()).hexdigest() if handle.key is not None else None
    body = request_body(
        server, handle.prompt, n_predict, engine.sampling, slot, salt, handle.stop_ids
    )
    if handle.ignore_eos:
        body["ignore_eos"] = True
    if server.dialect == "llama-server":
        body["response_fields"] = FINAL_FIELDS
    url = f"{server.url}{path(server)}"
    try:
        async with engine.session.post(url, json=body) as response:
            try:
                await check_status(server, response)
                return await read_reply(engine, handle, server, response, n_predict)
            except BaseException:
                response.close()  # not back to the pool: the server must see it closed
                raise
    except (aiohttp.ClientError, StreamSilent, TimeoutError, ValueError) as exc:
        # ValueError: a malformed event (JSON) — the stream cannot be trusted any further.
        raise ServerFailed(f"{type(exc).__name__}: {exc}") from exc


# The final event of a llama-server stream, without the prompt and settings it also carries.
FINAL_FIELDS = ["content", "tokens", "stop", "stop_type", "tokens_predicted", "timings"]


async def check_status(server: Server, response: aiohttp.ClientResponse) -> None:
    if response.status == 200:
        return
    text = (await response.text())[:300]
    if response.status in (401, 403):
        raise EngineRefused(f"{server.url} refused ENGINE_API_KEY ({response.status})")
    if response.status >= 500 or response.status == 429:
        raise ServerFailed(f"HTTP {response.status}: {text}")
    raise EngineRefused(f"{server.url} refused the request ({response.status}): {text}")


async def read_reply(
    engine: RemoteEngine,
    handle: RemoteGeneration,
    server: Server,
    response: aiohttp.ClientResponse,
    n_predict: int,
) -> FinishReason:
    reason: FinishReason | None = None
    async for event in events(response, engine.read_timeout):
        chunk = parse(server, event)
        if chunk is None:
            continue
        if chunk.prompt_evaluated is not None:
            handle.n_prompt_evaluated = int(chunk.prompt_evaluated)
        if reason is None:
            reason = take(engine, handle, chunk, n_predict)
            if reason is not None and not ends_by_itself(engine, server, handle, reason):
                response.close()  # the server would go on: closing the stream stops it
                return reason
        if chunk.done and server.dialect == "llama-server":
            break
    if reason is not None:
        return reason
    raise ServerFailed("the stream ended before the reply did")


def ends_by_itself(
    engine: RemoteEngine, server: Server, handle: RemoteGeneration, reason: FinishReason
) -> bool:
    """The server stops at this point too, and its last event (timings) is worth reading."""
    if reason == "length":
        return True
    last = handle.last_stop
    return last is not None and last in engine.eog_ids


def take(
    engine: RemoteEngine, handle: RemoteGeneration, chunk: Chunk, n_predict: int
) -> FinishReason | None:
    """Add the chunk's ids to the reply; a finish reason once it is over."""
    ids = chunk.ids
    if chunk.n_decoded is not None and ids:
        held_back = int(chunk.n_decoded) - handle.n_seen - len(ids)
        if held_back > 0:
            ids = recover(engine, chunk, held_back) + ids
    for token in ids:
        handle.n_seen += 1
        if token in handle.stop_ids:
            handle.last_stop = token
            return "stop"
        handle.add(token)
        if len(handle.generated) >= n_predict:
            return "length"
    if chunk.done:
        return "length" if chunk.finish == "length" else "stop"
    return None


def recover(engine: RemoteEngine, chunk: Chunk, count: int) -> list[int]:
    sent = b"".join(engine.pieces.piece(t) for t in chunk.ids)
    if chunk.text.endswith(sent) and len(chunk.text) > len(sent):
        found = engine.pieces.recover(chunk.text[: len(chunk.text) - len(sent)], count)
        if found is not None:
            return found
    logger.warning("could not recover %d token ids the server held back", count)
    return []


__all__ = ["EngineProtocolError", "serve"]
