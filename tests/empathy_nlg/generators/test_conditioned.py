"""The prefix-conditioned backbone shared by IMAGINE and NEC, on tiny random Llama and BART."""

from __future__ import annotations

import pytest

torch = pytest.importorskip("torch")

from empathy_nlg.datasets import Utterance  # noqa: E402
from empathy_nlg.generators import conditioned as C  # noqa: E402


def _lm(path, **lora):
    bb = C.load_base(str(path), device="cpu", dtype="float32")
    peft = C.attach_lora(bb.model, C.LoraSettings.from_mapping(lora or None))
    return C.ConditionedBackbone(peft, bb.tokenizer, bb.is_seq2seq, "cpu")


def _prefix(lm, n=3, seed=0, grad=False):
    g = torch.Generator().manual_seed(seed)
    p = torch.randn(n, lm.hidden_size, generator=g)
    return p.requires_grad_(grad)


def test_face_weights_downweight_frequent_tokens_and_keep_mean_one(tiny_llama):
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(str(tiny_llama))
    replies = ["sorry to hear that .", "sorry to hear that !", "how do you feel ?"]
    w = C.face_weights(tok, replies, len(tok))
    ids = lambda word: tok(word, add_special_tokens=False)["input_ids"][0]  # noqa: E731
    assert w[ids("sorry")] < w[ids("feel")]  # "sorry" twice, "feel" once
    counts = {}
    for r in replies:
        for t in tok(r, add_special_tokens=False)["input_ids"]:
            counts[t] = counts.get(t, 0) + 1
    counts[tok.eos_token_id] = counts.get(tok.eos_token_id, 0) + len(replies)
    mean = sum(w[t] * c for t, c in counts.items()) / sum(counts.values())
    assert mean == pytest.approx(1.0, abs=1e-6)
    assert min(w) >= 0.0


def test_prompt_keeps_the_last_turns_and_cuts_the_oldest_tokens(tiny_llama):
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(str(tiny_llama))
    ctx = [Utterance("speaker", "my day was bad"), Utterance("listener", "oh no"), Utterance("speaker", "i am sad")]
    msgs = C.prompt_messages(ctx, turns=2)
    assert [m["role"] for m in msgs] == ["system", "assistant", "user"]
    full = C.encode_prompt(tok, msgs, 10_000)
    cut = C.encode_prompt(tok, msgs, 5)
    assert cut == full[-5:]


@pytest.mark.parametrize("which", ["tiny_llama", "tiny_bart"])
def test_forward_aligns_reply_targets_and_prefix_gets_gradients(which, request):
    lm = _lm(request.getfixturevalue(which))
    tok = lm.tokenizer
    prompts = [C.encode_prompt(tok, C.prompt_messages([Utterance("speaker", "i am sad today")], 2), 64)] * 2
    replies = [C.encode_reply(tok, "sorry to hear that .", 32, lm.is_seq2seq), C.encode_reply(tok, "oh no", 32, lm.is_seq2seq)]
    prefixes = [_prefix(lm, 3, 0, grad=True), _prefix(lm, 1, 1, grad=True)]
    logits, targets, info = lm.forward(prefixes, prompts, replies, hidden=True)
    assert logits.shape[:2] == targets.shape
    # targets are the reply tokens (seq2seq: shifted past the start token), padding is -100
    expect0 = replies[0] if not lm.is_seq2seq else replies[0][1:]
    assert targets[0, : len(expect0)].tolist() == expect0
    assert (targets[1, len(replies[1]) :] == -100).all()
    C.token_nll(logits, targets).backward()
    assert prefixes[0].grad is not None and prefixes[0].grad.abs().sum() > 0
    assert info["context_hidden"].shape[-1] == lm.hidden_size and info["reply_hidden"].shape[0] == 2


@pytest.mark.parametrize("which", ["tiny_llama", "tiny_bart"])
def test_generation_is_deterministic_depends_on_the_prefix_and_returns_beams(which, request):
    lm = _lm(request.getfixturevalue(which))
    prompts = [C.encode_prompt(lm.tokenizer, C.prompt_messages([Utterance("speaker", "i am sad")], 2), 64)]
    a, _ = lm.generate([_prefix(lm, 4, 0)], prompts, {"max_new_tokens": 6})
    again, _ = lm.generate([_prefix(lm, 4, 0)], prompts, {"max_new_tokens": 6})
    assert a.shape[0] == 1 and a.shape[1] <= 6 + (1 if lm.is_seq2seq else 0)
    assert a.tolist() == again.tolist()  # greedy: deterministic
    _, s1 = lm.generate([_prefix(lm, 4, 0) * 20], prompts, {"max_new_tokens": 4}, num_return=3)
    beams, s2 = lm.generate([_prefix(lm, 4, 7) * 20], prompts, {"max_new_tokens": 4}, num_return=3)
    assert beams.shape[0] == 3 and s2.shape == (3,)
    assert not torch.equal(s1, s2)  # the conditioning reaches the output distribution


