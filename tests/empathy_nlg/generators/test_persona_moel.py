"""Persona-conditioned MoEL on a tiny random Llama with the real (frozen) MiniLM encoder."""

from __future__ import annotations

import argparse
import json
import logging

import pytest

torch = pytest.importorskip("torch")

from empathy_nlg.datasets import Utterance  # noqa: E402
from empathy_nlg.generators import GenerationRequest, available_generators, create_generator  # noqa: E402
from empathy_nlg.generators import conditioned as C  # noqa: E402
from empathy_nlg.generators import persona_moel as M  # noqa: E402
from empathy_nlg.taxonomy import EMOTIONS, NEGATIVE_EMOTIONS, POSITIVE_EMOTIONS  # noqa: E402
from tests.empathy_nlg.conftest import make_perception  # noqa: E402
from tests.empathy_nlg.generators import knowledge_fixtures as K  # noqa: E402

CONTEXT = [["speaker", "my dog died yesterday"], ["listener", "oh no"], ["speaker", "i am sad today"]]
PERSONA = ["I work as a nurse", "I have two kids"]


def feature(**over):
    f = {"context": CONTEXT, "reference": "sorry to hear that .", "emotion": "sad", "cause_indices": [0],
         "cm": None, "persona": list(PERSONA)}
    f.update(over)
    return f


def make_model(tiny_llama, encoder, **settings):
    bb = C.load_base(str(tiny_llama), device="cpu", dtype="float32")
    settings.setdefault("heads_dim", 32)
    settings.setdefault("encoder_ff", 64)
    settings.setdefault("listener_rank", 4)
    settings.setdefault("listener_prefix", 2)
    return M.PersonaMoelModel(M.PersonaMoelSettings.from_mapping(settings), bb, encoder,
                              lora={"r": 2, "alpha": 4, "dropout": 0.0})


def ctx():
    return [[Utterance(r, t) for r, t in CONTEXT]]


def weights_of(*first, k=len(EMOTIONS)):
    w = torch.zeros(1, k)
    w[0, : len(first)] = torch.tensor(first)
    return w


def prefix(model, persona=(), weights=None):
    model.train(False)
    with torch.no_grad():
        return model.conditioning(ctx(), [list(persona)], weights=weights).prefixes[0]


def reply_nll(model, persona=(), weights=None):
    """The gold reply's NLL through the backbone with the given meta-listener weights."""
    out = model.conditioning(ctx(), [list(persona)], weights=weights)
    replies = [C.encode_reply(model.lm.tokenizer, "sorry to hear that .", 16, False)]
    logits, targets, _ = model.lm.forward(out.prefixes, model.prompts(ctx()), replies)
    return C.token_nll(logits, targets)


# ----------------------------------------------------------------------------------- settings and helpers
def test_registered_variants_groupings_and_clear_errors():
    assert "persona_moel" in available_generators()
    assert M.PersonaMoelSettings().variant == "persona_moel"
    assert M.PersonaMoelSettings(persona=False).variant == "persona_moel-no-persona"
    assert M.PersonaMoelSettings(experts=False).variant == "persona_moel-no-experts"
    with pytest.raises(ValueError, match="unknown persona_moel settings"):
        M.PersonaMoelSettings.from_mapping({"bogus": 1})
    with pytest.raises(ValueError, match="listener_groups must be one of emotions, polarity"):
        M.PersonaMoelSettings.from_mapping({"listener_groups": "sixteen"})
    with pytest.raises(ValueError, match="top_k"):
        M.PersonaMoelSettings.from_mapping({"top_k": -1})
    with pytest.raises(ValueError, match="loss_weights"):
        M.PersonaMoelSettings.from_mapping({"loss_weights": {"gen": 1.0, "face": 1.0}})
    # the groupings come from the taxonomy: 32 singleton listeners, or MIME's 13 / 19
    emotions = M.listener_groups("emotions")
    assert list(emotions) == list(EMOTIONS) and all(len(v) == 1 for v in emotions.values())
    polarity = M.listener_groups("polarity")
    assert [EMOTIONS[i] for i in polarity["positive"]] == list(POSITIVE_EMOTIONS)
    assert {EMOTIONS[i] for i in polarity["negative"]} == set(NEGATIVE_EMOTIONS)
    p = torch.softmax(torch.randn(2, 32), -1)
    pooled = p @ M.pooling_matrix("polarity")
    assert pooled.shape == (2, 2) and torch.allclose(pooled.sum(-1), torch.ones(2))


