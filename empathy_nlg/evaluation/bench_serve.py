"""``empathy-nlg bench-serve``: what concurrent clients of a running engine see, over HTTP.

Drives a real engine (``empathy-nlg serve`` or ``make serve``) at ``--url`` the way Rasa's NLG
endpoint does: each request is Rasa's own NLG body (``response``, ``id``, ``arguments``,
``tracker`` with ``sender_id``, ``slots``, ``events``, ``latest_message``, and ``channel``) posted
to ``/nlg``. The tracker's events are one held-out ED conversation up to a listener turn (the
contexts ``bench-generate`` and ``evaluate`` use), user turns as ``user`` events and listener turns
as ``bot`` events; the user events carry no ``parse_data.empathy``, so the engine perceives inside
``/nlg`` (Rasa's components would have called ``/perceive`` first: that cost is
``bench-perceive``'s).

For each ``--concurrency`` level, that many clients (threads, one HTTP connection and one
``sender_id`` each, so no two conversations collide) send ``--requests`` requests in all, each
client its next request as soon as its previous one is answered (a closed loop: the engine sees at
most that many requests at once). Per level it prints progress to stderr, then one table row:
requests sent, replies OK, 503s (refusals: the engine's queue was full, or it was loading) and
other errors counted separately, p50 / p95 / max latency of the OK replies in ms (what a client
waited for its reply, ``--retry`` waits included), replies per second of wall clock over the level,
and the engine's own figures from ``GET /health`` read before and after the level: the batches
the level made (``models.batching``: their count, mean size and, when it grew, the largest) and the
``queue`` (refusals during the level, its limit). ``--json`` writes one row per level.

A 503 is counted, never retried silently; ``--retry [N]`` honours its ``Retry-After`` and retries
up to N times (3 when N is left out); the 503s so retried are counted too (``retried``).

Exit status: 0 when every level got at least one reply, 1 when a level got none, 2 for bad
options, 3 when the engine cannot be reached, is not ready, or refuses the token (one line on
stderr, no traceback).
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
import threading
import time
import uuid
from collections import Counter
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence

DEFAULT_URL = "http://127.0.0.1:5056"
DEFAULT_TOKEN_FILE = Path("var") / "engine.token"  # what `make serve` makes (scripts/stack.py), from the checkout root
DEFAULT_REQUESTS = 32
#: the engine's batcher reports its latest 1,000 batches only (empathy_nlg/batching.py)
BATCH_HISTORY = 1000


class EngineProblem(RuntimeError):
    """The engine cannot be benchmarked: unreachable, not ready, or refusing the request itself."""


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--url", default=DEFAULT_URL, help=f"the engine's base URL (default {DEFAULT_URL})")
    parser.add_argument("--token", default=None,
                        help="the engine's bearer token (default: --token-file, else $EMPATHY_NLG_TOKEN, else "
                        f"{DEFAULT_TOKEN_FILE} when it exists)")
    parser.add_argument("--token-file", default=None, help="read the bearer token from this file")
    parser.add_argument("--concurrency", default="1,8,64", metavar="C1,C2,…",
                        help="clients sending at once, one level per number (default 1,8,64)")
    parser.add_argument("--requests", type=int, default=None, metavar="N",
                        help=f"requests per level (default {DEFAULT_REQUESTS}, or 2 per client where that is more)")
    parser.add_argument("--warmup", type=int, default=2, metavar="N",
                        help="untimed requests, one at a time, before the first level (default 2)")
    parser.add_argument("--data", default=None, help="ED jsonl with held-out conversations (default: ED valid)")
    parser.add_argument("--response", default="utter_empathize", help="the response Rasa asks for (default utter_empathize)")
    parser.add_argument("--timeout", type=float, default=60.0, help="seconds a client waits for one reply (default 60)")
    parser.add_argument("--retry", type=int, nargs="?", const=3, default=0, metavar="N",
                        help="after a 503, wait its Retry-After and retry, up to N times (N default 3); default: no retry")
    parser.add_argument("--wait", type=float, default=0.0, metavar="S",
                        help="wait up to S seconds for /health to say ok (the engine loads its models at start); default 0")
    parser.add_argument("--json", default=None, help="also write the figures to this JSON file (one row per level)")


# ----------------------------------------------------------------------------------- options
def parse_levels(text: str) -> List[int]:
    try:
        levels = [int(part) for part in str(text).split(",") if part.strip()]
    except ValueError:
        raise ValueError(f"--concurrency takes a comma list of whole numbers, got {text!r}") from None
    if not levels or any(c <= 0 for c in levels):
        raise ValueError(f"--concurrency takes positive numbers, got {text!r}")
    return levels


def read_token(args: argparse.Namespace, default_file: Path = DEFAULT_TOKEN_FILE) -> Optional[str]:
    """``--token``, else ``--token-file``, else ``$EMPATHY_NLG_TOKEN``, else ``var/engine.token`` when
    it exists (the order ``make serve`` hands the token to the agent), else none."""
    if args.token:
        return args.token.strip()
    if args.token_file:
        path = Path(args.token_file)
        if not path.is_file():
            raise FileNotFoundError(f"--token-file {path} does not exist")
        return path.read_text(encoding="utf-8").strip() or None
    env = os.environ.get("EMPATHY_NLG_TOKEN", "").strip()
    if env:
        return env
    if default_file.is_file():
        return default_file.read_text(encoding="utf-8").strip() or None
    return None


# ------------------------------------------------------------------------------------ bodies
def rasa_body(context: Sequence[Any], response: str, sender_id: str, message_prefix: str) -> Dict[str, Any]:
    """Rasa's NLG request for ``response`` after ``context`` (utterances ending with the user's turn),
    as ``rasa.core.nlg.callback.nlg_request_format`` builds it from the tracker's state."""
    events: List[Dict[str, Any]] = [{"event": "action", "name": "action_session_start"},
                                    {"event": "session_started"}]
    latest: Dict[str, Any] = {}
    now = time.time()
    for i, utt in enumerate(context):
        if utt.role == "speaker":
            message_id = f"{message_prefix}-{i}"
            parse_data = {"text": utt.text, "intent": {}, "entities": [], "message_id": message_id}
            events.append({"event": "action", "name": "action_listen", "timestamp": now})
            events.append({"event": "user", "timestamp": now, "text": utt.text, "message_id": message_id,
                           "parse_data": parse_data, "input_channel": "rest"})
            latest = parse_data
        else:
            events.append({"event": "bot", "timestamp": now, "text": utt.text, "data": {}, "metadata": {}})
    return {
        "response": response,
        "id": None,
        "arguments": {},
        "tracker": {"sender_id": sender_id, "slots": {}, "latest_message": latest, "latest_event_time": now,
                    "followup_action": None, "paused": False, "events": events, "latest_input_channel": "rest",
                    "active_loop": {}, "latest_action_name": "action_listen"},
        "channel": {"name": "collector"},
    }


