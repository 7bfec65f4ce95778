"""The committed IMAGINE, NEC, MIME and cause-gated models, selected by name from the engine config, behind /nlg;
and persona_moel (a tiny one the test builds) with the user's persona from SQL.

Their knowledge comes from the real retrieval source over the knowledge tests' tiny ATOMIC-format
sample (the shared data is not needed)."""

from __future__ import annotations

import pytest
from fastapi.testclient import TestClient

from empathy_nlg.api.app import create_app
from empathy_nlg.domain import DomainResponses
from empathy_nlg.engine import EmpathyEngine
from empathy_nlg.generators import create_generator
from empathy_nlg.settings import load_settings
from empathy_nlg.state.repository import StateRepository
from tests.empathy_nlg.conftest import KeywordPerceiver
from tests.empathy_nlg.knowledge.conftest import write_sample

_GENERATORS = {}
KNOWLEDGE = ("imagine", "nec")  # the generators that look knowledge up (MIME and cause_gated take none)


def generator(name, settings):
    """One instance per name for the whole module (each loads the backbone)."""
    if name not in _GENERATORS:
        _GENERATORS[name] = create_generator(name, settings["generation"]["generators"][name])
    return _GENERATORS[name]


def body(text, sender, message_id="m1"):
    return {"response": "utter_empathize", "arguments": {}, "channel": {"name": "collector"},
            "tracker": {"sender_id": sender, "slots": {}, "latest_message": {},
                        "events": [{"event": "user", "text": text, "message_id": message_id, "parse_data": {}}]}}


@pytest.fixture(scope="module")
def knowledge(tmp_path_factory):
    root = tmp_path_factory.mktemp("atomic")
    return {"type": "retrieval", "data_dir": str(write_sample(root / "data")), "cache_dir": str(root / "cache")}


@pytest.mark.parametrize("name", ["imagine", "nec", "mime", "cause_gated"])
def test_trained_generator_answers_through_nlg_with_its_plan(name, knowledge, domain_file, sqlite_url):
    settings = load_settings(overrides={"state": {"database_url": sqlite_url}, "domain": str(domain_file),
                                        "generation": {"generator": name,
                                                       "generators": {name: {"knowledge": knowledge}} if name in KNOWLEDGE else {}}})
    assert settings["generation"]["generator"] == name

    def loader():
        repo = StateRepository(sqlite_url)
        repo.migrate()
        return EmpathyEngine(settings, perceiver=KeywordPerceiver(), generator=generator(name, settings),
                             repository=repo, domain=DomainResponses.load(domain_file))

    app = create_app(settings, loader)
    with TestClient(app) as client:
        app.state.holder.wait(120)
        r = client.post("/nlg", json=body("I failed my driving test this morning and I feel so sad.", "s-" + name))
        assert r.status_code == 200, r.text
        out = r.json()
        assert out["text"].strip()
        custom = out["custom"]
        assert custom["generator"] == name and custom["generator_version"].startswith(name)
        gen = custom["generation"]
        assert "raw" not in gen and gen["variant"] == name
        if name == "imagine":
            assert gen["emotion"] == "sad" and gen["emotion_source"] == "perception"
            assert gen["cause_utterances"] == ["I failed my driving test this morning and I feel so sad."]
            assert set(gen["cm_plan"]) <= {"ER", "IP", "EX"} and gen["cm_plan"]
            assert set(custom["knowledge"]) == {"affect", "behaviour", "physical", "events"}
            assert any(custom["knowledge"].values())
        elif name == "mime":  # a sad message is answered from the negative group, with both draws shown
            assert gen["polarity_group"] == "negative" and gen["polarity_source"] == "perception"
            assert len(gen["samples"]) == 2 and 0.0 <= gen["mimicry_mixture"] <= 1.0
            assert all(d["sampled"]["negative"] and len(d["nearest"]) == 3 for d in gen["samples"])
        elif name == "cause_gated":  # the perceived cause's words are gated into the reply's attention
            assert gen["emotion"] == "sad" and gen["gating"] == "soft" and gen["cause_words"]
            assert gen["gated_tokens"] and all(0.0 < t["gate"] <= 1.0 for t in gen["gated_tokens"])
        else:
            assert len(gen["nec_rerank"]["candidates"]) == 4 and gen["nec_rerank"]["alpha"] == 0.7
            assert out["text"] in {c["text"] for c in gen["nec_rerank"]["candidates"]}
            assert gen["source"] == "generator" and "rerank" not in gen  # no conversation reranker in this engine
            assert set(custom["knowledge"]) == {"entity", "social"} and custom["knowledge"]["social"]
        stored = app.state.holder.engine.repository.conversation("s-" + name)
        reply = stored["turns"][0]["replies"][0]
        assert reply["generator"] == name and reply["text"] == out["text"]


