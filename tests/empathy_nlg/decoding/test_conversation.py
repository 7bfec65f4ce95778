"""The conversation reranker: each term moves the choice the way it should, vetoes, and the engine path."""

from __future__ import annotations

import numpy as np
import pytest

from empathy_nlg.decoding.conversation import Candidate, ConversationReranker, RerankSettings, choose_reply
from tests.empathy_nlg.conftest import make_perception

CHEER = ("congrat", "awesome", "great")


def encode(texts):
    # dim 0: "cheerful" words; dim 1: a constant
    return np.asarray([[1.0 if any(w in t.lower() for w in CHEER) else 0.0, 1.0] for t in texts], dtype=np.float32)


def polarity(emb):  # P(positive situation) from dim 0
    return 0.1 + 0.8 * emb[:, 0]


def reranker(**weights):
    settings = RerankSettings.from_mapping({"weights": weights} if weights else None)
    return ConversationReranker(settings, encode, polarity, None)


def test_polarity_term_answers_bad_news_with_sympathy():
    p = make_perception("sad")
    p.polarity, p.polarity_prob = "negative", 0.95
    cands = [Candidate("Congrats, that's awesome!", "generator", 0.0), Candidate("I'm so sorry, that is hard.", "generator", 0.0)]
    chosen = reranker().choose(cands, ["My dog died"], p, [])
    assert chosen.text.startswith("I'm so sorry")
    p.polarity = "positive"
    chosen = reranker().choose(cands, ["I got the job"], p, [])
    assert chosen.text.startswith("Congrats")


def test_uncertain_perception_makes_polarity_neutral():
    p = make_perception("sad")
    p.polarity_prob = 0.5
    scored = reranker().score([Candidate("Congrats!", "generator", 0.0)], ["x"], p, [])
    assert scored[0].terms["polarity"] == pytest.approx(0.5)


def test_repeats_are_vetoed_and_openings_penalised():
    earlier = ["I'm so sorry to hear that. What's your dog's name?"]
    cands = [Candidate("I'm so sorry to hear that. What's your dog's name?", "generator", 1.0),
             Candidate("I'm so sorry. How are the kids taking it?", "generator", 0.5),
             Candidate("That must be so lonely at home now.", "generator", 0.0)]
    r = reranker(polarity=0, cm=0, grounding=0)
    scored = r.score(cands, ["I don't know how to tell my kids"], None, earlier)
    assert scored[0].vetoed and scored[0].terms["repeat"] == 1.0
    assert scored[1].terms["opening"] == 1.0 and scored[2].terms["opening"] == 0.0
    assert r.choose(cands, ["I don't know how to tell my kids"], None, earlier).text != cands[0].text


def test_all_vetoed_takes_the_least_repetitive():
    earlier = ["a b c d", "e f g h"]
    cands = [Candidate("a b c d", "generator", 1.0), Candidate("e f g h x", "generator", 0.0)]
    assert reranker().choose(cands, ["hi"], None, earlier).text == "e f g h x"


def test_grounding_prefers_taking_up_what_the_user_said():
    cands = [Candidate("That sounds hard.", "generator", 0.0), Candidate("How old is your kitten?", "generator", 0.0)]
    r = reranker(polarity=0, cm=0)
    scored = {c.text: c.terms["grounding"] for c in r.score(cands, ["We adopted a kitten today"], None, [])}
    assert scored == {"That sounds hard.": 0.0, "How old is your kitten?": 1.0}
    assert r.choose(cands, ["We adopted a kitten today"], None, []).text == "How old is your kitten?"


def test_exemplars_get_the_prior_and_details_list_every_term():
    r = reranker()
    cands = [Candidate("I see.", "generator", -1.0), Candidate("Oh no, what happened?", "exemplar", None)]
    chosen = r.choose(cands, ["something"], None, [])
    details = r.describe(cands, chosen)
    assert details["exemplar_prior"] == 0.3 and {c["source"] for c in details["candidates"]} == {"generator", "exemplar"}
    assert set(details["candidates"][0]) >= {"gen", "polarity", "cm", "grounding", "repeat", "opening", "total", "vetoed"}
    assert [c for c in details["candidates"] if c["source"] == "exemplar"][0]["gen"] == 0.3


