"""A fixed, in-memory knowledge source for generator tests (registered as ``{"type": "fixed"}``)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import List, Sequence

from empathy_nlg.knowledge.base import KnowledgeSource, register_knowledge_source

TAILS = {
    "xReact": ["sad", "upset"], "xIntent": ["to be loved"], "xNeed": ["a friend"], "xWant": ["to talk"],
    "xEffect": ["cries"], "xAttr": ["lonely"], "HasProperty": ["loyal"], "CapableOf": ["bark"],
    "Desires": ["walks"], "Causes": ["grief"], "xReason": ["the dog died"],
    "ObjectUse": ["play fetch"], "AtLocation": ["park"], "MadeUpOf": ["fur"],
}


class FixedKnowledge(KnowledgeSource):
    name = "fixed"
    entity_head_template = "{entity}"

    def __init__(self, **_: object) -> None:
        super().__init__()
        self.queries: List[tuple] = []

    def _generate(self, queries: Sequence[tuple], k: int) -> List[List[str]]:
        self.queries.extend(queries)
        return [TAILS.get(rel, [])[:k] for _, rel in queries]


register_knowledge_source("fixed", lambda **kw: FixedKnowledge(**kw))

CONVERSATIONS = [
    ("c1", "sad", ["My dog died yesterday and I miss him so much.", "I am so sorry. How old was he?",
                   "He was twelve. We walked in the park every day.", "That is a long life together."]),
    ("c2", "joyful", ["I got the job I wanted!", "Congratulations! When do you start?", "Next monday.", "You must be thrilled."]),
    ("c3", "afraid", ["There was a storm last night and the power went out.", "That sounds scary. Are you ok?"]),
    ("c4", "angry", ["My neighbour parked in front of my garage again.", "That is so annoying. Did you talk to him?",
                     "Not yet, I am too angry.", "Maybe wait until you calm down."]),
    ("c5", "grateful", ["My sister drove three hours to help me move.", "What a kind sister!"]),
    ("c6", "lonely", ["I moved to a new city and I do not know anyone.", "That is hard. Have you tried any clubs?"]),
]


def write_ed(path: Path, conversations=CONVERSATIONS) -> Path:
    with path.open("w", encoding="utf-8") as fh:
        for conv_id, emotion, turns in conversations:
            fh.write(json.dumps({"conv_id": conv_id, "emotion": emotion, "situation": turns[0],
                                 "turns": [{"role": "speaker" if i % 2 == 0 else "listener", "text": t}
                                           for i, t in enumerate(turns)]}) + "\n")
    return path
