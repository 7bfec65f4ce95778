"""The persona extractor: lasting first-person facts in, feelings and momentary states out."""

from __future__ import annotations

import pytest

from empathy_nlg.persona import PersonaExtractor, PersonaFact, extract_safely, fact_key, normalise_fact, persona_text, unique_facts


@pytest.fixture(scope="module")
def extractor():
    return PersonaExtractor()  # the project's spaCy pipeline (knowledge.seeds.load_spacy)


POSITIVE = {
    "I have two kids.": ["I have two kids"],
    "I work as a nurse": ["I work as a nurse"],
    "My dog is called Max.": ["My dog is called Max"],
    "I'm 34.": ["I'm 34"],
    "I am 34 years old": ["I am 34 years old"],
    "I live in Leeds": ["I live in Leeds"],
    "We have a cat named Tom": ["We have a cat named Tom"],
    "I have diabetes": ["I have diabetes"],
    "I'm a teacher": ["I'm a teacher"],
    "I've been a nurse for ten years": ["I've been a nurse for ten years"],
    "I was born in Poland": ["I was born in Poland"],
    "I grew up in Manchester": ["I grew up in Manchester"],
    "My wife's name is Anna": ["My wife's name is Anna"],
    "my name is Sam": ["My name is Sam"],
    "My son is 5": ["My son is 5"],
    "My sister lives in Spain": ["My sister lives in Spain"],
    "I love hiking": ["I love hiking"],
    "I play the guitar": ["I play the guitar"],
    "I'm vegan": ["I'm vegan"],
    "I'm from Glasgow": ["I'm from Glasgow"],
    "I'm retired": ["I'm retired"],
    "We are married": ["We are married"],
    "I'm allergic to peanuts": ["I'm allergic to peanuts"],
    "I'm working as a software engineer": ["I'm working as a software engineer"],
    "I study law at university": ["I study law at university"],
    "I've got two cats": ["I've got two cats"],
    "my kids are 4 and 7": ["My kids are 4 and 7"],
    # discourse words and punctuation go; coordinated clauses are facts of their own
    "Well, I have three grandchildren!": ["I have three grandchildren"],
    "I have two kids and I work as a nurse.": ["I have two kids", "I work as a nurse"],
    "I'm a single dad and my daughter is 12": ["I'm a single dad", "My daughter is 12"],
    # a fact inside an emotional message is still found; the feeling is not
    "I'm exhausted. I work nights at the hospital": ["I work nights at the hospital"],
    # a name the parser reads as a complement; a comma splice's first clause; pastimes in the present
    "My brother's name is Tomasz.": ["My brother's name is Tomasz"],
    "I'm a baker, been up at four every day for twenty years.": ["I'm a baker"],
    "I'm a carpenter, I've built houses since I left school.": ["I'm a carpenter"],
    "I knit jumpers for the whole family.": ["I knit jumpers for the whole family"],
    "I swim every morning before work": ["I swim every morning before work"],
    # habits and roles outside the relation verbs, courses in the progressive, moves in the past
    "I drive a bus for the city.": ["I drive a bus for the city"],
    "I look after my dad, he has dementia.": ["I look after my dad"],
    "I keep bees in my back garden.": ["I keep bees in my back garden"],
    "my grandson Leo stays with us every weekend.": ["My grandson Leo stays with us every weekend"],
    "I'm training to be a midwife.": ["I'm training to be a midwife"],
    "I'm learning to drive.": ["I'm learning to drive"],
    "I'm doing a PhD in history.": ["I'm doing a PhD in history"],
    "I moved here from Poland two years ago.": ["I moved here from Poland two years ago"],
    "I moved to a new state and don't know anyone.": ["I moved to a new state"],
    # the speaker in a pair of subjects; a lasting state in the present perfect
    "My husband and I run a small bakery in town.": ["My husband and I run a small bakery in town"],
    "I've been married for thirty years.": ["I've been married for thirty years"],
}

