from __future__ import annotations

from rasa.shared.core.events import ActionExecuted, BotUttered, UserUttered
from rasa.shared.core.trackers import DialogueStateTracker
from rasa.shared.nlu.training_data.message import Message
from rasa.shared.nlu.training_data.training_data import TrainingData

from agent.cause_extractor import CauseExtractor
from agent.cm_predictor import CommunicationMechanismPredictor
from agent.crisis_detector import CrisisDetector
from agent.emotion_perceiver import EmotionPerceiver
from tests.agent.conftest import perception


def build(cls, graph_context, url, **config):
    storage, resource, context = graph_context
    return cls.create({**cls.get_default_config(), "engine_url": url, **config}, storage, resource, context)


def tracker_with_history():
    return DialogueStateTracker.from_events(
        "alice",
        [
            ActionExecuted("action_listen"),
            UserUttered("my dog died", intent={"name": "share_feeling", "confidence": 0.9}),
            BotUttered("I'm so sorry."),
            ActionExecuted("action_listen"),
        ],
    )


def message(text="I keep thinking about him", intent="share_feeling"):
    m = Message(data={"text": text, "message_id": "m-2"})
    m.set("intent", {"name": intent, "confidence": 0.8}, add_to_output=True)
    m.set("intent_ranking", [{"name": intent, "confidence": 0.8}], add_to_output=True)
    return m


def entity(m, name):
    found = [e for e in m.get("entities", []) if e["entity"] == name]
    return found[0] if found else None


def test_pipeline_calls_perceive_once_and_exposes_everything(graph_context, fake_engine):
    components = [build(c, graph_context, fake_engine.url) for c in (EmotionPerceiver, CauseExtractor, CommunicationMechanismPredictor, CrisisDetector)]
    m = message()
    tracker = tracker_with_history()
    for c in components:
        c.process([m], tracker)
    assert len(fake_engine.requests) == 1  # one /perceive per message
    sent = fake_engine.requests[0]["body"]
    assert sent["text"] == "I keep thinking about him"
    assert sent["history"] == [{"role": "user", "text": "my dog died"}, {"role": "bot", "text": "I'm so sorry."}]
    assert sent["sender_id"] == "alice" and sent["turn_index"] == 1 and sent["message_id"] == "m-2"
    assert entity(m, "emotion")["value"] == "sad" and entity(m, "emotion")["confidence_entity"] == 0.7
    assert entity(m, "polarity")["value"] == "negative"
    assert entity(m, "cm")["value"] == "ER+EX"
    assert entity(m, "crisis") is None and m.get("intent")["name"] == "share_feeling"
    assert m.get("emotion_causes")[0]["text"] == "my dog died"
    output = m.as_dict(only_output_properties=True)
    assert output["empathy"]["available"] is True and output["emotion_ranking"][0]["label"] == "sad"
    assert output["cm_probs"]["ER"] == 0.8


def test_crisis_overrides_the_intent(graph_context, fake_engine):
    fake_engine.handler = lambda path, body: (200, perception("devastated", crisis=True))
    m = message("i don't want to be here anymore", intent="share_feeling")
    build(CrisisDetector, graph_context, fake_engine.url).process([m], tracker_with_history())
    assert m.get("intent") == {"name": "crisis", "confidence": 1.0}
    assert m.get("intent_ranking")[0]["name"] == "crisis"
    assert [r["name"] for r in m.get("intent_ranking")].count("crisis") == 1
    assert entity(m, "crisis")["value"] is True
    assert m.get("crisis_override")["previous_intent"] == "share_feeling"


def test_a_flag_only_the_earlier_messages_raise_goes_to_the_listener_where_the_engine_decides(graph_context, fake_engine):
    """'context-only': the engine's safety policy knows what was said since (the urgent follow-up, an
    all-clear, or the resources it renders itself); the crisis rule would only paste the domain's two
    paragraphs again, since the crisis route accepts nothing else from the engine."""
    p = perception("sad", crisis=True)
    p["crisis_reasons"] = ["window:plan", "context-only"]
    fake_engine.handler = lambda path, body: (200, p)
    for said in ("crisis", "thank", "share_feeling"):
        m = message("no no I'm fine, I was joking", intent=said)
        build(CrisisDetector, graph_context, fake_engine.url).process([m], tracker_with_history())
        assert m.get("intent")["name"] == "share_feeling" and m.get("intent_ranking")[0]["name"] == "share_feeling"
        assert "crisis" not in [r["name"] for r in m.get("intent_ranking")] and entity(m, "crisis") is None
        assert m.get("crisis_override") == {"context_only": True, "previous_intent": said, "reasons": p["crisis_reasons"]}
    p["crisis_reasons"] = ["pattern:plan"]  # flagged on its own: the crisis rule, as always
    m = message("I have the pills here")
    build(CrisisDetector, graph_context, fake_engine.url).process([m], tracker_with_history())
    assert m.get("intent")["name"] == "crisis" and entity(m, "crisis")["value"] is True


