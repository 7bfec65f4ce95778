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
    table="Table 2 (BLEU 2.98, ED test) and section 5 'Emotion Classification' (top-1/2/5 emotion "
    "accuracy 34 / 58 / 77 %); top-5 share from NEC's Table 3",
    source="the paper's text in ../shared/seeds (002_…, MIME); the authors' released test output "
    "(github declare-lab/MIME, output.txt: 'Accuracy 0.3488 Bleu_g 2.76 Bleu_b 3.13 PPL 37.5363') agrees; "
    "NEC Table 3 via the paper summary: MIME top-5 share 54.58 %",
    metrics={
        "ppl": 37.54,
        "emotion_acc": 34.0,
        "bleu4": 2.98,
        "top5_share": 54.58,
    },
    notes="MoEL-style evaluation: BLEU = multi-bleu.perl cumulative BLEU-4 of beam-search outputs (5 "
    "beams); emotion accuracy = MIME's own context-emotion classifier (eq. 5) against the 32 ED labels "
    "(top-2 58 %, top-5 77 %; our `mime` logs its own top-1/2/5 as emotion_acc in its training log); "
    "PPL (from the released output) on MIME's word vocabulary, not comparable with a sub-word PPL.",
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
    table="Table 2 (automatic evaluation on ED test, mean of 5 seeds): 'Ours(Soft)'",
    source="the paper's text in ../shared/seeds (003_…); its section 5.3 says BLEU is BLEU-4 'following "
    "MIME and MoEL'; the authors' repo (github A-Rain/EmpDialogue_RecEC, soft_gen/metric_utils.py) "
    "confirms Dist-n = corpus-level distinct / total n-grams",
    metrics={"bleu4": 1.774, "dist1": 1.7, "dist2": 8.4, "emotion_acc": 42.4},
    notes="Dist-1/2 given as ratios (0.017 / 0.084) in the paper, here in %; accuracy = the emotion "
    "reasoner's 32-way context-emotion accuracy. The same table's re-run of MIME reads BLEU 1.578, "
    "Dist-1/2 0.8 / 6.4 %, accuracy 38.3 % (BLEU scales differ between the papers' scripts).",
    missing=[],
)

GAO_HARD = PublishedRow(
    system="Gao et al. (hard gate)",
    paper=GAO_SOFT.paper,
    table="Table 2 (automatic evaluation on ED test, mean of 5 seeds): 'Ours(Hard)'",
    source=GAO_SOFT.source,
    metrics={"bleu4": 1.734, "dist1": 1.8, "dist2": 9.0, "emotion_acc": 42.3},
    notes="As the soft row: Dist-1/2 0.018 / 0.090 in the paper.",
    missing=[],
)

PUBLISHED_ROWS: List[PublishedRow] = [IMAGINE, MIME, GAO_SOFT, GAO_HARD, NEC, NEC_HUMAN]
