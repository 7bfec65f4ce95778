"""The dialogue module: roles, the events converter, the turn key."""

from __future__ import annotations

from empathy_nlg.dialogue import API_ROLES, ROLES, dialogue_from_events, history_from_roles


def user(text, mid=None, parse=None):
    return {"event": "user", "text": text, "message_id": mid, "parse_data": parse or {}}


def bot(text):
    return {"event": "bot", "text": text}


def test_dialogue_from_events_roles_and_message_key():
    events = [{"event": "action", "name": "action_listen"}, user("hi", "a"), bot("hello"), {"event": "slot"}, user("I am sad", "b")]
    view = dialogue_from_events(events, history_turns=8)
    assert [(t.role, t.text) for t in view.turns] == [("speaker", "hi"), ("listener", "hello"), ("speaker", "I am sad")]
    assert view.message_key == "b" and view.user_turn_count == 2
    assert len(dialogue_from_events(events, history_turns=2).turns) == 2
    assert dialogue_from_events([], 8).message_key is None
    anonymous = dialogue_from_events([user("I am sad")], 8).message_key
    assert anonymous.startswith("anon-1-") and anonymous == dialogue_from_events([user("I am sad")], 8).message_key


def test_history_from_roles():
    turns = history_from_roles([{"role": "user", "text": "a"}, {"role": "bot", "text": "b"}], "c", 8)
    assert [t.role for t in turns] == ["speaker", "listener", "speaker"]


def test_one_role_vocabulary_each_side():
    assert ROLES == ("speaker", "listener") and set(API_ROLES.values()) == set(ROLES)
    import empathy_nlg.datasets as D
    import empathy_nlg.dialogue as G

    assert D.Utterance is G.Utterance  # the data readers and the engine build the same type
