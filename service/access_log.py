"""The access log: one structured line per request, written by aiohttp's server after the response."""

from __future__ import annotations

import logging

from aiohttp import web
from aiohttp.abc import AbstractAccessLogger

from service.app_keys import REQUEST_ID
from service.logging import get_logger

__all__ = ["AccessLogger"]

access_log = get_logger("ottoai.access")


class AccessLogger(AbstractAccessLogger):
    """One structured line per request; the path without its query (it may carry secrets)."""

    def log(self, request: web.BaseRequest, response: web.StreamResponse, time: float) -> None:
        access_log.info(
            "request",
            method=request.method,
            path=request.path,
            status=response.status,
            duration_ms=round(time * 1000, 2),
            request_id=request.get(REQUEST_ID),
            remote=request.remote,
        )

    @property
    def enabled(self) -> bool:
        return self.logger.isEnabledFor(logging.INFO)
