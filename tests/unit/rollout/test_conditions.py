"""CEL conditions: what they see, how numbers compare, and what hostile text gets."""

from __future__ import annotations

import math
import operator
import sys
import time

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from fedfleet.rollout.conditions import MAX_CONDITION_BYTES, ConditionError, compile_condition

FIELD = "spec.analysis.metrics[0].successCondition"


def holds(text: str, result: float = 0.95, baseline: float | None = 0.9, devices: int = 40) -> bool:
    return compile_condition(text, FIELD).evaluate(result, baseline, devices)


def test_a_condition_sees_result_baseline_and_devices() -> None:
    assert holds("result >= 0.9 && devices >= 30")
    assert not holds("result >= 0.9 && devices >= 30", devices=29)
    assert holds("result >= baseline - 0.02", result=0.89, baseline=0.9)
    assert not holds("result >= baseline - 0.02", result=0.87, baseline=0.9)
    assert holds("(result - baseline) / baseline < 0.05", result=1.04, baseline=1.0)


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("result > 0", True),
        ("0 < result", True),  # int on the left: cel-python alone refuses this
        ("result >= 0.9", True),
        ("result == 1", False),  # int == double compares values, as in Kubernetes' CEL
        ("result != 1", True),
        ("devices >= 40", True),
        ("devices > 39.5", True),
        ("devices == 40.0", True),
        ("1 <= devices", True),
    ],
)
def test_int_and_double_compare_by_value_in_either_order(text: str, expected: bool) -> None:
    assert holds(text) is expected


PYTHON_OPERATORS = {
    "<": operator.lt,
    "<=": operator.le,
    ">": operator.gt,
    ">=": operator.ge,
    "==": operator.eq,
    "!=": operator.ne,
}


@settings(max_examples=200, deadline=None)
@given(
    st.floats(allow_nan=False, allow_infinity=False, width=64),
    st.one_of(st.integers(min_value=-(10**6), max_value=10**6), st.floats(-1e6, 1e6, allow_nan=False)),
    st.sampled_from(["<", "<=", ">", ">=", "==", "!="]),
)
def test_comparisons_agree_with_exact_arithmetic(result: float, threshold: float, symbol: str) -> None:
    literal = repr(threshold)
    expected = PYTHON_OPERATORS[symbol](result, threshold)  # Python compares int with float exactly
    assert holds(f"result {symbol} {literal}", result=result) is expected
    mirrored = {"<": ">", "<=": ">=", ">": "<", ">=": "<=", "==": "==", "!=": "!="}[symbol]
    assert holds(f"{literal} {mirrored} result", result=result) is expected


def test_a_missing_baseline_is_null() -> None:
    assert holds("baseline == null", baseline=None)
    assert not holds("baseline == null", baseline=0.5)
    assert holds("baseline != null", baseline=0.5)
    guarded = "baseline == null ? result >= 0.9 : result >= baseline * 0.98"
    assert holds(guarded, result=0.91, baseline=None)
    assert not holds(guarded, result=0.91, baseline=0.95)


def test_a_missing_baseline_in_arithmetic_is_an_evaluation_error_that_says_so() -> None:
    condition = compile_condition("result >= baseline * 0.98", FIELD)
    assert condition.evaluate(0.99, 1.0, 10)
    with pytest.raises(ConditionError) as error:
        condition.evaluate(0.99, None, 10)
    assert error.value.field == FIELD
    assert "baseline is null" in str(error.value)


def test_other_evaluation_errors_are_condition_errors() -> None:
    condition = compile_condition("100 / (devices - 40) > 1", FIELD)  # an int division by zero at 40 devices
    assert condition.evaluate(0.5, None, 41)
    with pytest.raises(ConditionError, match="divide by zero"):
        condition.evaluate(0.5, None, 40)


def test_nan_follows_ieee_comparison() -> None:
    assert not holds("result > 0.5", result=math.nan)
    assert holds("result != result", result=math.nan)


@pytest.mark.parametrize(
    ("text", "words"),
    [
        ("result * devices > 10.0", "does not mix int and double"),
        ("devices / 2.0 > 1.0", "does not mix int and double"),
        ("result + 1 > 1.0", "does not mix int and double"),
        ("result + 1.0", "true or false"),
        ("devices", "true or false"),
        ("'yes'", "true or false"),
    ],
)
def test_type_mistakes_are_refused_when_compiled(text: str, words: str) -> None:
    with pytest.raises(ConditionError) as error:
        compile_condition(text, FIELD)
    assert error.value.field == FIELD
    assert words in error.value.rule


def test_double_conversion_is_the_way_to_mix() -> None:
    assert holds("double(devices) * result > 30.0")


