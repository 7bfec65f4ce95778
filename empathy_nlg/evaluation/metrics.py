"""The response-generation metrics of the seeds, as pure functions over lists of strings/tokens.

Every function here is deterministic, has no model in it and no I/O, and states its definition in
:data:`DEFINITIONS` (copied into each ``metrics.json``). Percentages are in ``[0, 100]``.

Text normalisation (:func:`tokenize`) — used for BLEU, Dist, top-5 share, Sent-Std and lengths:
lower-case, curly quotes to ASCII, contractions split the Penn-Treebank/NLTK way (``don't`` ->
``do n't``, ``i'm`` -> ``i 'm``; this is how Gao et al.'s ``ed-cause-jsonl`` files are already
tokenised, so those files pass through unchanged), then a regex keeps runs of word characters,
``...`` and single punctuation marks as tokens.
"""

from __future__ import annotations

import math
from collections import Counter
from typing import Dict, Iterable, List, Mapping, Optional, Sequence

# the tokenizer lives with the other text helpers (generators use it too)
from empathy_nlg.text import TOKENIZER_NAME, normalise_reply, tokenize  # noqa: E402,F401


def _ngrams(tokens: Sequence[str], n: int) -> List[tuple]:
    return [tuple(tokens[i : i + n]) for i in range(len(tokens) - n + 1)]


# --------------------------------------------------------------------------------------- BLEU
BLEU_SMOOTHING = "exp"


def corpus_bleu(
    hypotheses: Sequence[Sequence[str]],
    references: Sequence[Sequence[str]],
    max_order: int = 4,
    smooth_method: str = BLEU_SMOOTHING,
) -> float:
    """Corpus BLEU-``max_order`` in % (sacreBLEU, one reference per hypothesis).

    Cumulative BLEU: geometric mean of the modified 1..n-gram precisions (uniform weights) times
    the corpus brevity penalty, n-gram counts summed over the whole corpus (not averaged per
    sentence). Inputs are token lists (already :func:`tokenize`-d); sacreBLEU's own tokeniser is
    off (``tokenize="none"``). Smoothing: sacreBLEU's ``exp`` by default (only matters when an
    n-gram order has zero matches). An empty corpus or an empty system output scores 0.
    """
    if len(hypotheses) != len(references):
        raise ValueError(f"{len(hypotheses)} hypotheses but {len(references)} references")
    if not hypotheses or sum(len(h) for h in hypotheses) == 0:
        return 0.0
    from sacrebleu.metrics import BLEU

    scorer = BLEU(max_ngram_order=max_order, tokenize="none", smooth_method=smooth_method, effective_order=False)
    hyps = [" ".join(h) for h in hypotheses]
    refs = [" ".join(r) for r in references]
    return float(scorer.corpus_score(hyps, [refs]).score)


def bleu_scores(hypotheses: Sequence[Sequence[str]], references: Sequence[Sequence[str]]) -> Dict[str, float]:
    """``{"bleu1": …, "bleu4": …}``: cumulative corpus BLEU-1..4 in %."""
    return {f"bleu{n}": corpus_bleu(hypotheses, references, max_order=n) for n in range(1, 5)}


# --------------------------------------------------------------------------------------- diversity
def distinct_n(hypotheses: Sequence[Sequence[str]], n: int) -> float:
    """Corpus-level Dist-n in %: distinct n-grams / all n-grams over all replies.

    Replies shorter than ``n`` contribute no n-gram; n-grams never cross reply boundaries. With
    no n-gram at all (e.g. every reply empty) the value is 0.
    """
    total = 0
    unique = set()
    for tokens in hypotheses:
        grams = _ngrams(tokens, n)
        total += len(grams)
        unique.update(grams)
    return 100.0 * len(unique) / total if total else 0.0


def top_k_share(replies: Sequence[str], k: int = 5) -> float:
    """% of replies equal (after :func:`normalise_reply`) to one of the ``k`` most frequent replies.

    Ties at the k-th place are broken by first occurrence (deterministic). Empty replies count as
    the empty sentence like any other.
    """
    if not replies:
        return 0.0
    counts = Counter(normalise_reply(r) for r in replies)
    top = sum(c for _, c in counts.most_common(k))
    return 100.0 * top / len(replies)