def test_top_k_oracle_schedule_and_persona_sentences():
    probs = torch.tensor([[0.5, 0.2, 0.2, 0.1]])
    assert torch.allclose(M.top_k_distribution(probs, 2), torch.tensor([[0.5 / 0.7, 0.2 / 0.7, 0.0, 0.0]]))
    assert torch.allclose(M.top_k_distribution(probs, 0), probs)
    assert M.oracle_probability(0, 1000) == pytest.approx(1.0)
    assert M.oracle_probability(1000, 1000) == pytest.approx(1e-4 + (1 - 1e-4) * 0.36788, rel=1e-4)
    assert M.oracle_probability(5, 0) == 0.0
    # the engine's persona text: facts joined as sentences, newest last
    assert M.persona_sentences("I work as a nurse. I have two kids. I'm 34.", 5) == ["I work as a nurse", "I have two kids", "I'm 34"]
    assert M.persona_sentences("I work as a nurse. I have two kids. I'm 34.", 2) == ["I have two kids", "I'm 34"]
    assert M.persona_sentences("i am a nurse.  i have two kids!", 5) == ["i am a nurse", "i have two kids"]  # a client's slot
    assert M.persona_sentences(None, 5) == [] and M.persona_sentences("  ", 5) == []
    assert M.persona_sentences("I work as a nurse.", 0) == []


# ----------------------------------------------------------------------------------- the mixture
def test_each_expert_gets_gradient_in_proportion_to_its_weight(tiny_llama, encoder):
    torch.manual_seed(0)
    model = make_model(tiny_llama, encoder)
    bank = model.heads.experts
    params = {"down": bank.down, "down_b": bank.down_b, "up": bank.up, "up_b": bank.up_b}
    model.train(False)  # no dropout: both passes see the same context vector

    # (1) the listeners as initialised: u_k (each listener's own prefix vectors) gets w_k·∂L/∂V_M exactly
    reply_nll(model, PERSONA, weights_of(0.7, 0.3)).backward()
    up_b = bank.up_b.grad
    assert float(up_b[0].norm()) > 0
    assert torch.allclose(up_b[1], up_b[0] * (0.3 / 0.7), rtol=1e-4, atol=1e-9)
    assert float(up_b[0].norm() / up_b[1].norm()) == pytest.approx(0.7 / 0.3, rel=1e-4)
    for name, p in params.items():  # a zero-weight listener gets exactly no gradient
        assert torch.count_nonzero(p.grad[2:]) == 0, name
        assert float(p.grad[0].norm()) > 0, name

    # (2) two identical listeners: every parameter's gradient scales with the weight
    with torch.no_grad():
        for p in params.values():
            p[1] = p[0]
    for p in model.trainable_parameters():
        p.grad = None
    reply_nll(model, PERSONA, weights_of(0.7, 0.3)).backward()
    for name, p in params.items():
        assert torch.allclose(p.grad[1], p.grad[0] * (0.3 / 0.7), rtol=1e-4, atol=1e-9), name
        assert float(p.grad[0].norm() / p.grad[1].norm()) == pytest.approx(0.7 / 0.3, rel=1e-4), name
        assert torch.count_nonzero(p.grad[2:]) == 0, name
    # the shared listener takes part whatever the weights
    assert float(model.heads.shared.up_b.grad.norm()) > 0


def test_weights_choose_the_listeners_and_a_bad_shape_is_an_error(tiny_llama, encoder):
    torch.manual_seed(0)
    model = make_model(tiny_llama, encoder)
    a, b = prefix(model, weights=weights_of(1.0)), prefix(model, weights=weights_of(0.0, 1.0))
    assert not torch.allclose(a, b)
    mixed = prefix(model, weights=weights_of(0.5, 0.5))
    assert not torch.allclose(mixed, a) and not torch.allclose(mixed, b)
    with pytest.raises(ValueError, match="listener weights of shape"):
        prefix(model, weights=torch.ones(1, 3))
    polarity = make_model(tiny_llama, encoder, listener_groups="polarity")
    assert polarity.heads.experts.k == 2 and polarity.settings.groups == ("positive", "negative")
    assert prefix(polarity, weights=torch.tensor([[0.2, 0.8]])).shape[0] == 1 + 2  # [p ; V_M]


