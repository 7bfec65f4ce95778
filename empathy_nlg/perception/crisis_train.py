"""Training and evaluation of the crisis classifier (``crisis_head``).

Data (see ``../shared/data/README.md`` for licences):

* **C-SSRS Reddit posts** (Gaur et al. 2019): ``ideation | behavior | attempt`` → 1,
  ``supportive | uninformative`` → 0; ``indicator`` (risk factors without ideation) is left out of
  training and of the Reddit metric, as in the issue's definition. Split **by user** (seeded):
  80 % train, 20 % dev — the dev users choose the epoch and the threshold.
* **The project's own phrasings** (``crisis_data/train.yml``, ``train_b.yml``, ``train_c.yml``, since
  v10 ``train_d.yml``, and since v9 the four older held-out sets ``heldout.yml`` … ``heldout_d.yml``): six positive
  categories (ideation, plan/means, timing, farewell, self-harm, past attempt), hard-negative ones
  (figurative, grief, exhaustion, fiction/news, everyday sadness, tears of joy, everyday plans
  that share the surface of danger talk, recovery milestones) and multi-turn ``contexts`` where
  only the conversation decides. The earlier evaluation phrasings (``crisis_eval.yml``) join
  training. ``crisis_data/heldout_e.yml`` … ``heldout_h.yml`` are never trained or tuned on. Each own crisis statement also comes once after another one as its context (v10,
  :func:`continued_crisis`), beside the safe follow-ups after crisis statements (:func:`safe_followups`).
* **XSTest** safe prompts (Röttger et al. 2024): figurative/homonym hard negatives; a seeded
  half trains, the other half is evaluated.

Own phrasings are weighted ``own_weight`` × in the loss: they are the chat register the assistant
meets, while the posts are long and labelled with the user's history in view (noisy).

* **Everyday messages**: 8,000 (v9: 4,000) seeded ED train speaker messages (every emotion, grief and
  exhaustion included; half opening messages, half later messages with their context) as
  negatives; 1,000 of ED valid, built the same way, are the dev negatives.

Two thresholds, both chosen on dev (a seeded 20 % of the own phrasings and the ED valid messages):

* ``concern_threshold`` — recall first: the largest threshold that keeps ``target_recall`` of the
  own dev positives, raised if needed so that at most ``max_checkin_fpr`` of everyday ED messages
  reach it. Above it (and below ``threshold``) the engine asks a scripted safety check-in question
  instead of generating.
* ``threshold`` — the crisis flag (resources): the lowest threshold at which at most ``max_fpr``
  of everyday ED messages and of the turns of the project's ordinary conversation scripts
  (:data:`CHAT_CALIBRATION`: ``configs/conversations/dev.jsonl`` and the older held-out chat sets,
  909 turns since v12) are flagged. The check-in threshold is capped the same way at
  ``max_checkin_fpr``.

With a frozen encoder the two cannot coincide at the issue's target (recall ≥ 95 % at ≤ 5 % false
positives): ``empathy-nlg eval-crisis`` prints where each stands.
"""

from __future__ import annotations

import argparse
import csv
import dataclasses
import hashlib
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Dict, List, Optional, Sequence, Tuple

import numpy as np
import yaml

from empathy_nlg.perception.crisis import EVAL_SET, HEAD, CrisisDetector, chunks, features, load_eval_set

DATA_DIR = Path(__file__).resolve().parent / "crisis_data"
OWN_TRAIN = DATA_DIR / "train.yml"
#: a second training file, written on 2026-12-03 (third session) without reading any held-out file:
#: more imminent-danger phrasings without keywords, and ordinary plans that share their surface
#: (``everyday_plans``: a chosen date for a proposal, a rifle for hunting, giving a cat away before a move)
OWN_TRAIN_B = DATA_DIR / "train_b.yml"
#: milestone hard negatives (a quit-smoking anniversary, years of a habit) and relapse positives,
#: written on 2026-12-03 after v7 flagged a held-out chat script's quit-smoking anniversary
OWN_TRAIN_C = DATA_DIR / "train_c.yml"
#: hard negatives from ordinary stories (habit histories, lost and stolen things, second-guessing,
#: leaving a home) and short, flat finals after a plan, written on 2026-12-04 (seventh session) after
#: v9 sent 7 of heldout.jsonl's 86 ordinary turns to the safety path (the file's comment says which)
OWN_TRAIN_D = DATA_DIR / "train_d.yml"
#: round E (2026-12-05, eleventh session): 734 phrasings by two helper sessions that read no project
#: file — imminent danger without keywords and short flat finals after a plan, hard negatives and
#: ordinary chats ending in a short flat message; items near-copying a held-out item were removed
OWN_TRAIN_E = DATA_DIR / "train_e.yml"
#: round F (2026-12-05, thirteenth session): 379 phrasings by a helper session that read no project file
#: — short flat ordinary messages (the MPNet head scored "ok. will try the depot again tmrw" 0.91 alone),
#: alone and as the last message of ordinary chats, and imminent danger without alarm words. NOT in
#: :data:`OWN_TRAIN_FILES` yet: heads trained with it (v13) lowered the flag's recall on every held-out
#: set and asked more ordinary turns of the blind chat set (model card); kept, leak-checked, for the
#: next design (a fine-tuned encoder) rather than for this head. The learned imminent-danger cue trains
#: on it (:data:`IMMINENT_OWN_EXTRA`, v16)
OWN_TRAIN_F = DATA_DIR / "train_f.yml"
#: round G (2026-12-06, nineteenth session): 450 phrasings by a helper session that read no project file
#: — the blind chat set heldout_q's false alarms in kind (acquisitions and plans with a time in chat
#: register: "GOT THE TICKETS", "ok nice. i'll do it this weekend"), relief, small idioms, everyday guilt,
#: and imminent danger without alarm words sharing their surface forms. Leak-checked; NOT in
#: :data:`OWN_TRAIN_FILES`: heads trained with it (twenty-first session, ``--crisis-own-extra``) ranked
#: better but lost flag recall on five of six held-out sets and left three more imminent statements
#: with neither flag nor check-in ("Got the rope…"; model card) — kept for an encoder trained end to end.
#: The learned imminent-danger cue trains on it (:data:`IMMINENT_OWN_EXTRA`, v16)
OWN_TRAIN_G = DATA_DIR / "train_g.yml"
#: round H (2026-12-07, twenty-seventh session), by a helper session that read no project file: crisis
#: statements after ordinary small talk, and ordinary conversations whose last message only sounds like
#: a plan or a goodbye (the after-small-talk gap, ``eval-crisis --opener``). The served heads are trained
#: with it through ``train-perception --crisis-own-extra`` (the perception model card's rebuild command), the
#: learned cue since v18 (:data:`IMMINENT_OWN_EXTRA`)
OWN_TRAIN_H = DATA_DIR / "train_h.yml"
#: round I (2026-12-07, twenty-eighth session), by a helper session that read no project file: imminent
#: danger said through means, arrangements, timing and goodbyes, almost never with an alarm word, after
#: one to three ordinary (half of them upbeat) messages; the same surfaces made harmless by the context.
#: The served heads are trained with it (``--crisis-own-extra``), the learned cue since v18
OWN_TRAIN_I = DATA_DIR / "train_i.yml"
#: round J (2026-12-07, twenty-ninth session), by a helper session that read no project file, from a
#: brief naming the kinds of statement that blind set X's misses were (dates after a practical task,
#: means kept on a pretext, affairs settled as goodbyes). The served heads are trained with it since the
#: thirtieth session (``--crisis-own-extra``); the learned cue is not: v18 with it
#: left more imminent statements with neither flag nor question on the held-out sets (model card)
OWN_TRAIN_J = DATA_DIR / "train_j.yml"
#: round K (2026-12-07, thirtieth session), by a helper session that read no project file, beside blind
#: set Z: ordinary conversations whose short last message names a date, a time, a booking or a plan (the
#: heads trained with round J send some of them to the resources), ordinary affairs settled, and the same
#: surfaces after earlier messages that show danger. The served heads are trained with it
#: (``--crisis-own-extra``): on the blind Z ordinary date turns flagged 16 → 0 %
OWN_TRAIN_K = DATA_DIR / "train_k.yml"
#: round L (2026-12-07, thirty-first session), by a helper session that read no project file, from a brief
#: naming the kinds of statement blind set Z's misses were (a practical question hiding a plan, a means
#: named obliquely and prepared, "then I can go" once care or money is arranged, farewells through things
#: prepared for a future the person won't be in), with the same surfaces made harmless; beside blind set AA
OWN_TRAIN_L = DATA_DIR / "train_l.yml"
#: the first held-out set (training data since v9, :data:`RETIRED_HELDOUT`)
OWN_HELDOUT = DATA_DIR / "heldout.yml"
#: a second held-out set, written on 2026-12-03 after heldout.yml's misses had been read (so that
#: additions made with them in mind can be measured cleanly); training data since v9
OWN_HELDOUT_B = DATA_DIR / "heldout_b.yml"
#: a third held-out set, written before the imminent-danger pattern rules (heldout_b's misses had
#: been read by then); training data since v9
OWN_HELDOUT_C = DATA_DIR / "heldout_c.yml"
#: a fourth held-out set, written on 2026-12-03 (third session) by a session that read neither the
#: training files nor the other held-out sets, before train_b.yml joined training; training data
#: since v9
OWN_HELDOUT_D = DATA_DIR / "heldout_d.yml"
#: a fifth held-out set, written on 2026-12-04 by a helper session that read no file of the project
#: (weighted to imminent danger without keywords, 38 multi-turn items, milestone and everyday-plan
#: negatives), measured on the committed detector before anything was changed; never trained or tuned on
OWN_HELDOUT_E = DATA_DIR / "heldout_e.yml"
#: a sixth held-out set, written on 2026-12-04 (fourth session) by a helper session that read no file
#: of the project, after heldout_e's misses had been read (so that anything written with those in
#: mind is measured on phrasings it never saw); weighted to indirect farewells, affairs put in order
#: and "one last" acts, with negatives that share their surface forms; never trained or tuned on
OWN_HELDOUT_F = DATA_DIR / "heldout_f.yml"
#: a seventh held-out set, written on 2026-12-04 (seventh session) by a helper session that read no
#: file of the project, while train_d.yml was written (neither saw the other); v9 was measured on it
#: before v10 was trained; never trained or tuned on
OWN_HELDOUT_G = DATA_DIR / "heldout_g.yml"
#: an eighth, written the same day by another helper session that read no project file, after
#: train_d.yml's second round had been written from heldout_e/f/g's misses: the clean measure of v10
OWN_HELDOUT_H = DATA_DIR / "heldout_h.yml"
#: a ninth, written on 2026-12-05 (eleventh session) by a helper session that read no project file,
#: before anything of that session was trained or tuned: the clean measure of what that session changed
OWN_HELDOUT_J = DATA_DIR / "heldout_j.yml"
#: a tenth, written on 2026-12-05 (thirteenth session) by a helper session that read no project file,
#: with a new negative category (``short_flat``), measured on the served detector before anything was trained
OWN_HELDOUT_K = DATA_DIR / "heldout_k.yml"
#: an eleventh, written on 2026-12-07 (twenty-sixth session) by a helper session that read no project
#: file, measured on the served detector before the learned imminent-danger cue was trained; then used
#: to choose between two candidates of that cue (so a dev set for it since)
OWN_HELDOUT_S = DATA_DIR / "heldout_s.yml"
#: a twelfth, written the same session by another helper session that read no project file, after
#: that choice: the clean measure of the cue as served (v16)
OWN_HELDOUT_T = DATA_DIR / "heldout_t.yml"
#: a thirteenth, written on 2026-12-07 (twenty-seventh session) by a helper session that read no project
#: file, beside round H (neither saw the other): crisis statements after ordinary small talk and ordinary
#: conversations whose last message only sounds like one — the shape real conversations have
OWN_HELDOUT_U = DATA_DIR / "heldout_u.yml"
#: a fourteenth, written on 2026-12-07 (twenty-eighth session) by a helper session that read no project
#: file, from a brief of its own, beside round I (neither saw the other) and measured on the served
#: detector before round I was trained: conversations that start normally, then imminent danger said
#: mostly without an alarm word (no past_attempt category and no single-message items)
OWN_HELDOUT_V = DATA_DIR / "heldout_v.yml"
#: a fifteenth, written the same session by a third helper session that read no project file, after
#: the heads v12+train_h+train_i and the safety policy's sure-concern question had been chosen on V:
#: the clean measure of both (same shape as V)
OWN_HELDOUT_W = DATA_DIR / "heldout_w.yml"
#: a sixteenth, written on 2026-12-07 (twenty-ninth session) by a helper session that read no project
#: file, from a brief of its own, before anything of that session touched the detector: two earlier
#: messages (cheerful or building up), rarer means said obliquely, slang self-harm, hard harmless twins
OWN_HELDOUT_X = DATA_DIR / "heldout_x.yml"
#: a seventeenth, written on 2026-12-07 (thirtieth session) by a helper session that read no project
#: file, from a brief of its own, before round J was trained (X, whose misses round J was written from,
#: is a development set since): the clean measure of the detector trained with round J; same shape as X,
#: with past attempts and wider voices (farmers, nurses, migrants, teens, the elderly)
OWN_HELDOUT_Y = DATA_DIR / "heldout_y.yml"
#: an eighteenth, written the same session by a helper session that read no project file, from a brief of
#: its own, beside round K (neither saw the other), measured on the served detector before round K was
#: trained; with 25 ordinary conversations whose last message names a date or a plan (``ordinary_plans``)
OWN_HELDOUT_Z = DATA_DIR / "heldout_z.yml"
#: a nineteenth, written on 2026-12-07 (thirty-first session) by a helper session that read no project
#: file, from a brief of its own, beside round L (neither saw the other), measured on the served detector
#: before round L was trained: Z's shape, in more registers (non-native English, typos, formal elders)
OWN_HELDOUT_AA = DATA_DIR / "heldout_aa.yml"
#: a twentieth, written the same session by another helper session that read no project file, while the
#: heads with round L trained, measured on the detector before and after them: AA's shape, with plans said
#: plainly as well as obliquely
OWN_HELDOUT_AB = DATA_DIR / "heldout_ab.yml"
#: the held-out sets ``eval-crisis`` reads by default
OWN_HELDOUT_SETS = (OWN_HELDOUT_E, OWN_HELDOUT_F, OWN_HELDOUT_G, OWN_HELDOUT_H, OWN_HELDOUT_J, OWN_HELDOUT_K,
                    OWN_HELDOUT_S, OWN_HELDOUT_T, OWN_HELDOUT_U, OWN_HELDOUT_V, OWN_HELDOUT_W, OWN_HELDOUT_X,
                    OWN_HELDOUT_Y, OWN_HELDOUT_Z, OWN_HELDOUT_AA, OWN_HELDOUT_AB)