def sent_std(replies: Sequence[str]) -> float:
    """Sentence-frequency standard deviation (our statement of NEC's Sent-Std, eq. 16).

    Let the ``N`` replies fall into ``M`` distinct sentences (after :func:`normalise_reply`) with
    counts ``c_1..c_M``; pad with ``N − M`` zeros so there is one bin per reply (the ``N`` bins a
    system that never repeats itself would fill once each). Sent-Std is the population standard
    deviation of those ``N`` counts::

        Sent-Std = sqrt( (1/N) · Σ_i (c_i − 1)^2 )        (mean count is exactly 1)

    0 when every reply is different; ``sqrt(N − 1)`` (its maximum) when all replies are the same
    sentence. Lower is better; it grows with ``N``, so compare values on the same examples only.
    """
    n = len(replies)
    if n == 0:
        return 0.0
    counts = Counter(normalise_reply(r) for r in replies).values()
    squares = sum((c - 1) ** 2 for c in counts) + (n - len(counts)) * 1  # zero bins: (0 − 1)^2
    return math.sqrt(squares / n)


def average_length(hypotheses: Sequence[Sequence[str]]) -> float:
    """Mean number of tokens per reply."""
    return sum(len(h) for h in hypotheses) / len(hypotheses) if hypotheses else 0.0


# --------------------------------------------------------------------------------------- others
def accuracy(predicted: Sequence[Optional[str]], gold: Sequence[str]) -> Optional[float]:
    """% of positions where ``predicted == gold``; ``None`` when nothing was predicted."""
    if len(predicted) != len(gold):
        raise ValueError(f"{len(predicted)} predictions but {len(gold)} gold labels")
    if not gold or any(p is None for p in predicted):
        return None
    return 100.0 * sum(p == g for p, g in zip(predicted, gold)) / len(gold)


def perplexity(total_nll: float, total_tokens: int) -> Optional[float]:
    """``exp(total NLL / total tokens)`` — token-level perplexity over the whole corpus."""
    if total_tokens <= 0:
        return None
    return math.exp(total_nll / total_tokens)


def positive_rate(flags: Iterable[bool]) -> Optional[float]:
    """% of ``True`` flags (``None`` for no flags)."""
    flags = [bool(f) for f in flags]
    return 100.0 * sum(flags) / len(flags) if flags else None


CAUSE_AGREEMENT_KEYS = ("cause_n", "cause_p", "cause_r", "cause_f1", "cause_exact")


def cause_agreement(predicted: Sequence[Sequence[int]], gold: Sequence[Sequence[int]]) -> Dict[str, Optional[float]]:
    """Utterance-level agreement of predicted cause utterances with gold ones, per example a set
    of context indices: micro precision / recall / F1 over all (example, utterance) pairs and the
    % of examples whose two sets are equal (both empty counts as equal), in %; ``cause_n`` the
    number of examples."""
    if len(predicted) != len(gold):
        raise ValueError(f"{len(predicted)} predictions but {len(gold)} gold labels")
    tp = fp = fn = exact = 0
    for p, g in zip(predicted, gold):
        ps, gs = set(int(i) for i in p), set(int(i) for i in g)
        tp += len(ps & gs)
        fp += len(ps - gs)
        fn += len(gs - ps)
        exact += ps == gs
    n = len(gold)
    prec = 100.0 * tp / (tp + fp) if tp + fp else None
    rec = 100.0 * tp / (tp + fn) if tp + fn else None
    f1 = 100.0 * 2 * tp / (2 * tp + fp + fn) if 2 * tp + fp + fn else None
    return {"cause_n": n, "cause_p": prec, "cause_r": rec, "cause_f1": f1,
            "cause_exact": 100.0 * exact / n if n else None}


def reply_metrics(replies: Sequence[str], references: Sequence[str]) -> Dict[str, float]:
    """All text-only metrics of a system's replies against the references."""
    hyp_tokens = [tokenize(r) for r in replies]
    ref_tokens = [tokenize(r) for r in references]
    out: Dict[str, float] = {}
    out.update(bleu_scores(hyp_tokens, ref_tokens))
    out["dist1"] = distinct_n(hyp_tokens, 1)
    out["dist2"] = distinct_n(hyp_tokens, 2)
    out["sent_std"] = sent_std(replies)
    out["top5_share"] = top_k_share(replies, 5)
    out["avg_len"] = average_length(hyp_tokens)
    return out


