from __future__ import annotations

import asyncio

from rasa.shared.core.domain import Domain
from rasa.shared.core.events import UserUttered
from rasa.shared.core.trackers import DialogueStateTracker
from rasa.utils.endpoints import EndpointConfig

from agent.nlg import EngineNaturalLanguageGenerator

DOMAIN = Domain.from_yaml(
    """
version: "3.1"
responses:
  utter_empathize:
    - text: "That sounds hard. Tell me more?"
  utter_crisis_support:
    - text: "You deserve support right now."
"""
)


def nlg(url, **kwargs):
    return EngineNaturalLanguageGenerator(EndpointConfig(url=url + "/nlg", type="agent.nlg.EngineNaturalLanguageGenerator", **kwargs), DOMAIN)


def tracker():
    return DialogueStateTracker.from_events("bob", [UserUttered("my day was awful")])


def generate(gen, response="utter_empathize"):
    return asyncio.run(gen.generate(response, tracker(), "collector", domain_responses=DOMAIN.responses))


def test_engine_reply_is_used_and_custom_kept_out_of_the_channel(fake_engine):
    fake_engine.handler = lambda path, body: (200, {"text": "I'm sorry your day was awful.", "custom": {"generator": "prompted"}})
    out = generate(nlg(fake_engine.url))
    assert out["text"] == "I'm sorry your day was awful."
    assert "custom" not in out and out["empathy"] == {"generator": "prompted"}
    sent = fake_engine.requests[0]["body"]
    assert sent["response"] == "utter_empathize" and sent["tracker"]["sender_id"] == "bob"
    assert sent["channel"] == {"name": "collector"} and "arguments" in sent and "id" in sent


def test_the_nlg_timeout_is_sent_so_the_engine_drops_what_comes_too_late(fake_engine):
    """X-Request-Timeout: the engine answers 504 and stores nothing once this side stops waiting."""
    fake_engine.handler = lambda path, body: (200, {"text": "ok"})
    generate(nlg(fake_engine.url))
    assert fake_engine.requests[-1]["headers"].get("X-Request-Timeout") == "30"
    generate(nlg(fake_engine.url, timeout=7.5))
    assert fake_engine.requests[-1]["headers"].get("X-Request-Timeout") == "7.5"
    fake_engine.handler = lambda path, body: (504, {"error": "the client's deadline passed; nothing was stored"})
    out = generate(nlg(fake_engine.url))
    assert out["text"] == "That sounds hard. Tell me more?" and out["empathy"]["generator"] == "agent-fallback"


def test_forward_custom_when_asked(fake_engine):
    fake_engine.handler = lambda path, body: (200, {"text": "ok", "custom": {"a": 1}})
    assert generate(nlg(fake_engine.url, forward_custom=True))["custom"] == {"a": 1}


def test_engine_down_falls_back_to_domain_text():
    out = generate(nlg("http://127.0.0.1:9", timeout=1))
    assert out["text"] == "That sounds hard. Tell me more?"
    assert out["empathy"]["generator"] == "agent-fallback"


def test_fallback_uses_the_domain_rasa_passes_at_call_time():
    """`rasa run` creates the NLG with an empty domain (before loading the model)."""
    gen = EngineNaturalLanguageGenerator(EndpointConfig(url="http://127.0.0.1:9/nlg", timeout=1), None)
    out = asyncio.run(gen.generate("utter_empathize", tracker(), "collector", domain_responses=DOMAIN.responses))
    assert out["text"] == "That sounds hard. Tell me more?"


def test_crisis_scripts_are_accepted_with_a_late_domain(fake_engine):
    gen = EngineNaturalLanguageGenerator(EndpointConfig(url=fake_engine.url + "/nlg"), None)
    fake_engine.handler = lambda path, body: (200, {"text": "You deserve support right now.", "custom": {"generator": "template"}})
    out = asyncio.run(gen.generate("utter_crisis_support", tracker(), "collector", domain_responses=DOMAIN.responses))
    assert out["text"] == "You deserve support right now." and out["empathy"]["generator"] == "template"


def test_engine_error_or_empty_text_falls_back(fake_engine):
    fake_engine.handler = lambda path, body: (500, {"error": "boom"})
    assert generate(nlg(fake_engine.url))["text"] == "That sounds hard. Tell me more?"
    fake_engine.handler = lambda path, body: (200, {"text": "   "})
    assert generate(nlg(fake_engine.url))["text"] == "That sounds hard. Tell me more?"


def test_slow_engine_falls_back_after_timeout(fake_engine):
    import time

    def slow(path, body):
        time.sleep(2)
        return 200, {"text": "too late"}

    fake_engine.handler = slow
    assert generate(nlg(fake_engine.url, timeout=0.5))["text"] == "That sounds hard. Tell me more?"


def test_crisis_scripts_cannot_be_altered_by_the_engine(fake_engine):
    fake_engine.handler = lambda path, body: (200, {"text": "a generated crisis reply"})
    assert generate(nlg(fake_engine.url), "utter_crisis_support")["text"] == "You deserve support right now."
    fake_engine.handler = lambda path, body: (200, {"text": "You deserve support right now.", "custom": {}})
    assert generate(nlg(fake_engine.url), "utter_crisis_support")["text"] == "You deserve support right now."


def test_the_engine_token_from_the_environment_is_sent_as_a_bearer_header(fake_engine, monkeypatch):
    """`make serve` puts the install's token in EMPATHY_NLG_TOKEN; the NLG sends it as a header (not
    in the URL); a token in endpoints.yml (Rasa's ``?token=``) is left as the user wrote it."""
    fake_engine.handler = lambda path, body: (200, {"text": "ok"})
    monkeypatch.setenv("EMPATHY_NLG_TOKEN", "s3cret")
    assert generate(nlg(fake_engine.url))["text"] == "ok"
    sent = fake_engine.requests[-1]
    assert sent["headers"].get("Authorization") == "Bearer s3cret" and "s3cret" not in sent["path"]
    generate(nlg(fake_engine.url, token="fromfile"))
    sent = fake_engine.requests[-1]
    assert "Authorization" not in sent["headers"] and sent["path"].endswith("token=fromfile")
    monkeypatch.delenv("EMPATHY_NLG_TOKEN")
    generate(nlg(fake_engine.url))
    assert "Authorization" not in fake_engine.requests[-1]["headers"]