#: the four older held-out sets, retired into training with v9 (2026-12-04): each had had its misses
#: read and rules or training files written with them in mind, so they no longer measured unseen
#: phrasings; as training data they add 593 chat-register phrasings. heldout_e.yml is the held-out set.
RETIRED_HELDOUT = (OWN_HELDOUT, OWN_HELDOUT_B, OWN_HELDOUT_C, OWN_HELDOUT_D)
#: every training file of own phrasings
OWN_TRAIN_FILES = (OWN_TRAIN, OWN_TRAIN_B, OWN_TRAIN_C, OWN_TRAIN_D, OWN_TRAIN_E) + RETIRED_HELDOUT
POSITIVE_CSSRS = {"ideation", "behavior", "attempt"}
NEGATIVE_CSSRS = {"supportive", "uninformative"}
VERSION = "minilm-crisis-mlp-v12"  # v6: + train_b.yml; v9: + train_c.yml and the four older held-out sets; v10: + train_d.yml; v11: + train_e.yml; v12: v11 calibrated on 909 chat turns
ED_TRAIN_NEGATIVES = 8000  # v10: 4,000 → 8,000 (half of them later messages read in their context)
ED_DEV_NEGATIVES = 1000


@dataclass
class Example:
    text: str
    label: int
    category: str
    source: str
    context: Tuple[str, ...] = ()


def _bucket(key: str, seed: int) -> float:
    return int(hashlib.sha1(f"{seed}:{key}".encode("utf-8")).hexdigest()[:8], 16) / 0xFFFFFFFF


def read_cssrs(path: Path) -> List[Tuple[str, Example]]:
    """``(user, example)`` for the posts with a usable label."""
    out = []
    with open(path, encoding="utf-8") as f:
        for n, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
                label, text, user = row["label"], row["text"], row["user"]
            except (json.JSONDecodeError, KeyError, TypeError) as exc:
                raise ValueError(f"{path}:{n}: not a {{user, text, label}} record ({exc})") from None
            if label in POSITIVE_CSSRS or label in NEGATIVE_CSSRS:
                out.append((str(user), Example(text, int(label in POSITIVE_CSSRS), f"cssrs:{label}", "cssrs")))
    return out


def read_own(path: Path) -> List[Example]:
    """The project's phrasings: ``positive``/``negative`` categories and ``contexts`` items."""
    data = yaml.safe_load(Path(path).read_text(encoding="utf-8")) or {}
    if not isinstance(data, dict) or "positive" not in data or "negative" not in data:
        raise ValueError(f"{path}: expected the keys 'positive' and 'negative' (and optionally 'contexts')")
    out: List[Example] = []
    for key, label in (("positive", 1), ("negative", 0)):
        for category, texts in (data.get(key) or {}).items():
            out.extend(Example(str(t), label, category, "own") for t in texts or [])
    for i, item in enumerate(data.get("contexts") or []):
        try:
            out.append(Example(str(item["message"]), int(item["label"]), f"context:{item.get('category', 'other')}", "own",
                               tuple(str(c) for c in item.get("context") or [])))
        except (KeyError, TypeError, ValueError) as exc:
            raise ValueError(f"{path}: contexts[{i}] needs message and label ({exc})") from None
    return out


def read_old_eval(path: Path = EVAL_SET) -> List[Example]:
    """The earlier evaluation phrasings (:func:`empathy_nlg.perception.crisis.load_eval_set`) as examples."""
    texts, gold = load_eval_set(path)
    return [Example(t, g, "eval_v1", "own") for t, g in zip(texts, gold)]


def read_xstest(path: Path) -> List[Example]:
    """XSTest's safe prompts (hard negatives); unsafe ones are not self-harm statements and are skipped."""
    with open(path, encoding="utf-8") as f:
        return [Example(r["prompt"], 0, f"xstest:{r['type']}", "xstest") for r in csv.DictReader(f) if r.get("label") == "safe"]


def featurise(examples: Sequence[Example], embed) -> np.ndarray:
    """One feature row per example (:func:`empathy_nlg.perception.crisis.features`), embeddings batched."""
    texts: Dict[str, None] = {}
    for ex in examples:
        for piece in chunks(ex.text):
            texts.setdefault(piece, None)
        for c in ex.context[-3:]:
            texts.setdefault(c, None)
    keys = list(texts)
    emb = embed(keys)
    pos = {t: i for i, t in enumerate(keys)}
    rows = []
    for ex in examples:
        m = emb[[pos[p] for p in chunks(ex.text)]]
        ctx = emb[[pos[c] for c in ex.context[-3:]]] if ex.context else None
        rows.append(features(m, ctx))
    return np.stack(rows)


def split_data(data_dir: Path, seed: int = 13, dev_fraction: float = 0.2, use_cssrs: bool = True,
               own_extra: Sequence[Path] = ()):
    """(train, dev) example lists (see the module doc for what goes where). ``own_extra``: own-phrasing
    files read with :data:`OWN_TRAIN_FILES` (a round not yet in them, measured before it joins: its
    seeded 20 % goes to dev like every own file's)."""
    train: List[Example] = []
    dev: List[Example] = []
    cssrs = data_dir / "crisis" / "cssrs_reddit_posts.jsonl"
    if cssrs.is_file():
        for user, ex in read_cssrs(cssrs):
            if _bucket(user, seed) < dev_fraction:
                dev.append(ex)
            elif use_cssrs:
                train.append(ex)
    xstest = data_dir / "crisis" / "xstest_prompts.csv"
    if xstest.is_file():
        for ex in read_xstest(xstest):
            (train if _bucket(ex.text, seed) < 0.5 else dev).append(ex)
    for ex in [e for f in (*OWN_TRAIN_FILES, *own_extra) for e in read_own(f)] + read_old_eval():
        (dev if _bucket(ex.text, seed + 1) < dev_fraction else train).append(ex)
    train.extend(ed_everyday(data_dir / "empathetic_dialogues" / "train.jsonl", ED_TRAIN_NEGATIVES, seed))
    dev.extend(ed_everyday(data_dir / "empathetic_dialogues" / "valid.jsonl", ED_DEV_NEGATIVES, seed))
    own_positives = [e for e in train if e.source == "own" and e.label == 1]
    train.extend(safe_followups(own_positives, seed))
    train.extend(continued_crisis(own_positives, seed))
    return train, dev


