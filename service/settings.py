"""Every setting of the service, read once from the environment and validated.

Nothing else in the project reads ``os.environ``: processes call ``Settings.from_env`` at
start and pass the frozen result down.
"""

from __future__ import annotations

import ipaddress
import os
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, fields, replace
from pathlib import Path
from typing import Any, Generic, Literal, TypeVar
from urllib.parse import SplitResult, unquote, urlsplit

__all__ = ["LogFormat", "RedisURL", "Settings", "SettingsError", "host_list", "redact_url", "split_host_port"]

SERVICE_NAME = "ottoai-backend"
LogFormat = Literal["json", "console"]

_TRUE = frozenset({"1", "true", "yes", "on"})
_FALSE = frozenset({"0", "false", "no", "off"})
_T = TypeVar("_T")
_Number = TypeVar("_Number", int, float)
_VARIABLE = "variable"  # the key of a field's _Variable in its metadata


class SettingsError(ValueError):
    """A setting is missing or malformed; ``str()`` is the one line the process prints."""

    def __init__(self, variable: str, problem: str) -> None:
        super().__init__(f"{variable}: {problem}")
        self.variable = variable
        self.problem = problem


def redact_url(url: str) -> str:
    """Return ``url`` with any password replaced by ``***`` (safe for logs and errors)."""
    try:
        parts = urlsplit(url)
    except ValueError:
        return "<unparseable URL>"
    if parts.password is None:
        return url
    user = parts.username or ""
    host = parts.netloc.rpartition("@")[2]
    return parts._replace(netloc=f"{user}:***@{host}").geturl()


@dataclass(frozen=True)
class RedisURL:
    """A validated Redis URL and the variable it came from.

    ``repr`` and ``str`` hide the password so that the object can be logged.
    """

    url: str = field(repr=False)
    variable: str
    scheme: str
    host: str | None
    port: int | None
    db: int
    username: str | None
    password: str | None = field(repr=False)
    path: str | None

    @property
    def tls(self) -> bool:
        return self.scheme == "rediss"

    @property
    def redacted(self) -> str:
        return redact_url(self.url)

    def __str__(self) -> str:
        return self.redacted

    @classmethod
    def parse(cls, variable: str, url: str) -> RedisURL:
        url = url.strip()
        try:
            parts = urlsplit(url)
            port = parts.port
        except ValueError as exc:
            raise SettingsError(variable, f"not a valid URL ({exc})") from None
        scheme = parts.scheme.lower()
        if scheme not in ("redis", "rediss", "unix"):
            raise SettingsError(variable, f"scheme must be redis, rediss or unix, got {scheme or 'nothing'}")
        if scheme == "unix":
            if not parts.path:
                raise SettingsError(variable, "unix:// URL needs a socket path, e.g. unix:///run/redis.sock")
            db = _parse_db_query(variable, parts)
            return cls(url, variable, scheme, None, None, db, _unq(parts.username), _unq(parts.password), parts.path)
        if not parts.hostname:
            raise SettingsError(variable, "no host in URL")
        db_text = parts.path.lstrip("/")
        if db_text:
            if not db_text.isdigit():
                raise SettingsError(variable, f"database must be a number after the last '/', got {db_text!r}")
            db = int(db_text)
        else:
            db = _parse_db_query(variable, parts)
        return cls(
            url, variable, scheme, parts.hostname, port or 6379, db, _unq(parts.username), _unq(parts.password), None
        )


def _unq(value: str | None) -> str | None:
    return unquote(value) if value else None


def _parse_db_query(variable: str, parts: SplitResult) -> int:
    for item in parts.query.split("&"):
        name, _, value = item.partition("=")
        if name == "db":
            if not value.isdigit():
                raise SettingsError(variable, f"db must be a number, got {value!r}")
            return int(value)
    return 0


def _bool(name: str, raw: str) -> bool:
    value = raw.lower()
    if value in _TRUE:
        return True
    if value in _FALSE:
        return False
    raise SettingsError(name, f"must be one of 1/0/true/false/yes/no/on/off, got {raw!r}")


