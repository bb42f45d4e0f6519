"""``python -m service doctor``: walk the operations guide's troubleshooting list.

Each check says what it found and, when something is wrong, what to do. The network
checks go from the bottom up (DNS, TCP, TLS, AUTH) so that the first failure names the
real cause; checks that need a working connection are skipped after one fails.

A finding is ``ok``, a ``problem`` (something fails now: exit code 1), a ``warning``
(it works, but the guide advises against it: the security advice, memory nearing its
limit; exit code 0) or ``skipped``.
"""

from __future__ import annotations

import asyncio
import ipaddress
import json
import socket
import ssl
import statistics
import time
from collections.abc import Awaitable, Callable
from dataclasses import asdict, dataclass
from typing import Any, Literal

from redis.asyncio import Redis
from redis.exceptions import AuthenticationError, RedisError, ResponseError

from jobs.cron import SCHEDULE
from jobs.cron_store import CronStore
from jobs.heartbeat import live_workers
from jobs.maintenance import MEMORY_CRITICAL_RATIO, MEMORY_WARNING_RATIO
from service.redis import connection_pool
from service.settings import RedisURL, Settings

__all__ = ["AUTH_ADVICE", "Finding", "diagnose", "healthy", "reach", "render", "security", "step_timeout_s"]

Status = Literal["ok", "warning", "problem", "skipped"]
STEP_TIMEOUT_S = 3.0
SLOW_PING_MS = 25.0
OLDEST_GOOD_VERSION = (6, 2)
MIN_PASSWORD_LENGTH = 16


@dataclass(frozen=True)
class Finding:
    check: str
    status: Status
    detail: str
    advice: str = ""


def _why(exc: BaseException) -> str:
    return str(exc) or type(exc).__name__


def _ok(check: str, detail: str) -> Finding:
    return Finding(check, "ok", detail)


def _problem(check: str, detail: str, advice: str) -> Finding:
    return Finding(check, "problem", detail, advice)


def _warning(check: str, detail: str, advice: str) -> Finding:
    return Finding(check, "warning", detail, advice)


async def _dns(url: RedisURL, timeout_s: float) -> tuple[Finding, list[str]]:
    """The DNS finding, and the addresses the host resolves to."""
    assert url.host is not None
    assert url.port is not None
    loop = asyncio.get_running_loop()
    try:
        infos = await asyncio.wait_for(loop.getaddrinfo(url.host, url.port, type=socket.SOCK_STREAM), timeout_s)
    except (TimeoutError, OSError) as exc:
        finding = _problem(
            "dns",
            f"{url.host} does not resolve ({_why(exc)})",
            "check the host name; Fly's private names (*.internal, Fly Redis) resolve only inside Fly's network, "
            "use the public rediss:// URL from elsewhere",
        )
        return finding, []
    addresses = sorted({str(info[4][0]) for info in infos})
    return _ok("dns", f"{url.host} → {', '.join(addresses)}"), addresses


def _local(url: RedisURL, addresses: list[str]) -> str | None:
    """What makes the connection local (a unix socket, loopback), or ``None`` when it crosses a network."""
    if url.scheme == "unix":
        return "unix socket"
    if addresses and all(ipaddress.ip_address(address.split("%")[0]).is_loopback for address in addresses):
        return "loopback"
    return None


def security(url: RedisURL, addresses: list[str]) -> list[Finding]:
    """The guide's security advice as warnings: a password, a strong one, and TLS to a public address.

    A unix socket or loopback (``make run``'s embedded Redis) crosses no network: nothing to warn of.
    """
    local = _local(url, addresses)
    if local is not None:
        return [_ok("password", f"{local}: no network to guard"), _ok("encryption", f"{local}: no network to guard")]
    findings = []
    if not url.password:
        findings.append(
            _warning(
                "password",
                "no password in the URL: whoever reaches this Redis can read and change every key",
                "set a password (requirepass, or an ACL user) and put it in the URL; Fly Redis and Upstash have one",
            )
        )
    elif len(url.password) < MIN_PASSWORD_LENGTH:
        findings.append(
            _warning(
                "password",
                f"the password is shorter than {MIN_PASSWORD_LENGTH} characters",
                "use a long random one (openssl rand -hex 24) and rotate it now and then",
            )
        )
    else:
        findings.append(_ok("password", f"set, at least {MIN_PASSWORD_LENGTH} characters"))
    public = [address for address in addresses if ipaddress.ip_address(address.split("%")[0]).is_global]
    if url.tls:
        findings.append(_ok("encryption", "TLS (rediss://)"))
    elif public:
        findings.append(
            _warning(
                "encryption",
                f"plain redis:// to a public address ({', '.join(public)}): password and data cross the internet "
                "unencrypted",
                "use rediss:// (Upstash's public endpoint), or a private address (Fly's private network)",
            )
        )
    else:
        findings.append(_ok("encryption", "plain redis:// on a private network"))
    return findings


