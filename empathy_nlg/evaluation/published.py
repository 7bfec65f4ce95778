"""Published numbers of the seed papers, for the report's "published" rows.

Only numbers actually read in a source are here; a metric nobody published (or that we could not
find) is absent, never guessed. Every row names the paper, the table and the source we read it
from, and notes how that paper defines its metrics — they are *not* the harness's definitions
(tokenisers, BLEU variants, decoding and, above all, the data split differ: the papers report on
the ED **test** split, 5,257 examples; our runs are on whatever file is given). Read them as
orientation, not as a like-for-like comparison.

Keys use the harness's metric names (``bleu1`` … ``top5_share``, ``emotion_acc``, ``ppl``), in the
same units (percentages in %).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Dict, List


@dataclass(frozen=True)
class PublishedRow:
    system: str
    paper: str
    table: str
    source: str
    metrics: Dict[str, float]
    notes: str = ""
    missing: List[str] = field(default_factory=list)  # metrics the paper reports that we could not find


NEC = PublishedRow(
    system="NEC",
    paper="Huangfu, Li, Fan, Zhu. Non-Emotion-Centric Empathetic Dialogue Generation. COLING 2025 "
    "(https://aclanthology.org/2025.coling-main.66/)",
    table="Table 1 (automatic evaluation, ED test) and Table 3 (share of the top-5 sentences)",
    source="numbers given in the project's issue #6 for NEC; the same values (and DCKS's 36.89 Sent-Std, "
    "MIME's 54.58 % top-5 share) appear in a public paper summary found with the search tool; the "
    "authors' code (github huangfu170/NEC-empchat, data/util.py, metrics/distinct/distinct.py) shows "
    "BLEU = NLTK corpus_bleu, cumulative uniform weights, SmoothingFunction(epsilon=1e-12).method1, on "
    "nltk.word_tokenize tokens; Dist = corpus-level distinct/total after dropping , . ? ! tokens",
    metrics={
        "ppl": 12.89,
        "bleu1": 23.62,
        "bleu4": 4.78,
        "dist1": 3.15,
        "dist2": 13.91,
        "sent_std": 18.61,
        "top5_share": 20.32,
    },
    notes="Sent-Std is NEC's eq. 16 (standard deviation of the generated-sentence frequency "
    "distribution, lower is better); its exact normalisation was not found, so our sent_std (see "
    "metrics.DEFINITIONS) is not guaranteed to be on the same scale. Our BLEU keeps punctuation and "
    "uses sacreBLEU; NEC's Dist drops , . ? ! tokens, ours keeps them.",
    missing=["bleu2", "bleu3"],
)

NEC_HUMAN = PublishedRow(
    system="Human (NEC's reference row)",
    paper=NEC.paper,
    table="Table 1 / Table 3 (human references)",
    source="not found: no stored copy of NEC's tables was reachable with the search tool",
    metrics={},
    notes="Row kept so the gap is visible; our own runs report the references' EPITOME rates "
    "(ref_epitome_*) instead.",
    missing=["dist1", "dist2", "sent_std", "top5_share"],
)

MIME = PublishedRow(
    system="MIME",
    paper="Majumder et al. MIME: MIMicking Emotions for Empathetic Response Generation. EMNLP 2020 "
    "(https://aclanthology.org/2020.emnlp-main.721/)",
    table="authors' released test output (github declare-lab/MIME, output.txt, header line) — "
    "not the paper's table, which we could not read; top-5 share from NEC's Table 3",
    source="declare-lab/MIME output.txt: 'test  Loss 3.6253  PPL 37.5363  Accuracy 0.3488  Bleu_g 2.76  "
    "Bleu_b 3.13' (MoEL-style evaluation: PPL of references, 32-way emotion accuracy, multi-bleu "
    "BLEU-4 of greedy / beam outputs); NEC Table 3 via the paper summary: MIME top-5 share 54.58 %",
    metrics={
        "ppl": 37.54,
        "emotion_acc": 34.88,
        "bleu4": 2.76,  # greedy decoding ("Bleu_g"); beam search gives 3.13
        "top5_share": 54.58,
    },
    notes="bleu4 = multi-bleu.perl cumulative BLEU-4 of the greedy outputs (beam: 3.13); PPL on MIME's "
    "own word vocabulary (not comparable with a sub-word PPL).",
    missing=["bleu1", "bleu2", "dist1", "dist2"],
)

IMAGINE = PublishedRow(
    system="IMAGINE",
    paper="Wish I Can Feel What You Feel: A Neural Approach for Empathetic Response Generation "
    "(Findings of EMNLP 2022)",
    table="Table 1 (automatic evaluation: BLEU-2, Dist-1/2, emotion accuracy)",
    source="not found: the stored copies reachable with the search tool hold the abstract and "
    "introduction only",
    metrics={},
    missing=["bleu2", "dist1", "dist2", "emotion_acc"],
)

GAO_SOFT = PublishedRow(
    system="Gao et al. (soft gate)",
    paper="Gao et al. Improving Empathetic Response Generation by Recognizing Emotion Cause in "
    "Conversations. Findings of EMNLP 2021 (https://aclanthology.org/2021.findings-emnlp.70/)",
    table="main results table (soft-gated model)",
    source="not found: the paper's tables were not reachable with the search tool; the authors' repo "
    "(github A-Rain/EmpDialogue_RecEC, soft_gen/metric_utils.py) confirms Dist-n = corpus-level "
    "distinct / total n-grams",
    metrics={},
    notes="The project's issue #3 quotes Gao et al.'s emotion accuracy as 42.4 % on ED test, without "
    "saying which gate; not entered here as a per-gate number.",
    missing=["emotion_acc", "bleu4", "dist1", "dist2"],
)

GAO_HARD = PublishedRow(
    system="Gao et al. (hard gate)",
    paper=GAO_SOFT.paper,
    table="main results table (hard-gated model)",
    source=GAO_SOFT.source,
    metrics={},
    missing=GAO_SOFT.missing,
)

PUBLISHED_ROWS: List[PublishedRow] = [IMAGINE, MIME, GAO_SOFT, GAO_HARD, NEC, NEC_HUMAN]
