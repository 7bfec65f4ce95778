from __future__ import annotations

import pytest

from empathy_nlg.domain import DomainResponses
from empathy_nlg.engine import EmpathyEngine
from empathy_nlg.settings import load_settings
from empathy_nlg.state.repository import StateRepository
from tests.empathy_nlg.conftest import EchoGenerator, KeywordPerceiver, make_perception


def user(text, mid=None, parse=None):
    return {"event": "user", "text": text, "message_id": mid, "parse_data": parse or {}}


def bot(text):
    return {"event": "bot", "text": text}


@pytest.fixture
def engine(domain_file, sqlite_url):
    settings = load_settings(overrides={"state": {"database_url": sqlite_url}, "domain": str(domain_file)})
    repo = StateRepository(sqlite_url)
    repo.migrate()
    return EmpathyEngine(
        settings, perceiver=KeywordPerceiver(), generator=EchoGenerator(), repository=repo, domain=DomainResponses.load(domain_file)
    )


def nlg_request(response, events, sender="u1", slots=None):
    return {"response": response, "id": None, "arguments": {}, "tracker": {"sender_id": sender, "events": events, "slots": slots or {}}, "channel": {"name": "collector"}}


def test_generated_turn_is_persisted_with_perception(engine):
    out = engine.nlg(nlg_request("utter_empathize", [user("My exam went badly", "m1")]))
    assert out["text"] == "I hear that you feel sad."
    assert out["custom"]["generator"] == "echo" and out["custom"]["emotion"][0]["label"] == "sad"
    state = engine.repository.conversation("u1")
    assert state["turns"][0]["emotion"] == "sad"
    assert state["turns"][0]["replies"][0]["text"] == "I hear that you feel sad."
    timing = out["custom"]["timing"]  # where the time went, per stage
    assert {"perception", "sql", "generator"} <= set(timing) and all(ms >= 0 for ms in timing.values())


def test_generator_details_reach_custom_without_the_raw_text(engine):
    engine.generator.details = {"emotion": "sad", "cm_plan": ["ER"], "cause_utterances": ["x"], "raw": "long raw"}
    out = engine.nlg(nlg_request("utter_empathize", [user("My exam went badly", "m1")]))
    assert out["custom"]["generation"] == {"emotion": "sad", "cm_plan": ["ER"], "cause_utterances": ["x"], "source": "generator"}
    templated = engine.nlg(nlg_request("utter_greet", [user("hi", "m2")]))
    assert templated["custom"]["generation"] == {}


def test_uses_parse_data_perception_instead_of_recomputing(engine):
    stored = make_perception("grateful").to_dict()
    engine.nlg(nlg_request("utter_empathize", [user("thanks to my friends", "m1", {"empathy": stored})]))
    assert engine.perceiver.calls == []  # nothing recomputed but the crisis check
    assert [d[-1].text for d in engine.perceiver.crisis_calls] == ["thanks to my friends"]
    assert engine.generator.requests[0].perception.emotion == "grateful"


def test_a_client_copy_that_clears_the_crisis_flag_is_overruled_by_the_engine(engine):
    # Rasa echoes perception back in parse_data; a stale, buggy or forged copy saying "no crisis"
    # must not unlock generation for a crisis message
    forged = make_perception("sad", crisis=False).to_dict()
    out = engine.nlg(nlg_request("utter_empathize", [user("I want to kill myself tonight", "m1", {"empathy": forged})]))
    assert out["custom"]["generator"] == "crisis-override"
    assert engine.generator.requests == []
    turn = engine.repository.conversation("u1")["turns"][0]
    assert turn["crisis"] is True
    # and a copy that raises the flag is kept (a flag is added by the check, never removed)
    raised = make_perception("sad", crisis=True).to_dict()
    out = engine.nlg(nlg_request("utter_empathize", [user("fine I guess", "m9", {"empathy": raised})], sender="u2"))
    assert out["custom"]["generator"] == "crisis-override"


def test_emotion_trajectory_from_stored_state_reaches_the_generator(engine):
    events = [user("I failed my exam", "m1")]
    engine.nlg(nlg_request("utter_empathize", events))
    events += [bot("I hear that you feel sad."), user("but I got promoted at work", "m2")]
    engine.nlg(nlg_request("utter_empathize", events))
    assert engine.generator.requests[-1].emotion_trajectory == ["sad"]
    assert engine.generator.requests[-1].perception.emotion == "proud"


