"""``empathy-nlg evaluate``: run response generators on an ED-format file and score them.

Every listener turn with at least one turn before it is one example (context = the turns before
it, reference = that turn, gold emotion = the conversation's label); ``--limit N`` keeps the first
N examples in file order. For each generator the harness

1. perceives each context once (the injected *perceiver*; shared by all generators),
2. generates the replies in batches with a progress bar, appending every finished batch to
   ``DIR/<generator>/predictions.jsonl`` — a rerun reuses the predictions already there (keyed by
   ``conv_id`` + ``turn_index``) and only generates the rest,
3. scores the references under the generator when it supports ``score()`` (perplexity),
4. labels replies and references with the EPITOME response classifiers (the injected
   *cm_scorer*; seeker post = the context's last speaker utterance),
5. writes ``DIR/<generator>/metrics.json`` (keys and definitions: :mod:`.metrics`), and at the
   end ``DIR/report.md`` with the published rows and plots (:mod:`.report`).

The perceiver and the CM scorer are plain objects passed to :func:`evaluate` (anything with
``perceive_batch(dialogues)`` / ``predict(seeker_posts, responses)``); :func:`run` loads the real
ones. Nothing is parsed at import time.

**Harness options of a label.** A label's config section may hold, beside the generator's own
arguments, options the *harness* acts on (:data:`HARNESS_OPTIONS`; they never reach the
generator's constructor):

* ``causes: perception | gold`` (default ``perception``) — where the request's cause utterances
  come from. ``gold``: the example's gold cause labels (``ed-cause-jsonl``'s ``emotion_cause``)
  replace perception's ``causes`` in the request's perception (everything else perceived stays:
  emotion, CM, crisis). Gao et al.'s ``emotion_cause`` indexes ``utters`` — *all* turns of the
  conversation, speaker and listener alternating from the speaker — so an index is directly an
  index into the example's context (``context = turns[:turn_index]``, the indices before the
  reply's turn are kept, :func:`~empathy_nlg.datasets.generation_examples`); a few gold causes are
  listener turns, which perception (speaker candidates only) never picks, and they are kept. A gold
  cause carries no word spans (``spans=[]``): what inside the utterance caused the emotion is left
  to the generator (``cause_gated`` takes the words' probabilities and labels from perception's
  span head, as it does for perceived causes). An example whose gold causes all lie after its
  context gets no cause utterance (``[]``: the gold labels say none is in the context yet). Data
  without cause labels (``ed-jsonl``), or a run without the perceiver, is refused before anything
  is generated: a ``gold`` row made of perceived causes would be mislabelled. Records of such a
  label carry ``cause_source: "gold"`` and ``request_cause_indices``.

* ``conversation: true`` (or a mapping over the engine's ``generation.conversation`` section, e.g.
  ``{rerank: {enabled: false}}`` or ``{exemplars: {enabled: false}}``) — decode for the conversation
  as the engine does (:mod:`empathy_nlg.decoding.conversation`): the context's listener turns are
  the assistant's earlier replies (the request's ``earlier_replies``, which the generator's history
  bias reads), and the conversation reranker chooses among the generator's candidates and the ED
  train exemplars nearest to the speaker's recent messages, with the project's perception
  (:func:`~empathy_nlg.decoding.conversation.choose_reply`). The generator's own history bias is its
  option (``history_bias: 0`` turns it off), so each of the three mechanisms can be ablated on the
  harness. What the engine adds beyond this — the story's polarity from stored turns, names from
  the persona memory — needs SQL state and is left out. Records carry ``decoding`` (which decoding
  made them, so a rerun never mixes two) and ``conversation`` (the chosen source, the generator's
  own reply, the reranker's terms). Needs the perceiver.

With gold labels in the data (``ed-cause-jsonl``) every ``metrics.json`` also scores perception's
cause utterances against them (``cause_p`` / ``cause_r`` / ``cause_f1`` / ``cause_exact``,
:func:`.metrics.cause_agreement`).
"""

from __future__ import annotations

import argparse
import dataclasses
import importlib.util
import json
import logging
import os
import random
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Dict, Iterable, List, Mapping, Optional, Protocol, Sequence, Tuple

from empathy_nlg.decoding.conversation import choose_reply
from empathy_nlg.datasets import (
    ED_FORMATS,
    GenerationExample,
    Utterance,
    generation_examples,
    read_conversations,
    seeker_post,
)
from empathy_nlg.evaluation import metrics as M
from empathy_nlg.generators.base import (
    GenerationRequest,
    Generator,
    available_generators,
    create_generator,
)
from empathy_nlg.perception.types import CauseUtterance, Perception
from empathy_nlg.taxonomy import CM_CODES

log = logging.getLogger(__name__)

PREDICTIONS = "predictions.jsonl"
METRICS = "metrics.json"
Key = Tuple[str, int]
#: options of a label's config section that the harness acts on (never passed to the generator)
HARNESS_OPTIONS = ("causes", "conversation")
#: where the request's cause utterances come from (``causes:``)
CAUSE_SOURCES = ("perception", "gold")
#: the decoding of a record made without ``conversation:`` (the generator's reply as it is)
TURN_DECODING = "turn"
_NEEDS_PERCEIVER = ("generator {name!r} has conversation:, which chooses the reply with perception: "
                    "it needs the perceiver (drop --no-perception)")


