from __future__ import annotations

import pytest

from empathy_nlg.backbone.loader import gguf_source, load_backbone


def test_loads_a_local_causal_checkpoint_and_generates(tiny_llama):
    import torch

    b = load_backbone(tiny_llama, device="cpu")
    assert not b.is_seq2seq and b.device == "cpu" and b.name == tiny_llama.name
    ids = b.tokenizer("i am sad", return_tensors="pt")
    out = b.model.generate(**ids, max_new_tokens=3, do_sample=False, pad_token_id=b.tokenizer.pad_token_id)
    assert out.shape[1] >= ids["input_ids"].shape[1] + 1
    assert next(b.model.parameters()).dtype == torch.float32  # auto → fp32 on CPU


def test_loads_a_local_seq2seq_bart_checkpoint(tiny_bart):
    b = load_backbone(tiny_bart, device="cpu", dtype="float32")
    assert b.is_seq2seq
    ids = b.tokenizer("my day was bad", return_tensors="pt")
    out = b.model.generate(**ids, max_new_tokens=3, do_sample=False)
    assert out.shape[0] == 1


def test_loads_a_lora_adapter_on_top(tiny_llama, tmp_path):
    from peft import LoraConfig, get_peft_model

    base = load_backbone(tiny_llama, device="cpu")
    peft_model = get_peft_model(base.model, LoraConfig(r=2, lora_alpha=4, target_modules=["q_proj", "v_proj"]))
    peft_model.save_pretrained(str(tmp_path / "adapter"))
    b = load_backbone(tiny_llama, device="cpu", adapter=tmp_path / "adapter")
    assert b.name.endswith("+adapter")
    assert any("lora" in n for n, _ in b.model.named_parameters())


def test_clear_errors_for_bad_paths_and_dtypes(tmp_path, tiny_llama):
    with pytest.raises(FileNotFoundError, match="config.json"):
        load_backbone(tmp_path)
    with pytest.raises(ValueError, match="dtype"):
        load_backbone(tiny_llama, device="cpu", dtype="float7")


def test_packaged_gguf_is_found():
    path = gguf_source()
    assert path.suffix == ".gguf" and path.stat().st_size > 50_000_000


def test_special_tokens_come_from_the_gguf_metadata_not_the_reader():
    """SmolLM2's GGUF says eos = pad = <|im_end|> (2); a reader that took <|im_start|> for eos
    (transformers 5.17 does) is corrected when the backbone is converted."""
    from transformers import AutoTokenizer

    from empathy_nlg.backbone.loader import align_special_tokens, default_backbone_dir, gguf_special_tokens, prepare_default_backbone

    ids = gguf_special_tokens(gguf_source())
    assert ids == {"bos": 1, "eos": 2, "unk": 0, "pad": 2}
    tok = AutoTokenizer.from_pretrained(str(prepare_default_backbone(default_backbone_dir())))
    assert tok.eos_token == "<|im_end|>" and align_special_tokens(tok, ids) == []  # the converted one is right
    tok.eos_token = "<|im_start|>"  # as transformers 5.17 reads the file
    assert align_special_tokens(tok, ids) == ["eos <|im_start|> → <|im_end|>"]
    assert tok.eos_token == "<|im_end|>" and tok.eos_token_id == 2
