"""Model files: the registry of known models, downloads from the hub, GGUF headers."""