def test_loss_has_nll_and_emotion_terms_and_trains_every_part(tiny_llama, encoder):
    torch.manual_seed(0)
    model = make_model(tiny_llama, encoder)
    model.train(True)
    loss, parts = model.loss([feature(), feature(emotion="joyful", persona=[])], step=0)
    assert set(parts) == {"gen", "emotion", "oracle"} and all(v == v for v in parts.values())
    assert parts["oracle"] == 1.0  # step 0 of MoEL's schedule: the gold emotion's weights
    loss.backward()
    heads = dict(model.heads.named_parameters())
    for name in ("emotion.weight", "ctx_token", "inp.weight", "persona_proj.weight", "no_persona", "shared.up_b",
                 "prefix_proj.weight"):
        assert heads[name].grad is not None and heads[name].grad.abs().sum() > 0, name
    # gold weights: only the two gold emotions' listeners learn from this batch
    grad = model.heads.experts.up_b.grad
    trained = {EMOTIONS[k] for k in range(len(EMOTIONS)) if grad[k].abs().sum() > 0}
    assert trained == {"sad", "joyful"}
    lora = [p for n, p in model.peft.named_parameters() if "lora_" in n and p.requires_grad]
    assert lora and any(p.grad is not None and p.grad.abs().sum() > 0 for p in lora)


def test_without_the_oracle_the_trackers_top_k_weights_train_the_tracker_through_the_nll(tiny_llama, encoder):
    torch.manual_seed(0)
    model = make_model(tiny_llama, encoder, oracle_schedule=0, top_k=3, loss_weights={"gen": 1.0, "emotion": 0.0})
    model.train(True)
    loss, parts = model.loss([feature()], step=0)
    assert parts["oracle"] == 0.0
    loss.backward()
    grad = model.heads.experts.up_b.grad
    assert int((grad.abs().sum(-1) > 0).sum()) == 3  # MoEL's top-k: three listeners
    assert model.heads.emotion.weight.grad.abs().sum() > 0  # the NLL reaches the tracker (emotion CE weighted 0)


# ----------------------------------------------------------------------------------- persona and ablations
def test_persona_sentences_change_the_conditioning(tiny_llama, encoder):
    torch.manual_seed(0)
    model = make_model(tiny_llama, encoder)
    w = weights_of(1.0)
    none, nurse, kids = prefix(model, (), w), prefix(model, PERSONA[:1], w), prefix(model, PERSONA, w)
    assert none.shape == nurse.shape == (1 + 2, model.lm.hidden_size)  # [p ; V_M]
    assert not torch.allclose(none[0], nurse[0]) and not torch.allclose(nurse[0], kids[0])  # the persona row
    assert not torch.allclose(none[1:], nurse[1:])  # … and the listeners that read it
    pooled, has = model.persona_tensors([PERSONA, []])
    assert has.tolist() == [True, False] and float(pooled[1].abs().sum()) == 0.0
    direct = torch.from_numpy(encoder.encode(PERSONA)).mean(0)
    assert torch.allclose(pooled[0], direct, atol=1e-5)  # the pooled MiniLM sentence embeddings


def test_ablating_the_persona_removes_its_path(tiny_llama, encoder):
    torch.manual_seed(0)
    model = make_model(tiny_llama, encoder, persona=False)
    w = weights_of(1.0)
    assert torch.equal(prefix(model, (), w), prefix(model, PERSONA, w))  # the output does not depend on it
    assert prefix(model, PERSONA, w).shape[0] == 2  # V_M only, no persona position
    assert model.persona_tensors([PERSONA])[1].tolist() == [False]  # nothing is even encoded
    model.train(True)
    loss, _ = model.loss([feature()])
    loss.backward()
    assert model.heads.persona_proj.weight.grad is None and model.heads.no_persona.grad is None


def test_ablating_the_experts_leaves_one_shared_listener(tiny_llama, encoder):
    torch.manual_seed(0)
    model = make_model(tiny_llama, encoder, experts=False)
    assert torch.equal(prefix(model, PERSONA, weights_of(1.0)), prefix(model, PERSONA, weights_of(0.0, 0.3, 0.7)))
    model.train(True)
    loss, parts = model.loss([feature()])
    assert set(parts) == {"gen", "emotion"}
    loss.backward()
    assert all(p.grad is None for p in model.heads.experts.parameters())
    assert float(model.heads.shared.up_b.grad.norm()) > 0


