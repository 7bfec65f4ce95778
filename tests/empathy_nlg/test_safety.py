"""After a crisis turn: scripted follow-ups that acknowledge the message, never the same text twice,
resources again on a new crisis statement, a check-in question on concern, and the state in SQL."""

from __future__ import annotations

from pathlib import Path

import pytest

from empathy_nlg.domain import DomainResponses
from empathy_nlg.engine import EmpathyEngine
from empathy_nlg.safety import SafetyPolicy, followup_kind, is_all_clear
from empathy_nlg.settings import load_settings
from empathy_nlg.state.repository import StateRepository
from tests.empathy_nlg.conftest import EchoGenerator, KeywordPerceiver, make_perception

ROOT = Path(__file__).resolve().parents[2]


class ConcernPerceiver(KeywordPerceiver):
    """'kill myself' → crisis; 'worth going on' → concern (below the crisis threshold); 'asleep now'
    → a crisis flag that only its context makes (reason ``context-only``, as the detector marks it)."""

    def perceive(self, dialogue):
        p = super().perceive(dialogue)
        p.crisis_concern = "worth going on" in dialogue[-1].text.lower() and not p.crisis
        if "asleep now" in dialogue[-1].text.lower():
            p.crisis, p.crisis_reasons = True, ["classifier:0.93", "context-only"]
        return p


@pytest.fixture
def engine(domain_file, sqlite_url):
    settings = load_settings(overrides={"state": {"database_url": sqlite_url}, "domain": str(domain_file)})
    repo = StateRepository(sqlite_url)
    repo.migrate()
    domain = DomainResponses.load(domain_file)
    domain.update(DomainResponses.load(ROOT / "safety_responses.yml"))
    domain.update(DomainResponses({"utter_goodbye": [{"text": "Bye for now!"}]}))
    return EmpathyEngine(settings, perceiver=ConcernPerceiver(), generator=EchoGenerator(), repository=repo, domain=domain)


def talk(engine, texts, sender="s1", response="utter_empathize"):
    events, replies = [], []
    for i, text in enumerate(texts):
        events.append({"event": "user", "text": text, "message_id": f"{sender}-{i}", "parse_data": {}})
        out = engine.nlg({"response": response, "id": None, "arguments": {}, "channel": {"name": "collector"},
                          "tracker": {"sender_id": sender, "slots": {}, "events": list(events)}})
        events.append({"event": "bot", "text": out["text"]})
        replies.append(out)
    return replies


@pytest.mark.parametrize("text,kind", [
    ("ok thanks, I'll call the line", "reaching_out"), ("my sister is coming over", "reaching_out"),
    ("thank you", "thanks"), ("I went for a walk", "coping"), ("I don't know", "checkin"),
])
def test_followup_kind(text, kind):
    assert followup_kind(text) == kind


def test_after_a_crisis_the_followups_are_scripted_varied_and_end(engine):
    out = talk(engine, ["I want to kill myself", "ok thanks, I'll call the line", "I went for a walk", "I don't know",
                        "I don't know", "my exam went badly"])
    resources = engine.domain.texts("utter_crisis_resources")[0]
    assert out[0]["custom"]["generator"] == "crisis-override" and resources in out[0]["text"]
    kinds = [o["custom"]["generator"] for o in out[1:4]]
    assert kinds == ["crisis-followup"] * 3
    assert out[1]["text"] in engine.domain.texts("utter_crisis_followup_reaching_out")
    assert out[2]["text"] in engine.domain.texts("utter_crisis_followup_coping")
    texts = [o["text"] for o in out[1:4]]
    assert len(set(texts)) == 3 and not any(resources in t for t in texts)
    # three unflagged messages later the conversation leaves the crisis state: generated again
    assert out[4]["custom"]["generator"] == "echo" and out[5]["custom"]["generator"] == "echo"
    state = engine.repository.conversation("s1")
    assert [t["crisis"] for t in state["turns"]] == [True, False, False, False, False, False]
    assert [t["replies"][0]["generator"] for t in state["turns"]][:4] == ["crisis-override"] + ["crisis-followup"] * 3


