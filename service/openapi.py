"""The OpenAPI 3 document (``/openapi.json``, Swagger UI at ``/docs``), built by aiohttp-apigami.

Everything that knows about apigami beyond the ``@request_schema`` decorators on the handlers
lives here: its set-up, its request validation, the turning of its validation errors into
the one problem+json error path, and ``operation``, the one way a handler documents itself.
``operation`` writes every answer an operation can give from a few facts (who may call it,
its success bodies, the problems its own code raises), so the statuses, problem bodies and
headers that every route shares are written once, here. apigami validates in a middleware,
a layer that every request of every route passes through; ``operation`` instead puts the
validation in front of the handlers that declare a ``@request_schema``, and only those.
"""

from __future__ import annotations

import enum
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any, NoReturn

from aiohttp import web
from aiohttp_apigami import docs, setup_aiohttp_apispec
from aiohttp_apigami.constants import APISPEC_PARSER, SCHEMAS_ATTR, SWAGGER_DICT
from apispec.ext.marshmallow import MarshmallowPlugin
from marshmallow import INCLUDE, Schema, fields, validate

from service import __version__
from service.errors import PROBLEM_TYPE_BASE, Problem
from service.request_body import JsonBodyParser
from service.request_validation import Handler, QuickCheck, validating
from service.settings import SERVICE_NAME

__all__ = ["REDIS_DOWN", "Access", "Answer", "TaggedUnion", "operation", "schema_ref", "setup"]

# What a 503 of an operation that needs Redis means, when nothing else can make it one.
REDIS_DOWN = "Redis cannot answer now; retry after `Retry-After`."

PROBLEM_MEDIA_TYPE = "application/problem+json"

# Every schema an operation refers to, by component name. Operations hold references, not
# classes: apispec rewrites the dicts it is given in place, so a class would be turned into
# a reference in the first app's document and never registered in the next one's.
_SCHEMAS: dict[str, type[Schema]] = {}


def _component_name(schema: type[Schema]) -> str:
    return schema.__name__.removesuffix("Schema")


def schema_ref(schema: type[Schema]) -> dict[str, str]:
    """A reference to ``schema``'s component (its class name without ``Schema``), registered by ``setup``."""
    name = _component_name(schema)
    registered = _SCHEMAS.setdefault(name, schema)
    assert registered is schema, f"two schemas are named {name}: {registered} and {schema}"
    return {"$ref": f"#/components/schemas/{name}"}


class Access(enum.Enum):
    """Who may call an operation; each kind brings its security schemes and its refusals."""

    PUBLIC = "public"
    API_KEY = "api key"  # /v1/*: a tenant's key, rate-limited
    INTERNAL = "internal"  # /internal/*: loopback, Bearer $INTERNAL_TOKEN, or the dashboard's session
    METRICS = "metrics"  # /metrics: loopback, or Bearer $METRICS_TOKEN


SECURITY_SCHEMES = {
    "apiKeyBearer": {"type": "http", "scheme": "bearer", "description": "An API key as `Authorization: Bearer <key>`."},
    "apiKey": {"type": "apiKey", "in": "header", "name": "X-API-Key", "description": "An API key."},
    "internalToken": {
        "type": "http",
        "scheme": "bearer",
        "description": "`$INTERNAL_TOKEN`; callers on loopback need none.",
    },
    "metricsToken": {
        "type": "http",
        "scheme": "bearer",
        "description": "`$METRICS_TOKEN`; callers on loopback need none.",
    },
}
_SECURITY: dict[Access, list[dict[str, list[str]]]] = {
    Access.API_KEY: [{"apiKeyBearer": []}, {"apiKey": []}],
    Access.INTERNAL: [{"internalToken": []}],
    Access.METRICS: [{"metricsToken": []}],
}


class ProblemSchema(Schema):
    """An RFC 9457 problem: the four members every error of this API has; others are extensions."""

    class Meta:
        unknown = INCLUDE  # RFC 9457 extension members

    type = fields.String(
        required=True,
        metadata={"format": "uri", "description": f"Identifies the kind of problem, under `{PROBLEM_TYPE_BASE}`."},
    )
    title = fields.String(required=True, metadata={"description": "The HTTP reason phrase of the status."})
    status = fields.Integer(required=True, validate=validate.Range(min=400, max=599))
    detail = fields.String(required=True, metadata={"description": "What went wrong with this request."})


