"""The Slack channel, configured from the environment, on Rasa 3.6's Slack connector.

Referenced from ``credentials.yml`` as ``agent.slack_channel.SlackInput`` (so ``make serve`` starts
with or without Slack). Keys there win; missing ones come from the environment:

    SLACK_TOKEN           the app's Bot User OAuth token (xoxb-…)
    SLACK_SIGNING_SECRET  the app's signing secret (every request's v0 HMAC signature is checked)
    SLACK_CHANNEL         optional: a channel id the bot answers in besides DMs and @mentions
    SLACK_API_URL         optional: the Slack Web API base URL (default https://slack.com/api/)

Without a token and a signing secret the webhook (``/webhooks/slack/webhook``) answers 503 with
what to set, and the rest of the assistant runs as usual. Differences from Rasa's connector:

* ``url_verification`` is answered with ``{"challenge": …}`` (Rasa sends a bare JSON string);
* an event is answered once: a retry (``X-Slack-Retry-Num``) or any repeat of an ``event_id``
  already taken gets 200 with ``X-Slack-No-Retry: 1`` and no second answer, whatever the retry
  reason (Rasa ignores only ``http_timeout`` retries);
* the engine's details (``empathy`` in the bot event's metadata) are never posted to Slack.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
from collections import OrderedDict
from http import HTTPStatus
from typing import Any, Awaitable, Callable, Dict, Optional, Text

from rasa.core.channels.channel import InputChannel, OutputChannel, UserMessage
from rasa.core.channels.slack import SlackBot as RasaSlackBot
from rasa.core.channels.slack import SlackInput as RasaSlackInput
from sanic import Blueprint, response
from sanic.request import Request
from sanic.response import HTTPResponse
from slack_sdk.web.async_client import AsyncWebClient

from agent.rest_channel import REPLY_FAILED
from agent.unavailable import REPLY_UNAVAILABLE, is_unavailable

log = logging.getLogger(__name__)

DEFAULT_API_URL = "https://slack.com/api/"
SEEN_EVENTS = 1000  # event ids remembered for deduplication
NOT_CONFIGURED = "Slack is not configured: set SLACK_TOKEN and SLACK_SIGNING_SECRET (see README, Slack)."


class SlackBot(RasaSlackBot):
    """Rasa's Slack output with a configurable Web API URL."""

    def __init__(self, token: Text, slack_channel: Optional[Text] = None, thread_id: Optional[Text] = None,
                 proxy: Optional[Text] = None, api_url: Text = DEFAULT_API_URL) -> None:
        super().__init__(token, slack_channel, thread_id, proxy)
        self.client = AsyncWebClient(token, proxy=proxy, base_url=api_url)