async def _tcp(url: RedisURL, timeout_s: float) -> Finding:
    try:
        if url.scheme == "unix":
            assert url.path is not None
            _, writer = await asyncio.wait_for(asyncio.open_unix_connection(url.path), timeout_s)
        else:
            _, writer = await asyncio.wait_for(asyncio.open_connection(url.host, url.port), timeout_s)
    except FileNotFoundError:
        return _problem("connect", f"no socket at {url.path}", "is redis-server running with this unixsocket?")
    except ConnectionRefusedError:
        return _problem(
            "connect",
            f"connection refused by {url.host or url.path}:{url.port or ''}",
            "nothing listens there: check the port, that Redis runs, and (on Fly) that app and Redis share a region",
        )
    except (TimeoutError, OSError) as exc:
        return _problem(
            "connect",
            f"cannot connect to {url.host or url.path}:{url.port or ''} ({_why(exc)})",
            "check firewalls and the address; a connect that times out usually means the host drops the traffic",
        )
    writer.close()
    return _ok("connect", f"TCP connection to {url.host}:{url.port}" if url.host else f"socket {url.path}")


async def _tls(url: RedisURL, timeout_s: float) -> Finding:
    """Find a TLS mismatch in either direction, and certificate errors."""
    if url.scheme == "unix":
        return Finding("tls", "skipped", "unix socket")
    if not url.tls:
        # Speak plain RESP; a TLS server answers with an alert record (0x15) or hangs up.
        try:
            reader, writer = await asyncio.wait_for(asyncio.open_connection(url.host, url.port), timeout_s)
            try:
                writer.write(b"PING\r\n")
                await writer.drain()
                first = await asyncio.wait_for(reader.read(1), timeout_s)
            finally:
                writer.close()
        except TimeoutError:
            # A TLS server hangs up on plain text at once; silence is a server that answers nothing.
            return _problem(
                "answer",
                f"{url.host}:{url.port} accepts connections but answered nothing within {timeout_s:g} s",
                "Redis is paused, overloaded or stuck (a long command, a slow disk with appendfsync always): "
                "check its CPU, SLOWLOG and logs",
            )
        except OSError:
            first = b""
        if first in (b"", b"\x15"):
            return _problem(
                "tls",
                "the server does not answer plain Redis on this port; it looks like a TLS port",
                "use rediss:// instead of redis:// (Upstash's public endpoints need TLS)",
            )
        return _ok("tls", "plain connection (redis://); use rediss:// for traffic that leaves a private network")
    context = ssl.create_default_context()
    try:
        _, writer = await asyncio.wait_for(
            asyncio.open_connection(url.host, url.port, ssl=context, server_hostname=url.host), timeout_s
        )
        writer.close()
    except ssl.SSLCertVerificationError as exc:
        return _problem(
            "tls",
            f"the server's certificate is not trusted: {exc.verify_message}",
            "check the host name matches the certificate and the CA is installed; don't turn verification off",
        )
    except (ssl.SSLError, TimeoutError, OSError) as exc:
        return _problem(
            "tls",
            f"TLS handshake failed ({_why(exc)}): the port seems to speak plain Redis",
            "use redis:// instead of rediss:// (Fly Redis's private URL is redis://)",
        )
    return _ok("tls", "TLS handshake and certificate verified")