DEFINITIONS: Mapping[str, str] = {
    "n": "number of examples: every listener turn with at least one turn before it (context = "
    "the turns before it, reference = that turn), first N in file order when --limit N",
    "tokenizer": f"{TOKENIZER_NAME}: lower-case, contractions split Treebank-style (do n't, i 'm), "
    r"regex tokens n't|'m|'s|'re|'ve|'ll|'d|...|\w+|[^\w\s]; used for BLEU, Dist, Sent-Std, top-5 "
    "share and avg_len",
    "bleu1": "cumulative corpus BLEU-1 in % (sacreBLEU 2.x corpus_score, tokenize=none on our tokens, "
    f"one reference, brevity penalty, smoothing={BLEU_SMOOTHING})",
    "bleu2": "cumulative corpus BLEU-2 in % (geometric mean of 1..2-gram precisions x BP), as bleu1",
    "bleu3": "cumulative corpus BLEU-3 in %, as bleu1",
    "bleu4": "cumulative corpus BLEU-4 in %, as bleu1",
    "dist1": "corpus Dist-1 in %: distinct unigrams / all unigrams over all replies",
    "dist2": "corpus Dist-2 in %: distinct bigrams / all bigrams over all replies (no bigram "
    "crosses replies)",
    "sent_std": "sentence-frequency std (our reading of NEC eq. 16, formula not found verbatim): "
    "counts of the distinct normalised replies padded with zeros to N bins, population std = "
    "sqrt(mean((c_i-1)^2)); 0 = no reply repeated, sqrt(N-1) = one reply for everything; lower "
    "is better; depends on N",
    "top5_share": "% of replies identical (after normalisation) to one of the 5 most frequent replies "
    "(floor: min(100, 500/N) % even when no reply repeats, so compare on the same N)",
    "emotion_acc": "% of examples whose perceived emotion (perceiver on the context) equals the "
    "conversation's gold emotion (32 ED labels); null without a perceiver",
    "generator_emotion_acc": "% of examples whose emotion in the generator's own details (cause_gated: "
    "the emotion its prefix used — perception's, or with --no-perception its own reasoner's, the "
    "paper's Accuracy column) equals the gold emotion; null when a reply's details name no emotion",
    "ppl": "exp(sum NLL / sum tokens) of the reference replies given the context under the "
    "generator's own scorer (token level, tokenizer in ppl_tokenizer); null if the generator "
    "cannot score",
    "epitome_er": "% replies the EPITOME emotional-reaction response classifier marks yes "
    "(weak+strong), seeker post = last speaker utterance of the context",
    "epitome_ip": "% replies marked yes by the EPITOME interpretation classifier (as epitome_er)",
    "epitome_ex": "% replies marked yes by the EPITOME exploration classifier (as epitome_er)",
    "ref_epitome_er": "epitome_er of the reference replies",
    "ref_epitome_ip": "epitome_ip of the reference replies",
    "ref_epitome_ex": "epitome_ex of the reference replies",
    "avg_len": "mean reply length in tokens",
    "cause_n": "examples with gold cause labels (ed-cause-jsonl's emotion_cause, the indices before "
    "the reply's turn) and a perception; null on data without cause labels",
    "cause_p": "% of perception's cause utterances (context indices) that are gold cause utterances, "
    "micro over (example, utterance) pairs; gold causes may be listener turns, perception picks "
    "speaker turns only",
    "cause_r": "% of the gold cause utterances that perception picks (as cause_p)",
    "cause_f1": "harmonic mean of cause_p and cause_r (micro: 2TP / (2TP + FP + FN))",
    "cause_exact": "% of examples whose perceived cause utterances are exactly the gold ones (both "
    "empty counts as equal)",
    "seconds": "wall-clock seconds spent generating (and scoring) the replies that this run "
    "computed, perception excluded (shared by all generators; see data.perception_seconds); reused "
    "predictions count 0",
}
