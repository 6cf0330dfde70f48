"""The README's quick start, run verbatim (only host:port changed) against the real stack."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys
from pathlib import Path

import httpx
import pytest

from tests.support.stack import Stack

pytestmark = pytest.mark.integration
REPO = Path(__file__).resolve().parents[2]


def quick_start_blocks() -> list[str]:
    """The bash blocks of the README's quick start, `make run` itself left out."""
    text = (REPO / "README.md").read_text()
    section = text[text.index("## Quick start") :]
    section = section[: section.index("\n## ", 5)]
    blocks = re.findall(r"```bash\n(.*?)```", section, re.S)
    return [b for b in blocks if not b.lstrip().startswith("make ")]


@pytest.fixture
def workdir(tmp_path: Path) -> Path:
    """A directory as `make run` leaves it: broker files and the development device."""
    work = tmp_path / "work"
    work.mkdir()
    for command in (["broker", "setup"], ["devices", "dev", "--out", "var/dev-device.json"]):
        subprocess.run(
            [sys.executable, "-m", "iotgw_cli", *command],
            cwd=work,
            check=True,
            capture_output=True,
            timeout=60,
        )
    return work


@pytest.mark.skipif(shutil.which("curl") is None, reason="curl is not installed")
def test_readme_quick_start(gateway_env: dict[str, str], workdir: Path) -> None:
    env = {
        **gateway_env,
        "IOTGW_AUTH_MODE": "required",  # as `make run`: a device credential is required
        "IOTGW_REGISTRY_PATH": str(workdir / "var" / "devices" / "registry.toml"),
        "IOTGW_OUTBOX_DIR": str(workdir / "var" / "outbox"),
    }
    stack = Stack(env, workdir).start()
    try:
        blocks = quick_start_blocks()
        assert len(blocks) == 3
        send, show, probes = (
            b.replace("127.0.0.1:8000", f"127.0.0.1:{stack.http_port}") for b in blocks
        )
        token_line = send.splitlines()[0]

        def bash(script: str) -> str:
            done = subprocess.run(
                ["bash", "-euc", script], cwd=workdir, capture_output=True, text=True, timeout=30
            )
            assert done.returncode == 0, done.stderr
            return done.stdout

        sent = bash(send)
        assert "HTTP/1.1 202 Accepted" in sent
        record_id = json.loads(sent.split("\n\n", 1)[1])["id"]
        delivered = stack.wait_outbox(1)
        assert [r["id"] for r in delivered] == [record_id]
        shown = bash(show)
        assert json.loads(shown.splitlines()[0])["id"] == record_id
        ready, refused = bash(token_line + "\n" + probes).split("\n", 1)
        assert ready == "200"
        assert json.loads(refused) == {
            "code": "invalid_metric_value",
            "message": "metrics.temp_c must be a number",
        }
        anonymous = httpx.post(
            f"{stack.base_url}/v1/ingest/dev-device-01", json={"metrics": {"temp_c": 1}}
        )
        assert anonymous.status_code == 401
    finally:
        stack.stop()


def test_413_counts_streamed_bytes_without_content_length(stack: Stack) -> None:
    def chunks():  # type: ignore[no-untyped-def]
        for _ in range(100):
            yield b" " * 1024  # 100 KiB of JSON whitespace, over the 64 KiB limit

    with httpx.Client(base_url=stack.base_url, timeout=10) as client:
        r = client.post(
            "/v1/ingest/dev", content=chunks(), headers={"Content-Type": "application/json"}
        )
        assert r.status_code == 413
        assert r.json()["code"] == "body_too_large"
        assert client.get("/readyz").status_code == 200
