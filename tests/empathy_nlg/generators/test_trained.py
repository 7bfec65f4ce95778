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
    gen = create_generator("finetuned", {**saved, "num_beams": 2, "history_ngram": 2, "history_bias": -3.0})
    seen = []
    real = gen.model.lm.generate

    def spy(prefixes, prompts, decoding, num_return=1, sequence_bias=None):
        seen.append(sequence_bias)
        return real(prefixes, prompts, decoding, num_return=num_return, sequence_bias=sequence_bias)

    monkeypatch.setattr(gen.model.lm, "generate", spy)
    gen.generate([GenerationRequest(context=CONTEXT)])
    gen.generate([GenerationRequest(context=CONTEXT, earlier_replies=["I'm so sorry to hear that."])])
    assert not seen[0]
    assert seen[1] and all(b == -3.0 and len(ids) == 2 for ids, b in seen[1])


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
