"""Every setting of the service, read once from the environment and validated.

Nothing else in the project reads ``os.environ``: processes call ``Settings.from_env`` at
start and pass the frozen result down.
"""

from __future__ import annotations

import ipaddress
import os
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import TypeVar
from urllib.parse import SplitResult, unquote, urlsplit

__all__ = ["RedisURL", "Settings", "SettingsError", "redact_url"]

SERVICE_NAME = "ottoai-backend"

_TRUE = frozenset({"1", "true", "yes", "on"})
_FALSE = frozenset({"0", "false", "no", "off"})
_T = TypeVar("_T")


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


@dataclass(frozen=True)
class Settings:
    """The validated configuration of one process."""

    redis: RedisURL | None = None
    rate_limit_enabled: bool = True
    enable_worker: bool = True
    enable_cron: bool = True
    database_url: str | None = field(default=None, repr=False)
    webhook_allowed_hosts: tuple[str, ...] = ()
    webhook_secret: str | None = field(default=None, repr=False)
    port: int = 8080
    host: str = "0.0.0.0"
    trust_proxy_headers: bool = False
    rate_limits_file: Path | None = None
    metrics_token: str | None = field(default=None, repr=False)
    internal_token: str | None = field(default=None, repr=False)
    log_format: str = "json"
    redis_max_connections: int = 50
    redis_timeout_s: float = 5.0
    rate_limit_deadline_ms: float = 50.0
    shutdown_timeout_s: float = 4.0
    job_grace_s: float = 3.0
    job_lease_s: float = 10.0
    job_idle_poll_s: float = 30.0
    job_retention_s: int = 86_400
    worker_heartbeat_s: float = 20.0
    worker_concurrency: int = 10
    # Non-fatal remarks found while reading the environment, logged once logging is up.
    warnings: tuple[str, ...] = ()

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> Settings:
        """Build settings from ``env`` (``os.environ`` by default); raise ``SettingsError``."""
        env = os.environ if env is None else env
        warnings: list[str] = []

        redis = _redis_from_env(env, warnings)
        enable_worker = _first_bool(env, ("ENABLE_WORKER", "ENABLE_CELERY"), True, warnings)
        enable_cron = _first_bool(env, ("ENABLE_CRON", "ENABLE_CELERY_BEAT"), True, warnings)

        return cls(
            redis=redis,
            rate_limit_enabled=_get(env, "RATE_LIMIT_ENABLED", _bool, True),
            enable_worker=enable_worker,
            enable_cron=enable_cron,
            database_url=_get(env, "DATABASE_URL", _postgres_url, None),
            webhook_allowed_hosts=_get(env, "WEBHOOK_ALLOWED_HOSTS", _host_list, ()),
            webhook_secret=_get(env, "WEBHOOK_SECRET", _secret, None),
            port=_get(env, "PORT", _port, 8080),
            host=_get(env, "HOST", _listen_host, "0.0.0.0"),
            trust_proxy_headers=_get(env, "TRUST_PROXY_HEADERS", _bool, False),
            rate_limits_file=_get(env, "RATE_LIMITS_FILE", _existing_file, None),
            metrics_token=_get(env, "METRICS_TOKEN", _secret, None),
            internal_token=_get(env, "INTERNAL_TOKEN", _secret, None),
            log_format=_get(env, "LOG_FORMAT", _log_format, "json"),
            redis_max_connections=_get(env, "REDIS_MAX_CONNECTIONS", _int_range(1, 10_000), 50),
            redis_timeout_s=_get(env, "REDIS_TIMEOUT_S", _float_range(0.05, 300.0), 5.0),
            rate_limit_deadline_ms=_get(env, "RATE_LIMIT_DEADLINE_MS", _float_range(1.0, 10_000.0), 50.0),
            shutdown_timeout_s=_get(env, "SHUTDOWN_TIMEOUT_S", _float_range(0.0, 300.0), 4.0),
            job_grace_s=_get(env, "JOB_GRACE_S", _float_range(0.0, 300.0), 3.0),
            job_lease_s=_get(env, "JOB_LEASE_S", _float_range(1.0, 300.0), 10.0),
            job_idle_poll_s=_get(env, "JOB_IDLE_POLL_S", _float_range(10.0, 3600.0), 30.0),
            job_retention_s=_get(env, "JOB_RETENTION_S", _int_range(60, 30 * 86_400), 86_400),
            worker_heartbeat_s=_get(env, "WORKER_HEARTBEAT_S", _float_range(1.0, 300.0), 20.0),
            worker_concurrency=_get(env, "WORKER_CONCURRENCY", _int_range(1, 1000), 10),
            warnings=tuple(warnings),
        )

    def require_redis(self) -> RedisURL:
        """Return the Redis URL, or fail the way a missing required setting fails."""
        if self.redis is None:
            raise SettingsError("REDIS_URL", "not set (set REDIS_URL, or UPSTASH_REDIS_URL for Upstash)")
        return self.redis

    def with_redis(self, url: str) -> Settings:
        """A copy that uses ``url`` (used by ``dev`` once its embedded Redis is up)."""
        return replace(self, redis=RedisURL.parse("REDIS_URL", url))

    @property
    def secrets(self) -> tuple[str, ...]:
        """Every secret value in force, for log redaction."""
        values = [self.webhook_secret, self.metrics_token, self.internal_token]
        if self.redis is not None:
            values.append(self.redis.password)
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


def _get(env: Mapping[str, str], name: str, parse: Callable[[str, str], _T], default: _T) -> _T:
    raw = env.get(name)
    if raw is None or raw.strip() == "":
        return default
    return parse(name, raw.strip())


def _first_bool(env: Mapping[str, str], names: tuple[str, str], default: bool, warnings: list[str]) -> bool:
    new, old = names
    if env.get(new, "").strip():
        return _bool(new, env[new].strip())
    if env.get(old, "").strip():
        warnings.append(f"{old} is an old name; use {new}")
        return _bool(old, env[old].strip())
    return default


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


def _int_range(low: int, high: int) -> Callable[[str, str], int]:
    def parse(name: str, raw: str) -> int:
        try:
            value = int(raw)
        except ValueError:
            raise SettingsError(name, f"must be a whole number, got {raw!r}") from None
        if not low <= value <= high:
            raise SettingsError(name, f"must be from {low} to {high}, got {value}")
        return value

    return parse


def _float_range(low: float, high: float) -> Callable[[str, str], float]:
    def parse(name: str, raw: str) -> float:
        try:
            value = float(raw)
        except ValueError:
            raise SettingsError(name, f"must be a number, got {raw!r}") from None
        if not low <= value <= high:  # also refuses nan
            raise SettingsError(name, f"must be from {low:g} to {high:g}, got {raw}")
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


def _host_list(name: str, raw: str) -> tuple[str, ...]:
    hosts: list[str] = []
    for item in raw.split(","):
        entry = item.strip().lower()
        if not entry:
            continue
        host, port = _split_host_port(entry)
        if port is not None and not (port.isdigit() and 1 <= int(port) <= 65535):
            raise SettingsError(name, f"{entry!r}: port must be a number from 1 to 65535")
        try:
            ipaddress.ip_address(host)
        except ValueError:
            if not _is_hostname(host):
                raise SettingsError(name, f"{entry!r} is not a host or host:port") from None
        hosts.append(entry)
    return tuple(hosts)


def _split_host_port(entry: str) -> tuple[str, str | None]:
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


def _log_format(name: str, raw: str) -> str:
    value = raw.lower()
    if value not in ("json", "console"):
        raise SettingsError(name, f"must be json or console, got {raw!r}")
    return value
