"""Shared fixtures of the engine tests: small, fast stand-ins for the models (unit tests only)
and a real database."""

from __future__ import annotations

import os
from pathlib import Path
from typing import List, Sequence

import pytest

from empathy_nlg.datasets import Utterance
from empathy_nlg.generators.base import GenerationRequest, GenerationResult, Generator
from empathy_nlg.perception.types import CauseUtterance, Perception
from empathy_nlg.taxonomy import EMOTIONS, polarity_of

ROOT = Path(__file__).resolve().parents[2]
POSTGRES_URL = os.environ.get("TEST_POSTGRES_URL", "postgresql+psycopg://postgres@127.0.0.1:5432/test")


def make_perception(emotion: str = "sad", crisis: bool = False, causes: Sequence[CauseUtterance] = ()) -> Perception:
    probs = {e: 0.01 for e in EMOTIONS}
    probs[emotion] = 1.0 - 0.01 * (len(EMOTIONS) - 1)
    return Perception(
        emotion=emotion,
        emotion_probs=probs,
        polarity=polarity_of(emotion),
        polarity_prob=0.9,
        causes=list(causes),
        cm={"ER": 0.8, "IP": 0.3, "EX": 0.6},
        crisis=crisis,
        crisis_score=0.99 if crisis else 0.01,
        crisis_reasons=["self-harm"] if crisis else [],
        models={"emotion": "stub"},
    )


class KeywordPerceiver:
    """Unit-test stand-in: 'kill myself' → crisis; 'promot' → proud; else sad. Records calls."""

    versions = {"emotion": "stub"}

    def __init__(self) -> None:
        self.calls: List[List[Utterance]] = []
        self.crisis_calls: List[List[Utterance]] = []

    def perceive(self, dialogue: Sequence[Utterance]) -> Perception:
        self.calls.append(list(dialogue))
        text = dialogue[-1].text.lower()
        emotion = "proud" if "promot" in text else "sad"
        cause = CauseUtterance(index=len(dialogue) - 1, text=dialogue[-1].text, score=0.9)
        return make_perception(emotion, crisis="kill myself" in text, causes=[cause])

    def crisis_check(self, dialogue: Sequence[Utterance]):
        """The detector alone (what the engine re-runs on a client's copy of perception)."""
        from empathy_nlg.perception.crisis import CrisisResult

        self.crisis_calls.append(list(dialogue))
        hit = "kill myself" in dialogue[-1].text.lower()
        return CrisisResult(crisis=hit, score=1.0 if hit else 0.0, reasons=["pattern:stub"] if hit else [])


class EchoGenerator(Generator):
    """Unit-test stand-in generator: says which emotion it was given; records requests."""

    name = "echo"
    version = "test"

    def __init__(self, reply: str | None = None) -> None:
        self.requests: List[GenerationRequest] = []
        self.reply = reply
        self.details: dict = {}

    def generate(self, requests: Sequence[GenerationRequest]) -> List[GenerationResult]:
        self.requests.extend(requests)
        return [
            GenerationResult(
                text=self.reply if self.reply is not None else f"I hear that you feel {r.perception.emotion}.",
                generator=self.name,
                version=self.version,
                details=dict(self.details),
            )
            for r in requests
        ]


@pytest.fixture
def domain_file(tmp_path: Path) -> Path:
    path = tmp_path / "domain.yml"
    path.write_text(
        """
version: "3.1"
responses:
  utter_greet:
    - text: "Hi {name}!"
  utter_empathize:
    - text: "That sounds hard. Tell me more?"
  utter_crisis_support:
    - text: "I'm really glad you told me. You deserve support right now."
  utter_crisis_resources:
    - text: "Please call 988 or your local emergency number."
  utter_channel:
    - text: "generic"
    - text: "for slack"
      channel: slack
""",
        encoding="utf-8",
    )
    return path


@pytest.fixture
def sqlite_url(tmp_path: Path) -> str:
    return f"sqlite:///{tmp_path / 'state.db'}"


def postgres_available() -> bool:
    try:
        import psycopg

        with psycopg.connect(POSTGRES_URL.replace("+psycopg", ""), connect_timeout=3):
            return True
    except Exception:
        return False


# Tiny random Llama/BART checkpoints (session-scoped fixtures) for every backbone/generator test.
from tests.empathy_nlg.tiny_models import tiny_bart, tiny_llama  # noqa: E402,F401
