"""A reply is tied to the chat messages that show it while it is still being written, so a
reply cut short by a kill -9 still points at what the user saw."""

from __future__ import annotations

from pathlib import Path

from bot_e2e import OWNER, instrument, running_bot

from bot.core.chat import CHECKPOINT_EVERY
from models.runtime.chat_model import ChatModel

GROUP = -100888


async def test_a_reply_being_written_is_linked_to_its_message(
    chat_model: ChatModel, tmp_path: Path
) -> None:
    instrument(chat_model, seconds_per_token=0.2)  # about 13 s for the whole reply
    async with running_bot(chat_model, tmp_path) as bot:
        bot.tg.push_group_message(OWNER, GROUP, "расскажи сказку", mention=True)
        [shown] = await bot.wait(lambda: bot.tg.sent_messages(GROUP))

        async def checkpointed() -> bool:
            replies = [r for r in await bot.history(OWNER, GROUP) if r.role == "bot"]
            return bool(replies) and replies[0].text != ""

        deadline = CHECKPOINT_EVERY * 4
        await bot.wait_async(checkpointed, within=deadline)
        [reply] = [r for r in await bot.history(OWNER, GROUP) if r.role == "bot"]
        assert reply.status == "pending", "still being written"
        assert reply.telegram_message_ids == (shown.message_id,)
