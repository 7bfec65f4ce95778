"""IMAGINE on a tiny random Llama with the real (frozen) MiniLM encoder."""

from __future__ import annotations

import pytest

torch = pytest.importorskip("torch")

from empathy_nlg.datasets import Utterance  # noqa: E402
from empathy_nlg.generators import GenerationRequest, available_generators, create_generator  # noqa: E402
from empathy_nlg.generators import conditioned as C  # noqa: E402
from empathy_nlg.generators import imagine as I  # noqa: E402
from empathy_nlg.perception.types import CauseUtterance  # noqa: E402
from empathy_nlg.settings import TrainSettings  # noqa: E402
from tests.empathy_nlg.conftest import make_perception  # noqa: E402
from tests.empathy_nlg.generators import knowledge_fixtures  # noqa: E402,F401  (registers "fixed")

CONTEXT = [["speaker", "my dog died yesterday"], ["listener", "oh no"], ["speaker", "i am sad today"]]
KNOWLEDGE = {"affect": ["sad", "upset"], "behaviour": ["to be loved", "cries"], "physical": [], "events": ["grief"]}


def feature(**over):
    f = {"context": CONTEXT, "reference": "sorry to hear that .", "emotion": "sad", "cause_indices": [0],
         "knowledge": KNOWLEDGE, "cm": [0.9, 0.2, 0.7]}
    f.update(over)
    return f


def make_model(tiny_llama, encoder, **settings):
    bb = C.load_base(str(tiny_llama), device="cpu", dtype="float32")
    model = I.ImagineModel(I.ImagineSettings(**settings), bb, encoder, lora={"r": 2, "alpha": 4, "dropout": 0.0})
    I.RECIPE.prepare(model, [feature(), feature(reference="how do you feel ?")], TrainSettings(generator="imagine"))
    return model


def test_registered_and_variant_names():
    assert "imagine" in available_generators()
    assert I.ImagineSettings().variant == "imagine"
    assert I.ImagineSettings(cm=False, face=False).variant == "imagine-no-cm-face"
    with pytest.raises(ValueError, match="unknown imagine settings"):
        I.ImagineSettings.from_mapping({"bogus": 1})


def test_cause_text_and_knowledge_heads_follow_the_cause_switch():
    ctx = [Utterance(r, t) for r, t in CONTEXT]
    assert I.cause_text(ctx, [0], True, 2) == "speaker: my dog died yesterday"
    assert I.cause_text(ctx, [0], False, 2) == "listener: oh no | speaker: i am sad today"
    assert I.knowledge_heads(ctx, [0], True) == ["my dog died yesterday"]
    assert I.knowledge_heads(ctx, [0], False) == ["i am sad today"]
    assert I.heuristic_causes(ctx) == [0, 2]


def test_loss_has_all_four_terms_and_trains_heads_and_adapters(tiny_llama, encoder):
    model = make_model(tiny_llama, encoder)
    model.train(True)
    loss, parts = model.loss([feature(), feature(emotion="joyful", cm=[0.1, 0.8, 0.1])])
    assert set(parts) == {"gen", "emotion", "cm", "face"}
    assert all(v == v and v > 0 for v in parts.values())  # finite, positive
    loss.backward()
    heads = dict(model.heads.named_parameters())
    for name in ("emotion_head.weight", "cm_head.weight", "fuse.weight", "gate.weight", "emotion_emb.weight", "cm_emb.weight"):
        assert heads[name].grad is not None and heads[name].grad.abs().sum() > 0, name
    lora = [p for n, p in model.peft.named_parameters() if "lora_" in n and p.requires_grad]
    assert lora and any(p.grad is not None and p.grad.abs().sum() > 0 for p in lora)


def test_ablations_remove_their_part(tiny_llama, encoder):
    full = make_model(tiny_llama, encoder)
    no_cm = make_model(tiny_llama, encoder, cm=False)
    no_k = make_model(tiny_llama, encoder, knowledge=False)
    no_face = make_model(tiny_llama, encoder, face=False)
    emo = torch.zeros(1, 32)
    emo[0, 0] = 1
    cm = torch.tensor([[0.9, 0.1, 0.5]])
    p_full, _, _, gates = full.conditioning(["speaker: my dog died"], [KNOWLEDGE], emo, cm)
    p_nocm, _, _, _ = no_cm.conditioning(["speaker: my dog died"], [KNOWLEDGE], emo, cm)
    _, _, _, gates_nok = no_k.conditioning(["speaker: my dog died"], [KNOWLEDGE], emo, cm)
    assert p_full[0].shape[0] == p_nocm[0].shape[0] + 1  # the CM signal is one prefix position
    assert gates[0, 2] == 0  # "physical" found nothing: gated off
    assert (gates[0, [0, 1, 3]] > 0).all()
    assert torch.count_nonzero(gates_nok) == 0
    assert "cm" not in no_cm.loss([feature()])[1]
    assert "face" not in no_face.loss([feature()])[1]


def test_generator_serves_a_saved_model_with_its_plan_in_details(tmp_path, tiny_llama, encoder):
    model = make_model(tiny_llama, encoder)
    model.save(tmp_path / "m", extra={"trained_at": "test"}, half=True)
    gen = create_generator("imagine", {"model_dir": str(tmp_path / "m"), "backbone_path": str(tiny_llama),
                                       "device": "cpu", "knowledge": {"type": "fixed"},
                                       "decoding": {"max_new_tokens": 5}})
    assert gen.version == "imagine/test"
    ctx = [Utterance(r, t) for r, t in CONTEXT]
    perceived = make_perception("sad", causes=[CauseUtterance(index=0, text=CONTEXT[0][1], score=0.9)])
    with_p, without_p = gen.generate([GenerationRequest(context=ctx, perception=perceived), GenerationRequest(context=ctx)])
    d = with_p.details
    assert d["emotion"] == "sad" and d["emotion_source"] == "perception"
    assert d["cause_utterances"] == ["my dog died yesterday"]
    assert d["cm_plan"] == perceived.cm_plan
    assert set(with_p.knowledge) == {"affect", "behaviour", "physical", "events"}
    assert "sad" in with_p.knowledge["affect"] and "grief" in with_p.knowledge["events"]
    assert without_p.details["emotion_source"] == "imagine"  # its own emotion head decides
    assert without_p.details["cause_utterances"] == ["my dog died yesterday", "i am sad today"]  # heuristic
    again = gen.generate([GenerationRequest(context=ctx, perception=perceived)])[0]
    assert again.text == with_p.text  # deterministic
    scored = gen.score([GenerationRequest(context=ctx, perception=perceived)], ["sorry to hear that ."])
    assert scored["tokens"] == len(C.encode_reply(gen.model.lm.tokenizer, "sorry to hear that .", 99, False))
    assert scored["nll"] > 0


def test_missing_or_foreign_model_folder_is_a_clear_error(tmp_path, tiny_llama):
    with pytest.raises(FileNotFoundError, match="empathy-nlg train"):
        create_generator("imagine", {"model_dir": str(tmp_path), "backbone_path": str(tiny_llama), "device": "cpu"})
    (tmp_path / "generator.json").write_text('{"generator": "nec"}')
    (tmp_path / "adapter").mkdir()
    with pytest.raises(ValueError, match="not an imagine"):
        I.RECIPE.load_model(tmp_path, None, None, trainable=False)
