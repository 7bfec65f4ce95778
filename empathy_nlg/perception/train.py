"""``empathy-nlg train-perception``: train the emotion, cause and CM heads and write the artefacts.

All heads sit on the frozen shared MiniLM encoder; sentence embeddings are computed once and
cached under ``--cache-dir`` (default ``perception/`` in the cache folder, ``~/.cache/empathy-nlg``), so re-runs only train heads.
Training is seeded (``--seed``) and uses at most ``--threads`` CPU threads.

Also ``--annotate-causes OUT.jsonl``: label ED conversations (``--annotate-input``, default ED
train) with cause indices using the trained cause model, instead of training.
"""

from __future__ import annotations

import argparse
import json
import logging
import time
from pathlib import Path
from typing import Dict

from empathy_nlg.paths import default_data_dir
from empathy_nlg.perception.common import DEFAULT_ARTIFACTS_DIR

log = logging.getLogger(__name__)
#: ``all`` trains the heads on the frozen encoders; ``emotion_tuned`` (an encoder fine-tuned in
#: resumable chunks, hours on a CPU) and ``cm_tuned`` (the EPITOME cross-encoder) only when asked for by name
TASKS = ("emotion", "cause", "cm", "reply_polarity", "crisis", "crisis_imminent", "emotion_tuned", "cm_tuned", "all")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--task", choices=TASKS, default="all", help="which model(s) to train")
    parser.add_argument("--data-dir", type=Path, default=None, help="shared data folder (default: empathy_nlg.paths.default_data_dir())")
    parser.add_argument("--out", type=Path, default=None, help=f"artefacts folder (default {DEFAULT_ARTIFACTS_DIR})")
    parser.add_argument("--seed", type=int, default=13)
    parser.add_argument("--threads", type=int, default=2, help="torch CPU threads (keep it small on shared machines)")
    parser.add_argument("--cache-dir", type=Path, default=None, help="embedding cache (default: perception/ in $EMPATHY_NLG_CACHE, ~/.cache/empathy-nlg)")
    parser.add_argument("--max-train-convs", type=int, default=0, help="use only the first N ED train conversations (0 = all)")
    parser.add_argument("--annotate-causes", type=Path, default=None, metavar="OUT.jsonl",
                        help="instead of training: write ED conversations annotated with cause indices to this path")
    parser.add_argument("--annotate-input", type=Path, default=None,
                        help="ed-jsonl file to annotate (default: <data-dir>/empathetic_dialogues/train.jsonl)")
    parser.add_argument("--crisis-encoder", choices=("mpnet", "frozen", "tuned", "mpnet-tuned"), default="mpnet",
                        help="crisis classifier: mpnet (default, the committed ones) = the head on the shared MiniLM "
                             "(crisis_head: the gate and the fallback) and then a head on the frozen all-mpnet-base-v2 "
                             "(crisis_head_mpnet; needs `empathy-nlg prepare-encoder`); frozen = the MiniLM head only; "
                             "tuned = MiniLM trained end to end with a LoRA adapter (≈ 26 min on 2 CPU cores — see the "
                             "perception model card for why it is not the default); mpnet-tuned = mpnet, then the "
                             "all-mpnet-base-v2 head trained end to end with a LoRA adapter on that encoder, starting "
                             "from the frozen head (crisis_encoder_mpnet/; bf16 autocast where native)")
    parser.add_argument("--crisis-init", type=Path, default=None,
                        help="mpnet-tuned: take crisis_head and the larger head to start from out of this artefacts "
                             "folder instead of training them first (the committed ones; or the --out of an earlier "
                             "chunk, whose adapter it goes on training)")
    parser.add_argument("--crisis-ed-per-epoch", type=int, default=2000,
                        help="mpnet-tuned: ED everyday negatives sampled afresh each epoch (of 8,000)")
    parser.add_argument("--large-encoder", default=None,
                        help="folder of the crisis classifier's larger encoder (default: the prepared all-mpnet-base-v2)")
    parser.add_argument("--crisis-dtype", choices=("auto", "float32", "bfloat16"), default=None,
                        help="weights of the larger encoder while its head's features are computed (default: "
                             "perception.crisis_encoder_dtype of the engine's default settings, as served: auto = bf16 "
                             "where the CPU multiplies it natively, ≈ 0.6× the time of fp32, embeddings within cosine 0.9999)")
    parser.add_argument("--crisis-own-extra", type=Path, nargs="+", default=[], metavar="FILE.yml",
                        help="mpnet/frozen: own-phrasing files to train the crisis heads with besides "
                             "crisis_train.OWN_TRAIN_FILES (a round measured before it joins them, e.g. "
                             "empathy_nlg/perception/crisis_data/train_g.yml; its seeded 20 %% goes to dev)")
    parser.add_argument("--crisis-openers", action="store_true",
                        help="mpnet/frozen: train the crisis heads on copies of their chat-register examples that "
                             "open with an ordinary message too (crisis_train.with_ordinary_openers; the served heads "
                             "read most crisis statements after small talk as ordinary: eval-crisis --opener)")
    parser.add_argument("--imminent-openers", action="store_true",
                        help="train the learned imminent-danger cue on copies of its examples that open with an "
                             "ordinary message too (crisis_train.with_ordinary_openers; tried as v17, not served)")
    parser.add_argument("--crisis-epochs", type=int, default=3, help="fine-tuning epochs of the tuned crisis encoder")
    parser.add_argument("--cm-epochs", type=int, default=2, help="cm_tuned: epochs over the EPITOME training pairs (the served one: 2)")
    parser.add_argument("--max-minutes", type=float, default=None,
                        help="stop a fine-tuning after this long: the crisis encoder's or the CM cross-encoder's (the "
                             "best epoch so far is saved) or the emotion encoder's (the chunk is saved; --resume goes on from it)")
    parser.add_argument("--resume", action="store_true",
                        help="emotion_tuned: go on from --run-dir's latest chunk (else from the served artefact)")
    parser.add_argument("--run-dir", type=Path, default=Path("training_runs/emotion_tuned/checkpoint"),
                        help="emotion_tuned: where every chunk's adapter, head and position are kept")
    parser.add_argument("--tuned-base", default=None,
                        help="emotion_tuned, cm_tuned: the base encoder folder (default: the prepared all-mpnet-base-v2)")
    parser.add_argument("--quiet", action="store_true", help="no progress bars")


