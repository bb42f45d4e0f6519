"""The command line: ``python -m service serve | dev | doctor | keys ... | webhooks ...``.

Exit codes: 0 done, 1 the command ran and failed, 2 it cannot run (bad settings, no Redis).
"""

from __future__ import annotations

import argparse
import asyncio
import errno
import socket
import sys
from collections.abc import AsyncIterator, Sequence

from aiohttp import web
from redis.exceptions import AuthenticationError, RedisError

from jobs import webhook_tenants
from jobs.destinations import outside_fence
from jobs.serialization import iso_from_ms
from jobs.webhook_tenants import ROTATION_OVERLAP_S
from service import event_loop, http_server
from service.app import create_app
from service.app_keys import METRICS
from service.auth import ApiKeyStore, validate_tenant
from service.dev import DEV_HOST, Context, DevRun
from service.doctor import Finding, diagnose, healthy, render
from service.doctor_limiter import diagnose_limiter_redis
from service.embedded_redis import DEV_DATA_DIR, EmbeddedRedisError, embedded_redis
from service.logging import configure_logging, get_logger, redact_text
from service.metrics import metrics_listener
from service.redis import describe, redis_client
from service.settings import Settings, SettingsError, host_list

log = get_logger("service")

MAX_OVERLAP_HOURS = 24 * 7


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m service", description="OttoAI backend")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    commands.add_parser("serve", help="run the web process on $HOST:$PORT")
    commands.add_parser("dev", help="web + worker + cron in one process; embedded Redis when none is configured")

    doctor = commands.add_parser(
        "doctor", help="diagnose the configured Redis; exit 0 healthy, 1 problems, 2 cannot run"
    )
    doctor.add_argument("--json", action="store_true", help="print the findings as JSON")

    keys = commands.add_parser("keys", help="manage API keys").add_subparsers(dest="keys_command", required=True)
    create = keys.add_parser("create", help="print a new API key once, alone on standard output")
    create.add_argument("--tenant", required=True)
    create.add_argument("--plan", default="default")
    keys.add_parser("list", help="list keys (prefixes only)")
    revoke = keys.add_parser("revoke", help="revoke a key, named by its prefix (as 'keys list' shows) or in full")
    revoke.add_argument("key", metavar="PREFIX_OR_KEY")

    webhooks = commands.add_parser("webhooks", help="a tenant's webhook signing secret and receivers")
    hooks = webhooks.add_subparsers(dest="webhooks_command", required=True)
    secret = hooks.add_parser(
        "secret",
        help="print a new signing secret once, alone on standard output; the previous one stays valid for "
        "--overlap-hours (deliveries carry both signatures meanwhile)",
    )
    secret.add_argument("--tenant", required=True)
    secret.add_argument(
        "--overlap-hours",
        type=float,
        default=ROTATION_OVERLAP_S / 3600,
        help="how long the previous secret stays valid (default %(default)g; 0 after a leak)",
    )
    hosts = hooks.add_parser("hosts", help="set the tenant's receivers: host (ports 80, 443) or host:port")
    hosts.add_argument("--tenant", required=True)
    hosts.add_argument("hosts", nargs="+", metavar="HOST")
    return parser


def _fail(message: str, code: int) -> int:
    print(redact_text(message), file=sys.stderr)
    return code


def _log_start(settings: Settings, command: str) -> None:
    configure_logging(settings.log_format, secrets=settings.secrets)
    for warning in settings.warnings:
        log.warning(warning)
    log.info(
        "starting",
        command=command,
        redis=settings.redis.redacted if settings.redis else None,
        event_loop=event_loop.loop_name(),
    )


def _metrics_port(settings: Settings, host: str | None) -> Context:
    """``METRICS_PORT``: the process's metrics without a token, for a scraper on the private network."""

    async def metrics_port_ctx(app: web.Application) -> AsyncIterator[None]:
        async with metrics_listener(app[METRICS], settings.metrics_port, host=host):
            yield

    return metrics_port_ctx


def _listening_socket(command: str, host: str, port: int) -> socket.socket:
    """A socket bound to ``host:port`` and listening, for the HTTP server to serve on.

    Bound before anything starts, so that a taken port is one line and exit code 2, not a
    traceback after Redis and the worker came up.
    """
    try:
        [(family, kind, proto, _, address), *_] = socket.getaddrinfo(
            host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE
        )
        sock = socket.socket(family, kind, proto)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as aiohttp would: restarts reuse the port
        try:
            sock.bind(address)
            sock.listen(LISTEN_BACKLOG)  # connections wait in the backlog while the app starts up
        except OSError:
            sock.close()
            raise
    except OSError as exc:
        if exc.errno == errno.EADDRINUSE:
            raise _CannotRun(
                f"{command}: PORT {port} is already in use on {host}: stop the process that listens there "
                f"(ss -ltnp 'sport = :{port}' names it) or set PORT to a free port"
            ) from None
        raise _CannotRun(f"{command}: cannot listen on {host}:{port}: {exc.strerror or exc}") from None
    return sock


LISTEN_BACKLOG = 128  # aiohttp's own


class _CannotRun(Exception):
    """A one-line reason the command cannot run (exit code 2)."""


def _run_web(settings: Settings, sock: socket.socket, extra_contexts: tuple[Context, ...] = ()) -> int:
    app = create_app(settings, extra_contexts=extra_contexts)
    http_server.serve(app, sock=sock, shutdown_timeout_s=settings.shutdown_timeout_s)
    log.info("stopped")
    return 0