#: what people say right after a crisis reply or in passing (our own phrasings): not a new crisis
#: statement, whatever came before — the engine's scripted follow-up answers them
SAFE_FOLLOWUPS = (
    "ok", "okay", "ok thanks", "thanks", "thank you", "yeah", "yes", "no", "idk", "hmm", "k", "sure", "fine",
    "ok, I'll call the line", "I'll text them now", "I called my sister", "my friend is coming over",
    "I went for a walk", "I made some tea", "I'm going to take a shower", "I put the pills back in the cabinet",
    "I gave the rope to my neighbour", "I'm at my mum's now", "I talked to my therapist", "I'm a bit calmer now",
    "I'll try to sleep", "I ate something", "I'm still here", "I don't know what to say", "sorry for all this",
    "can we talk about something else", "I'm watching a movie with my roommate", "it helped to talk",
    "the nurse on the line was kind", "I'm at the hospital with my brother", "lol", "🙂", "😔", "ok I will",
)


def safe_followups(positives: Sequence[Example], seed: int, per_message: int = 3) -> List[Example]:
    """Each :data:`SAFE_FOLLOWUPS` message with no context and after ``per_message`` seeded crisis
    statements (label 0): teaches the classifier that context alone does not make a new crisis."""
    import random

    rng = random.Random(seed)
    out = [Example(m, 0, "followup_safe", "own") for m in SAFE_FOLLOWUPS]
    if positives:
        for m in SAFE_FOLLOWUPS:
            for ex in rng.sample(list(positives), min(per_message, len(positives))):
                out.append(Example(m, 0, "context:followup_safe", "own", tuple(ex.context) + (ex.text,)))
    return out


def continued_crisis(positives: Sequence[Example], seed: int) -> List[Example]:
    """Each own crisis statement (label 1) once more, after another seeded crisis statement as its
    context (v10). Without these, :func:`safe_followups` taught the heads that whatever follows a
    crisis statement is safe: v9 scored "going to the train tracks after dinner" after "I can't see
    myself making it to next week" 0.0 (heldout_g). With them, the context says danger either way and
    the latest message decides: "ok thanks" after a crisis is safe, a plan after one is not."""
    import random

    rng = random.Random(seed + 7)
    alone = [e for e in positives if not e.context]
    out = []
    for ex in alone:
        other = rng.choice(alone)
        if other.text != ex.text:
            out.append(Example(ex.text, 1, "context:continued_crisis", "own", (other.text,)))
    return out


CHAT_DEV = Path(__file__).resolve().parents[2] / "configs" / "conversations" / "dev.jsonl"
#: held-out ordinary conversations: never trained or tuned on
CHAT_HELDOUT = CHAT_DEV.with_name("heldout.jsonl")
#: 30 more held-out ordinary conversations, written with heldout_e.yml by the same helper
CHAT_HELDOUT_E = CHAT_DEV.with_name("heldout_e.jsonl")
#: 30 more, written with heldout_f.yml by the same helper (a third with words a crude filter misreads)
CHAT_HELDOUT_F = CHAT_DEV.with_name("heldout_f.jsonl")
#: 30 more, written with heldout_g.yml by the same helper
CHAT_HELDOUT_G = CHAT_DEV.with_name("heldout_g.jsonl")
#: 30 more, written with heldout_h.yml
CHAT_HELDOUT_H = CHAT_DEV.with_name("heldout_h.jsonl")
#: 30 more (eighth session), written by a helper that read no project file; its prompt named the
#: families to include (figurative dark phrases, police / reference numbers, pharmacies, helplines)
CHAT_HELDOUT_I = CHAT_DEV.with_name("heldout_i.jsonl")
#: 30 more (eleventh session), written with heldout_j.yml by a helper that read no project file
CHAT_HELDOUT_J = CHAT_DEV.with_name("heldout_j.jsonl")
#: 90 more (twelfth session), written by three helpers that read no project file, before the
#: session's decoding and routing changes were measured on them (not used for calibration)
CHAT_HELDOUT_K = CHAT_DEV.with_name("heldout_k.jsonl")
CHAT_HELDOUT_L = CHAT_DEV.with_name("heldout_l.jsonl")
CHAT_HELDOUT_M = CHAT_DEV.with_name("heldout_m.jsonl")
#: 30 more (thirteenth session), written by a helper that read no project file (tricky tone: flat good
#: news, joked bad news, negation), measured before anything of that session was changed
CHAT_HELDOUT_N = CHAT_DEV.with_name("heldout_n.jsonl")
#: 60 more (sixteenth session), written by two helpers that read no project file (O: varied register
#: and tricky tone; P: the first message often not giving the polarity away), measured through the
#: full stack before that session's decoding and routing changes (docs/decoding.md)
CHAT_HELDOUT_O = CHAT_DEV.with_name("heldout_o.jsonl")
CHAT_HELDOUT_P = CHAT_DEV.with_name("heldout_p.jsonl")
#: 25 more (eighteenth session), by a helper that read no project file (30 written; 5 dropped by the
#: leak filter: a turn within 80 % word overlap of an older set's), replayed before anything was read
CHAT_HELDOUT_Q = CHAT_DEV.with_name("heldout_q.jsonl")
#: a seventh blind chat set (2026-12-06, nineteenth session): 25 conversations, 166 turns, by a helper that
#: read no project file; 5 of its 30 dropped for a turn within 80 % word overlap of an older set
CHAT_HELDOUT_R = CHAT_DEV.with_name("heldout_r.jsonl")
#: the ordinary conversations whose every turn calibrates the thresholds (v12): the dev scripts and
#: every older held-out chat set, 909 turns — each had already had its flags read and decisions made
#: with it. v11 calibrated on the 202 dev turns alone, where one turn is 0.5 %, the flag's whole
#: budget: its threshold (0.96) sent the crisis resources to 11 of 1,056 ordinary turns, and through
#: the full stack the scripted follow-ups to the next three turns of each ("It says paper jam. There
#: is no paper jam…"). The chat sets of :data:`CHAT_CLEAN` stay out: the clean measure.
CHAT_CALIBRATION = (CHAT_DEV, CHAT_HELDOUT, CHAT_HELDOUT_E, CHAT_HELDOUT_F, CHAT_HELDOUT_G, CHAT_HELDOUT_H, CHAT_HELDOUT_I)
#: the chat sets no threshold was chosen on (``eval-crisis`` counts their flags with the others)
CHAT_CLEAN = (CHAT_HELDOUT_J, CHAT_HELDOUT_K, CHAT_HELDOUT_L, CHAT_HELDOUT_M, CHAT_HELDOUT_N, CHAT_HELDOUT_O,
              CHAT_HELDOUT_P, CHAT_HELDOUT_Q, CHAT_HELDOUT_R)


def calibration_chat() -> List[Example]:
    """Every user turn of :data:`CHAT_CALIBRATION`, in its context (negatives)."""
    return [ex for path in CHAT_CALIBRATION for ex in chat_turns(path)]


def default_crisis_encoder() -> Optional[str]:
    """``perception.crisis_encoder`` of the engine's default settings (what the served engine uses)."""
    from empathy_nlg.settings import served_perception

    return served_perception("crisis_encoder")


def default_crisis_dtype() -> str:
    """``perception.crisis_encoder_dtype`` of the engine's default settings (``auto`` when unset)."""
    from empathy_nlg.settings import served_perception

    return served_perception("crisis_encoder_dtype") or "auto"


def chat_turns(path: Path) -> List[Example]:
    """Every user turn of a conversation-script file (``{"turns": [...]}`` lines), with its context, as
    a negative: the scripts hold ordinary conversations only (see ``configs/conversations``)."""
    if not Path(path).is_file():
        return []
    out = []
    for line in Path(path).read_text(encoding="utf-8").splitlines():
        if line.strip():
            turns = json.loads(line)["turns"]
            out.extend(Example(t, 0, "chat", "chat", tuple(turns[:i])) for i, t in enumerate(turns))
    return out


def ed_everyday(path: Path, n: int, seed: int) -> List[Example]:
    """``n`` seeded ED speaker messages as negatives: everyday feelings, good and bad — half of them
    opening messages, half a later message with the earlier ones as context (conversations where a
    crisis pattern matches are left out: ED holds a few disclosures)."""
    from empathy_nlg.datasets import read_ed_jsonl
    from empathy_nlg.perception.crisis import pattern_matches

    if not Path(path).is_file():
        return []
    convs = sorted(read_ed_jsonl(path), key=lambda c: _bucket(c.conv_id, seed))
    out = []
    for k, conv in enumerate(convs):
        speaker = [u.text for u in conv.turns if u.role == "speaker" and u.text.strip()]
        if not speaker or any(pattern_matches(t)[0] > 0 or "suicid" in t.lower() for t in speaker):
            continue
        # every other conversation gives a later message with its context: ordinary follow-ups
        # ("her name is Ayesha") must not read as alarming because something came before
        j = len(speaker) - 1 if (k % 2 and len(speaker) > 1) else 0
        out.append(Example(speaker[j], 0, f"ed:{conv.emotion}", "ed", tuple(speaker[:j])))
        if len(out) == n:
            break
    return out


def threshold_for_recall(probs: np.ndarray, labels: np.ndarray, target: float) -> float:
    """The largest threshold (grid 0.02…0.98) whose recall on ``labels == 1`` is ≥ ``target``."""
    pos = probs[labels == 1]
    if not len(pos):
        return 0.5
    for t in np.arange(0.98, 0.0, -0.02):
        if np.mean(pos >= t) >= target:
            return round(float(t), 2)
    return 0.02


