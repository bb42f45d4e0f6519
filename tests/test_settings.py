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
        ({"METRICS_PORT": "9100"}, "metrics_port", 9100),
        ({"METRICS_PORT": "0"}, "metrics_port", 0),
        ({}, "log_format", "json"),
        ({"LOG_FORMAT": "Console"}, "log_format", "console"),
        ({"REDIS_MAX_CONNECTIONS": "10"}, "redis_max_connections", 10),
        ({"RATE_LIMIT_DEADLINE_MS": "25.5"}, "rate_limit_deadline_ms", 25.5),
        ({"REDIS_TIMEOUT_S": "0.05"}, "redis_timeout_s", 0.05),
        ({"SHUTDOWN_TIMEOUT_S": "0"}, "shutdown_timeout_s", 0.0),
        ({"JOB_GRACE_S": "12.5"}, "job_grace_s", 12.5),
        ({"JOB_LEASE_S": "300"}, "job_lease_s", 300.0),
        ({"JOB_IDLE_POLL_S": "10"}, "job_idle_poll_s", 10.0),
        ({"JOB_RETENTION_S": "60"}, "job_retention_s", 60),
        ({"WORKER_HEARTBEAT_S": "5"}, "worker_heartbeat_s", 5.0),
        ({"WORKER_CONCURRENCY": "1000"}, "worker_concurrency", 1000),
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
        ({"RATE_LIMIT_REDIS_URL": "http://x"}, "RATE_LIMIT_REDIS_URL", "scheme must be redis, rediss or unix"),
        ({"RATE_LIMIT_REDIS_URL": "redis://"}, "RATE_LIMIT_REDIS_URL", "no host"),
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


NUMBER_ERRORS = [
    # whole numbers
    ("REDIS_MAX_CONNECTIONS", "many", "must be a whole number, got 'many'"),
    ("REDIS_MAX_CONNECTIONS", "0", "must be from 1 to 10000, got 0"),
    ("JOB_RETENTION_S", "0059", "must be from 60 to 2592000, got 59"),
    ("JOB_RETENTION_S", "1.5", "must be a whole number, got '1.5'"),
    ("WORKER_CONCURRENCY", "1001", "must be from 1 to 1000, got 1001"),
    ("METRICS_PORT", "65536", "must be from 0 to 65535, got 65536"),
    # decimals: bounds in short form, the value as written
    ("REDIS_TIMEOUT_S", "0.01", "must be from 0.05 to 300, got 0.01"),
    ("RATE_LIMIT_DEADLINE_MS", "nan", "must be from 1 to 10000, got nan"),
    ("SHUTDOWN_TIMEOUT_S", "-1", "must be from 0 to 300, got -1"),
    ("JOB_GRACE_S", "301", "must be from 0 to 300, got 301"),
    ("JOB_LEASE_S", "0.5", "must be from 1 to 300, got 0.5"),
    ("JOB_IDLE_POLL_S", "1e9", "must be from 10 to 3600, got 1e9"),
    ("WORKER_HEARTBEAT_S", "soon", "must be a number, got 'soon'"),
]


@pytest.mark.parametrize(("variable", "value", "problem"), NUMBER_ERRORS)
def test_number_out_of_range_or_malformed_is_one_exact_line(variable: str, value: str, problem: str) -> None:
    with pytest.raises(SettingsError) as caught:
        Settings.from_env({**REDIS, variable: value})
    assert str(caught.value) == f"{variable}: {problem}"