def test_settings_reject_unknown_terms():
    with pytest.raises(ValueError, match="unknown terms"):
        RerankSettings.from_mapping({"weights": {"humour": 1.0}})
    with pytest.raises(ValueError, match="unknown keys"):
        RerankSettings.from_mapping({"temperature": 1.0})


def test_engine_reranks_against_earlier_replies(domain_file, sqlite_url):
    from empathy_nlg.domain import DomainResponses
    from empathy_nlg.engine import EmpathyEngine
    from empathy_nlg.generators.base import GenerationResult
    from empathy_nlg.settings import load_settings
    from empathy_nlg.state.repository import StateRepository
    from tests.empathy_nlg.conftest import EchoGenerator, KeywordPerceiver

    class Beams(EchoGenerator):
        def generate(self, requests):
            self.requests.extend(requests)
            texts = ["I'm so sorry to hear that.", "That must be so hard for your family."]
            return [GenerationResult(text=texts[0], generator="beams", version="t",
                                     candidates=[{"text": t, "score": -i} for i, t in enumerate(texts)]) for _ in requests]

    class Embedding(KeywordPerceiver):
        def embed(self, texts):
            return encode(texts)

    settings = load_settings(overrides={"state": {"database_url": sqlite_url}, "domain": str(domain_file)})
    repo = StateRepository(sqlite_url)
    repo.migrate()
    gen = Beams()
    engine = EmpathyEngine(settings, perceiver=Embedding(), generator=gen, repository=repo,
                           domain=DomainResponses.load(domain_file),
                           reranker=ConversationReranker(RerankSettings(), encode, polarity, None))
    events = [{"event": "user", "text": "My dog died", "message_id": "a", "parse_data": {}}]
    first = engine.nlg({"response": "utter_empathize", "id": None, "arguments": {}, "channel": {"name": "collector"},
                        "tracker": {"sender_id": "r", "slots": {}, "events": events}})
    assert first["text"] == "I'm so sorry to hear that." and first["custom"]["generation"]["source"] == "generator"
    events += [{"event": "bot", "text": first["text"]}, {"event": "user", "text": "I miss him", "message_id": "b", "parse_data": {}}]
    second = engine.nlg({"response": "utter_empathize", "id": None, "arguments": {}, "channel": {"name": "collector"},
                         "tracker": {"sender_id": "r", "slots": {}, "events": events}})
    assert second["text"] == "That must be so hard for your family."
    assert gen.requests[-1].earlier_replies == ["I'm so sorry to hear that."]
    rerank = second["custom"]["generation"]["rerank"]
    assert rerank["chosen"] == second["text"] and any(c["vetoed"] for c in rerank["candidates"])


def test_choose_reply_adds_exemplars_for_the_recent_story_and_keeps_the_generator_without_a_reranker():
    from types import SimpleNamespace

    from empathy_nlg.generators.base import GenerationResult

    result = GenerationResult(text="I'm so sorry to hear that.", generator="g", version="t",
                              candidates=[{"text": "I'm so sorry to hear that.", "score": 0.0}])
    asked = {}

    class Index:
        def nearest(self, query, k, min_score, exclude):
            asked.update(query=query, k=k, min_score=min_score, exclude=list(exclude))
            return [SimpleNamespace(reply="That must be so hard. How old was he?")]

    embedded = []

    def embed(texts):
        embedded.append(list(texts))
        return np.asarray([[1.0, 0.0], [0.0, 1.0], [0.0, 1.0]][: len(texts)], dtype=np.float32)

    turns = ["hi", "My dog died this morning", "I keep expecting him at the door"]
    earlier = ["I'm so sorry to hear that."]
    text, source, details = choose_reply(result, turns, make_perception(), earlier, reranker(), Index(), embed, k=2, min_score=0.4)
    # the story's last three messages, the latest weighted 1 and the two before 0.5, normalised
    assert embedded == [turns] and asked["k"] == 2 and asked["min_score"] == 0.4 and asked["exclude"] == earlier
    assert np.allclose(asked["query"], np.asarray([0.5, 1.5]) / np.linalg.norm([0.5, 1.5]))
    # the generator's only candidate repeats an earlier reply: the exemplar answers
    assert (text, source) == ("That must be so hard. How old was he?", "exemplar") and details["chosen"] == text
    # no reranker: the generator's reply as it is, no exemplar looked up
    embedded.clear()
    assert choose_reply(result, turns, None, earlier, None, Index(), embed) == ("I'm so sorry to hear that.", "generator", None)
    assert embedded == []


