from __future__ import annotations

import pytest

from empathy_nlg.domain import DomainResponses, UnknownResponseError, fill_slots


def test_render_fills_slots_and_picks_channel(domain_file):
    d = DomainResponses.load(domain_file, seed=1)
    assert d.render("utter_greet", {"name": "Sam"})["text"] == "Hi Sam!"
    assert d.render("utter_greet", {})["text"] == "Hi {name}!"  # unknown slot left as is
    assert d.render("utter_channel", channel="slack")["text"] == "for slack"
    assert d.render("utter_channel", channel="rest")["text"] == "generic"
    assert "utter_empathize" in d and "utter_nope" not in d
    with pytest.raises(UnknownResponseError, match="utter_nope"):
        d.render("utter_nope")


def test_project_domain_has_the_scripted_crisis_responses():
    from tests.empathy_nlg.conftest import ROOT

    d = DomainResponses.load(ROOT / "domain.yml")
    for name in ("utter_crisis_support", "utter_crisis_resources", "utter_empathize"):
        assert d.texts(name), name
    assert any("988" in t for t in d.texts("utter_crisis_resources"))


def test_fill_slots():
    assert fill_slots("{a} and {b}", {"a": 1}) == "1 and {b}"