def _port(name: str, raw: str) -> int:
    if not raw.isdigit() or not 1 <= int(raw) <= 65535:
        raise SettingsError(name, f"must be a port number from 1 to 65535, got {raw!r}")
    return int(raw)


def _in_range(kind: type[_Number], low: _Number, high: _Number) -> Callable[[str, str], _Number]:
    """A parser of an ``int`` or ``float`` from ``low`` to ``high``, both included."""
    # The messages differ by kind on purpose: a whole number shows as Python reads it, a
    # float bound in its short form (300, not 300.0) and a float value as it was written.
    whole = kind is int
    expected = "a whole number" if whole else "a number"
    bounds = f"{low} to {high}" if whole else f"{low:g} to {high:g}"

    def parse(name: str, raw: str) -> _Number:
        try:
            value = kind(raw)
        except ValueError:
            raise SettingsError(name, f"must be {expected}, got {raw!r}") from None
        if not low <= value <= high:  # also refuses nan
            raise SettingsError(name, f"must be from {bounds}, got {value if whole else raw}")
        return value

    return parse


def _listen_host(name: str, raw: str) -> str:
    try:
        ipaddress.ip_address(raw.strip("[]"))
    except ValueError:
        if not _is_hostname(raw):
            raise SettingsError(name, f"must be an IP address or host name, got {raw!r}") from None
    return raw.strip("[]")


def _is_hostname(value: str) -> bool:
    labels = value.rstrip(".").split(".")
    return 0 < len(value) <= 253 and all(
        0 < len(label) <= 63 and label.replace("-", "").isalnum() and label.isascii() and not label.startswith("-")
        for label in labels
    )


def host_list(name: str, raw: str) -> tuple[str, ...]:
    """Comma-separated ``host`` or ``host:port`` entries (``[v6]:port``), lower-cased; ``name`` is what to blame."""
    hosts: list[str] = []
    for item in raw.split(","):
        entry = item.strip().lower()
        if not entry:
            continue
        host, port = split_host_port(entry)
        if port is not None and not (port.isdigit() and 1 <= int(port) <= 65535):
            raise SettingsError(name, f"{entry!r}: port must be a number from 1 to 65535")
        try:
            ipaddress.ip_address(host)
        except ValueError:
            if not _is_hostname(host):
                raise SettingsError(name, f"{entry!r} is not a host or host:port") from None
        hosts.append(entry)
    return tuple(hosts)


def split_host_port(entry: str) -> tuple[str, str | None]:
    """``host`` or ``host:port`` (``[v6]:port``) as (host, port or None)."""
    if entry.startswith("["):  # [v6]:port
        host, _, rest = entry[1:].partition("]")
        return host, rest[1:] if rest.startswith(":") else None
    if entry.count(":") == 1:
        host, _, port = entry.partition(":")
        return host, port
    return entry, None


def _secret(name: str, raw: str) -> str:
    if len(raw) < 8:
        raise SettingsError(name, "must be at least 8 characters long")
    return raw


def _postgres_url(name: str, raw: str) -> str:
    try:
        parts = urlsplit(raw)
        parts.port  # noqa: B018 - validates the port
    except ValueError as exc:
        raise SettingsError(name, f"not a valid URL ({exc})") from None
    if parts.scheme not in ("postgres", "postgresql"):
        raise SettingsError(name, f"scheme must be postgres or postgresql, got {parts.scheme or 'nothing'}")
    if not parts.hostname and "host=" not in parts.query:
        raise SettingsError(name, "no host in URL")
    return raw


def _existing_file(name: str, raw: str) -> Path:
    path = Path(raw)
    if not path.is_file():
        raise SettingsError(name, f"no such file: {raw}")
    return path


def _log_format(name: str, raw: str) -> LogFormat:
    value = raw.lower()
    if value == "json":
        return "json"
    if value == "console":
        return "console"
    raise SettingsError(name, f"must be json or console, got {raw!r}")


