"""The emotion classifier with its own LoRA-tuned encoder, trained in resumable chunks — on the real
packaged MiniLM as the base (the served base is all-mpnet-base-v2; the code is the same)."""

from __future__ import annotations

import json

import numpy as np
import pytest

torch = pytest.importorskip("torch")

from empathy_nlg.datasets import Conversation, LabelledText  # noqa: E402
from empathy_nlg.dialogue import Utterance  # noqa: E402
from empathy_nlg.perception import emotion_tuned as T  # noqa: E402
from empathy_nlg.perception.encoder import default_encoder_path  # noqa: E402
from empathy_nlg.taxonomy import EMOTION_TO_ID, EMOTIONS  # noqa: E402

GOOD = ["I passed my exam today", "we got the apartment we wanted", "my sister had a healthy baby girl"]
BAD = ["my dog died this morning", "I failed my driving test again", "my grandmother is in hospital"]


def conv(i: int, emotion: str, *speaker: str) -> Conversation:
    turns = []
    for text in speaker:
        turns += [Utterance("speaker", text), Utterance("listener", "Oh really? Tell me more.")]
    return Conversation(conv_id=f"c{i}", emotion=emotion, turns=turns)


def data():
    train = [conv(i, "joyful", t, "it made my week") for i, t in enumerate(GOOD)]
    train += [conv(10 + i, "sad", t, "I can't stop thinking about it") for i, t in enumerate(BAD)]
    situations = [LabelledText("I won a prize at the fair", "joyful"), LabelledText("I lost my wallet", "sad"),
                  LabelledText("no label here", "not-an-emotion")]
    dev = [conv(20, "joyful", "I got the job!"), conv(21, "sad", "my cat is very ill")]
    return train, situations, dev


def test_the_story_is_the_users_turns_in_order():
    dialogue = [Utterance("speaker", "I passed."), Utterance("listener", "Congrats!"), Utterance("speaker", " my mom cried ")]
    assert T.story_text(dialogue) == "I passed. my mom cried"
    assert T.story_text([Utterance("listener", "hello there")]) == "hello there"  # no user turn: every turn


def test_training_examples_are_one_seeded_order_of_first_turns_stories_and_situations():
    train, situations, _dev = data()
    a = T.training_examples(train, situations, seed=13)
    assert a == T.training_examples(train, situations, seed=13)
    assert a != T.training_examples(train, situations, seed=14)
    # per conversation its first turn and its whole story; situations with a known label
    assert len(a) == 2 * len(train) + 2
    assert ("I passed my exam today", EMOTION_TO_ID["joyful"]) in a
    assert ("I passed my exam today it made my week", EMOTION_TO_ID["joyful"]) in a
    assert ("I lost my wallet", EMOTION_TO_ID["sad"]) in a and all(t != "no label here" for t, _ in a)


def test_chunks_resume_where_they_stopped_and_serve_only_the_best(tmp_path):
    train, situations, dev = data()
    out, run = tmp_path / "artefacts", tmp_path / "run"
    base = default_encoder_path()
    first = T.train_emotion_tuned(train, situations, dev, out, run, base, max_minutes=0, batch_size=4, progress=False)
    assert first["steps"] == 1 and first["seen"] == 4 and first["served_replaced"]
    state = json.loads((run / T.STATE_FILE).read_text())
    assert state["seen"] == 4 and state["examples"] == 14 and len(state["chunks"]) == 1
    # the served head carries the state, so a fresh checkout resumes from what is committed
    served = json.loads((out / f"{T.HEAD}.json").read_text())
    assert served["training"]["seen"] == 4 and served["dev"]["n"] == 2
    # the adapter is stored in fp16
    from safetensors.torch import load_file

    weights = load_file(str(out / T.ADAPTER_DIR / "adapter_model.safetensors"))
    assert weights and all(v.dtype == torch.float16 for v in weights.values())

    # a better served model (say a later chunk's) is not replaced by a worse one
    served["dev"]["accuracy"] = 100.0
    (out / f"{T.HEAD}.json").write_text(json.dumps(served))
    second = T.train_emotion_tuned(train, situations, dev, out, run, base, max_minutes=0, batch_size=4, resume=True,
                                   progress=False)
    assert second["seen"] == 8 and not second["served_replaced"] and second["served_before"] == 100.0
    state = json.loads((run / T.STATE_FILE).read_text())
    assert state["steps"] == 2 and len(state["chunks"]) == 2

    # no run folder (a fresh checkout): the served artefact's state is where it goes on
    source, from_served = T.resume_state(tmp_path / "elsewhere", out)
    assert source == out and from_served["seen"] == 4
    with pytest.raises(ValueError, match="seed"):
        T.train_emotion_tuned(train, situations, dev, out, run, base, seed=7, max_minutes=0, resume=True, progress=False)
    with pytest.raises(FileNotFoundError, match="without --resume"):
        T.train_emotion_tuned(train, situations, dev, tmp_path / "none", tmp_path / "none-run", base, resume=True,
                              progress=False)