class PerceiverLike(Protocol):
    def perceive_batch(self, dialogues: Sequence[Sequence[Utterance]]) -> List[Perception]: ...


class CMScorerLike(Protocol):
    def predict(self, seeker_posts: Sequence[str], responses: Sequence[str]) -> Mapping[str, Any]: ...


# ----------------------------------------------------------------------------------- arguments
@dataclass
class ConversationDecoding:
    """What a ``conversation:`` label does after its generator (module doc): the reranker and the
    exemplar index of :func:`empathy_nlg.engine.build_conversation_decoding` (either may be ``None``),
    the encoder that queries the exemplars, and ``key``, the decoding its records are marked with."""

    reranker: Any
    exemplars: Any = None
    embed: Optional[Callable] = None
    k: int = 3
    min_score: float = 0.55
    key: str = "conversation"
    max_earlier: int = 20  # as the engine's earlier_replies

    def earlier(self, ex: GenerationExample) -> List[str]:
        """The context's listener turns (the last ``max_earlier``): the replies the assistant already
        gave in this conversation, what the request's ``earlier_replies`` carries."""
        return [u.text for u in ex.context if u.role == "listener" and u.text.strip()][-self.max_earlier:]

    def choose(self, request: GenerationRequest, result) -> Tuple[str, str, Optional[Dict[str, Any]]]:
        """The reply to ``request`` (built with :meth:`earlier`) among ``result``'s candidates and the exemplars."""
        users = [u.text for u in request.context if u.role == "speaker"]
        return choose_reply(result, users, request.perception, request.earlier_replies, self.reranker,
                            self.exemplars, self.embed, self.k, self.min_score)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--data", required=True, help="ED-format file to evaluate on")
    parser.add_argument(
        "--format", default="ed-jsonl", metavar="{" + ",".join(ED_FORMATS) + "}",
        help="format of --data (default: ed-jsonl)",
    )
    parser.add_argument(
        "--generator", action="append", required=True, metavar="NAME",
        help="generator name from the registry; repeat for several (available: "
        + ", ".join(available_generators()) + ")",
    )
    parser.add_argument("--limit", type=int, default=None, help="evaluate the first N examples only")
    parser.add_argument("--seed", type=int, default=13, help="seed for python/numpy/torch (default 13)")
    parser.add_argument("--batch-size", type=int, default=8, help="examples per generate/perceive call (default 8)")
    parser.add_argument("--out", required=True, help="output folder (DIR/<generator>/…, DIR/report.md)")
    parser.add_argument(
        "--config", default=None,
        help="YAML/JSON file: {generators: {NAME: {...}}, perceiver: {artifacts_dir: ...}} "
        "(a top-level NAME: {...} or the engine config's generation.generators.NAME also work; "
        "default: the engine's default generator settings)",
    )
    parser.add_argument(
        "--train-data", default=None,
        help="training conversations for generators that fit on training replies (default: "
        "<data dir>/empathetic_dialogues/train.jsonl)",
    )
    parser.add_argument("--train-format", default="ed-jsonl", help="format of --train-data (default ed-jsonl)")
    parser.add_argument(
        "--no-perception", action="store_true",
        help="do not load the perceiver (emotion_acc becomes null; generators get no perception)",
    )
    parser.add_argument(
        "--no-cm-scorer", action="store_true",
        help="do not load the EPITOME response classifiers (epitome_* become null)",
    )
    parser.add_argument("--no-progress", action="store_true", help="hide the progress bars")


# ----------------------------------------------------------------------------------- data
def load_examples(path: str | Path, fmt: str, limit: Optional[int] = None) -> List[GenerationExample]:
    """The evaluation examples of an ED-format file (first ``limit`` in file order)."""
    if fmt not in ED_FORMATS:
        raise ValueError(f"unknown format {fmt!r}; expected one of {', '.join(ED_FORMATS)}")
    if limit is not None and limit <= 0:
        raise ValueError(f"--limit must be a positive number, got {limit}")
    examples = generation_examples(read_conversations(path, fmt))
    if not examples:
        raise ValueError(f"{path}: no listener turn with a turn before it: nothing to evaluate")
    return examples[:limit] if limit else examples


def training_replies(path: str | Path, fmt: str = "ed-jsonl") -> List[str]:
    """The listener replies of a training file (every listener turn with context)."""
    return [ex.reference for ex in generation_examples(read_conversations(path, fmt))]


def seed_everything(seed: int) -> None:
    random.seed(seed)
    os.environ["PYTHONHASHSEED"] = str(seed)
    try:
        import numpy as np

        np.random.seed(seed)
    except ImportError:  # pragma: no cover
        pass
    if "torch" in sys.modules or importlib.util.find_spec("torch") is not None:
        import torch

        torch.manual_seed(seed)


