"""rasa-webchat 1.0.1 from the npm registry (the most used Rasa web-chat widget, a client we did not
write; fetched by scripts/setup_test_clients.sh) in Chromium against the real stack's socket.io
channel: it gets the greeting for its empty initPayload, a reply to a message, and its
conversation back after a reload. Its page is served through Playwright on Rasa's origin."""

from __future__ import annotations

import json

from playwright.sync_api import expect

from tests.channels.conftest import REPLY_MS, ROOT, SHOTS, domain_texts

WIDGET = ROOT / ".cache" / "test-clients" / "rasa-webchat-1.0.1.js"


def widget_page(socket_url: str) -> str:
    props = {"selector": "#webchat", "socketUrl": socket_url, "socketPath": "/socket.io/", "embedded": True,
             "title": "Widget test", "params": {"storage": "local"}, "customData": {"language": "en"}}
    return f"""<!doctype html><html><head><meta charset="utf-8"><title>rasa-webchat</title></head>
<body><div id="webchat" style="height:600px"></div>
<script src="/widget-test/rasa-webchat.js"></script>
<script>WebChat.default({json.dumps(props)}, null);</script></body></html>"""


def test_rasa_webchat_widget_gets_greeting_reply_and_keeps_the_conversation(browser, served):
    assert WIDGET.is_file(), f"{WIDGET} is missing: run scripts/setup_test_clients.sh"
    rasa = served.stack.rasa_url()
    context = browser.new_context(viewport={"width": 420, "height": 700}, base_url=rasa)
    try:
        page = context.new_page()
        page.route(f"{rasa}/widget-test/index.html",
                   lambda route: route.fulfill(body=widget_page(rasa), content_type="text/html"))
        page.route(f"{rasa}/widget-test/rasa-webchat.js",
                   lambda route: route.fulfill(path=str(WIDGET), content_type="application/javascript"))
        page.goto("/widget-test/index.html")
        responses = page.locator(".rw-response .rw-message-text")  # not the typing bubble
        expect(responses).to_have_count(1, timeout=REPLY_MS)
        assert responses.first.inner_text().strip() in domain_texts("utter_greet")

        page.locator(".rw-new-message").fill("My grandmother is in hospital and I'm scared")
        page.locator(".rw-new-message").press("Enter")
        expect(responses).to_have_count(2, timeout=REPLY_MS)
        reply = responses.nth(1).inner_text().strip()
        assert reply and reply not in domain_texts("utter_greet")
        page.screenshot(path=str(SHOTS / "rasa-webchat.png"), full_page=True)

        page.reload()
        expect(responses).to_have_count(2, timeout=30_000)
        expect(page.locator(".rw-client .rw-message-text")).to_have_count(1)
        assert responses.nth(1).inner_text().strip() == reply
    finally:
        context.close()