@dataclass(frozen=True)
class _Variable(Generic[_T]):
    """Where a setting comes from: its environment variable, an old name still accepted, and its parser."""

    name: str
    parse: Callable[[str, str], _T]
    old_name: str | None = None

    def read(self, env: Mapping[str, str], default: _T, warnings: list[str]) -> _T:
        """The parsed value of the variable (or of its old name); ``default`` when neither is set or both blank."""
        if raw := env.get(self.name, "").strip():
            return self.parse(self.name, raw)
        if self.old_name and (raw := env.get(self.old_name, "").strip()):
            warnings.append(f"{self.old_name} is an old name; use {self.name}")
            return self.parse(self.old_name, raw)
        return default


def _from(
    variable: str, parse: Callable[[str, str], _T], default: _T, *, old_name: str | None = None, secret: bool = False
) -> _T:
    """A dataclass field read from ``variable`` by ``parse``; ``secret`` keeps its value out of ``repr``.

    Typed as the value (as ``dataclasses.field`` is), so mypy checks ``parse`` and ``default`` against the field.
    """
    return field(default=default, repr=not secret, metadata={_VARIABLE: _Variable(variable, parse, old_name)})


@dataclass(frozen=True)
class Settings:
    """The validated configuration of one process; each field names its variable, parser and default."""

    # REDIS_URL, or UPSTASH_REDIS_URL when it is unset: read by _redis_from_env.
    redis: RedisURL | None = None
    # The limiter's own Redis (a single server or a Redis Cluster node); None: the limiter uses ``redis``.
    rate_limit_redis: RedisURL | None = _from("RATE_LIMIT_REDIS_URL", RedisURL.parse, None)
    enable_worker: bool = _from("ENABLE_WORKER", _bool, True, old_name="ENABLE_CELERY")
    enable_cron: bool = _from("ENABLE_CRON", _bool, True, old_name="ENABLE_CELERY_BEAT")
    rate_limit_enabled: bool = _from("RATE_LIMIT_ENABLED", _bool, True)
    database_url: str | None = _from("DATABASE_URL", _postgres_url, None, secret=True)
    webhook_allowed_hosts: tuple[str, ...] = _from("WEBHOOK_ALLOWED_HOSTS", host_list, ())
    webhook_secret: str | None = _from("WEBHOOK_SECRET", _secret, None, secret=True)
    port: int = _from("PORT", _port, 8080)
    host: str = _from("HOST", _listen_host, "0.0.0.0")
    trust_proxy_headers: bool = _from("TRUST_PROXY_HEADERS", _bool, False)
    rate_limits_file: Path | None = _from("RATE_LIMITS_FILE", _existing_file, None)
    metrics_token: str | None = _from("METRICS_TOKEN", _secret, None, secret=True)
    # The second listener, for Fly's scraper on the private network (no token); 0 turns it off.
    metrics_port: int = _from("METRICS_PORT", _in_range(int, 0, 65535), 9091)
    internal_token: str | None = _from("INTERNAL_TOKEN", _secret, None, secret=True)
    log_format: LogFormat = _from("LOG_FORMAT", _log_format, "json")
    redis_max_connections: int = _from("REDIS_MAX_CONNECTIONS", _in_range(int, 1, 10_000), 50)
    redis_timeout_s: float = _from("REDIS_TIMEOUT_S", _in_range(float, 0.05, 300.0), 5.0)
    rate_limit_deadline_ms: float = _from("RATE_LIMIT_DEADLINE_MS", _in_range(float, 1.0, 10_000.0), 50.0)
    shutdown_timeout_s: float = _from("SHUTDOWN_TIMEOUT_S", _in_range(float, 0.0, 300.0), 4.0)
    # A connection that has not sent a whole request head this long after it opened (or after
    # its last response) is closed, however slowly its bytes trickle in; idle ones too.
    http_idle_timeout_s: float = _from("HTTP_IDLE_TIMEOUT_S", _in_range(float, 0.1, 3600.0), 5.0)
    # A request body that has not fully arrived this long after the handler asks for it is a 408.
    http_body_timeout_s: float = _from("HTTP_BODY_TIMEOUT_S", _in_range(float, 0.1, 300.0), 10.0)
    job_grace_s: float = _from("JOB_GRACE_S", _in_range(float, 0.0, 300.0), 3.0)
    job_lease_s: float = _from("JOB_LEASE_S", _in_range(float, 1.0, 300.0), 10.0)
    job_idle_poll_s: float = _from("JOB_IDLE_POLL_S", _in_range(float, 10.0, 3600.0), 30.0)
    job_retention_s: int = _from("JOB_RETENTION_S", _in_range(int, 60, 30 * 86_400), 86_400)
    worker_heartbeat_s: float = _from("WORKER_HEARTBEAT_S", _in_range(float, 1.0, 300.0), 20.0)
    worker_concurrency: int = _from("WORKER_CONCURRENCY", _in_range(int, 1, 1000), 10)
    # Quotas that protect the shared Redis from one tenant.
    job_args_max_bytes: int = _from("JOB_ARGS_MAX_BYTES", _in_range(int, 1024, 1024 * 1024), 64 * 1024)
    job_result_max_bytes: int = _from("JOB_RESULT_MAX_BYTES", _in_range(int, 1024, 16 * 1024 * 1024), 64 * 1024)
    job_unfinished_max: int = _from("JOB_UNFINISHED_MAX", _in_range(int, 1, 1_000_000), 1000)
    # Non-fatal remarks found while reading the environment, logged once logging is up.
    warnings: tuple[str, ...] = ()

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> Settings:
        """Build settings from ``env`` (``os.environ`` by default); raise ``SettingsError``.

        Variables are read in field order, so of two malformed ones the first field's is reported.
        """
        env = os.environ if env is None else env
        warnings: list[str] = []
        values: dict[str, Any] = {"redis": _redis_from_env(env, warnings)}
        for setting in fields(cls):
            variable = setting.metadata.get(_VARIABLE)
            if variable is not None:
                values[setting.name] = variable.read(env, setting.default, warnings)
        return cls(**values, warnings=tuple(warnings))

    def require_redis(self) -> RedisURL:
        """Return the Redis URL, or fail the way a missing required setting fails."""
        if self.redis is None:
            raise SettingsError("REDIS_URL", "not set (set REDIS_URL, or UPSTASH_REDIS_URL for Upstash)")
        return self.redis

    def limiter_redis(self) -> RedisURL:
        """The limiter's Redis: ``RATE_LIMIT_REDIS_URL`` when set, else the main Redis."""
        return self.rate_limit_redis or self.require_redis()

    @property
    def separate_limiter_redis(self) -> bool:
        """Whether the limiter has a Redis of its own (readiness and doctor check it too)."""
        return self.rate_limit_redis is not None and (self.redis is None or self.rate_limit_redis.url != self.redis.url)

    def with_redis(self, url: str) -> Settings:
        """A copy that uses ``url`` (used by ``dev`` once its embedded Redis is up)."""
        return replace(self, redis=RedisURL.parse("REDIS_URL", url))

    @property
    def secrets(self) -> tuple[str, ...]:
        """Every secret value in force, for log redaction."""
        values = [self.webhook_secret, self.metrics_token, self.internal_token]
        for url in (self.redis, self.rate_limit_redis):
            if url is not None:
                values.append(url.password)
        if self.database_url:
            values.append(urlsplit(self.database_url).password)
        return tuple(v for v in values if v)


def _redis_from_env(env: Mapping[str, str], warnings: list[str]) -> RedisURL | None:
    primary = env.get("REDIS_URL", "").strip()
    upstash = env.get("UPSTASH_REDIS_URL", "").strip()
    # Both are validated: a malformed value is an error even where the other one wins.
    parsed_upstash = RedisURL.parse("UPSTASH_REDIS_URL", upstash) if upstash else None
    if primary:
        parsed = RedisURL.parse("REDIS_URL", primary)
        if parsed_upstash is not None:
            warnings.append(
                f"both REDIS_URL ({parsed.redacted}) and UPSTASH_REDIS_URL ({parsed_upstash.redacted}) are set;"
                " using REDIS_URL"
            )
        return parsed
    return parsed_upstash
