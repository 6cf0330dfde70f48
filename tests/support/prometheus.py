"""A real Prometheus (Debian's package) on a free loopback port, scraping test processes."""

from __future__ import annotations

import shutil
import time
from pathlib import Path
from typing import Any

import httpx
import yaml

from .procs import REPO, Managed, free_port, wait_port


class PrometheusServer:
    """Prometheus with a generated config: 1 s scrapes and rule evaluation, the repo's rules."""

    def __init__(self, workdir: Path, jobs: dict[str, list[str]]) -> None:
        binary = shutil.which("prometheus")
        if binary is None:
            raise RuntimeError("prometheus is not installed (make deps)")
        self.port = free_port()
        workdir.mkdir(parents=True, exist_ok=True)
        config = {
            "global": {"scrape_interval": "1s", "evaluation_interval": "1s"},
            "rule_files": [str(p) for p in sorted((REPO / "prometheus" / "rules").glob("*.yml"))],
            "scrape_configs": [
                {"job_name": job, "static_configs": [{"targets": targets}]}
                for job, targets in jobs.items()
            ],
        }
        config_path = workdir / "prometheus.yml"
        config_path.write_text(yaml.safe_dump(config))
        self.managed = Managed(
            f"prometheus-{self.port}",
            [
                binary,
                f"--config.file={config_path}",
                f"--storage.tsdb.path={workdir / 'data'}",
                f"--web.listen-address=127.0.0.1:{self.port}",
                "--enable-feature=exemplar-storage",
                "--log.level=warn",
            ],
            workdir,
        )
        self.http = httpx.Client(base_url=f"http://127.0.0.1:{self.port}", timeout=10)

    def start(self) -> PrometheusServer:
        """Start and wait until it is ready."""
        self.managed.start()
        wait_port(self.port, proc=self.managed.proc)
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            try:
                if self.http.get("/-/ready").status_code == 200:
                    return self
            except httpx.HTTPError:
                pass
            time.sleep(0.2)
        raise TimeoutError("prometheus not ready after 30 s")

    def stop(self) -> None:
        """Stop it."""
        self.http.close()
        self.managed.stop()

    def query(self, expr: str) -> dict[str, Any]:
        """An instant query; returns the API's whole answer (status, data or error)."""
        answer: dict[str, Any] = self.http.get("/api/v1/query", params={"query": expr}).json()
        return answer

    def api(self, path: str, **params: str) -> Any:
        """GET /api/v1/<path> and return its data."""
        body = self.http.get(f"/api/v1/{path}", params=params).json()
        assert body["status"] == "success", body
        return body["data"]
