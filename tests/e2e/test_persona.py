"""Persona memory with the persona-conditioned MoEL generator, through the real stack (`rasa run`'s
REST channel, the action server, the engine serving ``persona_moel``, SQLite): a fact the user gave
in one conversation reaches the generator after Rasa restarts the conversation (``/session_start``)
for the same sender, and nothing of it reaches the generator after the user asks to be forgotten."""

from __future__ import annotations

import pytest
import yaml

from tests.e2e.conftest import ROOT, running_assistant

DOMAIN = yaml.safe_load((ROOT / "domain.yml").read_text())
FORGOTTEN = {v["text"] for v in DOMAIN["responses"]["utter_persona_forgotten"]}
FACT = "I work as a nurse"


@pytest.fixture(scope="module")
def persona_assistant(tmp_path_factory):
    with running_assistant(tmp_path_factory.mktemp("e2e-persona"), generator="persona_moel") as a:
        yield a


def last_bot(events):
    bots = [e for e in events if e["event"] == "bot"]
    assert bots, events
    return bots[-1]


def generation_of(assistant, sender):
    """The engine's ``custom`` of the latest reply, as Rasa stored it in the tracker (the bot event's
    metadata, ``empathy``: agent/nlg.py keeps it from the user)."""
    custom = (last_bot(assistant.tracker_events(sender)).get("metadata") or {}).get("empathy") or {}
    assert custom.get("generator") == "persona_moel", custom
    return custom["generation"]


def test_a_fact_survives_a_session_restart_and_is_gone_after_forget(persona_assistant):
    a, sender = persona_assistant, "e2e-persona-nurse"
    assert a.say(sender, "I work as a nurse and my shifts are twelve hours long.")
    status, body = a.engine_get(f"/users/{sender}/persona")
    assert status == 200 and FACT in [f["fact"] for f in body["facts"]], body

    a.say(sender, "/session_start")  # Rasa starts a new conversation session for the same sender
    events = a.tracker_events(sender)  # the tracker API lists every session's events
    starts = [i for i, e in enumerate(events) if e["event"] == "session_started"]
    assert len(starts) == 2, [e["event"] for e in events]  # the first session's and the restart's
    assert not any(e["event"] == "user" for e in events[starts[-1]:])  # the new session holds nothing yet

    replies = a.say(sender, "Tonight was awful, we lost a patient at the end of my shift.")
    assert replies and all((r.get("text") or "").strip() for r in replies)
    gen = generation_of(a, sender)
    assert FACT in gen["persona_sentences"], gen  # from SQL, not from the conversation
    assert gen["listener_weights"] and abs(sum(gen["listener_weights"].values()) - 1.0) < 0.02, gen

    replies = a.say(sender, "forget what I told you about me")
    assert len(replies) == 1 and replies[0].get("text") in FORGOTTEN, replies
    status, body = a.engine_get(f"/users/{sender}/persona")
    assert status == 200 and body["facts"] == [], body

    a.say(sender, "I just feel drained today.")
    assert generation_of(a, sender)["persona_sentences"] == []
    user_texts = [e["text"] for e in a.tracker_events(sender) if e["event"] == "user"]
    assert "Tonight was awful, we lost a patient at the end of my shift." in user_texts  # the conversation is kept


def test_a_different_sender_never_gets_anothers_persona(persona_assistant):
    a = persona_assistant
    a.say("e2e-persona-owner", "I have a beagle called Biscuit.")
    a.say("e2e-persona-stranger", "My week has been long and grey.")
    assert generation_of(a, "e2e-persona-stranger")["persona_sentences"] == []
    status, body = a.engine_get("/users/e2e-persona-stranger/persona")
    assert status == 200 and body["facts"] == []