def test_a_new_crisis_statement_brings_the_resources_again(engine):
    out = talk(engine, ["I want to kill myself", "ok", "I still want to kill myself"])
    resources = engine.domain.texts("utter_crisis_resources")[0]
    assert resources in out[0]["text"] and resources not in out[1]["text"] and resources in out[2]["text"]


def test_a_message_flagged_in_the_crisis_context_gets_the_urgent_followup_with_numbers(engine):
    out = talk(engine, ["I want to kill myself", "ok", "everyone's asleep now", "they're all asleep now", "ok"], sender="u")
    resources = engine.domain.texts("utter_crisis_resources")[0]
    urgent = engine.domain.texts("utter_crisis_followup_urgent")
    assert out[1]["text"] in engine.domain.texts("utter_crisis_followup_checkin")
    # still in danger: neither the same two paragraphs again nor an ordinary follow-up, but the
    # urgent one (numbers in it), worded differently the second time
    assert out[2]["text"] in urgent and out[3]["text"] in urgent and out[2]["text"] != out[3]["text"]
    assert all("988" in o["text"] and resources not in o["text"] for o in out[2:4])
    assert out[2]["custom"]["safety"] == "followup" and out[2]["custom"]["generator"] == "crisis-followup"
    # stored as crisis turns: the follow-up window runs on from them
    state = engine.repository.conversation("u")
    assert [t["crisis"] for t in state["turns"]] == [True, False, True, True, False]
    assert out[4]["custom"]["generator"] == "crisis-followup"


def test_the_nlu_reading_a_crisis_the_detector_did_not_flag_gets_the_question_once(engine):
    events, out = [], []
    for i, (text, override) in enumerate([
            ("six failed attempts before this one", None),
            ("gonna try a rye loaf next", {"demoted": "crisis", "confidence": 0.99, "ask": True}),
            ("the rye one too", {"demoted": "crisis", "confidence": 0.99, "ask": True}),
            ("got the job!", {"demoted": "crisis", "confidence": 0.99, "ask": False})]):
        parse = {"crisis_override": override} if override else {}
        events.append({"event": "user", "text": text, "message_id": f"n-{i}", "parse_data": parse})
        o = engine.nlg({"response": "utter_empathize", "id": None, "arguments": {}, "channel": {"name": "collector"},
                        "tracker": {"sender_id": "n", "slots": {}, "events": list(events)}})
        events.append({"event": "bot", "text": o["text"]})
        out.append(o)
    assert out[0]["custom"]["generator"] == "echo"
    assert out[1]["custom"]["generator"] == "crisis-checkin" and out[1]["text"] in engine.domain.texts("utter_crisis_checkin")
    resources = engine.domain.texts("utter_crisis_resources")[0]
    assert resources not in out[1]["text"]
    # asked just now: not again on the next message; good news without concern is not asked about
    assert out[2]["custom"]["generator"] == "echo" and out[3]["custom"]["generator"] == "echo"
    assert [t["crisis"] for t in engine.repository.conversation("n")["turns"]] == [False] * 4


def test_the_question_is_not_asked_twice_in_a_row(engine):
    out = talk(engine, ["honestly sometimes I wonder if it's worth going on", "not really, it's worth going on for the dog",
                        "is it worth going on with this job though"], sender="q")
    assert out[0]["custom"]["generator"] == "crisis-checkin"
    assert out[1]["custom"]["generator"] == "echo"  # answered, not asked again
    assert out[2]["custom"]["generator"] == "crisis-checkin"  # a later concern is asked about again


