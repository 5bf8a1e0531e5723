"""What the bot says: Russian by default, English for users whose Telegram language is English."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from bot.core.system_prompt import SystemAnswer
    from bot.core.turn import Outcome


@dataclass(frozen=True)
class Texts:
    start: str
    help: str
    reset_done: str
    system_current: str  # {prompt}
    system_default: str  # {prompt}
    system_set: str
    system_reset_done: str
    system_too_long: str  # {tokens} {budget}
    stop_done: str
    stop_nothing: str
    forget_confirm: str
    forget_yes: str
    forget_no: str
    forget_done: str
    forget_cancelled: str
    forget_not_yours: str
    new_done: str
    chats_title: str
    chats_empty: str
    chats_switched: str  # {title}
    chats_deleted: str
    chats_gone: str
    chats_not_yours: str
    chats_busy: str
    regenerate_button: str
    regenerate_only_last: str
    regenerate_not_yours: str
    access_closed: str  # {user_id}
    access_closed_here: str  # in a group: the id is not for everyone's eyes
    access_closed_sent: str  # in a group, when the id went to them privately
    only_text: str
    group_hello: str
    queue_position: str  # {ahead}
    queue_your_turn: str
    engine_wait: str  # no engine server answers: the reply waits for one
    forgotten_start: str
    truncated_message: str
    reply_failed: str
    reply_stopped: str
    empty_reply: str
    edit_noted: str
    shutting_down: str
    reply_interrupted: str
    reply_cut: str  # the engine server failed in the middle of the reply
    answer_after_restart: str
    answer_elsewhere: str  # several bot processes: another one answers at once
    storage_failed: str
    status: str  # {model} {uptime} {queue} {users} {conversations} {messages} {tps}
    commands: tuple[tuple[str, str], ...]
    status_command: str  # the admins' extra menu entry
    console_help: str  # `domovoy chat`

    def notes_for(self, outcome: Outcome) -> list[str]:
        """The lines under a finished reply that say how it ended."""
        notes: list[str] = []
        if outcome.failed:
            notes.append(self.reply_failed)
        elif outcome.stopped:
            notes.append(self.reply_stopped)
        elif outcome.interrupted:
            notes.append(self.reply_interrupted)
        elif outcome.cut:
            notes.append(self.reply_cut)
        elif outcome.empty:
            notes.append(self.empty_reply)
        if outcome.truncated:
            notes.append(self.truncated_message)
        if outcome.start_forgotten:
            notes.append(self.forgotten_start)
        return notes

    def system_answer(self, answer: SystemAnswer) -> str:
        wording = {
            "current": self.system_current,
            "default": self.system_default,
            "reset": self.system_reset_done,
            "too_long": self.system_too_long,
            "set": self.system_set,
        }[answer.kind]
        return wording.format(prompt=answer.prompt, tokens=answer.tokens, budget=answer.budget)


RU = Texts(
    start=(
        "Привет! Я Домовой — ассистент, который работает на домашнем сервере на локальной "
        "языковой модели. Просто напишите мне сообщение, и я отвечу; ответ появляется по мере "
        "того, как модель его пишет. /reset начинает разговор заново, /system задаёт мне роль, "
        "/stop останавливает ответ, /forget удаляет всё, что я о вас храню. /help — подробнее."
    ),
    help=(
        "Я помню наш текущий разговор и отвечаю с его учётом.\n\n"
        "/reset или /new — начать новый разговор (старый сохранится)\n"
        "/chats — ваши разговоры: продолжить или удалить\n"
        "/system — показать системную подсказку; /system текст — задать свою; "
        "/system reset — вернуть стандартную\n"
        "/stop — остановить текущий ответ (написанное сохранится)\n"
        "/forget — удалить все мои данные о вас\n\n"
        "Модель работает на процессоре, поэтому длинные ответы пишутся не спеша."
    ),
    reset_done="Начинаем новый разговор. Предыдущие сообщения я больше не учитываю.",
    new_done="Новый разговор. Прежний сохранён: /chats покажет его, к нему можно вернуться.",
    chats_title="Ваши разговоры (последние сверху). Нажмите, чтобы продолжить; 🗑 — удалить.",
    chats_empty="Пока нет сохранённых разговоров.",
    chats_switched="Продолжаем разговор «{title}».",
    chats_deleted="Разговор удалён.",
    chats_gone="Этого разговора больше нет.",
    chats_not_yours="Это список другого человека; отправьте свой /chats.",
    chats_busy="Я ещё пишу ответ в этом чате; удалить разговор можно, когда закончу.",
    regenerate_button="🔄 Другой ответ",
    regenerate_only_last="Заново можно написать только последний ответ разговора.",
    regenerate_not_yours="Другой ответ может попросить только тот, кто задал вопрос.",
    system_current="Ваша системная подсказка:\n\n{prompt}",
    system_default="Сейчас действует стандартная системная подсказка:\n\n{prompt}",
    system_set="Системная подсказка сохранена; она действует со следующего сообщения.",
    system_reset_done="Вернул стандартную системную подсказку.",
    system_too_long=(
        "Подсказка слишком длинная: вместе с сообщением она не помещается в окно модели "
        "({tokens} токенов при доступных {budget}). Сократите её."
    ),
    stop_done="Остановил. Уже написанное сохранено.",
    stop_nothing="Сейчас я ничего не пишу.",
    forget_confirm=(
        "Удалить всё, что я о вас храню: все разговоры, сообщения и настройки? Это нельзя отменить."
    ),
    forget_yes="Да, удалить",
    forget_no="Отмена",
    forget_done="Готово: все ваши данные удалены.",
    forget_cancelled="Хорошо, ничего не удаляю.",
    forget_not_yours=(
        "Эта кнопка для того, кто отправил /forget; чтобы удалить свои данные, "
        "отправьте свой /forget."
    ),
    access_closed=(
        "Доступ к этому боту закрыт. Ваш числовой id: {user_id} — "
        "владелец может добавить его в ALLOWED_USERS."
    ),
    access_closed_here=(
        "Доступ к этому боту закрыт. Напишите мне в личные сообщения, чтобы узнать, "
        "что передать владельцу."
    ),
    access_closed_sent="Доступ к этому боту закрыт; подробности я отправил вам в личные сообщения.",
    only_text="Я понимаю только текст. Напишите, пожалуйста, словами.",
    group_hello=(
        "Всем привет! В группе я отвечаю, когда меня упоминают или отвечают на моё сообщение; "
        "у каждого здесь свой разговор со мной."
    ),
    queue_position="Вы в очереди, впереди: {ahead}. Ответ начнётся, как только модель освободится.",
    queue_your_turn="Ваша очередь: модель читает разговор, ответ скоро начнётся.",
    engine_wait="Сервер модели сейчас недоступен; ответ начнётся, как только он вернётся.",
    forgotten_start="(Начало разговора не поместилось в память модели и забыто.)",
    truncated_message="(Сообщение слишком длинное: модель увидела только его конец.)",
    reply_failed="Не получилось сгенерировать ответ. Попробуйте ещё раз.",
    reply_stopped="(остановлено)",
    empty_reply="(пустой ответ)",
    edit_noted="Исправление учтено в истории разговора.",
    shutting_down="Бот перезапускается, напишите чуть позже.",
    reply_interrupted="(прервано: бот перезапускается)",
    reply_cut="(оборвано: сервер модели перестал отвечать; напишите ещё раз, чтобы продолжить)",
    answer_after_restart=(
        "Бот перезапускается. Ваше сообщение сохранено — я отвечу на него сразу после перезапуска."
    ),
    answer_elsewhere="Ваше сообщение сохранено — ответ придёт через несколько секунд.",
    storage_failed=(
        "Не получилось сохранить сообщение: у сервера проблема с хранилищем. "
        "Попробуйте чуть позже — ничего из уже сохранённого не потеряно."
    ),
    status=(
        "Модель: {model}\nРаботаю: {uptime}\nВ очереди: {queue}\n"
        "Пользователей: {users}, разговоров: {conversations}, сообщений: {messages}\n"
        "Скорость последних ответов: {tps} ток/с"
    ),
    commands=(
        ("start", "Приветствие и краткая справка"),
        ("help", "Как пользоваться ботом"),
        ("new", "Новый разговор, старый сохранится"),
        ("chats", "Мои разговоры: продолжить или удалить"),
        ("reset", "Начать новый разговор"),
        ("system", "Показать или задать системную подсказку"),
        ("stop", "Остановить текущий ответ"),
        ("forget", "Удалить все мои данные"),
    ),
    status_command="Состояние бота: очередь, скорость, статистика",
    console_help=(
        "Пишите сообщения модели; ответ печатается по мере генерации.\n"
        "/reset — новый разговор; /system [текст|reset] — системная подсказка; "
        "/stop или Ctrl-C — остановить ответ; /quit или Ctrl-D — выйти."
    ),
)

EN = Texts(
    start=(
        "Hi! I am Domovoy, an assistant running on a home server with a local language model. "
        "Just write me a message and I will answer; the reply appears as the model writes it. "
        "/reset starts a new conversation, /system gives me a role, /stop stops a reply, "
        "/forget deletes everything I keep about you. /help tells more."
    ),
    help=(
        "I remember our current conversation and answer with it in mind.\n\n"
        "/reset or /new — start a new conversation (the old one is kept)\n"
        "/chats — your conversations: continue or delete one\n"
        "/system — show the system prompt; /system text — set your own; "
        "/system reset — back to the default\n"
        "/stop — stop the current reply (what was written is kept)\n"
        "/forget — delete all my data about you\n\n"
        "The model runs on a CPU, so long replies take their time."
    ),
    reset_done="Starting a new conversation. I no longer take the previous messages into account.",
    new_done="New conversation. The previous one is kept: /chats lists it to go back to.",
    chats_title="Your conversations, latest first. Tap one to continue it; 🗑 deletes it.",
    chats_empty="No saved conversations yet.",
    chats_switched="Continuing the conversation “{title}”.",
    chats_deleted="Conversation deleted.",
    chats_gone="That conversation no longer exists.",
    chats_not_yours="This is someone else's list; send your own /chats.",
    chats_busy="I am still writing a reply in this chat; delete it once I am done.",
    regenerate_button="🔄 Another answer",
    regenerate_only_last="Only the last reply of a conversation can be written again.",
    regenerate_not_yours="Only the person who asked can ask for another answer.",
    system_current="Your system prompt:\n\n{prompt}",
    system_default="The default system prompt is in use:\n\n{prompt}",
    system_set="System prompt saved; it applies from your next message.",
    system_reset_done="Restored the default system prompt.",
    system_too_long=(
        "That prompt is too long: together with a message it does not fit the model's window "
        "({tokens} tokens of {budget} available). Please shorten it."
    ),
    stop_done="Stopped. What was written so far is kept.",
    stop_nothing="I am not writing anything right now.",
    forget_confirm=(
        "Delete everything I keep about you: all conversations, messages and settings? "
        "This cannot be undone."
    ),
    forget_yes="Yes, delete",
    forget_no="Cancel",
    forget_done="Done: all your data has been deleted.",
    forget_cancelled="OK, nothing deleted.",
    forget_not_yours="This button belongs to whoever sent /forget; send your own /forget.",
    access_closed=(
        "Access to this bot is closed. Your numeric id is {user_id}; "
        "the owner can add it to ALLOWED_USERS."
    ),
    access_closed_here=(
        "Access to this bot is closed. Write to me privately to learn what to tell the owner."
    ),
    access_closed_sent="Access to this bot is closed; I have sent you the details privately.",
    only_text="I understand text only. Please write it in words.",
    group_hello=(
        "Hello everyone! In a group I answer when mentioned or replied to; "
        "each of you has a separate conversation with me here."
    ),
    queue_position=(
        "You are in the queue, ahead of you: {ahead}. The reply starts once the model is free."
    ),
    queue_your_turn="Your turn: the model is reading the conversation; the reply starts soon.",
    engine_wait="The model's server is unavailable right now; the reply starts once it is back.",
    forgotten_start=(
        "(The start of our conversation no longer fits the model's memory and is forgotten.)"
    ),
    truncated_message="(Your message was too long: the model saw only its end.)",
    reply_failed="Could not generate a reply. Please try again.",
    reply_stopped="(stopped)",
    empty_reply="(empty reply)",
    edit_noted="Your correction is taken into the conversation history.",
    shutting_down="The bot is restarting, please write again in a moment.",
    reply_interrupted="(interrupted: the bot is restarting)",
    reply_cut="(cut off: the model's server stopped answering; write again to go on)",
    answer_after_restart=(
        "The bot is restarting. Your message is saved, and I will answer it right after "
        "the restart."
    ),
    answer_elsewhere="Your message is saved; the answer will come in a few seconds.",
    storage_failed=(
        "Could not save your message: the server has a storage problem. Please try again "
        "later; nothing stored before is lost."
    ),
    status=(
        "Model: {model}\nUp: {uptime}\nQueue: {queue}\n"
        "Users: {users}, conversations: {conversations}, messages: {messages}\n"
        "Speed of the last replies: {tps} tok/s"
    ),
    commands=(
        ("start", "Greeting and a short how-to"),
        ("help", "How to use the bot"),
        ("new", "New conversation; the old one is kept"),
        ("chats", "My conversations: continue or delete"),
        ("reset", "Start a new conversation"),
        ("system", "Show or set the system prompt"),
        ("stop", "Stop the current reply"),
        ("forget", "Delete all my data"),
    ),
    status_command="Bot status: queue, speed, statistics",
    console_help=(
        "Write to the model; the reply is printed as it is generated.\n"
        "/reset — new conversation; /system [text|reset] — system prompt; "
        "/stop or Ctrl-C — stop a reply; /quit or Ctrl-D — leave."
    ),
)


def texts_for(language_code: str | None) -> Texts:
    if language_code and language_code.lower().startswith("en"):
        return EN
    return RU
