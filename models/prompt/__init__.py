"""Prompt building: chat templates at the token level, the tokenizer, and the sliding window."""
