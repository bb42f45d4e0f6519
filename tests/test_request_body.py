"""``parse_json``: orjson reads what it can, the standard library the rest, and the two agree on every body."""

from __future__ import annotations

import json

import pytest
from hypothesis import given

from service.errors import Problem
from service.request_body import MAX_JSON_DEPTH, parse_json
from tests.jobs.test_units import JSON_VALUES


@given(JSON_VALUES)
def test_a_body_reads_as_the_standard_library_reads_it(value: object) -> None:
    for body in (json.dumps(value).encode(), json.dumps(value, ensure_ascii=False).encode()):
        # repr: the same types too, 2**64 stays an int and 1.0 a float
        assert repr(parse_json(body)) == repr(json.loads(body))


@pytest.mark.parametrize(
    ("body", "value"),
    [
        (b'{"n": 18446744073709551616}', {"n": 2**64}),  # past 64 bits: orjson would read a float
        (b'{"n": -99999999999999999999}', {"n": -(10**20) + 1}),
        (b'"\\ud800"', "\ud800"),  # a lone surrogate, which orjson refuses and json reads
        (b'{"a": 1, "a": 2}', {"a": 2}),
        (b"-0", 0),
        (b"[1E2, 2.5e-3]", [100.0, 0.0025]),
    ],
)
def test_bodies_either_reader_could_misread_are_read_exactly(body: bytes, value: object) -> None:
    assert repr(parse_json(body)) == repr(value)


@pytest.mark.parametrize(
    ("body", "reason"),
    [
        (b"{not json", "Expecting property name enclosed in double quotes at line 1, column 2"),
        (b'{"x": NaN}', "NaN is not a JSON number"),
        (b'{"x": -Infinity}', "-Infinity is not a JSON number"),
        (b'{"x": 1e999}', "1e999 is beyond the range of a number"),
        (b"[1,]", "Expecting value at line 1, column 4"),
        (b"\xef\xbb\xbf{}", "Unexpected UTF-8 BOM (decode using utf-8-sig) at line 1, column 1"),
        (b'{"a": "\xff"}', "it is not UTF-8 (byte 7)"),
        (b"[" * (MAX_JSON_DEPTH + 1) + b"]" * (MAX_JSON_DEPTH + 1), f"it nests deeper than {MAX_JSON_DEPTH} levels"),
        (b"[" * 2000 + b"]" * 2000, f"it nests deeper than {MAX_JSON_DEPTH} levels"),
        (b"7" * 5000, "a number has too many digits"),
    ],
)
def test_a_body_that_is_not_strict_json_is_refused_with_the_reason(body: bytes, reason: str) -> None:
    with pytest.raises(Problem) as refused:
        parse_json(body)
    assert refused.value.status == 400
    assert refused.value.detail == f"the request body is not valid JSON: {reason}"


def test_nesting_up_to_the_limit_is_read() -> None:
    depth = MAX_JSON_DEPTH
    assert parse_json(b"[" * depth + b"]" * depth) is not None
    assert parse_json(b'["' + b"[" * 500 + b'"]') == ["[" * 500]  # brackets in a string are not nesting