# Every variable read by Settings.from_env, the field it sets and its default (CONTRACT.md).
DEFAULTS: dict[str, tuple[str, object]] = {
    "ENABLE_WORKER": ("enable_worker", True),
    "ENABLE_CRON": ("enable_cron", True),
    "RATE_LIMIT_ENABLED": ("rate_limit_enabled", True),
    "DATABASE_URL": ("database_url", None),
    "WEBHOOK_ALLOWED_HOSTS": ("webhook_allowed_hosts", ()),
    "WEBHOOK_SECRET": ("webhook_secret", None),
    "PORT": ("port", 8080),
    "HOST": ("host", "0.0.0.0"),
    "TRUST_PROXY_HEADERS": ("trust_proxy_headers", False),
    "RATE_LIMITS_FILE": ("rate_limits_file", None),
    "METRICS_TOKEN": ("metrics_token", None),
    "METRICS_PORT": ("metrics_port", 9091),
    "INTERNAL_TOKEN": ("internal_token", None),
    "LOG_FORMAT": ("log_format", "json"),
    "REDIS_MAX_CONNECTIONS": ("redis_max_connections", 50),
    "REDIS_TIMEOUT_S": ("redis_timeout_s", 5.0),
    "RATE_LIMIT_DEADLINE_MS": ("rate_limit_deadline_ms", 50.0),
    "SHUTDOWN_TIMEOUT_S": ("shutdown_timeout_s", 4.0),
    "HTTP_IDLE_TIMEOUT_S": ("http_idle_timeout_s", 5.0),
    "HTTP_BODY_TIMEOUT_S": ("http_body_timeout_s", 10.0),
    "JOB_GRACE_S": ("job_grace_s", 3.0),
    "JOB_LEASE_S": ("job_lease_s", 10.0),
    "JOB_IDLE_POLL_S": ("job_idle_poll_s", 30.0),
    "JOB_RETENTION_S": ("job_retention_s", 86_400),
    "WORKER_HEARTBEAT_S": ("worker_heartbeat_s", 20.0),
    "WORKER_CONCURRENCY": ("worker_concurrency", 10),
}


@pytest.mark.parametrize("blank", [None, "", "   "], ids=["unset", "empty", "spaces"])
def test_unset_or_blank_variables_take_the_documented_defaults(blank: str | None) -> None:
    variables = [*DEFAULTS, "ENABLE_CELERY", "ENABLE_CELERY_BEAT"]
    settings = Settings.from_env(REDIS if blank is None else {**REDIS, **dict.fromkeys(variables, blank)})
    assert {field: getattr(settings, field) for field, _ in DEFAULTS.values()} == dict(DEFAULTS.values())
    assert settings.warnings == ()


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
    assert settings.warnings == (
        "ENABLE_CELERY is an old name; use ENABLE_WORKER",
        "ENABLE_CELERY_BEAT is an old name; use ENABLE_CRON",
    )


def test_old_name_is_not_read_or_flagged_when_the_new_one_is_set() -> None:
    settings = Settings.from_env({**REDIS, "ENABLE_CRON": "yes", "ENABLE_CELERY_BEAT": "not even a boolean"})
    assert settings.enable_cron is True
    assert settings.warnings == ()


def test_first_malformed_variable_in_field_order_is_the_one_reported() -> None:
    with pytest.raises(SettingsError) as caught:
        Settings.from_env({**REDIS, "RATE_LIMIT_ENABLED": "maybe", "ENABLE_WORKER": "maybe", "PORT": "x"})
    assert caught.value.variable == "ENABLE_WORKER"


def test_missing_redis_url_is_an_error_only_when_required() -> None:
    settings = Settings.from_env({})
    assert settings.redis is None
    with pytest.raises(SettingsError, match=r"^REDIS_URL: not set"):
        settings.require_redis()


def test_the_limiter_uses_the_main_redis_unless_it_has_its_own() -> None:
    main = Settings.from_env({"REDIS_URL": "redis://:main-pass@a:6379/0"})
    own = Settings.from_env({"REDIS_URL": "redis://a:6379/0", "RATE_LIMIT_REDIS_URL": "rediss://:rl-pass@b:6380"})
    same = Settings.from_env({"REDIS_URL": "redis://a:6379/0", "RATE_LIMIT_REDIS_URL": "redis://a:6379/0"})

    assert main.limiter_redis() is main.redis
    assert not main.separate_limiter_redis
    assert own.limiter_redis().variable == "RATE_LIMIT_REDIS_URL"
    assert own.limiter_redis().tls
    assert own.separate_limiter_redis
    assert not same.separate_limiter_redis  # readiness and doctor would check the same server twice
    assert "rl-pass" in own.secrets  # redacted from every log line
    assert "rl-pass" not in repr(own)


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
        ({"REDIS_URL": "redis://127.0.0.1:6379/15", "RATE_LIMIT_REDIS_URL": "ftp://h"}, "RATE_LIMIT_REDIS_URL: scheme"),
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