def _large_encoder(args: argparse.Namespace):
    """``(encoder, embedding cache)`` of the crisis classifier's larger frozen encoder (``--large-encoder``,
    default the prepared all-mpnet-base-v2; ``--crisis-dtype``); exits with a clear message when it is
    not prepared."""
    from empathy_nlg.perception.common import EmbeddingCache
    from empathy_nlg.perception.crisis_mpnet import ENCODER_NAME, CachedEncoder, encoders_dir, is_prepared
    from empathy_nlg.perception.crisis_train import default_crisis_dtype

    large_path = Path(args.large_encoder) if args.large_encoder else encoders_dir() / ENCODER_NAME
    if not is_prepared(large_path):
        raise SystemExit(f"no prepared encoder in {large_path}: run `empathy-nlg prepare-encoder` first "
                         "(or --crisis-encoder frozen for the MiniLM head alone)")
    large = CachedEncoder(large_path, quantize=False, cache_size=16, dtype=args.crisis_dtype or default_crisis_dtype())
    return large, EmbeddingCache(large, args.cache_dir)  # its own file per dtype (the name says -bf16)


def _finetune_large(args: argparse.Namespace, data_dir: Path, out: Path, init: Path, progress: bool) -> Dict[str, object]:
    """The larger encoder's crisis head trained end to end (``--crisis-encoder mpnet-tuned``) from the
    head (and adapter, when it has one) in ``init``, written to ``out``."""
    from empathy_nlg.perception.crisis import LARGE_HEAD
    from empathy_nlg.perception.crisis_mpnet import ENCODER_NAME, encoders_dir, is_prepared
    from empathy_nlg.perception.crisis_train import LARGE_TUNED_VERSION, finetune_crisis

    large_path = Path(args.large_encoder) if args.large_encoder else encoders_dir() / ENCODER_NAME
    if not is_prepared(large_path):
        raise SystemExit(f"no prepared encoder in {large_path}: run `empathy-nlg prepare-encoder` first")
    return finetune_crisis(data_dir, out, seed=args.seed, epochs=args.crisis_epochs, init_head=init,
                           max_minutes=args.max_minutes, progress=progress, encoder_path=large_path,
                           head_name=LARGE_HEAD, version=LARGE_TUNED_VERSION, max_length=128, max_fpr=0.005,
                           lr=3e-4, head_lr=3e-4, ed_per_epoch=args.crisis_ed_per_epoch)


