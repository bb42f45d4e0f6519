"""Child processes for process-level tests: start them, wait for them, stop them, read what they said.

``Proc``: a child whose output goes to a file (``python -m jobs``, the Procfile's commands, dev,
the chaos cluster); the ``procs`` fixture (``tests/conftest.py``) kills any a test leaves running.
``Child``: ``python -m service ...`` on a free port, with HTTP helpers (``run_service``).
"""

from __future__ import annotations

import asyncio
import contextlib
import signal
import subprocess
import time
import urllib.error
import urllib.request
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import aiohttp

from tests.conftest import PYTHON, ROOT, subprocess_env
from tests.servers import free_port


class Proc:
    """A child process whose output goes to the file ``log`` (no pipe to fill up while it runs).

    ``args`` and ``env`` are the whole command and environment (``Proc.python`` fills them in for
    ``python ARGS`` in the test environment); ``new_session`` starts it in a process group of its
    own, as a terminal does.
    """

    def __init__(
        self, args: Sequence[str], log: Path, env: Mapping[str, str], cwd: Path = ROOT, *, new_session: bool = False
    ) -> None:
        self.log = log
        with log.open("wb") as out:
            self.popen = subprocess.Popen(
                list(args), cwd=cwd, env=dict(env), stdout=out, stderr=subprocess.STDOUT, start_new_session=new_session
            )

    @classmethod
    def python(cls, args: Sequence[str], log: Path, env: Mapping[str, str], cwd: Path = ROOT) -> Proc:
        """``python ARGS`` with this interpreter, in the test environment (``subprocess_env``) plus ``env``."""
        return cls([PYTHON, *args], log, subprocess_env(**env), cwd)

    @property
    def alive(self) -> bool:
        return self.popen.poll() is None

    def output(self) -> str:
        return self.log.read_text(errors="replace")

    def wait_for_line(self, text: str, timeout_s: float = 60.0) -> str:
        """The first line of its output that holds ``text``, once there is one; fails if it exits first."""
        deadline = time.monotonic() + timeout_s
        while not (lines := [line for line in self.output().splitlines() if text in line]):
            assert self.alive, self.output()
            assert time.monotonic() < deadline, f"no line with {text!r} within {timeout_s} s:\n{self.output()}"
            time.sleep(0.05)
        return lines[0]

    async def exited(self, timeout_s: float) -> int:
        """Wait for the exit code; fail with the output if it takes longer than ``timeout_s``."""
        deadline = time.monotonic() + timeout_s
        while self.popen.poll() is None:
            if time.monotonic() > deadline:
                raise AssertionError(f"still running after {timeout_s} s:\n{self.output()}")
            await asyncio.sleep(0.02)
        return self.popen.returncode

    async def stop(self, timeout_s: float) -> tuple[int, float]:
        """SIGTERM, as Fly's kill_signal; the exit code and the seconds it took (fails after ``timeout_s``)."""
        started = time.monotonic()
        self.popen.terminate()
        code = await self.exited(timeout_s)
        return code, time.monotonic() - started

    def terminate(self, timeout_s: float = 15.0) -> int:
        """SIGTERM and wait, outside an event loop; killed if it outlasts ``timeout_s``. Its exit code."""
        if self.alive:
            self.popen.terminate()
            try:
                return self.popen.wait(timeout=timeout_s)
            except subprocess.TimeoutExpired:
                self.kill()
        return self.popen.returncode

    def kill(self) -> None:
        if self.alive:
            self.popen.kill()
            self.popen.wait()


async def wait_for_status(
    session: aiohttp.ClientSession, url: str, status: int, proc: Proc, timeout_s: float = 30.0
) -> None:
    """Poll ``url`` until it answers ``status``; fail early if ``proc`` dies."""
    deadline = time.monotonic() + timeout_s
    last: object = None
    while True:
        assert proc.alive, f"exited with {proc.popen.returncode}:\n{proc.output()}"
        try:
            async with session.get(url) as response:
                last = response.status
                if response.status == status:
                    return
        except aiohttp.ClientConnectionError as exc:
            last = exc
        assert time.monotonic() < deadline, f"{url} answered {last!r}, not {status}, for {timeout_s} s"
        await asyncio.sleep(0.05)


@dataclass
class Child:
    process: subprocess.Popen[bytes]
    port: int

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def get(self, path: str, headers: dict[str, str] | None = None) -> tuple[int, bytes]:
        request = urllib.request.Request(self.base_url + path, headers=headers or {})
        try:
            with urllib.request.urlopen(request, timeout=5) as response:
                return int(response.status), bytes(response.read())
        except urllib.error.HTTPError as error:
            return int(error.code), bytes(error.read())

    def wait_healthy(self, timeout_s: float = 30.0, path: str = "/health") -> None:
        """Until ``path`` answers 200 (``/ready``: until the process's dependencies are up too)."""
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise AssertionError(f"process exited early with {self.process.returncode}")
            try:
                if self.get(path)[0] == 200:
                    return
            except OSError:
                pass
            time.sleep(0.1)
        raise AssertionError(f"{path} did not answer 200 within {timeout_s} s")

    def stop(self, sig: signal.Signals = signal.SIGTERM, timeout_s: float = 10.0) -> tuple[int, float, str]:
        """Send ``sig``; return the exit code, seconds it took, and everything it printed."""
        started = time.monotonic()
        self.process.send_signal(sig)
        output, _ = self.process.communicate(timeout=timeout_s)
        text = output.decode(errors="replace") if output is not None else ""  # None when it went to a file
        return self.process.returncode, time.monotonic() - started, text


def run_python(
    *args: str, env: Mapping[str, str], cwd: Path = ROOT, timeout_s: float = 30.0
) -> subprocess.CompletedProcess[str]:
    """``python ARGS`` (a command line: ``-m service keys ...``) to its end, in the test environment plus ``env``;
    its exit code and text output."""
    return subprocess.run(
        [PYTHON, *args], cwd=cwd, env=subprocess_env(**env), capture_output=True, text=True, timeout=timeout_s
    )


@contextlib.contextmanager
def run_service(*args: str, cwd: Path = ROOT, log: Path | None = None, **env: str) -> Iterator[Child]:
    """``python -m service ARGS`` on a free port, stdout and stderr merged; killed if left running.

    ``dev`` keeps its embedded Redis's data under its working folder: give it a temporary ``cwd``.
    The output goes to a pipe that ``Child.stop`` reads, or to the file ``log``: a child that
    serves many requests fills a pipe nobody reads while it runs, and then stops answering.
    """
    port = free_port()
    with contextlib.ExitStack() as files:
        output = files.enter_context(log.open("wb")) if log is not None else subprocess.PIPE
        process = subprocess.Popen(
            [PYTHON, "-m", "service", *args],
            cwd=cwd,
            env=subprocess_env(PORT=str(port), HOST="127.0.0.1", **env),
            stdout=output,
            stderr=subprocess.STDOUT,
        )
    try:
        yield Child(process, port)
    finally:
        if process.poll() is None:
            process.kill()
            process.communicate()