# ----------------------------------------------------------------------------------- records
def _perception_fields(p: Optional[Perception]) -> Dict[str, Any]:
    if p is None:
        return {"perceived_emotion": None, "emotion_top3": [], "causes": [], "cm": {}, "cm_plan": []}
    return {
        "perceived_emotion": p.emotion,
        "emotion_top3": p.top_k(3),
        "polarity": p.polarity,
        "causes": [{"index": c.index, "text": c.text, "score": round(float(c.score), 4)} for c in p.causes],
        "cm": {k: round(float(v), 4) for k, v in p.cm.items()},
        "cm_plan": p.cm_plan,
    }


def gold_cause_perception(p: Perception, ex: GenerationExample) -> Perception:
    """``p`` with its cause utterances replaced by the example's gold ones (a copy: the cached
    perception is shared by all generators). ``ex.cause_indices`` index the context directly
    (see the module docstring); a gold cause has no word spans."""
    if ex.cause_indices is None:
        raise ValueError(f"{ex.conv_id} turn {ex.turn_index}: no gold cause labels")
    causes = [CauseUtterance(index=int(i), text=ex.context[i].text, score=1.0, spans=[])
              for i in ex.cause_indices if 0 <= int(i) < len(ex.context)]
    models = dict(p.models or {})
    models["cause"] = "gold"
    return dataclasses.replace(p, causes=causes, models=models)


def _record(ex: GenerationExample, perception: Optional[Perception], result, score,
            request: Optional[GenerationRequest] = None, cause_source: str = "perception") -> Dict[str, Any]:
    rec: Dict[str, Any] = {
        "conv_id": ex.conv_id,
        "turn_index": ex.turn_index,
        "context": [{"role": u.role, "text": u.text} for u in ex.context],
        "reference": ex.reference,
        "reply": result.text,
        "gold_emotion": ex.emotion,
    }
    if ex.cause_indices is not None:
        rec["gold_cause_indices"] = ex.cause_indices
    rec.update(_perception_fields(perception))  # perception's own causes, whatever the request got
    if cause_source != "perception":
        rec["cause_source"] = cause_source
        causes = request.perception.causes if request is not None and request.perception is not None else []
        rec["request_cause_indices"] = [int(c.index) for c in causes]
    rec["knowledge"] = result.knowledge or {}
    rec["generator"] = result.generator
    rec["version"] = result.version
    rec["details"] = _jsonable(result.details)
    rec["score"] = score
    rec["epitome"] = None
    rec["ref_epitome"] = None
    return rec


def _jsonable(value: Any) -> Any:
    try:
        json.dumps(value)
        return value
    except (TypeError, ValueError):
        return json.loads(json.dumps(value, default=str))


def read_predictions(path: Path) -> Dict[Key, Dict[str, Any]]:
    """Records already in a predictions file; unreadable lines (an interrupted write) are skipped."""
    out: Dict[Key, Dict[str, Any]] = {}
    if not path.is_file():
        return out
    with path.open(encoding="utf-8") as fh:
        for lineno, line in enumerate(fh, start=1):
            if not line.strip():
                continue
            try:
                rec = json.loads(line)
                key = (str(rec["conv_id"]), int(rec["turn_index"]))
                rec["reply"]
            except (json.JSONDecodeError, KeyError, TypeError, ValueError):
                log.warning("%s: line %d is not a prediction record; it will be regenerated", path, lineno)
                continue
            out[key] = rec
    return out


def _write_records(path: Path, records: Iterable[Dict[str, Any]]) -> None:
    tmp = path.with_suffix(path.suffix + ".tmp")
    with tmp.open("w", encoding="utf-8") as fh:
        for rec in records:
            fh.write(json.dumps(rec, ensure_ascii=False) + "\n")
    os.replace(tmp, path)


# ----------------------------------------------------------------------------------- evaluation
@dataclass
class GeneratorRun:
    name: str
    records: List[Dict[str, Any]]
    reused: int
    generated: int
    seconds: float
    metrics: Dict[str, Any] = field(default_factory=dict)


def _batches(items: Sequence[Any], size: int) -> Iterable[Sequence[Any]]:
    for i in range(0, len(items), size):
        yield items[i : i + size]


def _progress(total: int, desc: str, enabled: bool):
    from tqdm.auto import tqdm

    return tqdm(total=total, desc=desc, unit="ex", disable=not enabled, file=sys.stderr, dynamic_ncols=True)


class _PerceptionCache:
    """Perceive each context at most once per run, shared by all generators."""

    def __init__(self, perceiver: Optional[PerceiverLike]) -> None:
        self.perceiver = perceiver
        self.cache: Dict[Key, Optional[Perception]] = {}
        self.seconds = 0.0  # time spent perceiving (kept out of the generators' seconds)

    def get(self, examples: Sequence[GenerationExample]) -> List[Optional[Perception]]:
        keys = [(ex.conv_id, ex.turn_index) for ex in examples]
        if self.perceiver is None:
            return [None] * len(examples)
        todo = [ex for ex, k in zip(examples, keys) if k not in self.cache]
        if todo:
            t0 = time.perf_counter()
            found = self.perceiver.perceive_batch([ex.context for ex in todo])
            self.seconds += time.perf_counter() - t0
            if len(found) != len(todo):
                raise RuntimeError(f"perceiver returned {len(found)} results for {len(todo)} dialogues")
            for ex, p in zip(todo, found):
                self.cache[(ex.conv_id, ex.turn_index)] = p
        return [self.cache[k] for k in keys]


