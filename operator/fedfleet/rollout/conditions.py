"""`successCondition` / `failureCondition`: CEL expressions over one measurement, never Python `eval`.

CEL is the language the CRDs' own validation rules are written in; cel-python (`celpy`) interprets it.
A condition sees three variables:

- `result`   (double) the metric's value for the canary;
- `baseline` (double, or null when there is none) the same metric for the control cohort or stable version;
- `devices`  (int)    how many devices reported.

Numbers compare across int and double as in Kubernetes' CEL (cel-go): `result > 0`, `0 < result`,
`result >= 0.9`, `devices >= 10` and `result == 1` all work, and `baseline != null` is true for any
number. Arithmetic does not mix int and double, as in every CEL: write `double(devices) * result`, or
`2.0`. cel-python alone gets both wrong in ways that depend on operand order: it refuses `0 < result`,
`result == 1` and `devices * result` but accepts `result * devices`, and computes `devices / 2.0` as an
integer division. So the comparison and arithmetic operators are replaced here: comparisons compare the
numeric values exactly, arithmetic on an int and a double is refused like cel-go does.

Conditions come from a user's manifest, so compiling one bounds what it may cost before it ever runs:
at most `MAX_CONDITION_BYTES` of text, at most `MAX_NESTING` levels of parse tree (the interpreter recurses
per level), and no lists, maps, field access, methods or macros (`all`, `exists`, `map`, `filter`,
`matches` ...): without them a CEL expression has no loop and no regular expression, so evaluating it
costs time linear in its (bounded) size. Names other than the three variables, and functions other than
the conversions `double`, `int`, `uint` and `type`, are refused. Compiling also evaluates the condition
once with a baseline present, so a type mistake (`result * devices`, a non-bool result) is reported when
the rollout is read rather than as an Error measurement in the middle of it; branches that probe does not
reach are only checked when they run.
"""

from __future__ import annotations

import dataclasses
import functools
import re
import sys
import threading
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import celpy
import lark
from celpy import celtypes
from celpy.celparser import CELParseError
from celpy.evaluation import CELEvalError

from fedfleet.rollout.errors import InvalidField, shown

MAX_CONDITION_BYTES = 1024
#: Parse-tree levels. A comparison is about 13 levels and each pair of parentheses adds about 10, so this
#: allows eight levels of parentheses (or 90 `!` or 45 terms of a sum). The interpreter recurses about five
#: Python frames per level, so the deepest condition needs about 520 frames: it evaluates under the default
#: recursion limit of 1000 with room for the caller's stack (kopf, asyncio, a gRPC handler).
MAX_NESTING = 100
VARIABLES = ("result", "baseline", "devices")
_MAX_INT64 = 2**63 - 1
_FUNCTIONS = frozenset({"double", "int", "uint", "type"})
# Type names are values in CEL, for `type(baseline) == double`.
_TYPE_NAMES = frozenset({"double", "int", "uint", "bool", "string", "null_type"})
_REFUSED = {
    "member_dot": "field access",
    "member_dot_arg": "methods and macros (all, exists, exists_one, map, filter, matches, ...)",
    "member_index": "indexing",
    "member_object": "message construction",
    "dot_ident": "qualified names",
    "dot_ident_arg": "qualified functions",
    "list_lit": "lists",
    "map_lit": "maps",
}
# The values the probe at compile time evaluates a condition with: a plausible measurement.
_PROBE = {"result": celtypes.DoubleType(0.5), "baseline": celtypes.DoubleType(0.5), "devices": celtypes.IntType(10)}


class ConditionError(InvalidField):
    """A condition that does not compile, or a measurement it cannot judge (the caller records an Error)."""


@dataclass(frozen=True)
class Condition:
    """A compiled condition. Make one with `compile_condition`."""

    text: str
    field: str  # where it came from, e.g. `analysis.metrics[0].successCondition`; errors name it
    _program: celpy.Runner = dataclasses.field(repr=False, compare=False)

    def evaluate(self, result: float, baseline: float | None, devices: int) -> bool:
        """True or false for one measurement; ConditionError if the condition cannot say."""
        if isinstance(result, bool) or not isinstance(result, int | float):
            raise ConditionError(self.field, f"result must be a number, not {type(result).__name__}")
        if baseline is not None and (isinstance(baseline, bool) or not isinstance(baseline, int | float)):
            raise ConditionError(self.field, f"baseline must be a number or None, not {type(baseline).__name__}")
        if isinstance(devices, bool) or not isinstance(devices, int) or not 0 <= devices <= _MAX_INT64:
            raise ConditionError(self.field, "devices must be a non-negative 64-bit integer")
        try:
            activation = {
                "result": celtypes.DoubleType(result),
                "baseline": None if baseline is None else celtypes.DoubleType(baseline),
                "devices": celtypes.IntType(devices),
            }
        except OverflowError:  # an int too large for a double
            raise ConditionError(self.field, "result and baseline must fit in a double") from None
        value = _run(self._program, activation, self.field)
        if isinstance(value, CELEvalError):
            raise ConditionError(self.field, _explain(value, baseline_missing=baseline is None))
        if not isinstance(value, celtypes.BoolType):
            raise ConditionError(self.field, f"must give true or false, but gave {_cel_type(value)} {value}")
        return bool(value)