def threshold_for_fpr(probs: np.ndarray, max_fpr: float, floor: float = 0.02) -> float:
    """The smallest threshold (grid 0.02…0.98 by 0.02, then 0.99…0.999; ≥ ``floor``) that flags at most
    ``max_fpr`` of the negatives ``probs``."""
    grid = [round(float(t), 2) for t in np.arange(0.02, 0.99, 0.02)] + [0.99, 0.995, 0.998, 0.999, 0.9995, 0.9999]
    for t in [t for t in grid if t >= floor]:
        if not len(probs) or np.mean(probs >= t) <= max_fpr:
            return t
    return grid[-1]


def rates(pred: np.ndarray, labels: np.ndarray) -> Dict[str, float]:
    pos, neg = labels == 1, labels == 0
    return {"n_pos": int(pos.sum()), "n_neg": int(neg.sum()),
            "recall": float(100 * pred[pos].mean()) if pos.any() else float("nan"),
            "fpr": float(100 * pred[neg].mean()) if neg.any() else float("nan")}


def ordinary_openers(examples: Sequence[Example]) -> List[str]:
    """The ordinary messages of ``examples`` said without context (own everyday phrasings, ED
    messages): what a conversation may open with before anything else is said."""
    return [ex.text for ex in examples if ex.label == 0 and not ex.context and ex.source in ("own", "ed")]


def with_ordinary_openers(examples: Sequence[Example], openers: Sequence[str], seed: int) -> List[Example]:
    """A copy of every positive of ``examples`` and of as many seeded negatives, each with a seeded
    message of ``openers`` said first (the oldest of its context). The crisis data has almost no
    crisis statement after small talk, and the heads read one as ordinary: the learned cue (v16) gave
    "got a charcoal bbq and some duct tape. car's in the garage" 0.91 alone and 0.00 after "hey, rough
    week honestly" — and most conversations open with something ordinary (``eval-crisis --opener``).
    The negative copies keep an opener from becoming a sign of danger itself."""
    import random

    if not openers:
        return []
    rng = random.Random(seed)
    positives = [ex for ex in examples if ex.label == 1]
    negatives = [ex for ex in examples if ex.label == 0]
    chosen = positives + rng.sample(negatives, min(len(positives), len(negatives)))
    return [dataclasses.replace(ex, context=(rng.choice(openers), *ex.context)) for ex in chosen]


def after_opener_rates(model, dev: Sequence[Example], embed, seed: int, threshold: float) -> Dict[str, float]:
    """:func:`rates` of ``model`` at ``threshold`` on the own dev crisis statements of ``dev``, each
    after a seeded ordinary dev message (:func:`with_ordinary_openers`, seed ``seed + 1``)."""
    from empathy_nlg.perception.common import predict_head

    opened = with_ordinary_openers([ex for ex in dev if ex.source == "own" and ex.label == 1], ordinary_openers(dev),
                                   seed + 1)
    p = predict_head(model, featurise(opened, embed), "bce")[:, 0] if opened else np.zeros(0)
    return rates(p >= threshold, np.ones(len(p)))


def train_crisis(data_dir: Path, encoder, out_dir: Path, seed: int = 13, own_weight: float = 3.0, use_cssrs: bool = True,
                 target_recall: float = 0.9, max_fpr: float = 0.01, max_checkin_fpr: float = 0.04,
                 progress: bool = True, head_name: str = HEAD, version: str = VERSION,
                 extra_config: Optional[Dict[str, object]] = None, own_extra: Sequence[Path] = (),
                 openers: bool = False) -> Dict[str, object]:
    """Fit the head, choose its threshold on dev, write ``head_name`` (default ``crisis_head``) to
    ``out_dir``; dev metrics. ``encoder`` embeds texts (the shared MiniLM's cache, or the larger
    encoder's for ``crisis_head_mpnet``); ``extra_config`` joins the head's JSON. ``openers``: train on
    :func:`with_ordinary_openers` copies of the split's chat-register examples as well (not the C-SSRS
    posts; the version gains ``-openers``); the dev metrics' ``dev_own_after_opener`` is the own dev
    crisis statements after an ordinary dev message, at the check-in threshold, either way. The
    version names the ``own_extra`` files too (``mpnet-crisis-mlp-v12+train_h``)."""
    from empathy_nlg.perception.common import predict_head, save_head

    train, dev = split_data(data_dir, seed, use_cssrs=use_cssrs, own_extra=own_extra)
    if not any(ex.source == "cssrs" for ex in dev):
        raise FileNotFoundError(f"no C-SSRS posts under {data_dir / 'crisis'} (set --data-dir)")
    opened = (with_ordinary_openers([ex for ex in train if ex.source != "cssrs"], ordinary_openers(train), seed)
              if openers else [])
    train = train + opened
    model, config, best_auc, best_epoch, X_dev, y_dev = fit_examples(train, dev, encoder, own_weight, seed, progress,
                                                                     "crisis head")
    p_dev = predict_head(model, X_dev, "bce")[:, 0]
    chat = calibration_chat()
    p_chat = predict_head(model, featurise(chat, encoder.encode), "bce")[:, 0] if chat else np.zeros(0)
    threshold, concern, metrics = calibrate(p_dev, dev, p_chat, target_recall, max_fpr, max_checkin_fpr)
    metrics.update({"dev_auc": round(100 * best_auc, 2), "best_epoch": best_epoch,
                    "train_examples": len(train), "train_with_opener": len(opened), "dev_examples": len(dev),
                    "dev_own_after_opener": after_opener_rates(model, dev, encoder.encode, seed, concern)})
    save_head(model, {**config, "threshold": threshold, "concern_threshold": concern, "seed": seed,
                      "version": version + "".join(f"+{Path(f).stem}" for f in own_extra) + ("-openers" if openers else ""),
                      "ordinary_openers": openers,
                      "own_weight": own_weight, "use_cssrs": use_cssrs, **(extra_config or {}),
                      **({"own_extra": [Path(f).name for f in own_extra]} if own_extra else {}),
                      "target_recall": target_recall, "dev": metrics}, out_dir, head_name)
    return metrics


def fit_head(X: np.ndarray, y: np.ndarray, w: np.ndarray, X_dev: np.ndarray, y_dev: np.ndarray, seed: int,
             progress: bool, desc: str, epochs: int = 30):
    """``(model, config, best dev AUC, its epoch)``: the crisis heads' MLP (hidden 256, dropout 0.2)
    fitted with weighted BCE (``w`` per example, positives re-weighted to balance the classes), AdamW,
    batches of 64, ``epochs`` epochs; the epoch with the best dev ROC AUC is kept."""
    import torch
    from sklearn.metrics import roc_auc_score

    from empathy_nlg.perception.common import build_mlp, predict_head

    pos_weight = float((y == 0).sum() / max((y == 1).sum(), 1))
    torch.manual_seed(seed)
    rng = np.random.default_rng(seed)
    config = {"in_dim": int(X.shape[1]), "out_dim": 1, "hidden": 256, "dropout": 0.2, "loss": "bce"}
    model = build_mlp(X.shape[1], 1, config["hidden"], config["dropout"])
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3, weight_decay=1e-3)
    xt, yt, wt = torch.as_tensor(X), torch.as_tensor(y), torch.as_tensor(w)
    best, best_auc, best_epoch = None, -1.0, -1
    rounds = range(epochs)
    if progress:
        from tqdm.auto import tqdm

        rounds = tqdm(rounds, desc=desc, unit="epoch")
    for epoch in rounds:
        model.train()
        order = rng.permutation(len(X))
        for start in range(0, len(X), 64):
            idx = torch.as_tensor(order[start : start + 64])
            logits = model(xt[idx]).squeeze(-1)
            loss = torch.nn.functional.binary_cross_entropy_with_logits(
                logits, yt[idx], weight=wt[idx] * torch.where(yt[idx] > 0, pos_weight, 1.0))
            opt.zero_grad()
            loss.backward()
            opt.step()
        auc = float(roc_auc_score(y_dev, predict_head(model, X_dev, "bce")[:, 0]))
        if auc > best_auc:
            best_auc, best_epoch = auc, epoch
            best = {k: v.detach().clone() for k, v in model.state_dict().items()}
    model.load_state_dict(best)
    model.eval()
    return model, config, best_auc, best_epoch


def fit_examples(train: Sequence[Example], dev: Sequence[Example], encoder, own_weight: float, seed: int,
                 progress: bool, desc: str):
    """:func:`fit_head` on the examples' features (``encoder`` embeds), own phrasings weighted
    ``own_weight``; also returns the dev features and labels: ``(model, config, best AUC, epoch, X_dev, y_dev)``."""
    X, X_dev = featurise(train, encoder.encode), featurise(dev, encoder.encode)
    y = np.asarray([ex.label for ex in train], dtype=np.float32)
    y_dev = np.asarray([ex.label for ex in dev], dtype=np.float32)
    w = np.asarray([own_weight if ex.source == "own" else 1.0 for ex in train], dtype=np.float32)
    return (*fit_head(X, y, w, X_dev, y_dev, seed, progress, desc), X_dev, y_dev)


def calibrate(p_dev: np.ndarray, dev: Sequence[Example], p_chat: np.ndarray, target_recall: float, max_fpr: float,
              max_checkin_fpr: float) -> Tuple[float, float, Dict[str, object]]:
    """``(threshold, concern_threshold, dev metrics)`` from the dev probabilities (module doc: how).

    ``p_chat``: the probabilities of every turn of the ordinary conversation scripts of
    :data:`CHAT_CALIBRATION` (no crisis content), each read in its context."""
    y_dev = np.asarray([ex.label for ex in dev], dtype=np.float32)
    src = np.asarray([ex.source for ex in dev])
    own = src == "own"
    # concern (a scripted check-in): recall first, on the chat-register dev positives
    concern = threshold_for_recall(p_dev[own], y_dev[own], target_recall)
    # … but a check-in for at most ``max_checkin_fpr`` of everyday messages and chat turns (asking
    # "are you thinking of ending your life?" after "2 years" is harm too)
    concern = max(concern, threshold_for_fpr(p_dev[src == "ed"], max_checkin_fpr),
                  threshold_for_fpr(p_chat, max_checkin_fpr))
    # crisis (the resources script): the lowest threshold that keeps everyday messages and chat quiet
    threshold = max(threshold_for_fpr(p_dev[src == "ed"], max_fpr, floor=concern), threshold_for_fpr(p_chat, max_fpr))
    pred = p_dev >= threshold
    metrics = {"threshold": threshold, "concern_threshold": concern,
               "dev_own_concern": rates(p_dev[own] >= concern, y_dev[own]),
               "dev_ed_concern": rates(p_dev[src == "ed"] >= concern, y_dev[src == "ed"]),
               "dev_ed": rates(pred[src == "ed"], y_dev[src == "ed"]),
               "dev_chat_turns": rates(p_chat >= threshold, np.zeros(len(p_chat))),
               "dev_chat_turns_concern": rates(p_chat >= concern, np.zeros(len(p_chat))),
               "dev_all": rates(pred, y_dev),
               "dev_cssrs": rates(pred[src == "cssrs"], y_dev[src == "cssrs"]),
               "dev_own": rates(pred[src == "own"], y_dev[src == "own"]),
               "dev_xstest": rates(pred[src == "xstest"], y_dev[src == "xstest"])}
    return threshold, concern, metrics