# ------------------------------------------------------------------------------------ figures
def percentile(values: Sequence[float], q: float) -> Optional[float]:
    """Linear interpolation between the closest ranks (numpy's default); None when empty."""
    if not values:
        return None
    ordered = sorted(values)
    pos = (len(ordered) - 1) * q / 100.0
    low = int(pos)
    high = min(low + 1, len(ordered) - 1)
    return ordered[low] + (ordered[high] - ordered[low]) * (pos - low)


def batching_delta(before: Optional[Dict[str, Any]], after: Optional[Dict[str, Any]]) -> Dict[str, Any]:
    """The batches a level made, from ``models.batching`` read before and after it.

    An engine that reports ``sizes_since_start`` (every batch since start, by size) gives them
    exactly. Without it (an older engine), ``/health`` gives the count, mean size and largest of the batches so far (its latest 1,000), so
    the level's count and mean follow from the difference; its largest is known when it beat the
    earlier largest or every batch had that size (else ``largest`` is None and ``largest_at_most``
    the earlier one)."""
    if not before or not after:
        return {"batches": None, "mean_size": None, "largest": None, "note": "no batching figures in /health"}
    if isinstance(before.get("sizes_since_start"), dict) and isinstance(after.get("sizes_since_start"), dict):
        # an engine that counts every batch by size: the level's batches exactly
        grown = {int(k): int(v) - int(before["sizes_since_start"].get(k, 0))
                 for k, v in after["sizes_since_start"].items()}
        grown = {k: v for k, v in grown.items() if v > 0}
        made = sum(grown.values())
        if not made:
            return {"batches": 0, "mean_size": None, "largest": None}
        return {"batches": made, "mean_size": round(sum(k * v for k, v in grown.items()) / made, 2),
                "largest": max(grown), "largest_since_start": after.get("largest")}
    nb, na = int(before.get("batches") or 0), int(after.get("batches") or 0)
    if na >= BATCH_HISTORY:
        return {"batches": None, "mean_size": None, "largest": None, "largest_since_start": after.get("largest"),
                "note": f"the engine keeps only its latest {BATCH_HISTORY} batches: restart it for batch figures"}
    made = na - nb
    if made <= 0:
        return {"batches": 0, "mean_size": None, "largest": None}
    # requests decoded so far = mean × count, a whole number: rounding it undoes /health's rounding
    # of the mean (exactly below 100 batches, to within count × 0.005 above)
    items = round(float(after.get("mean_size") or 0) * na) - round(float(before.get("mean_size") or 0) * nb)
    largest_before, largest_after = before.get("largest"), after.get("largest")
    grew = largest_after is not None and (largest_before is None or largest_after > largest_before)
    row: Dict[str, Any] = {"batches": made, "mean_size": round(max(items, 0.0) / made, 2),
                           "largest": largest_after if grew else None, "largest_since_start": largest_after}
    if not grew:
        if largest_before is not None and items == made * largest_before:
            row["largest"] = largest_before  # mean = the earlier largest: every batch was that size
        else:
            row["largest_at_most"] = largest_before
    return row