def compile_condition(text: str, field: str) -> Condition:
    """Compile `text`, refusing what is not a small CEL expression over result, baseline and devices."""
    if not isinstance(text, str):
        raise ConditionError(field, "must be a string holding a CEL expression")
    if len(text.encode("utf-8", "surrogatepass")) > MAX_CONDITION_BYTES:
        raise ConditionError(field, f"must be at most {MAX_CONDITION_BYTES} bytes of CEL")
    if not text.strip():
        raise ConditionError(field, "must not be empty")
    tree = _parse(text, field)
    _check_tree(tree, field)
    program = _environment().program(tree, functions=_OPERATORS)
    value = _run(program, dict(_PROBE), field)
    if isinstance(value, CELEvalError):
        if _is_type_error(value):
            raise ConditionError(field, _explain(value, baseline_missing=False))
    elif not isinstance(value, celtypes.BoolType):
        raise ConditionError(field, f"must give true or false, but gives {_cel_type(value)} (e.g. {value})")
    return Condition(text=text, field=field, _program=program)


_environment_lock = threading.Lock()


@functools.cache
def _environment() -> celpy.Environment:
    # celpy raises the process-wide recursion limit to 2500; conditions are bounded in depth instead, so
    # nothing else in the process (kopf, grpc, torch) runs with a limit it did not choose. The lock keeps
    # two first callers from saving each other's raised limit.
    with _environment_lock:
        limit = sys.getrecursionlimit()
        environment = celpy.Environment()
        sys.setrecursionlimit(limit)
    return environment


def _parse(text: str, field: str) -> lark.Tree[Any]:
    try:
        return _environment().compile(text)
    except CELParseError as error:
        line, column = getattr(error, "line", None), getattr(error, "column", None)
        where = f" at line {line}, column {column}" if line is not None and column is not None else ""
        raise ConditionError(field, f"is not valid CEL{where}: {_near(text, line, column)}") from None
    except Exception as error:  # a third-party parser fed user text: any failure is a refusal
        raise ConditionError(field, f"is not valid CEL: {type(error).__name__}") from None


def _near(text: str, line: int | None, column: int | None) -> str:
    """The text around the position the parser stopped at, on one line and short."""
    lines = text.splitlines() or [""]
    row = lines[min(max((line or 1) - 1, 0), len(lines) - 1)]
    at = max((column or 1) - 1, 0)
    start = max(at - 30, 0)
    snippet = row[start : at + 30]
    return f"near {snippet!r}" if snippet.strip() else "unexpected end of the expression"


def _check_tree(tree: lark.Tree[Any], field: str) -> None:
    """Walk the tree without recursion (it may be deep) and refuse what conditions may not use."""
    stack: list[tuple[lark.Tree[Any], int]] = [(tree, 1)]
    while stack:
        node, depth = stack.pop()
        if depth > MAX_NESTING:
            raise ConditionError(field, f"is nested too deeply (more than {MAX_NESTING} levels); simplify it")
        kind = str(node.data)
        if kind in _REFUSED:
            raise ConditionError(
                field, f"may not use {_REFUSED[kind]}: a condition compares result, baseline and devices"
            )
        if kind == "ident":
            name = str(node.children[0])
            if name not in VARIABLES and name not in _TYPE_NAMES:
                raise ConditionError(field, f"unknown name {shown(name, 40)}; a condition sees {', '.join(VARIABLES)}")
        if kind == "ident_arg":
            name = str(node.children[0])
            if name not in _FUNCTIONS:
                allowed = ", ".join(sorted(_FUNCTIONS))
                raise ConditionError(field, f"may not call {name}(); the functions allowed are {allowed}")
        stack.extend((child, depth + 1) for child in node.children if isinstance(child, lark.Tree))


def _run(program: celpy.Runner, activation: dict[str, Any], field: str) -> Any:
    """Evaluate; an error of the interpreter becomes a CELEvalError value or a ConditionError."""
    try:
        return program.evaluate(activation)
    except CELEvalError as error:
        return error
    except RecursionError:
        raise ConditionError(field, "is nested too deeply to evaluate; simplify it") from None
    except Exception as error:  # a third-party interpreter running user text: never a traceback
        raise ConditionError(field, f"could not be evaluated: {type(error).__name__}: {error}"[:300]) from None


# Kubernetes' CEL compares numbers of different types by value; cel-python only when the double is on the
# left. Python compares int with float exactly, so converting each side to its Python number is exact.
# cel-python's double arithmetic also returns plain floats, which count as doubles here.
def _numeric_kind(value: Any) -> str | None:
    if isinstance(value, float):
        return "double"
    if isinstance(value, celtypes.IntType):
        return "int"
    if isinstance(value, celtypes.UintType):
        return "uint"
    return None


