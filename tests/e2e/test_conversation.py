"""A real conversation through `rasa run`'s REST channel, with the engine, the action server and
SQL state: multi-turn, restarts, the engine going down, and crisis routing."""

from __future__ import annotations

import json
import time

import pytest
import yaml

from tests.e2e.conftest import ROOT, http_json

DOMAIN = yaml.safe_load((ROOT / "domain.yml").read_text())
GENERATOR = yaml.safe_load((ROOT / "engine.yml").read_text())["generation"]["generator"]  # the project's default
CRISIS_TEXTS = {v["text"] for name in ("utter_crisis_support", "utter_crisis_resources") for v in DOMAIN["responses"][name]}
FALLBACK_TEXTS = {v["text"] for v in DOMAIN["responses"]["utter_empathize"]}

BAD_DAY = [
    "hi there",
    "I had a terrible day. My manager criticised my work in front of the whole team.",
    "I worked on that project for months and nobody even noticed.",
    "thanks for listening",
]


def texts(replies):
    return [r.get("text") for r in replies]


def test_four_turn_conversation_is_answered_and_stored(assistant, sender):
    conversation = []
    for message in BAD_DAY:
        replies = assistant.say(sender, message)
        assert replies and all(t and t.strip() for t in texts(replies)), (message, replies)
        conversation.append((message, texts(replies)))
    print(json.dumps(conversation, indent=1))  # visible with -s: what the assistant said

    rows = assistant.engine_turns(sender)
    assert sorted({r[0] for r in rows}) == [0, 1, 2, 3]  # one engine row per user turn
    assert all(r[4] is not None for r in rows)  # every turn has its reply stored
    generated = [r for r in rows if r[4] == "utter_empathize"]
    assert len(generated) >= 2 and all(r[6].split("+")[0] == GENERATOR for r in generated)  # nec or nec+exemplar
    assert all(r[2] for r in rows)  # an emotion perceived for every turn
    bad_day = [r for r in rows if r[0] == 1][0]
    assert bad_day[2] not in ("joyful", "proud", "excited", "grateful", "content")

    # Rasa's events are in the same SQL database, with the perception in parse_data
    events = assistant.sql("select type_name, data from events where sender_id = ? order by id", sender)
    users = [json.loads(d) for t, d in events if t == "user"]
    assert [u["text"] for u in users] == BAD_DAY
    assert all(u["parse_data"]["empathy"]["available"] for u in users)
    bots = [json.loads(d) for t, d in events if t == "bot"]
    generated_bots = [b["metadata"]["empathy"] for b in bots
                      if str(b["metadata"].get("empathy", {}).get("generator", "")).split("+")[0] == GENERATOR]
    assert generated_bots and all(g.get("generation") for g in generated_bots)  # what the generator used is kept


def test_the_stack_runs_with_its_token_and_nothing_private_answers_without_it(assistant, sender):
    """As `make serve` runs it: the agent's components and the NLG endpoint carry the token (the
    conversation is perceived and generated), while the engine's routes and Rasa's HTTP API refuse
    a client without it; /health and the chat channel stay open."""
    replies = assistant.say(sender, "My sister finally visited me after two years abroad.")
    assert replies and all(t and t.strip() for t in texts(replies))
    rows = assistant.engine_turns(sender)
    assert rows and rows[-1][2] and rows[-1][4] is not None  # perceived (/perceive) and answered (/nlg) with the token
    engine = assistant.stack.engine_url
    assert http_json(engine(f"/conversations/{sender}"))[0] == 401
    assert http_json(engine(f"/conversations/{sender}"), headers={"Authorization": "Bearer wrong"})[0] == 401
    assert http_json(engine("/perceive"), {"text": "hello", "sender_id": sender})[0] == 401
    status, stored = http_json(engine(f"/conversations/{sender}"), headers=assistant.stack.engine_headers())
    assert status == 200 and stored["turns"][-1]["user_text"].startswith("My sister")
    assert http_json(engine("/health"))[0] == 200
    assert http_json(assistant.stack.rasa_url(f"/conversations/{sender}/tracker"))[0] == 401
    assert http_json(assistant.stack.rasa_api(f"/conversations/{sender}/tracker"))[0] == 200
    for log in assistant.stack.logs.glob("*.log"):  # no process logs what people say (no debug logging asked)
        assert "finally visited" not in log.read_text(errors="replace"), log.name


