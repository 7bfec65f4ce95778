"""The crisis detector's own, fine-tuned sentence encoder: MiniLM + a LoRA adapter.

Why: every other perception head reads the *frozen* shared MiniLM, which was never taught that
"I tied the cord to the beam this morning" and "I tied my shoelaces this morning" are worlds apart
(issue #16: imminent-danger statements without suicide words were missed). The crisis classifier
is therefore trained end to end: a LoRA adapter on the encoder (attention and feed-forward
projections of every layer) and the crisis head on top, with gradients through both
(:func:`empathy_nlg.perception.crisis_train.finetune_crisis`).

Serving: the adapter is merged into a private copy of the packaged MiniLM at load time, so a
``/perceive`` call runs one extra MiniLM pass over the user's latest message (earlier messages are
LRU-cached, they were encoded at their own turn). The shared encoder is untouched, so the
emotion/cause/CM heads see exactly what they were trained on. Artefact: ``crisis_encoder/``
(``adapter_config.json`` + ``adapter_model.safetensors``, ≈ 1 MB) next to ``crisis_head.*``.
"""

from __future__ import annotations

from collections import OrderedDict
from pathlib import Path
from typing import List, Optional, Sequence

import numpy as np

ADAPTER_DIR = "crisis_encoder"
#: LoRA on every linear projection of MiniLM's layers (attention q/k/v/output, feed-forward)
TARGET_MODULES = ("query", "key", "value", "dense")
#: the same projections by the base model's ``model_type`` (MPNet names its attention q/k/v/o)
TARGET_MODULES_BY_TYPE = {"bert": TARGET_MODULES, "mpnet": ("q", "k", "v", "o", "dense")}


def pool(hidden, mask):
    """Mean over the real tokens, L2-normalised (the sentence-transformers recipe of :class:`SentenceEncoder`)."""
    import torch

    m = mask.unsqueeze(-1).to(hidden.dtype)
    pooled = (hidden * m).sum(1) / m.sum(1).clamp(min=1e-9)
    return torch.nn.functional.normalize(pooled, p=2, dim=1)


def fresh_linear_model(encoder_path: Optional[Path | str], adapter_dir: str, out_dim: int, version: str, r: int = 8,
                       max_length: int = 128, scale: float = 20.0, device: Optional[str] = None):
    """``(encoder, head, config)`` of a model trained end to end from scratch: a fresh LoRA adapter on
    the base encoder (:meth:`TunedEncoder.trainable`) and a linear head on its pooled output ×
    ``scale`` (the fine-tuned emotion model and the CM cross-encoder); ``config`` holds the fields
    both save with their head."""
    from empathy_nlg.perception.common import build_mlp

    enc = TunedEncoder.trainable(encoder_path, device=device, r=r, adapter_dir=adapter_dir)
    enc.max_length = max_length
    config = {"in_dim": enc.dim, "out_dim": out_dim, "hidden": 0, "dropout": 0.0, "scale": scale, "version": version,
              "lora_r": r, "max_length": max_length, "base_encoder": enc.path.name}
    return enc, build_mlp(enc.dim, out_dim), config


