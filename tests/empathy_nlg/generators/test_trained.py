"""The shared serving loop of the trained generators (``TrainedGenerator``), on a tiny random Llama."""

from __future__ import annotations

import pytest

torch = pytest.importorskip("torch")

from empathy_nlg.datasets import Utterance  # noqa: E402
from empathy_nlg.generators import GenerationRequest, create_generator  # noqa: E402
from empathy_nlg.generators import conditioned as C  # noqa: E402
from empathy_nlg.generators import finetuned as F  # noqa: E402
from empathy_nlg.generators.trained import TrainedGenerator  # noqa: E402

CONTEXT = [Utterance("speaker", "my dog died yesterday in the park"), Utterance("listener", "oh no"),
           Utterance("speaker", "i am sad today")]


@pytest.fixture()
def saved(tmp_path, tiny_llama):
    bb = C.load_base(str(tiny_llama), device="cpu", dtype="float32")
    model = F.FinetunedModel(F.FinetunedSettings(max_prompt_tokens=48), bb, None, lora={"r": 2, "alpha": 4, "dropout": 0.0})
    model.save(tmp_path / "m", extra={"trained_at": "test"})
    return {"model_dir": str(tmp_path / "m"), "backbone_path": str(tiny_llama), "device": "cpu",
            "decoding": {"max_new_tokens": 6}}


def biases_seen(gen, monkeypatch):
    """Each ``generate`` call of ``gen``'s backbone: the bias entries of each request in the batch
    (the calls still run)."""
    seen = []
    real = gen.model.lm.generate

    def spy(prefixes, prompts, decoding, num_return=1, sequence_bias=None, context_out=None, row_bias=None):
        seen.append(list(row_bias) if row_bias is not None else [sequence_bias])
        return real(prefixes, prompts, decoding, num_return=num_return, sequence_bias=sequence_bias,
                    context_out=context_out, row_bias=row_bias)

    monkeypatch.setattr(gen.model.lm, "generate", spy)
    return seen


def test_every_trained_generator_is_one_small_subclass():
    from empathy_nlg.generators.imagine import ImagineGenerator
    from empathy_nlg.generators.nec import NecGenerator

    for cls in (F.FinetunedGenerator, ImagineGenerator, NecGenerator):
        assert issubclass(cls, TrainedGenerator)
        assert "generate" not in vars(cls) and "score" not in vars(cls)  # the loop is shared, not copied


def test_beams_become_candidates_with_details(saved):
    gen = create_generator("finetuned", {**saved, "num_beams": 3})
    out = gen.generate([GenerationRequest(context=CONTEXT)])[0]
    assert out.generator == "finetuned" and out.version.endswith("/test")
    assert out.details["beams"] == 3 and out.details["seconds"] >= 0 and "raw" in out.details
    assert 1 <= len(out.candidates) <= 3 and all(c["text"] for c in out.candidates)
    assert out.text == out.candidates[0]["text"]
    scores = [c["score"] for c in out.candidates]
    assert scores == sorted(scores, reverse=True)  # beams come best first
    assert gen.score([GenerationRequest(context=CONTEXT)], ["oh no"])["tokens"] > 0


def test_earlier_replies_reach_decoding_as_a_history_bias(saved, monkeypatch):
    gen = create_generator("finetuned", {**saved, "num_beams": 2, "history_ngram": 2, "history_bias": -3.0,
                                         "grounding_bias": 0})
    seen = biases_seen(gen, monkeypatch)
    gen.generate([GenerationRequest(context=CONTEXT)])
    gen.generate([GenerationRequest(context=CONTEXT, earlier_replies=["I'm so sorry to hear that."])])
    assert seen[0] == [[]]
    assert seen[1][0] and all(b == -3.0 and len(ids) == 2 for ids, b in seen[1][0])


def test_grounding_bias_pushes_the_users_content_words_only():
    class Tok:  # " word" → ids: one token for short words, two for long ones
        def __call__(self, text, add_special_tokens=False):
            w = text.strip()
            return {"input_ids": [len(w)] if len(w) < 6 else [100 + len(w), 200 + len(w)]}

    out = {tuple(ids): b for ids, b in C.grounding_bias(Tok(), ["I am so proud of my daughter", "she was walking"], bias=2.0)}
    assert out == {(5,): 2.0,            # "proud"
                   (108, 208): 2.0,      # "daughter": its second token once the first is chosen
                   (107, 207): 1.0}      # "walking", from the older message: half
    insults = C.grounding_bias(Tok(), ["you stupid fucking bot, my wife left"], bias=2.0)
    # "bot" → (3,), "wife"/"left" → (4,); "stupid" (106, 206) and "fucking" (107, 207) are never pushed
    assert {tuple(ids) for ids, _ in insults} == {(3,), (4,)}
    assert C.grounding_bias(Tok(), ["the dog"], bias=0) == [] and C.grounding_bias(Tok(), [], bias=2.0) == []
    unique = lambda text, add_special_tokens=False: {"input_ids": [sum(map(ord, text)) * 1000 + len(text)]}  # noqa: E731
    assert len(C.grounding_bias(unique, [" ".join(f"word{chr(97 + i)}" for i in range(20))], limit=5)) == 5