def _tuned_base(args: argparse.Namespace) -> Path:
    """The base encoder of a fine-tuned perception model (``--tuned-base``, default the prepared
    all-mpnet-base-v2); exits with a clear message when it is not prepared."""
    from empathy_nlg.perception.crisis_mpnet import ENCODER_NAME, encoders_dir, is_prepared

    base = Path(args.tuned_base) if args.tuned_base else encoders_dir() / ENCODER_NAME
    if not is_prepared(base):
        raise SystemExit(f"no prepared encoder in {base}: run `empathy-nlg prepare-encoder` first (or --tuned-base)")
    return base


def _paths(data_dir: Path) -> Dict[str, Path]:
    return {
        "ed_train": data_dir / "empathetic_dialogues" / "train.jsonl",
        "ed_valid": data_dir / "empathetic_dialogues" / "valid.jsonl",
        "ed_valid_cause": data_dir / "empathetic_dialogues" / "valid_with_cause.jsonl",
        "sit_train": data_dir / "ed_situations" / "train.csv",
        "reccon_train": data_dir / "reccon" / "dailydialog_train.json",
        "reccon_valid": data_dir / "reccon" / "dailydialog_valid.json",
        "epitome_dir": data_dir / "epitome",
    }


def ed_valid_with_raw_text(valid_raw, valid_cause):
    """Gao et al.'s cause labels on the raw-text valid conversations (matched by ``conv_id``).

    Their file is lower-cased and tokenised; the raw text is what the engine sees at run time.
    Conversations whose turn counts differ keep the tokenised text.
    """
    from empathy_nlg.datasets import Conversation

    raw = {c.conv_id: c for c in valid_raw}
    out = []
    for c in valid_cause:
        r = raw.get(c.conv_id)
        turns = r.turns if r is not None and len(r.turns) == len(c.turns) else c.turns
        out.append(Conversation(conv_id=c.conv_id, emotion=c.emotion, turns=turns, cause_indices=c.cause_indices))
    return out


