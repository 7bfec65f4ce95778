from __future__ import annotations

import asyncio

from rasa_sdk import Tracker
from rasa_sdk.executor import CollectingDispatcher

from actions.session import ActionSessionStart, persona_from_metadata


def run(slots, metadata, carry=True):
    tracker = Tracker("u", {**slots, "session_started_metadata": metadata}, {}, [], False, None, {}, "action_listen")
    domain = {"session_config": {"carry_over_slots_to_new_session": carry}}
    return asyncio.run(ActionSessionStart().run(CollectingDispatcher(), tracker, domain))


def test_persona_from_metadata_is_set_and_slots_carried_over():
    events = run({"emotion": "sad"}, {"persona": "  I am a   nurse  "})
    names = [e["event"] for e in events]
    assert names[0] == "session_started" and names[-1] == "action"
    slot_sets = {e["name"]: e["value"] for e in events if e["event"] == "slot"}
    assert slot_sets["persona"] == "I am a nurse" and slot_sets["emotion"] == "sad"


def test_no_carry_over_and_no_persona():
    events = run({"emotion": "sad"}, {}, carry=False)
    assert [e for e in events if e["event"] == "slot"] == []


def test_persona_validation():
    assert persona_from_metadata({"persona": 42}) is None
    assert persona_from_metadata({"persona": "   "}) is None
    assert len(persona_from_metadata({"persona": "x" * 2000})) == 500