@pytest.mark.parametrize(
    ("text", "words"),
    [
        ("", "empty"),
        ("   \n", "empty"),
        ("result >", "not valid CEL at line 1, column 8"),
        ("result >= 0.9 &&& devices > 1", "not valid CEL"),
        ("résult > 0.5", "not valid CEL"),
        ('"unterminated', "not valid CEL"),
        ("rslt > 0.5", "unknown name 'rslt'"),
        ("request.auth.claims > 1", "field access"),
        ("size('abc') > 1", "may not call size()"),
        ("has(result.x)", "may not call has()"),
        ("result.nanos > 1", "field access"),
        ("[1, 2, 3].all(x, x > 0)", "macros"),
        ("'aaaaaaaaaaaaaaaaaaaaaaaaaaaaaa!'.matches('(a+)+$')", "macros"),  # a regular-expression bomb
        ("result in [0.5, 1.0]", "lists"),
        ("{'a': result}['a'] > 1.0", "indexing"),
        ("{'a': result} == {'a': 1.0}", "maps"),
        ("google.protobuf.DoubleValue{value: 1.0} == result", "message construction"),
    ],
)
def test_hostile_or_broken_text_is_refused_naming_the_field(text: str, words: str) -> None:
    with pytest.raises(ConditionError) as error:
        compile_condition(text, FIELD)
    assert error.value.field == FIELD
    assert words in error.value.rule, error.value.rule
    assert str(error.value).startswith(f"{FIELD}: ")


def test_text_is_bounded_in_bytes_before_it_is_parsed() -> None:
    clause = "result > 0.5 || "
    fits = clause * ((MAX_CONDITION_BYTES - 12) // len(clause)) + "result > 0.5"
    assert len(fits.encode()) <= MAX_CONDITION_BYTES
    assert holds(fits)
    started = time.process_time()
    for huge in ("result > 0.5 || " * 100_000 + "true", "é" * (MAX_CONDITION_BYTES // 2 + 1)):
        with pytest.raises(ConditionError, match=f"at most {MAX_CONDITION_BYTES} bytes"):
            compile_condition(huge, FIELD)
    assert time.process_time() - started < 1.0  # refused by length, never parsed


@pytest.mark.parametrize(
    "text",
    [
        "(" * 200 + "result" + ")" * 200 + " > 0.5",
        "!" * 500 + "true",
        "-" * 500 + "result > 0.5",
        "result > 0.5" + " || (result > 0.5" * 50 + ")" * 50,
    ],
)
def test_deep_nesting_is_refused_without_a_recursion_error(text: str) -> None:
    assert len(text.encode()) <= MAX_CONDITION_BYTES
    with pytest.raises(ConditionError, match="nested too deeply"):
        compile_condition(text, FIELD)


DEEP_SHAPES = {
    "parentheses": lambda k: "(" * k + "result" + ")" * k + " > 0.5",
    "negations": lambda k: "!" * k + "true",
    "minus signs": lambda k: "-" * k + "result != 0.5",
    "nested or": lambda k: "result > 0.5" + " || (result > 0.5" * k + ")" * k,
    "long sum": lambda k: "result" + " + result" * k + " > 0.5",
    "long and": lambda k: "result > 0.5" + " && true" * k,
}


@pytest.mark.parametrize("shape", sorted(DEEP_SHAPES))
def test_the_deepest_allowed_condition_evaluates_under_the_default_recursion_limit(shape: str) -> None:
    make = DEEP_SHAPES[shape]
    deepest = None
    for k in range(1, 400):
        try:
            deepest = compile_condition(make(k), FIELD)
        except ConditionError as error:
            assert "nested too deeply" in error.rule
            break
    assert deepest is not None and k > 5  # a few levels are always allowed, and the bound is reached

    def below(frames: int) -> bool:
        return below(frames - 1) if frames else deepest.evaluate(0.9, None, 1)

    limit = sys.getrecursionlimit()
    sys.setrecursionlimit(1000)  # Python's default, whatever the test runner set
    try:
        assert below(300)  # with 300 frames of a caller (kopf, asyncio, pytest) below the evaluation
    finally:
        sys.setrecursionlimit(limit)


def test_compiling_leaves_the_process_recursion_limit_alone() -> None:
    before = sys.getrecursionlimit()
    compile_condition("result > 0.5", FIELD)
    assert sys.getrecursionlimit() == before


def test_a_condition_is_not_a_string_or_anything_else() -> None:
    with pytest.raises(ConditionError, match="string"):
        compile_condition(0.9, FIELD)  # type: ignore[arg-type]
    condition = compile_condition("result > 0.5", FIELD)
    for args in ((True, None, 1), ("0.9", None, 1), (0.9, "x", 1), (0.9, None, -1), (0.9, None, 1.5)):
        with pytest.raises(ConditionError):
            condition.evaluate(*args)  # type: ignore[arg-type]


def test_conditions_keep_their_text_and_field_for_status_messages() -> None:
    condition = compile_condition("result > 0.5", FIELD)
    assert (condition.text, condition.field) == ("result > 0.5", FIELD)
    assert condition == compile_condition("result > 0.5", FIELD)
