"""Device credentials: mosquitto_passwd hashes, HMAC, JWT, token buckets."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest
from iotgw_core.auth import (
    AuthError,
    RateLimiter,
    authenticate,
    hash_mqtt_password,
    make_jwt,
    sign_body,
    verify_jwt,
    verify_mqtt_password,
)
from iotgw_core.registry import Device, Limits, Registry

pytestmark = [pytest.mark.unit]


def test_password_hash_round_trip() -> None:
    hashed = hash_mqtt_password("s3cret")
    assert hashed.startswith("$7$101$")
    assert verify_mqtt_password("s3cret", hashed)
    assert not verify_mqtt_password("other", hashed)
    assert not verify_mqtt_password("s3cret", "$6$garbage")


@pytest.mark.skipif(shutil.which("mosquitto_passwd") is None, reason="mosquitto not installed")
def test_hashes_are_mosquitto_passwd_compatible(tmp_path: Path) -> None:
    path = tmp_path / "passwd"
    path.write_text("")
    subprocess.run(["mosquitto_passwd", "-b", str(path), "u", "pw-1"], check=True)
    theirs = path.read_text().strip().split(":", 1)[1]
    assert verify_mqtt_password("pw-1", theirs)
    assert not verify_mqtt_password("pw-2", theirs)


def registry() -> Registry:
    return (
        Registry()
        .with_device(Device("d1", "acme", "aal", http_secret="k1"))
        .with_device(Device("d2", "acme", "aal", http_secret="k2"))
    )


def headers(secret: str, body: bytes, at: float, device: str | None = None) -> dict[str, str]:
    stamp = str(int(at))
    out = {"x-iotgw-timestamp": stamp, "x-iotgw-signature": sign_body(secret, stamp, body)}
    if device:
        out["x-iotgw-device"] = device
    return out


def test_hmac_window_and_identity() -> None:
    body, now = b'{"metrics":{"a":1}}', 1_800_000_000.0
    who = authenticate(
        registry(), "d1", headers("k1", body, now), body, replay_window_s=300, now=now
    )
    assert who.device.device_id == "d1" and who.method == "hmac"
    for bad, status in (
        (headers("k1", body, now - 301), 401),
        (headers("k1", body, now + 301), 401),
        (headers("k2", body, now), 401),
        (headers("k2", body, now, device="d2"), 403),
        (headers("k1", body, now, device="d9"), 401),
        ({}, 401),
    ):
        with pytest.raises(AuthError) as info:
            authenticate(registry(), "d1", bad, body, replay_window_s=300, now=now)
        assert info.value.status == status


def test_jwt() -> None:
    now = 1_800_000_000.0
    token = make_jwt("k1", "d1", 60, now=now)
    assert verify_jwt(token, "k1", now=now)["sub"] == "d1"
    with pytest.raises(AuthError, match="expired"):
        verify_jwt(token, "k1", now=now + 61)
    with pytest.raises(AuthError, match="does not verify"):
        verify_jwt(token, "k2", now=now)
    auth = {"authorization": f"Bearer {token}"}
    assert authenticate(registry(), "d1", auth, b"", replay_window_s=1, now=now).method == "jwt"
    with pytest.raises(AuthError) as info:
        authenticate(registry(), "d2", auth, b"", replay_window_s=1, now=now)
    assert info.value.status == 403
    none_alg = token.replace(token.split(".")[0], "eyJhbGciOiJub25lIn0")
    with pytest.raises(AuthError, match="HS256"):
        authenticate(
            registry(),
            "d1",
            {"authorization": f"Bearer {none_alg}"},
            b"",
            replay_window_s=1,
            now=now,
        )


def test_token_bucket() -> None:
    limiter, limits = RateLimiter(), Limits(rate_per_s=2.0, burst=3)
    assert [limiter.take("d", limits, now=0.0) for _ in range(3)] == [0.0, 0.0, 0.0]
    assert limiter.take("d", limits, now=0.0) == pytest.approx(0.5)
    assert limiter.take("d", limits, now=0.5) == 0.0  # one token refilled
    assert limiter.take("other", limits, now=0.5) == 0.0  # buckets are per device