def _score_one(gen: Generator, request: GenerationRequest, reference: str) -> Optional[Dict[str, Any]]:
    out = gen.score([request], [reference])
    if out is None:
        return None
    return {"nll": float(out["nll"]), "tokens": int(out["tokens"]), "tokenizer": str(out.get("tokenizer", ""))}


def _generate_missing(
    name: str,
    gen: Generator,
    examples: Sequence[GenerationExample],
    existing: Dict[Key, Dict[str, Any]],
    pred_path: Path,
    perceptions: _PerceptionCache,
    batch_size: int,
    progress: bool,
    cause_source: str = "perception",
    conversation: Optional[ConversationDecoding] = None,
) -> Tuple[int, float]:
    uses_perception = bool(getattr(gen, "needs_perception", True)) and perceptions.perceiver is not None
    version = getattr(gen, "version", None)
    decoding = conversation.key if conversation is not None else TURN_DECODING
    todo = [ex for ex in examples
            if _stale(existing.get((ex.conv_id, ex.turn_index)), ex, uses_perception, version, cause_source, decoding)]
    if not todo:
        return 0, 0.0
    can_score = type(gen).score is not Generator.score
    start, perceiving_before = time.perf_counter(), perceptions.seconds
    with pred_path.open("a", encoding="utf-8") as fh, _progress(len(todo), name, progress) as bar:
        for batch in _batches(todo, batch_size):
            percs = perceptions.get(batch)
            requests = [GenerationRequest(context=list(ex.context),
                                          perception=gold_cause_perception(p, ex) if cause_source == "gold" and p is not None else p,
                                          earlier_replies=conversation.earlier(ex) if conversation is not None else [])
                        for ex, p in zip(batch, percs)]
            results = gen.generate(requests)
            if len(results) != len(batch):
                raise RuntimeError(f"generator {name!r} returned {len(results)} replies for {len(batch)} requests")
            for ex, p, req, res in zip(batch, percs, requests, results):
                score = _score_one(gen, req, ex.reference) if can_score else None
                rec = _record(ex, p, res, score, req, cause_source)
                if conversation is not None:
                    text, source, rerank = conversation.choose(req, res)
                    rec["reply"] = text
                    rec["decoding"] = conversation.key
                    rec["conversation"] = {"source": source, "generator_reply": res.text, "rerank": _jsonable(rerank)}
                existing[(ex.conv_id, ex.turn_index)] = rec
                fh.write(json.dumps(rec, ensure_ascii=False) + "\n")
            fh.flush()
            bar.update(len(batch))
    return len(todo), time.perf_counter() - start - (perceptions.seconds - perceiving_before)


def _stale(rec: Optional[Dict[str, Any]], ex: GenerationExample, uses_perception: bool = False,
           version: Optional[str] = None, cause_source: str = "perception", decoding: str = TURN_DECODING) -> bool:
    """A stored record is reusable only for the same example (same reference text), from the same
    model (its ``version``, when the generator has one: a label whose model was replaced — a newly
    served NEC — regenerates rather than mixing two models' replies), with the same cause source
    (``causes:``) and decoding (``conversation:``), and — for a generator that conditions on
    perception — only if it was generated with perception."""
    if rec is None or rec.get("reference") != ex.reference:
        return True
    if version is not None and rec.get("version") != version:
        return True
    if rec.get("cause_source", "perception") != cause_source:
        return True
    if rec.get("decoding", TURN_DECODING) != decoding:
        return True
    return uses_perception and rec.get("perceived_emotion") is None


def _fill_perception(
    records: Sequence[Dict[str, Any]], examples: Sequence[GenerationExample], perceptions: "_PerceptionCache", batch_size: int
) -> None:
    """Add perception to reused records made without it (replies of such generators do not depend on it)."""
    if perceptions.perceiver is None:
        return
    missing = [(rec, ex) for rec, ex in zip(records, examples) if rec.get("perceived_emotion") is None]
    for i in range(0, len(missing), batch_size):
        chunk = missing[i : i + batch_size]
        for (rec, _), p in zip(chunk, perceptions.get([ex for _, ex in chunk])):
            rec.update(_perception_fields(p))


