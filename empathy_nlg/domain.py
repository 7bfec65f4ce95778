"""Templated responses from the Rasa domain, rendered the way Rasa's TemplatedNaturalLanguageGenerator does.

The engine answers every response Rasa asks for: generated ones come from the generator, all
others (greetings, crisis scripts, fallbacks) from these templates. Variations are filtered by
channel (a variation naming a channel wins for that channel) and ``{slot}`` placeholders are
filled from the tracker's slots; unknown placeholders are left as they are.
"""

from __future__ import annotations

import random
import re
from pathlib import Path
from typing import Any, Dict, List, Mapping, Optional

import yaml

_PLACEHOLDER = re.compile(r"{([A-Za-z_][\w-]*)}")


class UnknownResponseError(KeyError):
    def __str__(self) -> str:  # KeyError quotes its message otherwise
        return str(self.args[0])


class DomainResponses:
    def __init__(self, responses: Mapping[str, List[Dict[str, Any]]], seed: Optional[int] = None) -> None:
        self.responses = {k: list(v or []) for k, v in responses.items()}
        self._random = random.Random(seed)

    @classmethod
    def load(cls, path: Path | str, seed: Optional[int] = None) -> "DomainResponses":
        """Read ``responses`` from a domain file, or from every YAML file of a domain folder."""
        path = Path(path)
        files = sorted(p for p in path.rglob("*.yml")) if path.is_dir() else [path]
        if not files or not all(f.is_file() for f in files):
            raise FileNotFoundError(f"Rasa domain {path} not found (set `domain:` in the engine config)")
        responses: Dict[str, List[Dict[str, Any]]] = {}
        for f in files:
            data = yaml.safe_load(f.read_text(encoding="utf-8")) or {}
            for name, variations in (data.get("responses") or {}).items():
                responses.setdefault(name, []).extend(variations or [])
        return cls(responses, seed)

    def update(self, other: "DomainResponses") -> None:
        """Add ``other``'s responses (a name defined in both keeps this domain's variations)."""
        for name, variations in other.responses.items():
            self.responses.setdefault(name, list(variations))

    def __contains__(self, name: str) -> bool:
        return bool(self.responses.get(name))

    def texts(self, name: str) -> List[str]:
        return [v.get("text", "") for v in self.responses.get(name, []) if v.get("text")]

    def variants(self, name: str, slots: Optional[Mapping[str, Any]] = None, channel: Optional[str] = None) -> List[str]:
        """Every text variation of ``name`` for ``channel``, in domain order, slots filled."""
        variations = self.responses.get(name)
        if not variations:
            raise UnknownResponseError(f"response {name!r} is not defined in the domain")
        for_channel = [v for v in variations if channel and v.get("channel") == channel]
        pool = for_channel or [v for v in variations if not v.get("channel")] or variations
        return [fill_slots(v["text"], slots or {}) for v in pool if isinstance(v.get("text"), str)]

    def render(self, name: str, slots: Optional[Mapping[str, Any]] = None, channel: Optional[str] = None) -> Dict[str, Any]:
        """One variation of ``name`` as an NLG message dict (``text``, ``buttons``, …)."""
        variations = self.responses.get(name)
        if not variations:
            raise UnknownResponseError(f"response {name!r} is not defined in the domain")
        for_channel = [v for v in variations if channel and v.get("channel") == channel]
        pool = for_channel or [v for v in variations if not v.get("channel")] or variations
        chosen = dict(self._random.choice(pool))
        chosen.pop("channel", None)
        chosen.pop("condition", None)
        if isinstance(chosen.get("text"), str):
            chosen["text"] = fill_slots(chosen["text"], slots or {})
        return chosen


def fill_slots(text: str, slots: Mapping[str, Any]) -> str:
    def sub(match: re.Match) -> str:
        value = slots.get(match.group(1))
        return match.group(0) if value is None else str(value)

    return _PLACEHOLDER.sub(sub, text)
