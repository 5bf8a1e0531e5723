"""Conversation storage: users, their conversations per chat, and messages.

Start-up: `engine = create_engine(url)`, `await migrate(engine)`, `sessions =
create_session_factory(engine)` (all in storage.database); per update, one session and the
repositories in storage.repositories, which return storage.records and never commit.
"""
