"""MIME on a tiny random Llama with the real (frozen) MiniLM encoder."""

from __future__ import annotations

import pytest

torch = pytest.importorskip("torch")

from empathy_nlg.datasets import Utterance  # noqa: E402
from empathy_nlg.generators import GenerationRequest, available_generators, create_generator  # noqa: E402
from empathy_nlg.generators import conditioned as C  # noqa: E402
from empathy_nlg.generators import mime as M  # noqa: E402
from empathy_nlg.taxonomy import EMOTIONS, NEGATIVE_EMOTIONS, POSITIVE_EMOTIONS  # noqa: E402
from tests.empathy_nlg.conftest import make_perception  # noqa: E402

CONTEXT = [["speaker", "my dog died yesterday"], ["listener", "oh no"], ["speaker", "i am sad today"]]


def reply_emotion(label: str = "sad"):
    p = [0.01] * len(EMOTIONS)
    p[EMOTIONS.index(label)] = 1.0 - 0.01 * (len(EMOTIONS) - 1)
    return p


def feature(**over):
    f = {"context": CONTEXT, "reference": "sorry to hear that .", "emotion": "sad", "cause_indices": [0],
         "cm": None, "reply_emotion": reply_emotion("caring")}
    f.update(over)
    return f


def make_model(tiny_llama, encoder, **settings):
    bb = C.load_base(str(tiny_llama), device="cpu", dtype="float32")
    settings.setdefault("heads_dim", 32)
    settings.setdefault("latent_dim", 8)
    settings.setdefault("encoder_ff", 64)
    return M.MimeModel(M.MimeSettings(**settings), bb, encoder, lora={"r": 2, "alpha": 4, "dropout": 0.0})


def conditioning(model, positive, seed=None, temperature=1.0):
    ctx = [[Utterance(r, t) for r, t in CONTEXT]]
    gen = None
    if seed is not None:
        gen = torch.Generator().manual_seed(seed)
    model.train(False)
    with torch.no_grad():
        return model.conditioning(ctx, torch.tensor([positive]), temperature=temperature, generator=gen)


def test_registered_variant_names_and_groups():
    assert "mime" in available_generators()
    assert M.MimeSettings().variant == "mime"
    assert M.MimeSettings(mimicry=False, stochastic=False).variant == "mime-no-mimicry-stochastic"
    with pytest.raises(ValueError, match="unknown mime settings"):
        M.MimeSettings.from_mapping({"bogus": 1})
    assert [EMOTIONS[i] for i in M.GROUP_IDS["positive"]] == list(POSITIVE_EMOTIONS)
    assert len(M.GROUP_IDS["positive"]) == 13 and len(M.GROUP_IDS["negative"]) == 19
    assert {EMOTIONS[i] for i in M.GROUP_IDS["negative"]} == set(NEGATIVE_EMOTIONS)


def test_encoder_text_puts_the_newest_turn_first_and_the_silver_target_is_renormalised():
    ctx = [Utterance(r, t) for r, t in CONTEXT]
    assert C.encoder_text(ctx, 2) == "speaker: i am sad today | listener: oh no"
    target = M.silver_group_target(reply_emotion("caring"), "positive")
    assert target.shape == (13,) and abs(float(target.sum()) - 1) < 1e-6
    assert int(target.argmax()) == M.GROUP_IDS["positive"].index(EMOTIONS.index("caring"))
    flat = M.silver_group_target([0.0] * 32, "negative")
    assert torch.allclose(flat, torch.full((19,), 1 / 19))
    assert M.silver_group_target(None, "positive") is None


def test_gaussian_kl_matches_torch_distributions():
    from torch.distributions import Normal, kl_divergence

    mu_q, lv_q, mu_p, lv_p = (torch.randn(3, 5) for _ in range(4))
    ours = M.gaussian_kl(mu_q, lv_q, mu_p, lv_p)
    ref = kl_divergence(Normal(mu_q, (0.5 * lv_q).exp()), Normal(mu_p, (0.5 * lv_p).exp())).sum(-1)
    assert torch.allclose(ours, ref, atol=1e-5)
    assert torch.allclose(M.gaussian_kl(mu_q, lv_q, mu_q, lv_q), torch.zeros(3), atol=1e-6)