class ValidationProblemSchema(ProblemSchema):
    """A 422 (and a 400 for an unreadable body): ``errors`` maps each refused field to its messages."""

    errors = fields.Dict(
        keys=fields.String(),
        required=True,
        metadata={"description": "Field (or location) → messages, nested as the request is."},
    )


class QuotaProblemSchema(ProblemSchema):
    """A 429: the request was refused by a rate limit or a quota."""

    violated_policies = fields.List(
        fields.String(),
        data_key="violated-policies",
        metadata={"description": "The empty buckets, when a rate limit refused the request (`type` quota-exceeded)."},
    )


@dataclass(frozen=True)
class _Header:
    """A response header: a component of the document, referred to wherever it is ``required`` as there."""

    description: str
    schema: Mapping[str, Any]
    required: bool = False

    def document(self) -> dict[str, Any]:
        return {"description": self.description, "required": self.required, "schema": dict(self.schema)}

    def reference(self, name: str, required: bool) -> dict[str, Any]:
        if required == self.required:
            return {"$ref": f"#/components/headers/{name}"}
        return {**self.document(), "required": required}


HEADERS = {
    "X-Request-ID": _Header(
        "The request's id: the caller's `X-Request-ID` when it is 1 to 128 of `[A-Za-z0-9._:-]`, else a new one.",
        {"type": "string", "pattern": r"^[A-Za-z0-9._:-]{1,128}$"},
        required=True,
    ),
    "RateLimit-Policy": _Header(
        'The buckets this request spends, as `"name";q=<quota>;w=<window s>` (draft-ietf-httpapi-ratelimit-headers).',
        {"type": "string", "example": '"burst";q=20;w=2, "sustained";q=600;w=60'},
    ),
    "RateLimit": _Header(
        'The bucket closest to empty, as `"name";r=<remaining>;t=<seconds until full>`.',
        {"type": "string", "example": '"burst";r=19;t=1'},
    ),
    "Retry-After": _Header(
        "Whole seconds until a retry can succeed.", {"type": "integer", "minimum": 1}, required=True
    ),
    "Location": _Header("The job's URL.", {"type": "string", "pattern": r"^/v1/jobs/[^/]+$"}, required=True),
    "Idempotent-Replayed": _Header(
        "Present when an `Idempotency-Key` retry returned the job its first request created.",
        {"type": "string", "enum": ["true"]},
    ),
    "WWW-Authenticate": _Header("The scheme to authenticate with.", {"type": "string"}, required=True),
    "Allow": _Header("The methods this path serves.", {"type": "string"}, required=True),
    "Accept-Encoding": _Header("The content codings a body may have.", {"type": "string"}),
    "Cache-Control": _Header(
        "Never cached: each answer is a fresh check.", {"type": "string", "enum": ["no-store"]}, required=True
    ),
}


@dataclass(frozen=True)
class Answer:
    """An answer an operation gives on purpose (not a problem): its status, body and headers.

    ``headers`` maps a name of ``HEADERS`` to whether the answer always carries it; ``links``
    are OpenAPI link objects, which tell clients (and schemathesis's stateful tests) where
    the body's values lead.
    """

    status: int
    description: str
    schema: type[Schema] | Mapping[str, Any]
    media_type: str = "application/json"
    headers: Mapping[str, bool] = field(default_factory=dict)
    links: Mapping[str, Mapping[str, Any]] = field(default_factory=dict)


