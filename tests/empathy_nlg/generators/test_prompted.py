from __future__ import annotations

import math

import pytest

from empathy_nlg.datasets import Utterance
from empathy_nlg.generators import GenerationRequest, available_generators, create_generator
from empathy_nlg.decoding.generation import clean_reply
from empathy_nlg.generators.prompted import build_messages, build_system_prompt
from empathy_nlg.perception.types import CauseUtterance
from tests.empathy_nlg.conftest import make_perception


def request(emotion="sad", trajectory=(), causes=()):
    ctx = [Utterance("speaker", "my day was bad"), Utterance("listener", "oh no"), Utterance("speaker", "i am sad today")]
    return GenerationRequest(context=ctx, perception=make_perception(emotion, causes=causes), emotion_trajectory=list(trajectory))


def test_system_prompt_carries_emotion_cause_cm_and_trajectory():
    r = request("sad", trajectory=["anxious"], causes=[CauseUtterance(index=0, text="my day was bad", score=0.9)])
    prompt = build_system_prompt(r)
    assert "seems sad" in prompt
    assert '"my day was bad"' in prompt  # an earlier cause is quoted
    assert "Respond warmly" in prompt and "Ask one gentle question" in prompt  # ER and EX ≥ 0.5, IP not
    assert "understand what they went through" not in prompt
    assert "felt anxious" in prompt
    same = build_system_prompt(request("sad", trajectory=["sad"]))
    assert "Earlier in this conversation" not in same  # no news: not repeated


def test_messages_map_roles():
    msgs = build_messages(request())
    assert msgs[0]["role"] == "system"
    assert [m["role"] for m in msgs[-3:]] == ["user", "assistant", "user"]


@pytest.mark.parametrize(
    "raw, clean",
    [
        ("  That sounds hard. How are you", "That sounds hard."),
        ("That sounds hard!", "That sounds hard!"),
        ("Only a fragment", "Only a fragment"),
        ("", ""),
        ("A. B? C", "A. B?"),
    ],
)
def test_clean_reply(raw, clean):
    assert clean_reply(raw) == clean


def test_registry_names():
    assert {"prompted", "frequent"} <= set(available_generators())
    with pytest.raises(KeyError, match="unknown generator"):
        create_generator("nope")


def test_generates_and_scores_with_a_tiny_local_model(tiny_llama):
    gen = create_generator("prompted", {"backbone_path": str(tiny_llama), "device": "cpu", "decoding": {"max_new_tokens": 5}})
    results = gen.generate([request(), request("proud")])
    assert len(results) == 2 and all(r.generator == "prompted" for r in results)
    assert gen.version.endswith("/prompt-v1")
    again = gen.generate([request()])
    assert again[0].text == results[0].text  # greedy decoding is deterministic
    scored = gen.score([request()], ["sorry to hear that ."])
    assert scored["tokens"] > 0 and math.isfinite(scored["nll"]) and scored["nll"] > 0


def test_rejects_seq2seq_and_unknown_decoding(tiny_bart, tiny_llama):
    with pytest.raises(ValueError, match="causal"):
        create_generator("prompted", {"backbone_path": str(tiny_bart), "device": "cpu"})
    with pytest.raises(ValueError, match="unknown decoding"):
        create_generator("prompted", {"backbone_path": str(tiny_llama), "decoding": {"beams": 3}})


@pytest.mark.slow
def test_default_backbone_answers_sensibly():
    """The real SmolLM2 (prepared by `make setup`): a non-empty, on-topic, complete reply."""
    gen = create_generator("prompted", {"device": "cpu"})
    ctx = [Utterance("speaker", "I had a really bad day. My boss yelled at me in front of everyone.")]
    out = gen.generate([GenerationRequest(context=ctx, perception=make_perception("embarrassed"))])[0]
    assert len(out.text.split()) >= 4
    assert out.text[-1] in ".!?"
    assert "<|im" not in out.text