def serve(settings: Settings) -> int:
    settings.require_redis()
    sock = _listening_socket("serve", settings.host, settings.port)
    _log_start(settings, "serve")
    return _run_web(settings, sock, (_metrics_port(settings, None),))


def dev(settings: Settings) -> int:
    """Web, worker and an embedded Redis (unless one is configured), on 127.0.0.1 only."""
    sock = _listening_socket("dev", DEV_HOST, settings.port)
    base_url = f"http://{DEV_HOST}:{settings.port}"
    if settings.redis is not None:
        return _dev_web(settings, sock, base_url)
    try:
        with embedded_redis() as url:
            return _dev_web(settings.with_redis(url), sock, base_url, embedded=url)
    except EmbeddedRedisError as exc:
        sock.close()
        return _fail(f"dev: {exc}", 2)


def _dev_web(settings: Settings, sock: socket.socket, base_url: str, embedded: str | None = None) -> int:
    """``dev``'s app: its metrics port (on loopback: a laptop), its key and in-process worker (``DevRun``)."""
    _log_start(settings, "dev")
    if embedded is not None:
        log.info("embedded redis started", url=embedded, data=str(DEV_DATA_DIR))
    run = DevRun(settings, base_url)
    code = _run_web(settings, sock, (_metrics_port(settings, DEV_HOST), *run.contexts()))
    if run.worker_failure is not None:
        return 2 if isinstance(run.worker_failure, AuthenticationError) else 1
    return code


async def _keys(settings: Settings, args: argparse.Namespace) -> int:
    client = redis_client(settings, client_name="ottoai-cli")
    store = ApiKeyStore(client)
    try:
        if args.keys_command == "create":
            try:
                key = await store.create(args.tenant, args.plan)
            except ValueError as exc:
                return _fail(f"keys create: {exc}", 2)
            print(key)
        elif args.keys_command == "list":
            rows = await store.list()
            print(f"{'PREFIX':<14} {'TENANT':<24} {'PLAN':<12} CREATED")
            for info in rows:
                print(f"{info.prefix:<14} {info.tenant:<24} {info.plan:<12} {info.created_at}")
        else:
            try:
                info = await store.revoke(args.key)
            except LookupError as exc:
                return _fail(f"keys revoke: {exc}", 1)
            print(f"revoked {info.prefix} (tenant {info.tenant}, plan {info.plan})")
        return 0
    finally:
        await client.aclose()


async def _webhooks(settings: Settings, args: argparse.Namespace) -> int:
    try:
        tenant = validate_tenant(args.tenant)
    except ValueError as exc:
        return _fail(f"webhooks: {exc}", 2)
    client = redis_client(settings, client_name="ottoai-cli")
    try:
        if args.webhooks_command == "secret":
            if settings.webhook_secret is None:
                return _fail("webhooks secret: WEBHOOK_SECRET is not set (tenant secrets are derived from it)", 2)
            if not 0 <= args.overlap_hours <= MAX_OVERLAP_HOURS:
                return _fail(f"webhooks secret: --overlap-hours must be from 0 to {MAX_OVERLAP_HOURS}", 2)
            secret, previous_until_ms = await webhook_tenants.rotate_secret(
                client, tenant, settings.webhook_secret, overlap_s=args.overlap_hours * 3600
            )
            print(secret)
            note = f"tenant {tenant}: new webhook signing secret, shown once"
            if previous_until_ms:
                note += f"; the previous one also signs deliveries until {iso_from_ms(previous_until_ms)}"
            print(note, file=sys.stderr)
        else:
            try:
                receivers = host_list("webhooks hosts", ",".join(args.hosts))
            except SettingsError as exc:
                return _fail(str(exc), 2)
            await webhook_tenants.set_receivers(client, tenant, receivers)
            print(f"tenant {tenant}: webhook receivers {', '.join(receivers)}")
            outside = outside_fence(receivers, settings.webhook_allowed_hosts)
            if outside:
                print(
                    f"warning: not (wholly) allowed by WEBHOOK_ALLOWED_HOSTS, so refused until they are: "
                    f"{', '.join(outside)}",
                    file=sys.stderr,
                )
        return 0
    finally:
        await client.aclose()


async def _doctor(settings: Settings) -> list[Finding]:
    """The main Redis's findings, then the limiter's own Redis's (when ``RATE_LIMIT_REDIS_URL`` names one)."""
    return [*await diagnose(settings), *await diagnose_limiter_redis(settings)]


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    try:
        settings = Settings.from_env()
        if args.command == "serve":
            return serve(settings)
        if args.command == "dev":
            return dev(settings)
        settings.require_redis()
        if args.command == "doctor":
            findings = asyncio.run(_doctor(settings))
            print(render(findings, args.json))
            return 0 if healthy(findings) else 1
        configure_logging(settings.log_format, secrets=settings.secrets)
        command = _keys if args.command == "keys" else _webhooks
        try:
            return asyncio.run(command(settings, args))
        except (RedisError, OSError) as exc:
            return _fail(f"{args.command}: {describe(exc, settings.require_redis())}", 2)
    except (SettingsError, _CannotRun) as exc:
        return _fail(str(exc), 2)


if __name__ == "__main__":
    sys.exit(main())