def test_templates_asked_for_during_the_followup_are_replaced(engine):
    talk(engine, ["I want to kill myself"], sender="t")
    events = [{"event": "user", "text": "I want to kill myself", "message_id": "t-0", "parse_data": {}},
              {"event": "bot", "text": "..."}, {"event": "user", "text": "bye", "message_id": "t-1", "parse_data": {}}]
    out = engine.nlg({"response": "utter_goodbye", "id": None, "arguments": {}, "channel": {"name": "collector"},
                      "tracker": {"sender_id": "t", "slots": {}, "events": events}})
    assert out["text"] in engine.domain.texts("utter_crisis_goodbye") and out["custom"]["safety"] == "followup"
    events[-1]["message_id"] = "t-2"
    out = engine.nlg({"response": "utter_greet", "id": None, "arguments": {}, "channel": {"name": "collector"},
                      "tracker": {"sender_id": "t", "slots": {}, "events": events}})
    assert out["text"] in engine.domain.texts("utter_crisis_followup_checkin")


def test_an_answer_that_is_neither_yes_nor_no_gets_the_question_once_more(engine):
    out = talk(engine, ["honestly sometimes I wonder if it's worth going on", "ok", "idk"], sender="u")
    assert out[0]["custom"]["generator"] == "crisis-checkin"
    assert out[1]["custom"]["generator"] == "crisis-clarify"
    assert out[1]["text"] in engine.domain.texts("utter_crisis_checkin_unclear")
    assert out[1]["custom"]["safety"] == "clarify"
    assert out[2]["custom"]["generator"] == "echo"  # asked twice is enough: the listener carries on
    assert [t["crisis"] for t in engine.repository.conversation("u")["turns"]] == [False] * 3


def test_a_yes_to_the_question_asked_again_is_a_crisis(engine):
    out = talk(engine, ["honestly sometimes I wonder if it's worth going on", "not sure", "yeah"], sender="y")
    assert [o["custom"]["generator"] for o in out] == ["crisis-checkin", "crisis-clarify", "crisis-override"]
    assert [t["crisis"] for t in engine.repository.conversation("y")["turns"]] == [False, False, True]


@pytest.mark.parametrize("answer", ["no", "nope, just tired of this job", "ok I'll think about it, thanks",
                                    "ok but what about work tomorrow"])
def test_a_no_or_a_real_answer_to_the_question_goes_back_to_the_listener(engine, answer):
    out = talk(engine, ["honestly sometimes I wonder if it's worth going on", answer], sender="a")
    assert [o["custom"]["generator"] for o in out] == ["crisis-checkin", "echo"]


def test_concern_asks_and_a_yes_is_a_crisis_stored_as_one(engine):
    out = talk(engine, ["work is hard", "honestly sometimes I wonder if it's worth going on", "yeah"], sender="c")
    assert out[0]["custom"]["generator"] == "echo"
    assert out[1]["custom"]["generator"] == "crisis-checkin" and out[1]["text"] in engine.domain.texts("utter_crisis_checkin")
    assert out[2]["custom"]["generator"] == "crisis-override" and out[2]["custom"]["crisis"] is True
    turns = engine.repository.conversation("c")["turns"]
    assert [t["crisis"] for t in turns] == [False, False, True]


@pytest.mark.parametrize("text,clear", [
    ("lol no I'm fine, I meant the boss fight", True), ("I'm not suicidal, it's just an expression", True),
    ("omg no, I was talking about my phone battery", True), ("sorry, wrong idea, I'm totally okay", True),
    ("I was just being dramatic about the exam", True), ("nothing like that haha", True),
    ("I'm fine, forget it", False), ("I'm fine now, I've made my peace", False), ("I'm not okay", False),
    ("I'm fine. it doesn't matter anymore", False), ("no", False), ("ok", False), ("I don't know", False),
    ("I'm fine, I have the pills right here", False), ("I'm fine, goodbye", False),
])
def test_what_counts_as_a_plain_all_clear(text, clear):
    assert is_all_clear(text) is clear


