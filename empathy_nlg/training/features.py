"""Training examples for the trained generators, computed once per run and cached as JSON lines.

A *feature* is one ED listener turn with what the generators condition on::

    {"conv_id", "turn_index", "context": [[role, text], …], "reference", "emotion",
     "cause_indices": [...], "cm": [p_ER, p_IP, p_EX], ...generator-specific keys}

* causes — ``"model"``: the perception cause model annotates each conversation (target = its last
  speaker turn, gold emotion; :func:`empathy_nlg.perception.cause.annotate_conversations`), and an
  example keeps the cause indices before its reply; ``"speaker"``: every earlier speaker turn
  (the heuristic). An example whose model causes all lie after it falls back to the heuristic.
* cm — the EPITOME response classifiers' probabilities on (last speaker turn, gold reply): silver
  communication-mechanism labels, since ED has none.
* persona (``persona_moel``) — the persona sentences the speaker stated in the conversation so far,
  mined with the project's persona extractor (:func:`mine_persona`).

The cache file is named by a fingerprint of everything that shapes it (data file, limit, seed, cause
source, the generator's own keys), so runs (e.g. ablations) can share one features folder and a
resumed run reuses its features.
"""

from __future__ import annotations

import hashlib
import json
import logging
import random
from pathlib import Path
from typing import Any, Callable, Dict, Iterable, List, Mapping, Optional, Sequence

from empathy_nlg.datasets import GenerationExample, generation_examples, read_ed_cause_jsonl, read_ed_jsonl, seeker_post
from empathy_nlg.text import content_words as _content_words
from empathy_nlg.text import split_sentences

log = logging.getLogger(__name__)

CAUSE_SOURCES = ("model", "speaker")


def select_examples(path: Path, limit: Optional[int], seed: int) -> List[GenerationExample]:
    """ED listener turns of ``path``, shuffled with ``seed``, the first ``limit`` kept."""
    convs = read_ed_jsonl(path)
    examples = generation_examples(convs)
    if not examples:
        raise ValueError(f"{path}: no listener turn with a turn before it")
    rng = random.Random(seed)
    rng.shuffle(examples)
    return examples[:limit] if limit else examples


def annotate_causes(examples: Sequence[GenerationExample], source: str, work_dir: Path, data_path: Path,
                    progress: bool) -> List[List[int]]:
    """Cause indices for each example (see the module docstring)."""
    if source not in CAUSE_SOURCES:
        raise ValueError(f"causes must be one of {', '.join(CAUSE_SOURCES)}, got {source!r}")
    heuristic = [[i for i, u in enumerate(ex.context) if u.role == "speaker"] or [len(ex.context) - 1] for ex in examples]
    if source == "speaker":
        return heuristic
    from empathy_nlg.perception.cause import CauseModel, annotate_conversations
    from empathy_nlg.perception.common import EmbeddingCache
    from empathy_nlg.perception.encoder import SentenceEncoder
    from empathy_nlg.perception.perceiver import DEFAULT_ARTIFACTS_DIR

    wanted = {ex.conv_id for ex in examples}
    convs = [c for c in read_ed_jsonl(data_path) if c.conv_id in wanted]
    out = Path(work_dir) / f"causes-{data_path.stem}.jsonl"
    cache = EmbeddingCache(SentenceEncoder(), Path(work_dir) / "embeddings")
    annotate_conversations(convs, CauseModel.load(DEFAULT_ARTIFACTS_DIR), cache, out, progress=progress)
    by_conv = {c.conv_id: c.cause_indices or [] for c in read_ed_cause_jsonl(out)}
    result = []
    for ex, fallback in zip(examples, heuristic):
        found = [i for i in by_conv.get(ex.conv_id, []) if i < len(ex.context)]
        result.append(found or fallback)
    return result


def silver_cm(examples: Sequence[GenerationExample], progress: bool) -> List[List[float]]:
    """EPITOME response-classifier probabilities [ER, IP, EX] for each (seeker post, gold reply)."""
    from empathy_nlg.perception.cm import load_response_classifiers
    from empathy_nlg.taxonomy import CM_CODES

    scorer = load_response_classifiers()
    out: List[List[float]] = []
    chunks = range(0, len(examples), 256)
    if progress:
        from tqdm.auto import tqdm

        chunks = tqdm(chunks, desc="silver CM labels", unit="batch")
    for start in chunks:
        part = examples[start : start + 256]
        probs = scorer.predict_proba([seeker_post(ex.context) for ex in part], [ex.reference for ex in part])
        for i in range(len(part)):
            out.append([round(float(probs[c][i]), 4) for c in CM_CODES])
    return out


