"""The empathy engine: perception, knowledge, generators and conversation state behind an HTTP API."""

__version__ = "0.1.0"