def test_loss_has_nll_emotion_and_elbo_terms_and_trains_every_part(tiny_llama, encoder):
    model = make_model(tiny_llama, encoder)
    model.train(True)
    loss, parts = model.loss([feature(), feature(emotion="joyful", reply_emotion=reply_emotion("excited"))])
    assert set(parts) == {"gen", "emotion", "recon", "kl"}
    assert all(v == v for v in parts.values()) and parts["kl"] > 0 and parts["recon"] > 0
    loss.backward()
    heads = dict(model.heads.named_parameters())
    for name in ("emotion_emb.weight", "W_emotion.weight", "ctx_token", "prior.positive.mu.weight",
                 "prior.negative.logvar.weight", "posterior.negative.mu.weight", "to_dist.positive.weight",
                 "reply_proj.weight", "resp_in.weight", "contrib.weight", "fused.weight", "prefix_proj.weight"):
        assert heads[name].grad is not None and heads[name].grad.abs().sum() > 0, name
    assert heads["to_dist.all.weight"].grad is None  # the ungrouped latent belongs to the ablation
    lora = [p for n, p in model.peft.named_parameters() if "lora_" in n and p.requires_grad]
    assert lora and any(p.grad is not None and p.grad.abs().sum() > 0 for p in lora)


def test_the_kl_warms_up_when_asked(tiny_llama, encoder):
    torch.manual_seed(0)
    model = make_model(tiny_llama, encoder, kl_warmup_steps=10)
    model.train(False)  # no dropout: the two calls differ only by the posterior's noise
    torch.manual_seed(1)
    early, parts = model.loss([feature()], step=0)
    torch.manual_seed(1)
    late, parts_late = model.loss([feature()], step=9)
    assert parts == parts_late
    assert float((late - early).detach()) == pytest.approx(0.9 * parts["kl"], rel=1e-4)


def test_sampling_differs_across_seeds_and_repeats_with_the_same_seed(tiny_llama, encoder):
    torch.manual_seed(0)
    model = make_model(tiny_llama, encoder)
    a, b, a_again = (conditioning(model, False, seed=s) for s in (1, 2, 1))
    assert not torch.allclose(a.distributions["negative"], b.distributions["negative"])
    assert not torch.allclose(a.prefixes[0], b.prefixes[0])
    assert torch.equal(a.prefixes[0], a_again.prefixes[0])
    mean_1, mean_2 = conditioning(model, False, seed=1, temperature=0.0), conditioning(model, False, seed=2, temperature=0.0)
    assert torch.equal(mean_1.prefixes[0], mean_2.prefixes[0])  # temperature 0: the prior's mean
    n_words = a.prefixes[0].shape[0] - 2
    assert 0 < n_words <= model.settings.max_context_tokens  # [m ; m̃ ; M_fused over the context words]


def test_mimicry_follows_the_users_group_and_each_ablation_removes_its_part(tiny_llama, encoder):
    torch.manual_seed(0)
    full = make_model(tiny_llama, encoder)
    pos, neg = conditioning(full, True, seed=1), conditioning(full, False, seed=1)
    # same draws, swapped roles: m is e_pos for a positive user, e_neg for a negative one
    assert torch.allclose(pos.prefixes[0][0], neg.prefixes[0][1]) and torch.allclose(pos.prefixes[0][1], neg.prefixes[0][0])
    assert 0.0 <= float(pos.mixture[0]) <= 1.0

    torch.manual_seed(0)
    no_mimicry = make_model(tiny_llama, encoder, mimicry=False)
    p, n = conditioning(no_mimicry, True, seed=1), conditioning(no_mimicry, False, seed=1)
    assert torch.equal(p.prefixes[0], n.prefixes[0])  # the user's group no longer matters

    no_grouping = make_model(tiny_llama, encoder, grouping=False)
    out = conditioning(no_grouping, False, seed=1)
    assert set(out.distributions) == {"all"} and out.distributions["all"].shape == (1, 32)
    assert torch.equal(out.prefixes[0][0], out.prefixes[0][1])  # m = m̃ = e

    no_stochastic = make_model(tiny_llama, encoder, stochastic=False)
    s1, s2 = conditioning(no_stochastic, False, seed=1), conditioning(no_stochastic, False, seed=2)
    assert torch.equal(s1.prefixes[0], s2.prefixes[0])
    no_stochastic.train(True)
    assert set(no_stochastic.loss([feature()])[1]) == {"gen", "emotion", "recon"}  # no KL, no posterior


