"""The self-hosted Redis of deploy/redis keeps its promises: AOF everysec, noeviction, a password, private.

Docker cannot run here, so the test runs the app's own start script and redis.conf with the local
``redis-server``; only the data folder, the port and the bind address are moved (arguments appended
last win), and the redis image's entrypoint (which drops root) is a pass-through.
"""

from __future__ import annotations

import json
import re
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import redis as redis_sync

from tests.conftest import PYTHON, ROOT, subprocess_env
from tests.deploy_support import REDIS_APP, dockerfile_copy_sources, fly_config
from tests.servers import RedisServer, free_port

START_SCRIPT = REDIS_APP / "start.sh"
PASSWORD = "selfhosted-test-password"


@pytest.fixture(scope="module")
def selfhosted(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RedisServer]:
    """deploy/redis/start.sh, run as the image runs it, with ``REDIS_PASSWORD`` as the Fly secret."""
    folder = tmp_path_factory.mktemp("selfhosted-redis")
    shim = folder / "bin"
    shim.mkdir()
    (shim / "docker-entrypoint.sh").write_text('#!/bin/sh\nexec "$@"\n')
    (shim / "docker-entrypoint.sh").chmod(0o755)
    data = folder / "data"
    server = RedisServer(data, port=free_port(), binary=str(START_SCRIPT))
    with pytest.MonkeyPatch.context() as env:
        env.setenv("PATH", f"{shim}:{subprocess_env()['PATH']}")
        env.setenv("REDIS_PASSWORD", PASSWORD)
        server.start()
    yield server
    server.stop()


def doctor(url: str) -> tuple[int, dict[str, Any]]:
    done = subprocess.run(
        [PYTHON, "-m", "service", "doctor", "--json"],
        cwd=ROOT,
        env=subprocess_env(REDIS_URL=url, ENABLE_WORKER="false"),
        capture_output=True,
        text=True,
        timeout=60,
    )
    report: dict[str, Any] = json.loads(done.stdout)
    return done.returncode, {check["check"]: check for check in report["checks"]}


def with_password(server: RedisServer, password: str) -> str:
    return server.url.replace("redis://", f"redis://default:{password}@")


def test_doctor_finds_aof_noeviction_and_a_password_on_the_selfhosted_redis(selfhosted: RedisServer) -> None:
    code, found = doctor(with_password(selfhosted, PASSWORD))
    assert code == 0, found
    assert found["auth"]["status"] == "ok"
    assert found["auth"]["detail"] == "authenticated"
    assert found["persistence"]["status"] == "ok"
    assert "AOF" in found["persistence"]["detail"]
    assert found["eviction"]["status"] == "ok"
    assert found["memory"]["status"] == "ok"


def test_selfhosted_redis_fsyncs_its_aof_every_second_on_the_data_folder(selfhosted: RedisServer) -> None:
    with redis_sync.Redis.from_url(with_password(selfhosted, PASSWORD)) as client:
        assert client.config_get("appendfsync") == {"appendfsync": "everysec"}
        assert client.config_get("dir") == {"dir": str(selfhosted.data_dir)}
    assert (selfhosted.data_dir / "appendonlydir").is_dir()


@pytest.mark.parametrize("password", [None, "not-the-password"])
def test_selfhosted_redis_refuses_clients_without_its_password(selfhosted: RedisServer, password: str | None) -> None:
    code, found = doctor(selfhosted.url if password is None else with_password(selfhosted, password))
    assert code == 1
    assert found["auth"]["status"] == "problem"


def test_start_script_refuses_to_start_without_the_password_secret(tmp_path: Path) -> None:
    env = {name: value for name, value in subprocess_env().items() if name != "REDIS_PASSWORD"}
    done = subprocess.run([str(START_SCRIPT)], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=10)
    assert done.returncode == 2
    assert "fly secrets set REDIS_PASSWORD=" in done.stderr


def test_redis_app_has_no_public_port_and_keeps_its_data_on_the_volume() -> None:
    config = fly_config(REDIS_APP / "fly.toml")
    dockerfile = (REDIS_APP / "Dockerfile").read_text()
    assert "http_service" not in config
    assert "services" not in config
    assert re.search(r"^FROM redis:7-alpine$", dockerfile, re.MULTILINE)
    assert re.search(rf"^WORKDIR {config['mounts']['destination']}$", dockerfile, re.MULTILINE)
    assert config["mounts"]["destination"] == "/data"
    assert config["kill_signal"] == "SIGTERM"  # Redis writes its files and exits on SIGTERM
    sources = dockerfile_copy_sources(REDIS_APP / "Dockerfile")
    assert sources == ["redis.conf", "start.sh"]
    assert all((REDIS_APP / source).exists() for source in sources)


def test_maxmemory_leaves_half_the_vm_for_rewrites_and_snapshots(selfhosted: RedisServer) -> None:
    [vm] = fly_config(REDIS_APP / "fly.toml")["vm"]
    vm_bytes = int(vm["memory"].removesuffix("gb")) * 2**30
    with redis_sync.Redis.from_url(with_password(selfhosted, PASSWORD)) as client:
        maxmemory = int(client.config_get("maxmemory")["maxmemory"])
    assert 0 < maxmemory <= vm_bytes // 2