class SlackInput(RasaSlackInput):
    @classmethod
    def name(cls) -> Text:
        return "slack"

    @classmethod
    def from_credentials(cls, credentials: Optional[Dict[Text, Any]]) -> InputChannel:
        credentials = dict(credentials or {})
        token = credentials.get("slack_token") or os.environ.get("SLACK_TOKEN", "")
        secret = credentials.get("slack_signing_secret") or os.environ.get("SLACK_SIGNING_SECRET", "")
        return cls(
            token,
            credentials.get("slack_channel") or os.environ.get("SLACK_CHANNEL") or None,
            credentials.get("proxy"),
            credentials.get("slack_retry_reason_header", "x-slack-retry-reason"),
            credentials.get("slack_retry_number_header", "x-slack-retry-num"),
            credentials.get("errors_ignore_retry", None),
            credentials.get("use_threads", False),
            secret,
            credentials.get("conversation_granularity", "sender"),
            api_url=credentials.get("slack_api_url") or os.environ.get("SLACK_API_URL") or DEFAULT_API_URL,
        )

    def __init__(self, *args: Any, api_url: Text = DEFAULT_API_URL, **kwargs: Any) -> None:
        self.api_url = api_url
        self._seen_events: "OrderedDict[str, None]" = OrderedDict()
        super().__init__(*args, **kwargs)
        self.configured = bool(self.slack_token and self.slack_signing_secret)
        if not self.configured:
            log.info("%s The other channels run as usual.", NOT_CONFIGURED)

    def _validate_credentials(self) -> None:
        """Not configured is allowed (the webhook then says so); a token without a secret is not served."""

    def get_output_channel(self, channel: Optional[Text] = None, thread_id: Optional[Text] = None) -> OutputChannel:
        return SlackBot(self.slack_token, channel or self.slack_channel, thread_id, self.proxy, self.api_url)

    # -- deduplication ----------------------------------------------------------------------
    def _take_event(self, event_id: Optional[Text]) -> bool:
        """True the first time an event id is seen."""
        if not event_id:
            return True
        if event_id in self._seen_events:
            return False
        self._seen_events[event_id] = None
        while len(self._seen_events) > SEEN_EVENTS:
            self._seen_events.popitem(last=False)
        return True

    async def process_message(self, request: Request, on_new_message: Callable[[UserMessage], Awaitable[Any]],
                              text: Text, sender_id: Optional[Text], metadata: Optional[Dict]) -> Any:
        """Answer an event once, in the background (Slack wants its 200 within 3 s)."""
        body = request.json if request.headers.get("content-type") == "application/json" else None
        event_id = body.get("event_id") if isinstance(body, dict) else None
        retry = request.headers.get(self.retry_num_header)
        if not self._take_event(event_id) or (retry and not event_id):
            log.info("Slack retry #%s (%s) of an event already taken: not answered again",
                     retry or 0, request.headers.get(self.retry_reason_header))
            return response.text("", status=HTTPStatus.OK, headers={"X-Slack-No-Retry": "1"})
        metadata = metadata or {}
        thread_id = metadata.get("thread_id") if self.use_threads else None
        message = UserMessage(text, self.get_output_channel(metadata.get("out_channel"), thread_id), sender_id,
                              input_channel=self.name(), metadata=metadata)
        task: asyncio.Task = asyncio.create_task(self._handle(on_new_message, message))
        self._background_tasks.add(task)
        task.add_done_callback(self._background_tasks.discard)
        return response.text("")

    @staticmethod
    async def _handle(on_new_message: Callable[[UserMessage], Awaitable[Any]], message: UserMessage) -> None:
        try:
            await on_new_message(message)
        except Exception as exc:  # logged, never shown to the Slack user as a traceback
            log.error("Slack message of %s not answered (%s: %s)", message.sender_id, type(exc).__name__, exc)
            reply = REPLY_UNAVAILABLE if is_unavailable(exc) else REPLY_FAILED
            try:  # the person is told, in the same conversation
                await message.output_channel.send_text_message(message.sender_id, reply)
            except Exception as send_exc:  # noqa: BLE001 - Slack itself unreachable: the log is all there is
                log.error("Slack: could not tell %s either (%s)", message.sender_id, type(send_exc).__name__)

    # -- webhook ------------------------------------------------------------------------------
    def blueprint(self, on_new_message: Callable[[UserMessage], Awaitable[Any]]) -> Blueprint:
        slack_webhook = Blueprint("slack_webhook", __name__)

        @slack_webhook.route("/", methods=["GET"])
        async def health(_: Request) -> HTTPResponse:
            return response.json({"status": "ok" if self.configured else "not configured"})

        @slack_webhook.route("/webhook", methods=["POST"])
        async def webhook(request: Request) -> HTTPResponse:
            if not self.configured:
                return response.json({"error": NOT_CONFIGURED}, status=HTTPStatus.SERVICE_UNAVAILABLE)
            if not self.is_request_from_slack_authentic(request):
                return response.text("Message is not properly signed with a valid X-Slack-Signature header",
                                     status=HTTPStatus.BAD_REQUEST)
            content_type = request.headers.get("content-type")
            try:
                if content_type == "application/json":
                    return await self._json_event(request, on_new_message)
                if content_type == "application/x-www-form-urlencoded":
                    return await self._interactive(request, on_new_message)
            except (ValueError, KeyError, TypeError, AttributeError) as exc:
                log.warning("malformed Slack request (%s: %s)", type(exc).__name__, exc)
                return response.text("malformed request", status=HTTPStatus.BAD_REQUEST)
            return response.text("unsupported content type", status=HTTPStatus.BAD_REQUEST)

        return slack_webhook

    async def _json_event(self, request: Request, on_new_message: Callable[[UserMessage], Awaitable[Any]]) -> HTTPResponse:
        output = request.json
        if not isinstance(output, dict):
            raise ValueError("body is not a JSON object")
        if output.get("type") == "url_verification" or "challenge" in output:
            return response.json({"challenge": output.get("challenge")})
        if not self._is_user_message(output):
            return response.text("Bot message delivered.")
        metadata = self.get_metadata(request)
        if not self._is_supported_channel(output, metadata):
            log.info("Slack message on a channel the bot does not answer in: %s", metadata.get("out_channel"))
            return response.text("channel not supported.")
        event = output.get("event", {})
        conversation_id = self._get_conversation_id(event.get("user", ""), metadata.get("out_channel"), metadata.get("thread_id"))
        text = self._sanitize_user_message(event.get("text", ""), metadata["users"])
        return await self.process_message(request, on_new_message, text=text, sender_id=conversation_id, metadata=metadata)

    async def _interactive(self, request: Request, on_new_message: Callable[[UserMessage], Awaitable[Any]]) -> HTTPResponse:
        payload = json.loads(request.form["payload"][0])
        if self._is_interactive_message(payload):
            text = self._get_interactive_response(payload["actions"][0])
            if text is not None:
                metadata = self.get_metadata(request)
                conversation_id = self._get_conversation_id(payload["user"]["id"], metadata.get("out_channel"), metadata.get("thread_id"))
                return await self.process_message(request, on_new_message, text, conversation_id, metadata)
            if payload["actions"][0]["type"] == "button":
                return response.text("User clicked link button")
        return response.text("The input message could not be processed.", status=HTTPStatus.BAD_REQUEST)
