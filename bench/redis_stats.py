"""What a private Redis served during a benchmark: how many commands, and who sent them.

Two counts, because they answer two questions:

- **Server-side** (``command_calls``, from ``INFO commandstats``): every command Redis ran,
  including those a Lua script runs inside the server. An ``EVALSHA`` whose script calls
  ``GET`` and ``SET`` adds one to ``cmdstat_evalsha``, one to ``cmdstat_get`` and one to
  ``cmdstat_set``; commandstats cannot tell that ``GET`` from one a client sent.
- **Client-sent** (``Monitor``): the commands clients sent, a script call counting once.
  That is what a metered Redis such as Upstash bills. ``MONITOR`` shows every command with
  its source: ``[0 127.0.0.1:5123] "evalsha" ...`` for one a client sent, ``[0 lua] "GET" ...``
  for one a script ran, so the tap counts each kind by name. MONITOR costs Redis time for
  every command, so benchmarks tap a counting window of their own, never a timed one.
"""

from __future__ import annotations

import re
import socket
import threading
import uuid
from collections import Counter
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlsplit

__all__ = ["Monitor", "Window", "command_calls", "delta", "per"]

# Commands a benchmark sends itself to measure; never counted.
OWN_COMMANDS = frozenset({"info", "echo", "monitor"})
# A MONITOR line: +1700000000.123456 [0 unix:/tmp/redis.sock] "evalsha" "..." (or [0 lua] "GET" ...)
_SOURCE_AND_NAME = re.compile(rb'^\+[\d.]+ \[\d+ ([^\]]*)\] "([^"]*)"', re.MULTILINE)


def command_calls(commandstats: Mapping[str, Any]) -> dict[str, int]:
    """``{command: calls}`` from redis-py's parsed ``INFO commandstats`` (``cmdstat_get``: ``get``)."""
    return {
        name.removeprefix("cmdstat_"): int(value["calls"])
        for name, value in commandstats.items()
        if name.startswith("cmdstat_")
    }


def delta(before: Mapping[str, int], after: Mapping[str, int], ignore: Iterable[str] = OWN_COMMANDS) -> dict[str, int]:
    """Calls per command between two snapshots, without ``ignore`` and without zeros."""
    skip = set(ignore)
    changes = {name: calls - before.get(name, 0) for name, calls in after.items() if name not in skip}
    return {name: calls for name, calls in changes.items() if calls}


def per(counts: Mapping[str, int], units: float, top: int = 6) -> str:
    """``"get 4.00, zscore 2.00, ..."``: the largest ``top`` counts divided by ``units``."""
    if not counts or not units:
        return "none"
    ranked = sorted(counts.items(), key=lambda item: (-item[1], item[0]))
    shown = [f"{name} {calls / units:.2f}" for name, calls in ranked[:top]]
    rest = sum(calls for _, calls in ranked[top:])
    if rest:
        shown.append(f"others {rest / units:.2f}")
    return ", ".join(shown)


@dataclass
class Window:
    """The commands seen between two marks, by name: sent by clients, and run by scripts; and the
    client connections (by address) that sent them."""

    client: dict[str, int] = field(default_factory=dict)
    script: dict[str, int] = field(default_factory=dict)
    senders: dict[str, set[bytes]] = field(default_factory=dict, compare=False)

    def without(self, ignore: Iterable[str]) -> Window:
        skip = set(ignore)
        return Window(
            {k: v for k, v in self.client.items() if k not in skip},
            {k: v for k, v in self.script.items() if k not in skip},
            {k: v for k, v in self.senders.items() if k not in skip},
        )

    @property
    def client_total(self) -> int:
        return sum(self.client.values())

    @property
    def server_total(self) -> int:
        return self.client_total + sum(self.script.values())


def _connect(url: str) -> socket.socket:
    parts = urlsplit(url)
    if parts.scheme == "unix":
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        sock.connect(parts.path)
        return sock
    return socket.create_connection((parts.hostname or "127.0.0.1", parts.port or 6379))


class Monitor:
    """A ``MONITOR`` tap on the Redis at ``url`` (no password), read by a thread of its own.

    ``mark()`` returns the commands seen since the previous mark; it sends an ``ECHO``
    with a fresh token and waits for the tap to read it, so every command Redis ran
    before the mark is counted before it. Use it as a context manager.
    """

    def __init__(self, url: str) -> None:
        self._tap = _connect(url)
        self._tap.sendall(b"MONITOR\r\n")
        self._control = _connect(url)
        # (source, command name) -> calls; the source is b"lua" for a script's command, else the client's address
        self._counts: Counter[tuple[bytes, bytes]] = Counter()
        self._taken: Counter[tuple[bytes, bytes]] = Counter()
        self._lock = threading.Lock()
        self._awaited: dict[bytes, threading.Event] = {}
        self._thread = threading.Thread(target=self._read, name="redis-monitor", daemon=True)
        self._thread.start()
        self.mark()  # from here on

    def __enter__(self) -> Monitor:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        self._tap.shutdown(socket.SHUT_RDWR)  # wakes the reader's recv; close() alone would not
        self._thread.join(timeout=5)
        self._tap.close()
        self._control.close()

    def mark(self, timeout_s: float = 30.0) -> Window:
        """The commands since the previous mark (or since the tap started)."""
        token = uuid.uuid4().hex.encode()
        seen = threading.Event()
        with self._lock:
            self._awaited[token] = seen
        self._control.sendall(b"*2\r\n$4\r\nECHO\r\n$%d\r\n%b\r\n" % (len(token), token))
        reply = b"$%d\r\n%b\r\n" % (len(token), token)
        received = b""
        while len(received) < len(reply):  # read the whole reply, so that the next mark reads only its own
            chunk = self._control.recv(len(reply) - len(received))
            if not chunk:
                raise ConnectionError("Redis closed the MONITOR tap's control connection")
            received += chunk
        if not seen.wait(timeout_s):
            raise TimeoutError("the MONITOR tap did not see its mark")
        with self._lock:
            now = Counter(self._counts)
        window, self._taken = now - self._taken, now
        client: Counter[str] = Counter()
        script: Counter[str] = Counter()
        senders: dict[str, set[bytes]] = {}
        for (source, name), calls in window.items():
            command = name.decode(errors="replace").lower()
            if source == b"lua":
                script[command] += calls
            else:
                client[command] += calls
                senders.setdefault(command, set()).add(source)
        return Window(dict(client), dict(script), senders).without(OWN_COMMANDS)

    def _read(self) -> None:
        pending = b""
        while True:
            try:
                chunk = self._tap.recv(1 << 18)
            except OSError:
                return
            if not chunk:
                return
            complete, _, pending = (pending + chunk).rpartition(b"\r\n")
            # One regular-expression pass per chunk, counted in C: the tap must not steal the
            # CPU of the processes it watches.
            seen = Counter(_SOURCE_AND_NAME.findall(complete))
            with self._lock:
                self._counts.update(seen)
                for token in [token for token in self._awaited if token in complete]:
                    self._awaited.pop(token).set()
