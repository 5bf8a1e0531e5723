"""Running a model: loading GGUF files, the generation engine and its state cache, the bench."""
