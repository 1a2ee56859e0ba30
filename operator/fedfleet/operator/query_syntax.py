"""Whether a rollout's PromQL parses, asked of the Prometheus that will run it, before any device moves.

CEL cannot parse PromQL, and a query that does not parse would otherwise surface only as Error measurements
once the canary already runs on devices. Prometheus answers a query it cannot parse with `bad_data` and a
"parse error" message, whatever the data; so each template is sent once, its placeholders filled with
stand-in values, and the controller holds a rollout whose query does not parse, or is a range vector (a
condition and an Event, nothing changes on devices). A query that parses is remembered; an unreachable
Prometheus proves nothing either way (the analysis will be inconclusive, which never passes).
"""

from __future__ import annotations

from collections.abc import Iterable

import aiohttp

from fedfleet.operator.prometheus import PrometheusClient, PrometheusError, QueryProblem
from fedfleet.rollout.queries import PLACEHOLDERS, render

#: Values for the placeholders when only the syntax matters: a well-formed digest and names.
_DIGEST = "sha256:" + "0" * 64
_STAND_INS = {name: _DIGEST if name in ("version", "baseline") else "syntax-check" for name in PLACEHOLDERS}
#: Result types a query has by its syntax, whatever the data: a range vector or a string is never one number.
_NEVER_ONE_VALUE = ("'matrix'", "'string'")
#: Templates known to parse, per controller; bounded so that a stream of edited specs cannot grow it.
MAX_REMEMBERED = 1024


class QuerySyntax:
    def __init__(self) -> None:
        self._parsed: set[tuple[str, str]] = set()  # (Prometheus address, template)

    async def first_unparsable(
        self,
        address: str,
        templates: Iterable[tuple[str, str]],
        session: aiohttp.ClientSession | None = None,
    ) -> str | None:
        """For (field, template) pairs: "<field>: <Prometheus's parse error>" for the first that does not
        parse, else None."""
        client = PrometheusClient(address)
        for field, template in templates:
            if (address, template) in self._parsed:
                continue
            try:
                await client.query(render(template, _STAND_INS), session)
            except PrometheusError as err:
                if err.problem == QueryProblem.QUERY_ERROR and "parse error" in str(err):
                    return f"{field}: does not parse as PromQL ({err})"
                if err.problem == QueryProblem.NOT_A_SCALAR and any(k in str(err) for k in _NEVER_ONE_VALUE):
                    return f"{field}: can never give one value ({err})"
                if err.problem != QueryProblem.NOT_A_SCALAR:
                    continue  # unreachable or failing: nothing learnt, ask again next time
            if len(self._parsed) >= MAX_REMEMBERED:
                self._parsed.clear()
            self._parsed.add((address, template))
        return None
