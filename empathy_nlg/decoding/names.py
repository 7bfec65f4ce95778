"""Call the people and animals the user named by their names: "your sister" → "Anna".

A listener who has heard "my sister Anna flew in from Lisbon" says "Is Anna staying long?", not
"Is your sister staying long?". The generators see the name in the context but rarely copy it; this
step does it after the reply is chosen, for the relations the user gave one name to:

* **where the names come from** — the user's own turns of this conversation and the persona
  memory's sentences (what they said in earlier conversations): "my sister Anna", "my dog is
  called Biscuit", "our cat's name is Miso", "a kitten named Pip", "Biscuit (our dog)". The name must
  be written with a capital (chat without capitals gives nothing, except after "called"/"named"),
  must not be a common word ("my boss Said"), and a relation named twice differently ("my brother
  Tom … my brother Sam") is left alone.
* **what changes** — the first "your <relation>" of the reply ("your sister" → "Anna", "your dog's"
  → "Biscuit's"; the words of one relation count as one: "my mum Carol" names "your mother"), only
  for the relations in :data:`RELATIONS` (family, partners, friends, pets), and not when the reply
  already says the name.

``generation.conversation.names`` switches it (on by default); ``custom.generation.names`` shows
what was replaced.
"""

from __future__ import annotations

import re
from typing import Dict, Iterable, Optional, Tuple

from empathy_nlg.text import MONTHS, STOPWORDS, WEEKDAYS

#: relations a reply may call by the name the user gave: people close to them and animals
RELATIONS = frozenset("""
dog puppy pup cat kitten horse pony bird parrot budgie hamster rabbit bunny tortoise turtle fish snake lizard
girlfriend boyfriend wife husband partner fiance fiancee spouse
mom mum mother dad father son daughter baby brother sister grandma grandmother granny nan nana grandpa
grandfather grandad granddad grandson granddaughter uncle aunt auntie nephew niece cousin
friend bestie roommate flatmate housemate neighbour neighbor boss manager coworker colleague teacher coach
""".split())

#: words for the same relation: a name given for one serves them all ("my mum Carol" → "your mom")
_SAME = [("mom", "mum", "mother", "mommy", "mummy"), ("dad", "father", "daddy"),
         ("grandma", "grandmother", "granny", "nan", "nana"), ("grandpa", "grandfather", "grandad", "granddad"),
         ("dog", "puppy", "pup"), ("cat", "kitten"), ("rabbit", "bunny"), ("aunt", "auntie"),
         ("neighbour", "neighbor"), ("roommate", "flatmate", "housemate"), ("coworker", "colleague"),
         ("fiance", "fiancee"), ("friend", "bestie")]
_CANONICAL = {word: group[0] for group in _SAME for word in group}


def canonical(relation: str) -> str:
    """One name for the words of one relation (``mum`` → ``mom``, ``puppy`` → ``dog``)."""
    return _CANONICAL.get(relation.lower(), relation.lower())


_REL = r"(?P<rel>[a-z]+)"
_NAME = r"(?P<name>[A-Z][a-z]+(?:-[A-Z][a-z]+)?)"
_LOOSE_NAME = r"(?P<name>[A-Za-z][a-z]+(?:-[A-Za-z][a-z]+)?)"  # after "called"/"named" a name may be lower case
_PATTERNS = [
    # my sister Anna / our dog, Biscuit
    re.compile(rf"\b(?:[Mm]y|[Oo]ur)\s+(?:little\s+|big\s+|older\s+|younger\s+|best\s+|new\s+|old\s+)?{_REL},?\s+{_NAME}\b"),
    # my dog is called Biscuit / a kitten named pip / our cat's name is Miso
    re.compile(rf"\b(?:[Mm]y|[Oo]ur|[Aa]n?)\s+(?:little\s+|big\s+|new\s+|old\s+)?{_REL}\s+(?:is\s+|was\s+)?(?:called|named)\s+{_LOOSE_NAME}\b"),
    re.compile(rf"\b(?:[Mm]y|[Oo]ur)\s+{_REL}'s\s+name\s+is\s+{_LOOSE_NAME}\b"),
    # Biscuit (our dog) — not "Anna, my sister": "Honestly, my sister" reads the same
    re.compile(rf"\b{_NAME}\s+\((?:my|our)\s+{_REL}\)"),
]
#: capitalised words that are not names where a name would stand
_NOT_NAMES = frozenset("""
i im i'm and but so or because then today tonight yesterday tomorrow just and also who which that this
christmas easter lol omg haha
""".split()) | frozenset(WEEKDAYS) | frozenset(MONTHS)


def _is_name(word: str) -> bool:
    low = word.lower()
    return low not in _NOT_NAMES and low not in STOPWORDS and low not in RELATIONS and len(low) > 1


def names_in(texts: Iterable[str]) -> Dict[str, str]:
    """``{relation: name}`` from ``texts`` (oldest first; relations by :func:`canonical`); a relation
    given two different names is dropped."""
    found: Dict[str, str] = {}
    clashing = set()
    for text in texts:
        for pattern in _PATTERNS:
            for m in pattern.finditer(text or ""):
                rel, name = m.group("rel").lower(), m.group("name")
                if rel not in RELATIONS or not _is_name(name):
                    continue
                rel = canonical(rel)
                name = "-".join(part[:1].upper() + part[1:] for part in name.split("-"))
                if rel in found and found[rel] != name:
                    clashing.add(rel)
                found[rel] = name
    return {rel: name for rel, name in found.items() if rel not in clashing}


def with_names(reply: str, names: Dict[str, str]) -> Tuple[str, Optional[Dict[str, str]]]:
    """``reply`` with its first "your <relation>" that has a name replaced by the name, and what was
    replaced (``None``: nothing)."""
    if not reply or not names:
        return reply, None
    if any(re.search(rf"\b{re.escape(name)}\b", reply) for name in names.values()):
        return reply, None  # the reply already calls someone by name
    words = [w for w in RELATIONS if canonical(w) in names]
    if not words:
        return reply, None
    pattern = re.compile(r"\b[Yy]our\s+(" + "|".join(sorted(map(re.escape, words), key=len, reverse=True)) + r")\b('s)?")
    m = pattern.search(reply)
    if m is None:
        return reply, None
    name = names[canonical(m.group(1))] + (m.group(2) or "")
    return reply[: m.start()] + name + reply[m.end():], {m.group(0): name}