# ------------------------------------------------------------------------------------- engine
def _client(headers: Dict[str, str], timeout: float):
    import httpx

    return httpx.Client(headers=headers, timeout=httpx.Timeout(timeout, connect=min(timeout, 10.0)))


def get_health(client, url: str) -> Dict[str, Any]:
    """``GET /health`` as JSON; :class:`EngineProblem` when nothing answers or it is not the engine."""
    import httpx

    try:
        r = client.get(url + "/health")
    except httpx.HTTPError as exc:
        raise EngineProblem(f"no engine answers at {url} ({type(exc).__name__}: {_one_line(exc)}); "
                            "start it first (make serve, or empathy-nlg serve)") from None
    try:
        data = r.json()
    except ValueError:
        data = None
    if not isinstance(data, dict) or "status" not in data:
        raise EngineProblem(f"{url}/health answered HTTP {r.status_code} without the engine's health JSON: "
                            "is --url the engine (default port 5056)?")
    return data


def wait_until_ready(client, url: str, wait_s: float) -> Dict[str, Any]:
    deadline = time.monotonic() + max(0.0, wait_s)
    while True:
        health = get_health(client, url)
        if health["status"] == "ok":
            return health
        if health["status"] == "error":
            raise EngineProblem(f"the engine at {url} failed to load: {health.get('detail')}")
        if time.monotonic() >= deadline:
            hint = "; pass --wait 300 to wait for it" if wait_s <= 0 else f" after {wait_s:g} s"
            raise EngineProblem(f"the engine at {url} is not ready ({health['status']}: {health.get('detail')}){hint}")
        time.sleep(1.0)


def _one_line(exc: BaseException) -> str:
    return (str(exc).strip().splitlines() or [""])[0][:200]