def test_a_plain_all_clear_after_the_resources_hands_the_conversation_back(engine):
    out = talk(engine, ["I want to kill myself", "lol no I'm fine, I meant the boss in the game",
                        "anyway the next level is even harder", "my brother beat it in an hour"], sender="clear")
    resources = engine.domain.texts("utter_crisis_resources")[0]
    assert out[0]["custom"]["generator"] == "crisis-override"
    assert out[1]["custom"]["safety"] == "cleared" and out[1]["custom"]["generator"] == "crisis-cleared"
    assert out[1]["text"] in engine.domain.texts("utter_crisis_all_clear") and resources not in out[1]["text"]
    # back to the listener at once, not three more scripted follow-ups
    assert [o["custom"]["generator"] for o in out[2:]] == ["echo", "echo"]
    turns = engine.repository.conversation("clear")["turns"]
    assert [t["replies"][0]["generator"] for t in turns] == ["crisis-override", "crisis-cleared", "echo", "echo"]


def test_after_an_all_clear_only_new_danger_counts(engine):
    # a flag that only the cleared context raises ('asleep now': context-only) is not the crisis again
    out = talk(engine, ["I want to kill myself", "no no, I was joking", "the kids are asleep now",
                        "I want to kill myself"], sender="after")
    assert [o["custom"]["generator"] for o in out] == ["crisis-override", "crisis-cleared", "echo", "crisis-override"]
    # an all-clear that is itself flagged only by its context clears; one flagged on its own does not
    out = talk(engine, ["I want to kill myself", "I'm okay, I was exaggerating, they're asleep now"], sender="ctx")
    assert out[1]["custom"]["generator"] == "crisis-cleared"
    out = talk(engine, ["I want to kill myself", "I'm fine, I just want to kill myself"], sender="own")
    assert out[1]["custom"]["generator"] == "crisis-override"
    # a question asked after the all-clear makes a later context-only flag count again
    out = talk(engine, ["I want to kill myself", "I'm fine, I was kidding", "honestly I wonder if it's worth going on",
                        "they're asleep now"], sender="asked")
    assert [o["custom"]["generator"] for o in out] == ["crisis-override", "crisis-cleared", "crisis-checkin",
                                                       "crisis-override"]
    # once the crisis turn has left the detector's window, a context-only flag comes from newer turns: it counts
    out = talk(engine, ["I want to kill myself", "I'm fine, I was kidding", "work was ok", "the dog was ok",
                        "they're asleep now"], sender="later")
    assert [o["custom"]["generator"] for o in out] == ["crisis-override", "crisis-cleared", "echo", "echo",
                                                       "crisis-override"]


def test_an_all_clear_is_answered_whatever_template_rasa_chose_but_a_goodbye(engine):
    engine.domain.update(DomainResponses({"utter_help": [{"text": "I'm here to listen."}]}))

    def reply(sender, response):
        talk(engine, ["I want to kill myself"], sender=sender)
        events = [{"event": "user", "text": "I want to kill myself", "message_id": f"{sender}-0", "parse_data": {}},
                  {"event": "bot", "text": "..."},
                  {"event": "user", "text": "no I'm fine, I was joking. talk later", "message_id": f"{sender}-1",
                   "parse_data": {}}]
        return engine.nlg({"response": response, "id": None, "arguments": {}, "channel": {"name": "collector"},
                           "tracker": {"sender_id": sender, "slots": {}, "events": events}})

    assert reply("help", "utter_help")["custom"]["generator"] == "crisis-cleared"  # a deny after the resources
    assert reply("bye", "utter_goodbye")["text"] in engine.domain.texts("utter_crisis_goodbye")


@pytest.mark.parametrize("answer", ["I'm fine, forget it", "I'm fine now, I've made my peace", "ok", "I'm not okay"])
def test_minimising_or_unclear_answers_keep_the_followups(engine, answer):
    out = talk(engine, ["I want to kill myself", answer], sender="keep")
    assert out[1]["custom"]["generator"] == "crisis-followup" and out[1]["custom"]["safety"] == "followup"


def test_policy_without_the_scripted_texts_falls_back_to_the_resources(domain_file):
    domain = DomainResponses.load(domain_file)  # the test domain has no utter_crisis_followup_*
    policy = SafetyPolicy(domain, followup_turns=2)
    decision = policy.decide("utter_empathize", True, make_perception(), [{"crisis": True}], [], "ok")
    assert decision.state == "followup"
    text = policy.render(decision, {}, None, [])["text"]
    assert text == domain.texts("utter_crisis_resources")[0]