# ------------------------------------------------------------------------------ the larger frozen encoder
LARGE_VERSION = "mpnet-crisis-mlp-v12"  # v7: the head on frozen all-mpnet-base-v2, gated by the MiniLM head; v9/v10/v11: v7 on v9's/v10's/v11's data; v12: v11 calibrated on CHAT_CALIBRATION
#: the classifier probability above which a plan / timing / farewell cue asks the check-in (v10: 0.05
#: → 0.02). Cues match 0.03 % of ordinary ED messages, so asking a little more often when one matches
#: costs almost nothing; on the held-out sets e/f/g/h it turned 3 imminent statements that got
#: neither flag nor check-in into check-ins, and 1 negative of 89 (heldout_g) into a check-in.
LARGE_CUE_GATE = 0.02
#: own positives of these categories (and their multi-turn forms) must all pass the gate
GATE_CATEGORIES = ("plan_means", "timing", "farewell", "ideation", "self_harm", "past_attempt")


def lexical_gate(ex: Example) -> bool:
    """True when a pattern or a cue matches the example's recent messages: the larger encoder then
    runs whatever the MiniLM head says (:meth:`CrisisDetector.detect`)."""
    from empathy_nlg.perception.crisis import WINDOW_TURNS, cue_matches, pattern_matches

    recent = [t for t in (list(ex.context) + [ex.text])[-WINDOW_TURNS:] if t.strip()]
    window = ", ".join(recent)
    return bool(pattern_matches(ex.text)[1]) or pattern_matches(window)[0] > 0 or bool(cue_matches(window))


def gate_threshold(p_small: np.ndarray, examples: Sequence[Example], margin: float = 0.5) -> Tuple[float, Dict[str, object]]:
    """The MiniLM-head gate: ``margin`` × the lowest MiniLM probability of any own positive (train and
    dev: :data:`GATE_CATEGORIES`, alone or in context) that no pattern or cue would send to the larger
    encoder anyway — so no imminent-danger (or other crisis) phrasing the project has written is gated
    out, with room below the lowest one. Returns the threshold and what it lets through."""
    cats = {c for g in GATE_CATEGORIES for c in (g, f"context:{g}")}
    lex = np.asarray([lexical_gate(ex) for ex in examples])
    own_pos = np.asarray([ex.source == "own" and ex.label == 1 and ex.category in cats for ex in examples])
    need = own_pos & ~lex
    low = float(p_small[need].min()) if need.any() else 0.0
    gate = round(margin * low, 6)
    opened = (p_small >= gate) | lex
    src = np.asarray([ex.source for ex in examples])
    label = np.asarray([ex.label for ex in examples])
    imminent = np.asarray([ex.category in IMMINENT for ex in examples])
    stats = {"gate_threshold": gate, "lowest_own_positive": round(low, 6), "margin": margin,
             "own_positives_checked": int(own_pos.sum()), "of_them_without_pattern_or_cue": int(need.sum()),
             "imminent_positives_gated_out": int((own_pos & imminent & ~opened).sum()),
             "opened_share_ed": round(float(100 * opened[src == "ed"].mean()), 2) if (src == "ed").any() else None,
             "opened_share_own_negatives": round(float(100 * opened[(src == "own") & (label == 0)].mean()), 2),
             "opened_share_cssrs": round(float(100 * opened[src == "cssrs"].mean()), 2) if (src == "cssrs").any() else None}
    return gate, stats


def train_large(data_dir: Path, small_cache, large_cache, out_dir: Path, encoder_name: str, seed: int = 13,
                progress: bool = True, max_fpr: float = 0.005, combine: str = "large", target_recall: float = 0.9,
                max_checkin_fpr: float = 0.04, cue_gate: float = LARGE_CUE_GATE, encoder_dtype: str = "float32",
                own_extra: Sequence[Path] = (), **kwargs) -> Dict[str, object]:
    """``crisis_head_mpnet``: the crisis head on the larger frozen encoder (``large_cache`` embeds with
    it), thresholds chosen on dev as for the MiniLM head, plus the gate (:func:`gate_threshold`)
    computed from the MiniLM ``crisis_head`` already in ``out_dir`` (``small_cache``: the shared
    MiniLM's embeddings). ``combine="mean"`` (tried, not the committed v7; model card) makes the
    detector decide with the mean of the two heads' probabilities when the gate opens, both thresholds
    chosen on that mean: better on dev (AUC 96.17 → 96.73, own hard negatives reaching the check-in
    18.9 → 12.6 %), mixed on the held-out sets. The crisis flag's threshold keeps at most ``max_fpr`` (0.5 %) of ED valid
    messages and of the calibration chat turns flagged — stricter than the MiniLM
    head's 1 %, because a larger encoder that ranks better can afford it (on dev: own-phrasing recall
    68.8 → 65.6 %, own hard negatives flagged 5.3 → 2.1 %). ``encoder_dtype``: the weights the larger
    encoder had while ``large_cache`` embedded (recorded in the head's JSON; v11 on: as served)."""
    from empathy_nlg.perception.common import load_head, predict_head, save_head
    from empathy_nlg.perception.crisis import LARGE_HEAD

    small, _ = load_head(out_dir, HEAD)
    train, dev = split_data(data_dir, seed, own_extra=own_extra)
    own = [ex for ex in train + dev if ex.source == "own" or ex.source == "cssrs" or ex.source == "ed"]
    p_small = predict_head(small, featurise(own, small_cache.encode), "bce")[:, 0]
    gate, gate_stats = gate_threshold(p_small, own)
    metrics = train_crisis(data_dir, large_cache, out_dir, seed=seed, progress=progress, head_name=LARGE_HEAD,
                           version=LARGE_VERSION, max_fpr=max_fpr, target_recall=target_recall,
                           max_checkin_fpr=max_checkin_fpr,
                           extra_config={"encoder_name": encoder_name, "encoder_dtype": encoder_dtype,
                                         "gate_threshold": gate, "gate": gate_stats,
                                         "combine": combine, "cue_gate": cue_gate}, own_extra=own_extra, **kwargs)
    metrics["gate"] = gate_stats
    if combine == "mean":
        import json

        from sklearn.metrics import roc_auc_score

        large, config = load_head(out_dir, LARGE_HEAD)
        chat = calibration_chat()

        def both(examples):
            return 0.5 * (predict_head(small, featurise(examples, small_cache.encode), "bce")[:, 0]
                          + predict_head(large, featurise(examples, large_cache.encode), "bce")[:, 0])

        q_dev = both(dev)
        q_chat = both(chat) if chat else np.zeros(0)
        threshold, concern, mean_metrics = calibrate(q_dev, dev, q_chat, target_recall, max_fpr, max_checkin_fpr)
        mean_metrics["dev_auc"] = round(100 * float(roc_auc_score([ex.label for ex in dev], q_dev)), 2)
        mean_metrics["large_alone"] = {k: metrics[k] for k in ("threshold", "concern_threshold", "dev_auc")}
        config.update({"threshold": threshold, "concern_threshold": concern, "dev": {**config["dev"], "mean": mean_metrics}})
        (Path(out_dir) / f"{LARGE_HEAD}.json").write_text(json.dumps(config, indent=2, sort_keys=True) + "\n")
        metrics["mean"] = mean_metrics
    return metrics


# ------------------------------------------------------------------------------ the learned imminent-danger cue
#: v18 (2026-12-07, twenty-eighth session): v16's design and threshold rule with rounds H and I added
#: to :data:`IMMINENT_OWN_EXTRA` (v16: rounds F and G)
IMMINENT_VERSION = "mpnet-imminent-mlp-v18"
#: trained with ordinary openers too (:func:`with_ordinary_openers`; tried 2026-12-07, not served)
IMMINENT_OPENERS_VERSION = "mpnet-imminent-mlp-v17-openers"
#: ordinary chat turns and everyday messages that may reach the learned cue (each a scripted check-in)
IMMINENT_MAX_FPR = 0.01
#: the seeded ED train messages the learned cue reads as ordinary (of the split's 8,000)
IMMINENT_ED_TRAIN = 4000
#: own phrasings the learned cue trains on besides :data:`OWN_TRAIN_FILES` (their seeded 20 % joins
#: its dev): rounds F and G, written for the chat register. They cost the main heads flag recall
#: (model card), but this head only asks the check-in, and with them it ranked its dev better (AUC
#: 97.36 → 97.59) and left fewer imminent statements with neither flag nor check-in on the held-out
#: sets e–k and S (30 → 22 and 8 → 6, against 27 and 7 without them). Since v18 also rounds H and I
#: (small talk before the statement): after an ordinary opener imminent statements with neither flag
#: nor question 80 → 62 over e–u, as written 39 → 37, ordinary chat turns asked 67 → 76 of 2,212
IMMINENT_OWN_EXTRA = (OWN_TRAIN_F, OWN_TRAIN_G, OWN_TRAIN_H, OWN_TRAIN_I)


def imminent_examples(examples: Sequence[Example]) -> List[Example]:
    """The learned cue's data: plan / means, timing and farewell statements (:data:`IMMINENT`, alone or
    in context) as positives against every ordinary message (label 0). The other crisis statements
    (ideation, self-harm, past attempts, C-SSRS posts, the "continued" copies) are left out rather than
    taught as ordinary: the cue need not tell them apart, the main head reads them."""
    return [ex for ex in examples if ex.source != "cssrs" and (ex.label == 0 or ex.category in IMMINENT)]