def test_the_nlu_crisis_intent_yields_to_the_listener_and_asks_unless_the_engine_heard_carefree_good_news(graph_context, fake_engine):
    def judged(polarity, concern=False):
        p = perception("excited" if polarity == "positive" else "sad")
        p.update({"polarity": polarity, "crisis_concern": concern})
        fake_engine.handler = lambda path, body: (200, p)
        m = message("gonna try making sauce this weekend, wish me luck", intent="crisis")
        build(CrisisDetector, graph_context, fake_engine.url).process([m], tracker_with_history())
        return m

    m = judged("positive")
    assert m.get("intent")["name"] == "share_feeling" and m.get("intent_ranking")[0]["name"] == "share_feeling"
    assert "crisis" not in [r["name"] for r in m.get("intent_ranking")]
    assert m.get("crisis_override")["demoted"] == "crisis" and entity(m, "crisis") is None
    assert m.get("crisis_override")["ask"] is False
    # a negative message the engine did not flag: the listener too, but the engine is told to ask
    # the safety question (recall first, without the resources over a message it did not flag)
    asked = judged("negative")
    assert asked.get("intent")["name"] == "share_feeling" and entity(asked, "crisis") is None
    assert asked.get("crisis_override")["demoted"] == "crisis" and asked.get("crisis_override")["ask"] is True
    for kept in (judged("negative", concern=True), judged("positive", concern=True)):  # both worried: the resources stay
        assert kept.get("intent")["name"] == "crisis" and kept.get("crisis_override") is None
    m = message("i got the job!!", intent="share_feeling")  # other intents are never touched
    build(CrisisDetector, graph_context, fake_engine.url).process([m], tracker_with_history())
    assert m.get("intent")["name"] == "share_feeling" and m.get("crisis_override") is None


def test_engine_down_degrades_gracefully(graph_context):
    m = message()
    c = build(EmotionPerceiver, graph_context, "http://127.0.0.1:9", timeout_s=0.5, retries=0)
    c.process([m], tracker_with_history())
    assert m.get("empathy")["available"] is False and "did not answer" in m.get("empathy")["error"]
    assert entity(m, "emotion") is None and m.get("intent")["name"] == "share_feeling"
    # the breaker now fails fast instead of waiting for another timeout
    m2 = message()
    c.process([m2], tracker_with_history())
    assert "cooling down" in m2.get("empathy")["error"]


def test_engine_refusal_is_not_retried(graph_context, fake_engine):
    fake_engine.handler = lambda path, body: (422, {"error": "invalid request: text is blank"})
    m = message()
    build(EmotionPerceiver, graph_context, fake_engine.url, retries=3).process([m], None)
    assert len(fake_engine.requests) == 1
    assert "HTTP 422" in m.get("empathy")["error"]


def test_engine_loading_is_retried(graph_context, fake_engine):
    answers = iter([(503, {"error": "loading"}), (200, perception("joyful"))])
    fake_engine.handler = lambda path, body: next(answers)
    m = message()
    build(EmotionPerceiver, graph_context, fake_engine.url, retries=1).process([m], None)
    assert entity(m, "emotion")["value"] == "joyful" and len(fake_engine.requests) == 2


def test_commands_and_training_data_are_left_alone(graph_context, fake_engine):
    c = build(EmotionPerceiver, graph_context, fake_engine.url)
    m = Message(data={"text": "/greet"})
    c.process([m], None)
    assert fake_engine.requests == [] and m.get("empathy")["available"] is False
    data = TrainingData([Message(data={"text": "hello", "intent": "greet"})])
    assert c.process_training_data(data) is data


def test_token_is_sent(graph_context, fake_engine, monkeypatch):
    monkeypatch.setenv("EMPATHY_NLG_TOKEN", "s3cret")
    build(EmotionPerceiver, graph_context, fake_engine.url).process([message()], None)
    assert fake_engine.requests[0]["headers"]["Authorization"] == "Bearer s3cret"


