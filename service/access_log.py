"""The access log: one structured line per request, written by aiohttp's server after the response.

In the JSON format (production) a line is written here, not through structlog: the same
fields as every other line (``event``, ``level``, ``logger``, ``timestamp``), in a fixed
order, each text value through ``redact_text`` and then JSON's own string encoder, into
the ``LineBuffer`` that writes once per event-loop turn. structlog's pipeline cost ~41 µs
a line, more than a whole bare request; this costs a few. The console format (``dev``)
keeps structlog's readable lines.
"""

from __future__ import annotations

import logging
import time
from json.encoder import encode_basestring_ascii

from aiohttp import web
from aiohttp.abc import AbstractAccessLogger

from service.app_keys import REQUEST_ID
from service.logging import LineBuffer, access_lines, get_logger, redact_text, redacted_json

__all__ = ["AccessLogger", "access_line"]

ACCESS_LOGGER = "ottoai.access"
access_log = get_logger(ACCESS_LOGGER)

_TAIL = '"event": "request", "level": "info", "logger": "' + ACCESS_LOGGER + '", "timestamp": "'
_second = -1
_second_text = ""


def _text(value: str | None) -> str:
    """A JSON string of ``value`` with its secrets hidden, or ``null``."""
    return "null" if value is None else redacted_json(value)


def _milliseconds(duration_s: float) -> str:
    """``repr(round(duration_s * 1000, 2))`` in half the time: two decimals, one trailing zero dropped.

    The same text for every duration below 10^16 ms (the tests hold it to ``round``).
    """
    text = f"{duration_s * 1000:.2f}"
    return text[:-1] if text[-1] == "0" and text[-2] != "." else text


def access_line(
    method: str, path: str, status: int, duration_s: float, request_id: str | None, remote: str | None, now: float
) -> str:
    """One access-log line in the JSON format, as structlog's renderer would write it (UTC, microseconds)."""
    global _second, _second_text
    second = int(now)
    if second != _second:  # the date and time to the second change once a second, not once a request
        _second, _second_text = second, time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(second))
    # The request id is new every time: redacted here, not remembered.
    request_id_json = "null" if request_id is None else encode_basestring_ascii(redact_text(request_id))
    return (
        f'{{"method": {_text(method)}, "path": {_text(path)}, "status": {status}, '
        f'"duration_ms": {_milliseconds(duration_s)}, "request_id": {request_id_json}, "remote": {_text(remote)}, '
        f'{_TAIL}{_second_text}.{int((now - second) * 1e6):06d}Z"}}\n'
    )


class AccessLogger(AbstractAccessLogger):
    """One structured line per request; the path without its query (it may carry secrets).

    aiohttp makes one per connection, so it only looks up where lines go.
    """

    __slots__ = ("_lines",)

    def __init__(self, logger: logging.Logger, log_format: str) -> None:
        super().__init__(logger, log_format)
        self._lines: LineBuffer | None = access_lines()

    def log(self, request: web.BaseRequest, response: web.StreamResponse, time_s: float) -> None:
        lines = self._lines
        if lines is not None:
            lines.write(
                access_line(
                    request.method,
                    request.path,
                    response.status,
                    time_s,
                    request.get(REQUEST_ID),
                    request.remote,
                    time.time(),
                )
            )
            return
        access_log.info(
            "request",
            method=request.method,
            path=request.path,
            status=response.status,
            duration_ms=round(time_s * 1000, 2),
            request_id=request.get(REQUEST_ID),
            remote=request.remote,
        )

    @property
    def enabled(self) -> bool:
        return self.logger.isEnabledFor(logging.INFO)