def test_the_reply_answers_the_message_in_the_light_of_the_story(engine):
    """generation.conversation.story_polarity: the generator and the reranker get the message's
    polarity blended with the earlier turns' (stored in SQL); what was perceived is stored as it was."""
    events = [user("My exam went badly", "m1")]
    first = engine.nlg(nlg_request("utter_empathize", events))
    assert "answered_polarity" not in first["custom"]["generation"]  # no story yet
    events += [bot("I hear that you feel sad."), user("but I got promoted at work", "m2")]
    out = engine.nlg(nlg_request("utter_empathize", events))
    heard = engine.generator.requests[-1].perception
    assert heard.emotion == "proud" and heard.polarity_prob < 0.9  # 0.5 × 0.9 (proud) + 0.5 × P(pos | sad turn)
    assert out["custom"]["generation"]["answered_polarity"]["story_weight"] == 0.5
    assert engine.repository.conversation("u1")["turns"][1]["polarity"] == "positive"
    engine.story_polarity = 0.0
    events += [bot("I hear that you feel proud."), user("and I got promoted again", "m3")]
    engine.nlg(nlg_request("utter_empathize", events))
    assert engine.generator.requests[-1].perception.polarity_prob == 0.9


def test_templated_response_renders_domain_and_is_recorded(engine):
    out = engine.nlg(nlg_request("utter_greet", [user("hello", "m1")], slots={"name": "Ana"}))
    assert out["text"] == "Hi Ana!" and out["custom"]["generator"] == "template"
    assert engine.generator.requests == []
    assert engine.repository.conversation("u1")["turns"][0]["replies"][0]["response"] == "utter_greet"


def test_crisis_turn_is_never_generated(engine):
    out = engine.nlg(nlg_request("utter_empathize", [user("I want to kill myself", "m1")]))
    assert engine.generator.requests == []
    assert "988" in out["text"] and out["custom"]["crisis"] is True
    assert out["custom"]["generator"] == "crisis-override"
    assert engine.repository.conversation("u1")["turns"][0]["crisis"] is True


def test_empty_generation_falls_back_to_domain_text(engine):
    engine.generator.reply = "   "
    out = engine.nlg(nlg_request("utter_empathize", [user("meh", "m1")]))
    assert out["text"] == "That sounds hard. Tell me more?"
    assert out["custom"]["generator"] == "template-fallback"


def test_perceive_persists_turn_when_sender_given(engine):
    p, latency = engine.perceive("I got promoted!", [], sender_id="s9", message_id="x", turn_index=0)
    assert p.emotion == "proud" and latency >= 0
    assert engine.repository.conversation("s9")["turns"][0]["emotion"] == "proud"
    engine.perceive("no sender", [])
    assert engine.repository.count_rows()["conversations"] == 1
    # /nlg for the same message completes the same turn row instead of adding one
    engine.nlg(nlg_request("utter_empathize", [user("I got promoted!", "x")], sender="s9"))
    assert engine.repository.count_rows() == {"conversations": 1, "turns": 1, "replies": 1}


def test_perceive_and_nlg_agree_on_turns_without_message_ids(engine):
    engine.perceive("hello", [], sender_id="s8", turn_index=0)
    engine.nlg(nlg_request("utter_greet", [user("hello")], sender="s8"))
    assert engine.repository.count_rows()["turns"] == 1


def test_unknown_response_writes_nothing(engine):
    from empathy_nlg.domain import UnknownResponseError

    with pytest.raises(UnknownResponseError):
        engine.nlg(nlg_request("utter_nope", [user("hi", "m1")]))
    assert engine.repository.count_rows()["turns"] == 0


def test_engine_requires_crisis_responses(tmp_path, sqlite_url):
    d = tmp_path / "d.yml"
    d.write_text("responses:\n  utter_greet:\n    - text: hi\n")
    settings = load_settings(overrides={"state": {"database_url": sqlite_url}, "domain": str(d)})
    with pytest.raises(ValueError, match="utter_crisis"):
        EmpathyEngine(settings, perceiver=KeywordPerceiver(), generator=EchoGenerator(), repository=StateRepository(sqlite_url), domain=DomainResponses.load(d))


