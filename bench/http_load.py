"""A small HTTP/1.1 keep-alive load generator, used when ``wrk`` is not installed.

Each connection sends one request, reads the whole answer (``Content-Length`` framing),
and sends the next, like ``wrk``. Run it in its own process so it does not share a core's
event loop with the server:
``python -m bench.http_load HOST PORT TARGETS_FILE SECONDS CONNECTIONS METHOD BODY`` prints one
JSON line (requests, seconds, p50_us, p99_us, non_2xx, socket_errors). The targets file is
``bench.harness``'s: ``PATH<TAB>API-KEY`` a line; ``BODY`` may be empty.
"""

from __future__ import annotations

import asyncio
import json
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

__all__ = ["run"]


@dataclass
class _Stats:
    latencies: list[float] = field(default_factory=list)
    non_2xx: int = 0


class _Connection(asyncio.Protocol):
    def __init__(self, requests: list[bytes], offset: int, stats: _Stats, stop_at: float) -> None:
        self._requests = requests
        self._next = offset
        self._stats = stats
        self._stop_at = stop_at
        self._buffer = b""
        self._sent_at = 0.0
        self._transport: asyncio.Transport | None = None
        self.closed: asyncio.Future[None] = asyncio.get_running_loop().create_future()

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self._transport = transport
        self._send()

    def _send(self) -> None:
        assert self._transport is not None
        self._next = (self._next + 1) % len(self._requests)
        self._sent_at = time.perf_counter()
        self._transport.write(self._requests[self._next])

    def data_received(self, data: bytes) -> None:
        self._buffer += data
        while True:
            head_end = self._buffer.find(b"\r\n\r\n")
            if head_end < 0:
                return
            head = self._buffer[:head_end]
            length_at = head.lower().find(b"content-length:")
            length = int(head[length_at + 15 : head.find(b"\r\n", length_at)]) if length_at >= 0 else 0
            total = head_end + 4 + length
            if len(self._buffer) < total:
                return
            status = int(head[9:12])
            self._buffer = self._buffer[total:]
            now = time.perf_counter()
            self._stats.latencies.append(now - self._sent_at)
            if not 200 <= status < 300:
                self._stats.non_2xx += 1
            if now >= self._stop_at:
                assert self._transport is not None
                self._transport.close()
                return
            self._send()

    def connection_lost(self, exc: Exception | None) -> None:
        if not self.closed.done():
            self.closed.set_result(None)


def _request(host: str, port: int, method: str, path: str, key: str, body: str) -> bytes:
    head = [f"{method} {path} HTTP/1.1", f"Host: {host}:{port}"]
    if key:
        head.append(f"X-API-Key: {key}")
    if body:
        head += ["Content-Type: application/json", f"Content-Length: {len(body.encode())}"]
    return ("\r\n".join(head) + "\r\n\r\n" + body).encode()


async def run(
    host: str, port: int, targets: list[tuple[str, str]], seconds: float, connections: int, method: str, body: str
) -> dict[str, float]:
    """Load ``host:port`` for ``seconds``, rotating over ``targets`` (path, API key)."""
    requests = [_request(host, port, method, path, key, body) for path, key in targets]
    stats = _Stats()
    loop = asyncio.get_running_loop()
    started = time.perf_counter()
    protocols = []
    for index in range(connections):
        offset = index * max(1, len(requests) // connections)
        protocol = _Connection(requests, offset, stats, started + seconds)
        await loop.create_connection(lambda p=protocol: p, host, port)  # type: ignore[misc]
        protocols.append(protocol)
    await asyncio.gather(*(p.closed for p in protocols))
    elapsed = time.perf_counter() - started
    latencies = sorted(stats.latencies)
    return {
        "requests": len(latencies),
        "seconds": elapsed,
        "p50_us": latencies[len(latencies) // 2] * 1e6,
        "p99_us": latencies[int(len(latencies) * 0.99)] * 1e6,
        "non_2xx": float(stats.non_2xx),
        "socket_errors": 0.0,
    }


if __name__ == "__main__":
    host, port, targets_file, seconds, connections, method, body = sys.argv[1:8]
    targets = [line.partition("\t")[::2] for line in Path(targets_file).read_text().splitlines() if line]
    print(json.dumps(asyncio.run(run(host, int(port), targets, float(seconds), int(connections), method, body))))