def test_with_the_frozen_head_given_the_served_blend_decides_the_replacement(tmp_path):
    """What is served is the blend with the frozen head, so a chunk replaces the artefact only when its
    blend beats the served model's blend, both measured now — not the tuned-alone figure on record."""
    train, situations, dev = data()
    out, run = tmp_path / "artefacts", tmp_path / "run"
    base = default_encoder_path()
    T.train_emotion_tuned(train, situations, dev, out, run, base, max_minutes=0, batch_size=4, progress=False)
    served = json.loads((out / f"{T.HEAD}.json").read_text())
    served["dev"]["accuracy"] = 0.0  # on record the served model is hopeless alone: the old rule would replace it
    (out / f"{T.HEAD}.json").write_text(json.dumps(served))
    # a frozen head that is sure and right: every blend at 0.5 is right, so the chunk's cannot be better
    gold = np.zeros((len(dev), len(EMOTIONS)), dtype=np.float32)
    gold[np.arange(len(dev)), [EMOTION_TO_ID[c.emotion] for c in dev]] = 1.0
    second = T.train_emotion_tuned(train, situations, dev, out, run, base, max_minutes=0, batch_size=4, resume=True,
                                   frozen_dev=gold, blend_weight=0.5, progress=False)
    assert second["compared"] == "blend" and second["served_before"] == 100.0 and second["compared_accuracy"] == 100.0
    assert not second["served_replaced"]
    assert second["dev_blend"]["weight"] == 0.5 and second["dev_blend"]["accuracy"] == 100.0
    assert json.loads((out / f"{T.HEAD}.json").read_text())["training"]["seen"] == 4  # the served one stayed
    with pytest.raises(ValueError, match="rows"):
        T.train_emotion_tuned(train, situations, dev, out, run, base, max_minutes=0, resume=True,
                              frozen_dev=gold[:1], blend_weight=0.5, progress=False)


def test_training_moves_the_encoder_and_serving_merges_the_adapter(tmp_path):
    """A few steps on good vs bad news separate them; the served (merged) model predicts what the
    trained LoRA model predicted."""
    train, situations, dev = data()
    base = default_encoder_path()
    torch.manual_seed(0)
    model = T.TunedEmotion.fresh(base)
    before = {n: p.detach().clone() for n, p in model.encoder.model.named_parameters() if p.requires_grad}
    examples = T.training_examples(train, situations, seed=13)
    opt = torch.optim.AdamW([p for p in model.encoder.model.parameters() if p.requires_grad] + list(model.head.parameters()),
                            lr=3e-3)
    model.encoder.model.train()
    for _ in range(6):
        loss = torch.nn.functional.cross_entropy(model.logits([t for t, _ in examples]), torch.as_tensor([y for _, y in examples]))
        opt.zero_grad()
        loss.backward()
        opt.step()
    moved = [n for n, p in model.encoder.model.named_parameters() if p.requires_grad and not torch.equal(p, before[n])]
    assert any("lora_B" in n for n in moved)  # the encoder itself learnt, not only the head
    trained = model.predict_proba(GOOD + BAD)
    joy, sad = EMOTIONS.index("joyful"), EMOTIONS.index("sad")
    assert (trained[:3, joy] > trained[:3, sad]).all() and (trained[3:, sad] > trained[3:, joy]).all()
    model.save(tmp_path)
    served = T.TunedEmotion.load(tmp_path, base, autocast=False)
    again = served.predict_proba(GOOD + BAD)
    assert again.shape == (6, 32) and np.allclose(again.sum(1), 1.0, atol=1e-5)
    assert np.abs(again - trained).max() < 0.02  # fp16 adapter weights, merged: the same model
    assert "lora_" not in " ".join(n for n, _ in served.encoder.model.named_parameters())
    dialogues = [[Utterance("speaker", GOOD[0]), Utterance("listener", "Wow!")], [Utterance("speaker", BAD[0])]]
    assert np.allclose(served.predict_dialogues(dialogues), served.predict_proba([GOOD[0], BAD[0]]), atol=1e-6)


def test_lora_targets_follow_the_base_models_projection_names():
    from empathy_nlg.perception.crisis_encoder import TARGET_MODULES_BY_TYPE

    model = T.TunedEmotion.fresh(default_encoder_path())
    names = [n for n, _ in model.encoder.model.named_modules() if n.endswith(".lora_A")]
    assert names and all(n.split(".")[-2] in TARGET_MODULES_BY_TYPE["bert"] for n in names)
    assert TARGET_MODULES_BY_TYPE["mpnet"] == ("q", "k", "v", "o", "dense")
