"""The OpenAPI 3 document (``/openapi.json``, Swagger UI at ``/docs``), built by aiohttp-apigami.

Everything that knows about apigami beyond the ``@docs`` / ``@request_schema`` decorators on
the handlers lives here: its set-up, its request validation middleware, and the turning of
its validation errors into the one problem+json error path.
"""

from __future__ import annotations

from typing import Any

from aiohttp import web
from aiohttp_apigami import setup_aiohttp_apispec, validation_middleware
from aiohttp_apigami.constants import SWAGGER_DICT

from service import __version__
from service.errors import Problem
from service.settings import SERVICE_NAME

__all__ = ["setup", "validation_middleware"]

SECURITY_SCHEMES = {
    "bearer": {"type": "http", "scheme": "bearer"},
    "apiKey": {"type": "apiKey", "in": "header", "name": "X-API-Key"},
}


def _validation_error(error: Any, req: Any, schema: Any, error_status_code: Any, error_headers: Any) -> None:
    messages = error.normalized_messages()
    errors = messages.get("json", messages) if isinstance(messages, dict) else messages
    raise Problem(422, "the request does not match the schema", type_="validation-error", errors=errors)


async def _strip_swagger2_fields(app: web.Application) -> None:
    """Drop the Swagger 2 ``produces`` that apigami's ``@docs`` adds even to an OpenAPI 3 document."""
    document = app[SWAGGER_DICT]  # apigami keeps the document under a string key
    for operations in document.get("paths", {}).values():
        for operation in operations.values():
            if isinstance(operation, dict):
                operation.pop("produces", None)
                operation.pop("consumes", None)


def setup(app: web.Application) -> None:
    """Serve the document and Swagger UI; apigami reads the routes when the app starts."""
    setup_aiohttp_apispec(
        app,
        title=SERVICE_NAME,
        version=__version__,
        openapi_version="3.0.3",
        url="/openapi.json",
        swagger_path="/docs",
        error_callback=_validation_error,
        components={"securitySchemes": SECURITY_SCHEMES},
    )
    app.on_startup.append(_strip_swagger2_fields)  # runs after apigami builds the document
