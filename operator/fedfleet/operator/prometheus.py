"""The only module of the operator that calls Prometheus: instant queries over its HTTP API.

A rollout's analysis asks one number per query ("the candidate's mean on-device accuracy over the last
minute"). Anything else — an unreachable server, an HTTP error, a PromQL error, a vector with several series,
a body too large to be an answer — is a `PrometheusError` with a reason, which the analysis records as an
Error measurement: never as a value, so no data never passes a gate. An empty vector is not an error but "no
data" (`None`), which the analysis judges inconclusive.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from enum import StrEnum
from typing import Any

import aiohttp

#: An instant query answers in milliseconds; a stuck server must not hold a reconcile for long.
QUERY_TIMEOUT = aiohttp.ClientTimeout(total=10, connect=5)
#: A scalar answer is a few hundred bytes; a query that matches thousands of series is a mistake in the spec.
MAX_RESPONSE_BYTES = 1 << 20
#: Series a breakdown query (devices by version and role) may return.
MAX_SERIES = 256


class QueryProblem(StrEnum):
    UNREACHABLE = "unreachable"
    HTTP_ERROR = "http_error"
    QUERY_ERROR = "query_error"
    NOT_A_SCALAR = "not_a_scalar"
    MALFORMED = "malformed"


class PrometheusError(Exception):
    def __init__(self, problem: QueryProblem, message: str) -> None:
        super().__init__(f"{problem}: {message}")
        self.problem = problem


@dataclass(frozen=True)
class PrometheusClient:
    address: str  # e.g. http://127.0.0.1:9090 — the spec's `prometheus.address` or the chart's default

    async def query(self, promql: str, session: aiohttp.ClientSession | None = None) -> float | None:
        """The query's single value now, or None when it matches no series (no data)."""
        status, body = await self._post(promql, session)
        return parse_answer(status, body)

    async def query_series(
        self, promql: str, session: aiohttp.ClientSession | None = None
    ) -> list[tuple[dict[str, str], float]]:
        """Every series of an instant vector with its value (e.g. devices by version), at most MAX_SERIES."""
        status, body = await self._post(promql, session)
        return parse_series(status, body)

    async def _post(self, promql: str, session: aiohttp.ClientSession | None) -> tuple[int, bytes]:
        url = self.address.rstrip("/") + "/api/v1/query"
        owned = session is None
        http = session or aiohttp.ClientSession(timeout=QUERY_TIMEOUT)
        try:
            async with http.post(url, data={"query": promql}, timeout=QUERY_TIMEOUT) as response:
                body = await _read_bounded(response.content, MAX_RESPONSE_BYTES + 1)
                status = response.status
        except (aiohttp.ClientError, TimeoutError, OSError) as exc:
            raise PrometheusError(QueryProblem.UNREACHABLE, f"{url}: {exc or type(exc).__name__}") from exc
        finally:
            if owned:
                await http.close()
        if len(body) > MAX_RESPONSE_BYTES:
            raise PrometheusError(QueryProblem.NOT_A_SCALAR, f"answer larger than {MAX_RESPONSE_BYTES} bytes")
        return status, body


async def _read_bounded(stream: aiohttp.StreamReader, limit: int) -> bytes:
    """At most `limit` bytes of the body (a single read may return fewer than asked)."""
    chunks: list[bytes] = []
    size = 0
    while size < limit:
        chunk = await stream.read(limit - size)
        if not chunk:
            break
        chunks.append(chunk)
        size += len(chunk)
    return b"".join(chunks)


def parse_series(status: int, body: bytes) -> list[tuple[dict[str, str], float]]:
    """The series of an instant-vector answer; NaN samples are left out (no data)."""
    result = _vector(status, body)
    if len(result) > MAX_SERIES:
        raise PrometheusError(QueryProblem.NOT_A_SCALAR, f"{len(result)} series, more than {MAX_SERIES}")
    series = []
    for entry in result:
        if not isinstance(entry, dict) or not isinstance(entry.get("metric"), dict):
            raise PrometheusError(QueryProblem.MALFORMED, "a series is not an object with labels")
        value = _sample_value(entry.get("value"))
        if value is not None:
            series.append(({str(k): str(v) for k, v in entry["metric"].items()}, value))
    return series


def _vector(status: int, body: bytes) -> list[Any]:
    data = _data(status, body)
    if data.get("resultType") != "vector" or not isinstance(data.get("result"), list):
        raise PrometheusError(QueryProblem.NOT_A_SCALAR, f"result type {data.get('resultType')!r}, not a vector")
    result: list[Any] = data["result"]
    return result


def _data(status: int, body: bytes) -> dict[str, Any]:
    try:
        answer: Any = json.loads(body)
    except (ValueError, UnicodeDecodeError) as exc:
        raise PrometheusError(QueryProblem.MALFORMED, f"HTTP {status}, body is not JSON") from exc
    if not isinstance(answer, dict):
        raise PrometheusError(QueryProblem.MALFORMED, f"HTTP {status}, body is not a JSON object")
    if answer.get("status") != "success":
        kind = str(answer.get("errorType", ""))[:100]
        error = str(answer.get("error", ""))[:300]
        problem = QueryProblem.QUERY_ERROR if kind in ("bad_data", "execution") else QueryProblem.HTTP_ERROR
        raise PrometheusError(problem, f"HTTP {status} {kind}: {error}")
    data = answer.get("data")
    if not isinstance(data, dict):
        raise PrometheusError(QueryProblem.MALFORMED, "no data object")
    return data


def parse_answer(status: int, body: bytes) -> float | None:
    """One value from a /api/v1/query answer (see the HTTP API docs: status, data.resultType, data.result)."""
    data = _data(status, body)
    result_type, result = data.get("resultType"), data.get("result")
    if result_type == "scalar":
        return _sample_value(result)
    if result_type != "vector" or not isinstance(result, list):
        raise PrometheusError(QueryProblem.NOT_A_SCALAR, f"result type {result_type!r}; write a query giving one value")
    if not result:
        return None
    if len(result) > 1:
        raise PrometheusError(
            QueryProblem.NOT_A_SCALAR, f"{len(result)} series; aggregate the query (sum, avg, …) to one value"
        )
    series = result[0]
    if not isinstance(series, dict):
        raise PrometheusError(QueryProblem.MALFORMED, "a series is not an object")
    return _sample_value(series.get("value"))


def _sample_value(sample: Any) -> float | None:
    if not (isinstance(sample, list) and len(sample) == 2 and isinstance(sample[1], str)):
        raise PrometheusError(QueryProblem.MALFORMED, 'a sample is not [time, "value"]')
    try:
        value = float(sample[1])
    except ValueError as exc:
        raise PrometheusError(QueryProblem.MALFORMED, f"value {sample[1][:40]!r} is not a number") from exc
    # NaN is what PromQL gives for 0/0, e.g. a ratio over a window with no reports: that is no data.
    return None if math.isnan(value) else value