def _number(value: Any) -> int | float:
    return float(value) if isinstance(value, float) else int(value)


def _ordering(compare: Callable[[Any, Any], bool], standard: Callable[[Any, Any], Any]) -> Callable[[Any, Any], Any]:
    def ordered(left: Any, right: Any) -> Any:
        if _numeric_kind(left) and _numeric_kind(right):
            return celtypes.BoolType(compare(_number(left), _number(right)))
        return standard(left, right)

    return ordered


def _equality(equal: bool, standard: Callable[[Any, Any], Any]) -> Callable[[Any, Any], Any]:
    def compared(left: Any, right: Any) -> Any:
        if _numeric_kind(left) and _numeric_kind(right):
            same = _number(left) == _number(right)
        elif (left is None) != (right is None):
            same = False  # `baseline == null` is false for a number, as in cel-go, instead of an error
        else:
            return standard(left, right)
        return celtypes.BoolType(same == equal)

    return compared


def _arithmetic(standard: Callable[[Any, Any], Any]) -> Callable[[Any, Any], Any]:
    def computed(left: Any, right: Any) -> Any:
        left_kind, right_kind = _numeric_kind(left), _numeric_kind(right)
        if left_kind and right_kind and left_kind != right_kind:
            # celpy turns a TypeError into "no matching overload", which is what cel-go reports too.
            raise TypeError(f"no such overload: {left_kind} and {right_kind} do not mix in arithmetic")
        value = standard(left, right)
        if isinstance(value, float) and not isinstance(value, celtypes.DoubleType):
            value = celtypes.DoubleType(value)
        return value

    return computed


def _standard(name: str) -> Callable[[Any, Any], Any]:
    function: Callable[[Any, Any], Any] = celpy.evaluation.base_functions[name]
    return function


_OPERATORS: dict[str, Any] = {
    "_<_": _ordering(lambda a, b: a < b, _standard("_<_")),
    "_<=_": _ordering(lambda a, b: a <= b, _standard("_<=_")),
    "_>_": _ordering(lambda a, b: a > b, _standard("_>_")),
    "_>=_": _ordering(lambda a, b: a >= b, _standard("_>=_")),
    "_==_": _equality(True, _standard("_==_")),
    "_!=_": _equality(False, _standard("_!=_")),
    **{name: _arithmetic(_standard(name)) for name in ("_+_", "_-_", "_*_", "_/_", "_%_")},
}

_TYPE_WORDS = {
    "int": "int",
    "DoubleType": "double",
    "float": "double",
    "IntType": "int",
    "UintType": "uint",
    "BoolType": "bool",
    "StringType": "string",
    "BytesType": "bytes",
    "NoneType": "null",
    "ListType": "list",
    "MapType": "map",
}
_OPERATOR_WORDS = {
    "relation_lt": "<",
    "relation_le": "<=",
    "relation_gt": ">",
    "relation_ge": ">=",
    "relation_eq": "==",
    "relation_ne": "!=",
    "relation_in": "in",
    "addition_add": "+",
    "addition_sub": "-",
    "multiplication_mul": "*",
    "multiplication_div": "/",
    "multiplication_mod": "%",
    "unary_neg": "-",
    "unary_not": "!",
}
_CLASS_RE = re.compile(r"<class '(?:[\w.]*\.)?(\w+)'>")
_RULE_RE = re.compile(r"Token\('RULE', '(\w+)'\)|'(\w+_\w+)'")


def _cel_type(value: Any) -> str:
    return _TYPE_WORDS.get(type(value).__name__, type(value).__name__)


def _explain(error: CELEvalError, baseline_missing: bool) -> str:
    """celpy's message in CEL's words, short, with the usual fix."""
    text = str(error.args[0]) if error.args else str(error)
    text = _CLASS_RE.sub(lambda m: _TYPE_WORDS.get(m.group(1), m.group(1)), text)
    text = _RULE_RE.sub(_operator_word, text)
    if len(text) > 200:
        text = text[:197] + "..."
    hints = []
    if baseline_missing and "null" in text:
        hints.append("baseline is null (there was no baseline measurement): test `baseline != null` first")
    elif _is_type_error(error) and "int" in text and "double" in text:
        hints.append("CEL does not mix int and double in arithmetic: write 2.0 rather than 2, or double(devices)")
    return f"could not be evaluated: {text}" + "".join(f"; {hint}" for hint in hints)


def _operator_word(match: re.Match[str]) -> str:
    word = _OPERATOR_WORDS.get(match.group(1) or match.group(2))
    return repr(word) if word is not None else match.group(0)


def _is_type_error(error: CELEvalError) -> bool:
    # celpy builds its errors as (message, exception class, exception args): the class says what went wrong.
    kind = error.args[1] if len(error.args) > 1 else None
    return isinstance(kind, type) and issubclass(kind, TypeError)
