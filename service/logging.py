"""Structured logging: one JSON object a line in production, readable lines in dev.

Every record, from our code, aiohttp, arq or redis-py, goes through the same processors,
and the last of them hides secrets: the configured passwords and tokens by value, and by
shape the password part of any URL, every API key (``otto_`` and hex digits: all but
the 8-digit prefix that ``keys list`` shows) and every tenant's webhook signing secret
(``whsec_`` and hex digits: all of it).
"""

from __future__ import annotations

import logging
import re
import sys
from collections.abc import Iterable
from typing import Any, TextIO

import structlog
import structlog.tracebacks
from structlog.typing import EventDict, Processor, WrappedLogger

__all__ = ["configure_logging", "get_logger", "redact_text"]

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


def configure_logging(
    log_format: str = "json", *, level: int = logging.INFO, secrets: Iterable[str] = (), stream: TextIO | None = None
) -> None:
    """Route stdlib and structlog records through one pipeline to ``stream`` (stderr)."""
    global _secrets
    _secrets = tuple(s for s in secrets if s)

    shared: list[Processor] = [
        structlog.contextvars.merge_contextvars,
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
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level)
    # service.access_log.AccessLogger writes the access lines; aiohttp asks this logger whether they are on.
    logging.getLogger("aiohttp.access").setLevel(logging.INFO)


def get_logger(name: str) -> structlog.stdlib.BoundLogger:
    """A structured logger; fields go as keyword arguments, never into the message."""
    logger: structlog.stdlib.BoundLogger = structlog.stdlib.get_logger(name)
    return logger


def bind_context(**fields: Any) -> None:
    """Add fields to every log line of the current task (request id, job id, ...)."""
    structlog.contextvars.bind_contextvars(**fields)
