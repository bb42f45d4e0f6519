"""A slow network to Redis, for the tests that need one (``tests.servers.SilentServer`` is a hung one).

- ``DelayProxy``: a child process (``python -m tests.proxy``) that forwards to a real
  Redis, holding every chunk ``delay_s`` in each direction (a slow link) while it is slow;
  SIGUSR1 makes it slow, SIGUSR2 fast again. A process of its own: in the test's process
  it would compete for the interpreter with the load whose latency the test measures.
"""

from __future__ import annotations

import asyncio
import contextlib
import signal
import subprocess
import sys
import time

from service.embedded_redis import die_with_parent
from tests.conftest import PYTHON, ROOT, subprocess_env

__all__ = ["DelayProxy"]


class DelayProxy:
    """A TCP proxy on 127.0.0.1 to ``target_port`` that adds ``delay_s`` per direction while slow."""

    def __init__(self, target_port: int, delay_s: float) -> None:
        self.target_port = target_port
        self.delay_s = delay_s
        self.port = 0
        self._process: subprocess.Popen[str] | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self, slow: bool = True) -> DelayProxy:
        self._process = subprocess.Popen(
            [PYTHON, "-m", "tests.proxy", str(self.target_port), str(self.delay_s), "slow" if slow else "fast"],
            cwd=ROOT,
            env=subprocess_env(),
            stdout=subprocess.PIPE,
            text=True,
            preexec_fn=die_with_parent,
        )
        assert self._process.stdout is not None
        self.port = int(self._process.stdout.readline())
        return self

    def slow(self, on: bool) -> None:
        """Add the delay (``True``) or forward at once (``False``), from now on."""
        assert self._process is not None
        self._process.send_signal(signal.SIGUSR1 if on else signal.SIGUSR2)

    def stop(self) -> None:
        if self._process is not None and self._process.poll() is None:
            self._process.kill()
            self._process.wait()
        if self._process is not None and self._process.stdout is not None:
            self._process.stdout.close()


async def _serve(target_port: int, delay_s: float, slow: bool) -> None:
    current = {"delay_s": delay_s if slow else 0.0}
    loop = asyncio.get_running_loop()
    loop.add_signal_handler(signal.SIGUSR1, lambda: current.update(delay_s=delay_s))
    loop.add_signal_handler(signal.SIGUSR2, lambda: current.update(delay_s=0.0))

    async def pipe(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        """Copy ``reader`` to ``writer``, each chunk held for the delay in force when it arrived, in order."""
        queue: asyncio.Queue[tuple[float, bytes]] = asyncio.Queue()

        async def deliver() -> None:
            while True:
                due, data = await queue.get()
                if not data:
                    break
                await asyncio.sleep(max(0.0, due - time.monotonic()))
                writer.write(data)
                await writer.drain()

        delivering = asyncio.ensure_future(deliver())
        with contextlib.suppress(OSError):
            while data := await reader.read(65536):
                queue.put_nowait((time.monotonic() + current["delay_s"], data))
        queue.put_nowait((0.0, b""))
        with contextlib.suppress(OSError):
            await delivering
        writer.close()

    async def accept(client_reader: asyncio.StreamReader, client_writer: asyncio.StreamWriter) -> None:
        try:
            server_reader, server_writer = await asyncio.open_connection("127.0.0.1", target_port)
        except OSError:
            client_writer.close()
            return
        await asyncio.gather(pipe(client_reader, server_writer), pipe(server_reader, client_writer))

    server = await asyncio.start_server(accept, "127.0.0.1", 0)
    print(server.sockets[0].getsockname()[1], flush=True)
    await server.serve_forever()


if __name__ == "__main__":
    asyncio.run(_serve(int(sys.argv[1]), float(sys.argv[2]), sys.argv[3] == "slow"))
