"""Settings from the environment: every variable, good and bad values, exit code 2."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

from service.settings import Settings, SettingsError
from tests.conftest import PYTHON, ROOT, subprocess_env

REDIS = {"REDIS_URL": "redis://127.0.0.1:6379/0"}


@pytest.mark.parametrize(
    ("env", "attribute", "expected"),
    [
        ({}, "rate_limit_enabled", True),
        ({"RATE_LIMIT_ENABLED": "off"}, "rate_limit_enabled", False),
        ({"RATE_LIMIT_ENABLED": "YES"}, "rate_limit_enabled", True),
        ({"RATE_LIMIT_ENABLED": "0"}, "rate_limit_enabled", False),
        ({}, "enable_worker", True),
        ({"ENABLE_WORKER": "false"}, "enable_worker", False),
        ({"ENABLE_CELERY": "False"}, "enable_worker", False),
        ({"ENABLE_WORKER": "on", "ENABLE_CELERY": "off"}, "enable_worker", True),
        ({}, "enable_cron", True),
        ({"ENABLE_CRON": "no"}, "enable_cron", False),
        ({"ENABLE_CELERY_BEAT": "0"}, "enable_cron", False),
        ({"DATABASE_URL": "postgresql://u:p@db:5432/app"}, "database_url", "postgresql://u:p@db:5432/app"),
        ({"DATABASE_URL": "postgres://db/app"}, "database_url", "postgres://db/app"),
        (
            {"WEBHOOK_ALLOWED_HOSTS": "hooks.example.com, 127.0.0.1:9000,,"},
            "webhook_allowed_hosts",
            ("hooks.example.com", "127.0.0.1:9000"),
        ),
        ({"WEBHOOK_SECRET": "a-long-secret"}, "webhook_secret", "a-long-secret"),
        ({}, "port", 8080),
        ({"PORT": "9000"}, "port", 9000),
        ({}, "host", "0.0.0.0"),
        ({"HOST": "::"}, "host", "::"),
        ({"HOST": "localhost"}, "host", "localhost"),
        ({"TRUST_PROXY_HEADERS": "true"}, "trust_proxy_headers", True),
        ({}, "trust_proxy_headers", False),
        ({"METRICS_TOKEN": "metrics-token-1"}, "metrics_token", "metrics-token-1"),
        ({"INTERNAL_TOKEN": "internal-token-1"}, "internal_token", "internal-token-1"),
        ({}, "log_format", "json"),
        ({"LOG_FORMAT": "Console"}, "log_format", "console"),
        ({"REDIS_MAX_CONNECTIONS": "10"}, "redis_max_connections", 10),
        ({"RATE_LIMIT_DEADLINE_MS": "25.5"}, "rate_limit_deadline_ms", 25.5),
    ],
)
def test_variable_is_read(env: dict[str, str], attribute: str, expected: object) -> None:
    assert getattr(Settings.from_env({**REDIS, **env}), attribute) == expected


@pytest.mark.parametrize(
    ("env", "variable", "fragment"),
    [
        ({"REDIS_URL": "http://x"}, "REDIS_URL", "scheme must be redis, rediss or unix, got http"),
        ({"REDIS_URL": "redis://"}, "REDIS_URL", "no host"),
        ({"REDIS_URL": "redis://host:99999"}, "REDIS_URL", "not a valid URL"),
        ({"REDIS_URL": "redis://host/abc"}, "REDIS_URL", "database must be a number"),
        ({"REDIS_URL": "unix://"}, "REDIS_URL", "socket path"),
        ({"UPSTASH_REDIS_URL": "ftp://h"}, "UPSTASH_REDIS_URL", "scheme must be"),
        ({"RATE_LIMIT_ENABLED": "maybe"}, "RATE_LIMIT_ENABLED", "1/0/true/false/yes/no/on/off"),
        ({"ENABLE_WORKER": "2"}, "ENABLE_WORKER", "got '2'"),
        ({"ENABLE_CELERY": "y"}, "ENABLE_CELERY", "got 'y'"),
        ({"ENABLE_CRON": "enabled"}, "ENABLE_CRON", "got 'enabled'"),
        ({"ENABLE_CELERY_BEAT": "nope"}, "ENABLE_CELERY_BEAT", "got 'nope'"),
        ({"DATABASE_URL": "mysql://db/app"}, "DATABASE_URL", "scheme must be postgres or postgresql, got mysql"),
        ({"DATABASE_URL": "postgresql:///app"}, "DATABASE_URL", "no host"),
        ({"WEBHOOK_ALLOWED_HOSTS": "good.com,http://bad.com"}, "WEBHOOK_ALLOWED_HOSTS", "'http://bad.com'"),
        ({"WEBHOOK_ALLOWED_HOSTS": "a.com:0"}, "WEBHOOK_ALLOWED_HOSTS", "port must be"),
        ({"WEBHOOK_SECRET": "short"}, "WEBHOOK_SECRET", "at least 8"),
        ({"PORT": "0"}, "PORT", "1 to 65535"),
        ({"PORT": "http"}, "PORT", "got 'http'"),
        ({"PORT": "70000"}, "PORT", "1 to 65535"),
        ({"HOST": "not a host!"}, "HOST", "IP address or host name"),
        ({"TRUST_PROXY_HEADERS": "sure"}, "TRUST_PROXY_HEADERS", "got 'sure'"),
        ({"RATE_LIMITS_FILE": "/nonexistent/limits.toml"}, "RATE_LIMITS_FILE", "no such file"),
        ({"METRICS_TOKEN": "abc"}, "METRICS_TOKEN", "at least 8"),
        ({"INTERNAL_TOKEN": "abc"}, "INTERNAL_TOKEN", "at least 8"),
        ({"LOG_FORMAT": "xml"}, "LOG_FORMAT", "json or console"),
        ({"REDIS_MAX_CONNECTIONS": "0"}, "REDIS_MAX_CONNECTIONS", "from 1"),
        ({"RATE_LIMIT_DEADLINE_MS": "nan"}, "RATE_LIMIT_DEADLINE_MS", "must be from"),
        ({"REDIS_TIMEOUT_S": "fast"}, "REDIS_TIMEOUT_S", "must be a number"),
    ],
)
def test_malformed_value_names_the_variable(env: dict[str, str], variable: str, fragment: str) -> None:
    with pytest.raises(SettingsError) as caught:
        Settings.from_env({**REDIS, **env})
    assert caught.value.variable == variable
    assert str(caught.value).startswith(f"{variable}: ")
    assert fragment in str(caught.value)


def test_rate_limits_file_must_exist_and_is_kept_as_path(tmp_path: Path) -> None:
    policy = tmp_path / "limits.toml"
    policy.write_text("")
    assert Settings.from_env({**REDIS, "RATE_LIMITS_FILE": str(policy)}).rate_limits_file == policy


@pytest.mark.parametrize(
    ("url", "scheme", "host", "port", "db", "tls"),
    [
        ("redis://127.0.0.1:6379/3", "redis", "127.0.0.1", 6379, 3, False),
        ("redis://default:pw@fly-redis.upstash.io", "redis", "fly-redis.upstash.io", 6379, 0, False),
        ("rediss://:pw@host.upstash.io:6380", "rediss", "host.upstash.io", 6380, 0, True),
        ("redis://[fdaa::3]:6379/1", "redis", "fdaa::3", 6379, 1, False),
        ("unix:///run/redis.sock?db=2", "unix", None, None, 2, False),
    ],
)
def test_redis_url_forms(url: str, scheme: str, host: str | None, port: int | None, db: int, tls: bool) -> None:
    redis = Settings.from_env({"REDIS_URL": url}).require_redis()
    assert (redis.scheme, redis.host, redis.port, redis.db, redis.tls) == (scheme, host, port, db, tls)


def test_upstash_url_is_used_when_redis_url_is_unset() -> None:
    settings = Settings.from_env({"UPSTASH_REDIS_URL": "rediss://:pw@up.example.com:6380"})
    assert settings.require_redis().variable == "UPSTASH_REDIS_URL"
    assert settings.warnings == ()


def test_redis_url_wins_over_upstash_with_a_warning_that_hides_passwords() -> None:
    settings = Settings.from_env(
        {"REDIS_URL": "redis://:first-pass@a:6379", "UPSTASH_REDIS_URL": "rediss://:second-pass@b:6380"}
    )
    assert settings.require_redis().host == "a"
    (warning,) = settings.warnings
    assert "REDIS_URL" in warning
    assert "UPSTASH_REDIS_URL" in warning
    assert "first-pass" not in warning
    assert "second-pass" not in warning


def test_old_names_work_and_are_flagged() -> None:
    settings = Settings.from_env({**REDIS, "ENABLE_CELERY": "no", "ENABLE_CELERY_BEAT": "no"})
    assert (settings.enable_worker, settings.enable_cron) == (False, False)
    assert any("ENABLE_CELERY is an old name" in w for w in settings.warnings)


def test_missing_redis_url_is_an_error_only_when_required() -> None:
    settings = Settings.from_env({})
    assert settings.redis is None
    with pytest.raises(SettingsError, match=r"^REDIS_URL: not set"):
        settings.require_redis()


def test_settings_repr_hides_secrets() -> None:
    settings = Settings.from_env(
        {"REDIS_URL": "redis://:pw-in-url@h:6379", "WEBHOOK_SECRET": "hook-secret-1", "INTERNAL_TOKEN": "tok-12345678"}
    )
    text = repr(settings) + str(settings.redis)
    for secret in ("pw-in-url", "hook-secret-1", "tok-12345678"):
        assert secret not in text


@pytest.mark.parametrize(
    ("env", "line"),
    [
        ({"REDIS_URL": "http://x"}, "REDIS_URL: scheme must be redis, rediss or unix, got http"),
        ({}, "REDIS_URL: not set"),
        ({"REDIS_URL": "redis://127.0.0.1:6379/15", "PORT": "eighty"}, "PORT: must be a port number"),
    ],
)
def test_serve_with_bad_settings_exits_2_with_one_line(env: dict[str, str], line: str) -> None:
    result = subprocess.run(
        [PYTHON, "-m", "service", "serve"],
        cwd=ROOT,
        env=subprocess_env(**env),
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert result.returncode == 2
    assert result.stdout == ""
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1
    assert lines[0].startswith(line)