NEGATIVE = [
    # feelings and moods
    "I am sad", "I feel tired", "I am happy", "I'm worried about my exam", "I'm so tired today",
    "My day was awful", "My mom is sick", "I'm sad and my dog is sick",
    # momentary states and events
    "I'm going to the shop", "I have a headache today", "I'm having a bad day", "I'm at work",
    "my best friend is moving away", "I lost my job", "My car broke down this morning", "I got a new phone",
    "I have a question", "I have no idea", "We had a fight", "I have been feeling down lately",
    # negated, hypothetical, wishes, modal
    "I don't have kids", "I do not live in London anymore", "I'm not a nurse", "If I had a dog I would walk it",
    "I would like to be a doctor", "I want to live in Spain", "I would have a dog if I could",
    # questions
    "Do I have time?", "Am I a bad person", "Can I tell you something", "Do you think I'm a good mother?",
    # the past
    "I had a dog when I was little", "I was a nurse", "I was retired",
    # a pastime done once or now, not a habit; a reported clause
    "I painted the fence yesterday", "I'm painting the kitchen", "I think I'm a failure", "she says I'm a genius",
    # no first-person subject / object pronouns
    "My head hurts", "I love you", "I like it", "I think so", "You have two kids", "She works as a nurse",
    "forget what I told you", "delete everything you know about me", "",
    # a thought, a passing act or one event in the present simple is no habit
    "I keep replaying it in my head", "I need a new phone", "my car needs a new tyre", "I look forward to the weekend",
    "I fly into Colorado Thursday", "We move to Osaka in 3 weeks", "my son starts school next week",
    "I write to the landlord 5 times", "So I walk in and my dog jumps on me", "I'm doing the dishes",
    "I moved the sofa", "I'm learning a lot", "I was married once", "My husband and his brother run a bakery",
]


@pytest.mark.parametrize("text, expected", list(POSITIVE.items()))
def test_persona_sentences_are_found(extractor, text, expected):
    facts = extractor.extract(text)
    assert [f.text for f in facts] == expected
    assert all(f.source == text for f in facts)


@pytest.mark.parametrize("text", NEGATIVE)
def test_feelings_momentary_states_questions_and_negations_are_not_persona(extractor, text):
    assert extractor.extract(text) == []


def test_near_identical_facts_are_kept_once(extractor):
    facts = extractor.extract("I'm a nurse. I am a nurse! i am  a Nurse.")
    assert [f.text for f in facts] == ["I'm a nurse"]
    assert normalise_fact("I'm a Nurse.") == normalise_fact("i am   nurse") == "i am nurse"
    assert normalise_fact("I've got two cats") == normalise_fact("I have two cats")
    assert fact_key("I work as a nurse") == fact_key("  i WORK as nurse. ") != fact_key("I work as a teacher")
    assert len(fact_key("x")) == 64
    assert [f.text for f in unique_facts([PersonaFact("I'm 34", "a"), PersonaFact("I am 34.", "b"), PersonaFact("", "c")])] == ["I'm 34"]


def test_extract_many_finds_what_extract_finds_one_by_one(extractor):
    texts = list(POSITIVE)[:6] + ["I am sad today", "", "  ", "I work as a nurse and my dog is called Max"]
    many = extractor.extract_many(texts, batch_size=4)
    assert len(many) == len(texts)
    assert [[f.text for f in facts] for facts in many] == [[f.text for f in extractor.extract(t)] for t in texts]
    assert many[-1][0].source == texts[-1] and many[7] == [] and many[8] == []


def test_extraction_failure_is_logged_not_raised(caplog):
    class Broken:
        def __call__(self, text):
            raise RuntimeError("parser crashed")

    assert extract_safely(PersonaExtractor(nlp=Broken()), "I have two kids") == []
    assert "persona extraction failed" in caplog.text
    assert extract_safely(None, "I have two kids") == []


def test_persona_text_keeps_the_newest_facts_newest_last():
    facts = ["I have two kids", "I work as a nurse.", "I live in Leeds", "My dog is called Max"]
    assert persona_text(facts, 2) == "I live in Leeds. My dog is called Max."
    assert persona_text(facts, 10) == "I have two kids. I work as a nurse. I live in Leeds. My dog is called Max."
    assert persona_text(facts, 10, max_chars=40) == "I live in Leeds. My dog is called Max."
    assert persona_text([], 5) is None and persona_text(facts, 0) is None


def test_persona_settings_are_validated():
    from empathy_nlg.settings import ConfigError, EngineSettings, load_settings

    assert load_settings()["persona"] == {"enabled": True, "max_facts": 5, "max_chars": 500}
    assert EngineSettings.load().persona.max_facts == 5
    for bad in ({"max_facts": -1}, {"enabled": "yes"}, {"colour": "red"}):
        with pytest.raises(ConfigError, match="persona"):
            load_settings(overrides={"persona": bad})