def test_persona_slot_reaches_the_generator_and_outlives_the_session(engine):
    engine.nlg(nlg_request("utter_empathize", [user("I had a rough night", "m1")], slots={"persona": "  I am a   night-shift nurse "}))
    assert engine.generator.requests[-1].persona == "I am a night-shift nurse."  # facts are sentences
    # a new Rasa session: the slot is gone, SQL still knows
    engine.nlg(nlg_request("utter_empathize", [user("another long shift", "m2")]))
    assert engine.generator.requests[-1].persona == "I am a night-shift nurse."
    facts = engine.repository.persona_facts("u1")  # the client's persona is remembered as a fact
    assert [f["fact"] for f in facts] == ["I am a night-shift nurse"] and facts[0]["source_text"].startswith("(persona given")
    engine.nlg(nlg_request("utter_empathize", [user("hi", "m3")], sender="u2"))
    assert engine.generator.requests[-1].persona is None


def test_persona_facts_are_learnt_from_messages_and_outlive_the_session(engine):
    engine.nlg(nlg_request("utter_empathize", [user("I'm exhausted. I work as a nurse and I have two kids.", "m1")]))
    # the message's own facts already reach the generator
    assert engine.generator.requests[-1].persona == "I work as a nurse. I have two kids."
    stored = engine.repository.persona_facts("u1")
    assert [f["fact"] for f in stored] == ["I work as a nurse", "I have two kids"] and stored[0]["message_id"] == "m1"
    assert stored[0]["source_text"] == "I'm exhausted. I work as a nurse and I have two kids."
    # Rasa asks for a second response of the same turn: nothing is stored twice
    engine.nlg(nlg_request("utter_greet", [user("I'm exhausted. I work as a nurse and I have two kids.", "m1")]))
    assert engine.repository.count_persona_facts("u1") == 2
    # a new Rasa session (only its own events): the facts come from SQL, newest last
    engine.nlg(nlg_request("utter_empathize", [user("I feel so sad today", "s2-m1")]))
    assert engine.generator.requests[-1].persona == "I work as a nurse. I have two kids."
    engine.nlg(nlg_request("utter_empathize", [user("my dog is called Max", "s2-m2")]))
    assert engine.generator.requests[-1].persona == "I work as a nurse. I have two kids. My dog is called Max."
    assert engine.repository.count_persona_facts("u1") == 3


def test_persona_is_capped_to_the_newest_facts(domain_file, sqlite_url):
    settings = load_settings(overrides={"state": {"database_url": sqlite_url}, "domain": str(domain_file),
                                        "persona": {"max_facts": 2}})
    repo = StateRepository(sqlite_url)
    repo.migrate()
    eng = EmpathyEngine(settings, perceiver=KeywordPerceiver(), generator=EchoGenerator(), repository=repo,
                        domain=DomainResponses.load(domain_file))
    for i, text in enumerate(["I live in Leeds", "I'm 34", "I play the guitar"]):
        eng.nlg(nlg_request("utter_empathize", [user(text, f"m{i}")]))
    assert eng.generator.requests[-1].persona == "I'm 34. I play the guitar."


def test_no_persona_from_a_crisis_turn_nor_from_the_forget_request(engine):
    engine.nlg(nlg_request("utter_empathize", [user("I have two kids and I want to kill myself", "m1")]))
    assert engine.repository.count_persona_facts("u1") == 0
    # a fact learnt by /perceive from a message later found to be a crisis turn is unlearnt
    engine.perceive("I live in Leeds", sender_id="u2", message_id="m1")
    assert engine.repository.count_persona_facts("u2") == 1
    engine.nlg(nlg_request("utter_crisis_support", [user("I live in Leeds", "m1")], sender="u2"))
    assert engine.repository.count_persona_facts("u2") == 0
    forget = {"intent": {"name": "forget_persona", "confidence": 0.99}}
    engine.nlg(nlg_request("utter_greet", [user("I have two kids, forget what I told you", "m2", forget)], sender="u3"))
    assert engine.repository.count_persona_facts("u3") == 0


