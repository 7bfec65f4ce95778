"""Decoding for the conversation, not the turn: choose the reply among candidates.

A generator proposes candidates (NEC's beams with its own contrastive score, or a single reply);
exemplars retrieved from ED train (:mod:`empathy_nlg.knowledge.exemplars`) add human-written
ones. :class:`ConversationReranker` scores each candidate with the project's own perception and
with what the assistant already said, and picks the best. Every term, its weight and each
candidate's values go to ``custom.generation.rerank`` so a reply can always be explained.

Terms (each in [0, 1], higher is better, combined as a weighted sum):

* ``gen`` — the generator's own preference, min-max normalised over its candidates (exemplars get
  ``exemplar_prior`` instead: they are fluent, but not written for this context).
* ``polarity`` — the reply-polarity head (:mod:`empathy_nlg.perception.reply_polarity`) says how
  much the reply sounds like an answer to good vs bad news; the term is its agreement with the
  user's perceived polarity, scaled by perception's confidence (uncertain perception → 0.5).
* ``cm`` — EPITOME response classifiers on (user message, reply): the probability-weighted share
  of the planned mechanisms (perception's CM plan: ER/IP/EX) that the reply realises.
* ``grounding`` — 1 when the reply takes up a content word of the user's last message, 0.5 when
  only of an earlier message of theirs, else 0.

Penalties (subtracted): ``repeat`` × the highest token Jaccard with an earlier assistant reply,
and ``opening`` when the reply starts with the same three words as an earlier reply.

Vetoes (a vetoed candidate is chosen only when every candidate is vetoed, then the least
repetitive): Jaccard with an earlier reply ≥ ``repeat_veto``; an echo of the user's message
(Jaccard ≥ ``echo_veto``); and the **polarity guard** — a sympathy phrase ("sorry to hear", "oh
no") to a message perceived positive, or a celebration phrase ("congrats", "awesome") to one
perceived negative, when perception's polarity probability is ≥ ``polarity_guard``. The guard is
lexical on purpose (:func:`empathy_nlg.text.tone`): it states the rule a person would, and the
learned polarity term ranks everything it lets through. The **parrot veto** (``parrot_words``):
a reply that copies that many consecutive words of the user's hands them back instead of
answering ("Did you get hit with a £400 vet bill and a car repair?";
:func:`empathy_nlg.text.parrots`). The **replacement guard**
(``replacement_guard``): to news not perceived as good, no offer to replace a person or an animal
the user spoke of ("I hope you find a new dog soon" to a dog that died;
:func:`empathy_nlg.text.replaces`).
"""

from __future__ import annotations

import copy
from dataclasses import asdict, dataclass, field
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple

import numpy as np

from empathy_nlg.perception.types import Perception
from empathy_nlg.settings import settings_from_mapping
from empathy_nlg.taxonomy import CM_CODES
from empathy_nlg.text import content_words, jaccard, max_jaccard, opening, parrots, replaces, tone

TERMS = ("gen", "polarity", "cm", "grounding")


def story_polarity(perception: Optional[Perception], earlier_positive: Sequence[float], weight: float) -> Optional[Perception]:
    """The perception the decoding answers: the message's P(positive) blended with the mean of the
    user's earlier turns' (``weight`` on the story; 0 or no earlier turn: ``perception`` itself).
    A copy with ``polarity``/``polarity_prob`` replaced — what was perceived and stored is unchanged.
    Perception reads one message at a time: "he danced with my grandma" alone sounds sad, in a
    wedding story it is good news. The price: a clear turn against the story ("but my mom is
    really upset" after good news) keeps its polarity but at a confidence below the tone bias's
    and the guard's thresholds, so only the learned polarity term steers it."""
    if perception is None or not earlier_positive or weight <= 0:
        return perception
    now = perception.polarity_prob if perception.polarity == "positive" else 1.0 - perception.polarity_prob
    story = float(np.mean(list(earlier_positive)))
    p = (1.0 - weight) * float(now) + weight * story
    out = copy.copy(perception)
    out.polarity, out.polarity_prob = ("positive", p) if p >= 0.5 else ("negative", 1.0 - p)
    return out
PENALTIES = ("repeat", "opening")


@dataclass
class RerankWeights:
    gen: float = 0.6
    polarity: float = 1.5
    cm: float = 0.5
    grounding: float = 0.8
    repeat: float = 2.0
    opening: float = 0.6