def test_rank_margin_loss_is_zero_only_when_the_ranking_holds_with_margins():
    anchor = torch.tensor([[1.0, 0.0]])
    good = torch.tensor([[1.0, 0.0]])
    negs_far = torch.tensor([[[0.0, 1.0], [-1.0, 0.0]]])  # cos 0 and -1: well below the positive
    loss, sims = C.rank_margin_loss(anchor, good, negs_far, gamma=0.01)
    assert float(loss) == 0.0 and sims.shape == (1, 3)
    negs_close = torch.tensor([[[1.0, 0.01], [0.0, 1.0]]])  # first negative as close as the positive
    loss2, _ = C.rank_margin_loss(anchor, good, negs_close, gamma=0.01)
    assert float(loss2) > 0.0


def test_save_and_load_round_trip(tmp_path, tiny_llama):
    bb = C.load_base(str(tiny_llama), device="cpu", dtype="float32")
    peft = C.attach_lora(bb.model, C.LoraSettings(r=2, alpha=4, dropout=0.0))
    heads = torch.nn.Linear(3, 2)
    C.save_trained(tmp_path / "m", peft, heads, {"generator": "x"}, half=True)
    assert C.read_trained_config(tmp_path / "m") == {"generator": "x"}
    other = torch.nn.Linear(3, 2)
    C.load_heads(tmp_path / "m", other, "cpu")
    assert torch.allclose(other.weight, heads.weight, atol=1e-3) and other.weight.dtype == torch.float32
    with pytest.raises(FileNotFoundError, match="no trained generator"):
        C.read_trained_config(tmp_path)
    with pytest.raises(ValueError, match="do not match"):
        C.load_heads(tmp_path / "m", torch.nn.Linear(4, 2), "cpu")


def test_lora_targets_must_exist(tiny_llama):
    bb = C.load_base(str(tiny_llama), device="cpu", dtype="float32")
    with pytest.raises(ValueError, match="LoRA target"):
        C.attach_lora(bb.model, C.LoraSettings(target_modules=["nope"]))


def test_reply_only_lm_head_gives_the_same_logits_as_the_full_head(tiny_llama):
    lm = _lm(tiny_llama)
    tok = lm.tokenizer
    prompts = [C.encode_prompt(tok, C.prompt_messages([Utterance("speaker", t)], 2), 64) for t in ("i am sad", "we won the cup today")]
    replies = [C.encode_reply(tok, "sorry to hear that .", 32, False), C.encode_reply(tok, "congrats", 32, False)]
    prefixes = [_prefix(lm, 2, seed=1), _prefix(lm, 0)]
    lm.reply_head_only = True
    fast, t1, _ = lm.forward(prefixes, prompts, replies)
    lm.reply_head_only = False
    full, t2, _ = lm.forward(prefixes, prompts, replies)
    assert torch.equal(t1, t2)
    assert torch.allclose(fast, full, atol=1e-5)
    # and both equal a plain forward of the model over the whole sequence
    emb = torch.cat([prefixes[0], lm.embed(torch.tensor(prompts[0] + replies[0]))]).unsqueeze(0)
    plain = lm.model(inputs_embeds=emb).logits[0]
    start = 2 + len(prompts[0])
    assert torch.allclose(fast[0, : len(replies[0])], plain[start - 1 : start - 1 + len(replies[0])], atol=1e-5)


def test_bf16_autocast_runs_the_forward_in_bfloat16_and_keeps_fp32_weights(tiny_llama):
    lm = _lm(tiny_llama)
    tok = lm.tokenizer
    prompts = [C.encode_prompt(tok, C.prompt_messages([Utterance("speaker", "i am sad")], 2), 64)]
    replies = [C.encode_reply(tok, "oh no", 32, False)]
    lm.autocast = "bf16"
    logits, _, _ = lm.forward([_prefix(lm, 0)], prompts, replies)
    assert logits.dtype == torch.bfloat16
    assert all(p.dtype == torch.float32 for p in lm.model.parameters())
    lm.autocast = None
    assert lm.forward([_prefix(lm, 0)], prompts, replies)[0].dtype == torch.float32


def test_lora_on_the_top_layers_only_leaves_the_lower_layers_without_graph(tiny_llama, tmp_path):
    from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM

    tok = AutoTokenizer.from_pretrained(str(tiny_llama))
    cfg = LlamaConfig.from_pretrained(str(tiny_llama))
    cfg.num_hidden_layers = 3
    torch.manual_seed(0)
    LlamaForCausalLM(cfg).save_pretrained(str(tmp_path / "three"))
    tok.save_pretrained(str(tmp_path / "three"))
    lm = _lm(tmp_path / "three", top_layers=1, target_modules=["q_proj", "v_proj", "gate_proj"])
    names = [n for n, p in lm.model.named_parameters() if p.requires_grad]
    assert names and all(".layers.2." in n for n in names)
    with pytest.raises(ValueError, match="between 1 and 3"):
        _lm(tmp_path / "three", top_layers=4)
    # the lower layers' outputs carry no autograd graph: only the top layer's do
    seen = {}
    for i, layer in enumerate(lm.model.get_base_model().model.layers):
        layer.register_forward_hook(lambda m, a, out, i=i: seen.__setitem__(i, (out[0] if isinstance(out, tuple) else out).requires_grad))
    prompts = [C.encode_prompt(tok, C.prompt_messages([Utterance("speaker", "i am sad")], 2), 64)]
    logits, targets, _ = lm.forward([_prefix(lm, 0)], prompts, [C.encode_reply(tok, "oh no", 32, False)])
    C.token_nll(logits, targets).backward()
    assert seen == {0: False, 1: False, 2: True}