def train_imminent(data_dir: Path, large_cache, out_dir: Path, encoder_name: str, encoder_dtype: str = "float32",
                   seed: int = 13, own_weight: float = 3.0, target_recall: float = 0.9,
                   max_fpr: float = IMMINENT_MAX_FPR, progress: bool = True, ed_train: int = IMMINENT_ED_TRAIN,
                   own_extra: Sequence[Path] = IMMINENT_OWN_EXTRA, openers: bool = False) -> Dict[str, object]:
    """``crisis_imminent_mpnet``: the learned imminent-danger cue (:mod:`empathy_nlg.perception.crisis`,
    method point 5) on the larger frozen encoder's crisis features (``large_cache`` embeds), trained on
    :func:`imminent_examples` of the crisis heads' own split (same seed, so its dev is theirs). Its
    threshold: the highest that keeps ``target_recall`` of the own dev plan / timing / farewell
    statements, raised until at most ``max_fpr`` of the ED valid messages and of the calibration chat
    turns (:data:`CHAT_CALIBRATION`, each in its context) reach it. ``ed_train``: how many of the
    split's seeded ED train messages it learns from (the own hard negatives carry the hard cases).
    ``own_extra``: own-phrasing files beyond :data:`OWN_TRAIN_FILES` (default :data:`IMMINENT_OWN_EXTRA`).
    ``openers``: train on :func:`with_ordinary_openers` copies as well (openers from the training
    messages; version :data:`IMMINENT_OPENERS_VERSION`). The dev metrics include
    ``dev_own_after_opener``: the own dev statements after an opener from the dev messages, at the
    same threshold. Returns the dev metrics."""
    from sklearn.metrics import roc_auc_score

    from empathy_nlg.perception.common import predict_head, round_to_half, save_head
    from empathy_nlg.perception.crisis import IMMINENT_HEAD

    train, dev = split_data(data_dir, seed, use_cssrs=False, own_extra=own_extra)
    ed = [ex for ex in train if ex.source == "ed"][:ed_train]
    train, dev = imminent_examples([ex for ex in train if ex.source != "ed"] + ed), imminent_examples(dev)
    opened = with_ordinary_openers(train, ordinary_openers(train), seed) if openers else []
    train = train + opened
    if not any(ex.label for ex in dev) or not any(ex.source == "ed" for ex in dev):
        raise FileNotFoundError(f"no ED messages under {data_dir / 'empathetic_dialogues'} (set --data-dir)")
    model, config, best_auc, best_epoch, X_dev, y_dev = fit_examples(train, dev, large_cache, own_weight, seed, progress,
                                                                     "imminent-danger head")
    round_to_half(model)  # stored in fp16 (the model-size budget): calibrated on exactly what is stored
    p_dev = predict_head(model, X_dev, "bce")[:, 0]
    chat = calibration_chat()
    p_chat = predict_head(model, featurise(chat, large_cache.encode), "bce")[:, 0] if chat else np.zeros(0)
    src = np.asarray([ex.source for ex in dev])
    own = src == "own"
    threshold = max(threshold_for_recall(p_dev[own], y_dev[own], target_recall),
                    threshold_for_fpr(p_dev[src == "ed"], max_fpr), threshold_for_fpr(p_chat, max_fpr))
    pred = p_dev >= threshold
    metrics = {"threshold": threshold, "dev_auc": round(100 * float(roc_auc_score(y_dev, p_dev)), 2),
               "best_epoch": best_epoch, "train_examples": len(train), "train_with_opener": len(opened),
               "train_positives": sum(ex.label for ex in train),
               "dev_examples": len(dev),
               "dev_own": rates(pred[own], y_dev[own]),
               "dev_own_after_opener": after_opener_rates(model, dev, large_cache.encode, seed, threshold),
               "dev_ed": rates(pred[src == "ed"], y_dev[src == "ed"]),
               "dev_xstest": rates(pred[src == "xstest"], y_dev[src == "xstest"]),
               "dev_chat_turns": rates(p_chat >= threshold, np.zeros(len(p_chat)))}
    save_head(model, {**config, "threshold": threshold, "seed": seed,
                      "version": IMMINENT_OPENERS_VERSION if openers else IMMINENT_VERSION,
                      "own_weight": own_weight, "target_recall": target_recall, "max_fpr": max_fpr,
                      "ordinary_openers": openers,
                      "encoder_name": encoder_name, "encoder_dtype": encoder_dtype,
                      **({"own_extra": [Path(f).name for f in own_extra]} if own_extra else {}),
                      "stored_dtype": "float16", "dev": metrics}, out_dir, IMMINENT_HEAD, half=True)
    return metrics


# ------------------------------------------------------------------------------ end-to-end fine-tuning
TUNED_VERSION = "minilm-lora-crisis-v1"
#: v15: the larger encoder's head (v12's data and design) trained end to end with a LoRA adapter on it
LARGE_TUNED_VERSION = "mpnet-lora-crisis-v15"


def _example_texts(ex: Example, max_chunks: int) -> Tuple[List[str], List[str]]:
    return chunks(ex.text)[:max_chunks], [c for c in ex.context if c.strip()][-3:]