@dataclass
class RerankSettings:
    enabled: bool = True
    weights: RerankWeights = field(default_factory=RerankWeights)
    repeat_veto: float = 0.6
    exemplar_prior: float = 0.3
    echo_veto: float = 0.7
    polarity_guard: float = 0.55
    parrot_words: int = 6
    replacement_guard: bool = True

    @classmethod
    def from_mapping(cls, values: Optional[Dict[str, Any]]) -> "RerankSettings":
        """From ``generation.conversation.rerank``; an unknown key or weight is a clear error."""
        values = dict(values or {})
        weights = dict(values.pop("weights", None) or {})
        what = f"terms in generation.conversation.rerank.weights (terms: {list(TERMS)}, penalties: {list(PENALTIES)})"
        weights_ = settings_from_mapping(RerankWeights, {k: float(v) for k, v in weights.items()}, what)
        settings = settings_from_mapping(cls, values, "keys in generation.conversation.rerank")
        settings.weights = weights_
        return settings


@dataclass
class Candidate:
    text: str
    source: str  # "generator" or "exemplar"
    score: Optional[float] = None  # the generator's own score (None for exemplars)
    terms: Dict[str, float] = field(default_factory=dict)
    total: float = 0.0
    vetoed: bool = False


class ConversationReranker:
    """Scores candidates with perception and the conversation so far (see the module doc).

    ``encode`` embeds texts with the shared sentence encoder; ``reply_polarity`` maps embeddings
    to P(positive situation); ``response_cm`` maps (seeker, response) embeddings to per-code
    probabilities. Any of the two heads may be ``None`` (its term is then 0.5, neutral).
    """

    def __init__(self, settings: RerankSettings, encode, reply_polarity=None, response_cm=None) -> None:
        self.settings = settings
        self.encode = encode
        self.reply_polarity = reply_polarity
        self.response_cm = response_cm

    def score(self, candidates: Sequence[Candidate], user_turns: Sequence[str], perception: Optional[Perception],
              earlier_replies: Sequence[str]) -> List[Candidate]:
        """Fill ``terms``, ``total`` and ``vetoed`` of every candidate (in place) and return them."""
        cands = [c for c in candidates if c.text.strip()]
        if not cands:
            return []
        w = self.settings.weights
        texts = [c.text for c in cands]
        last_user = user_turns[-1] if user_turns else ""
        emb = self.encode(texts + [last_user])
        reply_emb, user_emb = emb[:-1], emb[-1:]

        # gen: min-max over the generator's own scores
        gen_scores = [c.score for c in cands if c.source == "generator" and c.score is not None]
        lo, hi = (min(gen_scores), max(gen_scores)) if gen_scores else (0.0, 0.0)
        # polarity
        if self.reply_polarity is not None and perception is not None:
            p_pos = np.asarray(self.reply_polarity(reply_emb), dtype=float).reshape(-1)
            conf = max(0.0, min(1.0, 4.0 * (float(perception.polarity_prob) - 0.5)))
            agree = p_pos if perception.polarity == "positive" else 1.0 - p_pos
            polarity = 0.5 + (agree - 0.5) * conf
        else:
            polarity = np.full(len(cands), 0.5)
        # cm
        if self.response_cm is not None and perception is not None and perception.cm:
            probs = self.response_cm(np.repeat(user_emb, len(cands), axis=0), reply_emb)
            plan = np.asarray([perception.cm.get(c, 0.0) for c in CM_CODES], dtype=float)
            got = np.stack([np.asarray(probs[c], dtype=float).reshape(-1) for c in CM_CODES], axis=1)
            cm = (got @ plan) / max(plan.sum(), 1e-6)
        else:
            cm = np.full(len(cands), 0.5)
        # grounding
        last_words = content_words(last_user)
        earlier_words = set().union(*[content_words(t) for t in user_turns[:-1]]) if len(user_turns) > 1 else set()
        openings = {opening(r) for r in earlier_replies} - {None}

        for i, c in enumerate(cands):
            words = content_words(c.text)
            grounding = 1.0 if words & last_words else (0.5 if words & earlier_words else 0.0)
            if c.source == "generator":
                gen = 1.0 if hi - lo < 1e-9 else ((c.score if c.score is not None else lo) - lo) / (hi - lo)
            else:
                gen = float(self.settings.exemplar_prior)
            rep = max_jaccard(c.text, earlier_replies)
            same_opening = 1.0 if opening(c.text) in openings else 0.0
            c.terms = {"gen": round(float(gen), 4), "polarity": round(float(polarity[i]), 4),
                       "cm": round(float(cm[i]), 4), "grounding": grounding,
                       "repeat": round(float(rep), 4), "opening": same_opening}
            c.total = (w.gen * gen + w.polarity * float(polarity[i]) + w.cm * float(cm[i]) + w.grounding * grounding
                       - w.repeat * rep - w.opening * same_opening)
            c.vetoed = rep >= self.settings.repeat_veto
            # the user's own words back at them ("🐱❤️" → "🐱❤️") is not a reply
            if c.text.strip() == last_user.strip() or jaccard(c.text, last_user) >= self.settings.echo_veto:
                c.vetoed, c.terms["echo"] = True, 1.0
            # sympathy for good news / celebration of bad news, when perception is confident
            if (perception is not None and float(perception.polarity_prob) >= self.settings.polarity_guard
                    and tone(c.text) == {"positive": "sympathy", "negative": "celebration"}.get(perception.polarity)):
                c.vetoed, c.terms["wrong_tone"] = True, 1.0
            # the user's own words handed back inside a reply
            if self.settings.parrot_words > 0 and parrots(c.text, user_turns, self.settings.parrot_words):
                c.vetoed, c.terms["parrot"] = True, 1.0
            # "a new dog" to a dog that died: never offer to replace someone the user spoke of
            if (self.settings.replacement_guard and (perception is None or perception.polarity != "positive")
                    and replaces(c.text, user_turns)):
                c.vetoed, c.terms["replaces"] = True, 1.0
        return cands

    def choose(self, candidates: Sequence[Candidate], user_turns: Sequence[str], perception: Optional[Perception],
               earlier_replies: Sequence[str]) -> Optional[Candidate]:
        scored = self.score(candidates, user_turns, perception, earlier_replies)
        if not scored:
            return None
        allowed = [c for c in scored if not c.vetoed] or scored
        if all(c.vetoed for c in scored):
            # every candidate is vetoed: one that does not hand the user's words back (the whole
            # message before a part of it), then the least repetitive
            return min(allowed, key=lambda c: (c.terms.get("echo", 0.0), c.terms.get("parrot", 0.0), c.terms["repeat"], -c.total))
        return max(allowed, key=lambda c: c.total)

    def describe(self, candidates: Sequence[Candidate], chosen: Optional[Candidate]) -> Dict[str, Any]:
        return {
            "weights": asdict(self.settings.weights),
            "repeat_veto": self.settings.repeat_veto,
            "echo_veto": self.settings.echo_veto,
            "polarity_guard": self.settings.polarity_guard,
            "parrot_words": self.settings.parrot_words,
            "replacement_guard": self.settings.replacement_guard,
            "exemplar_prior": self.settings.exemplar_prior,
            "chosen": chosen.text if chosen else None,
            "candidates": [{"text": c.text, "source": c.source, "total": round(c.total, 4), "vetoed": c.vetoed, **c.terms}
                           for c in sorted(candidates, key=lambda c: -c.total)],
        }


