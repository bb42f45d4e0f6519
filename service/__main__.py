"""The command line: ``python -m service serve | dev | keys ...``.

Exit codes: 0 done, 1 the command ran and failed, 2 it cannot run (bad settings, no Redis).
"""

from __future__ import annotations

import argparse
import asyncio
import errno
import socket
import sys
from collections.abc import Sequence

from aiohttp import web
from redis.exceptions import AuthenticationError, RedisError

from service.access_log import AccessLogger
from service.app import create_app
from service.auth import ApiKeyStore
from service.dev import DEV_HOST, Context, DevRun
from service.doctor import diagnose, render
from service.embedded_redis import DEV_DATA_DIR, EmbeddedRedisError, embedded_redis
from service.logging import configure_logging, get_logger, redact_text
from service.redis import describe, redis_client
from service.settings import Settings, SettingsError

log = get_logger("service")


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
    revoke = keys.add_parser("revoke", help="revoke the key with this prefix")
    revoke.add_argument("prefix")
    return parser


def _fail(message: str, code: int) -> int:
    print(redact_text(message), file=sys.stderr)
    return code


def _log_start(settings: Settings, command: str) -> None:
    configure_logging(settings.log_format, secrets=settings.secrets)
    for warning in settings.warnings:
        log.warning(warning)
    log.info("starting", command=command, redis=settings.redis.redacted if settings.redis else None)


def _listening_socket(command: str, host: str, port: int) -> socket.socket:
    """A socket bound to ``host:port`` for aiohttp to serve on.

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
    host, port = sock.getsockname()[:2]
    log.info("listening", host=host, port=port)
    web.run_app(
        app,
        sock=sock,
        shutdown_timeout=settings.shutdown_timeout_s,
        access_log_class=AccessLogger,
        print=None,
    )
    log.info("stopped")
    return 0


def serve(settings: Settings) -> int:
    settings.require_redis()
    sock = _listening_socket("serve", settings.host, settings.port)
    _log_start(settings, "serve")
    return _run_web(settings, sock)


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
    _log_start(settings, "dev")
    if embedded is not None:
        log.info("embedded redis started", url=embedded, data=str(DEV_DATA_DIR))
    run = DevRun(settings, base_url)
    code = _run_web(settings, sock, run.contexts())
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
                info = await store.revoke(args.prefix)
            except LookupError as exc:
                return _fail(f"keys revoke: {exc}", 1)
            print(f"revoked {info.prefix} (tenant {info.tenant}, plan {info.plan})")
        return 0
    finally:
        await client.aclose()


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
            findings = asyncio.run(diagnose(settings))
            print(render(findings, args.json))
            return 0 if all(f.status != "problem" for f in findings) else 1
        configure_logging(settings.log_format, secrets=settings.secrets)
        try:
            return asyncio.run(_keys(settings, args))
        except (RedisError, OSError) as exc:
            return _fail(f"keys: {describe(exc, settings.require_redis())}", 2)
    except (SettingsError, _CannotRun) as exc:
        return _fail(str(exc), 2)


if __name__ == "__main__":
    sys.exit(main())
