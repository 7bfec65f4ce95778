"""Dynamic batching of concurrent generation requests.

Each ``/nlg`` request runs in its own thread; without this, the generator answers them one after
the other, and with eight people talking at once the eighth waits for seven decodings. The batcher
puts every request in one queue; a worker takes what is waiting whenever the generator is free
(after waiting ``window_ms`` for more, when set), decodes it as one batch and hands each request its
own result. Decoding a step costs about the same for one row as for eight on a CPU (the step reads
every weight once) and much the same on a GPU, so a batch of eight takes little longer than one.

With nothing else waiting, a request is decoded at once, alone: no latency is added to a single
conversation (``window_ms: 0``, the default). Each request keeps its own conditioning and steering
(:meth:`empathy_nlg.generators.trained.TrainedGenerator.generate` gives every request its own
rows), so a reply does not depend on what else was in the batch (up to floating-point rounding
of padded rows in bf16).
"""

from __future__ import annotations

import logging
import queue
import threading
import time
from concurrent.futures import Future
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple

log = logging.getLogger(__name__)


class GenerationBatcher:
    """``submit(request) → result`` from any thread; one worker decodes batches of at most
    ``max_batch`` under ``lock`` (the engine's generation lock; perception has its own)."""

    def __init__(self, generate: Callable[[Sequence[Any]], List[Any]], lock: Optional[threading.Lock] = None,
                 max_batch: int = 8, window_ms: float = 0.0) -> None:
        if max_batch < 1:
            raise ValueError(f"max_batch must be ≥ 1, got {max_batch}")
        if window_ms < 0:
            raise ValueError(f"window_ms must be ≥ 0, got {window_ms}")
        self._generate = generate
        self._lock = lock or threading.Lock()
        self.max_batch = int(max_batch)
        self.window = float(window_ms) / 1000.0
        self._queue: "queue.Queue[Tuple[Any, Future]]" = queue.Queue()
        self._worker = threading.Thread(target=self._run, name="generation-batcher", daemon=True)
        self._worker.start()
        #: sizes of the batches decoded so far (the most recent 1,000), for /health and the tests
        self.batch_sizes: List[int] = []
        #: every batch since start, by size (exact, never trimmed: what a benchmark differences)
        self.size_counts: Dict[int, int] = {}

    def describe(self) -> Dict[str, Any]:
        """The settings, the recent batches and every batch since start by size (what ``/health``
        reports; ``sizes_since_start`` maps a size, as a string, to how many batches had it)."""
        sizes = list(self.batch_sizes)
        return {"max_batch": self.max_batch, "window_ms": round(self.window * 1000, 1), "batches": len(sizes),
                "mean_size": round(sum(sizes) / len(sizes), 2) if sizes else None, "largest": max(sizes, default=None),
                "sizes_since_start": {str(k): v for k, v in sorted(self.size_counts.items())}}

    def submit(self, request: Any, timeout: Optional[float] = None) -> Any:
        """Decode ``request`` (in a batch with whatever else is waiting); its result, or its error."""
        done: Future = Future()
        self._queue.put((request, done))
        return done.result(timeout=timeout)

    def _take(self) -> List[Tuple[Any, Future]]:
        items = [self._queue.get()]
        deadline = time.monotonic() + self.window
        while len(items) < self.max_batch:
            try:
                wait = deadline - time.monotonic()
                items.append(self._queue.get(timeout=wait) if wait > 0 else self._queue.get_nowait())
            except queue.Empty:
                break
        return items

    def _run(self) -> None:
        while True:
            items = self._take()
            requests = [r for r, _ in items]
            try:
                with self._lock:
                    results = self._generate(requests)
                if len(results) != len(requests):
                    raise RuntimeError(f"the generator returned {len(results)} results for {len(requests)} requests")
            except Exception as exc:  # every waiting request learns of it; the worker goes on
                log.error("generation of a batch of %d failed (%s: %s)", len(requests), type(exc).__name__, exc)
                for _, done in items:
                    done.set_exception(exc)
                continue
            self.batch_sizes = (self.batch_sizes + [len(items)])[-1000:]
            self.size_counts[len(items)] = self.size_counts.get(len(items), 0) + 1
            for (_, done), result in zip(items, results):
                done.set_result(result)