def choose_reply(result: Any, user_turns: Sequence[str], perception: Optional[Perception], earlier: Sequence[str],
                 reranker: Optional[ConversationReranker], exemplars: Any = None, embed: Optional[Callable] = None,
                 k: int = 3, min_score: float = 0.55) -> Tuple[str, str, Optional[Dict[str, Any]]]:
    """The conversation reranker's choice among a generator result's candidates and the exemplars':
    ``(text, source, rerank details)`` — what the engine does after every generation, and what the
    harness's ``conversation:`` labels do after theirs. ``user_turns``: the user's messages so far
    (the last one is answered); ``earlier``: the assistant's earlier replies; ``exemplars``: an
    :class:`~empathy_nlg.knowledge.exemplars.ExemplarIndex` (or ``None``), queried with ``embed`` for
    the ``k`` nearest at cosine ≥ ``min_score``. Without a reranker, or when it chooses nothing,
    the generator's own reply."""
    if reranker is None:
        return result.text.strip(), "generator", None
    cands = [Candidate(c["text"].strip(), "generator", c.get("score")) for c in result.candidates if c.get("text", "").strip()]
    if not cands and result.text.strip():
        cands = [Candidate(result.text.strip(), "generator", 0.0)]
    user_turns = list(user_turns) or [""]
    if exemplars is not None and embed is not None and user_turns[-1].strip():
        # the message in the light of the story so far: a follow-up ("I don't know how to tell my
        # kids") is looked up together with what it follows ("my dog died this morning")
        recent = [t for t in user_turns[-3:] if t.strip()]
        emb = embed(recent)
        weights = np.asarray([0.5] * (len(recent) - 1) + [1.0], dtype=np.float32)
        query = (weights[:, None] * emb).sum(0)
        query /= max(float(np.linalg.norm(query)), 1e-9)
        for ex in exemplars.nearest(query, k=int(k), min_score=float(min_score), exclude=earlier):
            cands.append(Candidate(ex.reply, "exemplar", None))
    chosen = reranker.choose(cands, user_turns, perception, earlier)
    if chosen is None:
        return result.text.strip(), "generator", None
    return chosen.text, chosen.source, reranker.describe(cands, chosen)
