from __future__ import annotations

from pathlib import Path

import pytest
from tiny_model import build_tiny_gguf

from models.errors import TemplateError, WindowError
from models.prompt.templates import ChatMessage, get_template
from models.prompt.tokenizer import LlamaTokenizer
from models.prompt.window import Window

SYSTEM = "Ты — Сайга, русскоязычный автоматический ассистент."
RESERVE = 64


def history(turns: int) -> list[ChatMessage]:
    messages: list[ChatMessage] = []
    for i in range(turns):
        messages.append(ChatMessage("user", f"Вопрос номер {i}: как приготовить борщ?"))
        messages.append(ChatMessage("bot", f"Ответ номер {i}: нужны свёкла и капуста."))
    messages.append(ChatMessage("user", "Спасибо! А что дальше?"))
    return messages


def window(tokenizer: LlamaTokenizer, n_ctx: int) -> Window:
    return Window(get_template("gigasaiga"), tokenizer, n_ctx=n_ctx, reserve=RESERVE)


def full_prompt(tokenizer: LlamaTokenizer, messages: list[ChatMessage]) -> list[int]:
    return get_template("gigasaiga").encode([ChatMessage("system", SYSTEM), *messages], tokenizer)


def test_everything_fits(tokenizer: LlamaTokenizer) -> None:
    messages = history(3)
    result = window(tokenizer, 2048).fit(SYSTEM, messages)
    assert result.tokens == full_prompt(tokenizer, messages)
    assert result.dropped_turns == 0
    assert result.messages == messages
    assert result.max_new_tokens == RESERVE


def test_exact_fit_and_one_token_over(tokenizer: LlamaTokenizer) -> None:
    messages = history(4)
    needed = len(full_prompt(tokenizer, messages))
    exact = window(tokenizer, needed + RESERVE).fit(SYSTEM, messages)
    assert exact.dropped_turns == 0
    assert exact.n_prompt == needed
    assert exact.n_prompt + RESERVE == exact.n_ctx

    over = window(tokenizer, needed + RESERVE - 1).fit(SYSTEM, messages)
    assert over.dropped_turns == 1
    assert over.dropped_messages == 2
    assert over.messages == messages[2:]
    assert over.tokens == full_prompt(tokenizer, messages[2:])
    assert over.n_prompt <= over.budget


def test_drops_oldest_whole_turns_and_keeps_newest(tokenizer: LlamaTokenizer) -> None:
    messages = history(40)
    result = window(tokenizer, 512).fit(SYSTEM, messages)
    assert 0 < result.dropped_turns < 40
    assert result.n_prompt <= 512 - RESERVE
    assert result.messages[0].role == "user"
    assert result.messages[-1] == messages[-1]
    assert result.messages == messages[2 * result.dropped_turns :]
    # Keeping one more turn would not have fitted.
    one_more = messages[2 * (result.dropped_turns - 1) :]
    assert len(full_prompt(tokenizer, one_more)) > 512 - RESERVE


def test_bot_message_without_user_is_never_kept(tokenizer: LlamaTokenizer) -> None:
    messages = [ChatMessage("bot", "Я начал первым."), *history(1)]
    result = window(tokenizer, 2048).fit(SYSTEM, messages)
    assert result.messages[0].role == "user"
    assert result.dropped_messages == 1


def test_giant_last_message_keeps_its_end(tokenizer: LlamaTokenizer) -> None:
    giant = "начало " + "очень длинное сообщение " * 2000 + "КОНЕЦ СООБЩЕНИЯ"
    messages = [*history(2)[:-1], ChatMessage("user", giant)]
    result = window(tokenizer, 512).fit(SYSTEM, messages)
    assert result.truncated_last
    assert result.dropped_messages == 4
    assert result.n_prompt <= 512 - RESERVE
    assert result.n_prompt >= 512 - RESERVE - 8  # the room is used, not wasted
    kept = result.messages[-1].content
    assert giant.endswith(kept)
    assert kept.endswith("КОНЕЦ СООБЩЕНИЯ")
    assert "начало" not in kept
    assert result.tokens == full_prompt(tokenizer, [ChatMessage("user", kept)])