def _post(client, url: str, body: Dict[str, Any], retry: int) -> Dict[str, Any]:
    """One request (with its retries): outcome ``ok`` / ``503`` / ``error``, latency, and what the engine said."""
    import httpx

    payload = json.dumps(body).encode("utf-8")
    headers = {"content-type": "application/json"}
    start = time.perf_counter()
    retried = 0
    retry_afters: List[Optional[int]] = []
    while True:
        try:
            r = client.post(url + "/nlg", content=payload, headers=headers)
        except httpx.HTTPError as exc:
            return {"outcome": "error", "kind": type(exc).__name__, "detail": _one_line(exc), "retried": retried,
                    "retry_after": retry_afters, "ms": (time.perf_counter() - start) * 1000}
        if r.status_code == 503:
            value = r.headers.get("retry-after")
            wait = int(value) if value and value.strip().isdigit() else None
            retry_afters.append(wait)
            if retried < retry:
                retried += 1
                time.sleep(wait if wait is not None else 1)
                continue
            return {"outcome": "503", "retried": retried, "retry_after": retry_afters,
                    "detail": _error_text(r), "ms": (time.perf_counter() - start) * 1000}
        ms = (time.perf_counter() - start) * 1000
        if r.status_code != 200:
            return {"outcome": "error", "kind": f"HTTP {r.status_code}", "detail": _error_text(r), "retried": retried,
                    "retry_after": retry_afters, "ms": ms}
        try:
            reply = r.json()
        except ValueError:
            return {"outcome": "error", "kind": "not JSON", "detail": r.text[:200], "retried": retried,
                    "retry_after": retry_afters, "ms": ms}
        custom = reply.get("custom") or {}
        return {"outcome": "ok", "ms": ms, "retried": retried, "retry_after": retry_afters,
                "generator": custom.get("generator") or "?", "words": len(str(reply.get("text") or "").split())}


def _error_text(r) -> str:
    try:
        return str(r.json().get("error") or r.text)[:200]
    except ValueError:
        return r.text[:200]


