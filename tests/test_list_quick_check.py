"""``GET /v1/jobs``'s quick check accepts only the queries its schema would load, and loads them as it does."""

from __future__ import annotations

import asyncio
from typing import Any
from urllib.parse import urlencode

from aiohttp import web
from aiohttp.test_utils import make_mocked_request
from hypothesis import given, settings
from hypothesis import strategies as st
from webargs.aiohttpparser import AIOHTTPParser

from jobs.queue import STATUSES
from service.api.job_schemas import CURSOR_MAX, ListQuerySchema, plain_list_query

VALUES = (
    st.sampled_from(["", "0", "1", "5", "20", "100", "101", "007", "+5", "-1", " 5", "5 ", "1e2", "\u0661", "a_b-C9"])
    | st.sampled_from(STATUSES)
    | st.just("x" * CURSOR_MAX)
    | st.just("x" * (CURSOR_MAX + 1))
    | st.text(max_size=6)
)
QUERIES = st.lists(st.tuples(st.sampled_from(["limit", "status", "cursor", "Limit", "other"]), VALUES), max_size=4)


def _request(pairs: list[tuple[str, str]]) -> web.Request:
    return make_mocked_request("GET", "/v1/jobs?" + urlencode(pairs))


def schema_loads(request: web.Request) -> dict[str, Any] | None:
    """What the route's schema loads from the query (as apigami asks webargs to), or ``None`` when it refuses it."""
    parser = AIOHTTPParser()
    try:
        loaded: dict[str, Any] = asyncio.run(
            parser.parse(ListQuerySchema(), request, location="querystring", unknown=None)
        )
    except web.HTTPUnprocessableEntity:
        return None
    return loaded


@settings(max_examples=500, deadline=None)
@given(QUERIES)
def test_what_the_quick_check_accepts_the_schema_loads_the_same(pairs: list[tuple[str, str]]) -> None:
    request = _request(pairs)
    plain = plain_list_query(request.query)

    if plain is not None:
        assert plain == schema_loads(request)


def test_the_common_queries_pass_the_quick_check() -> None:
    for pairs in [[], [("limit", "10")], [("status", "queued"), ("limit", "100")], [("cursor", "AbC_-9")]]:
        request = _request(pairs)
        assert plain_list_query(request.query) is not None
        assert plain_list_query(request.query) == schema_loads(request)


def test_a_query_the_schema_refuses_is_left_to_it() -> None:
    for pairs in [[("limit", "0")], [("limit", "101")], [("status", "lost")], [("cursor", "a/b")], [("page", "2")]]:
        request = _request(pairs)
        assert plain_list_query(request.query) is None
        assert schema_loads(request) is None
