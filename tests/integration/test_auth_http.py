"""HTTP ingest authentication (HMAC, JWT), 401/403, per-device rate limit 429, dev mode."""

from __future__ import annotations

import json
import sqlite3
import time
from pathlib import Path
from typing import Any

import pytest
from iotgw_cli.devices import add_device
from iotgw_cli.paths import Paths
from iotgw_core.auth import make_jwt, sign_body
from iotgw_core.registry import Limits

pytestmark = [pytest.mark.integration]

BODY = b'{"metrics": {"t": 1.5}}'


@pytest.fixture
def paths(tmp_path: Path) -> Paths:
    var = tmp_path / "var"
    return Paths(
        registry=var / "devices" / "registry.toml",
        broker_dir=var / "mosquitto",
        pki_dir=var / "pki",
        quarantine=var / "quarantine.db",
    )


def signed(
    secret: str, body: bytes = BODY, *, device: str | None = None, at: float | None = None
) -> dict[str, str]:
    stamp = str(int(time.time() if at is None else at))
    headers = {
        "content-type": "application/json",
        "x-iotgw-timestamp": stamp,
        "x-iotgw-signature": sign_body(secret, stamp, body),
    }
    if device:
        headers["x-iotgw-device"] = device
    return headers


def bearer(token: str) -> dict[str, str]:
    return {"content-type": "application/json", "authorization": f"Bearer {token}"}


def stored(env_spool: str, record_id: str) -> dict[str, Any]:
    with sqlite3.connect(env_spool) as db:
        (body,) = db.execute("SELECT body FROM records WHERE id = ?", (record_id,)).fetchone()
    return dict(json.loads(body))


async def test_credentials_401_403_and_tenant_from_registry(
    make_client: Any, paths: Paths, gateway_env: dict[str, str]
) -> None:
    a = add_device(paths, "dev-a", "acme", "aal")
    b = add_device(paths, "dev-b", "other", "cph")
    async with make_client(auth_mode="required", registry_path=str(paths.registry)) as client:
        url = "/v1/ingest/dev-a"
        r = await client.post(url, content=BODY, headers={"content-type": "application/json"})
        assert r.status_code == 401 and r.json()["code"] == "unauthorized"
        assert "www-authenticate" in r.headers
        # HMAC: good, wrong secret, stale timestamp, body changed after signing.
        r = await client.post(url, content=BODY, headers=signed(a["http_secret"]))
        assert r.status_code == 202, r.text
        env = stored(gateway_env["IOTGW_SPOOL_PATH"], r.json()["id"])
        assert (env["tenant"], env["site"], env["device_id"]) == ("acme", "aal", "dev-a")
        r = await client.post(url, content=BODY, headers=signed("not-the-secret"))
        assert r.status_code == 401
        r = await client.post(
            url, content=BODY, headers=signed(a["http_secret"], at=time.time() - 3600)
        )
        assert r.status_code == 401 and "X-IoTGW-Timestamp" in r.json()["message"]
        r = await client.post(
            url, content=b'{"metrics": {"t": 9}}', headers=signed(a["http_secret"])
        )
        assert r.status_code == 401
        # Another device's good HMAC credential: 403.
        r = await client.post(url, content=BODY, headers=signed(b["http_secret"], device="dev-b"))
        assert r.status_code == 403 and r.json()["code"] == "forbidden"
        # JWT: the one `devices add` printed, a fresh one, another device's, expired, forged.
        r = await client.post(url, content=BODY, headers=bearer(a["http_token"]))
        assert r.status_code == 202
        r = await client.post(
            url, content=BODY, headers=bearer(make_jwt(a["http_secret"], "dev-a", 60))
        )
        assert r.status_code == 202
        r = await client.post(url, content=BODY, headers=bearer(b["http_token"]))
        assert r.status_code == 403
        expired = make_jwt(a["http_secret"], "dev-a", 60, now=time.time() - 3600)
        r = await client.post(url, content=BODY, headers=bearer(expired))
        assert r.status_code == 401
        r = await client.post(url, content=BODY, headers=bearer(make_jwt("forged", "dev-a", 60)))
        assert r.status_code == 401
        r = await client.post(url, content=BODY, headers=bearer("not.a.jwt"))
        assert r.status_code == 401
        # The batch endpoint takes the same credential.
        batch = b'[{"metrics": {"t": 1}}, {"metrics": {"t": 2}}]'
        r = await client.post(
            url + "/batch", content=batch, headers=signed(a["http_secret"], batch)
        )
        assert r.status_code == 202
        r = await client.post(
            url + "/batch", content=batch, headers={"content-type": "application/json"}
        )
        assert r.status_code == 401
        health = (await client.get("/healthz")).json()
        assert health["auth"]["mode"] == "required" and health["auth"]["devices"] == 2


async def test_registry_reloaded_without_restart(make_client: Any, paths: Paths) -> None:
    add_device(paths, "dev-first", "acme", "aal")
    async with make_client(auth_mode="required", registry_path=str(paths.registry)) as client:
        late = add_device(paths, "dev-late", "acme", "aal")
        r = await client.post(
            "/v1/ingest/dev-late", content=BODY, headers=bearer(late["http_token"])
        )
        assert r.status_code == 202, r.text


async def test_rate_limit_answers_429_with_retry_after(make_client: Any, paths: Paths) -> None:
    slow = add_device(paths, "dev-slow", "acme", "aal", limits=Limits(rate_per_s=0.2, burst=3))
    fast = add_device(paths, "dev-fast", "acme", "aal")
    async with make_client(auth_mode="required", registry_path=str(paths.registry)) as client:
        codes = []
        for _ in range(5):
            r = await client.post(
                "/v1/ingest/dev-slow", content=BODY, headers=bearer(slow["http_token"])
            )
            codes.append(r.status_code)
        assert codes == [202, 202, 202, 429, 429]
        assert r.json()["code"] == "rate_limited"
        assert 1 <= int(r.headers["retry-after"]) <= 5
        # Another device has its own bucket.
        r = await client.post(
            "/v1/ingest/dev-fast", content=BODY, headers=bearer(fast["http_token"])
        )
        assert r.status_code == 202


async def test_development_mode_says_so(make_client: Any, caplog: pytest.LogCaptureFixture) -> None:
    async with make_client(auth_mode="none") as client:
        r = await client.post(
            "/v1/ingest/anyone", content=BODY, headers={"content-type": "application/json"}
        )
        assert r.status_code == 202
        health = (await client.get("/healthz")).json()
    assert health["auth"]["mode"] == "none"
    assert "AUTHENTICATION IS OFF" in health["auth"]["warning"]
    assert "AUTHENTICATION IS OFF" in caplog.text


async def test_auth_required_is_the_default(
    make_client: Any, paths: Paths, gateway_env: dict[str, str]
) -> None:
    from iotgw_core.settings import load_settings
    from iotgw_ingest_http.settings import IngestHttpSettings

    env = {k: v for k, v in gateway_env.items() if k != "IOTGW_AUTH_MODE"}
    assert load_settings(IngestHttpSettings, env).auth_mode == "required"