def test_giant_system_prompt_is_a_configuration_error(tokenizer: LlamaTokenizer) -> None:
    giant_system = "Ты очень подробный ассистент. " * 400
    with pytest.raises(WindowError, match=r"system prompt takes \d+ tokens"):
        window(tokenizer, 512).fit(giant_system, history(1))


def test_reserve_must_leave_room(tokenizer: LlamaTokenizer) -> None:
    with pytest.raises(WindowError, match="MAX_NEW_TOKENS"):
        Window(get_template("gigasaiga"), tokenizer, n_ctx=512, reserve=512)


def test_newest_message_must_be_the_users(tokenizer: LlamaTokenizer) -> None:
    with pytest.raises(ValueError, match="newest message"):
        window(tokenizer, 2048).fit(SYSTEM, history(1)[:-1])


# The low watermark. The tests above use the plain window (low_watermark=1), whose behaviour
# the watermark must not change; these drive a growing conversation turn by turn.


def grow(tokenizer: LlamaTokenizer, watermark: float, turns: int = 40) -> list[list[int]]:
    """The prompt of every turn of one conversation, as the bot would build them."""
    slider = Window(
        get_template("gigasaiga"), tokenizer, n_ctx=512, reserve=RESERVE, low_watermark=watermark
    )
    messages: list[ChatMessage] = []
    prompts = []
    for i in range(turns):
        question = f"Вопрос номер {i}: как приготовить борщ?" * (1 + i % 3)
        messages.append(ChatMessage("user", question))
        result = slider.fit(SYSTEM, messages)
        assert result.n_prompt <= slider.budget
        assert result.messages[-1] == messages[-1]
        prompts.append(result.tokens)
        messages.append(ChatMessage("bot", f"Ответ номер {i}: нужны свёкла и капуста."))
    return prompts


def continues(previous: list[int], current: list[int]) -> bool:
    # The previous prompt minus its closing `<s>bot` is where the kept state ends.
    return current[: len(previous) - 2] == previous[:-2]


def test_watermark_keeps_the_beginning_for_several_turns(tokenizer: LlamaTokenizer) -> None:
    plain = grow(tokenizer, 1.0)
    stepped = grow(tokenizer, 0.5)
    budget = 512 - RESERVE
    plain_slides = [i for i in range(1, 40) if not continues(plain[i - 1], plain[i])]
    slides = [i for i in range(1, 40) if not continues(stepped[i - 1], stepped[i])]
    # The plain window cuts a turn almost every time once full; the watermark seldom does.
    assert len(plain_slides) > 20
    assert 0 < len(slides) <= len(plain_slides) // 3
    for i in slides:
        # A slide drops the prompt down to the watermark.
        assert len(stepped[i]) <= budget // 2
    # Between slides each prompt extends the previous one: the kept state covers it.
    assert all(continues(stepped[i - 1], stepped[i]) for i in range(1, 40) if i not in slides)


def test_watermark_window_depends_only_on_the_history(tokenizer: LlamaTokenizer) -> None:
    # No hidden state: building the same history again (a restart) gives the same prompts.
    assert grow(tokenizer, 0.5, turns=25) == grow(tokenizer, 0.5, turns=25)
    assert grow(tokenizer, 0.7, turns=25) != grow(tokenizer, 0.5, turns=25)


def test_watermark_is_a_fraction(tokenizer: LlamaTokenizer) -> None:
    for bad in (0.0, -0.5, 1.5):
        with pytest.raises(WindowError, match="WINDOW_LOW_WATERMARK"):
            Window(get_template("gigasaiga"), tokenizer, n_ctx=512, reserve=64, low_watermark=bad)