def test_echoes_of_the_user_are_vetoed():
    cands = [Candidate("🐱❤️", "generator", 1.0), Candidate("sister, got married on saturday", "generator", 0.9),
             Candidate("How was the wedding?", "generator", 0.0)]
    r = reranker()
    assert r.choose(cands[:1] + cands[2:], ["🐱❤️"], None, []).text == "How was the wedding?"
    scored = r.score(cands, ["my sister got married on saturday"], None, [])
    assert scored[1].vetoed and scored[1].terms["echo"] == 1.0 and not scored[2].vetoed


def test_polarity_guard_vetoes_sympathy_for_good_news_only_when_perception_is_confident():
    p = make_perception("proud")
    p.polarity, p.polarity_prob = "positive", 0.8
    cands = [Candidate("I'm so sorry to hear that. I hope he's doing well.", "generator", 1.0),
             Candidate("What a moment! How old is he?", "generator", 0.0)]
    r = reranker(polarity=0)  # the lexical guard alone
    assert r.choose(cands, ["my son took his first steps"], p, []).text.startswith("What a moment")
    p.polarity_prob = 0.52  # unsure: no veto
    assert not any(c.vetoed for c in r.score(cands, ["my son took his first steps"], p, []))
    p.polarity, p.polarity_prob = "negative", 0.9
    bad = [Candidate("Congrats, that's awesome!", "generator", 1.0), Candidate("Oh no. What happened?", "generator", 0.0)]
    assert r.choose(bad, ["I failed my exam"], p, []).text == "Oh no. What happened?"


@pytest.mark.parametrize("text,expected", [
    ("I'm so sorry to hear that.", "sympathy"), ("Congrats, that's awesome!", "celebration"),
    ("Oh no, but congrats anyway", None), ("What's his name?", None),
    # v2: what else a person reads as celebration or condolence (heldout_o.jsonl, engine mode)
    ("I'm sure he'll be happy for you!", "celebration"), ("That's nice of him. What kind of coffee was it?", "celebration"),
    ("That sounds like fun. What kind of ball is it?", "celebration"), ("That sounds really hard.", "sympathy"),
    ("That's so sad, how long had you had her?", "sympathy"), ("Hang in there.", "sympathy"),
    ("Nice. What did you cook?", None), ("It sounds like you had a long day.", None),
])
def test_tone(text, expected):
    from empathy_nlg.text import tone

    assert tone(text) == expected


def test_replacement_guard_never_offers_a_new_dog_for_one_the_user_lost():
    p = make_perception("devastated")
    p.polarity, p.polarity_prob = "negative", 0.9
    said = ["My dog died this morning.", "I had him for 14 years."]
    cands = [Candidate("I'm so sorry. I hope you find a new dog soon.", "generator", 1.0),
             Candidate("I'm so sorry. Fourteen years is a lifetime together.", "generator", 0.0)]
    r = reranker(polarity=0)
    assert r.choose(cands, said, p, []).text.startswith("I'm so sorry. Fourteen")
    scored = r.score(cands, said, p, [])
    assert scored[0].vetoed and scored[0].terms["replaces"] == 1.0 and not scored[1].vetoed
    # a new job after a lay-off is a fair thing to say; a dog nobody mentioned is not a replacement
    job = [Candidate("I hope you find a new job soon.", "generator", 1.0)]
    assert not r.score(job, ["I got laid off after 9 years"], p, [])[0].vetoed
    assert not r.score([Candidate("Maybe a new dog would cheer you up?", "generator", 1.0)],
                       ["I failed my exam"], p, [])[0].vetoed
    # good news: no guard ("another kitten!" to a new kitten is not tone-deaf); switched off: none either
    p.polarity = "positive"
    assert not r.score([Candidate("You should get another kitten!", "generator", 1.0)], ["we adopted a kitten"], p, [])[0].vetoed
    p.polarity = "negative"
    off = ConversationReranker(RerankSettings.from_mapping({"replacement_guard": False}), encode, polarity, None)
    assert not off.score(cands, said, p, [])[0].vetoed