# ------------------------------------------------------------------------------------- levels
def run_level(url: str, headers: Dict[str, str], contexts: Sequence[Sequence[Any]], concurrency: int,
              n_requests: int, args: argparse.Namespace, run_id: str, log=None) -> Dict[str, Any]:
    """``n_requests`` requests from ``concurrency`` clients at once; the level's row (health deltas added by the caller)."""
    log = log or (lambda line: print(line, file=sys.stderr, flush=True))
    clients = min(concurrency, n_requests)
    results: List[Dict[str, Any]] = []
    lock = threading.Lock()
    next_index = iter(range(n_requests))
    every = max(1, n_requests // 8)
    start_gate = threading.Barrier(clients + 1)
    level_start = [0.0]

    def take() -> Optional[int]:
        with lock:
            return next(next_index, None)

    def client_loop(k: int) -> None:
        sender = f"bench-{run_id}-c{concurrency}-{k}"
        with _client(headers, args.timeout) as client:
            start_gate.wait()
            while (i := take()) is not None:
                body = rasa_body(contexts[i % len(contexts)], args.response, sender, f"{sender}-r{i}")
                try:
                    out = _post(client, url, body, args.retry)
                except Exception as exc:  # counted like any failure: sent = ok + 503 + errors, always
                    out = {"outcome": "error", "kind": type(exc).__name__, "detail": _one_line(exc), "retried": 0,
                           "retry_after": [], "ms": 0.0}
                with lock:
                    results.append(out)
                    done = len(results)
                    if done % every == 0 or done == n_requests:
                        tally = Counter(r["outcome"] for r in results)
                        log(f"  [{concurrency} at once] {done}/{n_requests}  ok {tally['ok']}  503 {tally['503']}  "
                            f"errors {tally['error']}  {time.perf_counter() - level_start[0]:.1f} s")

    threads = [threading.Thread(target=client_loop, args=(k,), name=f"bench-client-{k}", daemon=True)
               for k in range(clients)]
    for t in threads:
        t.start()
    start_gate.wait()
    level_start[0] = time.perf_counter()
    for t in threads:
        t.join()
    wall = time.perf_counter() - level_start[0]
    return summarise(results, concurrency, wall)


def summarise(results: Sequence[Dict[str, Any]], concurrency: int, wall_s: float) -> Dict[str, Any]:
    ok = [r for r in results if r["outcome"] == "ok"]
    refused = [r for r in results if r["outcome"] == "503"]
    errors = [r for r in results if r["outcome"] == "error"]
    latencies = [r["ms"] for r in ok]

    def ms(value: Optional[float]) -> Optional[float]:
        return round(value, 1) if value is not None else None

    retry_afters = [v for r in results for v in r["retry_after"]]
    return {
        "concurrency": concurrency,
        "sent": len(results),
        "ok": len(ok),
        "503": len(refused),
        "503_without_retry_after": sum(1 for v in retry_afters if v is None),
        "retried": sum(r["retried"] for r in results),
        "retry_after_s": dict(sorted(Counter(v for v in retry_afters if v is not None).items())),
        "errors": len(errors),
        "errors_by_kind": dict(Counter(r["kind"] for r in errors)),
        "error_examples": sorted({f"{r['kind']}: {r['detail']}" for r in errors})[:3],
        "p50_ms": ms(percentile(latencies, 50)),
        "p95_ms": ms(percentile(latencies, 95)),
        "max_ms": ms(max(latencies) if latencies else None),
        "refused_p50_ms": ms(percentile([r["ms"] for r in refused], 50)),
        "wall_s": round(wall_s, 3),
        "replies_per_s": round(len(ok) / wall_s, 2) if wall_s > 0 else None,
        "generators": dict(Counter(r["generator"] for r in ok)),
        "mean_words": round(sum(r["words"] for r in ok) / len(ok), 1) if ok else None,
    }


# ---------------------------------------------------------------------------------------- run
def run(args: argparse.Namespace) -> int:
    from empathy_nlg.evaluation.harness import load_examples
    from empathy_nlg.paths import default_data_dir

    # httpx logs every request at INFO (the CLI's default level): the progress lines say enough
    logging.getLogger("httpx").setLevel(logging.WARNING)
    logging.getLogger("httpcore").setLevel(logging.WARNING)
    levels = parse_levels(args.concurrency)
    if args.requests is not None and args.requests <= 0:
        raise ValueError("--requests must be positive")
    if args.warmup < 0 or args.retry < 0 or args.timeout <= 0:
        raise ValueError("--warmup and --retry must be ≥ 0, --timeout > 0")
    url = args.url.rstrip("/")
    token = read_token(args)
    headers = {"Authorization": f"Bearer {token}"} if token else {}  # as agent/engine_client.py sends it
    per_level = {c: args.requests or max(DEFAULT_REQUESTS, 2 * c) for c in levels}
    data = Path(args.data) if args.data else default_data_dir() / "empathetic_dialogues" / "valid.jsonl"
    examples = load_examples(data, "ed-jsonl", args.warmup + max(per_level.values()))
    contexts = [list(ex.context) for ex in examples]
    warm, timed = contexts[: args.warmup], contexts[args.warmup:] or contexts
    run_id = uuid.uuid4().hex[:8]
    try:
        rows = _bench(url, headers, warm, timed, levels, per_level, args, run_id, data, token is not None)
    except EngineProblem as exc:
        print(f"empathy-nlg bench-serve: error: {exc}", file=sys.stderr)
        return 3
    if args.json:
        Path(args.json).write_text(json.dumps({
            "url": url, "response": args.response, "data": str(data), "warmup": args.warmup, "retry": args.retry,
            "timeout_s": args.timeout, "levels": rows}, indent=2))
        print(f"written to {args.json}")
    return 0 if all(row["ok"] > 0 for row in rows) else 1


def _bench(url, headers, warm, timed, levels, per_level, args, run_id, data, has_token) -> List[Dict[str, Any]]:
    with _client(headers, args.timeout) as client:
        health = wait_until_ready(client, url, args.wait)
        models = health.get("models") or {}
        print(f"bench-serve: {url}/nlg (generator {models.get('generator')}, {models.get('generator_version')}; "
              f"token {'sent' if has_token else 'none'}), response {args.response}, contexts from {data.name}, "
              f"{args.warmup} warm-up request(s); queue limit {(health.get('queue') or {}).get('limit')}", flush=True)
        for i, context in enumerate(warm):
            out = _post(client, url, rasa_body(context, args.response, f"bench-{run_id}-warmup", f"w{i}"), 0)
            if out["outcome"] == "error" and out["kind"] in ("HTTP 401", "HTTP 404", "HTTP 413", "HTTP 422"):
                hint = " (pass --token or --token-file)" if out["kind"] == "HTTP 401" else ""
                raise EngineProblem(f"the engine refused the warm-up request: {out['kind']}: {out['detail']}{hint}")
        rows = []
        for concurrency in levels:
            before = get_health(client, url)
            print(f"{concurrency} at once: {per_level[concurrency]} requests …", file=sys.stderr, flush=True)
            row = run_level(url, headers, timed, concurrency, per_level[concurrency], args, run_id)
            after = get_health(client, url)
            batching = batching_delta((before.get("models") or {}).get("batching"),
                                      (after.get("models") or {}).get("batching"))
            q_before, q_after = before.get("queue") or {}, after.get("queue") or {}
            row["engine"] = {
                "batching": batching,
                "queue": {"limit": q_after.get("limit"), "in_flight_after": q_after.get("in_flight"),
                          "refused": (q_after["refused"] - q_before["refused"])
                          if "refused" in q_after and "refused" in q_before else None},
            }
            rows.append(row)
    print_table(rows)
    return rows


def _fmt(value: Any, digits: int = 0) -> str:
    if value is None:
        return "—"
    if isinstance(value, float):
        return f"{value:.{digits}f}"
    return str(value)


def print_table(rows: Sequence[Dict[str, Any]], out=None) -> None:
    out = out or sys.stdout
    head = ["at once", "sent", "ok", "503", "errors", "p50 ms", "p95 ms", "max ms", "replies/s",
            "batches", "mean batch", "largest", "refused", "queue limit"]
    table = []
    for r in rows:
        b, q = r["engine"]["batching"], r["engine"]["queue"]
        largest = b.get("largest")
        if largest is None and b.get("largest_at_most") is not None:
            largest = f"≤{b['largest_at_most']}"
        table.append([r["concurrency"], r["sent"], r["ok"], r["503"], r["errors"], _fmt(r["p50_ms"]),
                      _fmt(r["p95_ms"]), _fmt(r["max_ms"]), _fmt(r["replies_per_s"], 2), _fmt(b.get("batches")),
                      _fmt(b.get("mean_size"), 2), _fmt(largest), _fmt(q.get("refused")), _fmt(q.get("limit"))])
    widths = [max(len(h), *(len(str(row[i])) for row in table)) for i, h in enumerate(head)]
    print("  ".join(h.rjust(w) for h, w in zip(head, widths)), file=out)
    for row in table:
        print("  ".join(str(v).rjust(w) for v, w in zip(row, widths)), file=out)
    for r in rows:
        notes = []
        if r["generators"]:
            notes.append("replies by " + ", ".join(f"{g} {n}" for g, n in sorted(r["generators"].items())))
        if r["retried"]:
            notes.append(f"{r['retried']} 503(s) retried after Retry-After")
        if r["503"]:
            notes.append("Retry-After " + (", ".join(f"{s} s ×{n}" for s, n in r["retry_after_s"].items()) or "—")
                         + (f", {r['503_without_retry_after']} without" if r["503_without_retry_after"] else ""))
        if r["errors"]:
            notes.append("errors " + ", ".join(f"{k} {n}" for k, n in r["errors_by_kind"].items())
                         + f" (e.g. {r['error_examples'][0]})")
        if r["engine"]["batching"].get("note"):
            notes.append(r["engine"]["batching"]["note"])
        print(f"  {r['concurrency']} at once: " + "; ".join(notes), file=out)
    print("latency: OK replies only, as the client waited for them; replies/s: OK replies over the level's wall "
          "clock; batches / refused: the engine's /health before and after the level", file=out)