def finetune_crisis(data_dir: Path, out_dir: Path, seed: int = 13, own_weight: float = 3.0, epochs: int = 3,
                    batch_size: int = 16, lr: float = 5e-4, head_lr: float = 1e-3, r: int = 8, top_layers: int = 0,
                    max_chunks: int = 2, max_length: int = 96, init_head: Optional[Path] = None,
                    target_recall: float = 0.9, max_fpr: float = 0.01, max_checkin_fpr: float = 0.04,
                    max_minutes: Optional[float] = None, max_train_examples: Optional[int] = None,
                    progress: bool = True, encoder_path: Optional[Path] = None, head_name: str = HEAD,
                    adapter_dir: Optional[str] = None, version: str = TUNED_VERSION,
                    bf16: str = "auto", ed_per_epoch: Optional[int] = None) -> Dict[str, object]:
    """Train the crisis classifier end to end: a LoRA adapter on its encoder and the head together.

    Two heads can be trained so: the MiniLM ``crisis_head`` (defaults; ``encoder_path`` None) and,
    ``head_name=crisis_head_mpnet`` with ``encoder_path`` the prepared all-mpnet-base-v2, the larger
    encoder's head that decides behind the MiniLM gate (v15). Same data, split and dev thresholds as
    :func:`train_crisis`; the head's JSON says ``encoder: tuned`` and names its adapter folder
    (``crisis_encoder/`` or ``crisis_encoder_mpnet/``). The head starts from ``init_head``'s head of
    that name: a frozen-encoder head (the adapter starts from zero, so epoch 0 *is* the frozen
    detector; the larger head's gate settings are carried over) or one trained end to end, whose
    adapter is loaded to train on (resuming a run cut by ``max_minutes``). The epoch with the best dev
    AUC (epoch 0 included) is kept. Training reads at most ``max_chunks`` 64-word chunks of a message
    (serving reads up to 8). ``max_minutes`` stops early (the best epoch so far is saved);
    ``max_train_examples`` trains on a seeded sample (tests); ``bf16``: autocast the encoder's
    matmuls to bf16 (``auto``: where bf16 is native — AVX-512 BF16 / AMX CPUs, CUDA);
    ``ed_per_epoch``: each epoch reads every other example and a fresh seeded sample of this many of
    the ED everyday negatives (they are 8,000 of the 12,771 and the easiest; an epoch of the larger
    encoder on 2 CPU cores then takes ≈ half the time)."""
    import time

    import torch
    from sklearn.metrics import roc_auc_score

    from empathy_nlg.hardware import serving_dtype
    from empathy_nlg.perception.common import build_mlp, load_head, predict_head, save_head
    from empathy_nlg.perception.crisis import LARGE_ADAPTER_DIR, LARGE_HEAD
    from empathy_nlg.perception.crisis_encoder import ADAPTER_DIR, TunedEncoder

    adapter_dir = adapter_dir or (LARGE_ADAPTER_DIR if head_name == LARGE_HEAD else ADAPTER_DIR)
    t_start = time.time()
    train, dev = split_data(data_dir, seed)
    if not any(ex.source == "cssrs" for ex in dev):
        raise FileNotFoundError(f"no C-SSRS posts under {data_dir / 'crisis'} (set --data-dir)")
    torch.manual_seed(seed)
    rng = np.random.default_rng(seed)
    if max_train_examples is not None and len(train) > max_train_examples:
        train = [train[i] for i in sorted(rng.choice(len(train), max_train_examples, replace=False))]
    old: Dict[str, object] = {}
    if init_head is not None and (Path(init_head) / f"{head_name}.json").is_file():
        head, old = load_head(init_head, head_name)
    if old.get("encoder") == "tuned":
        enc = TunedEncoder.load(init_head, encoder_path, adapter_dir=str(old.get("adapter_dir", adapter_dir)),
                                trainable=True)
        enc.adapter_dir = adapter_dir
    else:
        enc = TunedEncoder.trainable(encoder_path, r=r, top_layers=top_layers or None, adapter_dir=adapter_dir)
    enc.max_length = max_length
    enc.gloss_emoji = True  # what the frozen heads were trained on and the served larger encoder reads
    enc.autocast = serving_dtype(bf16, str(enc.device)) == "bfloat16"
    dim = enc.dim
    config = {"in_dim": 3 * dim, "out_dim": 1, "hidden": 256, "dropout": 0.2, "loss": "bce"}
    if old:
        if int(old["in_dim"]) != 3 * dim:
            raise ValueError(f"{init_head}: {head_name} was not trained on this encoder ({old['in_dim']} inputs)")
        config.update({k: old[k] for k in ("hidden", "dropout")})
        # the gate (MiniLM head, unchanged) and how the larger head is combined travel with it
        config.update({k: old[k] for k in ("encoder_name", "gate_threshold", "gate", "combine", "cue_gate") if k in old})
    else:
        head = build_mlp(3 * dim, 1, config["hidden"], config["dropout"])
    if head_name == LARGE_HEAD:
        config["encoder_name"] = enc.path.name
    lora = [p for p in enc.model.parameters() if p.requires_grad]
    opt = torch.optim.AdamW([{"params": lora, "lr": lr}, {"params": list(head.parameters()), "lr": head_lr}],
                            weight_decay=1e-3)
    is_ed = np.asarray([ex.source == "ed" for ex in train])
    n_ed = int(is_ed.sum()) if ed_per_epoch is None else min(int(is_ed.sum()), ed_per_epoch)

    def epoch_order() -> np.ndarray:
        if ed_per_epoch is None:
            return rng.permutation(len(train))
        keep = np.concatenate([np.flatnonzero(~is_ed), rng.choice(np.flatnonzero(is_ed), n_ed, replace=False)])
        return keep[rng.permutation(len(keep))]

    steps_per_epoch = int(np.ceil((int((~is_ed).sum()) + n_ed) / batch_size))
    total = max(epochs * steps_per_epoch, 1)
    warm = max(total // 20, 1)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: min(1.0, (s + 1) / warm) * max(0.0, (total - s) / total))
    y = np.asarray([ex.label for ex in train], dtype=np.float32)
    pos_weight = float((y == 0).sum() / max((y == 1).sum(), 1))
    y_dev = np.asarray([ex.label for ex in dev], dtype=np.float32)
    log: List[Dict[str, object]] = []

    def dev_auc() -> Tuple[float, np.ndarray]:
        enc.clear_cache()
        head.eval()
        p = predict_head(head, featurise(dev, enc.encode), "bce")[:, 0]
        enc.clear_cache()
        return float(roc_auc_score(y_dev, p)), p

    def snapshot():
        return ({k: v.detach().clone() for k, v in enc.model.state_dict().items() if "lora_" in k},
                {k: v.detach().clone() for k, v in head.state_dict().items()})

    auc, _ = dev_auc()
    best, best_auc, best_epoch = snapshot(), auc, 0
    log.append({"epoch": 0, "dev_auc": round(100 * auc, 2), "seconds": round(time.time() - t_start, 1)})
    if progress:
        print(f"crisis fine-tune: epoch 0 (frozen encoder{', head from ' + str(init_head) if init_head else ''}): "
              f"dev AUC {100 * auc:.2f}", flush=True)
    stopped = False
    for epoch in range(1, epochs + 1):
        enc.model.train()
        head.train()
        order = epoch_order()
        batches = range(0, len(order), batch_size)
        if progress:
            from tqdm.auto import tqdm

            batches = tqdm(batches, desc=f"crisis fine-tune epoch {epoch}/{epochs}", unit="batch")
        running = 0.0
        for n, start in enumerate(batches, 1):
            exs = [train[i] for i in order[start : start + batch_size]]
            texts: Dict[str, int] = {}
            parts = [_example_texts(ex, max_chunks) for ex in exs]
            for msg, ctx in parts:
                for t in msg + ctx:
                    texts.setdefault(t, len(texts))
            emb = enc.forward(list(texts))
            feats = []
            for msg, ctx in parts:
                m = emb[[texts[t] for t in msg]]
                c = emb[[texts[t] for t in ctx]].mean(0) if ctx else torch.zeros(dim)
                feats.append(torch.cat([m.mean(0), m.max(0).values, c]))
            logits = head(torch.stack(feats)).squeeze(-1)
            yt = torch.as_tensor([ex.label for ex in exs], dtype=torch.float32)
            w = torch.as_tensor([own_weight if ex.source == "own" else 1.0 for ex in exs]) * torch.where(yt > 0, pos_weight, 1.0)
            loss = torch.nn.functional.binary_cross_entropy_with_logits(logits, yt, weight=w)
            opt.zero_grad()
            loss.backward()
            opt.step()
            sched.step()
            running += float(loss.detach())
            if progress:
                batches.set_postfix(loss=f"{running / n:.4f}")
            if max_minutes is not None and time.time() - t_start > 60 * max_minutes:
                stopped = True
                break
        auc, _ = dev_auc()
        log.append({"epoch": epoch, "train_loss": round(running / max(n, 1), 4), "dev_auc": round(100 * auc, 2),
                    "seconds": round(time.time() - t_start, 1), "stopped_early": stopped})
        if progress:
            print(f"crisis fine-tune: epoch {epoch}: train loss {running / max(n, 1):.4f}, dev AUC {100 * auc:.2f}"
                  f"{' (best so far)' if auc > best_auc else ''}", flush=True)
        if auc > best_auc:
            best, best_auc, best_epoch = snapshot(), auc, epoch
        if stopped:
            break
    lora_state, head_state = best
    enc.model.load_state_dict(lora_state, strict=False)
    head.load_state_dict(head_state)
    head.eval()
    enc.model.eval()
    enc.clear_cache()
    p_dev = predict_head(head, featurise(dev, enc.encode), "bce")[:, 0]
    chat = calibration_chat()
    p_chat = predict_head(head, featurise(chat, enc.encode), "bce")[:, 0] if chat else np.zeros(0)
    threshold, concern, metrics = calibrate(p_dev, dev, p_chat, target_recall, max_fpr, max_checkin_fpr)
    metrics.update({"dev_auc": round(100 * best_auc, 2), "best_epoch": best_epoch, "epochs": log,
                    "train_examples": len(train), "dev_examples": len(dev),
                    "minutes": round((time.time() - t_start) / 60, 1)})
    out_dir = Path(out_dir)
    enc.save(out_dir)
    save_head(head, {**config, "threshold": threshold, "concern_threshold": concern, "version": version,
                     "encoder": "tuned", "adapter_dir": adapter_dir, "bf16_autocast": enc.autocast, "emoji_gloss": True,
                     "seed": seed, "own_weight": own_weight, "lora_r": r, "ed_per_epoch": ed_per_epoch,
                     "top_layers": top_layers, "max_chunks": max_chunks, "max_length": max_length,
                     "target_recall": target_recall, "dev": metrics}, out_dir, head_name)
    return metrics


# ------------------------------------------------------------------------------ evaluation
def served_judge(perceiver, strong_concern: Optional[float] = None):
    """A ``judge`` for :func:`evaluate_detector` that reads a message as the served engine does: the
    whole :class:`~empathy_nlg.perception.perceiver.Perceiver` on the user's messages (the scripts
    hold no assistant turns), its crisis reading, and a concern counted as the check-in only when the
    safety policy would ask it (:func:`empathy_nlg.safety.checkin_reason`: a negative feeling, a cue or a sure
    classifier, ``strong_concern``: default the policy's own)."""
    from empathy_nlg.dialogue import Utterance
    from empathy_nlg.perception.crisis import CrisisResult
    from empathy_nlg.safety import STRONG_CONCERN, checkin_reason

    level = STRONG_CONCERN if strong_concern is None else float(strong_concern)

    def judge(texts: Sequence[str]) -> CrisisResult:
        q = perceiver.perceive([Utterance("speaker", t) for t in texts])
        return CrisisResult(crisis=bool(q.crisis), score=float(q.crisis_score), reasons=list(q.crisis_reasons or []),
                            concern=bool(not q.crisis and checkin_reason(q, strong_concern=level)))

    return judge


def evaluate_detector(detector: CrisisDetector, examples: Sequence[Example], judge=None) -> Dict[str, object]:
    """Per category and overall recall / false-positive rate, with the misses and false alarms.
    ``judge`` (texts → :class:`CrisisResult`; default ``detector.detect``): how a message is read, e.g.
    :func:`served_judge`."""
    judge = judge or detector.detect
    rows = []
    for ex in examples:
        r = judge(list(ex.context) + [ex.text])
        rows.append((ex, r))
    by_cat: Dict[str, List] = {}
    for ex, r in rows:
        by_cat.setdefault(ex.category, []).append((ex.label, r.crisis, r.crisis or r.concern))
    per_category = {}
    for cat, pairs in sorted(by_cat.items()):
        labels = np.asarray([p[0] for p in pairs])
        per_category[cat] = rates(np.asarray([p[1] for p in pairs]), labels)
        per_category[cat]["with_checkin"] = rates(np.asarray([p[2] for p in pairs]), labels)
    labels = np.asarray([ex.label for ex, _ in rows])
    pred = np.asarray([r.crisis for _, r in rows])
    reached = np.asarray([r.crisis or r.concern for _, r in rows])
    auc = None
    if len(set(labels.tolist())) == 2:
        from sklearn.metrics import roc_auc_score

        auc = round(float(100 * roc_auc_score(labels, [r.score for _, r in rows])), 2)
    # the engine judges every message when it arrives: a multi-turn item whose last message gets
    # neither the flag nor the check-in may have met the safety path at an earlier turn (the
    # conversation is then in the follow-up state when the last message comes)
    def reaches_safety(texts: Sequence[str]) -> bool:
        judged = judge(list(texts))
        return judged.crisis or judged.concern

    earlier = {}
    counted = dict(detector.gate_stats)  # these look-backs are diagnostics: not counted as messages judged
    for i, (ex, r) in enumerate(rows):
        if ex.label == 1 and ex.context and not (r.crisis or r.concern):
            earlier[i] = next((j + 1 for j in range(len(ex.context)) if reaches_safety(ex.context[: j + 1])), None)
    detector.gate_stats.update(counted)
    return {
        "auc": auc,
        "overall": rates(pred, labels) if len(rows) else {},
        "overall_with_checkin": rates(reached, labels) if len(rows) else {},
        "per_category": per_category,
        "misses": [{"category": ex.category, "context": list(ex.context), "text": ex.text, "score": r.score,
                    "checkin": r.concern, "earlier_turn_reached": earlier.get(i)}
                   for i, (ex, r) in enumerate(rows) if ex.label == 1 and not r.crisis],
        "false_alarms": [{"category": ex.category, "context": list(ex.context), "text": ex.text, "reasons": r.reasons}
                         for ex, r in rows if ex.label == 0 and r.crisis],
    }


IMMINENT = ("plan_means", "timing", "farewell", "context:plan_means", "context:timing", "context:farewell")


def with_opener(examples: Sequence[Example], opener: str) -> List[Example]:
    """``examples`` each with ``opener`` said first (the oldest message of its context)."""
    return [dataclasses.replace(ex, context=(opener, *ex.context)) for ex in examples]


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--own", type=Path, nargs="+", default=list(OWN_HELDOUT_SETS),
                        help="own phrasings YAML file(s) (default: the held-out sets heldout_e.yml … heldout_k.yml, heldout_s.yml … heldout_ab.yml; "
                             "the older held-out sets are training data since v9)")
    parser.add_argument("--chat", type=Path, nargs="*", default=[*CHAT_CALIBRATION, *CHAT_CLEAN],
                        help="conversation-script files whose every user turn must stay unflagged (counts of flags and check-ins)")
    parser.add_argument("--crisis-encoder", default=None,
                        help="the crisis classifier's larger encoder (default: perception.crisis_encoder of the engine's "
                             "default settings; 'none' for the MiniLM head alone)")
    parser.add_argument("--crisis-dtype", choices=("auto", "float32", "bfloat16"), default=None,
                        help="the larger encoder's weights (default: perception.crisis_encoder_dtype of the engine's "
                             "default settings, as served)")
    parser.add_argument("--cssrs", type=Path, default=None,
                        help="C-SSRS posts JSONL to evaluate on (default: the dev users of ../shared/data; pass "
                             "a held-out file of the same format to measure on unseen users)")
    parser.add_argument("--data-dir", type=Path, default=None, help="shared data folder (default: empathy_nlg.paths.default_data_dir())")
    parser.add_argument("--artifacts", type=Path, default=None, help="perception artefacts folder (default: the committed ones)")
    parser.add_argument("--patterns-only", action="store_true", help="evaluate the pattern floor alone (the earlier detector)")
    parser.add_argument("--out", type=Path, default=None, help="write metrics.json with misses and false alarms here")
    parser.add_argument("--seed", type=int, default=13, help="the training split seed (for the default dev users)")
    parser.add_argument("--cache-dir", type=Path, default=None,
                        help="read the larger encoder's embeddings of texts that training already embedded from this "
                             "embedding cache instead of encoding them again (default: perception/ in "
                             "$EMPATHY_NLG_CACHE, ~/.cache/empathy-nlg; read only; same weights and dtype only)")
    parser.add_argument("--no-cache", action="store_true", help="encode every text, whatever the cache holds")
    parser.add_argument("--served", action="store_true",
                        help="read every message as the served engine does: the whole Perceiver (emotion included, "
                             "with the engine's default perception settings), a concern counted as the check-in only "
                             "where the safety policy asks it (a negative feeling, a cue or a sure classifier) — what a person gets")
    parser.add_argument("--no-imminent", action="store_true",
                        help="switch the learned imminent-danger cue (crisis_imminent_mpnet) off: the detector as "
                             "it was before it (an A/B on the same cached embeddings)")
    parser.add_argument("--opener", default=None,
                        help="put this ordinary message before every message of the own phrasings and C-SSRS sets "
                             "(as the user's first turn): how the detector reads them after small talk, as in "
                             "most conversations")
    parser.add_argument("--fill-cache", action="store_true",
                        help="first encode every text of the evaluation sets with the larger encoder into the embedding "
                             "cache (also those the gate would skip), so that the next evaluation of a retrained head "
                             "encodes nothing")