def test_persona_in_prompt_writes_the_facts_into_the_system_message_and_a_cut_keeps_them(tiny_llama, encoder):
    torch.manual_seed(0)
    told = ["i am happy", "my day was good"]  # words of the tiny vocabulary: they survive decoding
    assert M.persona_system_text(told) == f"{M.PERSONA_LEAD} i am happy. my day was good."
    assert M.persona_system_text([]) == "" and M.persona_system_text(["  ", ""]) == ""
    words = make_model(tiny_llama, encoder, persona_in_prompt=True, max_prompt_tokens=64)
    vector_only = make_model(tiny_llama, encoder, max_prompt_tokens=64)
    tok = words.lm.tokenizer
    [with_facts], [without] = words.prompts(ctx(), [told]), words.prompts(ctx(), [[]])
    assert "i am happy . my day was good ." in tok.decode(with_facts)
    assert without == vector_only.prompts(ctx(), [told])[0]  # no facts, or the option off: v1's prompt
    assert len(with_facts) > len(without)
    # the facts change what the decoder reads: the gold reply's NLL differs with and without them
    words.train(False)
    reply = [C.encode_reply(tok, "sorry to hear that .", 16, False)]
    with torch.no_grad():
        out = words.conditioning(ctx(), [told], weights=weights_of(1.0))
        nll = [float(C.token_nll(*words.lm.forward(out.prefixes, words.prompts(ctx(), [p]), reply)[:2]))
               for p in (told, [])]
    assert nll[0] != pytest.approx(nll[1], abs=1e-6)
    # a long turn cuts the oldest dialogue tokens and keeps the whole system message
    long_ctx = [[Utterance("speaker", "i am sad today , " * 12)]]
    full = C.encode_prompt(tok, C.prompt_messages(long_ctx[0], 2, M.persona_system_text(told)), 10_000)
    head = tok(tok.apply_chat_template(C.prompt_messages(long_ctx[0], 2, M.persona_system_text(told))[:1],
                                       add_generation_prompt=False, tokenize=False), add_special_tokens=False)["input_ids"]
    [cut] = words.prompts(long_ctx, [told])
    assert len(full) > 64 and len(cut) == 64
    assert cut[: len(head)] == head and cut[len(head):] == full[-(64 - len(head)):]
    assert vector_only.prompts(long_ctx, [told])[0][: len(head)] != head  # v1 cuts from the start
    # a system message that would leave the dialogue less than a quarter of the budget is cut as before
    tight = C.encode_prompt(tok, C.prompt_messages(long_ctx[0], 2, M.persona_system_text(told * 6)), 40, keep_system=True)
    assert tight == C.encode_prompt(tok, C.prompt_messages(long_ctx[0], 2, M.persona_system_text(told * 6)), 10_000)[-40:]
    # the persona ablated: no facts in words either
    ablated = make_model(tiny_llama, encoder, persona=False, persona_in_prompt=True, max_prompt_tokens=64)
    assert ablated.prompts(ctx(), [told]) == vector_only.prompts(ctx(), [told])


# ----------------------------------------------------------------------------------- serving
def test_generator_reports_listener_weights_and_persona_sentences(tmp_path, tiny_llama, encoder):
    torch.manual_seed(0)
    make_model(tiny_llama, encoder).save(tmp_path / "m", extra={"trained_at": "test"}, half=True)
    cfg = {"model_dir": str(tmp_path / "m"), "backbone_path": str(tiny_llama), "device": "cpu", "num_beams": 2,
           "decoding": {"max_new_tokens": 5}}
    gen = create_generator("persona_moel", cfg)
    assert gen.version == "persona_moel/test" and gen.candidates_per_request() == 2
    context = [Utterance(r, t) for r, t in CONTEXT]
    glad = make_perception("joyful")
    with_all, bare = gen.generate([
        GenerationRequest(context=context, perception=glad, persona="I work as a nurse. I have two kids."),
        GenerationRequest(context=context)])
    d = with_all.details
    assert d["persona_sentences"] == PERSONA and d["persona_source"] == "request"
    assert d["persona_in_prompt"] is False  # a v1 model: the persona enters as a vector only
    assert d["weights_source"] == "perception" and d["variant"] == "persona_moel"
    weights = d["listener_weights"]
    assert list(weights)[0] == "joyful" and len(weights) <= 5 and sum(weights.values()) == pytest.approx(1.0, abs=1e-3)
    assert set(weights) <= set(EMOTIONS) and len(d["emotion_tracker"]) == 3
    assert bare.details["persona_sentences"] == [] and bare.details["persona_source"] == "none"
    assert bare.details["weights_source"] == "classifier"
    assert sum(bare.details["listener_weights"].values()) == pytest.approx(1.0, abs=1e-3)
    assert 1 <= len(with_all.candidates) <= 2
    scored = gen.score([GenerationRequest(context=context, perception=glad)], ["that is great ."])
    assert scored["tokens"] == len(C.encode_reply(gen.model.lm.tokenizer, "that is great .", 99, False)) and scored["nll"] > 0
    # without a persona in the request, the option mines the user's turns of the context
    mining = create_generator("persona_moel", {**cfg, "persona_from_context": True})
    told = [Utterance("speaker", "I work as a nurse and my dog is called Max."), Utterance("listener", "oh ?"),
            Utterance("speaker", "I am sad today")]
    mined = mining.generate([GenerationRequest(context=told, perception=glad)])[0].details
    assert mined["persona_sentences"] == ["I work as a nurse", "My dog is called Max"] and mined["persona_source"] == "context"
    assert mining.version.endswith("+ctxpersona")
    with pytest.raises(ValueError, match="persona_from_context"):
        create_generator("persona_moel", {**cfg, "persona_from_context": "yes"})