def test_each_requests_own_words_reach_decoding_as_its_grounding_bias(saved, monkeypatch):
    gen = create_generator("finetuned", {**saved, "num_beams": 2, "grounding_bias": 2.0, "grounding_turns": 2})
    seen = biases_seen(gen, monkeypatch)
    two = [GenerationRequest(context=CONTEXT), GenerationRequest(context=[Utterance("speaker", "my cat purrs loudly")])]
    assert len(gen.generate(two)) == 2
    assert len(seen) == 1  # one batch, each request decoded with its own user's words
    assert seen[0][0] == gen.steering(two[0]) and seen[0][0]
    assert seen[0][1] == gen.steering(two[1]) and seen[0][1]
    tok = gen.model.lm.tokenizer
    expected = C.grounding_bias(tok, ["i am sad today", "my dog died yesterday in the park"], bias=2.0)
    assert gen.steering(two[0]) == expected  # the last two user messages, newest first

    off = create_generator("finetuned", {**saved, "num_beams": 2, "grounding_bias": 0, "tone_bias": 0})
    seen_off = biases_seen(off, monkeypatch)
    off.generate([GenerationRequest(context=CONTEXT)])
    assert seen_off == [[[]]]
    with pytest.raises(ValueError, match="grounding_turns"):
        create_generator("finetuned", {**saved, "grounding_turns": -1})


def test_tone_bias_keeps_sympathy_from_good_news_and_cheer_from_bad_news():
    class Tok:  # every form is one token: its text
        vocab: dict = {}

        def __call__(self, text, add_special_tokens=False):
            return {"input_ids": [self.vocab.setdefault(text, len(self.vocab))]}

    tok = Tok()
    good = {tuple(ids): b for ids, b in C.tone_bias(tok, "positive", bias=-5.0)}
    inverse = {v: k for k, v in tok.vocab.items()}
    assert {inverse[k[0]] for k in good} >= {" sorry", "Sorry", " Sorry", " sad"} and set(good.values()) == {-5.0}
    bad_entries = C.tone_bias(tok, "negative")
    inverse = {v: k for k, v in tok.vocab.items()}
    bad = {inverse[ids[0]] for ids, _ in bad_entries}
    assert {" awesome", "Congrats", " congratulations"} <= bad and " sorry" not in bad
    two = {tuple(ids) for ids, _ in C.tone_bias(lambda t, add_special_tokens=False: {"input_ids": [ord(c) for c in t]}, "positive")}
    assert (ord("O"), ord("h"), ord(" ")) not in two and (ord(" "), ord("s"), ord("a")) not in two  # ≤ 3 tokens only
    assert (ord("S"), ord("a"), ord("d")) in two
    assert C.tone_bias(tok, "neutral") == [] and C.tone_bias(tok, None) == [] and C.tone_bias(tok, "positive", bias=0) == []


def test_tone_bias_follows_perceptions_polarity_only_when_confident(saved):
    from empathy_nlg.perception.types import Perception

    def perceived(polarity, prob):
        return Perception(emotion="joyful", emotion_probs={"joyful": prob}, polarity=polarity, polarity_prob=prob,
                          causes=[], cm={}, crisis=False, crisis_score=0.0)

    gen = create_generator("finetuned", {**saved, "grounding_bias": 0, "tone_bias": -4.0, "tone_min_prob": 0.7})
    tok = gen.model.lm.tokenizer
    sure = gen.steering(GenerationRequest(context=CONTEXT, perception=perceived("positive", 0.9)))
    assert sure == C.tone_bias(tok, "positive", bias=-4.0)
    assert gen.steering(GenerationRequest(context=CONTEXT, perception=perceived("positive", 0.6))) == []
    assert gen.steering(GenerationRequest(context=CONTEXT)) == []


def test_an_empty_top_beam_falls_back_to_a_non_empty_one(saved, monkeypatch):
    gen = create_generator("finetuned", {**saved, "num_beams": 2})
    monkeypatch.setattr(gen.model.lm, "decode", lambda ids, _n=iter(range(100)): "" if next(_n) % 2 == 0 else "I hear you.")
    out = gen.generate([GenerationRequest(context=CONTEXT)])[0]
    assert out.text == "I hear you." and [c["text"] for c in out.candidates] == ["I hear you."]


def test_unknown_options_and_bad_batch_size_are_clear_errors(saved):
    with pytest.raises(TypeError, match="finetuned: unknown options \\['alpha'\\]"):
        create_generator("finetuned", {**saved, "alpha": 0.5})
    with pytest.raises(ValueError, match="batch_size"):
        create_generator("finetuned", {**saved, "batch_size": 0})