def test_persona_moel_answers_through_nlg_by_name_with_the_persona_from_sql(tmp_path, tiny_llama, domain_file, sqlite_url):
    """A tiny persona_moel is built here (the committed one is exercised end to end in
    tests/e2e/test_persona.py). Its persona is what SQL remembers of the user (an earlier session's
    fact) plus what this message says about them."""
    import torch

    from empathy_nlg.generators import conditioned as C
    from empathy_nlg.generators import persona_moel as PM
    from empathy_nlg.perception.encoder import SentenceEncoder
    from empathy_nlg.state.repository import PersonaRecord

    torch.manual_seed(0)
    settings_ = PM.PersonaMoelSettings.from_mapping({"heads_dim": 32, "encoder_ff": 64, "listener_rank": 4, "listener_prefix": 2})
    model = PM.PersonaMoelModel(settings_, C.load_base(str(tiny_llama), device="cpu", dtype="float32"),
                                SentenceEncoder(device="cpu"), lora={"r": 2, "alpha": 4, "dropout": 0.0})
    model.save(tmp_path / "persona_moel", extra={"trained_at": "test"}, half=True)
    section = {"model_dir": str(tmp_path / "persona_moel"), "backbone_path": str(tiny_llama), "device": "cpu",
               "num_beams": 2, "decoding": {"max_new_tokens": 5}}
    settings = load_settings(overrides={"state": {"database_url": sqlite_url}, "domain": str(domain_file),
                                        "generation": {"generator": "persona_moel", "generators": {"persona_moel": section}}})
    repo = StateRepository(sqlite_url)
    repo.migrate()
    repo.add_persona_facts([PersonaRecord("s-pm", "I have two kids", "I have two kids.", "old-1")])

    def loader():
        return EmpathyEngine(settings, perceiver=KeywordPerceiver(), generator=create_generator("persona_moel", section),
                             repository=StateRepository(sqlite_url), domain=DomainResponses.load(domain_file))

    app = create_app(settings, loader)
    with TestClient(app) as client:
        app.state.holder.wait(120)
        r = client.post("/nlg", json=body("I work as a nurse. I failed my driving test this morning and I feel so sad.", "s-pm"))
        assert r.status_code == 200, r.text
        out = r.json()
        assert out["text"].strip()
        custom = out["custom"]
        assert custom["generator"] == "persona_moel" and custom["generator_version"].startswith("persona_moel")
        gen = custom["generation"]
        assert gen["variant"] == "persona_moel" and "raw" not in gen
        assert gen["persona_sentences"] == ["I have two kids", "I work as a nurse"] and gen["persona_source"] == "request"
        weights = gen["listener_weights"]  # perception (sad) pooled to the 32 listeners, MoEL's top 5
        assert gen["weights_source"] == "perception" and list(weights)[0] == "sad" and len(weights) == 5
        assert abs(sum(weights.values()) - 1.0) < 1e-3
        stored = app.state.holder.engine.repository.conversation("s-pm")
        assert stored["turns"][0]["replies"][0]["generator"] == "persona_moel"
    assert [f["fact"] for f in repo.persona_facts("s-pm")] == ["I have two kids", "I work as a nurse"]