@pytest.mark.parametrize("answer,affirmed", [
    ("yeah", True), ("sometimes", True), ("kind of, yes", True),
    ("no", False), ("no, I'm fine", False), ("I am fine thanks", False), ("yeah no, I'm ok", False),
])
def test_only_a_yes_to_the_checkin_counts_as_a_crisis(engine, answer, affirmed):
    out = talk(engine, ["honestly sometimes I wonder if it's worth going on", answer], sender=f"a-{answer}")
    assert out[0]["custom"]["generator"] == "crisis-checkin"
    assert (out[1]["custom"]["generator"] == "crisis-override") is affirmed


def test_rasas_crisis_route_marks_the_turn_and_resources_are_not_pasted_twice(engine):
    events = [{"event": "user", "text": "the pills are lined up", "message_id": "r-0", "parse_data": {}}]

    def ask(response, evs):
        return engine.nlg({"response": response, "id": None, "arguments": {}, "channel": {"name": "collector"},
                           "tracker": {"sender_id": "r", "slots": {}, "events": list(evs)}})

    # the stand-in detector does not flag this text; Rasa's NLU crisis intent routed it to the scripts
    support = ask("utter_crisis_support", events)
    assert support["text"] in engine.domain.texts("utter_crisis_support")
    assert engine.repository.conversation("r")["turns"][0]["crisis"] is True
    events += [{"event": "bot", "text": support["text"]},
               {"event": "user", "text": "ok, I'll call the line", "message_id": "r-1", "parse_data": {}}]
    again = ask("utter_crisis_resources", events)  # "call the line" read as a request for the numbers
    assert again["text"] in engine.domain.texts("utter_crisis_followup_reaching_out")
    events += [{"event": "bot", "text": again["text"]}, {"event": "user", "text": "help", "message_id": "r-2", "parse_data": {}}]
    assert ask("utter_crisis_resources", events)["text"] in engine.domain.texts("utter_crisis_resources")


@pytest.mark.parametrize("polarity,reasons,state", [
    ("negative", ["concern:0.70"], "checkin"),
    ("positive", ["concern:0.70"], None),  # good news with a nervous classifier: no safety question
    ("positive", ["concern:0.79"], None),
    # a sure classifier after good news ("exams done!! going out tonight" / "one good night and that's it.
    # when i get home i'm taking everything in the bathroom cabinet"): asked however it sounds
    ("positive", ["concern:0.80"], "checkin"),
    ("positive", ["concern:1.00", "imminent:0.40"], "checkin"),
    ("positive", ["concern:0.70", "cue:timing"], "checkin"),  # "I feel at peace now that I've decided when"
    ("positive", ["cue:farewell"], "checkin"),
])
def test_the_checkin_follows_the_feeling_unless_a_cue_matched_or_the_classifier_is_sure(domain_file, polarity, reasons, state):
    domain = DomainResponses.load(domain_file)
    domain.update(DomainResponses.load(ROOT / "safety_responses.yml"))
    perception = make_perception("content" if polarity == "positive" else "sad")
    assert perception.polarity == polarity
    perception.crisis_concern, perception.crisis_reasons = True, reasons
    decision = SafetyPolicy(domain).decide("utter_empathize", True, perception, [], [], "I finally feel at peace")
    assert decision.state == state
    assert decision.responses == (["utter_crisis_checkin"] if state else [])
    perception.crisis_concern = False  # no concern: never a question, cue or not
    assert SafetyPolicy(domain).decide("utter_empathize", True, perception, [], [], "x").state is None


