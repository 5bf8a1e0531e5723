"""The Telegram-free chat core: the turn service and the console front end."""
