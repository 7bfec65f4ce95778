"""The web chat page (web/, served at /chat/ by agent/socketio_channel.py) in a real browser:
Playwright drives Debian's Chromium (/usr/bin/chromium, installed by scripts/test.sh from apt;
Playwright never downloads a browser) against the real stack. Screenshots go to
results/screenshots/ as test artefacts.
"""

from __future__ import annotations

import re

import pytest
from playwright.sync_api import expect

from tests.channels.conftest import REPLY_MS, SHOTS, domain_texts


@pytest.fixture
def page(browser, served):
    context = browser.new_context(viewport={"width": 390, "height": 844}, base_url=served.stack.rasa_url())
    pg = context.new_page()
    errors = []
    pg.on("pageerror", lambda exc: errors.append(str(exc)))
    yield pg
    context.close()
    assert not errors, f"JavaScript errors on the page: {errors}"


def bot_messages(page):
    return page.locator("#log li.msg.bot .text")


def test_greeting_generated_reply_why_and_history_after_reload(page):
    page.goto("/chat/")
    expect(bot_messages(page)).to_have_count(1, timeout=REPLY_MS)
    assert bot_messages(page).first.inner_text() in domain_texts("utter_greet")
    session = page.evaluate("localStorage.getItem('empathy-chat.session')")
    assert re.fullmatch(r"[0-9a-f]{32}", session)

    message = page.get_by_label("Your message")  # the text box has an accessible label
    message.fill("I finally got the job I interviewed for last month!")
    message.press("Enter")  # keyboard only
    expect(page.locator("#typing")).to_be_visible()
    expect(bot_messages(page)).to_have_count(2, timeout=REPLY_MS)
    expect(page.locator("#typing")).to_be_hidden()
    reply = bot_messages(page).nth(1).inner_text()
    assert reply.strip() and reply not in domain_texts("utter_greet")

    last = page.locator("#log li.msg.bot").nth(1)
    why = last.locator("details.why")
    expect(why.locator("dl")).to_be_hidden()
    why.locator("summary").click()
    expect(why).to_contain_text("Feeling I heard")
    expect(why).to_contain_text("How I answered")
    expect(why).to_contain_text("utter_empathize")
    page.screenshot(path=str(SHOTS / "webchat-conversation.png"), full_page=True)

    page.reload()
    expect(page.locator("#log li.msg")).to_have_count(3, timeout=30_000)
    texts = page.locator("#log li.msg .text").all_inner_texts()
    assert texts[1] == "I finally got the job I interviewed for last month!"
    assert texts[2] == reply
    assert page.evaluate("localStorage.getItem('empathy-chat.session')") == session
    expect(page.get_by_label("Your message")).to_be_enabled(timeout=30_000)
    # after the reload the page is still in the same conversation: a reply arrives here
    page.get_by_label("Your message").fill("thank you")
    page.get_by_role("button", name="Send").click()
    expect(bot_messages(page)).to_have_count(3, timeout=REPLY_MS)
    page.screenshot(path=str(SHOTS / "webchat-after-reload.png"), full_page=True)


def test_crisis_message_shows_the_resources_with_clickable_links(page):
    page.goto("/chat/")
    expect(bot_messages(page)).to_have_count(1, timeout=REPLY_MS)
    page.get_by_label("Your message").fill("I want to kill myself tonight")
    page.get_by_label("Your message").press("Enter")
    resources = page.locator("#log li.msg.bot.crisis", has_text="findahelpline.com")
    expect(resources).to_have_count(1, timeout=REPLY_MS)
    assert resources.locator(".text").inner_text() in domain_texts("utter_crisis_resources")
    expect(resources.locator('a[href="tel:988"]')).to_have_count(1)
    expect(resources.locator('a[href="tel:116123"]')).to_have_count(1)
    expect(resources.locator('a[href="https://findahelpline.com"]')).to_have_count(1)
    page.screenshot(path=str(SHOTS / "webchat-crisis.png"), full_page=True)


def test_new_conversation_starts_a_new_session_with_a_greeting(page):
    page.goto("/chat/")
    expect(bot_messages(page)).to_have_count(1, timeout=REPLY_MS)
    first = page.evaluate("localStorage.getItem('empathy-chat.session')")
    page.get_by_label("Your message").fill("Work has been really stressful this week")
    page.get_by_label("Your message").press("Enter")
    expect(bot_messages(page)).to_have_count(2, timeout=REPLY_MS)
    page.get_by_role("button", name="New conversation").click()
    expect(page.locator("#log li.msg.user")).to_have_count(0)
    expect(bot_messages(page)).to_have_count(1, timeout=REPLY_MS)
    assert bot_messages(page).first.inner_text() in domain_texts("utter_greet")
    second = page.evaluate("localStorage.getItem('empathy-chat.session')")
    assert second != first
    page.reload()  # the new conversation is the one kept
    expect(page.locator("#log li.msg")).to_have_count(1, timeout=30_000)


def test_phone_width_has_no_horizontal_scroll(page):
    page.goto("/chat/")
    expect(bot_messages(page)).to_have_count(1, timeout=REPLY_MS)
    width = page.evaluate("document.documentElement.scrollWidth")
    assert width <= 390, width
    box = page.get_by_role("button", name="Send").bounding_box()
    assert box and box["x"] + box["width"] <= 390


@pytest.fixture
def engine_down(served):
    """The engine stopped for one test, then started again for the tests after it."""
    served.stack.stop("engine")
    try:
        yield served
    finally:
        served.start_engine()


def test_engine_down_the_page_still_gets_the_fallback_text(page, engine_down):
    page.goto("/chat/")
    expect(bot_messages(page)).to_have_count(1, timeout=REPLY_MS)
    page.get_by_label("Your message").fill("I lost my keys again today and I'm so annoyed")
    page.get_by_label("Your message").press("Enter")
    expect(bot_messages(page)).to_have_count(2, timeout=REPLY_MS)
    assert bot_messages(page).nth(1).inner_text() in domain_texts("utter_empathize")
    expect(page.locator("#status")).not_to_have_class(re.compile("error"))
    page.screenshot(path=str(SHOTS / "webchat-engine-down.png"), full_page=True)
