"""Forget what the user told about themselves ("forget what I told you").

The engine remembers persona facts per sender in SQL (``GET/DELETE /users/{sender_id}/persona``).
This action asks it to forget them, clears the ``persona`` slot (the client's session persona, so
it is not remembered again) and confirms with ``utter_persona_forgotten`` — or, when the engine
cannot be reached, says so with ``utter_persona_forget_failed`` (nothing is claimed that did not
happen). The conversation itself (turns, replies, crisis state) is not touched.

Forgetting deletes data, so the intent alone does not decide it: the message must also name the
assistant's memory of the user (:data:`ASKS_TO_FORGET_ME`: "forget what I told you", "delete
everything you know about me", "forget all of that"). A feeling that only mentions forgetting
("I wish I could forget it", which the NLU model can read as this intent) gets the ordinary
empathetic reply (``utter_empathize``, written by the engine) and nothing is deleted.

The engine's URL and token come from ``EMPATHY_ENGINE_URL`` / ``EMPATHY_NLG_TOKEN`` (``make serve``
sets them for the action server from ``var/engine.token``), as for the agent's components.
"""

from __future__ import annotations

import logging
import re
from typing import Any, Callable, Dict, List, Optional, Text

from rasa_sdk import Action, Tracker
from rasa_sdk.events import EventType, SlotSet
from rasa_sdk.executor import CollectingDispatcher

from agent.engine_client import EngineClient, EngineUnavailable

log = logging.getLogger(__name__)

_ERASE = r"(?:forget|delete|erase|wipe|remove|clear)"
#: a request to forget the user: an erase verb addressed to the assistant, or one whose object is
#: what the user told it (about me / what I said / everything / all of that / my details)
ASKS_TO_FORGET_ME = re.compile(
    r"\b(?:you|your)\b[^.!?]{0,40}?\b" + _ERASE + r"|"
    r"^\W*(?:please\W+|actually\W+|ok\W+)*" + _ERASE + r"\b|"
    r"\b" + _ERASE + r"\b[^.!?]{0,40}?\b(?:about\s+m(?:e|yself)|(?:i|we)\s+(?:told|said|shared|mentioned)|you\s+know|"
    r"you\s+remember|everything|all\s+(?:of\s+)?(?:that|it|this|the\s+stuff)|my\s+(?:details|information|info|data))\b|"
    r"\b(?:don'?t|stop|not)\s+(?:keep\w*|remember\w*)\b[^.!?]{0,30}?\b(?:about\s+me|that|anything)\b",
    re.IGNORECASE,
)


class ActionForgetPersona(Action):
    def __init__(self, client_factory: Optional[Callable[[], Any]] = None) -> None:
        self._client_factory = client_factory or (lambda: EngineClient(timeout_s=10.0, retries=0, cooldown_s=0.0))

    def name(self) -> Text:
        return "action_forget_persona"

    async def run(self, dispatcher: CollectingDispatcher, tracker: Tracker, domain: Dict[Text, Any]) -> List[EventType]:
        text = str((tracker.latest_message or {}).get("text") or "")
        if not ASKS_TO_FORGET_ME.search(text):
            log.info("forget_persona predicted for a message that does not ask to forget the user: nothing deleted")
            dispatcher.utter_message(response="utter_empathize")
            return []
        try:
            deleted = self._client_factory().forget_persona(tracker.sender_id)
        except (EngineUnavailable, ValueError) as exc:
            log.warning("could not forget the persona of a sender: %s", exc)
            dispatcher.utter_message(response="utter_persona_forget_failed")
            return []
        log.info("forgot %d persona facts on the user's request", deleted)
        dispatcher.utter_message(response="utter_persona_forgotten")
        return [SlotSet("persona", None)]
