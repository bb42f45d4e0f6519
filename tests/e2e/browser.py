"""A headless Chromium driven over the DevTools protocol, from Python alone (aiohttp's websocket client).

Debian's ``chromium`` (``make e2e`` installs it when ``/usr/bin/chromium`` is missing) runs
with a throw-away profile and no background traffic. ``Browser.start`` reads the DevTools
port Chromium picked from ``DevToolsActivePort`` in its profile folder, so nothing races for
a port; one page target is attached in flat mode and every command goes to it.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import itertools
import json
import os
import shutil
import signal
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp

__all__ = ["Browser", "chromium_path", "started_browser"]

CHROMIUM_FLAGS = (
    "--headless",
    "--no-sandbox",  # CI runs as root, where Chromium's sandbox cannot start
    "--disable-gpu",
    "--disable-background-networking",
    "--no-first-run",
    "--disable-component-update",
    "--disable-sync",
    "--remote-debugging-port=0",
)


def chromium_path() -> str:
    """Debian's ``chromium``; ``AssertionError`` naming ``make e2e`` when it is not installed."""
    found = shutil.which("chromium") or ("/usr/bin/chromium" if os.path.exists("/usr/bin/chromium") else None)
    assert found, "chromium is not installed: `make e2e` installs Debian's chromium (apt-get, as root) first"
    return found


class Browser:
    """One page of a running Chromium: navigate, evaluate, wait, screenshot."""

    def __init__(self, socket: aiohttp.ClientWebSocketResponse) -> None:
        self._socket = socket
        self._ids = itertools.count(1)
        self._replies: dict[int, asyncio.Future[dict[str, Any]]] = {}
        self._events: list[tuple[str, dict[str, Any]]] = []
        self.problems: list[str] = []  # uncaught exceptions and errors the page logged (a CSP refusal is one)
        self._event_arrived = asyncio.Event()
        self._session: str | None = None
        self._reader = asyncio.get_running_loop().create_task(self._read())

    async def _read(self) -> None:
        async for message in self._socket:
            if message.type is not aiohttp.WSMsgType.TEXT:
                break
            data = json.loads(message.data)
            if "id" in data:
                future = self._replies.pop(data["id"], None)
                if future is not None and not future.done():
                    future.set_result(data)
            else:
                self._note(data["method"], data.get("params", {}))
                self._events.append((data["method"], data.get("params", {})))
                self._event_arrived.set()
        for future in self._replies.values():
            future.set_exception(ConnectionError("the DevTools connection closed"))

    def _note(self, method: str, params: dict[str, Any]) -> None:
        if method == "Runtime.exceptionThrown":
            self.problems.append(str(params["exceptionDetails"].get("exception", {}).get("description")))
        elif method == "Log.entryAdded" and params["entry"]["level"] == "error":
            self.problems.append(f"{params['entry']['text']} {params['entry'].get('url', '')}".strip())

    async def send(self, method: str, params: dict[str, Any] | None = None, *, browser: bool = False) -> Any:
        """Run one DevTools command on the page (``browser``: on the browser) and return its result."""
        message: dict[str, Any] = {"id": next(self._ids), "method": method, "params": params or {}}
        if not browser and self._session is not None:
            message["sessionId"] = self._session
        future = asyncio.get_running_loop().create_future()
        self._replies[message["id"]] = future
        await self._socket.send_str(json.dumps(message))
        reply = await asyncio.wait_for(future, 30)
        if "error" in reply:
            raise RuntimeError(f"{method}: {reply['error']}")
        return reply.get("result", {})

    async def open_page(self, width: int, height: int) -> None:
        target = await self.send("Target.createTarget", {"url": "about:blank"}, browser=True)
        attached = await self.send("Target.attachToTarget", {"targetId": target["targetId"], "flatten": True})
        self._session = attached["sessionId"]
        for domain in ("Page", "Runtime", "Network", "Log"):
            await self.send(f"{domain}.enable")
        await self.resize(width, height)

    async def resize(self, width: int, height: int) -> None:
        await self.send(
            "Emulation.setDeviceMetricsOverride",
            {"width": width, "height": height, "deviceScaleFactor": 1, "mobile": width < 600},
        )

    async def wait_event(self, method: str, timeout_s: float = 15.0) -> dict[str, Any]:
        """The next event named ``method`` (events seen before are forgotten as they are passed over)."""
        deadline = time.monotonic() + timeout_s
        while True:
            while self._events:
                name, params = self._events.pop(0)
                if name == method:
                    return params
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise AssertionError(f"no {method} within {timeout_s:g} s")
            self._event_arrived.clear()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._event_arrived.wait(), remaining)

    def forget_events(self) -> None:
        """Forget the events seen so far (before an action whose own events are awaited)."""
        self._events.clear()

    async def navigate(self, url: str) -> None:
        """Load ``url`` and wait for its load event."""
        self.forget_events()
        await self.send("Page.navigate", {"url": url})
        await self.wait_event("Page.loadEventFired")

    async def evaluate(self, expression: str) -> Any:
        """The value of a JavaScript expression in the page (promises awaited)."""
        result = await self.send(
            "Runtime.evaluate", {"expression": expression, "returnByValue": True, "awaitPromise": True}
        )
        if "exceptionDetails" in result:
            raise AssertionError(f"{expression!r} threw: {result['exceptionDetails']}")
        return result["result"].get("value")

    async def wait_for(self, expression: str, what: str, timeout_s: float = 20.0) -> Any:
        """Evaluate ``expression`` until it is truthy; fail naming ``what`` at the deadline."""
        deadline = time.monotonic() + timeout_s
        value = None
        while time.monotonic() < deadline:
            value = await self.evaluate(expression)
            if value:
                return value
            await asyncio.sleep(0.1)
        raise AssertionError(f"{what} did not happen within {timeout_s:g} s (last seen: {value!r})")

    async def screenshot(self, path: Path) -> Path:
        """A PNG of the whole page (not only the viewport) at ``path``."""
        metrics = await self.send("Page.getLayoutMetrics")
        size = metrics["cssContentSize"]
        clip = {"x": 0, "y": 0, "width": size["width"], "height": size["height"], "scale": 1}
        shot = await self.send("Page.captureScreenshot", {"format": "png", "clip": clip, "captureBeyondViewport": True})
        await asyncio.to_thread(path.write_bytes, base64.b64decode(shot["data"]))
        return path