class TunedEncoder:
    """MiniLM with the crisis LoRA adapter: trainable (``peft`` model) or merged for serving.

    ``encode`` has the signature of :meth:`SentenceEncoder.encode` (normalised float32 rows) and keeps
    an LRU cache of the texts it saw, so a conversation's earlier messages are not re-encoded.
    """

    def __init__(self, model, tokenizer, path: Path, max_length: int = 128, cache_size: int = 512,
                 adapter_dir: str = ADAPTER_DIR) -> None:
        self.model = model
        self.adapter_dir = adapter_dir
        self.tokenizer = tokenizer
        self.path = Path(path)
        self.max_length = max_length
        self.dim = int(model.config.hidden_size)
        self.device = next(model.parameters()).device
        self._cache: "OrderedDict[str, np.ndarray]" = OrderedDict()
        self.cache_size = cache_size
        #: bf16 autocast in :meth:`forward` (set by the trainer where bf16 is native)
        self.autocast = False
        #: gloss emoji as :class:`SentenceEncoder` does (the crisis heads: their frozen start and the
        #: served larger encoder read glossed text); off for the emotion model, trained without it
        self.gloss_emoji = False

    @property
    def name(self) -> str:
        return f"{self.path.parent.name if self.path.name == 'model' else self.path.name}+{self.adapter_dir}"

    # -- construction -------------------------------------------------------------------------
    @classmethod
    def _base(cls, encoder_path: Optional[Path | str], device: Optional[str]):
        from transformers import AutoModel, AutoTokenizer

        from empathy_nlg.perception.encoder import default_encoder_path, pick_device

        path = Path(encoder_path) if encoder_path else default_encoder_path()
        tokenizer = AutoTokenizer.from_pretrained(str(path), local_files_only=True)
        model = AutoModel.from_pretrained(str(path), local_files_only=True).to(pick_device(device))
        return path, model, tokenizer

    @classmethod
    def trainable(cls, encoder_path: Optional[Path | str] = None, device: Optional[str] = None, r: int = 8,
                  alpha: int = 16, dropout: float = 0.1, top_layers: Optional[int] = None,
                  adapter_dir: str = ADAPTER_DIR) -> "TunedEncoder":
        """A fresh adapter (B = 0, so it starts as the frozen encoder) on ``top_layers`` (default all)."""
        from peft import LoraConfig, get_peft_model

        path, model, tokenizer = cls._base(encoder_path, device)
        n_layers = int(model.config.num_hidden_layers)
        layers = list(range(n_layers - top_layers, n_layers)) if top_layers else None
        targets = TARGET_MODULES_BY_TYPE.get(getattr(model.config, "model_type", ""), TARGET_MODULES)
        config = LoraConfig(r=r, lora_alpha=alpha, lora_dropout=dropout, target_modules=list(targets),
                            layers_to_transform=layers, layers_pattern="layer" if layers else None)
        return cls(get_peft_model(model, config), tokenizer, path, adapter_dir=adapter_dir)

    @classmethod
    def load(cls, art_dir: Path | str, encoder_path: Optional[Path | str] = None,
             device: Optional[str] = None, adapter_dir: str = ADAPTER_DIR, trainable: bool = False) -> "TunedEncoder":
        """The adapter in ``art_dir/adapter_dir`` on a private copy of the base encoder: merged into
        it (eval mode, for serving) or, ``trainable``, kept as a LoRA model to train further."""
        from peft import PeftModel

        adapter = Path(art_dir) / adapter_dir
        if not (adapter / "adapter_config.json").is_file():
            raise FileNotFoundError(f"no encoder adapter in {adapter}")
        path, model, tokenizer = cls._base(encoder_path, device)
        if trainable:
            return cls(PeftModel.from_pretrained(model, str(adapter), is_trainable=True), tokenizer, path,
                       adapter_dir=adapter_dir)
        merged = PeftModel.from_pretrained(model, str(adapter)).merge_and_unload().eval()
        return cls(merged, tokenizer, path, adapter_dir=adapter_dir)

    def save(self, art_dir: Path | str, half: bool = False) -> Path:
        """Write the adapter (only the LoRA weights) to ``art_dir/<adapter_dir>``, replacing what was
        there. ``half``: store the weights as fp16 (half the bytes of every committed version; LoRA
        weights are small numbers, well inside fp16's range; loading casts them to the model's dtype)."""
        import shutil

        out = Path(art_dir) / self.adapter_dir
        shutil.rmtree(out, ignore_errors=True)
        self.model.save_pretrained(str(out))
        (out / "README.md").unlink(missing_ok=True)  # PEFT's empty template; the model card says it all
        if half:
            from safetensors.torch import load_file, save_file

            weights = out / "adapter_model.safetensors"
            save_file({k: v.half() for k, v in load_file(str(weights)).items()}, str(weights))
        return out

    # -- encoding ---------------------------------------------------------------------------
    def forward(self, texts: Sequence[str]):
        """Pooled embeddings of ``texts`` as a tensor, with gradients when the model trains. With
        ``gloss_emoji``, emoji are glossed as :class:`SentenceEncoder` does; with ``autocast`` (bf16
        training on a CPU with native bf16 or on CUDA) the matmuls run in bf16 and the LoRA weights
        and the pooled output stay fp32."""
        import torch

        from empathy_nlg.text import emoji_gloss

        gloss = emoji_gloss if self.gloss_emoji else str
        batch = self.tokenizer([gloss(t) if t.strip() else "." for t in texts], padding=True, truncation=True,
                               max_length=self.max_length, return_tensors="pt")
        batch = {k: v.to(self.device) for k, v in batch.items()}
        with torch.autocast(self.device.type, dtype=torch.bfloat16, enabled=self.autocast):
            hidden = self.model(**batch).last_hidden_state
        return pool(hidden.float(), batch["attention_mask"])

    def forward_pairs(self, firsts: Sequence[str], seconds: Sequence[str]):
        """Pooled embeddings of text pairs read together (a cross-encoder: the tokenizer's pair format,
        the longer text of a pair truncated first to ``max_length`` tokens), as :meth:`forward`."""
        import torch

        if len(firsts) != len(seconds):
            raise ValueError(f"{len(firsts)} first texts for {len(seconds)} second texts")
        clean = lambda texts: [t if t.strip() else "." for t in texts]  # noqa: E731
        batch = self.tokenizer(clean(firsts), clean(seconds), padding=True, truncation="longest_first",
                               max_length=self.max_length, return_tensors="pt")
        batch = {k: v.to(self.device) for k, v in batch.items()}
        with torch.autocast(self.device.type, dtype=torch.bfloat16, enabled=self.autocast):
            hidden = self.model(**batch).last_hidden_state
        return pool(hidden.float(), batch["attention_mask"])

    def encode(self, texts: Sequence[str], batch_size: int = 64, progress: bool = False) -> np.ndarray:
        """Normalised float32 embeddings ``(len(texts), dim)``, cached per text (inference mode)."""
        import torch

        texts = [t if t.strip() else "." for t in texts]
        todo = list(dict.fromkeys(t for t in texts if t not in self._cache))
        if todo:
            was_training = self.model.training
            self.model.eval()
            order = sorted(range(len(todo)), key=lambda i: -len(todo[i]))
            iterator = range(0, len(todo), batch_size)
            if progress:
                from tqdm.auto import tqdm

                iterator = tqdm(iterator, desc="crisis encoder", unit="batch")
            with torch.inference_mode():
                for start in iterator:
                    idx = order[start : start + batch_size]
                    rows = self.forward([todo[i] for i in idx]).float().cpu().numpy()
                    for i, row in zip(idx, rows):
                        self._cache[todo[i]] = row
            if was_training:
                self.model.train()
        out: List[np.ndarray] = []
        for t in texts:
            self._cache.move_to_end(t)
            out.append(self._cache[t])
        # evict only after the texts of this call were read (and made the newest): evicting first
        # dropped a requested text that had been cached before this call once the call brought
        # more than ``cache_size`` new ones (the 909 calibration chat turns of v12)
        while len(self._cache) > max(self.cache_size, len(texts)):
            self._cache.popitem(last=False)
        return np.stack(out).astype(np.float32) if out else np.zeros((0, self.dim), dtype=np.float32)

    def clear_cache(self) -> None:
        self._cache.clear()