def warm_from_disk(encoder, texts: Sequence[str], cache_dir: Optional[Path] = None) -> int:
    """Put the embeddings that the disk cache of ``encoder`` (a :class:`CachedEncoder`, the file
    :class:`EmbeddingCache` writes for its name) already holds for ``texts`` into its in-memory cache,
    read only; the number found. The C-SSRS dev posts and the dev chat turns were embedded when the
    heads were trained, and the larger encoder is the slow part of ``eval-crisis`` (on a CPU without
    native bf16: tens of minutes). The embeddings are those of a batch, not of a single call: they
    agree with a fresh encoding to float rounding (the test checks it)."""
    from empathy_nlg.perception.common import EmbeddingCache

    found = EmbeddingCache(encoder, cache_dir).lookup([t if t.strip() else "." for t in texts])
    encoder.cache_size = max(encoder.cache_size, len(found) + 2048)
    for t, row in found.items():
        encoder._cache[t] = np.asarray(row, dtype=np.float32)
    return len(found)


def fill_cache(encoder, texts: Sequence[str], cache_dir: Optional[Path] = None, progress: bool = True) -> int:
    """Encode the ``texts`` that the disk cache of ``encoder`` lacks into it (``eval-crisis
    --fill-cache``): the embeddings do not depend on the head, so a retrained head is then evaluated
    on the same sets without running the encoder again. The number of texts newly encoded."""
    from empathy_nlg.perception.common import EmbeddingCache

    texts = [t if t.strip() else "." for t in texts]
    cache = EmbeddingCache(encoder, cache_dir)
    before = len(cache.index)
    cache.encode(texts, progress=progress)
    return len(cache.index) - before


def run(args: argparse.Namespace) -> int:
    from empathy_nlg.paths import default_data_dir
    from empathy_nlg.perception.common import DEFAULT_ARTIFACTS_DIR, set_threads
    from empathy_nlg.perception.encoder import SentenceEncoder

    set_threads(2)
    data_dir = Path(args.data_dir) if args.data_dir else default_data_dir()
    large = args.crisis_encoder if args.crisis_encoder is not None else default_crisis_encoder()
    judge = None
    if getattr(args, "served", False) and not args.patterns_only:
        from empathy_nlg.perception.perceiver import Perceiver
        from empathy_nlg.settings import load_settings

        settings = load_settings()
        p = settings["perception"]
        perceiver = Perceiver.load(artifacts_dir=args.artifacts or p.get("artifacts"), crisis_encoder=large,
                                   crisis_dtype=args.crisis_dtype or default_crisis_dtype(),
                                   emotion_tuned_weight=float(p.get("emotion_tuned_weight") or 0.0))
        detector, judge = perceiver.crisis, served_judge(perceiver, (settings.get("safety") or {}).get("strong_concern"))
    else:
        encoder = SentenceEncoder()
        detector = (CrisisDetector(None, encoder.encode) if args.patterns_only
                    else CrisisDetector.load(args.artifacts or DEFAULT_ARTIFACTS_DIR, encoder.encode,
                                             crisis_encoder=large, crisis_dtype=args.crisis_dtype or default_crisis_dtype()))
    if getattr(args, "no_imminent", False):
        detector.use_imminent = False
    own_files = args.own if isinstance(args.own, (list, tuple)) else [args.own]
    sets: Dict[str, List[Example]] = {"own phrasings (" + Path(f).name + ")": read_own(f) for f in own_files}
    for f in args.chat or []:
        if Path(f).is_file():
            sets["conversation scripts (" + Path(f).name + ", every user turn)"] = chat_turns(f)
    if args.cssrs:
        sets["C-SSRS posts (" + Path(args.cssrs).name + ")"] = [ex for _, ex in read_cssrs(args.cssrs)]
    elif (data_dir / "crisis" / "cssrs_reddit_posts.jsonl").is_file():
        _, dev = split_data(data_dir, args.seed)
        sets["C-SSRS dev users (seeded 20 %)"] = [ex for ex in dev if ex.source == "cssrs"]
        sets["XSTest safe prompts (held-out half)"] = [ex for ex in dev if ex.source == "xstest"]
    opener = getattr(args, "opener", None)
    if opener:
        sets = {(f"{name} after {opener!r}" if not name.startswith("conversation scripts") else name):
                (examples if name.startswith("conversation scripts") else with_opener(examples, opener))
                for name, examples in sets.items()}
    results = {}
    if detector.large is not None:
        print(f"larger encoder {detector.large.name}")
        if not args.no_cache:
            # what the detector encodes: each message's chunks and the earlier messages whole
            texts = [c for exs in sets.values() for ex in exs for t in list(ex.context) + [ex.text] for c in [t, *chunks(t)]]
            if args.fill_cache:
                print(f"  {fill_cache(detector.large, texts, args.cache_dir)} texts newly encoded into the embedding cache")
            print(f"  {warm_from_disk(detector.large, texts, args.cache_dir)} of {len(set(texts))} texts' embeddings "
                  f"read from the training cache")
    print(f"crisis detector {detector.version} (threshold {detector.threshold}, check-in {detector.concern_threshold}"
          f"{', gate ' + str(detector.gate) if detector.large is not None else ''})")
    for name, examples in sets.items():
        before = dict(detector.gate_stats)
        res = evaluate_detector(detector, examples, judge)
        res["larger_encoder_ran"] = detector.gate_stats["large"] - before["large"]
        results[name] = res
        o, c = res["overall"], res["overall_with_checkin"]
        head = f"\n== {name}"
        if res["auc"] is not None:
            head += f" — ROC AUC of the score {res['auc']:.1f}"
        if detector.large is not None:
            head += f" (larger encoder ran for {res['larger_encoder_ran']} of {len(examples)} messages)"
        print(head)
        print(f"  crisis flag:           recall {o.get('recall', float('nan')):5.1f} % of {o.get('n_pos', 0)}, "
              f"false positives {o.get('fpr', float('nan')):5.1f} % of {o.get('n_neg', 0)}")
        print(f"  crisis or check-in:    recall {c.get('recall', float('nan')):5.1f} %, false positives {c.get('fpr', float('nan')):5.1f} %")
        for cat, r in res["per_category"].items():
            w = r["with_checkin"]
            shown = (f"recall {r['recall']:5.1f} % / with check-in {w['recall']:5.1f} % (n={r['n_pos']})" if r["n_pos"]
                     else f"false positives {r['fpr']:5.1f} % / with check-in {w['fpr']:5.1f} % (n={r['n_neg']})")
            print(f"  {cat:32s} {shown}")
        imminent = [m for m in res["misses"] if m["category"] in IMMINENT]
        res["imminent_neither"] = sum(1 for m in imminent if not m["checkin"])
        res["imminent_neither_any_turn"] = sum(1 for m in imminent if not m["checkin"] and not m["earlier_turn_reached"])
        if imminent:
            print(f"  RELEASE BLOCKER — imminent-danger statements without the crisis flag ({len(imminent)}; "
                  f"neither flag nor check-in: {res['imminent_neither']}, of them at no earlier turn of their "
                  f"conversation either: {res['imminent_neither_any_turn']}):")
            for m in imminent:
                tag = ("check-in" if m["checkin"] else
                       f"MISSED here, turn {m['earlier_turn_reached']} reached the safety path" if m["earlier_turn_reached"]
                       else "MISSED")
                print(f"    [{m['category']}, {tag}] {' / '.join(m['context'] + [m['text']])}  (score {m['score']})")
    if args.out:
        args.out.mkdir(parents=True, exist_ok=True)
        (args.out / "metrics.json").write_text(json.dumps({"detector": detector.version, "threshold": detector.threshold,
                                                           "results": results}, indent=2))
        print(f"\nwrote {args.out / 'metrics.json'}")
    return 0
