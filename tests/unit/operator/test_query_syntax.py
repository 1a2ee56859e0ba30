"""The PromQL syntax check asks Prometheus once per template: a parse error or a range vector names the field,
a query that parses is remembered, and an unreachable Prometheus proves nothing (asked again next time)."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import Any

from aiohttp import web
from prometheus_stub import serving

from fedfleet.operator.query_syntax import QuerySyntax

FIELD = "spec.analysis.metrics[0].provider.prometheus.query"


class SyntaxOnlyPrometheus:
    """Answers as Prometheus 3 does (its error texts copied from a real server): an unclosed parenthesis is a
    parse error, `[1m]` at the end a range vector, anything else an empty vector."""

    def __init__(self) -> None:
        self.queries: list[str] = []

    async def handle(self, request: web.Request) -> web.Response:
        query = str((await request.post())["query"])
        self.queries.append(query)
        if query.count("(") != query.count(")"):
            error = f'invalid parameter "query": 1:{len(query)}: parse error: unclosed left parenthesis'
            return web.json_response({"status": "error", "errorType": "bad_data", "error": error}, status=400)
        kind = "matrix" if query.endswith("]") else "vector"
        return web.json_response({"status": "success", "data": {"resultType": kind, "result": []}})


def serve(prometheus: SyntaxOnlyPrometheus, scenario: Callable[[str], Awaitable[Any]]) -> Any:
    async def main() -> Any:
        async with serving(prometheus.handle) as address:
            return await scenario(address)

    return asyncio.run(main())


def test_a_query_that_does_not_parse_is_named_with_prometheus_words() -> None:
    prometheus, syntax = SyntaxOnlyPrometheus(), QuerySyntax()
    templates = [("ok", 'avg(acc{version="{{version}}"})'), (FIELD, 'avg(acc{version="{{version}}"}')]
    found = serve(prometheus, lambda address: syntax.first_unparsable(address, templates))
    assert found is not None and found.startswith(f"{FIELD}: does not parse as PromQL")
    assert "parse error: unclosed left parenthesis" in found
    # The placeholders were filled with a digest-shaped stand-in, never sent as {{...}}.
    assert all("{{" not in q for q in prometheus.queries) and 'version="sha256:' in prometheus.queries[0]


def test_a_range_vector_can_never_be_one_value() -> None:
    found = serve(SyntaxOnlyPrometheus(), lambda address: QuerySyntax().first_unparsable(address, [(FIELD, "acc[1m]")]))
    assert found is not None and found.startswith(f"{FIELD}: can never give one value")


def test_a_query_that_parses_is_asked_once() -> None:
    prometheus, syntax = SyntaxOnlyPrometheus(), QuerySyntax()
    templates = [(FIELD, 'avg(acc{version="{{version}}"})')]

    async def twice(address: str) -> list[str | None]:
        return [await syntax.first_unparsable(address, templates), await syntax.first_unparsable(address, templates)]

    assert serve(prometheus, twice) == [None, None]
    assert len(prometheus.queries) == 1


def test_an_unreachable_prometheus_proves_nothing_and_is_asked_again() -> None:
    syntax = QuerySyntax()
    nowhere = "http://127.0.0.1:9"  # the discard port: nothing listens there
    templates = [(FIELD, "avg(acc")]
    assert asyncio.run(syntax.first_unparsable(nowhere, templates)) is None
    # Once it answers, the same template is checked (it was not remembered as fine).
    prometheus = SyntaxOnlyPrometheus()
    found = serve(prometheus, lambda address: syntax.first_unparsable(address, templates))
    assert found is not None and "parse error" in found
