"""The project's input channels, in-process parts (the real clients run in tests/channels)."""

from __future__ import annotations

from agent.slack_channel import SlackInput
from agent.socketio_channel import history_from_events, why_from_metadata

EMPATHY = {
    "emotion": [{"label": "sad", "prob": 0.61}, {"label": "lonely", "prob": 0.2}, {"label": "afraid", "prob": 0.1},
                {"label": "guilty", "prob": 0.05}],
    "polarity": "negative",
    "causes": [{"index": 0, "text": "my dog died", "score": 0.9}],
    "cm": ["ER", "EX"],
    "crisis": False,
    "generator": "nec",
    "response": "utter_empathize",
    "knowledge": {"xReact": ["sad"]},
    "latency_ms": 812.3,
}


def test_why_keeps_what_a_person_may_see_and_nothing_else():
    why = why_from_metadata(EMPATHY)
    assert why == {"response": "utter_empathize", "generator": "nec", "emotion": EMPATHY["emotion"][:3],
                   "polarity": "negative", "causes": ["my dog died"], "cm": ["ER", "EX"], "crisis": False}
    assert why_from_metadata(None) is None
    assert why_from_metadata("text") is None


def test_history_hides_intent_payloads_and_splits_bot_paragraphs():
    events = [
        {"event": "session_started"},
        {"event": "user", "text": "/greet"},
        {"event": "bot", "text": "Hello! How are you?", "metadata": {}},
        {"event": "user", "text": "my dog died"},
        {"event": "bot", "text": "I'm so sorry.\n\nDo you want to tell me about him?", "metadata": {"empathy": EMPATHY}},
        {"event": "action", "name": "action_listen"},
    ]
    history = history_from_events(events)
    assert [(m["role"], m["text"]) for m in history] == [
        ("bot", "Hello! How are you?"),
        ("user", "my dog died"),
        ("bot", "I'm so sorry."),
        ("bot", "Do you want to tell me about him?"),
    ]
    assert "why" not in history[2] and history[3]["why"]["causes"] == ["my dog died"]


def test_slack_is_configured_from_the_environment(monkeypatch):
    monkeypatch.setenv("SLACK_TOKEN", "xoxb-1")
    monkeypatch.setenv("SLACK_SIGNING_SECRET", "s3cret")
    monkeypatch.setenv("SLACK_CHANNEL", "C123")
    monkeypatch.setenv("SLACK_API_URL", "http://127.0.0.1:9/api/")
    channel = SlackInput.from_credentials(None)
    assert channel.configured
    assert (channel.slack_token, channel.slack_signing_secret, channel.slack_channel) == ("xoxb-1", "s3cret", "C123")
    assert str(channel.get_output_channel().client.base_url) == "http://127.0.0.1:9/api/"
    # keys in credentials.yml win over the environment
    assert SlackInput.from_credentials({"slack_token": "xoxb-2"}).slack_token == "xoxb-2"


def test_slack_without_secret_is_not_configured_and_does_not_stop_rasa(monkeypatch):
    monkeypatch.delenv("SLACK_SIGNING_SECRET", raising=False)
    monkeypatch.setenv("SLACK_TOKEN", "xoxb-1")
    channel = SlackInput.from_credentials(None)
    assert not channel.configured


def test_slack_takes_an_event_id_once():
    channel = SlackInput.from_credentials({"slack_token": "t", "slack_signing_secret": "s"})
    assert channel._take_event("Ev1") and not channel._take_event("Ev1") and channel._take_event("Ev2")
    assert channel._take_event(None) and channel._take_event(None)


# ------------------------------------------------------------------ the checked REST channel
def test_rest_bodies_are_checked_before_rasa_sees_them():
    import json as _json

    import pytest as _pytest

    from agent.rest_channel import MAX_CHARS, BadInput, parse_body

    assert parse_body(b'{"sender": "a", "message": "hi\\u0000 there\\n"}') == ("hi there\n", "a", None)
    assert parse_body(b'{"message": "hi", "metadata": {"k": 1}}') == ("hi", None, {"k": 1})
    cases = [(b"[1]", 400, "body"), (b"\xff\xfe", 400, "body"), (b"", 400, "body"), (b'{"message": 3}', 400, "message"),
             (b'{"message": ""}', 400, "message"), (b'{"message": "x", "sender": 5}', 400, "sender"),
             (b'{"message": "x", "metadata": []}', 400, "metadata"),
             (_json.dumps({"message": "x" * (MAX_CHARS + 1)}).encode(), 413, "message")]
    for raw, status, field in cases:
        with _pytest.raises(BadInput) as info:
            parse_body(raw)
        assert info.value.status == status and info.value.field == field and info.value.reply, raw


def test_a_turn_refused_because_a_store_is_away_is_a_503_asking_to_send_it_again():
    import json as _json

    from rasa.core.lock_store import LockError

    from agent.rest_channel import REPLY_FAILED, failed_turn_reply
    from agent.unavailable import REPLY_UNAVAILABLE, RETRY_AFTER_S, StoreUnavailable

    collected = [{"recipient_id": "a", "text": "I'm so sorry."}]
    for exc in (StoreUnavailable("tracker store", 20.0, "OperationalError"), LockError("Could not acquire lock")):
        # refused even when a reply was collected: the turn was not kept, so it must be sent again
        reply = failed_turn_reply(exc, "a", collected)
        assert reply.status == 503 and reply.headers["Retry-After"] == str(RETRY_AFTER_S)
        assert _json.loads(reply.body) == [{"recipient_id": "a", "text": REPLY_UNAVAILABLE, "error": "unavailable"}]
    # any other fault: the replies collected before it, else a plain apology
    assert failed_turn_reply(RuntimeError("bug"), "a", collected) is None
    reply = failed_turn_reply(RuntimeError("bug"), "a", [])
    assert reply.status == 500 and _json.loads(reply.body)[0]["text"] == REPLY_FAILED