def test_ablated_generators_say_what_they_ignore(tmp_path, tiny_llama, encoder):
    make_model(tiny_llama, encoder, persona=False, experts=False).save(tmp_path / "m", extra={"trained_at": "t"}, half=True)
    gen = create_generator("persona_moel", {"model_dir": str(tmp_path / "m"), "backbone_path": str(tiny_llama),
                                            "device": "cpu", "num_beams": 1, "decoding": {"max_new_tokens": 3}})
    out = gen.generate([GenerationRequest(context=[Utterance("speaker", "i am sad today")], persona="I have two kids.",
                                          perception=make_perception("sad"))])[0].details
    assert out["persona_sentences"] == [] and out["persona_source"] == "ablated"
    assert out["listener_weights"] == {} and out["listeners"] == "shared only" and out["weights_source"] == "ignored"
    assert out["variant"] == "persona_moel-no-persona-experts"


def test_missing_or_foreign_model_folder_is_a_clear_error(tmp_path, tiny_llama):
    with pytest.raises(FileNotFoundError, match="empathy-nlg train"):
        create_generator("persona_moel", {"model_dir": str(tmp_path), "backbone_path": str(tiny_llama), "device": "cpu"})
    (tmp_path / "generator.json").write_text('{"generator": "mime"}')
    (tmp_path / "adapter").mkdir()
    with pytest.raises(ValueError, match="not a persona_moel"):
        M.RECIPE.load_model(tmp_path, None, None, trainable=False)


# ----------------------------------------------------------------------------------- training
CONVERSATIONS = [
    ("p1", "sad", ["I work as a nurse and my dog is called Max.", "oh no , how are you ?", "I am sad today , my dog died .",
                   "sorry to hear that ."]),
    ("p2", "joyful", ["I have two kids .", "that is great !", "my day was good today .", "happy to hear that ."]),
    ("p3", "afraid", ["i am afraid of the dark .", "oh no", "how do you feel ?", "i feel bad ."]),
    ("p4", "proud", ["I live in Leeds .", "good !", "I am happy today .", "great !"]),
]


def tiny_train_config(tmp_path, tiny_llama, **over):
    """A training config for the tiny model on :data:`CONVERSATIONS`; each section of ``over``
    (``data``, ``settings``, ``lora``, ``optim``) updates the default one."""
    data = K.write_ed(tmp_path / "ed.jsonl", CONVERSATIONS)
    cfg = {
        "generator": "persona_moel", "out_dir": str(tmp_path / "run"), "seed": 3, "device": "cpu",
        "backbone_path": str(tiny_llama),
        "data": {"train": str(data), "valid": str(data), "max_valid_examples": 4},
        "causes": "speaker",
        "settings": {"heads_dim": 32, "encoder_ff": 64, "listener_rank": 4, "listener_prefix": 2},
        "lora": {"r": 2, "alpha": 4},
        "optim": {"batch_size": 2, "warmup_steps": 1, "checkpoint_every": 2, "eval_every": 2},
    }
    for section, values in over.items():
        cfg[section] = {**cfg[section], **values}
    return cfg


