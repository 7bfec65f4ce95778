"""GenerationBatcher: concurrent requests decoded together, each answered with its own result."""

from __future__ import annotations

import threading
import time

import pytest

from empathy_nlg.batching import GenerationBatcher


class SlowEcho:
    """A generator stand-in: every call takes 0.2 s whatever its size and records the batch."""

    def __init__(self) -> None:
        self.calls = []

    def __call__(self, requests):
        self.calls.append(list(requests))
        time.sleep(0.2)
        return [f"reply to {r}" for r in requests]


def test_requests_waiting_while_the_generator_is_busy_are_decoded_together():
    gen = SlowEcho()
    batcher = GenerationBatcher(gen, max_batch=4)
    results = {}

    def ask(i):
        results[i] = batcher.submit(f"m{i}", timeout=10)

    first = threading.Thread(target=ask, args=(0,))
    first.start()
    time.sleep(0.05)  # the first is being decoded alone (nothing else was waiting: no delay)
    others = [threading.Thread(target=ask, args=(i,)) for i in range(1, 7)]
    for t in others:
        t.start()
    for t in [first, *others]:
        t.join(10)
    assert results == {i: f"reply to m{i}" for i in range(7)}  # every request gets its own reply
    assert [len(c) for c in gen.calls] == [1, 4, 2]  # then batches of at most max_batch
    assert batcher.batch_sizes == [1, 4, 2]
    assert batcher.describe() == {"max_batch": 4, "window_ms": 0.0, "batches": 3, "mean_size": 2.33, "largest": 4,
                                  "sizes_since_start": {"1": 1, "2": 1, "4": 1}}


def test_a_window_gathers_requests_that_arrive_together_and_errors_reach_every_waiter():
    gen = SlowEcho()
    batcher = GenerationBatcher(gen, max_batch=8, window_ms=150)
    out = []
    threads = [threading.Thread(target=lambda i=i: out.append(batcher.submit(i, timeout=10))) for i in range(3)]
    for t in threads:
        t.start()
        time.sleep(0.02)
    for t in threads:
        t.join(10)
    assert sorted(out) == ["reply to 0", "reply to 1", "reply to 2"] and [len(c) for c in gen.calls] == [3]

    def broken(requests):
        raise RuntimeError("out of memory")

    failing = GenerationBatcher(broken)
    with pytest.raises(RuntimeError, match="out of memory"):
        failing.submit("x", timeout=10)
    short = GenerationBatcher(lambda requests: [])  # a generator that loses a request is an error, not a hang
    with pytest.raises(RuntimeError, match="0 results for 1"):
        short.submit("x", timeout=10)
    with pytest.raises(ValueError):
        GenerationBatcher(gen, max_batch=0)