def test_story_router_keeps_a_story_going_and_leaves_clear_requests(graph_context):
    from agent.story_router import StoryRouter

    storage, resource, context = graph_context
    router = StoryRouter.create(StoryRouter.get_default_config(), storage, resource, context)

    def msg(text, intent, confidence=0.99):
        m = message(text, intent=intent)
        m.set("intent", {"name": intent, "confidence": confidence}, add_to_output=True)
        return m

    story = tracker_with_history()
    cases = [  # (text, predicted intent, mid-story tracker?, expected intent)
        ("the restaurant I work at is closing for good", "out_of_scope", False, "share_feeling"),
        ("I was a line cook there for 3 years", "ask_resources", True, "share_feeling"),
        ("can you give me the crisis line number again", "ask_resources", True, "ask_resources"),
        ("ok, I'll call the line", "ask_resources", True, "share_feeling"),
        ("help", "ask_resources", True, "ask_resources"),
        ("hlep", "ask_resources", True, "ask_resources"),
        ("police gave me a crime number", "ask_resources", True, "share_feeling"),  # a number mentioned, not asked for
        ("he blocked my number after the fight", "ask_resources", False, "share_feeling"),
        ("the insurance sent a claim number and nothing else", "ask_resources", True, "share_feeling"),
        ("I need the number", "ask_resources", False, "ask_resources"),
        ("can I text a number instead", "ask_resources", True, "ask_resources"),
        ("number please", "ask_resources", True, "ask_resources"),
        ("the number", "ask_resources", False, "ask_resources"),
        ("what was that number again?", "ask_resources", True, "ask_resources"),
        ("great.", "greet", True, "share_feeling"),
        ("what's the weather tomorrow", "out_of_scope", False, "out_of_scope"),
        ("hello", "greet", False, "greet"),
        ("I want to end it", "crisis", True, "crisis"),
        ("thanks for listening", "thank", True, "thank"),
        ("thanks. i think he'd have really liked Tom", "thank", True, "share_feeling"),  # the story goes on
        ("Thanks, that's reassuring. She's asleep on my chest right now.", "thank", True, "share_feeling"),
        ("Thank you, I will!", "thank", True, "thank"),
        ("haha yes. thank u!!", "thank", True, "thank"),
        ("thank you so much for listening, that really helps", "thank", True, "thank"),
        ("cheers", "thank", True, "thank"),
        ("thank you, it helps to get it off my chest", "thank", True, "thank"),  # tests/test_stories.yml
        ("thanks for hearing me out", "thank", True, "thank"),
        ("appreciate you listening", "thank", True, "thank"),
        ("ok thanks again for the advice", "thank", False, "thank"),
        ("أنا متعب جدا من العمل", "out_of_scope", False, "share_feeling"),  # another script, first message
        ("我的狗昨天死了", "greet", False, "share_feeling"),
        ("😢😢💔", "ask_help", False, "share_feeling"),  # emoji alone
        ("🙏", "affirm", False, "share_feeling"),
        ("???", "out_of_scope", False, "out_of_scope"),  # no letters, no pictures: left alone
        ("Привет, позвони на горячую линию", "ask_resources", False, "ask_resources"),  # requests keep their intent
        ("до свидания", "goodbye", False, "goodbye"),
        # greetings, goodbyes and thanks that are the story (heldout_j.jsonl through the full stack)
        ("took Pepper to the vet this morning", "greet", False, "share_feeling"),  # no greeting at the start
        ("hi so update on the car, they say it's a write-off", "greet", False, "share_feeling"),
        ("good morning! guess what, I passed my driving test", "greet", False, "share_feeling"),
        ("hey, how are you doing today?", "greet", False, "greet"),
        ("hi, it's me again", "greet", False, "greet"),
        ("goodbye old house I guess", "goodbye", True, "share_feeling"),  # a farewell to something
        ("bye bye old flat", "goodbye", False, "share_feeling"),
        ("said goodbye to the whole team today, felt so weird", "goodbye", True, "share_feeling"),
        ("ok bye, my mum's calling", "goodbye", True, "goodbye"),
        ("gotta go, the kids are home", "goodbye", True, "goodbye"),
        ("see you tomorrow then, thanks for everything", "goodbye", True, "goodbye"),
        ("bye my friend", "goodbye", True, "goodbye"),
        ("anyway, bus tomorrow", "thank", True, "share_feeling"),  # no thanks in it
        ("you're the best", "thank", True, "thank"),
        # a statement that asks for nothing is the story; a request stays a request (heldout_o/p.jsonl)
        ("Priya said yes 💍💍💍", "ask_help", False, "share_feeling"),
        ("got the Berlin offer 🎉", "out_of_scope", False, "share_feeling"),
        ("well the smoke alarm works, so that's something", "out_of_scope", False, "share_feeling"),
        ("book me a flight to Berlin ✈️", "out_of_scope", False, "out_of_scope"),
        ("what's the weather tomorrow ☀️", "out_of_scope", False, "out_of_scope"),
        ("can you order me a taxi", "out_of_scope", False, "out_of_scope"),  # says "me", still a request
        ("can you help 🙏", "ask_help", False, "ask_help"),
        ("not sure how this works 🤔 help", "ask_help", False, "ask_help"),
        ("is it petty to label the milk", "out_of_scope", False, "out_of_scope"),  # a question keeps its reading
        # a yes or no that tells the story (DIET: affirm 0.98 → the help text at a conversation's start)
        ("Priya said yes 💍💍💍", "affirm", False, "share_feeling"),
        ("nope, never again after that trip", "deny", False, "share_feeling"),
        ("yes I think so", "affirm", False, "affirm"),  # tests/test_stories.yml
        ("no not at the moment", "deny", False, "deny"),
        ("yes, I want to talk about it", "affirm", False, "affirm"),
    ]
    for text, intent, mid, expected in cases:
        m = msg(text, intent)
        tracker = story if mid else DialogueStateTracker.from_events("bob", [ActionExecuted("action_listen")])
        router.process([m], tracker)
        assert m.get("intent")["name"] == expected, (text, m.get("intent"))
        if expected != intent:
            assert m.get("story_router")["previous_intent"] == intent


