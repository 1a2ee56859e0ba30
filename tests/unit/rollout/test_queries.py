"""Query templates: placeholders filled as escaped PromQL strings; unknown or unfillable ones are errors."""

from __future__ import annotations

import pytest

from fedfleet.rollout.queries import QueryTemplateError, check_template, render


def test_placeholders_are_filled() -> None:
    template = 'avg(x{fleet="{{fleet}}",version="{{ version }}"}) - avg(x{version="{{baseline}}"})'
    rendered = render(template, {"fleet": "eu", "version": "sha256:ab", "baseline": "sha256:cd", "rollout": "r"})
    assert rendered == 'avg(x{fleet="eu",version="sha256:ab"}) - avg(x{version="sha256:cd"})'


def test_values_cannot_break_out_of_the_string() -> None:
    rendered = render('x{rollout="{{rollout}}"}', {"rollout": 'a"} or vector(1) #'})
    assert rendered == 'x{rollout="a\\"} or vector(1) #"}'


def test_unknown_placeholder_is_named() -> None:
    with pytest.raises(QueryTemplateError, match=r"\{\{verison\}\}"):
        check_template('x{version="{{verison}}"}')


def test_missing_baseline_is_an_error() -> None:
    with pytest.raises(QueryTemplateError, match="no baseline"):
        render('x{version="{{baseline}}"}', {"baseline": None})
