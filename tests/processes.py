"""Start ``python -m ...`` children on a free port and wait for them, for process-level tests."""

from __future__ import annotations

import contextlib
import signal
import subprocess
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from tests.conftest import PYTHON, ROOT, subprocess_env
from tests.servers import free_port


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