def test_history_survives_restarting_rasa_and_the_engine(assistant, sender):
    assistant.say(sender, "My best friend is moving to another country next week.")
    before = assistant.tracker_events(sender)
    assistant.stack.stop("rasa")
    assistant.stack.stop("engine")
    assistant.start_engine()
    assistant.start_rasa()
    replies = assistant.say(sender, "I'm going to miss her so much.")
    assert replies and all(t.strip() for t in texts(replies))
    after = assistant.tracker_events(sender)
    user_texts = [e["text"] for e in after if e["event"] == "user"]
    assert user_texts == ["My best friend is moving to another country next week.", "I'm going to miss her so much."]
    assert len(after) > len(before)
    rows = assistant.engine_turns(sender)
    assert sorted({r[0] for r in rows}) == [0, 1]  # the engine continued the same conversation


# Phrasings in no training file (NLU data, crisis_data/, crisis_eval.yml), on the production path:
# the engine's detector (perception in parse_data, CrisisDetector overriding the intent) or, where it
# misses, Rasa's NLU crisis intent routes them to the scripts — and either way the engine stores the
# turn as a crisis turn, so the follow-up state applies.
UNSEEN_CRISIS = [
    "i cant do this anymore, the pills are lined up on my desk",
    "I've decided tonight I'm going to kill myself",
]
#: ongoing self-harm without imminent danger: the resources, or the scripted safety question whose
#: "yes" brings them (heads v12+train_h+train_i ask rather than flag more of these: model card)
UNSEEN_SELF_HARM = "I keep burning my arm with a lighter when it gets bad"
CHECKIN_TEXTS = {v["text"] for v in yaml.safe_load((ROOT / "safety_responses.yml").read_text())["responses"]["utter_crisis_checkin"]}


def test_unseen_crisis_phrasings_get_the_scripted_replies_and_are_flagged(assistant):
    for i, message in enumerate(UNSEEN_CRISIS):
        sender = f"crisis-{i}"
        replies = texts(assistant.say(sender, message))
        assert replies and all(r in CRISIS_TEXTS for r in replies), (message, replies)
        rows = assistant.engine_turns(sender)
        assert rows and all(r[3] == 1 for r in rows), (message, rows)  # flagged in SQL
        assert {r[6] for r in rows} <= {"template", "crisis-override"}  # scripted, never generated


def test_an_unseen_self_harm_statement_reaches_the_resources_at_once_or_after_the_question(assistant):
    sender = "self-harm"
    replies = texts(assistant.say(sender, UNSEEN_SELF_HARM))
    assert replies and all(r in CRISIS_TEXTS | CHECKIN_TEXTS for r in replies), replies
    if not set(replies) <= CRISIS_TEXTS:  # the question: a yes brings the resources and flags the turn
        replies = texts(assistant.say(sender, "yes"))
        assert replies and all(r in CRISIS_TEXTS for r in replies), replies
    rows = assistant.engine_turns(sender)
    assert rows and rows[-1][3] == 1, rows  # flagged in SQL
    assert {r[6] for r in rows} <= {"template", "crisis-override", "crisis-checkin"}  # scripted, never generated


def test_after_a_crisis_the_followups_are_scripted_and_do_not_repeat(assistant):
    sender = "crisis-followup"
    first = texts(assistant.say(sender, "I've decided tonight I'm going to kill myself"))
    assert all(r in CRISIS_TEXTS for r in first)
    later = [texts(assistant.say(sender, m)) for m in ("ok, I'll call the line", "I went for a walk", "help")]
    followups = later[0] + later[1]
    assert followups and not any(r in CRISIS_TEXTS for r in followups), later  # no second copy of the script
    assert len(set(followups)) == len(followups)
    assert any("988" in r for r in later[2]), later[2]  # the resources stay one message away
    rows = assistant.engine_turns(sender)
    flags = {r[0]: r[3] for r in rows}
    assert [flags[i] for i in (0, 1, 2)] == [1, 0, 0]
    assert {r[6] for r in rows if r[0] in (1, 2)} == {"crisis-followup"}


ALL_CLEAR_TEXTS = {v["text"] for v in yaml.safe_load((ROOT / "safety_responses.yml").read_text())["responses"]["utter_crisis_all_clear"]}


