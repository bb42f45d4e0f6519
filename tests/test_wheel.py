"""The built package runs outside the source tree: every module, ``.lua`` script and data file ships.

The wheel is built (not editable) from exactly what the Dockerfile copies, installed into a fresh
virtualenv, and run from an empty folder, all without the network. The fresh venv finds the
project's dependencies through a ``.pth`` line naming this venv's site-packages: a path line
does not run this venv's editable-install hook, so ``service`` and ``jobs`` can only come from
the wheel (the test checks where they come from).
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import sysconfig
import venv
import zipfile
from pathlib import Path

import aiohttp
import pytest

from tests.conftest import ROOT
from tests.deploy_support import child_env, dockerfile_copy_sources, enqueue, job_reaches
from tests.processes import Proc, wait_for_status
from tests.servers import RedisServer, free_port


def run(*args: str | Path, cwd: Path, **env: str) -> str:
    done = subprocess.run(
        [str(arg) for arg in args], cwd=cwd, env=child_env(**env), capture_output=True, text=True, timeout=120
    )
    assert done.returncode == 0, done.stdout + done.stderr
    return done.stdout


@pytest.fixture(scope="module")
def wheel(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The wheel of the image's build context, built offline by this venv's setuptools."""
    tmp_path = tmp_path_factory.mktemp("wheel")
    context = tmp_path / "context"
    for source in dockerfile_copy_sources():
        if (ROOT / source).is_dir():
            shutil.copytree(ROOT / source, context / source, ignore=shutil.ignore_patterns("__pycache__"))
        else:
            context.mkdir(exist_ok=True)
            shutil.copy2(ROOT / source, context / source)
    dist = tmp_path / "dist"
    run(
        sys.executable,
        "-m",
        "pip",
        "wheel",
        "--no-deps",
        "--no-build-isolation",
        "--no-index",
        "-w",
        dist,
        context,
        cwd=tmp_path,
    )
    [built] = dist.glob("ottoai_backend-*.whl")
    return built


def fresh_venv(tmp_path: Path, wheel: Path) -> Path:
    """A new venv with only the wheel installed; its python."""
    home = tmp_path / "venv"
    venv.EnvBuilder(with_pip=False).create(home)
    python = home / "bin" / "python"
    run(sys.executable, "-m", "pip", "--python", python, "install", "--no-deps", "--no-index", wheel, cwd=tmp_path)
    [site_packages] = (home / "lib").glob("python*/site-packages")
    (site_packages / "dependencies.pth").write_text(sysconfig.get_paths()["purelib"] + "\n")
    return python


def test_wheel_ships_every_lua_script(wheel: Path) -> None:
    shipped = set(zipfile.ZipFile(wheel).namelist())
    scripts = {
        str(path.relative_to(ROOT)) for package in ("service", "jobs") for path in (ROOT / package).rglob("*.lua")
    }
    assert scripts
    assert scripts <= shipped


def test_wheel_ships_the_dashboards_script_style_sheet_and_templates(wheel: Path) -> None:
    shipped = set(zipfile.ZipFile(wheel).namelist())
    folder = ROOT / "service" / "dashboard"
    files = {str(path.relative_to(ROOT)) for kind in ("static", "templates") for path in (folder / kind).iterdir()}
    assert {"service/dashboard/static/dashboard.js", "service/dashboard/templates/page.html"} <= files
    assert files <= shipped


async def test_wheel_in_a_fresh_venv_serves_runs_a_job_and_stops_cleanly(
    wheel: Path, private_redis: RedisServer, tmp_path: Path
) -> None:
    python = fresh_venv(tmp_path, wheel)
    empty = tmp_path / "empty"
    empty.mkdir()
    where = "import json, jobs, service; print(json.dumps([jobs.__file__, service.__file__]))"
    located = json.loads(run(python, "-c", where, cwd=empty))
    assert all(path.startswith(str(tmp_path / "venv")) for path in located), located

    env = {
        "REDIS_URL": private_redis.url,
        "LOG_FORMAT": "console",
        "HOST": "127.0.0.1",
        "METRICS_PORT": str(free_port()),
    }
    key = run(python, "-m", "service", "keys", "create", "--tenant", "t", cwd=empty, **env).strip()
    port = free_port()
    web = Proc([str(python), "-m", "service", "serve"], tmp_path / "web.log", child_env(**env, PORT=str(port)), empty)
    worker = Proc([str(python), "-m", "jobs"], tmp_path / "worker.log", child_env(**env), empty)
    try:
        base = f"http://127.0.0.1:{port}"
        async with aiohttp.ClientSession() as session:
            await wait_for_status(session, f"{base}/health", 200, web)
            job_url = await enqueue(session, base, key, "diagnostics.ping")
            body = await job_reaches(session, job_url, key, "complete", timeout_s=30)
            async with session.get(f"{base}/dashboard") as page:  # its templates, from the installed package
                assert page.status == 200
                script = (await page.text()).split('<script src="')[1].split('"')[0]
            async with session.get(f"{base}{script}") as served:
                assert served.status == 200
                assert "/internal/dashboard.json" in await served.text()
        assert body["result"]["pong"] is True
        web_code, _ = await web.stop(timeout_s=30)
        worker_code, _ = await worker.stop(timeout_s=30)
    finally:
        web.kill()
        worker.kill()
    assert web_code == 0, web.output()
    assert worker_code == 0, worker.output()
    assert "Traceback" not in web.output() + worker.output()