def _label_cm(
    records: Sequence[Dict[str, Any]],
    cm_scorer: Optional[CMScorerLike],
    ref_cache: Dict[Key, Dict[str, bool]],
    batch_size: int,
) -> None:
    """Fill ``epitome`` (reply) and ``ref_epitome`` (reference) flags where missing."""
    if cm_scorer is None:
        return

    def flags(posts: List[str], texts: List[str]) -> List[Dict[str, bool]]:
        out: List[Dict[str, bool]] = []
        for i in range(0, len(posts), max(batch_size, 32)):
            pred = cm_scorer.predict(posts[i : i + max(batch_size, 32)], texts[i : i + max(batch_size, 32)])
            n = len(posts[i : i + max(batch_size, 32)])
            for j in range(n):
                out.append({c: bool(pred[c][j]) for c in CM_CODES if c in pred})
        return out

    for rec in records:
        key = (rec["conv_id"], rec["turn_index"])
        if rec.get("ref_epitome") is None and key in ref_cache:
            rec["ref_epitome"] = ref_cache[key]
        elif rec.get("ref_epitome") is not None:
            ref_cache.setdefault(key, rec["ref_epitome"])
    need_reply = [r for r in records if r.get("epitome") is None]
    if need_reply:
        posts = [seeker_post([Utterance(**u) for u in r["context"]]) for r in need_reply]
        for rec, f in zip(need_reply, flags(posts, [r["reply"] for r in need_reply])):
            rec["epitome"] = f
    need_ref = [r for r in records if r.get("ref_epitome") is None]
    if need_ref:
        posts = [seeker_post([Utterance(**u) for u in r["context"]]) for r in need_ref]
        for rec, f in zip(need_ref, flags(posts, [r["reference"] for r in need_ref])):
            rec["ref_epitome"] = f
            ref_cache[(rec["conv_id"], rec["turn_index"])] = f


def polarity_split(records: Sequence[Dict[str, Any]]) -> Dict[str, Dict[str, Any]]:
    """The metrics again on the positive and on the negative contexts (by the conversation's gold ED
    emotion and MIME's 13/19 grouping, ``taxonomy.polarity_of``): MIME's Table 4 split. Records
    without a known gold emotion are left out of both; ``seconds`` is not split."""
    from empathy_nlg.taxonomy import EMOTIONS, polarity_of

    out: Dict[str, Dict[str, Any]] = {}
    for group in ("positive", "negative"):
        subset = [r for r in records if r.get("gold_emotion") in EMOTIONS and polarity_of(r["gold_emotion"]) == group]
        m = compute_metrics(subset, 0.0)
        m.pop("seconds", None)
        out[group] = m
    return out


def cause_agreement_metrics(records: Sequence[Dict[str, Any]]) -> Dict[str, Any]:
    """Perception's cause utterances (``causes``) against the gold ones (``gold_cause_indices``)
    over the records that have both; every key ``None`` when none has (plain ED data, or no
    perceiver)."""
    pairs = [([int(c["index"]) for c in r.get("causes") or []], r["gold_cause_indices"]) for r in records
             if r.get("gold_cause_indices") is not None and r.get("perceived_emotion") is not None]
    if not pairs:
        return {k: None for k in M.CAUSE_AGREEMENT_KEYS}
    return M.cause_agreement([p for p, _ in pairs], [g for _, g in pairs])


def compute_metrics(records: Sequence[Dict[str, Any]], seconds: float) -> Dict[str, Any]:
    """metrics.json for one generator from its prediction records (in example order)."""
    replies = [r["reply"] or "" for r in records]
    refs = [r["reference"] for r in records]
    out: Dict[str, Any] = {"n": len(records)}
    if records:
        out.update(M.reply_metrics(replies, refs))
    else:
        out.update({k: None for k in ("bleu1", "bleu2", "bleu3", "bleu4", "dist1", "dist2", "sent_std", "top5_share", "avg_len")})
    gold = [r["gold_emotion"] for r in records]
    perceived = [r.get("perceived_emotion") for r in records]
    out["emotion_acc"] = M.accuracy(perceived, gold) if records else None
    own = [(r.get("details") or {}).get("emotion") for r in records]
    out["generator_emotion_acc"] = M.accuracy(own, gold) if records else None
    out.update(cause_agreement_metrics(records))
    scores = [r.get("score") for r in records]
    if records and all(s is not None for s in scores):
        out["ppl"] = M.perplexity(sum(s["nll"] for s in scores), sum(s["tokens"] for s in scores))
        out["ppl_tokenizer"] = scores[0].get("tokenizer") or None
    else:
        out["ppl"] = None
        out["ppl_tokenizer"] = None
    for prefix, field_ in (("epitome", "epitome"), ("ref_epitome", "ref_epitome")):
        for code in CM_CODES:
            flags = [r.get(field_) for r in records]
            if records and all(f is not None and code in f for f in flags):
                out[f"{prefix}_{code.lower()}"] = M.positive_rate(f[code] for f in flags)
            else:
                out[f"{prefix}_{code.lower()}"] = None
    out["seconds"] = round(seconds, 3)
    out["tokenizer"] = M.TOKENIZER_NAME
    out["bleu_smoothing"] = M.BLEU_SMOOTHING
    out["definitions"] = dict(M.DEFINITIONS)
    return out


