"""``POST /v1/jobs``'s quick check accepts only what its schemas would load, and loads it as they do."""

from __future__ import annotations

from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st
from marshmallow import ValidationError

from service.api.job_schemas import EnqueueHeadersSchema, EnqueueSchema, plain_enqueue

JSON = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False, allow_infinity=False) | st.text(max_size=5),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=5), inner, max_size=3),
    max_leaves=8,
)
NUMBERS = st.integers(min_value=-10, max_value=200_000) | st.floats(allow_nan=False, allow_infinity=False)
BODIES = (
    st.fixed_dictionaries(
        {},
        optional={
            "task": st.text(max_size=20) | JSON,
            "args": st.dictionaries(st.text(max_size=5), JSON, max_size=3) | JSON,
            "defer_seconds": NUMBERS | JSON,
            "other": JSON,
        },
    )
    | JSON
)
KEYS = st.none() | st.text(max_size=8) | st.sampled_from(["k-1", " k", "k ", "x" * 255, "x" * 256, "é"])


def schemas_load(body: Any, key: str | None) -> tuple[dict[str, Any], str | None] | None:
    """What the route's schemas load from ``body`` and the header, or ``None`` when they refuse either."""
    try:
        data = EnqueueSchema().load(body)
        headers = EnqueueHeadersSchema().load({} if key is None else {"Idempotency-Key": key})
    except ValidationError:
        return None
    return data, headers.get("idempotency_key")


@settings(max_examples=600, deadline=None)
@given(BODIES, KEYS)
def test_what_the_quick_check_accepts_the_schemas_load_the_same(body: Any, key: str | None) -> None:
    plain = plain_enqueue(body, key)

    if plain is not None:
        assert plain == schemas_load(body, key)


def test_the_common_requests_pass_the_quick_check() -> None:
    for body, key in [
        ({"task": "diagnostics.ping"}, None),
        ({"task": "diagnostics.ping", "args": {}}, "retry-1"),
        ({"task": "webhooks.deliver", "args": {"url": "https://example.com"}, "defer_seconds": 30}, None),
        ({"task": "diagnostics.sleep", "args": {"seconds": 1}, "defer_seconds": 86_400.0}, None),
    ]:
        assert plain_enqueue(body, key) == schemas_load(body, key)
        assert plain_enqueue(body, key) is not None


def test_what_the_schemas_refuse_is_left_to_them() -> None:
    for body, key in [
        ({"task": "diagnostics.ping", "priority": 1}, None),
        ({"task": 5}, None),
        ({"task": "diagnostics.ping", "args": []}, None),
        ({"task": "diagnostics.ping", "defer_seconds": True}, None),
        ({"task": "diagnostics.ping", "defer_seconds": "5"}, None),
        ({"task": "diagnostics.ping", "defer_seconds": -1}, None),
        ({"task": "diagnostics.ping", "defer_seconds": 86_401}, None),
        ({"task": "diagnostics.ping"}, " padded"),
        ({}, None),
        ([], None),
    ]:
        assert plain_enqueue(body, key) is None
        assert schemas_load(body, key) is None
