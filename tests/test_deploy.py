"""fly.toml, the Procfile, the Dockerfile and requirements.lock agree with each other and with the settings.

Docker and Fly cannot run here, so these read the files the way they do; the processes themselves
run in ``test_procfile_processes.py``, the wheel in ``test_wheel.py``.
"""

from __future__ import annotations

import fnmatch
import importlib.metadata
import re
import tomllib

from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

from service.settings import Settings
from tests.conftest import ROOT
from tests.deploy_support import dockerfile_copy_sources, dockerfile_instructions, fly_config, fly_env, procfile

# Fly's limit for machines on shared CPUs.
FLY_MAX_KILL_TIMEOUT_S = 300
# Steps of a worker's stop that each wait up to REDIS_TIMEOUT_S when Redis hangs (jobs/worker.py
# ``stop``): measured 25.9 s with the defaults, against 3 + 5 x 5 = 28 s.
WORKER_STOP_REDIS_WAITS = 5
SECRET_NAMES = re.compile(r"URL|TOKEN|SECRET|PASSWORD|KEY", re.IGNORECASE)


def deployed_settings() -> Settings:
    """The settings of a machine: fly.toml's [env] plus a Redis URL secret."""
    return Settings.from_env({**fly_env(), "REDIS_URL": "redis://default:secret@ottoai-redis.internal:6379"})


def test_fly_processes_are_the_procfiles() -> None:
    assert fly_config()["processes"] == procfile()
    assert set(procfile()) == {"web", "worker"}
    assert procfile()["web"] == "python -m service serve"
    assert procfile()["worker"] == "python -m jobs"


def test_only_web_machines_take_traffic_and_routing_hangs_on_health() -> None:
    service = fly_config()["http_service"]
    assert service["processes"] == ["web"]
    assert service["internal_port"] == deployed_settings().port
    assert [check["path"] for check in service["checks"]] == ["/health"]
    assert "services" not in fly_config()  # nothing else is exposed, the metrics port least of all


def test_ready_is_a_top_level_check_of_every_web_machine() -> None:
    checks = fly_config()["checks"]
    [ready] = [check for check in checks.values() if check.get("path") == "/ready"]
    assert ready["type"] == "http"
    assert ready["method"] == "GET"
    assert ready["port"] == fly_config()["http_service"]["internal_port"]
    assert ready["processes"] == ["web"]
    # /ready answers within ~1.5 s even when a dependency hangs.
    assert float(ready["timeout"].removesuffix("s")) > 1.5


def test_metrics_are_scraped_on_the_metrics_port_of_both_groups() -> None:
    [metrics] = fly_config()["metrics"]
    assert metrics["path"] == "/metrics"
    assert metrics["port"] == int(fly_env()["METRICS_PORT"])
    assert metrics["port"] != fly_config()["http_service"]["internal_port"]
    assert sorted(metrics["processes"]) == sorted(procfile())


def test_every_process_group_has_its_own_vm_size() -> None:
    sizes = {group: vm for vm in fly_config()["vm"] for group in vm["processes"]}
    assert sorted(sizes) == sorted(procfile())
    assert all(vm["size"] and vm["memory"] for vm in sizes.values())


def test_kill_timeout_exceeds_every_grace_period_it_must_cover() -> None:
    settings = deployed_settings()
    config = fly_config()
    kill_timeout_s = config["kill_timeout"]
    web_stop_s = settings.shutdown_timeout_s + settings.redis_timeout_s
    worker_stop_s = settings.job_grace_s + WORKER_STOP_REDIS_WAITS * settings.redis_timeout_s
    assert config["kill_signal"] == "SIGTERM"  # both processes stop gracefully on it
    assert isinstance(kill_timeout_s, int)
    assert kill_timeout_s > web_stop_s
    assert kill_timeout_s > worker_stop_s
    assert kill_timeout_s <= FLY_MAX_KILL_TIMEOUT_S


def test_env_holds_valid_settings_and_no_secret() -> None:
    env = fly_env()
    assert not [name for name in env if SECRET_NAMES.search(name)]
    settings = deployed_settings()  # raises on any malformed value
    assert settings.port == int(env["PORT"])
    assert settings.trust_proxy_headers  # behind Fly's proxy, Fly-Client-IP is the client


def test_every_dockerfile_copy_source_exists_and_reaches_the_build_context() -> None:
    ignored = [
        line.strip() for line in (ROOT / ".dockerignore").read_text().splitlines() if line.strip() and line[0] != "#"
    ]
    sources = dockerfile_copy_sources()
    assert sources
    for source in sources:
        assert (ROOT / source).exists(), f"COPY {source}: no such file"
        assert not any(fnmatch.fnmatch(source, pattern) for pattern in ignored), f"{source} is in .dockerignore"


def test_image_installs_the_lock_with_hashes_then_the_project_without_resolving() -> None:
    runs = [" ".join(args) for instruction, args in dockerfile_instructions() if instruction == "RUN"]
    [lock_install] = [run for run in runs if "requirements.lock" in run]
    [project_install] = [run for run in runs if "--no-deps" in run]
    assert "--require-hashes" in lock_install
    assert "--no-index" in project_install
    assert runs.index(lock_install) < runs.index(project_install)
    assert "requirements.lock" in dockerfile_copy_sources()


def _lock() -> dict[str, tuple[str, int]]:
    """requirements.lock: name -> (version, number of hashes)."""
    pins: dict[str, tuple[str, int]] = {}
    text = (ROOT / "requirements.lock").read_text().replace("\\\n", " ")
    for line in text.splitlines():
        line = line.split("#", 1)[0].strip()
        if line:
            requirement, *options = line.split()
            name, _, version = requirement.partition("==")
            pins[canonicalize_name(name)] = (version, sum(option.startswith("--hash=sha256:") for option in options))
    return pins


def test_lock_pins_every_runtime_dependency_with_hashes() -> None:
    with (ROOT / "pyproject.toml").open("rb") as handle:
        project = tomllib.load(handle)
    lock = _lock()
    required = [Requirement(spec) for spec in project["project"]["dependencies"]]
    # A dependency's extras (redis[hiredis]) bring packages of their own.
    for requirement in list(required):
        for extra in requirement.extras:
            for spec in importlib.metadata.requires(requirement.name) or []:
                brought = Requirement(spec)
                if brought.marker is not None and brought.marker.evaluate({"extra": extra}):
                    required.append(brought)
    for requirement in required:
        name = canonicalize_name(requirement.name)
        assert name in lock, f"requirements.lock lacks {name}: run `make lock`"
        assert requirement.specifier.contains(lock[name][0]), f"{name}=={lock[name][0]} breaks {requirement}"
    build_backend = [canonicalize_name(Requirement(spec).name) for spec in project["build-system"]["requires"]]
    assert set(build_backend) <= set(lock)  # the image builds the project offline (--no-build-isolation)
    assert all(hashes > 0 for _, hashes in lock.values())


def test_lock_is_resolved_for_the_image_python() -> None:
    header = re.search(r"pip-compile with Python (\d+\.\d+)", (ROOT / "requirements.lock").read_text())
    [base] = [args[0] for instruction, args in dockerfile_instructions() if instruction == "FROM"]
    assert header is not None
    assert base.startswith(f"python:{header.group(1)}-")