# Mistral, Llama 2, Gemma and others refuse, through `raise_exception`, any conversation that
# does not alternate user and bot starting with the user.
STRICT_JINJA = (
    "{{ bos_token }}{% for message in messages %}"
    "{% if (message['role'] == 'user') != (loop.index0 % 2 == 0) %}"
    "{{ raise_exception('Conversation roles must alternate user/assistant') }}{% endif %}"
    "{% if message['role'] == 'user' %}{{ '[INST] ' + message['content'] + ' [/INST]' }}"
    "{% else %}{{ message['content'] + eos_token }}{% endif %}{% endfor %}"
)


def test_watermark_works_with_a_gguf_template_that_insists_on_alternation(
    tmp_path: Path,
) -> None:
    tokenizer = LlamaTokenizer.from_file(
        build_tiny_gguf(tmp_path / "strict.gguf", chat_template=STRICT_JINJA)
    )
    template = get_template("gguf", tokenizer)
    messages = history(40)
    plain = Window(template, tokenizer, n_ctx=512, reserve=RESERVE).fit(None, messages)
    stepped = Window(template, tokenizer, n_ctx=512, reserve=RESERVE, low_watermark=0.5)
    result = stepped.fit(None, messages)
    assert result.messages[-1] == messages[-1]
    assert plain.dropped_turns <= result.dropped_turns < 40
    assert result.n_prompt <= 512 - RESERVE
    assert result.tokens == template.encode(result.messages, tokenizer)
    # The template's own refusal reaches the operator as a sentence, not a Jinja traceback.
    with pytest.raises(TemplateError, match="must alternate"):
        template.encode([ChatMessage("bot", "Я первый."), *messages], tokenizer)


class CountingTokenizer(LlamaTokenizer):
    """The real tokenizer, counting the characters it is asked to encode."""

    characters = 0

    def encode(self, text: str, *, special: bool = False) -> list[int]:
        self.characters += len(text)
        return super().encode(text, special=special)


def test_a_long_history_costs_what_is_kept_not_its_whole_length(
    tokenizer: LlamaTokenizer, tiny_gguf: Path
) -> None:
    # The bot builds a prompt on its event loop for every message of a conversation that may
    # have run for months: the work must follow the window, not the history.
    counting = CountingTokenizer.from_file(tiny_gguf)
    messages = history(2000)
    result = Window(get_template("gigasaiga"), counting, n_ctx=512, reserve=RESERVE).fit(
        SYSTEM, messages
    )
    assert result.tokens == full_prompt(tokenizer, result.messages)
    kept = sum(len(m.content) for m in result.messages)
    whole = sum(len(m.content) for m in messages)
    assert whole > 200 * kept
    assert counting.characters < 30 * kept


def test_lone_surrogates_in_any_message_fit_like_replacement_marks(
    tokenizer: LlamaTokenizer,
) -> None:
    """The storage accepts lone UTF-16 surrogates, so the window (its turn-length memory hashes
    each turn's text) must too, on every path: sliding, dropping turns, cutting the newest."""

    def replaced(messages: list[ChatMessage]) -> list[ChatMessage]:
        return [ChatMessage(m.role, m.content.replace("\ud800", "\ufffd")) for m in messages]

    messages = history(30)
    messages[0] = ChatMessage("user", "Первый \ud800 вопрос")
    messages[1] = ChatMessage("bot", "Ответ \ud800")
    messages[-1] = ChatMessage("user", "Последний \ud800 вопрос")
    for watermark in (0.5, 1.0):
        slider = Window(
            get_template("gigasaiga"),
            tokenizer,
            n_ctx=512,
            reserve=RESERVE,
            low_watermark=watermark,
        )
        result = slider.fit(SYSTEM, messages)
        assert result.messages[-1] == messages[-1]  # the text itself is kept as stored
        assert result.tokens == slider.fit(SYSTEM, replaced(messages)).tokens
    giant = [ChatMessage("user", "Длинно \ud800 " * 400)]
    cut = window(tokenizer, 256).fit(SYSTEM, giant)
    assert cut.truncated_last and "\ud800" in cut.messages[0].content
