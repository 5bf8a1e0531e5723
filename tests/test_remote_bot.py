"""The bot on ENGINE=remote: a llama-server killed in the middle of a reply leaves a partial
reply, stored as such and the user told, and the next message is served by the other server."""

from __future__ import annotations

import asyncio
from pathlib import Path

import llama_server
from bot_e2e import OWNER, instrument, running_bot
from sampling import GREEDY
from tiny_model import TinyModelShape, build_tiny_gguf

from bot.telegram.texts import RU
from models.remote.handle import RemoteGeneration
from models.remote.loader import RemoteConfig, load_remote_model

SLOW_SHAPE = TinyModelShape(n_embd=512, n_head=8, n_layer=8, n_ff=2048)


async def test_a_server_killed_mid_reply_leaves_a_partial_reply_and_the_other_serves(
    tmp_path: Path,
) -> None:
    model_path = build_tiny_gguf(tmp_path / "slow.gguf", shape=SLOW_SHAPE)
    with llama_server.servers(model_path, count=2, n_ctx_per_slot=1024) as pair:
        model = await load_remote_model(
            RemoteConfig(
                model_path=model_path,
                urls=[s.url for s in pair],
                template="gigasaiga",
                max_new_tokens=800,
                sampling=GREEDY,
                health_interval=0.5,
                read_timeout=10.0,
            )
        )
        submitted = instrument(model)
        try:
            async with running_bot(model, tmp_path / "data") as bot:
                bot.tg.push_message(OWNER, "Расскажи сказку про кота.")
                first = await bot.wait(lambda: submitted[0] if submitted else None)
                assert isinstance(first, RemoteGeneration)
                while first.first_token_at is None:  # noqa: ASYNC110 - must act within ms
                    await asyncio.sleep(0.005)
                victim = next(s for s in pair if s.url == first.server)
                victim.kill()
                await bot.wait_reply(OWNER)
                history = await bot.history(OWNER)
                assert [r.status for r in history if r.role == "bot"] == ["partial"]
                assert (await first.result()).finish_reason == "cut"
                await bot.wait(lambda: any(RU.reply_cut in t for t in bot.tg.texts(OWNER)))

                bot.tg.push_message(OWNER, "Продолжай.")
                await bot.wait_reply(OWNER, count=2)
                second = submitted[1]
                assert second.server is not None and second.server != victim.url
                statuses = [r.status for r in await bot.history(OWNER) if r.role == "bot"]
                assert statuses == ["partial", "complete"]
        finally:
            await model.close()


async def test_with_no_server_up_the_reply_waits_the_user_is_told_once_and_nothing_is_lost(
    tmp_path: Path,
) -> None:
    model_path = build_tiny_gguf(tmp_path / "tiny.gguf")
    server = llama_server.start(model_path, n_ctx_per_slot=1024)
    model = await load_remote_model(
        RemoteConfig(
            model_path=model_path,
            urls=[server.url],
            template="gigasaiga",
            max_new_tokens=16,
            sampling=GREEDY,
            health_interval=0.2,
            wait=60.0,
        )
    )

    def told() -> int:  # the status line is shown in the reply's draft, before any word
        return sum(RU.engine_wait in (e.text or "") for e in bot.tg.transcript(OWNER))

    try:
        async with running_bot(model, tmp_path / "data") as bot:
            llama_server.stop(server)  # the only server goes down
            bot.tg.push_message(OWNER, "Ты здесь?")
            await bot.wait(lambda: told() > 0)
            history = await bot.history(OWNER)
            assert (history[0].role, history[0].text) == ("user", "Ты здесь?")
            assert [r.status for r in history if r.role == "bot"] in ([], ["pending"])
            # It comes back at the same address: the waiting reply is written, once.
            server = llama_server.start(model_path, n_ctx_per_slot=1024, port=server.port)
            await bot.wait_reply(OWNER)
            statuses = [r.status for r in await bot.history(OWNER) if r.role == "bot"]
            assert statuses == ["complete"]
            assert told() == 1
            assert all(RU.engine_wait not in text for text in bot.tg.texts(OWNER))
    finally:
        await model.close()
        llama_server.stop(server)