def _check_cause_sources(sources: Mapping[str, str], examples: Sequence[GenerationExample],
                         perceiver: Optional[PerceiverLike]) -> None:
    """Refuse a ``causes: gold`` label the data or the run cannot serve (before generating anything)."""
    for name, source in sources.items():
        if source not in CAUSE_SOURCES:
            raise ValueError(f"generator {name!r}: causes must be one of {', '.join(CAUSE_SOURCES)}, got {source!r}")
        if source != "gold":
            continue
        unlabelled = [ex for ex in examples if ex.cause_indices is None]
        if unlabelled:
            ex = unlabelled[0]
            raise ValueError(f"generator {name!r} has causes: gold, but {len(unlabelled)} of {len(examples)} examples "
                             f"carry no gold cause labels (first: {ex.conv_id} turn {ex.turn_index}); evaluate it on "
                             "Gao et al.'s files (--format ed-cause-jsonl), or drop causes: gold")
        if perceiver is None:
            raise ValueError(f"generator {name!r} has causes: gold, which replaces perception's causes: it needs the "
                             "perceiver (drop --no-perception)")


def evaluate(
    examples: Sequence[GenerationExample],
    generators: Mapping[str, Generator],
    out_dir: str | Path,
    *,
    perceiver: Optional[PerceiverLike] = None,
    cm_scorer: Optional[CMScorerLike] = None,
    batch_size: int = 8,
    seed: int = 13,
    progress: bool = True,
    meta: Optional[Dict[str, Any]] = None,
    write_report: bool = True,
    causes: Optional[Mapping[str, str]] = None,
    conversation: Optional[Mapping[str, ConversationDecoding]] = None,
) -> Dict[str, GeneratorRun]:
    """Generate (or reuse), score and write the outputs for each generator; returns the runs.
    ``causes``: per generator name, where its requests' cause utterances come from
    (``perception``, the default, or ``gold``; see the module docstring); ``conversation``: per
    generator name, the conversation decoding applied after it (absent: the reply as generated)."""
    if batch_size <= 0:
        raise ValueError(f"--batch-size must be positive, got {batch_size}")
    sources = {name: str((causes or {}).get(name) or "perception") for name in generators}
    _check_cause_sources(sources, examples, perceiver)
    decodings = dict(conversation or {})
    if decodings and perceiver is None:
        raise ValueError(_NEEDS_PERCEIVER.format(name=sorted(decodings)[0]))
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    perceptions = _PerceptionCache(perceiver)
    ref_cache: Dict[Key, Dict[str, bool]] = {}
    runs: Dict[str, GeneratorRun] = {}
    wanted = {(ex.conv_id, ex.turn_index) for ex in examples}
    for name, gen in generators.items():
        gdir = out / name
        gdir.mkdir(parents=True, exist_ok=True)
        pred_path = gdir / PREDICTIONS
        existing = read_predictions(pred_path)
        uses_perception = bool(getattr(gen, "needs_perception", True)) and perceiver is not None
        decoding = decodings[name].key if name in decodings else TURN_DECODING
        reusable = sum(not _stale(existing.get((ex.conv_id, ex.turn_index)), ex, uses_perception, getattr(gen, "version", None),
                                  sources[name], decoding)
                       for ex in examples)
        if reusable:
            log.info("%s: reusing %d of %d predictions from %s", name, reusable, len(examples), pred_path)
        seed_everything(seed)
        generated, seconds = _generate_missing(name, gen, examples, existing, pred_path, perceptions, batch_size, progress,
                                               sources[name], decodings.get(name))
        records = [existing[(ex.conv_id, ex.turn_index)] for ex in examples]
        _fill_perception(records, examples, perceptions, batch_size)
        _label_cm(records, cm_scorer, ref_cache, batch_size)
        extras = [r for k, r in existing.items() if k not in wanted]
        _write_records(pred_path, list(records) + extras)
        m = compute_metrics(records, seconds)
        m["by_polarity"] = polarity_split(records)
        m["generator"] = name
        m["generator_version"] = getattr(gen, "version", None)
        m["cause_source"] = sources[name]
        m["decoding"] = decoding
        m["reused_predictions"] = len(examples) - generated
        m["generated_predictions"] = generated
        m["seconds_per_generated"] = round(seconds / generated, 3) if generated else None
        m["seed"] = seed
        if meta:
            m["data"] = meta
        (gdir / METRICS).write_text(json.dumps(m, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
        runs[name] = GeneratorRun(name, records, len(examples) - generated, generated, seconds, m)
    if meta is not None:
        meta["perception_seconds"] = round(perceptions.seconds, 3)
    if write_report:
        from empathy_nlg.evaluation.report import write_report as _write_report

        _write_report(out, {n: r.metrics for n, r in runs.items()}, {n: r.records for n, r in runs.items()}, meta or {})
    return runs


# ----------------------------------------------------------------------------------- CLI
def _load_config(path: Optional[str]) -> Dict[str, Any]:
    """--config (YAML or JSON), read by the settings module's one reader; none → ``{}``."""
    from empathy_nlg.settings import read_config_file

    return read_config_file(path) if path else {}


def _engine_default_generators() -> Dict[str, Any]:
    """``generation.generators`` of the engine's default config (how the engine builds them)."""
    from empathy_nlg.settings import EngineSettings

    return dict(EngineSettings.load().generation.generators)


def _generator_config(config: Mapping[str, Any], name: str) -> Dict[str, Any]:
    """A generator's constructor arguments: ``generators.NAME``, ``NAME`` or ``generation.generators.NAME``
    of --config; when it has none, the engine's default config for that generator."""
    candidates = [
        (config.get("generators") or {}).get(name),
        config.get(name),
        ((config.get("generation") or {}).get("generators") or {}).get(name),
    ]
    section = next((c for c in candidates if c is not None), None)
    if section is None:
        section = _engine_default_generators().get(name)
    if section is None:
        return {}
    if not isinstance(section, dict):
        raise ValueError(f"config section for generator {name!r} must be a mapping")
    return dict(section)


def build_generators(names: Sequence[str], config: Mapping[str, Any]) -> Dict[str, Generator]:
    """Generators by name. A name that is not registered may be a *label* whose config section
    says which registered generator it is (``generators: {imagine-no-cm: {generator: imagine,
    model_dir: …}}``) — how ablations and checkpoints are compared side by side."""
    sections = {n: _generator_config(config, n) for n in names}
    unknown = [n for n in names if n not in available_generators() and "generator" not in sections[n]]
    if unknown:
        raise ValueError(f"unknown generator {unknown[0]!r}; available: {', '.join(available_generators())} "
                         "(or a label whose --config section names its `generator:`)")
    dupes = {n for n in names if list(names).count(n) > 1}
    if dupes:
        raise ValueError(f"generator {sorted(dupes)[0]!r} given twice")
    gens: Dict[str, Generator] = {}
    for name in names:
        section = {k: v for k, v in sections[name].items() if k not in HARNESS_OPTIONS}
        kind = str(section.pop("generator", name))
        try:
            gens[name] = create_generator(kind, section)
        except KeyError as exc:
            raise ValueError(str(exc).strip("'\"")) from None
        except TypeError as exc:
            raise ValueError(f"bad config for generator {name!r}: {exc}") from None
    return gens


def harness_options(names: Sequence[str], config: Mapping[str, Any]) -> Dict[str, Dict[str, Any]]:
    """Per name, the options of its config section the harness acts on (:data:`HARNESS_OPTIONS`),
    checked; ``causes`` defaults to ``perception``."""
    out: Dict[str, Dict[str, Any]] = {}
    for name in names:
        section = _generator_config(config, name)
        causes = section.get("causes", "perception")
        if causes not in CAUSE_SOURCES:
            raise ValueError(f"generator {name!r}: causes must be one of {', '.join(CAUSE_SOURCES)}, got {causes!r}")
        conv = section.get("conversation", False)
        if conv is True:
            conv = {}
        elif conv is False or conv is None:
            conv = None
        elif not isinstance(conv, dict):
            raise ValueError(f"generator {name!r}: conversation must be true, false or a mapping over the engine's "
                             f"generation.conversation settings, got {conv!r}")
        out[name] = {"causes": causes, "conversation": conv}
    return out


def conversation_decodings(options: Mapping[str, Optional[Mapping[str, Any]]], perceiver: Any,
                           config: Mapping[str, Any]) -> Dict[str, ConversationDecoding]:
    """Per label with ``conversation:``, its :class:`ConversationDecoding`: the engine's default
    ``generation.conversation`` settings with the label's mapping over them (checked by the engine's
    schema), built as the engine builds them, on the harness's perceiver and its artefacts."""
    from empathy_nlg.engine import build_conversation_decoding
    from empathy_nlg.settings import EngineSettings

    out: Dict[str, ConversationDecoding] = {}
    for name, override in options.items():
        if override is None:
            continue
        if perceiver is None:
            raise ValueError(_NEEDS_PERCEIVER.format(name=name))
        try:
            settings = EngineSettings.load(overrides={"generation": {"conversation": dict(override)}}).as_dict()
        except Exception as exc:  # noqa: BLE001 - the schema's message names the bad key
            raise ValueError(f"generator {name!r}: bad conversation settings: {exc}") from None
        artifacts = (config.get("perceiver") or {}).get("artifacts_dir")
        reranker, exemplars = build_conversation_decoding(settings, perceiver, artifacts)
        ex = settings["generation"]["conversation"]["exemplars"]
        key = "conversation" if not override else "conversation:" + json.dumps(override, sort_keys=True)
        out[name] = ConversationDecoding(reranker, exemplars, perceiver.embed if exemplars is not None else None,
                                         int(ex["k"]), float(ex["min_score"]), key)
    return out


def _needs_fit(gen: Generator) -> bool:
    """Generators that override ``fit`` learn from the training replies (unless already configured)."""
    if type(gen).fit is Generator.fit:
        return False
    return getattr(gen, "reply", None) is None


def load_perceiver(config: Mapping[str, Any]) -> Optional[PerceiverLike]:
    """The real perceiver (``empathy_nlg.perception.perceiver.Perceiver``), or None if not built yet."""
    if importlib.util.find_spec("empathy_nlg.perception.perceiver") is None:
        log.warning("empathy_nlg.perception.perceiver is not available: emotion_acc will be null")
        return None
    from empathy_nlg.perception.perceiver import Perceiver

    section = config.get("perceiver") or {}
    try:
        return Perceiver.load(section.get("artifacts_dir"))
    except FileNotFoundError as exc:
        log.warning("perceiver not loaded (%s): emotion_acc will be null", str(exc).splitlines()[0])
        return None


def load_cm_scorer(config: Mapping[str, Any]) -> Optional[CMScorerLike]:
    """The EPITOME response classifiers (``empathy_nlg.perception.cm``), or None if not built yet."""
    if importlib.util.find_spec("empathy_nlg.perception.cm") is None:
        log.warning("empathy_nlg.perception.cm is not available: epitome_* will be null")
        return None
    from empathy_nlg.perception import cm

    if not hasattr(cm, "load_response_classifiers"):
        log.warning("empathy_nlg.perception.cm has no load_response_classifiers(): epitome_* will be null")
        return None
    section = config.get("cm_scorer") or {}
    try:
        return cm.load_response_classifiers(**section)
    except FileNotFoundError as exc:
        log.warning("EPITOME classifiers not loaded (%s): epitome_* will be null", str(exc).splitlines()[0])
        return None


def summary_table(metrics_by_gen: Mapping[str, Mapping[str, Any]]) -> str:
    cols = [
        ("generator", None), ("n", "n"), ("B-1", "bleu1"), ("B-2", "bleu2"), ("B-4", "bleu4"),
        ("D-1", "dist1"), ("D-2", "dist2"), ("SentStd", "sent_std"), ("Top5%", "top5_share"),
        ("EmoAcc", "emotion_acc"), ("CauseF1", "cause_f1"), ("PPL", "ppl"), ("ER", "epitome_er"), ("IP", "epitome_ip"),
        ("EX", "epitome_ex"), ("Len", "avg_len"), ("sec", "seconds"),
    ]

    def fmt(v: Any) -> str:
        if v is None:
            return "-"
        if isinstance(v, float):
            return f"{v:.2f}"
        return str(v)

    rows = [[h for h, _ in cols]]
    for name, m in metrics_by_gen.items():
        rows.append([name] + [fmt(m.get(k)) for _, k in cols[1:]])
    widths = [max(len(r[i]) for r in rows) for i in range(len(cols))]
    lines = ["  ".join(c.rjust(w) if i else c.ljust(w) for i, (c, w) in enumerate(zip(r, widths))) for r in rows]
    lines.insert(1, "-" * len(lines[0]))
    return "\n".join(lines)


def run(args: argparse.Namespace) -> int:
    t0 = time.perf_counter()
    config = _load_config(args.config)
    examples = load_examples(args.data, args.format, args.limit)
    options = harness_options(args.generator, config)
    causes = {n: o["causes"] for n, o in options.items()}
    if any(c == "gold" for c in causes.values()):
        _check_cause_sources(causes, examples, perceiver=object() if not args.no_perception else None)
    generators = build_generators(args.generator, config)

    to_fit = [n for n, g in generators.items() if _needs_fit(g)]
    train_path = None
    if to_fit:
        from empathy_nlg.paths import default_data_dir

        train_path = Path(args.train_data) if args.train_data else default_data_dir() / "empathetic_dialogues" / "train.jsonl"
        replies = training_replies(train_path, args.train_format)
        for name in to_fit:
            generators[name].fit(replies)
            log.info("%s: fitted on %d training replies from %s", name, len(replies), train_path)

    perceiver = None if args.no_perception else load_perceiver(config)
    decodings = conversation_decodings({n: o["conversation"] for n, o in options.items()}, perceiver, config)
    cm_scorer = None if args.no_cm_scorer else load_cm_scorer(config)
    meta = {
        "path": str(args.data),
        "format": args.format,
        "limit": args.limit,
        "n": len(examples),
        "seed": args.seed,
        "batch_size": args.batch_size,
        "train_data": str(train_path) if train_path else None,
        "perceiver": type(perceiver).__name__ if perceiver is not None else None,
        "cm_scorer": type(cm_scorer).__name__ if cm_scorer is not None else None,
    }
    runs = evaluate(
        examples, generators, args.out,
        perceiver=perceiver, cm_scorer=cm_scorer, batch_size=args.batch_size, seed=args.seed,
        progress=not args.no_progress, meta=meta, causes=causes, conversation=decodings,
    )
    print(f"\nevaluated {len(examples)} examples of {args.data} ({args.format}), seed {args.seed}")
    print(summary_table({n: r.metrics for n, r in runs.items()}))
    for n, r in runs.items():
        print(f"  {n}: {r.generated} generated, {r.reused} reused, {r.seconds:.1f} s generating")
    print(f"report: {Path(args.out) / 'report.md'}  (total {time.perf_counter() - t0:.1f} s)")
    return 0