#: what :func:`mine_persona` does (part of a persona feature's fingerprint: change it when the mining changes)
PERSONA_MINING = "speaker-turns-persona-extractor-v1"
#: the most persona sentences kept per example (the newest; a generator may use fewer)
MAX_MINED_PERSONA = 10


def mine_persona(feats: List[Dict[str, Any]], extractor: Any = None, progress: bool = False,
                 limit: int = MAX_MINED_PERSONA) -> Dict[str, int]:
    """Adds ``persona`` to every feature: the persona sentences the speaker stated about themselves in
    the conversation so far — :class:`empathy_nlg.persona.PersonaExtractor` on each speaker turn of
    the example's context (oldest first, near-duplicates dropped, the newest ``limit`` kept).

    ED has no persona (PEC, the persona-based ED of Zhong et al. 2020, is not available offline) and
    no speaker ids, so a speaker's persona is what they said about themselves in this conversation
    — the same facts the engine's persona memory would have learnt from these messages by the time
    of the reply. Every distinct speaker turn is parsed once. Returns the counts (``examples``,
    ``with_persona``: examples with at least one sentence, ``sentences``) and logs them."""
    from empathy_nlg.persona import PersonaExtractor, unique_facts

    extractor = extractor or PersonaExtractor()
    texts = list(dict.fromkeys(t for f in feats for role, t in f["context"] if role == "speaker"))
    facts: Dict[str, List[Any]] = {}
    chunks = range(0, len(texts), 1024)
    if progress:
        from tqdm.auto import tqdm

        chunks = tqdm(chunks, desc="persona mining", unit="batch")
    for start in chunks:
        part = texts[start : start + 1024]
        facts.update(zip(part, extractor.extract_many(part)))
    with_persona = sentences = 0
    for f in feats:
        found = unique_facts(x for role, t in f["context"] if role == "speaker" for x in facts.get(t, []))
        f["persona"] = [x.text for x in found][-limit:] if limit > 0 else []
        with_persona += bool(f["persona"])
        sentences += len(f["persona"])
    counts = {"examples": len(feats), "with_persona": with_persona, "sentences": sentences}
    log.info("persona mining: %d of %d examples (%.1f %%) have at least one persona sentence (%d sentences)",
             with_persona, len(feats), 100.0 * with_persona / max(1, len(feats)), sentences)
    return counts


#: words too common to say that a reply uses a persona fact (the content-word test of the selection)
_COMMON = frozenset(
    "i me my mine myself you your we our it its the a an and or but to of in on at for with is am are was were be "
    "been have has had do did not no so just that this they he she him her his them there here what about really "
    "very too also like get got go went one will would can could love".split())


def content_words(text: str) -> set:
    """Content words of ``text`` (:func:`empathy_nlg.text.content_words`, unstemmed) not in :data:`_COMMON`."""
    return _content_words(text, _COMMON, stemmed=False)


def _with_last_turn(feature: Mapping[str, Any], rest: str, moved: str,
                    persona: Optional[List[str]] = None) -> Dict[str, Any]:
    """A copy of ``feature`` whose last (speaker) turn is ``rest``; ``moved`` (what left that turn)
    is recorded as ``moved_fact``, and ``persona`` replaces the feature's own when given."""
    out = dict(feature)
    out["context"] = [list(u) for u in feature["context"][:-1]] + [["speaker", rest]]
    out["moved_fact"] = moved
    if persona is not None:
        out["persona"] = persona
    return out


def moved_fact(feature: Mapping[str, Any]) -> Optional[Dict[str, Any]]:
    """A copy of ``feature`` whose last (speaker) turn lost the sentence that stated one of its mined
    persona facts, that fact staying in ``persona`` — a fact the speaker told *before*, as the
    engine's persona memory gives one from an earlier session. ``None`` when no persona sentence of
    the last turn can be moved (no match, or fewer than three words would be left)."""
    ctx = feature.get("context") or []
    if not feature.get("persona") or not ctx or ctx[-1][0] != "speaker":
        return None
    sentences = split_sentences(ctx[-1][1].strip())
    for fact in feature["persona"]:
        key = content_words(fact)
        hit = {i for i, x in enumerate(sentences) if key and len(key & content_words(x)) >= max(1, int(0.8 * len(key)))}
        rest = " ".join(x for i, x in enumerate(sentences) if i not in hit).strip()
        if hit and len(rest.split()) >= 3:
            return _with_last_turn(feature, rest, fact)
    return None


