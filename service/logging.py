"""Structured logging: one JSON object a line in production, readable lines in dev.

Every record, from our code, aiohttp, arq or redis-py, goes through the same processors,
and the last of them hides secrets: the configured passwords and tokens by value, and by
shape the password part of any URL, every API key (``otto_`` and hex digits: all but
the 8-digit prefix that ``keys list`` shows) and every tenant's webhook signing secret
(``whsec_`` and hex digits: all of it).

The one exception is the access log in the JSON format: a line per request through that
pipeline cost more than a whole bare request, so ``service.access_log`` writes its fixed
fields itself (each text value through ``redact_text``) into ``access_lines()``, a
``LineBuffer`` on the same stream that writes once per event-loop turn.
"""

from __future__ import annotations

import asyncio
import atexit
import logging
import re
import sys
from collections.abc import Iterable
from contextvars import ContextVar
from json.encoder import encode_basestring_ascii
from typing import Any, TextIO

import structlog
import structlog.tracebacks
from structlog.typing import EventDict, Processor, WrappedLogger

__all__ = [
    "LineBuffer",
    "access_lines",
    "configure_logging",
    "flush_access_lines",
    "get_logger",
    "redact_text",
    "redacted_json",
]

_URL_PASSWORD = re.compile(r"(?P<scheme>[a-zA-Z][a-zA-Z0-9+.-]*://[^:/@\s]*:)[^@\s]+@")
_API_KEY = re.compile(r"(?P<prefix>otto_[0-9a-fA-F]{8})[0-9a-fA-F]+")
_WEBHOOK_SECRET = re.compile(r"whsec_[0-9a-fA-F]+")
_secrets: tuple[str, ...] = ()


def redact_text(text: str, secrets: Iterable[str] = ()) -> str:
    """Hide URL passwords, API keys, webhook signing secrets and every known secret in ``text``."""
    # The substring tests are cheap next to a regular expression, and most lines have neither.
    if "://" in text:
        text = _URL_PASSWORD.sub(r"\g<scheme>***@", text)
    if "otto_" in text:
        text = _API_KEY.sub(r"\g<prefix>***", text)
    if "whsec_" in text:
        text = _WEBHOOK_SECRET.sub("whsec_***", text)
    for secret in (*_secrets, *secrets):
        if secret in text:
            text = text.replace(secret, "***")
    return text


# redacted_json's memory: the access log's methods, paths and addresses repeat request after request.
_json_texts: dict[str, str] = {}
_JSON_TEXTS_MAX = 4096


def redacted_json(text: str) -> str:
    """``text`` with its secrets hidden (``redact_text``), as a JSON string; remembered for the next time."""
    json_text = _json_texts.get(text)
    if json_text is None:  # a path with a job's id is new every time: no exception raised for it
        if len(_json_texts) >= _JSON_TEXTS_MAX:
            _json_texts.clear()
        json_text = _json_texts[text] = encode_basestring_ascii(redact_text(text))
    return json_text