def test_emotion_accuracy_is_top_k_of_its_own_classifier(tiny_llama, encoder):
    model = make_model(tiny_llama, encoder)
    acc = model.emotion_accuracy([feature(), feature(emotion="joyful")], ks=(1, 32))
    assert acc["top32"] == 100.0 and 0.0 <= acc["top1"] <= 100.0


def test_generator_serves_samples_as_candidates_with_its_emotions_in_details(tmp_path, tiny_llama, encoder):
    model = make_model(tiny_llama, encoder)
    model.save(tmp_path / "m", extra={"trained_at": "test"}, half=True)
    cfg = {"model_dir": str(tmp_path / "m"), "backbone_path": str(tiny_llama), "device": "cpu", "num_beams": 2,
           "samples": 2, "decoding": {"max_new_tokens": 5}}
    gen = create_generator("mime", cfg)
    assert gen.version == "mime/test+s2t1" and gen.candidates_per_request() == 2 and gen.rows_per_request() == 2
    ctx = [Utterance(r, t) for r, t in CONTEXT]
    glad = make_perception("joyful")
    with_p, without_p = gen.generate([GenerationRequest(context=ctx, perception=glad), GenerationRequest(context=ctx)])
    d = with_p.details
    assert d["polarity_group"] == "positive" and d["polarity_source"] == "perception"
    assert without_p.details["polarity_source"] == "mime"
    assert len(d["samples"]) == 2 and 0.0 <= d["mimicry_mixture"] <= 1.0
    draw = d["samples"][0]
    assert set(draw["sampled"]) == {"positive", "negative"} and len(draw["nearest"]) == 3
    assert all(e in EMOTIONS for e in draw["nearest"])
    assert 1 <= len(with_p.candidates) <= 2 and with_p.text in [c["text"] for c in with_p.candidates] + [""]
    scored = gen.score([GenerationRequest(context=ctx, perception=glad)], ["that is great ."])
    assert scored["tokens"] == len(C.encode_reply(gen.model.lm.tokenizer, "that is great .", 99, False))
    assert scored["nll"] > 0
    # a fresh generator replays the same draws; another seed draws others
    again = create_generator("mime", cfg).generate([GenerationRequest(context=ctx, perception=glad)])[0]
    assert again.details["samples"] == d["samples"]
    other = create_generator("mime", {**cfg, "seed": 99}).generate([GenerationRequest(context=ctx, perception=glad)])[0]
    assert other.details["samples"] != d["samples"]
    with pytest.raises(ValueError, match="samples"):
        create_generator("mime", {**cfg, "samples": 0})


def test_missing_or_foreign_model_folder_is_a_clear_error(tmp_path, tiny_llama):
    with pytest.raises(FileNotFoundError, match="empathy-nlg train"):
        create_generator("mime", {"model_dir": str(tmp_path), "backbone_path": str(tiny_llama), "device": "cpu"})
    (tmp_path / "generator.json").write_text('{"generator": "nec"}')
    (tmp_path / "adapter").mkdir()
    with pytest.raises(ValueError, match="not a mime"):
        M.RECIPE.load_model(tmp_path, None, None, trainable=False)
