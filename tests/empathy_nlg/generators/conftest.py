"""Fixtures of the generator tests."""

from __future__ import annotations

import pytest


@pytest.fixture(scope="session")
def encoder():
    """The real (frozen) MiniLM the trained generators use, loaded once."""
    from empathy_nlg.perception.encoder import SentenceEncoder

    return SentenceEncoder(device="cpu")