def _redact_value(value: Any) -> Any:
    if isinstance(value, str):
        return redact_text(value)
    if isinstance(value, dict):
        return {k: _redact_value(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_redact_value(v) for v in value]
    if isinstance(value, BaseException):
        return redact_text(f"{type(value).__name__}: {value}")
    return value


def _redact(_: WrappedLogger, __: str, event_dict: EventDict) -> EventDict:
    return {key: _redact_value(value) for key, value in event_dict.items()}


class LineBuffer:
    """Whole lines for ``stream``, kept until the end of the event-loop turn and written in one call.

    A line written outside a running loop is written at once. ``flush`` writes what is kept;
    it runs at the end of each turn that wrote, and at exit (``configure_logging`` registers
    it), so a process that stops cleanly, on SIGTERM too, loses no line.
    """

    def __init__(self, stream: TextIO) -> None:
        self.stream = stream
        self._lines: list[str] = []
        self._flush_on: asyncio.AbstractEventLoop | None = None  # the loop whose next turn flushes

    def write(self, line: str) -> None:
        """Keep ``line`` (ending in a newline) for this turn's write."""
        self._lines.append(line)
        flush_on = self._flush_on
        if flush_on is not None and flush_on.is_running():  # this turn's flush is due (cheaper than asking the loop)
            return
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:  # no loop runs: nothing would flush it later
            self.flush()
            return
        if self._flush_on is not loop:  # also when a loop stopped before its flush ran
            self._flush_on = loop
            loop.call_soon(self.flush)

    def flush(self) -> None:
        """Write the kept lines, if any, and flush the stream."""
        self._flush_on = None
        if not self._lines:
            return
        text = "".join(self._lines)
        self._lines.clear()
        try:
            self.stream.write(text)
            self.stream.flush()
        except (OSError, ValueError):  # a closed or broken stream: as logging's handlers, never raise to the caller
            pass


_access_lines: LineBuffer | None = None


def access_lines() -> LineBuffer | None:
    """Where the access log writes its JSON lines; ``None`` when lines go through structlog (the console format)."""
    return _access_lines


@atexit.register
def flush_access_lines() -> None:
    """Write the access lines kept for the end of this loop turn now (a server that stops calls it)."""
    if _access_lines is not None:
        _access_lines.flush()


def configure_logging(
    log_format: str = "json", *, level: int = logging.INFO, secrets: Iterable[str] = (), stream: TextIO | None = None
) -> None:
    """Route stdlib and structlog records through one pipeline to ``stream`` (stderr)."""
    global _secrets, _access_lines
    _secrets = tuple(s for s in secrets if s)
    _json_texts.clear()  # redacted with the secrets of before
    flush_access_lines()
    _access_lines = LineBuffer(stream or sys.stderr) if log_format == "json" else None

    shared: list[Processor] = [
        structlog.contextvars.merge_contextvars,
        _add_request_id,
        structlog.stdlib.add_log_level,
        structlog.stdlib.add_logger_name,
        structlog.processors.TimeStamper(fmt="iso", utc=True),
    ]
    renderer: Processor
    if log_format == "console":
        renderer = structlog.dev.ConsoleRenderer(colors=False)
        final: list[Processor] = [structlog.processors.format_exc_info, _redact, renderer]
    else:
        renderer = structlog.processors.JSONRenderer()
        # Tracebacks without local variables: locals may hold API keys and passwords.
        tracebacks = structlog.processors.ExceptionRenderer(
            structlog.tracebacks.ExceptionDictTransformer(show_locals=False)
        )
        final = [tracebacks, _redact, renderer]

    structlog.configure(
        processors=[*shared, structlog.stdlib.ProcessorFormatter.wrap_for_formatter],
        logger_factory=structlog.stdlib.LoggerFactory(),
        wrapper_class=structlog.stdlib.BoundLogger,
        cache_logger_on_first_use=True,
    )
    formatter = structlog.stdlib.ProcessorFormatter(
        foreign_pre_chain=[*shared, structlog.stdlib.ExtraAdder()],
        processors=[structlog.stdlib.ProcessorFormatter.remove_processors_meta, *final],
    )
    handler = logging.StreamHandler(stream or sys.stderr)
    handler.setFormatter(formatter)
    # What no line shows, which stdlib logging would otherwise work out for every record: the
    # call site (a walk up the stack), the thread, the process (a system call) and its name.
    # The logging HOWTO's "Optimization"; a quarter of the worker's per-job line.
    logging._srcfile = None
    logging.logThreads = False
    logging.logProcesses = False
    logging.logMultiprocessing = False
    if sys.version_info >= (3, 12):
        logging.logAsyncioTasks = False
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level)
    # service.access_log.AccessLogger writes the access lines; aiohttp asks this logger whether they are on.
    logging.getLogger("aiohttp.access").setLevel(logging.INFO)


def get_logger(name: str) -> structlog.stdlib.BoundLogger:
    """A structured logger; fields go as keyword arguments, never into the message."""
    logger: structlog.stdlib.BoundLogger = structlog.stdlib.get_logger(name)
    return logger


# The request being handled, set once per request by the web process's middleware: a plain
# ContextVar, because structlog's bind_contextvars (a dict and a token per call) cost ~2 µs.
_request_id: ContextVar[str | None] = ContextVar("request_id", default=None)


def bind_request_id(request_id: str) -> None:
    """Put ``request_id`` on every log line of the current task (aiohttp runs each request in a task of its own)."""
    _request_id.set(request_id)


def _add_request_id(_: WrappedLogger, __: str, event_dict: EventDict) -> EventDict:
    request_id = _request_id.get()
    if request_id is not None:
        event_dict.setdefault("request_id", request_id)
    return event_dict


def bind_context(**fields: Any) -> None:
    """Add fields to every log line of the current task (request id, job id, ...)."""
    structlog.contextvars.bind_contextvars(**fields)