async def _devtools_url(profile: Path, process: asyncio.subprocess.Process, timeout_s: float = 30.0) -> str:
    active = profile / "DevToolsActivePort"
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if process.returncode is not None:
            raise AssertionError(f"chromium exited with {process.returncode}")
        lines = (await asyncio.to_thread(active.read_text)).split() if active.exists() else []
        if len(lines) == 2:
            return f"ws://127.0.0.1:{lines[0]}{lines[1]}"
        await asyncio.sleep(0.05)
    raise AssertionError(f"chromium wrote no DevToolsActivePort within {timeout_s:g} s")


@contextlib.asynccontextmanager
async def started_browser(profile: Path, *, width: int = 1280, height: int = 900) -> AsyncIterator[Browser]:
    """A headless Chromium with a fresh profile in ``profile`` and one open page; killed on leaving."""
    process = await asyncio.create_subprocess_exec(
        chromium_path(),
        *CHROMIUM_FLAGS,
        f"--user-data-dir={profile}",
        "about:blank",
        stdout=asyncio.subprocess.DEVNULL,
        stderr=asyncio.subprocess.DEVNULL,
        start_new_session=True,  # its helper processes go with it
    )
    try:
        url = await _devtools_url(profile, process)
        async with aiohttp.ClientSession() as http, http.ws_connect(url, max_msg_size=0) as socket:
            browser = Browser(socket)
            await browser.open_page(width, height)
            yield browser
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, signal.SIGKILL)
        await process.wait()
