"""The dashboard in a real browser: headless Chromium against a running ``python -m service dev``.

The browser's requests carry ``Fly-Client-IP``, so the service sees a caller from beyond
loopback, as through Fly's proxy: the page sends it to the login form, and only the
internal token typed there opens it. Work enqueued through the API, a rate limit spent and a
cron job run from the page must then show up without a reload. The screenshots stay in the
test's temporary folder; their paths are printed (``make e2e`` shows them).
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from redis.asyncio import Redis

from jobs import webhook_tenants
from service.auth import ApiKeyStore
from service.sessions import COOKIE_NAME
from tests.e2e.browser import Browser, started_browser
from tests.processes import Child, run_service
from tests.servers import RedisServer, free_port

pytestmark = [pytest.mark.browser, pytest.mark.timeout(120)]

TOKEN = "e2e-internal-token"
SECRET = "e2e-webhook-secret"
PROXIED = {"Fly-Client-IP": "203.0.113.7"}


@pytest.fixture
def closed_port() -> int:
    """A loopback port nothing listens on: a webhook to it fails, and is retried."""
    return free_port()


@pytest.fixture
def dev(tmp_path: Path, private_redis: RedisServer, closed_port: int) -> Iterator[Child]:
    env = {
        "REDIS_URL": private_redis.url,
        "INTERNAL_TOKEN": TOKEN,
        "WEBHOOK_ALLOWED_HOSTS": f"127.0.0.1:{closed_port}",
        "WEBHOOK_SECRET": SECRET,
        "METRICS_PORT": "0",
        "LOG_FORMAT": "json",
    }
    with run_service("dev", cwd=tmp_path, log=tmp_path / "dev.log", **env) as child:
        child.wait_healthy(path="/ready")
        yield child
        child.stop()


async def _text(browser: Browser, selector: str) -> str:
    return str(await browser.evaluate(f"document.querySelector({json.dumps(selector)}).textContent"))


def _row_with(tbody: str, text: str) -> str:
    """A JavaScript expression: the row of ``tbody`` whose text contains ``text`` (or undefined)."""
    return f"[...document.querySelectorAll('#{tbody} tr')].find((tr) => tr.textContent.includes({json.dumps(text)}))"


async def _enqueue(session: aiohttp.ClientSession, base: str, key: str, body: dict[str, Any]) -> str:
    """Enqueue as a polite client does: a 429 (the default plan's enqueue bucket holds 5) waits its Retry-After."""
    while True:
        async with session.post(f"{base}/v1/jobs", json=body, headers={"X-API-Key": key}) as response:
            if response.status != 429:
                assert response.status == 202, await response.text()
                return str((await response.json())["id"])
            await asyncio.sleep(int(response.headers["Retry-After"]))


async def test_dashboard_in_chromium_logs_in_shows_live_work_and_runs_a_cron_job(
    dev: Child, private_redis: RedisServer, closed_port: int, tmp_path: Path
) -> None:
    base = dev.base_url
    redis = Redis.from_url(private_redis.url)
    key = await ApiKeyStore(redis).create("acme")
    await webhook_tenants.rotate_secret(redis, "acme", SECRET)  # what `python -m service webhooks ...` does
    await webhook_tenants.set_receivers(redis, "acme", (f"127.0.0.1:{closed_port}",))
    await redis.aclose()

    async with started_browser(tmp_path / "profile") as browser:
        await browser.send("Network.setExtraHTTPHeaders", {"headers": PROXIED})
        await browser.navigate(f"{base}/dashboard")
        assert await browser.evaluate("location.pathname") == "/dashboard/login"

        await browser.evaluate(f"document.getElementById('token').value = {json.dumps(TOKEN)}")
        browser.forget_events()
        await browser.evaluate("document.querySelector('form button').click()")
        await browser.wait_event("Page.loadEventFired")
        assert await browser.evaluate("location.pathname") == "/dashboard"
        cookies = (await browser.send("Network.getCookies", {"urls": [base]}))["cookies"]
        [session] = [cookie for cookie in cookies if cookie["name"] == COOKIE_NAME]
        # Chromium keeps a Secure cookie set over plain http for 127.0.0.1 (a potentially trustworthy origin).
        assert (session["secure"], session["httpOnly"], session["sameSite"]) == (True, True, "Strict")
        await browser.wait_for("document.body.dataset.loaded === 'true'", "the first document")
        assert await _text(browser, "#verdict") == "ready"

        async with aiohttp.ClientSession() as http:
            for _ in range(3):
                await _enqueue(http, base, key, {"task": "diagnostics.ping"})
            await _enqueue(http, base, key, {"task": "diagnostics.ping", "defer_seconds": 600})
            await _enqueue(http, base, key, {"task": "diagnostics.sleep", "args": {"seconds": 60}})
            hook = {"url": f"http://127.0.0.1:{closed_port}/hook", "payload": {"order": 1}}
            await _enqueue(http, base, key, {"task": "webhook.deliver", "args": hook})
            refused = 0
            for _ in range(25):  # the default plan's burst bucket holds 20
                async with http.get(f"{base}/v1/jobs", headers={"X-API-Key": key}) as response:
                    refused += response.status == 429
            assert refused > 0

        await browser.wait_for("Number(document.getElementById('complete-hour').textContent) >= 3", "3 complete")
        await browser.wait_for("document.getElementById('in-progress').textContent === '1'", "the running job")
        await browser.wait_for(f"Boolean({_row_with('failure-rows', 'webhook.deliver')})", "the failed webhook try")
        await browser.wait_for(f"Boolean({_row_with('tenant-rows', 'acme')})", "acme's 429s (flushed every 5 s)")
        assert "0%" in await browser.evaluate(f"{_row_with('tenant-rows', 'acme')}.textContent")

        run_now = f"{_row_with('cron-rows', 'cron-canary')}.querySelector('button[data-action=run]')"
        await browser.evaluate(f"{run_now}.click()")
        await browser.wait_for(
            f"{_row_with('cron-rows', 'cron-canary')}.textContent.includes('(manual)')", "the manual run's outcome"
        )
        assert "Run now: done" in await _text(browser, "#notice")

        for figure in ("queued", "deferred", "in-progress", "complete-hour", "memory", "policy", "clients", "ops"):
            assert (await _text(browser, f"#{figure}")) not in ("", "\N{EN DASH}"), figure  # the placeholder
        assert await browser.evaluate("document.querySelectorAll('#worker-rows tr td[data-label=id]').length") == 1
        wide = await browser.screenshot(tmp_path / "dashboard.png")

        await browser.resize(360, 800)
        assert await browser.evaluate("document.documentElement.scrollWidth") <= 360  # no sideways scrolling
        narrow = await browser.screenshot(tmp_path / "dashboard-360px.png")
        assert browser.problems == []  # no script error, no refusal by the Content-Security-Policy
    print(f"\nscreenshots: {wide} {narrow}")