def moved_first_sentence(feature: Mapping[str, Any]) -> Optional[Dict[str, Any]]:
    """A copy of ``feature`` whose last (speaker) turn lost its first sentence, which joins the end of
    ``persona`` — something the speaker told *before*: not always a lasting fact ("My dog died
    yesterday"), but far more of ED's replies pick such a sentence up than pick up a mined persona
    fact, so these copies teach the decoder to read the persona line at all. ``None`` when the turn
    has one sentence, the first has fewer than four words, or fewer than three words would be left."""
    ctx = feature.get("context") or []
    if not ctx or ctx[-1][0] != "speaker":
        return None
    sentences = [x for x in split_sentences(ctx[-1][1].strip()) if x]
    if len(sentences) < 2 or len(sentences[0].split()) < 4:
        return None
    rest = " ".join(sentences[1:]).strip()
    if len(rest.split()) < 3:
        return None
    first = sentences[0].rstrip(".!?").strip()
    persona = [p for p in feature.get("persona") or [] if p != first][-(MAX_MINED_PERSONA - 1):] + [first]
    return _with_last_turn(feature, rest, first, persona)


def uses_persona(feature: Mapping[str, Any], prompt_turns: int = 2) -> bool:
    """Whether the reply says a content word of a persona fact that the prompt's last ``prompt_turns``
    turns do not (the reply brings the remembered fact back)."""
    facts = set().union(*(content_words(x) for x in feature.get("persona") or [""]))
    shown = content_words(" ".join(t for _, t in (feature.get("context") or [])[-prompt_turns:]))
    return bool((facts - shown) & content_words(feature.get("reference") or ""))


def persona_selection(feats: Sequence[Dict[str, Any]], share: float, seed: int, move_facts: bool = True,
                      use_repeat: int = 1, move_first: int = 0) -> List[Dict[str, Any]]:
    """A training set for the persona in words: the examples with a mined persona
    (:func:`mine_persona`), with ``move_facts`` one :func:`moved_fact` copy of each that has one,
    ``move_first`` :func:`moved_first_sentence` copies of examples drawn with ``seed``, every example
    whose reply :func:`uses_persona` ``use_repeat`` times, and as many of the examples without a
    persona, drawn with ``seed``, as make the persona examples ``share`` of the result (the trainer
    orders them with its own seed). A clear error when no feature carries a mined persona."""
    if not 0.0 < share <= 1.0:
        raise ValueError(f"data.persona_share must lie in (0, 1], got {share}")
    if int(use_repeat) < 1:
        raise ValueError(f"data.persona_use_repeat must be at least 1, got {use_repeat}")
    if not any("persona" in f for f in feats):
        raise ValueError("data.persona_share needs features with mined persona sentences (persona_moel's)")
    with_persona = [f for f in feats if f.get("persona")]
    if not with_persona:
        raise ValueError("data.persona_share: no training example has a mined persona sentence")
    if int(move_first) < 0:
        raise ValueError(f"data.persona_move_first must be at least 0, got {move_first}")
    moved = [m for m in (moved_fact(f) for f in with_persona) if m is not None] if move_facts else []
    rng = random.Random(seed)
    if move_first:
        movable = [m for m in (moved_first_sentence(f) for f in feats) if m is not None]
        firsts = rng.sample(movable, min(int(move_first), len(movable)))
        log.info("persona_move_first: %d of the %d examples whose last turn has a first sentence to move",
                 len(firsts), len(movable))
        moved += firsts
    chosen: List[Dict[str, Any]] = []
    using = 0
    for f in with_persona + moved:
        used = uses_persona(f)
        using += used
        chosen.extend([f] * (int(use_repeat) if used else 1))
    others = [f for f in feats if not f.get("persona")]
    want = min(len(others), round(len(chosen) * (1.0 - share) / share))
    drawn = rng.sample(others, want)
    log.info("persona_share %.2f: %d examples with a mined persona + %d with a sentence moved out of the last turn "
             "(%d of them reply with a fact word the prompt lacks, each %d×) + %d of the %d without = %d",
             share, len(with_persona), len(moved), using, int(use_repeat), want, len(others), len(chosen) + want)
    return chosen + drawn


def fingerprint(values: Mapping[str, Any]) -> str:
    return hashlib.sha256(json.dumps(values, sort_keys=True, default=str).encode()).hexdigest()[:16]