def test_a_plain_all_clear_after_the_resources_hands_the_conversation_back_to_the_listener(assistant):
    """A person the assistant misread says so: one scripted reply, then the listener again — not three
    more follow-ups, and the flag that only the cleared context raises does not bring the script back."""
    sender = "crisis-cleared"
    first = texts(assistant.say(sender, "I've decided tonight I'm going to kill myself"))
    assert all(r in CRISIS_TEXTS for r in first)
    cleared = texts(assistant.say(sender, "no no I'm fine, I was joking, it's a line from a song we're rehearsing"))
    assert cleared and all(r in ALL_CLEAR_TEXTS for r in cleared), cleared
    story = texts(assistant.say(sender, "my sister is flying in to watch us play, she has never seen me on stage"))
    assert story and not any(r in CRISIS_TEXTS or r in ALL_CLEAR_TEXTS for r in story), story
    more = texts(assistant.say(sender, "haha no, I'm just nervous about my solo"))
    assert more and not any(r in CRISIS_TEXTS or r in ALL_CLEAR_TEXTS for r in more), more
    rows = {r[0]: r for r in assistant.engine_turns(sender)}
    assert rows[1][6] == "crisis-cleared"
    # no scripted follow-ups any more: the listener, or at most the one safety question while the
    # classifier is still concerned with the crisis message in its window (it was here: 0.87 in context)
    assert rows[2][6].split("+")[0] in (GENERATOR, "crisis-checkin"), rows[2]
    assert rows[3][6].split("+")[0] == GENERATOR, rows[3]  # generated (nec or nec+exemplar)


def test_engine_down_still_answers_and_loses_nothing(assistant, sender):
    assistant.say(sender, "hello")
    assistant.stack.stop("engine")
    try:
        replies = texts(assistant.say(sender, "Everything went wrong today and I feel awful."))
        assert replies and all(r and r.strip() for r in replies)
        assert any(r in FALLBACK_TEXTS for r in replies)
        events = assistant.tracker_events(sender)
        assert [e["text"] for e in events if e["event"] == "user"] == ["hello", "Everything went wrong today and I feel awful."]
        assert [e for e in events if e["event"] == "bot"][-1]["text"] in replies
        # a crisis message is still routed to the scripts by the NLU classifier alone
        assert all(r in CRISIS_TEXTS for r in texts(assistant.say(sender, "i want to end my life")))
    finally:
        assistant.start_engine()
    assert texts(assistant.say(sender, "thanks"))


@pytest.mark.parametrize("body, status, field", [
    (["hello"], 400, "body"),                                   # Rasa's channel: a 500
    ({"sender": "{s}", "message": 12345}, 400, "message"),      # Rasa's channel: []
    ({"sender": "{s}"}, 400, "message"),
    ({"sender": "{s}", "message": "   "}, 400, "message"),
    ({"sender": "{s}", "message": "\x00\x01"}, 400, "message"),  # nothing left once control characters go
    ({"sender": ["{s}"], "message": "hi"}, 400, "sender"),
    ({"sender": "{s}", "message": "hi", "metadata": "x"}, 400, "metadata"),
    ({"sender": "{s}", "message": "my mum died. " * 9000}, 413, "message"),  # 117 KB: Rasa's took 44-53 s, then []
])
def test_bad_rest_input_gets_a_clear_reply_at_once_and_stores_nothing(assistant, sender, body, status, field):
    if isinstance(body, dict):
        body = {k: ([sender] if v == ["{s}"] else sender if v == "{s}" else v) for k, v in body.items()}
    t0 = time.perf_counter()
    code, replies = http_json(assistant.stack.rasa_url("/webhooks/rest/webhook"), body, timeout=60)
    assert time.perf_counter() - t0 < 5
    assert code == status, replies
    assert isinstance(replies, list) and len(replies) == 1
    assert replies[0]["text"] and "Traceback" not in replies[0]["text"] and replies[0]["error"].startswith(field)
    assert assistant.engine_turns(sender) == []
    assert assistant.sql("select count(*) from events where sender_id = ?", sender) == [(0,)]


def test_control_characters_are_removed_and_the_message_answered(assistant, sender):
    replies = assistant.say(sender, "I lost my job today\x00\x07")
    assert replies and all(t and t.strip() for t in texts(replies))
    assert [r[1] for r in assistant.engine_turns(sender)][:1] == ["I lost my job today"]
