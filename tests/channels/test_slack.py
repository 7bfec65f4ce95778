"""Slack: correctly signed Events API requests to Rasa's Slack webhook (agent/slack_channel.py,
configured from SLACK_TOKEN / SLACK_SIGNING_SECRET / SLACK_API_URL in the stack's environment); the
bot's answers are captured by a fake Slack Web API on loopback (conftest.FakeSlackAPI)."""

from __future__ import annotations

import hashlib
import hmac
import json
import time
import urllib.error
import urllib.request
import uuid

import pytest

from tests.channels.conftest import REPLY_TIMEOUT, SLACK_SIGNING_SECRET, SLACK_TOKEN


def signed_headers(body: bytes, secret: str = SLACK_SIGNING_SECRET, timestamp: int | None = None) -> dict:
    ts = str(int(time.time()) if timestamp is None else timestamp)
    digest = hmac.new(secret.encode(), b"v0:" + ts.encode() + b":" + body, hashlib.sha256).hexdigest()
    return {"Content-Type": "application/json", "X-Slack-Request-Timestamp": ts, "X-Slack-Signature": f"v0={digest}"}


def post(served, payload: dict, headers: dict | None = None, **sign) -> tuple:
    body = json.dumps(payload).encode()
    all_headers = {**signed_headers(body, **sign), **(headers or {})}
    req = urllib.request.Request(served.stack.rasa_url("/webhooks/slack/webhook"), data=body, headers=all_headers, method="POST")
    try:
        with urllib.request.urlopen(req, timeout=30) as resp:
            return resp.status, resp.read().decode(), dict(resp.headers)
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read().decode(), dict(exc.headers)


def dm_event(user: str, channel: str, text: str, event_id: str | None = None) -> dict:
    return {
        "token": "verification-token-unused",
        "team_id": "T0TEST",
        "api_app_id": "A0TEST",
        "type": "event_callback",
        "event_id": event_id or f"Ev{uuid.uuid4().hex[:10].upper()}",
        "event_time": int(time.time()),
        "authorizations": [{"user_id": "UBOT"}],
        "event": {"type": "message", "channel_type": "im", "channel": channel, "user": user, "text": text,
                  "ts": f"{time.time():.6f}", "event_ts": f"{time.time():.6f}"},
    }


def wait_for(read, timeout: float):
    deadline = time.monotonic() + timeout
    value = read()
    while not value and time.monotonic() < deadline:
        time.sleep(0.5)
        value = read()
    return value


def user_texts(served, sender: str) -> list:
    return [e["text"] for e in served.tracker_events(sender) if e["event"] == "user"]


def test_url_verification_challenge_is_answered(served):
    status, body, _ = post(served, {"token": "x", "challenge": "3eZbrw1aBm2rZgRNFdxV2595E9CY3gmdALWMmHkvFXO7tYXAYM8P",
                                    "type": "url_verification"})
    assert status == 200
    assert json.loads(body) == {"challenge": "3eZbrw1aBm2rZgRNFdxV2595E9CY3gmdALWMmHkvFXO7tYXAYM8P"}


def test_signed_message_is_answered_once_and_a_retry_is_not_answered_again(served, slack_api):
    user, channel = f"U{uuid.uuid4().hex[:8].upper()}", f"D{uuid.uuid4().hex[:8].upper()}"
    event = dm_event(user, channel, "My dog died last week and the house feels so empty")
    status, _, _ = post(served, event)
    assert status == 200
    posted = wait_for(lambda: slack_api.posted(channel), REPLY_TIMEOUT)
    assert len(posted) == 1, posted
    assert posted[0]["auth"] == f"Bearer {SLACK_TOKEN}"
    assert posted[0]["body"]["text"].strip()
    assert "empathy" not in json.dumps(posted[0]["body"])  # the engine's details stay in the metadata
    bot_texts = wait_for(lambda: [e["text"] for e in served.tracker_events(user) if e["event"] == "bot"], 20)
    assert posted[0]["body"]["text"] in bot_texts[-1]

    # Slack retries the same event (same event_id) when it thinks the first delivery failed
    status, _, headers = post(served, event, headers={"X-Slack-Retry-Num": "1", "X-Slack-Retry-Reason": "http_error"})
    assert status == 200
    assert headers.get("X-Slack-No-Retry") == "1"
    time.sleep(10)  # a second answer would have started by now (NLU alone is a few seconds)
    assert user_texts(served, user) == ["My dog died last week and the house feels so empty"]
    assert len(slack_api.posted(channel)) == 1


@pytest.mark.parametrize("case", ["wrong secret", "stale timestamp", "no signature"])
def test_unsigned_or_stale_requests_are_rejected(served, slack_api, case):
    user, channel = f"U{uuid.uuid4().hex[:8].upper()}", f"D{uuid.uuid4().hex[:8].upper()}"
    event = dm_event(user, channel, "hello there")
    if case == "wrong secret":
        status, body, _ = post(served, event, secret="not-the-secret")
    elif case == "stale timestamp":  # correctly signed, but 10 minutes old: a replay
        status, body, _ = post(served, event, timestamp=int(time.time()) - 600)
    else:
        status, body, _ = post(served, event, headers={"X-Slack-Signature": ""})
    assert status == 400
    assert "signed" in body
    time.sleep(3)
    assert user_texts(served, user) == []
    assert slack_api.posted(channel) == []
