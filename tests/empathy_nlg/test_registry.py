"""The one lazy name registry (commands, generators, knowledge sources, training recipes)."""

from __future__ import annotations


import pytest

from empathy_nlg.registry import Registry


def test_builtin_entries_load_lazily_and_once():
    reg = Registry("thing", {"decoder": "json.decoder:JSONDecoder", "mod": "json"})
    assert reg.names() == ["decoder", "mod"] and "mod" in reg and "x" not in reg
    import json
    import json.decoder

    assert reg.get("decoder") is json.decoder.JSONDecoder
    assert reg.get("mod") is json


def test_registered_objects_win_and_unknown_names_list_the_available():
    reg = Registry("widget", {"a": "json:loads"})
    reg.register("b", 2)
    assert reg.get("b") == 2 and reg.names() == ["a", "b"]
    seen = []
    deco = reg.decorator("c", seen.append)

    class C:
        pass

    assert deco(C) is C and reg.get("c") is C and seen == [C]
    reg.unregister("c")
    with pytest.raises(KeyError, match="unknown widget 'c'; available: a, b"):
        reg.get("c")


def test_every_builtin_of_the_project_registries_resolves():
    from empathy_nlg.cli import MODULES
    from empathy_nlg.generators.base import GENERATORS
    from empathy_nlg.knowledge.base import SOURCES
    from empathy_nlg.training.generator import RECIPES

    for reg in (MODULES, GENERATORS, SOURCES, RECIPES):
        for name in reg.names():
            assert reg.get(name) is not None, (reg.kind, name)
    assert {"finetuned", "imagine", "nec", "mime", "cause_gated", "persona_moel", "prompted", "frequent"} <= set(GENERATORS.names())
    assert RECIPES.names() == ["cause_gated", "finetuned", "imagine", "mime", "nec", "persona_moel"]
    assert all(hasattr(MODULES.get(n), "run") and hasattr(MODULES.get(n), "add_arguments") for n in MODULES.names())