def build_features(
    path: Path,
    limit: Optional[int],
    seed: int,
    causes: str,
    work_dir: Path,
    split: str,
    extra: Optional[Callable[[List[Dict[str, Any]], bool], None]] = None,
    extra_key: Any = None,
    progress: bool = True,
    cm: bool = True,
    needed: Optional[Callable[[List[Dict[str, Any]]], Iterable[int]]] = None,
) -> List[Dict[str, Any]]:
    """The features of one split, from the cache when its fingerprint matches.

    ``extra(features, progress)`` adds generator-specific keys in place (e.g. knowledge);
    ``extra_key`` identifies what it does, for the fingerprint. ``cm=False`` skips the silver CM
    labels (``"cm": null``) for generators that do not use them.

    ``needed(features)`` — the indices of the examples a run will still train, given the features
    without their extra keys (a run resumed late in its epoch, on a machine without the cache, needs
    a third of them). The extra (NEC's knowledge for all of ED train: ≈ 28 min on 2 cores) is then
    computed only for those, and kept per example in ``extras-{split}-{fingerprint}.jsonl``: a later
    run adds what it lacks. The other examples come back without the extra keys. A complete cache of
    the same fingerprint (built without ``needed``) is used as it is.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"training data {path} does not exist")
    work_dir = Path(work_dir)
    work_dir.mkdir(parents=True, exist_ok=True)
    stat = path.stat()
    fp = fingerprint({"path": str(path.resolve()), "size": stat.st_size, "limit": limit, "seed": seed,
                      "causes": causes, "extra": extra_key, **({} if cm else {"cm": False})})
    cache = work_dir / f"features-{split}-{fp}.jsonl"  # runs that differ in anything never share a file
    meta = work_dir / f"features-{split}-{fp}.json"
    if cache.is_file() and meta.is_file() and json.loads(meta.read_text()).get("fingerprint") == fp:
        feats = [json.loads(line) for line in cache.read_text(encoding="utf-8").splitlines() if line.strip()]
        log.info("%s: %d cached features reused from %s", split, len(feats), cache)
        return feats
    if extra is not None and needed is not None:
        feats = build_features(path, limit, seed, causes, work_dir, split + "-base", progress=progress, cm=cm)
        _add_needed_extras(feats, extra, needed(feats), work_dir / f"extras-{split}-{fp}.jsonl", split, progress)
        return feats
    examples = select_examples(path, limit, seed)
    log.info("%s: building features for %d examples of %s", split, len(examples), path)
    cause_idx = annotate_causes(examples, causes, work_dir, path, progress)
    cms = silver_cm(examples, progress) if cm else [None] * len(examples)
    feats = [
        {"conv_id": ex.conv_id, "turn_index": ex.turn_index, "context": [[u.role, u.text] for u in ex.context],
         "reference": ex.reference, "emotion": ex.emotion, "cause_indices": ci, "cm": cm}
        for ex, ci, cm in zip(examples, cause_idx, cms)
    ]
    if extra is not None:
        extra(feats, progress)
    tmp = cache.with_suffix(".partial")
    with tmp.open("w", encoding="utf-8") as fh:
        for f in feats:
            fh.write(json.dumps(f, ensure_ascii=False) + "\n")
    tmp.replace(cache)
    meta.write_text(json.dumps({"fingerprint": fp, "n": len(feats), "path": str(path)}, indent=2))
    return feats


def _add_needed_extras(feats: List[Dict[str, Any]], extra: Callable[[List[Dict[str, Any]], bool], None],
                       wanted: Iterable[int], cache: Path, split: str, progress: bool) -> None:
    """``extra`` on the ``wanted`` examples that ``cache`` does not hold yet (appended to it: one JSON
    line ``{"i": index, "keys": {...}}`` per example), then every cached example's keys merged in."""
    done: Dict[int, Dict[str, Any]] = {}
    if cache.is_file():
        for line in cache.read_text(encoding="utf-8").splitlines():
            try:
                row = json.loads(line)
            except json.JSONDecodeError:  # a line cut by a killed run: computed again below
                continue
            done[int(row["i"])] = row["keys"]
    wanted = sorted({int(i) for i in wanted})
    if wanted and not 0 <= wanted[0] <= wanted[-1] < len(feats):
        raise ValueError(f"{split}: needed example indices must lie in 0..{len(feats) - 1}")
    todo = [i for i in wanted if i not in done]
    log.info("%s: the extra features of %d of %d examples are needed; %d cached, %d to compute",
             split, len(wanted), len(feats), len(wanted) - len(todo), len(todo))
    if todo:
        part = [dict(feats[i]) for i in todo]
        before = [set(f) for f in part]
        extra(part, progress)
        rows = [{"i": i, "keys": {k: v for k, v in f.items() if k not in b}} for i, f, b in zip(todo, part, before)]
        with cache.open("a", encoding="utf-8") as fh:  # whole lines, one flush: a kill loses at most the last
            fh.write("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows))
        done.update((r["i"], r["keys"]) for r in rows)
    for i, keys in done.items():
        if 0 <= i < len(feats):
            feats[i].update(keys)
