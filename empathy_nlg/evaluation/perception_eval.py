"""``empathy-nlg eval-perception``: measure the committed perception models on a data file.

Writes ``<out>/metrics.json`` and ``<out>/report.md`` (emotion also ``confusion_matrix.png``).
All scores are **percentages (0–100)**; ``n`` counts examples.

* ``--task emotion`` with ``ed-jsonl`` / ``ed-cause-jsonl`` (one example per conversation: the
  dialogue up to its last speaker turn) or ``situations-csv`` (the situation text):
  ``n, accuracy, macro_f1, top3_accuracy, polarity_accuracy``.
* ``--task emotion`` with ``chat-jsonl`` (the conversation scripts of ``converse-eval``, e.g.
  ``configs/conversations/dev.jsonl``): every user turn of a ``positive``/``negative`` script, in the
  context of the user's turns before it, against the script's polarity: ``n, polarity_accuracy,
  first_turn_polarity_accuracy`` (how often perception hears good news as good and bad as bad in
  chat register, where ED-trained heads are weakest).
* With a fine-tuned emotion model in the artefacts (``emotion_encoder/``, see
  :mod:`empathy_nlg.perception.emotion_tuned`) the emotion metrics are also given **side by side**
  (``side_by_side``: the frozen head, the tuned model alone and blends with ``--tuned-weights``) on the
  same examples; the top-level metrics are those of ``--emotion-tuned-weight`` (default: the
  engine's ``perception.emotion_tuned_weight``, what is served).
* ``--task cause`` with ``reccon-json`` (RECCON causal emotion entailment with context: every
  non-neutral target × every candidate at or before it, gold from the expanded cause evidence) or
  ``ed-cause-jsonl`` (target = last speaker turn with the gold emotion; candidates = every
  utterance up to it; gold = ``emotion_cause``): ``n, pos_f1, neg_f1, macro_f1`` (per candidate);
  for ED also ``utterance_accuracy`` (per-candidate accuracy), ``conversation_exact_match`` and
  the same F1s restricted to speaker candidates (``speaker_*``).
* ``--task cm`` with ``epitome-csv`` (mechanism from the file name; weak+strong = yes):
  ``n`` and ``er_f1`` / ``ip_f1`` / ``ex_f1`` (binary macro-F1) for that mechanism only.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Dict, List

import numpy as np

FORMATS = ("ed-jsonl", "ed-cause-jsonl", "situations-csv", "chat-jsonl", "reccon-json", "epitome-csv")
VALID = {
    "emotion": ("ed-jsonl", "ed-cause-jsonl", "situations-csv", "chat-jsonl"),
    "cause": ("reccon-json", "ed-cause-jsonl"),
    "cm": ("epitome-csv",),
}


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--task", required=True, choices=tuple(VALID))
    parser.add_argument("--data", required=True, type=Path, help="the data file to evaluate on")
    parser.add_argument("--format", required=True, choices=FORMATS, dest="format")
    parser.add_argument("--out", required=True, type=Path, help="output folder (metrics.json, report.md)")
    parser.add_argument("--artifacts", type=Path, default=None, help="perception artefacts (default: the committed ones)")
    parser.add_argument("--encoder", type=Path, default=None, help="sentence-encoder folder (default: the packaged MiniLM)")
    parser.add_argument("--device", default=None, help="torch device (default: CUDA if present, else CPU)")
    parser.add_argument("--emotion-tuned-weight", type=float, default=None,
                        help="weight of the fine-tuned emotion model in the blend the top-level metrics measure "
                             "(default: the engine's perception.emotion_tuned_weight)")
    parser.add_argument("--tuned-weights", default="0.25,0.5,0.75,1",
                        help="blend weights measured side by side when a fine-tuned emotion model exists")
    parser.add_argument("--quiet", action="store_true", help="no progress bar")


def _check_combo(task: str, fmt: str) -> None:
    if fmt not in VALID[task]:
        raise ValueError(f"--task {task} does not accept --format {fmt}; use one of: {', '.join(VALID[task])}")


def _confusion_png(labels: np.ndarray, pred: np.ndarray, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from sklearn.metrics import confusion_matrix

    from empathy_nlg.taxonomy import EMOTIONS

    cm = confusion_matrix(labels, pred, labels=list(range(len(EMOTIONS))))
    norm = cm / np.maximum(cm.sum(1, keepdims=True), 1)
    fig, ax = plt.subplots(figsize=(11, 10))
    im = ax.imshow(norm, cmap="Blues", vmin=0, vmax=1)
    ax.set_xticks(range(len(EMOTIONS)), EMOTIONS, rotation=90, fontsize=7)
    ax.set_yticks(range(len(EMOTIONS)), EMOTIONS, fontsize=7)
    ax.set_xlabel("predicted")
    ax.set_ylabel("gold")
    ax.set_title("Emotion confusion matrix (row-normalised)")
    fig.colorbar(im, ax=ax, fraction=0.046)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def eval_emotion(args, encoder, art: Path, out: Path) -> Dict[str, float]:
    from empathy_nlg import datasets as D
    from empathy_nlg.datasets import dialogue_until_last_speaker
    from empathy_nlg.perception.emotion import EmotionClassifier, emotion_metrics, eval_set, features_for_dialogues
    from empathy_nlg.taxonomy import EMOTION_TO_ID

    head = EmotionClassifier.load(art)
    cache = _ProgressCache(encoder, not args.quiet)
    if args.format == "chat-jsonl":
        dialogues, y, first = chat_turns(args.data)
        X = features_for_dialogues(dialogues, cache)
        score = lambda probs: chat_polarity_metrics(probs, y, first)  # noqa: E731
    else:
        if args.format == "situations-csv":
            items = D.read_situations_csv(args.data)
            dialogues = [[D.Utterance("speaker", it.text)] for it in items]
            X = features_for_dialogues(dialogues, cache)
            y = np.asarray([EMOTION_TO_ID[it.label] for it in items])
        else:
            convs = D.read_conversations(args.data, args.format)
            dialogues = [dialogue_until_last_speaker(c) for c in convs]
            X, y = eval_set(convs, cache)
        score = lambda probs: emotion_metrics(probs, y)  # noqa: E731
    frozen = head.predict_proba(X)
    tuned_model = _tuned_model(art, args)
    weight = _served_weight(args) if tuned_model is not None else 0.0
    tuned = tuned_model.predict_dialogues(dialogues) if tuned_model is not None else None
    blend = lambda w: frozen if tuned is None or w <= 0 else (1.0 - w) * frozen + w * tuned  # noqa: E731
    probs = blend(weight)
    metrics = score(probs)
    if args.format != "chat-jsonl":
        _confusion_png(y, probs.argmax(1), out / "confusion_matrix.png")
    if tuned is not None:
        weights = sorted({float(w) for w in str(args.tuned_weights).split(",") if w.strip()} | {weight})
        metrics["served_tuned_weight"] = weight
        metrics["side_by_side"] = {"frozen head": score(frozen),
                                   **{f"blend {w:g}" if w < 1 else "tuned alone": score(blend(w)) for w in weights if w > 0}}
    return metrics


def chat_turns(path: Path):
    """Every user turn of the positive/negative scripts, in the context of the user's earlier turns:
    (dialogues, 1 = positive, whether the turn is its conversation's first)."""
    from empathy_nlg.datasets import Utterance
    from empathy_nlg.evaluation.converse import read_script

    dialogues, labels, first = [], [], []
    for conv in read_script(path):
        if conv.polarity not in ("positive", "negative"):
            continue
        for i in range(len(conv.turns)):
            dialogues.append([Utterance("speaker", t) for t in conv.turns[: i + 1]])
            labels.append(conv.polarity == "positive")
            first.append(i == 0)
    if not dialogues:
        raise ValueError(f"{path}: no user turn of a positive or negative conversation to judge")
    return dialogues, np.asarray(labels), np.asarray(first)


def chat_polarity_metrics(probs: np.ndarray, positive: np.ndarray, first: np.ndarray) -> Dict[str, float]:
    from empathy_nlg.perception.emotion import POSITIVE_MASK

    right = (probs[:, POSITIVE_MASK].sum(1) >= 0.5) == positive
    return {"n": int(len(right)), "polarity_accuracy": float(right.mean() * 100),
            "first_turn_polarity_accuracy": float(right[first].mean() * 100) if first.any() else float("nan")}


def _served_weight(args) -> float:
    if args.emotion_tuned_weight is not None:
        return float(args.emotion_tuned_weight)
    from empathy_nlg.perception.emotion_tuned import default_weight

    return default_weight()


def _tuned_model(art: Path, args):
    """The fine-tuned emotion model of the artefacts, or None (no adapter, no base encoder)."""
    from empathy_nlg.perception.emotion_tuned import ADAPTER_DIR
    from empathy_nlg.perception.perceiver import load_tuned_emotion

    if not (art / ADAPTER_DIR).is_dir():
        return None
    return load_tuned_emotion(art, device=args.device)


def eval_cause(args, encoder, art: Path) -> Dict[str, float]:
    from empathy_nlg import datasets as D
    from empathy_nlg.perception.cause import CauseModel, ed_matrix, reccon_matrix
    from empathy_nlg.perception.common import binary_f1s

    model = CauseModel.load(art)
    cache = _ProgressCache(encoder, not args.quiet)
    if args.format == "reccon-json":
        X, y, _ = reccon_matrix(D.read_reccon_json(args.data), cache, model.emotion_vectors)
        if not len(y):
            raise ValueError(f"{args.data}: no non-neutral target utterances, nothing to evaluate")
        pred = model.score_pairs(X) >= model.reccon_threshold
        return {"n": int(len(y)), **binary_f1s(y, pred)}
    convs = D.read_ed_cause_jsonl(args.data)
    X, y, pairs = ed_matrix(convs, cache, model.emotion_vectors)
    pred = model.score_pairs(X) >= model.ed_threshold
    metrics: Dict[str, float] = {"n": int(len(y)), **binary_f1s(y, pred)}
    metrics["utterance_accuracy"] = float((pred == y).mean() * 100)
    conv_ok: Dict[int, bool] = {}
    for d, p, g in zip(pairs.dialogue, pred, y):
        conv_ok[d] = conv_ok.get(d, True) and bool(p) == bool(g)
    metrics["conversation_exact_match"] = float(np.mean(list(conv_ok.values())) * 100)
    is_speaker = np.asarray([convs[d].turns[c].role == "speaker" for d, c in zip(pairs.dialogue, pairs.candidate)])
    metrics.update({f"speaker_{k}": v for k, v in binary_f1s(y[is_speaker], pred[is_speaker]).items()})
    metrics["n_conversations"] = len(convs)
    return metrics


def eval_cm(args, encoder, art: Path) -> Dict[str, float]:
    """One EPITOME file: the fine-tuned cross-encoder (``cm_tuned``, the headline where it is in the
    artefacts and its base encoder is prepared) and the frozen heads the reranker uses, side by side."""
    from empathy_nlg import datasets as D
    from empathy_nlg.perception.cm import load_response_classifiers
    from empathy_nlg.perception.cm_tuned import load_tuned
    from empathy_nlg.perception.common import binary_f1s
    from empathy_nlg.taxonomy import CM_CODES, cm_from_filename

    code = cm_from_filename(Path(args.data).name)
    examples = D.read_epitome_csv(args.data)
    if not examples:
        raise ValueError(f"{args.data}: no rows, nothing to evaluate")
    seekers, responses = [e.seeker_post for e in examples], [e.response_post for e in examples]
    y = np.asarray([int(e.has_mechanism) for e in examples])

    def scores(pred) -> Dict[str, float]:
        f1 = binary_f1s(y, pred)
        return {"n": int(len(y)), f"{code.lower()}_f1": f1["macro_f1"], f"{code.lower()}_pos_f1": f1["pos_f1"],
                f"{code.lower()}_accuracy": float((pred == y).mean() * 100)}

    frozen = load_response_classifiers(art, encoder=_ProgressEncoder(encoder, not args.quiet))
    side = {"frozen heads (MiniLM pair MLP)": scores(frozen.predict(seekers, responses)[code])}
    tuned = load_tuned(art, device=args.device)
    if tuned is None:
        return {**side["frozen heads (MiniLM pair MLP)"], "model": "frozen"}
    side["fine-tuned cross-encoder (MPNet + LoRA)"] = scores(
        tuned.proba(seekers, responses, progress=not args.quiet)[:, list(CM_CODES).index(code)] >= tuned.thresholds[code])
    return {**side["fine-tuned cross-encoder (MPNet + LoRA)"], "model": "cm_tuned", "side_by_side": side}


class _ProgressCache:
    """Cache-shaped wrapper that encodes with a progress bar (no disk cache at evaluation)."""

    def __init__(self, encoder, progress: bool) -> None:
        self.encoder = encoder
        self.progress = progress

    def encode(self, texts, progress: bool = True, batch_size: int = 64):
        return self.encoder.encode(list(texts), batch_size=batch_size, progress=self.progress and progress)


class _ProgressEncoder(_ProgressCache):
    """Encoder-shaped wrapper with a progress bar."""

    def __init__(self, encoder, progress: bool) -> None:
        super().__init__(encoder, progress)
        self.name = encoder.name
        self.dim = encoder.dim


def _report(task: str, args, metrics: Dict[str, float], versions: Dict[str, str]) -> str:
    lines = [
        f"# Perception evaluation: {task}",
        "",
        f"- data: `{args.data}` (format `{args.format}`)",
        f"- models: {', '.join(f'{k}={v}' for k, v in versions.items())}",
        "- all scores are **percentages (0-100)**; `n` counts examples"
        + (" (candidate utterances)" if task == "cause" else ""),
        "",
        "| metric | value |",
        "|---|---|",
    ]
    for k, v in metrics.items():
        if isinstance(v, dict):
            continue
        lines.append(f"| {k} | {v:.2f} |" if isinstance(v, float) else f"| {k} | {v} |")
    side = metrics.get("side_by_side")
    if isinstance(side, dict) and side:
        keys = [k for k in next(iter(side.values())) if k != "n"]
        what = "the frozen head, the fine-tuned model, their blends" if task == "emotion" else "the frozen heads, the fine-tuned model"
        lines += ["", f"Side by side on the same examples ({what}):", "",
                  "| model | " + " | ".join(keys) + " |", "|---|" + "---|" * len(keys)]
        for name, m in side.items():
            lines.append(f"| {name} | " + " | ".join(f"{m[k]:.2f}" for k in keys) + " |")
    if task == "emotion" and args.format != "chat-jsonl":
        lines += ["", "![confusion matrix](confusion_matrix.png)"]
    return "\n".join(lines) + "\n"


def run(args: argparse.Namespace) -> int:
    from empathy_nlg.perception.common import DEFAULT_ARTIFACTS_DIR
    from empathy_nlg.perception.encoder import SentenceEncoder

    _check_combo(args.task, args.format)
    if not Path(args.data).is_file():
        raise FileNotFoundError(f"data file {args.data} does not exist")
    art = Path(args.artifacts) if args.artifacts else DEFAULT_ARTIFACTS_DIR
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    encoder = SentenceEncoder(args.encoder, device=args.device)
    if args.task == "emotion":
        metrics = eval_emotion(args, encoder, art, out)
    elif args.task == "cause":
        metrics = eval_cause(args, encoder, art)
    else:
        metrics = eval_cm(args, encoder, art)
    versions = {"encoder": encoder.name}
    for name in ("emotion_head", "emotion_tuned_head", "cause_pair_head", "cm_response_er", "cm_tuned_head"):
        cfg = art / f"{name}.json"
        if cfg.is_file():
            versions[name] = json.loads(cfg.read_text()).get("version", "?")
    (out / "metrics.json").write_text(json.dumps(metrics, indent=2) + "\n")
    (out / "report.md").write_text(_report(args.task, args, metrics, versions))
    print(json.dumps(metrics, indent=2))
    print(f"wrote {out / 'metrics.json'} and {out / 'report.md'}")
    return 0
