"""The Telegram front end: app, handlers, middlewares, access, texts and streamed replies."""