def test_a_sure_concern_is_not_asked_twice_in_a_row():
    from empathy_nlg.safety import STRONG_CONCERN, checkin_reason, concern_level

    perception = make_perception("proud")
    perception.crisis_concern, perception.crisis_reasons = True, ["context-concern-dropped:0.40", "concern:0.97"]
    assert concern_level(perception) == 0.97 and STRONG_CONCERN <= 0.97
    assert checkin_reason(perception) and checkin_reason(perception, just_asked=True) is None
    assert checkin_reason(perception, strong_concern=0.98) is None
    perception.crisis_reasons = ["cue:farewell"]  # a cue still asks right after the question
    assert concern_level(perception) == 0.0 and checkin_reason(perception, just_asked=True)


def test_the_engine_reads_the_sure_concern_level_from_its_settings(domain_file, sqlite_url):
    """``safety.strong_concern`` (validated config) reaches the policy: a sure concern about an upbeat
    message asks at the default, and nothing at a level above 1 (the rule off)."""
    from empathy_nlg.settings import ConfigError

    repo = StateRepository(sqlite_url)
    repo.migrate()
    domain = DomainResponses.load(domain_file)
    domain.update(DomainResponses.load(ROOT / "safety_responses.yml"))
    for level, asked in ((None, True), (1.01, False)):
        overrides = {"state": {"database_url": sqlite_url}, "domain": str(domain_file)}
        if level is not None:
            overrides["safety"] = {"strong_concern": level}
        engine = EmpathyEngine(load_settings(overrides=overrides), perceiver=KeywordPerceiver(), generator=EchoGenerator(),
                               repository=repo, domain=domain)
        perception = make_perception("joyful")
        perception.crisis_concern, perception.crisis_reasons = True, ["concern:1.00"]
        decision = engine.safety.decide("utter_empathize", True, perception, [], [], "one good night and that's it")
        assert (decision.state == "checkin") is asked, level
    with pytest.raises(ConfigError, match="strong_concern"):
        load_settings(overrides={"safety": {"strong_concern": 2}})


@pytest.mark.parametrize("score,floor,state", [
    (0.0, 0.01, None),         # gated out: the detector is sure it is ordinary talk ("I'm dead 😂")
    (0.005, 0.01, None),
    (0.073, 0.01, "checkin"),  # the lowest-scored crisis statement the NLU caught in the measurement
    (0.0, 0.0, "checkin"),     # no classifier (floor 0): the NLU's reading always asks
])
def test_the_nlu_crisis_reading_asks_only_where_the_detector_is_not_sure_it_is_ordinary(domain_file, score, floor, state):
    domain = DomainResponses.load(domain_file)
    domain.update(DomainResponses.load(ROOT / "safety_responses.yml"))
    perception = make_perception("sad")
    perception.crisis_score = score
    decision = SafetyPolicy(domain, nlu_floor=floor).decide("utter_empathize", True, perception, [], [], "x",
                                                            nlu_disagrees=True)
    assert decision.state == state
    assert SafetyPolicy(domain, nlu_floor=floor).decide("utter_empathize", True, None, [], [], "x",
                                                        nlu_disagrees=True).state == "checkin"  # nothing perceived: ask


def test_the_engine_takes_the_floor_from_its_detector(domain_file, sqlite_url):
    from empathy_nlg.perception.crisis import CrisisDetector

    settings = load_settings(overrides={"state": {"database_url": sqlite_url}, "domain": str(domain_file)})
    domain = DomainResponses.load(domain_file)
    domain.update(DomainResponses.load(ROOT / "safety_responses.yml"))
    perceiver = ConcernPerceiver()
    perceiver.crisis = CrisisDetector(None)  # patterns only: no classifier, no floor
    engine = EmpathyEngine(settings, perceiver=perceiver, generator=EchoGenerator(), repository=StateRepository(sqlite_url),
                           domain=domain)
    assert engine.safety.nlu_floor == 0.0
    perceiver.crisis = CrisisDetector((object(), {"threshold": 0.995, "cue_gate": 0.02}))
    engine = EmpathyEngine(settings, perceiver=perceiver, generator=EchoGenerator(), repository=StateRepository(sqlite_url),
                           domain=domain)
    assert engine.safety.nlu_floor == pytest.approx(0.5 * 0.02 / 0.995)