async def _redis_checks(url: RedisURL, settings: Settings, timeout_s: float) -> list[Finding]:
    pool = connection_pool(url, max_connections=2, timeout_s=timeout_s, retries=0, client_name="ottoai-doctor")
    client = Redis.from_pool(pool)
    findings: list[Finding] = []
    try:
        try:
            latencies = []
            for _ in range(5):
                started = time.perf_counter()
                await client.ping()
                latencies.append((time.perf_counter() - started) * 1000)
        except AuthenticationError as exc:
            return [_problem("auth", f"authentication failed: {exc}", AUTH_ADVICE)]
        except ResponseError as exc:
            if "AUTH" in str(exc).upper() or "WRONGPASS" in str(exc).upper():
                return [_problem("auth", f"authentication failed: {exc}", AUTH_ADVICE)]
            return [_problem("ping", f"PING failed: {exc}", "see the Redis server's logs")]
        except (RedisError, OSError) as exc:
            return [_problem("ping", f"PING failed: {exc}", "see the checks above")]
        findings.append(_ok("auth", "authenticated" if url.password else "no password in the URL; server accepted"))
        median = statistics.median(latencies)
        findings.append(
            _ok("ping", f"median {median:.1f} ms over 5")
            if median <= SLOW_PING_MS
            else _problem("ping", f"median {median:.1f} ms over 5", "put Redis in the app's region (same Fly region)")
        )
        for check in (_version, _lua, _memory, _eviction, _persistence):
            try:
                findings.append(await check(client))
            except ResponseError as exc:  # managed Redis may refuse INFO sections or CONFIG
                findings.append(Finding(check.__name__.lstrip("_"), "skipped", f"not allowed here: {exc}"))
        if settings.enable_worker:
            findings.append(await _workers(client))
            if settings.enable_cron:
                findings.append(await _scheduler(client))
    finally:
        await client.aclose()
    return findings


async def _workers(client: Redis) -> Finding:
    workers = await live_workers(client)
    if not workers:
        return _problem(
            "workers",
            "no live worker heartbeat: enqueued jobs will wait",
            "start a worker (python -m jobs; on Fly: fly scale count worker=1) or set ENABLE_WORKER=false",
        )
    freshest = min(w["beat_age_s"] for w in workers)
    return _ok("workers", f"{len(workers)} live, last beat {freshest:.1f} s ago")


async def _scheduler(client: Redis) -> Finding:
    health = await CronStore(client, SCHEDULE).health()
    if not health.workers:
        return _problem(
            "scheduler",
            "no live worker runs the cron schedule: cron jobs will not run",
            "start a worker with ENABLE_CRON on (python -m jobs), or set ENABLE_CRON=false",
        )
    if health.stalled:
        return _problem(
            "scheduler",
            f"cron jobs with no pending run, or overdue past their grace: {', '.join(health.stalled)}",
            "see python -m jobs cron list; restarting a worker schedules every job again",
        )
    return _ok("scheduler", f"{health.workers} worker(s) run cron, last beat {health.last_beat_age_s:.1f} s ago")


AUTH_ADVICE = (
    "check the user and password in the URL (redis://user:password@host:port/db); on Upstash/Fly Redis the user is "
    "'default'; a server without a password refuses AUTH"
)


async def _version(client: Redis) -> Finding:
    info = await client.info("server")
    version = str(info.get("redis_version", "?"))
    parts = tuple(int(p) for p in version.split(".")[:2] if p.isdigit())
    if parts and parts < OLDEST_GOOD_VERSION:
        return _problem("version", f"Redis {version}", "use Redis 6.2 or newer")
    return _ok("version", f"Redis {version}")


async def _lua(client: Redis) -> Finding:
    result = await client.eval("return ARGV[1]", 0, "lua-ok")  # type: ignore[misc]
    if result != b"lua-ok":
        return _problem("lua", f"EVAL returned {result!r}", "the rate limiter needs Lua scripting (EVAL/EVALSHA)")
    return _ok("lua", "EVAL works")


async def _memory(client: Redis) -> Finding:
    """A warning from 80 % of maxmemory (where the maintenance job warns too), a problem from 95 %."""
    info = await client.info("memory")
    used, limit = int(info.get("used_memory", 0)), int(info.get("maxmemory", 0))
    if limit == 0:
        return _ok("memory", f"{used / 2**20:.1f} MiB used, no maxmemory set")
    share = used / limit
    detail = f"{used / 2**20:.1f} MiB of {limit / 2**20:.1f} MiB ({share:.0%})"
    advice = "raise maxmemory or the plan, and check what grows (redis-cli --bigkeys)"
    if share >= MEMORY_CRITICAL_RATIO:
        return _problem("memory", f"{detail}: writes will soon be refused (or keys evicted)", advice)
    if share >= MEMORY_WARNING_RATIO:
        return _warning("memory", f"{detail}: nearing the limit", advice)
    return _ok("memory", detail)


