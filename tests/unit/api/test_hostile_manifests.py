"""Manifests written by a careless user or an attacker: each is refused with one line naming the place and
the rule, quickly and in little memory, and never silently read as something else than the API server reads."""

from __future__ import annotations

import time
import tracemalloc

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from fedfleet.api.manifest import ManifestError, parse_job
from fedfleet.api.strict_yaml import MAX_DEPTH, MAX_EXPANDED_NODES

HEAD = "apiVersion: fedfleet.io/v1alpha1\nkind: FederatedJob\nmetadata:\n  name: hostile\n"


def refused(text: str) -> str:
    with pytest.raises(ManifestError) as caught:
        parse_job(text, source="job.yaml")
    message = str(caught.value)
    assert "\n" not in message and message.startswith("job.yaml: ")
    return message


def test_a_sound_manifest_still_loads() -> None:
    job = parse_job(HEAD + "spec:\n  rounds: 30\n  training: {learningRate: 1}\n  cohort: {overSelection: 1.5}\n")
    assert job.spec.rounds == 30 and job.spec.training.learning_rate == 1.0


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("true", "spec.rounds: "),  # YAML's boolean is not an integer
        ("10.0", "spec.rounds: "),  # nor is a float, even a whole one
        ("1:30", "spec.rounds: "),  # YAML 1.1's base 60 is a string here, and a string is not an integer
        ("0x1e", "spec.rounds: "),  # so is YAML 1.1's hexadecimal
        ('"30"', "spec.rounds: "),  # the API server refuses a quoted number for an integer field
    ],
)
def test_values_that_are_not_json_integers_are_refused(value: str, expected: str) -> None:
    assert refused(HEAD + f"spec:\n  rounds: {value}\n").startswith(f"job.yaml: {expected}")


def test_a_duplicate_key_is_refused_with_its_place() -> None:
    message = refused(HEAD + "spec:\n  rounds: 5\n  seed: 1\n  rounds: 50\n")
    assert "duplicate key 'rounds'" in message and "line 8" in message


def test_a_huge_integer_is_refused_without_a_traceback() -> None:
    message = refused(HEAD + "spec:\n  seed: " + "9" * 5000 + "\n")
    assert "5000 digits is too large" in message


def test_deep_nesting_is_refused_before_it_is_built() -> None:
    message = refused(HEAD + "spec:\n  x: " + "[" * 5000 + "]" * 5000 + "\n")
    assert f"nesting deeper than {MAX_DEPTH} levels" in message


@pytest.mark.parametrize("where", ["spec", "metadata", "status"])
def test_an_alias_bomb_is_refused_fast_and_small(where: str) -> None:
    # Nine levels of nine aliases: 9^9 ≈ 387 million strings once expanded, from about a kilobyte of text.
    lines = ['a0: &a0 ["lol"]']
    for i in range(1, 10):
        lines.append(f"a{i}: &a{i} [" + ", ".join([f"*a{i - 1}"] * 9) + "]")
    bomb = "\n".join("  " + line for line in lines)
    if where == "metadata":
        text = HEAD + bomb + "\nspec: {}\n"  # HEAD ends inside metadata: the bomb's lines join it
    else:
        text = HEAD + f"{where}:\n{bomb}\n" + ("spec: {}\n" if where == "status" else "")
    tracemalloc.start()
    started = time.process_time()
    message = refused(text)
    cpu = time.process_time() - started
    _, peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    assert f"more than {MAX_EXPANDED_NODES} values" in message
    assert cpu < 2.0 and peak < 50 << 20, (cpu, peak)


def test_an_oversized_document_is_refused_unread() -> None:
    assert "characters; at most" in refused(HEAD + "spec: {}\n# " + "x" * (2 << 20) + "\n")


def test_yaml_only_types_are_refused() -> None:
    assert "has no JSON value" in refused(HEAD + "spec:\n  x: !!timestamp 2026-11-29\n")
    assert "has no JSON value" in refused(HEAD + "spec:\n  x: !!binary aGk=\n")
    assert "keys must be strings" in refused(HEAD + "spec:\n  1: 2\n")


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.text(alphabet=st.sampled_from(list("{}[]&*!:-,'\"|>#\n %@`0123456789abcxyz.~<")), max_size=300))
def test_no_text_makes_the_loader_raise_anything_but_a_manifest_error(tail: str) -> None:
    started = time.process_time()
    try:
        parse_job(HEAD + "spec:\n  " + tail, source="job.yaml")
    except ManifestError as exc:
        assert "\n" not in str(exc)
    assert time.process_time() - started < 1.0
