"""Sampling settings shared by tests that compare outputs token for token."""

from models.runtime.engine import SamplingParams

# Greedy decoding: the same prompt always gives the same reply.
GREEDY = SamplingParams(temperature=0.0, top_p=1.0, top_k=1, repeat_penalty=1.0)
