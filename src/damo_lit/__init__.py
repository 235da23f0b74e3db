"""damo-lit: DaMO, an audio-visual video LLM for temporal reasoning, on Lightning + Hydra."""

__version__ = "0.1.0"