# The problems every operation of an access kind can answer, with their default descriptions;
# an operation adds its own (and may reword these) through ``operation(problems=...)``.
_ALWAYS = {
    405: "Another method on this path; `Allow` names the ones it serves.",
    413: "The declared body is larger than 1 MiB: refused before it is read.",
    500: "An unexpected error; it has been logged, and the body reveals nothing of it.",
}
_BY_ACCESS: dict[Access, dict[int, str]] = {
    Access.PUBLIC: {},
    Access.API_KEY: {
        401: "No valid API key (callers without one are rate-limited by address, so guessing ends in 429).",
        429: "A rate limit refused the request: `violated-policies` names the empty buckets.",
        503: "Redis cannot answer now (or a fail-closed rate limit cannot reach it); retry after `Retry-After`.",
    },
    Access.INTERNAL: {
        401: "From outside loopback without `Authorization: Bearer $INTERNAL_TOKEN` (or the dashboard's session).",
        403: "From outside loopback while `INTERNAL_TOKEN` is not set; from a web page without the token or the "
        "dashboard's session, even on loopback; or a change asked with the session but without its CSRF token.",
    },
    Access.METRICS: {
        401: "From outside loopback without `Authorization: Bearer $METRICS_TOKEN`.",
        403: "From outside loopback while `METRICS_TOKEN` is not set.",
    },
}
_PROBLEM_SCHEMAS: dict[int, type[Schema]] = {422: ValidationProblemSchema, 429: QuotaProblemSchema}
_PROBLEM_HEADERS: dict[int, dict[str, bool]] = {
    401: {"WWW-Authenticate": True},
    405: {"Allow": True},
    415: {"Accept-Encoding": False},
    429: {"Retry-After": True},
    503: {"Retry-After": False},
}
_RATE_LIMIT_HEADERS = {"RateLimit-Policy": False, "RateLimit": False}


def _schema(schema: type[Schema] | Mapping[str, Any]) -> dict[str, Any]:
    return schema_ref(schema) if isinstance(schema, type) else dict(schema)


def _headers(names: Mapping[str, bool]) -> dict[str, Any]:
    return {name: HEADERS[name].reference(name, required) for name, required in {"X-Request-ID": True, **names}.items()}


def _responses(access: Access, answers: Iterable[Answer], problems: Mapping[int, str]) -> dict[str, Any]:
    """Every response of an operation: its answers, then each problem it can give, by status."""
    shared = _RATE_LIMIT_HEADERS if access is Access.API_KEY else {}
    responses: dict[int, dict[str, Any]] = {}
    for answer in answers:
        responses[answer.status] = {
            "description": answer.description,
            "content": {answer.media_type: {"schema": _schema(answer.schema)}},
            "headers": _headers({**shared, **answer.headers}),
        }
        if answer.links:
            responses[answer.status]["links"] = {name: dict(link) for name, link in answer.links.items()}
    for status, description in {**_ALWAYS, **_BY_ACCESS[access], **problems}.items():
        if status in responses:
            continue
        responses[status] = {
            "description": description,
            "content": {PROBLEM_MEDIA_TYPE: {"schema": schema_ref(_PROBLEM_SCHEMAS.get(status, ProblemSchema))}},
            "headers": _headers({**shared, **_PROBLEM_HEADERS.get(status, {})}),
        }
    return {str(status): responses[status] for status in sorted(responses)}


def operation(
    *,
    operation_id: str,
    summary: str,
    tags: Sequence[str],
    access: Access,
    answers: Sequence[Answer],
    problems: Mapping[int, str] = MappingProxyType({}),
    description: str | None = None,
    parameters: Sequence[Mapping[str, Any]] = (),
    request_body: str | None = None,
    form: type[Schema] | None = None,
    quick_check: QuickCheck | None = None,
) -> Callable[[Handler], Handler]:
    """Document a handler: every status it can answer, each with its body and headers.

    ``problems`` are the statuses the handler's own code raises, each with what it means for
    this operation; those of its ``access`` kind and those every route shares are added here.
    ``request_body`` names a ``TaggedUnion`` of ``setup``, the required JSON body; it replaces
    the body ``@request_schema`` derives, which has one shape only. ``form``: the body is an
    HTML form's (``application/x-www-form-urlencoded``) with these fields.

    ``quick_check``, for a busy route with ``@request_schema``s: a plain-code test of its
    common request (``service/request_validation.py``). When it passes it has put what the
    schemas would have loaded into the request, under a key the handler looks at first, and
    validation is skipped; when it does not, the schemas validate and word any error.
    """
    extra: dict[str, Any] = {"operation_id": operation_id}
    if access in _SECURITY:
        extra["security"] = _SECURITY[access]
    if request_body is not None:
        schema = {"$ref": f"#/components/schemas/{request_body}"}
        extra["requestBody"] = {"required": True, "content": {"application/json": {"schema": schema}}}
    if form is not None:
        content = {"application/x-www-form-urlencoded": {"schema": schema_ref(form)}}
        extra["requestBody"] = {"required": True, "content": content}
    document = docs(
        tags=list(tags),
        summary=summary,
        description=description,
        parameters=[dict(parameter) for parameter in parameters],
        responses=_responses(access, answers, problems),  # type: ignore[arg-type]  # apigami types the codes as int
        **extra,
    )

    def decorate(handler: Handler) -> Handler:
        documented = document(handler)
        # apigami's docs() gives every handler a list of schemas; only @request_schema fills it.
        return validating(documented, quick_check) if getattr(documented, SCHEMAS_ATTR, None) else documented

    return decorate


