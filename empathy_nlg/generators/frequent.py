"""A sanity baseline: always answer the most frequent training reply.

``fit(texts)`` counts the listener replies of the training data under the evaluation's
normalisation (lower-cased, tokenised — :func:`empathy_nlg.evaluation.metrics.normalise_reply`)
and keeps the most frequent one (ties: the first seen). Nothing is cached on disk and no dataset
text is shipped with the code: the reply is learnt at run time from the file the user points to
(``--train-data``), or given explicitly with ``reply=`` in the config.

Its metrics are the floor every real generator must clear: one sentence for every context means
Dist-n is tiny, top-5 share is 100 % and Sent-Std is at its maximum.
"""

from __future__ import annotations

from collections import Counter
from typing import List, Optional, Sequence

from empathy_nlg.generators.base import GenerationRequest, GenerationResult, Generator


class MostFrequentReplyGenerator(Generator):
    name = "frequent"
    version = "1"
    needs_perception = False

    def __init__(self, reply: Optional[str] = None, count: int = 0) -> None:
        self.reply = reply
        self.count = count
        self.fitted_on = 0

    def fit(self, texts: Sequence[str]) -> None:
        from empathy_nlg.text import normalise_reply

        counts: Counter = Counter()
        for text in texts:
            key = normalise_reply(text)
            if key:
                counts[key] += 1
        if not counts:
            raise ValueError("cannot fit the most-frequent-reply baseline: no non-empty training replies")
        self.reply, self.count = counts.most_common(1)[0]
        self.fitted_on = sum(counts.values())

    def generate(self, requests: Sequence[GenerationRequest]) -> List[GenerationResult]:
        if self.reply is None:
            raise ValueError("the 'frequent' generator is not fitted: call fit() with training replies "
                             "(the evaluate command does this from --train-data) or set 'reply' in its config")
        return [
            GenerationResult(
                text=self.reply,
                generator=self.name,
                version=self.version,
                details={"train_count": self.count, "train_replies": self.fitted_on},
            )
            for _ in requests
        ]
