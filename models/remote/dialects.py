"""The two HTTP dialects: llama-server's own /completion and the OpenAI /v1/completions that
vLLM (and llama-server) speak. Both take the prompt as token ids and stream server-sent
events; each event is read into one `Chunk`."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from models.engines import SlotClaim
from models.remote.servers import Server
from models.runtime.sampler import PENALTY_LAST_N, SamplingParams

# The local sampler's chain, in its order (models/runtime/sampler.py): the same settings give
# the same distribution on the server.
SAMPLERS = ["penalties", "top_k", "top_p", "temperature"]


@dataclass(frozen=True)
class Chunk:
    ids: list[int]  # generated token ids this event carries
    text: bytes  # the text the server sent with them (UTF-8)
    done: bool = False
    finish: str | None = None  # "stop" or "length" when the server ended the reply
    n_decoded: int | None = None  # tokens the server generated so far (llama-server)
    prompt_evaluated: int | None = None
    prompt_ms: float | None = None
    predicted_ms: float | None = None


def path(server: Server) -> str:
    return "/completion" if server.dialect == "llama-server" else "/v1/completions"


def request_body(
    server: Server,
    prompt: list[int],
    n_predict: int,
    sampling: SamplingParams,
    claim: SlotClaim | None,
    salt: str | None,
    stop_ids: frozenset[int],
) -> dict[str, Any]:
    """llama-server stops at end-of-generation tokens by itself; the template's other stop
    ids are watched by the client, which then closes the stream."""
    if server.dialect == "llama-server":
        body: dict[str, Any] = {
            "prompt": prompt,
            "n_predict": n_predict,
            "stream": True,
            "return_tokens": True,
            "samplers": SAMPLERS,
            "temperature": sampling.temperature,
            "top_k": sampling.top_k,
            "top_p": sampling.top_p,
            "min_p": 0.0,
            "repeat_penalty": sampling.repeat_penalty,
            "repeat_last_n": PENALTY_LAST_N,
            "seed": -1 if sampling.seed is None else sampling.seed & 0xFFFFFFFF,
        }
        if claim is not None:
            # Reuse the slot's cells only when they are this conversation's own.
            body["id_slot"] = claim.slot
            body["cache_prompt"] = claim.cached
        else:
            body["cache_prompt"] = False
        return body
    body = {
        "prompt": prompt,
        "max_tokens": n_predict,
        "stream": True,
        "stream_options": {"include_usage": True},
        "temperature": sampling.temperature,
        "top_k": sampling.top_k if sampling.temperature > 0 else -1,
        "top_p": sampling.top_p,
        "repetition_penalty": sampling.repeat_penalty,
        "stop_token_ids": sorted(stop_ids),
        # vLLM: the generated ids in every chunk; llama-server: the same through __verbose.
        "return_token_ids": True,
        "return_tokens": True,
        "verbose": True,
        "cache_prompt": False,
    }
    if server.model:
        body["model"] = server.model
    if sampling.seed is not None:
        body["seed"] = sampling.seed
    if salt is not None:
        body["cache_salt"] = salt  # vLLM's prefix cache: one conversation's blocks only
    return body


def parse(server: Server, event: dict[str, Any]) -> Chunk | None:
    if server.dialect == "llama-server":
        return _llama_server(event)
    return _openai(event)


def _llama_server(event: dict[str, Any]) -> Chunk:
    timings = event.get("timings") or {}
    done = bool(event.get("stop"))
    stop_type = event.get("stop_type")
    finish = None
    if done:
        finish = "length" if stop_type == "limit" else "stop"
    return Chunk(
        ids=[int(t) for t in event.get("tokens") or []],
        text=str(event.get("content") or "").encode("utf-8"),
        done=done,
        finish=finish,
        n_decoded=event.get("tokens_predicted"),
        prompt_evaluated=timings.get("prompt_n") if done else None,
        prompt_ms=timings.get("prompt_ms") if done else None,
        predicted_ms=timings.get("predicted_ms") if done else None,
    )


def _openai(event: dict[str, Any]) -> Chunk | None:
    usage = event.get("usage") or {}
    choices = event.get("choices") or []
    if not choices:
        if not usage:
            return None
        # include_usage: a last event with no choice and the token counts.
        details = usage.get("prompt_tokens_details") or {}
        prompt = int(usage.get("prompt_tokens") or 0)
        cached = details.get("cached_tokens")
        return Chunk([], b"", prompt_evaluated=None if cached is None else prompt - int(cached))
    choice = choices[0]
    ids = choice.get("token_ids")
    if ids is None:
        verbose = event.get("__verbose") or {}
        ids = verbose.get("tokens")
    if ids is None:
        raise EngineProtocolError(
            "the server sends no token ids with its completions (vLLM needs return_token_ids)"
        )
    reason = choice.get("finish_reason")
    timings = event.get("timings") or {}
    return Chunk(
        ids=[int(t) for t in ids],
        text=str(choice.get("text") or "").encode("utf-8"),
        done=reason is not None,
        finish=None if reason is None else ("length" if reason == "length" else "stop"),
        prompt_evaluated=timings.get("prompt_n"),
        prompt_ms=timings.get("prompt_ms"),
        predicted_ms=timings.get("predicted_ms"),
    )


class EngineProtocolError(Exception):
    """The server's answer is not what the dialect promises."""