@pytest.mark.parametrize("reply,said,expected", [
    ("I hope you find a new dog soon.", ["my dog died"], "dog"),
    ("You will find another husband one day.", ["my husband left me"], "husband"),
    ("I am sure you will be able to find a new girlfriend.", ["my girlfriend can't come for a year"], "girlfriend"),
    ("Are you going to get new kittens?", ["our kitten is sick"], "kittens"),
    ("I hope you find a new job soon.", ["I lost my job"], None),
    ("I hope you find a new dog soon.", ["my cat died"], None),
    ("How is your dog doing?", ["my dog is sick"], None),
])
def test_replaces(reply, said, expected):
    from empathy_nlg.text import replaces

    assert replaces(reply, said) == expected


def test_story_polarity_reads_the_message_in_the_light_of_the_story():
    from empathy_nlg.decoding.conversation import story_polarity

    p = make_perception("sad")
    p.polarity, p.polarity_prob = "negative", 0.7  # "he danced with my grandma", alone
    assert story_polarity(p, [0.95, 0.9], 0.0) is p and story_polarity(p, [], 0.5) is p
    heard = story_polarity(p, [0.95, 0.9, 0.97], 0.5)  # … in a wedding story
    assert heard.polarity == "positive" and heard.polarity_prob == pytest.approx(0.5 * 0.3 + 0.5 * 0.94)
    assert (p.polarity, p.polarity_prob) == ("negative", 0.7)  # what was perceived is left as it was
    clear = make_perception("devastated")
    clear.polarity, clear.polarity_prob = "negative", 0.99  # "but my mom is really upset", clearly bad news
    assert story_polarity(clear, [0.9], 0.5).polarity == "negative"
    assert story_polarity(None, [0.9], 0.5) is None


def test_parrot_veto_never_hands_the_users_words_back():
    said = ["it's about 3,200 more a year which isn't life changing but it means we can actually put something aside each month"]
    cands = [Candidate("That's great of you. It means we can actually put something aside each month.", "generator", 1.0),
             Candidate("That's a great way to look at it.", "generator", 0.0)]
    on = ConversationReranker(RerankSettings.from_mapping(None), encode, polarity, None)  # on by default (6 words)
    assert on.choose(cands, said, None, []).text == "That's a great way to look at it."
    assert on.score(cands, said, None, [])[0].terms["parrot"] == 1.0
    off = ConversationReranker(RerankSettings.from_mapping({"parrot_words": 0}), encode, polarity, None)
    assert not any(c.vetoed for c in off.score(cands, said, None, []))


@pytest.mark.parametrize("reply,said,n,expected", [
    ("It means we can actually put something aside each month.", ["but it means we can actually put something aside"], 6, True),
    ("It means we can put money aside.", ["but it means we can actually put something aside"], 6, False),  # 4 words in a row
    ("short reply", ["short reply"], 6, False),  # shorter than n: never a parrot
    ("Oh no, your cat Milo is missing again?", ["my cat Milo is missing again"], 4, True),
])
def test_parrots(reply, said, n, expected):
    from empathy_nlg.text import parrots

    assert parrots(reply, said, n) is expected


def test_when_every_candidate_is_vetoed_an_echo_of_the_user_is_the_last_choice():
    """dev.jsonl: every beam began with the user's message; the one chosen was the message alone."""
    said = ["moved to Berlin for work two months ago"]
    cands = [Candidate("I moved to Berlin for work two months ago", "generator", 1.0),  # echo and parrot
             Candidate("I moved to Berlin for work two months ago. How long have you been there?", "generator", 0.5)]  # parrot
    r = reranker()
    scored = {c.text: c for c in r.score(cands, said, None, [])}
    assert all(c.vetoed for c in scored.values()) and scored[cands[0].text].terms["echo"] == 1.0
    assert r.choose(cands, said, None, []).text == cands[1].text