def test_tiny_training_run_mines_persona_logs_it_and_ablates(tmp_path, tiny_llama, caplog, capsys):
    from empathy_nlg.training import generator as T

    cfg = tiny_train_config(tmp_path, tiny_llama, data={"max_train_examples": 8},
                            settings={"max_prompt_tokens": 48, "oracle_schedule": 2}, lora={"dropout": 0.1},
                            optim={"max_steps": 4})
    with caplog.at_level(logging.INFO):
        summary = T.train(cfg, progress=False)
    assert summary["stopped"] == "done"
    out = tmp_path / "run"
    base = [json.loads(l) for l in next(out.glob("features-train-base-*.jsonl")).read_text().splitlines()]
    mined = {r["i"]: r["keys"] for f in out.glob("extras-train-*.jsonl") for r in map(json.loads, f.read_text().splitlines())}
    assert sorted(mined) == list(range(8))  # 4 steps of 2: the persona of every example is mined
    feats = [{**f, **mined[i]} for i, f in enumerate(base)]
    by_turn = {(f["conv_id"], f["turn_index"]): f["persona"] for f in feats}
    assert by_turn[("p1", 1)] == ["I work as a nurse", "My dog is called Max"]
    assert by_turn[("p1", 3)] == ["I work as a nurse", "My dog is called Max"]  # the speaker's earlier turns count
    assert by_turn[("p3", 1)] == [] and by_turn[("p4", 3)] == ["I live in Leeds"]
    with_persona = sum(1 for f in feats if f["persona"])
    assert with_persona == 6  # p1, p2, p4: two examples each; p3 states nothing lasting
    assert f"{with_persona} of 8 examples" in caplog.text  # the feature builder says how many
    assert f"{with_persona} of 8 training examples" in caplog.text  # … and every run, from the cache too
    log = [json.loads(l) for l in (out / "log.jsonl").read_text().splitlines()]
    assert {"gen", "emotion", "oracle"} <= set(log[0])
    evals = [r for r in log if "valid_ppl" in r]
    assert evals and set(evals[0]["emotion_acc"]) == {"top1", "top2", "top5"}
    assert json.loads((out / "final" / "generator.json").read_text())["variant"] == "persona_moel"

    import yaml

    path = tmp_path / "persona_moel.yml"
    path.write_text(yaml.safe_dump({**cfg, "out_dir": str(tmp_path / "r2"), "features_dir": str(out)}))
    parser = argparse.ArgumentParser()
    T.add_arguments(parser)
    for part in ("experts", "persona"):
        assert T.run(parser.parse_args(["--generator", "persona_moel", "--config", str(path), "--ablate", part, "--quiet"])) == 0
        folder = tmp_path / f"r2-no-{part}"
        saved = json.loads((folder / "final" / "generator.json").read_text())
        assert saved["variant"] == f"persona_moel-no-{part}" and saved["settings"][part] is False
        ablated = [json.loads(l) for l in (folder / "log.jsonl").read_text().splitlines()]
        assert ("oracle" in ablated[0]) == (part != "experts")  # one shared listener: no weights to draw
    assert "persona_moel: 4/4 steps" in capsys.readouterr().out
    with pytest.raises(ValueError, match="persona_moel parts are persona, experts"):
        T.run(parser.parse_args(["--generator", "persona_moel", "--config", str(path), "--ablate", "cm", "--quiet"]))


def test_a_persona_share_run_mines_every_example_selects_and_trains_the_persona_in_words(tmp_path, tiny_llama, caplog):
    from empathy_nlg.training import generator as T

    cfg = tiny_train_config(tmp_path, tiny_llama, data={"persona_share": 0.75},
                            settings={"max_prompt_tokens": 64, "persona_in_prompt": True}, lora={"dropout": 0.0},
                            optim={"max_steps": 2})
    with caplog.at_level(logging.INFO):
        assert T.train(cfg, progress=False)["stopped"] == "done"
    # every example mined (not only the first steps'): 6 with a persona, p1's turn 3 has no fact left to move
    # in its last turn, so the 6 persona rows + 2 of the 2 without make 8 (share 0.75)
    assert "persona_share 0.75: 6 examples with a mined persona" in caplog.text
    assert "6 of 8 training examples (75.0 %)" in caplog.text
    saved = json.loads((tmp_path / "run" / "final" / "generator.json").read_text())
    assert saved["settings"]["persona_in_prompt"] is True and saved["settings"]["max_prompt_tokens"] == 64
    with pytest.raises(ValueError, match="persona_share"):
        T.train({**cfg, "out_dir": str(tmp_path / "bad"), "data": {**cfg["data"], "persona_share": 0}}, progress=False)
