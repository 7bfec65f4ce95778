"""EngineNaturalLanguageGenerator: Rasa's NLG callback to the engine, never a silent turn.

Configure in ``endpoints.yml``::

    nlg:
      type: agent.nlg.EngineNaturalLanguageGenerator
      url: http://127.0.0.1:5056/nlg
      timeout: 30          # seconds; a CPU reply takes a few
      token: ...           # optional, the engine's token (default: $EMPATHY_NLG_TOKEN, which
                           # `make serve` / `make chat` set from var/engine.token)

It posts Rasa's own NLG request (same body as the built-in ``callback`` type), with its timeout in
the ``X-Request-Timeout`` header: the engine drops (504, nothing stored) a request this side has
stopped waiting for, so the engine's state never holds a reply the user did not see. When the engine is
down, slow, refuses the request or answers with no text, it logs a warning and renders the
response from the domain instead (Rasa itself would send nothing). Scripted crisis responses
(``utter_crisis_*``) are only ever accepted verbatim from the domain. The engine's ``custom``
details (emotion, causes, CM, generator, latency) are moved to the ``empathy`` key, which Rasa
keeps in the bot event's metadata (and so in SQL) instead of sending it to the user as JSON.
"""

from __future__ import annotations

import logging
import os
from typing import Any, Dict, Optional, Text

import aiohttp
from rasa.core.nlg.callback import CallbackNaturalLanguageGenerator, nlg_request_format
from rasa.core.nlg.response import TemplatedNaturalLanguageGenerator
from rasa.shared.core.domain import Domain
from rasa.shared.core.trackers import DialogueStateTracker
from rasa.utils.endpoints import EndpointConfig

log = logging.getLogger(__name__)

CRISIS_PREFIX = "utter_crisis_"
#: the engine's name for it (empathy_nlg.api.schemas.TIMEOUT_HEADER; this package never imports the engine)
TIMEOUT_HEADER = "X-Request-Timeout"


class EngineNaturalLanguageGenerator(CallbackNaturalLanguageGenerator):
    def __init__(self, endpoint_config: EndpointConfig, domain: Optional[Domain] = None) -> None:
        token = os.environ.get("EMPATHY_NLG_TOKEN")
        if not endpoint_config.token and token:
            # sent as a header (the engine also takes Rasa's ?token=, which ends up in URLs and logs)
            endpoint_config.headers = {**(endpoint_config.headers or {}), "Authorization": f"Bearer {token}"}
        super().__init__(endpoint_config=endpoint_config)
        domain = domain or Domain.empty()
        self.templated = TemplatedNaturalLanguageGenerator(domain.responses)
        self.responses = domain.responses
        self.timeout = float(endpoint_config.kwargs.pop("timeout", 30))
        self.forward_custom = bool(endpoint_config.kwargs.pop("forward_custom", False))

    async def generate(
        self,
        utter_action: Text,
        tracker: DialogueStateTracker,
        output_channel: Text,
        **kwargs: Any,
    ) -> Optional[Dict[Text, Any]]:
        # Rasa creates the NLG before the model (and so the domain) is loaded, and refreshes only
        # its own templated NLG afterwards; but it hands the domain's responses to every call.
        domain_responses = kwargs.pop("domain_responses", None)
        if domain_responses:
            self.responses = domain_responses
            self.templated.responses = domain_responses
        reply = await self._from_engine(utter_action, tracker, output_channel, {**kwargs, "domain_responses": domain_responses})
        if reply is not None:
            return reply
        fallback = await self.templated.generate(utter_action, tracker, output_channel, **kwargs)
        if fallback is not None:
            fallback["empathy"] = {"generator": "agent-fallback", "response": utter_action}
        return fallback

    async def _from_engine(
        self, utter_action: Text, tracker: DialogueStateTracker, output_channel: Text, kwargs: Dict[Text, Any]
    ) -> Optional[Dict[Text, Any]]:
        domain_responses = kwargs.pop("domain_responses", None)
        kwargs["response_id"] = self.fetch_response_id(utter_action, tracker, output_channel, domain_responses)
        body = nlg_request_format(utter_action, tracker, output_channel, **kwargs)
        try:
            response = await self.nlg_endpoint.request(
                method="post", json=body, timeout=aiohttp.ClientTimeout(total=self.timeout),
                headers={TIMEOUT_HEADER: f"{self.timeout:g}"},
            )
            if not isinstance(response, dict) or not self.validate_response(response):
                # the answer's shape, never its text (logs carry no conversation content)
                shape = sorted(response)[:8] if isinstance(response, dict) else type(response).__name__
                raise ValueError(f"unexpected NLG answer ({shape})")
        except Exception as exc:  # any failure: answer from the domain, never stay silent
            log.warning(
                "empathy engine NLG failed for %s (%s: %s); falling back to the domain text", utter_action, type(exc).__name__, exc
            )
            return None
        text = (response.get("text") or "").strip()
        if not text and not any(response.get(k) for k in ("buttons", "image", "elements", "attachment")):
            log.warning("empathy engine answered %s with no text; falling back to the domain text", utter_action)
            return None
        if utter_action.startswith(CRISIS_PREFIX):
            scripted = {v.get("text") for v in self.responses.get(utter_action, [])}
            if text not in scripted:
                log.warning("engine altered scripted response %s; using the domain text", utter_action)
                return None
        custom = response.pop("custom", None)
        if self.forward_custom and custom is not None:
            response["custom"] = custom
        elif custom is not None:
            response["empathy"] = custom
        return {k: v for k, v in response.items() if v is not None}