def test_perceive_learns_persona_facts(engine):
    engine.perceive("I work as a nurse", sender_id="u5", message_id="p1")
    assert [f["fact"] for f in engine.repository.persona_facts("u5")] == ["I work as a nurse"]
    engine.perceive("I have two kids and I want to kill myself", sender_id="u5", message_id="p2")
    assert engine.repository.count_persona_facts("u5") == 1


def test_extractor_failure_never_breaks_a_turn(engine, caplog):
    from empathy_nlg.persona import PersonaExtractor

    class Broken:
        def __call__(self, text):
            raise RuntimeError("spaCy exploded")

    engine.persona_extractor = PersonaExtractor(nlp=Broken())
    out = engine.nlg(nlg_request("utter_empathize", [user("I work as a nurse", "m1")]))
    assert out["text"] == "I hear that you feel sad." and "persona extraction failed" in caplog.text
    assert engine.repository.count_rows()["replies"] == 1 and engine.repository.count_persona_facts() == 0


def test_persona_memory_can_be_switched_off(domain_file, sqlite_url):
    settings = load_settings(overrides={"state": {"database_url": sqlite_url}, "domain": str(domain_file),
                                        "persona": {"enabled": False}})
    repo = StateRepository(sqlite_url)
    repo.migrate()
    eng = EmpathyEngine(settings, perceiver=KeywordPerceiver(), generator=EchoGenerator(), repository=repo,
                        domain=DomainResponses.load(domain_file))
    eng.nlg(nlg_request("utter_empathize", [user("I work as a nurse", "m1")], slots={"persona": "a nurse"}))
    assert eng.generator.requests[-1].persona is None and repo.count_persona_facts() == 0


def test_warm_up_generates_once_and_stores_nothing(engine):
    seconds = engine.warm_up()
    assert seconds >= 0 and len(engine.generator.requests) == 1 and len(engine.perceiver.calls) == 1
    assert engine.repository.conversation("u1") is None


def test_a_request_that_fails_on_the_way_writes_nothing(engine, monkeypatch):
    """One write per request, turn and reply together: a generator that raises leaves no
    half-written turn behind (the turn used to be written before the reply was known)."""

    def broken(requests):
        raise RuntimeError("generator down")

    monkeypatch.setattr(engine.generator, "generate", broken)
    with pytest.raises(RuntimeError):
        engine.nlg(nlg_request("utter_empathize", [user("My exam went badly", "m1")]))
    assert engine.repository.count_rows() == {"conversations": 0, "turns": 0, "replies": 0}
    monkeypatch.undo()
    out = engine.nlg(nlg_request("utter_empathize", [user("My exam went badly", "m1")]))
    assert out["custom"]["turn_index"] == 0 and engine.repository.count_rows()["turns"] == 1


def test_turn_index_is_read_before_the_one_write(engine):
    repo = engine.repository
    assert repo.turn_index_of("u1", "m1") == 0
    engine.nlg(nlg_request("utter_empathize", [user("first", "m1")]))
    assert repo.turn_index_of("u1", "m1") == 0 and repo.turn_index_of("u1", "m2") == 1
    out = engine.nlg(nlg_request("utter_empathize", [user("first", "m1"), bot("ok"), user("second", "m2")]))
    assert out["custom"]["turn_index"] == 1


def test_the_reply_calls_the_people_the_user_named_by_name(engine):
    engine.generator.reply = "Is your sister staying long?"
    out = engine.nlg(nlg_request("utter_empathize", [user("my sister Anna flew in from Lisbon today", "m1")]))
    assert out["text"] == "Is Anna staying long?"
    assert out["custom"]["generation"]["names"] == {"your sister": "Anna"}
    assert engine.repository.conversation("u1")["turns"][0]["replies"][0]["text"] == "Is Anna staying long?"
    # switched off (generation.conversation.names: false): the reply as the generator made it
    engine.names = False
    out = engine.nlg(nlg_request("utter_empathize", [user("my sister Anna flew in from Lisbon today", "n1")], sender="u2"))
    assert out["text"] == "Is your sister staying long?" and "names" not in out["custom"]["generation"]
