"""Session start that carries a persona over from the client.

Clients (the web chat page, a Slack bridge, any REST caller) may send session metadata such as
``{"persona": "I am a nurse working night shifts"}``; it is stored in the ``persona`` slot, which the
engine receives with every NLG request (persona-conditioned generation). Slots of the previous
session are carried over as ``session_config`` asks; the default ``action_listen`` follows.
"""

from __future__ import annotations

from typing import Any, Dict, List, Text

from rasa_sdk import Action, Tracker
from rasa_sdk.events import ActionExecuted, EventType, SessionStarted, SlotSet
from rasa_sdk.executor import CollectingDispatcher

MAX_PERSONA_CHARS = 500


def persona_from_metadata(metadata: Dict[Text, Any]) -> Text | None:
    value = (metadata or {}).get("persona")
    if not isinstance(value, str) or not value.strip():
        return None
    return " ".join(value.split())[:MAX_PERSONA_CHARS]


class ActionSessionStart(Action):
    def name(self) -> Text:
        return "action_session_start"

    async def run(self, dispatcher: CollectingDispatcher, tracker: Tracker, domain: Dict[Text, Any]) -> List[EventType]:
        events: List[EventType] = [SessionStarted()]
        carry_over = (domain.get("session_config") or {}).get("carry_over_slots_to_new_session", True)
        if carry_over:
            events.extend(SlotSet(k, v) for k, v in tracker.current_slot_values().items() if v is not None)
        persona = persona_from_metadata(tracker.get_slot("session_started_metadata") or {})
        if persona:
            events.append(SlotSet("persona", persona))
        events.append(ActionExecuted("action_listen"))
        return events