async def _eviction(client: Redis) -> Finding:
    info = await client.info("memory")
    policy = str(info.get("maxmemory_policy", "")) or None
    if policy is None:
        policy = (await client.config_get("maxmemory-policy")).get("maxmemory-policy")
    if policy != "noeviction":
        return _problem(
            "eviction",
            f"maxmemory-policy is {policy}: under memory pressure Redis may drop queued jobs",
            'set it to noeviction: redis-cli -u "$REDIS_URL" config set maxmemory-policy noeviction',
        )
    return _ok("eviction", "maxmemory-policy is noeviction")


async def _persistence(client: Redis) -> Finding:
    info = await client.info("persistence")
    aof = str(info.get("aof_enabled", "0")) == "1"
    try:
        rdb = bool((await client.config_get("save")).get("save"))
    except ResponseError:
        rdb = False
    if not aof and not rdb:
        return _problem(
            "persistence",
            "neither AOF nor RDB snapshots are on: a restart loses queued jobs and rate-limit state",
            "turn AOF on (appendonly yes, appendfsync everysec) or choose a plan with persistence",
        )
    return _ok("persistence", ", ".join(name for name, on in (("AOF", aof), ("RDB", rdb)) if on) + " on")


async def diagnose(settings: Settings) -> list[Finding]:
    """Every check, in order; the first network failure skips the checks that depend on it."""
    url = settings.require_redis()
    findings = [_ok("config", f"{url.variable} = {url.redacted}")]
    for warning in settings.warnings:
        findings.append(_problem("config", warning, "unset the variable you don't mean to use"))
    timeout_s = step_timeout_s(settings)
    network = await reach(url, timeout_s)
    findings.extend(network)
    if healthy(network):
        findings.extend(await _redis_checks(url, settings, timeout_s))
    return findings


def step_timeout_s(settings: Settings) -> float:
    """Each step waits at most REDIS_TIMEOUT_S (3 s when that is longer): a hung server ends the walk in one wait."""
    return min(STEP_TIMEOUT_S, settings.redis_timeout_s)


async def reach(url: RedisURL, timeout_s: float) -> list[Finding]:
    """The network walk to ``url`` (DNS, security advice, TCP, TLS), ending at the first problem."""
    findings: list[Finding] = []
    addresses: list[str] = []
    if url.scheme != "unix":
        finding, addresses = await _dns(url, timeout_s)
        findings.append(finding)
        if finding.status == "problem":
            return [*findings, Finding("redis", "skipped", "needs a working connection")]
    findings.extend(security(url, addresses))
    steps: list[Callable[[RedisURL, float], Awaitable[Finding]]] = [_tcp, _tls]
    for step in steps:
        finding = await step(url, timeout_s)
        findings.append(finding)
        if finding.status == "problem":
            return [*findings, Finding("redis", "skipped", "needs a working connection")]
    return findings


def healthy(findings: list[Finding]) -> bool:
    """No problem found (warnings do not count: exit code 0)."""
    return all(f.status != "problem" for f in findings)


def render(findings: list[Finding], as_json: bool) -> str:
    warnings = sum(f.status == "warning" for f in findings)
    if as_json:
        document: dict[str, Any] = {
            "healthy": healthy(findings),
            "warnings": warnings,
            "checks": [asdict(f) for f in findings],
        }
        return json.dumps(document, indent=2)
    lines = []
    for finding in findings:
        lines.append(f"{finding.status:<8} {finding.check:<12} {finding.detail}")
        if finding.advice:
            lines.append(f"{'':<8} {'':<12} → {finding.advice}")
    if not healthy(findings):
        lines.append(f"{sum(f.status == 'problem' for f in findings)} problem(s) found")
    else:
        lines.append(f"healthy, {warnings} warning(s)" if warnings else "healthy")
    return "\n".join(lines)