@dataclass(frozen=True)
class TaggedUnion:
    """A JSON object with one schema per value of its ``tag`` member.

    It depends on the app (a job's arguments on the task, the tasks on the app's registry),
    so ``setup`` puts it among each app's schemas, where operations refer to it by name.
    """

    tag: str
    variants: Mapping[str, type[Schema]]

    def document(self) -> dict[str, Any]:
        refs = {value: f"#/components/schemas/{_component_name(schema)}" for value, schema in self.variants.items()}
        discriminator = {"propertyName": self.tag, "mapping": refs}
        return {"oneOf": [{"$ref": ref} for ref in refs.values()], "discriminator": discriminator}


def _validation_error(error: Any, req: Any, schema: Any, error_status_code: Any, error_headers: Any) -> NoReturn:
    messages = error.normalized_messages()
    errors = messages.get("json", messages) if isinstance(messages, dict) else messages
    raise Problem(422, "the request does not match the schema", type_="validation-error", errors=errors)


def _url_pattern(converter: Any, field: fields.Field, **kwargs: Any) -> dict[str, Any]:
    """A URL field names its schemes: apispec's ``format: url`` is no standard format and admits any scheme."""
    for validator in field.validators:
        if isinstance(validator, validate.URL):
            return {"format": "uri", "pattern": f"^(?:{'|'.join(sorted(validator.schemes))})://"}
    return {}


_JSON_BUT_NULL = {"anyOf": [{"type": kind} for kind in ("object", "array", "string", "number", "boolean")]}


def _untyped_without_null(converter: Any, field: fields.Field, ret: Mapping[str, Any], **kwargs: Any) -> dict[str, Any]:
    """An untyped field (``fields.Raw``) that refuses null says so: in OpenAPI 3.0 ``{}`` admits null too."""
    if field.allow_none or ret.keys() & {"type", "$ref", "allOf", "anyOf", "oneOf"}:
        return {}
    return dict(_JSON_BUT_NULL)


async def _strip_swagger2_fields(app: web.Application) -> None:
    """Drop the Swagger 2 ``produces`` that apigami's ``@docs`` adds even to an OpenAPI 3 document."""
    document = app[SWAGGER_DICT]  # apigami keeps the document under a string key
    for operations in document.get("paths", {}).values():
        for operation in operations.values():
            if isinstance(operation, dict):
                operation.pop("produces", None)
                operation.pop("consumes", None)


def setup(app: web.Application, *, unions: Mapping[str, TaggedUnion] = MappingProxyType({})) -> None:
    """Serve the document and Swagger UI; apigami reads the routes when the app starts.

    ``unions`` are this app's own schemas, by name, for operations' ``request_body``.
    """
    apispec = setup_aiohttp_apispec(
        app,
        title=SERVICE_NAME,
        version=__version__,
        openapi_version="3.0.3",
        url="/openapi.json",
        swagger_path="/docs",
        error_callback=_validation_error,
        components={
            "securitySchemes": SECURITY_SCHEMES,
            "headers": {name: header.document() for name, header in HEADERS.items()},
        },
    )
    spec = apispec.spec
    for plugin in spec.plugins:
        if isinstance(plugin, MarshmallowPlugin):
            for attribute_function in (_url_pattern, _untyped_without_null):
                plugin.converter.add_attribute_function(attribute_function)  # type: ignore[union-attr]
    variants = (schema for union in unions.values() for schema in union.variants.values())
    for schema in (*_SCHEMAS.values(), *variants):
        name = _component_name(schema)
        if name not in spec.components.schemas:  # not already there as another one's nested schema
            spec.components.schema(name, schema=schema)
    for name, union in unions.items():
        spec.components.schema(name, component=union.document())
    app[APISPEC_PARSER] = JsonBodyParser(error_handler=_validation_error)  # JSON bodies read the strict way
    app.on_startup.append(_strip_swagger2_fields)  # runs after apigami builds the document
