"""The README's curl examples, run verbatim (only host:port changed) against the real stack."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from pathlib import Path

import httpx
import pytest

from tests.support.stack import Stack

pytestmark = pytest.mark.integration
REPO = Path(__file__).resolve().parents[2]


def readme_commands() -> list[str]:
    """Every curl command in the README's bash blocks, continuation lines joined."""
    blocks = re.findall(r"```bash\n(.*?)```", (REPO / "README.md").read_text(), re.S)
    commands = []
    for block in blocks:
        for command in block.replace("\\\n", " ").splitlines():
            command = command.split("  #")[0].strip()
            if command.startswith("curl"):
                commands.append(command)
    return commands


@pytest.mark.skipif(shutil.which("curl") is None, reason="curl is not installed")
def test_readme_curl_examples(stack: Stack) -> None:
    commands = readme_commands()
    assert len(commands) >= 3
    outputs = []
    for command in commands:
        local = command.replace("127.0.0.1:8000", f"127.0.0.1:{stack.http_port}")
        done = subprocess.run(local, shell=True, capture_output=True, text=True, timeout=30)
        assert done.returncode == 0, done.stderr
        outputs.append(done.stdout)
    ingest, ready, refused = outputs
    assert "HTTP/1.1 202 Accepted" in ingest
    record_id = json.loads(ingest.split("\n\n", 1)[1])["id"]
    assert ready.strip() == "200"
    assert json.loads(refused) == {
        "code": "invalid_metric_value",
        "message": "metrics.temp_c must be a number",
    }
    delivered = stack.wait_outbox(1)
    assert [r["id"] for r in delivered] == [record_id]
    assert delivered[0]["metrics"] == {"temp_c": 21.5} and delivered[0]["tags"] == {"site": "AAL"}


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