def run(args: argparse.Namespace) -> int:
    from empathy_nlg import datasets as D
    from empathy_nlg.perception.common import EmbeddingCache, set_threads
    from empathy_nlg.perception.encoder import SentenceEncoder
    from empathy_nlg.taxonomy import CM_CODES, CM_FILE_STEMS

    set_threads(args.threads)
    data_dir = Path(args.data_dir) if args.data_dir else default_data_dir()
    out = Path(args.out) if args.out else DEFAULT_ARTIFACTS_DIR
    p = _paths(data_dir)
    progress = not args.quiet
    encoder = SentenceEncoder()
    cache = EmbeddingCache(encoder, args.cache_dir)

    if args.annotate_causes:
        from empathy_nlg.perception.cause import CauseModel, annotate_conversations

        convs = D.read_ed_jsonl(args.annotate_input or p["ed_train"])
        n = annotate_conversations(convs, CauseModel.load(out), cache, args.annotate_causes, progress=progress)
        print(f"wrote {n} annotated conversations to {args.annotate_causes}")
        return 0

    tasks = ("emotion", "cause", "cm", "reply_polarity", "crisis") if args.task == "all" else (args.task,)
    out.mkdir(parents=True, exist_ok=True)
    summary: Dict[str, Dict] = {}
    timings: Dict[str, float] = {}
    ed_train = ed_valid = None
    if "emotion" in tasks or "cm" in tasks or "reply_polarity" in tasks:
        ed_train = D.read_ed_jsonl(p["ed_train"])
        if args.max_train_convs:
            ed_train = ed_train[: args.max_train_convs]
        ed_valid = D.read_ed_jsonl(p["ed_valid"])

    if "emotion" in tasks:
        from empathy_nlg.perception.emotion import train_emotion

        t0 = time.time()
        summary["emotion"] = train_emotion(ed_train, D.read_situations_csv(p["sit_train"]), ed_valid, cache, out,
                                           seed=args.seed, progress=progress)
        timings["emotion"] = time.time() - t0

    if "emotion_tuned" in tasks:
        from empathy_nlg.perception.emotion import EmotionClassifier, eval_set
        from empathy_nlg.perception.emotion_tuned import default_weight, train_emotion_tuned

        base = _tuned_base(args)
        t0 = time.time()
        dev_convs = D.read_ed_jsonl(p["ed_valid"])
        # what is served is the blend with the frozen head: a chunk replaces the artefact when its blend is better
        weight, frozen_dev = default_weight(), None
        if weight > 0 and (out / "emotion_head.json").is_file():
            frozen_dev = EmotionClassifier.load(out).predict_proba(eval_set(dev_convs, cache)[0])
        summary["emotion_tuned"] = train_emotion_tuned(
            D.read_ed_jsonl(p["ed_train"])[: args.max_train_convs or None], D.read_situations_csv(p["sit_train"]),
            dev_convs, out, args.run_dir, base, seed=args.seed, max_minutes=args.max_minutes,
            resume=args.resume, frozen_dev=frozen_dev, blend_weight=weight, progress=progress)
        timings["emotion_tuned"] = time.time() - t0

    if "cause" in tasks:
        from empathy_nlg.perception.cause import train_cause

        t0 = time.time()
        ed_dev = None
        if p["ed_valid_cause"].is_file():
            ed_dev = ed_valid_with_raw_text(ed_valid or D.read_ed_jsonl(p["ed_valid"]), D.read_ed_cause_jsonl(p["ed_valid_cause"]))
        summary["cause"] = train_cause(D.read_reccon_json(p["reccon_train"]), D.read_reccon_json(p["reccon_valid"]), ed_dev,
                                       encoder, cache, out, seed=args.seed, progress=progress)
        timings["cause"] = time.time() - t0

    if "cm" in tasks:
        from empathy_nlg.perception.cm import train_context_predictor, train_response_classifiers

        t0 = time.time()
        files = {c: D.read_epitome_csv(p["epitome_dir"] / f"{CM_FILE_STEMS[c]}-train.csv") for c in CM_CODES}
        metrics = train_response_classifiers(files, cache, out, seed=args.seed, progress=progress)
        metrics.update(train_context_predictor(ed_train, ed_valid, cache, out, seed=args.seed, progress=progress, encoder=encoder))
        summary["cm"] = metrics
        timings["cm"] = time.time() - t0

    if "cm_tuned" in tasks:
        from empathy_nlg.perception.cm import load_response_classifiers
        from empathy_nlg.perception.cm_tuned import train_cm_tuned

        t0 = time.time()
        files = {c: D.read_epitome_csv(p["epitome_dir"] / f"{CM_FILE_STEMS[c]}-train.csv") for c in CM_CODES}
        frozen = load_response_classifiers(out, encoder) if (out / "cm_response_er.json").is_file() else None
        summary["cm_tuned"] = train_cm_tuned(files, out, _tuned_base(args), seed=args.seed, epochs=args.cm_epochs,
                                             max_minutes=args.max_minutes, frozen=frozen, progress=progress)
        timings["cm_tuned"] = time.time() - t0

    if "reply_polarity" in tasks:
        from empathy_nlg.perception.reply_polarity import train_reply_polarity

        t0 = time.time()
        summary["reply_polarity"] = train_reply_polarity(ed_train, ed_valid, cache, out, seed=args.seed, progress=progress)
        timings["reply_polarity"] = time.time() - t0

    if "crisis" in tasks:
        import shutil
        import tempfile

        from empathy_nlg.perception.crisis_encoder import ADAPTER_DIR
        from empathy_nlg.perception.crisis_train import finetune_crisis, train_crisis

        t0 = time.time()
        own_extra = list(args.crisis_own_extra)
        if own_extra and (args.crisis_encoder in ("tuned", "mpnet-tuned") or args.crisis_init is not None):
            raise SystemExit("--crisis-own-extra trains the frozen-encoder heads (--crisis-encoder mpnet or frozen, "
                             "without --crisis-init)")
        if args.crisis_openers and (args.crisis_encoder in ("tuned", "mpnet-tuned") or args.crisis_init is not None):
            raise SystemExit("--crisis-openers trains the frozen-encoder heads (--crisis-encoder mpnet or frozen, "
                             "without --crisis-init)")
        missing = [str(f) for f in own_extra if not Path(f).is_file()]
        if missing:
            raise SystemExit(f"--crisis-own-extra: no such file: {', '.join(missing)}")
        if args.crisis_encoder == "tuned":
            # the frozen-encoder head first (minutes): the fine-tuning starts from it (its epoch 0)
            with tempfile.TemporaryDirectory() as tmp:
                frozen = train_crisis(data_dir, cache, Path(tmp), seed=args.seed, progress=progress)
                summary["crisis"] = finetune_crisis(data_dir, out, seed=args.seed, epochs=args.crisis_epochs,
                                                    init_head=Path(tmp), max_minutes=args.max_minutes, progress=progress)
            summary["crisis"]["frozen_dev"] = {k: frozen[k] for k in ("dev_auc", "threshold", "concern_threshold",
                                                                      "dev_own", "dev_cssrs", "dev_ed")}
        elif args.crisis_encoder == "mpnet-tuned" and args.crisis_init is not None:
            from empathy_nlg.perception.crisis import HEAD, LARGE_ADAPTER_DIR, LARGE_HEAD

            init = Path(args.crisis_init)
            with tempfile.TemporaryDirectory() as tmp:  # --crisis-init may be --out itself (a later chunk)
                for name in (f"{HEAD}.json", f"{HEAD}.safetensors", f"{LARGE_HEAD}.json", f"{LARGE_HEAD}.safetensors"):
                    shutil.copy2(init / name, Path(tmp) / name)
                if (init / LARGE_ADAPTER_DIR).is_dir():
                    shutil.copytree(init / LARGE_ADAPTER_DIR, Path(tmp) / LARGE_ADAPTER_DIR)
                for name in (f"{HEAD}.json", f"{HEAD}.safetensors"):
                    shutil.copy2(Path(tmp) / name, out / name)
                summary["crisis"] = _finetune_large(args, data_dir, out, Path(tmp), progress)
        else:
            summary["crisis"] = train_crisis(data_dir, cache, out, seed=args.seed, progress=progress,
                                             own_extra=own_extra, openers=args.crisis_openers)
            shutil.rmtree(out / ADAPTER_DIR, ignore_errors=True)  # a stale adapter must not outlive its head
            if args.crisis_encoder in ("mpnet", "mpnet-tuned"):
                from empathy_nlg.perception.crisis_train import IMMINENT_OWN_EXTRA, train_imminent, train_large

                large, large_cache = _large_encoder(args)
                summary["crisis"]["mpnet"] = train_large(data_dir, cache, large_cache, out, large.path.name,
                                                         seed=args.seed, progress=progress, encoder_dtype=large.base.dtype,
                                                         own_extra=own_extra, openers=args.crisis_openers)
                summary["crisis"]["imminent"] = train_imminent(
                    data_dir, large_cache, out, large.path.name, encoder_dtype=large.base.dtype, seed=args.seed,
                    progress=progress, own_extra=list(dict.fromkeys([*IMMINENT_OWN_EXTRA, *own_extra])),
                    openers=args.imminent_openers)
                from empathy_nlg.perception.crisis import LARGE_ADAPTER_DIR

                shutil.rmtree(out / LARGE_ADAPTER_DIR, ignore_errors=True)  # nor the larger encoder's
                if args.crisis_encoder == "mpnet-tuned":
                    with tempfile.TemporaryDirectory() as tmp:
                        for name in ("crisis_head_mpnet.json", "crisis_head_mpnet.safetensors"):
                            shutil.copy2(out / name, Path(tmp) / name)
                        summary["crisis"]["tuned"] = _finetune_large(args, data_dir, out, Path(tmp), progress)
        timings["crisis"] = time.time() - t0

    if "crisis_imminent" in tasks:
        from empathy_nlg.perception.crisis_train import IMMINENT_OWN_EXTRA, train_imminent

        t0 = time.time()
        large, large_cache = _large_encoder(args)
        summary["crisis_imminent"] = train_imminent(
            data_dir, large_cache, out, large.path.name, encoder_dtype=large.base.dtype, seed=args.seed,
            progress=progress, own_extra=list(dict.fromkeys([*IMMINENT_OWN_EXTRA, *args.crisis_own_extra])),
            openers=args.imminent_openers)
        timings["crisis_imminent"] = time.time() - t0

    settings_path = out / "perceiver.json"
    settings = json.loads(settings_path.read_text()) if settings_path.is_file() else {}
    settings.setdefault("max_turns", 12)
    settings["encoder"] = encoder.name
    settings.setdefault("training", {})
    for task in tasks:
        settings["training"][task] = {"seed": args.seed, "seconds": round(timings[task], 1), "dev_metrics": summary[task]}
    settings_path.write_text(json.dumps(settings, indent=2, sort_keys=True) + "\n")

    print("\n== perception dev metrics (percent) ==")
    for task, metrics in summary.items():
        shown = ", ".join(f"{k}={v:.2f}" if isinstance(v, float) else f"{k}={v}" for k, v in metrics.items())
        print(f"{task:8s} ({timings[task]:.0f}s): {shown}")
    print(f"artefacts written to {out}")
    return 0
