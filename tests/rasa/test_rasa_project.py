"""The Rasa project itself: its data validates and tests/test_stories.yml passes with `rasa test`.

Runs in the Rasa environment on the model `make setup` trained (models/assistant.tar.gz). The
engine is not running here, so the agent components degrade and the NLU classifier alone must
route every test story, crisis phrasings included: the safety net when the engine is down.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[2]
RASA = str(Path(sys.executable).with_name("rasa"))
MODEL = ROOT / "models" / "assistant.tar.gz"
ENV = {**os.environ, "RASA_TELEMETRY_ENABLED": "false", "EMPATHY_ENGINE_URL": "http://127.0.0.1:9"}


def rasa(*args: str, timeout: int = 900) -> subprocess.CompletedProcess:
    return subprocess.run([RASA, *args], cwd=ROOT, env=ENV, capture_output=True, text=True, timeout=timeout)


def test_data_validates():
    proc = rasa("data", "validate", "--fail-on-warnings", "--domain", "domain.yml", "--data", "data", "--config", "config.yml")
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]


@pytest.fixture(scope="module")
def test_results(tmp_path_factory):
    if not MODEL.is_file():
        pytest.fail("models/assistant.tar.gz is missing: run `make setup` first")
    out = tmp_path_factory.mktemp("rasa-results")
    proc = rasa("test", "--model", str(MODEL), "--stories", "tests/test_stories.yml", "--endpoints", str(out / "none.yml"), "--out", str(out))
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return out


def test_every_test_story_passes(test_results):
    failed = test_results / "failed_test_stories.yml"
    content = failed.read_text() if failed.exists() else ""
    assert "story:" not in content, content[:3000]
    stories = yaml.safe_load((ROOT / "tests" / "test_stories.yml").read_text())["stories"]
    assert len(stories) >= 10


def test_crisis_stories_route_to_the_scripted_responses():
    stories = yaml.safe_load((ROOT / "tests" / "test_stories.yml").read_text())["stories"]
    crisis = [s for s in stories if any(step.get("intent") == "crisis" for step in s["steps"])]
    assert len(crisis) >= 4
    for story in crisis:
        actions = [step.get("action") for step in story["steps"] if "action" in step]
        assert "utter_crisis_support" in actions and "utter_crisis_resources" in actions, story["story"]
