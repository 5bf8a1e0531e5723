"""Conversions to GGUF (PEFT LoRA adapters, old GGML files); never run in the bot process."""
