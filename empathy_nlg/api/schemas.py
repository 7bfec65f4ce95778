"""Request and response bodies of the engine's HTTP API (the documented, versioned contract).

``/nlg`` implements Rasa's NLG protocol exactly: Rasa sends ``{response, id, arguments, tracker,
channel}`` and accepts ``{text, buttons, image, elements, attachment, custom}``.
"""

from __future__ import annotations

from typing import Any, Dict, List, Literal, Optional

from pydantic import BaseModel, ConfigDict, Field, field_validator

API_VERSION = "1"
#: the request header in which a client says how many seconds it waits for ``/nlg`` (the agent's
#: NLG sends its timeout); past that the engine answers 504 and stores nothing
TIMEOUT_HEADER = "X-Request-Timeout"


class TrackerState(BaseModel):
    """The part of Rasa's tracker state the engine reads; other keys are accepted and ignored."""

    model_config = ConfigDict(extra="allow")

    sender_id: str = Field(min_length=1, max_length=255)
    events: List[Dict[str, Any]] = Field(default_factory=list)
    slots: Dict[str, Any] = Field(default_factory=dict)

    @field_validator("events")
    @classmethod
    def _utterances_are_text(cls, events: List[Dict[str, Any]]) -> List[Dict[str, Any]]:
        """User and bot events carry text (a string or null) and a string message id: anything else
        is a clear 422 naming the event, never a crash deep in the engine."""
        for i, ev in enumerate(events):
            if ev.get("event") not in ("user", "bot"):
                continue
            if ev.get("text") is not None and not isinstance(ev["text"], str):
                raise ValueError(f"events[{i}].text must be a string or null, not {type(ev['text']).__name__}")
            if ev.get("message_id") is not None and not isinstance(ev["message_id"], str):
                raise ValueError(f"events[{i}].message_id must be a string or null, not {type(ev['message_id']).__name__}")
            if ev.get("parse_data") is not None and not isinstance(ev["parse_data"], dict):
                raise ValueError(f"events[{i}].parse_data must be an object, not {type(ev['parse_data']).__name__}")
        return events


class ChannelInfo(BaseModel):
    model_config = ConfigDict(extra="allow")

    name: Optional[str] = None


class NLGRequest(BaseModel):
    model_config = ConfigDict(extra="allow")

    response: str = Field(min_length=1, max_length=255, description="name of the response, e.g. utter_empathize")
    id: Optional[str] = Field(default=None, description="response id (Rasa's response_ids), if any")
    arguments: Dict[str, Any] = Field(default_factory=dict)
    tracker: TrackerState
    channel: ChannelInfo = Field(default_factory=ChannelInfo)


class NLGResponse(BaseModel):
    model_config = ConfigDict(extra="allow")

    text: Optional[str] = None
    buttons: Optional[List[Dict[str, Any]]] = None
    image: Optional[str] = None
    elements: Optional[List[Dict[str, Any]]] = None
    attachment: Optional[Any] = None
    custom: Optional[Dict[str, Any]] = None


class HistoryTurn(BaseModel):
    role: Literal["user", "bot"]
    text: str = Field(max_length=20000)


class PerceiveRequest(BaseModel):
    text: str = Field(min_length=1, description="the user's message")
    history: List[HistoryTurn] = Field(default_factory=list, description="the conversation so far, oldest first")
    sender_id: Optional[str] = Field(default=None, max_length=255, description="persist the turn under this conversation")
    message_id: Optional[str] = Field(default=None, max_length=255)
    turn_index: Optional[int] = Field(default=None, ge=0, description="0-based index of this user turn in the conversation")


class EmotionScore(BaseModel):
    label: str
    prob: float


class CauseOut(BaseModel):
    index: int = Field(description="index into history + [text]")
    text: str
    score: float
    spans: List[List[int]] = Field(default_factory=list, description="cause words as [start, end) character offsets")


class PerceiveResponse(BaseModel):
    emotion: str
    emotion_probs: Dict[str, float]
    emotion_top_k: List[EmotionScore]
    polarity: Literal["positive", "negative"]
    polarity_prob: float
    causes: List[CauseOut]
    cm: Dict[str, float] = Field(description="P(mechanism) for ER, IP, EX")
    cm_plan: List[str]
    crisis: bool
    crisis_score: float
    crisis_reasons: List[str]
    models: Dict[str, str]
    latency_ms: float


class HealthResponse(BaseModel):
    status: Literal["ok", "loading", "error"]
    api_version: str = API_VERSION
    detail: Optional[str] = None
    models: Dict[str, Any] = Field(default_factory=dict)
    #: the /nlg queue: requests inside the engine (answered or waiting), its limit, refusals so far
    queue: Dict[str, int] = Field(default_factory=dict)


class PersonaFactOut(BaseModel):
    fact: str = Field(description="the persona sentence, e.g. 'I work as a nurse'")
    source_text: str = Field(description="the user message it came from (or the client's session persona)")
    message_id: Optional[str] = Field(default=None, description="Rasa's id of that message, when known")
    created_at: str = Field(description="when it was first stated (ISO 8601)")


class PersonaResponse(BaseModel):
    sender_id: str
    facts: List[PersonaFactOut] = Field(description="oldest first")


class PersonaForgetResponse(BaseModel):
    sender_id: str
    deleted: int = Field(description="how many persona facts were forgotten (0: none were stored)")


class ErrorResponse(BaseModel):
    error: str
    detail: Any = None
