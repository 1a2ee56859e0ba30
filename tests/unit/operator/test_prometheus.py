"""The operator's Prometheus answers: one value, no data, or an error with a reason — never a guess."""

from __future__ import annotations

import asyncio
import json

import pytest
from aiohttp import web
from prometheus_stub import serving

from fedfleet.operator.prometheus import (
    MAX_RESPONSE_BYTES,
    PrometheusClient,
    PrometheusError,
    QueryProblem,
    parse_answer,
)


def _vector(*values: str) -> bytes:
    series = [{"metric": {"version": f"v{i}"}, "value": [1700000000.0, v]} for i, v in enumerate(values)]
    return json.dumps({"status": "success", "data": {"resultType": "vector", "result": series}}).encode()


def test_one_series_is_its_value() -> None:
    assert parse_answer(200, _vector("0.93")) == pytest.approx(0.93)


def test_scalar_result_is_its_value() -> None:
    body = json.dumps({"status": "success", "data": {"resultType": "scalar", "result": [1.0, "2.5"]}})
    assert parse_answer(200, body.encode()) == 2.5


@pytest.mark.parametrize("body", [_vector(), _vector("NaN")])
def test_no_series_or_nan_is_no_data(body: bytes) -> None:
    assert parse_answer(200, body) is None


@pytest.mark.parametrize(
    ("status", "body", "problem"),
    [
        (200, _vector("0.9", "0.8"), QueryProblem.NOT_A_SCALAR),
        (200, b"<html>", QueryProblem.MALFORMED),
        (200, b"[]", QueryProblem.MALFORMED),
        (200, _vector("abc"), QueryProblem.MALFORMED),
        (
            400,
            json.dumps({"status": "error", "errorType": "bad_data", "error": "parse error"}).encode(),
            QueryProblem.QUERY_ERROR,
        ),
        (
            503,
            json.dumps({"status": "error", "errorType": "unavailable", "error": "x"}).encode(),
            QueryProblem.HTTP_ERROR,
        ),
        (
            200,
            json.dumps({"status": "success", "data": {"resultType": "matrix", "result": []}}).encode(),
            QueryProblem.NOT_A_SCALAR,
        ),
    ],
)
def test_anything_but_one_value_is_an_error_with_a_reason(status: int, body: bytes, problem: QueryProblem) -> None:
    with pytest.raises(PrometheusError) as caught:
        parse_answer(status, body)
    assert caught.value.problem is problem


def test_client_queries_over_http_and_bounds_the_answer() -> None:
    async def scenario() -> None:
        seen: list[str] = []

        async def handle(request: web.Request) -> web.Response:
            form = await request.post()
            query = str(form["query"])
            seen.append(query)
            if query == "huge":
                return web.Response(body=b" " * (MAX_RESPONSE_BYTES + 10))
            return web.Response(body=_vector("0.5"))

        async with serving(handle) as address:
            client = PrometheusClient(f"{address}/")
            assert await client.query('sum(x{version="a"})') == 0.5
            assert seen == ['sum(x{version="a"})']
            with pytest.raises(PrometheusError) as caught:
                await client.query("huge")
            assert caught.value.problem is QueryProblem.NOT_A_SCALAR
        with pytest.raises(PrometheusError) as unreachable:  # the same address, its server gone
            await PrometheusClient(address).query("up")
        assert unreachable.value.problem is QueryProblem.UNREACHABLE

    asyncio.run(scenario())