def test_story_router_reads_a_plain_answer_after_a_non_listener_action_and_a_forget_without_forgetting_as_the_story(graph_context):
    """heldout_j.jsonl through the full stack: "I keep reaching for my phone to tell him stuff" was
    read as forget_persona (0.91), and the "yeah" after it got utter_default (no rule answers an
    affirm after action_forget_persona)."""
    from agent.story_router import StoryRouter

    storage, resource, context = graph_context
    router = StoryRouter.create(StoryRouter.get_default_config(), storage, resource, context)

    def after(action):
        return DialogueStateTracker.from_events("carol", [
            ActionExecuted("action_listen"),
            UserUttered("Tom and I broke up last night", intent={"name": "share_feeling", "confidence": 1.0}),
            ActionExecuted(action), BotUttered("Why did you break up?"), ActionExecuted("action_listen")])

    def routed(text, intent, tracker):
        m = message(text, intent=intent)
        m.set("intent", {"name": intent, "confidence": 0.99}, add_to_output=True)
        router.process([m], tracker)
        return m.get("intent")["name"]

    assert routed("I keep reaching for my phone to tell him stuff", "forget_persona", after("utter_empathize")) == "share_feeling"
    assert routed("please forget everything I told you", "forget_persona", after("utter_empathize")) == "forget_persona"
    assert routed("yeah", "affirm", after("action_forget_persona")) == "share_feeling"
    assert routed("nope", "deny", after("utter_you_are_welcome")) == "share_feeling"
    # after the listener, the domain's rules answer a plain answer: the intent stays (tests/test_stories.yml)
    assert routed("yeah", "affirm", after("utter_empathize")) == "affirm"
    assert routed("nah not really", "deny", after("utter_empathize")) == "deny"
    # no story yet: the start-of-conversation rules answer it
    fresh = DialogueStateTracker.from_events("dan", [ActionExecuted("action_listen"), UserUttered("hi", intent={"name": "greet"}),
                                                     ActionExecuted("utter_greet"), ActionExecuted("action_listen")])
    assert routed("yes", "affirm", fresh) == "affirm"


def test_every_request_of_the_nlu_data_reads_as_one_even_with_an_emoji():
    """The statement rule never takes a request the classifier was trained on: each
    ``out_of_scope``/``ask_help`` example, alone or with an emoji added, keeps its intent."""
    from pathlib import Path

    import yaml

    from agent.story_router import REQUEST_INTENTS, StoryRouter

    nlu = yaml.safe_load((Path(__file__).resolve().parents[2] / "data" / "nlu.yml").read_text())
    for intent in REQUEST_INTENTS:
        examples = [line[2:].strip() for item in nlu["nlu"] if item.get("intent") == intent
                    for line in item["examples"].splitlines() if line.strip()]
        assert len(examples) >= 20
        rerouted = [t for t in examples for e in ("", " 🎉", " 😊") if StoryRouter.reason(intent, 0.99, t + e, False, {}) is not None]
        assert rerouted == [], (intent, rerouted)


def test_no_greeting_goodbye_thank_you_or_request_to_forget_of_the_nlu_data_is_read_as_a_story_going_on():
    """The router keeps every greeting, goodbye, thank-you, request to forget and plain yes or no the
    classifier was trained on."""
    from pathlib import Path

    import yaml

    from agent.story_router import StoryRouter

    nlu = yaml.safe_load((Path(__file__).resolve().parents[2] / "data" / "nlu.yml").read_text())
    for intent in ("greet", "goodbye", "thank", "forget_persona", "affirm", "deny"):
        examples = [line[2:].strip() for item in nlu["nlu"] if item.get("intent") == intent
                    for line in item["examples"].splitlines() if line.strip()]
        assert len(examples) >= 20
        for mid_story in (False, True):
            rerouted = [t for t in examples if intent != "greet" or not mid_story
                        if StoryRouter.reason(intent, 0.99, t, mid_story, {}) is not None]
            assert rerouted == [], (intent, rerouted)
