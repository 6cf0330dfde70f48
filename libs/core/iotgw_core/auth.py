"""Device credentials: broker password hashes, HTTP signatures and JWTs, rate limits.

HTTP requests prove the device in one of two ways (docs/devices.md):

- **HMAC**: ``X-IoTGW-Timestamp: <unix seconds>`` and
  ``X-IoTGW-Signature: <hex HMAC-SHA256(http_secret, timestamp + "." + body)>``;
  ``X-IoTGW-Device`` names whose secret signed (default: the device in the
  path). The timestamp must lie within the replay window of the server clock.
- **Bearer JWT**: ``Authorization: Bearer <jwt>``, HS256, signed with the
  device's ``http_secret``; ``sub`` is the device id, ``exp`` is required.

A missing or wrong credential is 401; a good credential of another device
than the one in the path is 403.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import json
import secrets
import time
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from .registry import Device, Limits, Registry

# mosquitto_passwd (2.0) hashes: "$7$<iterations>$<salt b64>$<PBKDF2-SHA512 b64>".
MOSQUITTO_ITERATIONS = 101
MOSQUITTO_SALT_LEN = 12
MOSQUITTO_HASH_LEN = 64

HEADER_TIMESTAMP = "x-iotgw-timestamp"
HEADER_SIGNATURE = "x-iotgw-signature"
HEADER_DEVICE = "x-iotgw-device"


def new_secret(nbytes: int = 24) -> str:
    """A random URL-safe secret (password, HMAC key)."""
    return secrets.token_urlsafe(nbytes)


def hash_mqtt_password(password: str, *, salt: bytes | None = None) -> str:
    """Hash a broker password as ``mosquitto_passwd`` does, for the broker's password file."""
    salt = salt if salt is not None else secrets.token_bytes(MOSQUITTO_SALT_LEN)
    digest = hashlib.pbkdf2_hmac(
        "sha512", password.encode(), salt, MOSQUITTO_ITERATIONS, MOSQUITTO_HASH_LEN
    )
    salt_b64 = base64.b64encode(salt).decode()
    return f"$7${MOSQUITTO_ITERATIONS}${salt_b64}${base64.b64encode(digest).decode()}"


def verify_mqtt_password(password: str, hashed: str) -> bool:
    """True when ``password`` matches a ``$7$`` mosquitto_passwd hash."""
    parts = hashed.split("$")
    if len(parts) != 5 or parts[1] != "7":
        return False
    try:
        iterations = int(parts[2])
        salt = base64.b64decode(parts[3])
        expected = base64.b64decode(parts[4])
    except (ValueError, binascii.Error):
        return False
    digest = hashlib.pbkdf2_hmac("sha512", password.encode(), salt, iterations, len(expected))
    return hmac.compare_digest(digest, expected)


def sign_body(secret: str, timestamp: str, body: bytes) -> str:
    """The HMAC-SHA256 signature a device sends: hex over ``timestamp + "." + body``."""
    return hmac.new(secret.encode(), timestamp.encode() + b"." + body, hashlib.sha256).hexdigest()


def _b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def _b64url_decode(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


def make_jwt(secret: str, device_id: str, ttl_s: float, now: float | None = None) -> str:
    """An HS256 JWT for ``device_id`` (``sub``), valid ``ttl_s`` seconds."""
    issued = int(time.time() if now is None else now)
    header = _b64url(b'{"alg":"HS256","typ":"JWT"}')
    claims = _b64url(
        json.dumps({"sub": device_id, "iat": issued, "exp": issued + int(ttl_s)}).encode()
    )
    signing_input = f"{header}.{claims}"
    sig = hmac.new(secret.encode(), signing_input.encode(), hashlib.sha256).digest()
    return f"{signing_input}.{_b64url(sig)}"


class AuthError(Exception):
    """The request is not authenticated (401) or not allowed for this device (403)."""

    def __init__(self, status: int, code: str, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.code = code
        self.message = message


def _unauthorized(message: str) -> AuthError:
    return AuthError(401, "unauthorized", message)


def jwt_subject(token: str) -> tuple[str, dict[str, Any]]:
    """The unverified ``sub`` and claims of a JWT (to find the key that must verify it)."""
    parts = token.split(".")
    if len(parts) != 3:
        raise _unauthorized("bearer token is not a JWT")
    try:
        header = json.loads(_b64url_decode(parts[0]))
        claims = json.loads(_b64url_decode(parts[1]))
    except (ValueError, binascii.Error):
        raise _unauthorized("bearer token is not a JWT") from None
    if not isinstance(header, dict) or header.get("alg") != "HS256":
        raise _unauthorized("bearer token must be signed with HS256")
    if not isinstance(claims, dict) or not isinstance(claims.get("sub"), str):
        raise _unauthorized("bearer token has no subject (sub)")
    return claims["sub"], claims


def verify_jwt(token: str, secret: str, now: float | None = None) -> dict[str, Any]:
    """Check an HS256 JWT's signature and ``exp``; returns its claims."""
    _, claims = jwt_subject(token)
    signing_input, _, sig = token.rpartition(".")
    expected = hmac.new(secret.encode(), signing_input.encode(), hashlib.sha256).digest()
    try:
        given = _b64url_decode(sig)
    except (ValueError, binascii.Error):
        raise _unauthorized("bearer token signature is malformed") from None
    if not hmac.compare_digest(expected, given):
        raise _unauthorized("bearer token signature does not verify")
    exp = claims.get("exp")
    if isinstance(exp, bool) or not isinstance(exp, int | float):
        raise _unauthorized("bearer token has no expiry (exp)")
    if exp < (time.time() if now is None else now):
        raise _unauthorized("bearer token has expired")
    return claims


@dataclass(frozen=True, slots=True)
class Authenticated:
    """Who sent the request: the registered device behind a verified credential."""

    device: Device
    method: str  # "hmac" or "jwt"


def authenticate(
    registry: Registry,
    path_device: str,
    headers: Mapping[str, str],
    body: bytes,
    *,
    replay_window_s: float,
    now: float | None = None,
) -> Authenticated:
    """Verify the request's credential against the registry; raise AuthError (401/403)."""
    now = time.time() if now is None else now
    authorization = headers.get("authorization", "")
    if authorization[:7].lower() == "bearer ":
        subject, _ = jwt_subject(authorization[7:].strip())
        device = registry.get(subject)
        if device is None or not device.http_secret:
            raise _unauthorized("bearer token names an unknown device")
        verify_jwt(authorization[7:].strip(), device.http_secret, now)
        method = "jwt"
    elif HEADER_SIGNATURE in headers:
        claimed = headers.get(HEADER_DEVICE, path_device)
        device = registry.get(claimed)
        if device is None or not device.http_secret:
            raise _unauthorized(f"no credential registered for device {claimed[:64]!r}")
        stamp = headers.get(HEADER_TIMESTAMP, "")
        try:
            moment = float(stamp)
        except ValueError:
            raise _unauthorized("X-IoTGW-Timestamp must be unix seconds") from None
        if abs(now - moment) > replay_window_s:
            raise _unauthorized(
                f"X-IoTGW-Timestamp is more than {replay_window_s:.0f}s from the server clock"
            )
        expected = sign_body(device.http_secret, stamp, body)
        if not hmac.compare_digest(expected, headers[HEADER_SIGNATURE].strip().lower()):
            raise _unauthorized("signature does not verify")
        method = "hmac"
    else:
        raise _unauthorized(
            "a credential is required: Authorization: Bearer <jwt> or X-IoTGW-Signature"
        )
    if device.device_id != path_device:
        raise AuthError(
            403,
            "forbidden",
            f"the credential is for device {device.device_id!r}, not {path_device!r}",
        )
    return Authenticated(device=device, method=method)


class RateLimiter:
    """Per-device token buckets; :meth:`take` returns 0 or the seconds to wait."""

    def __init__(self, max_devices: int = 100_000) -> None:
        self._buckets: dict[str, tuple[float, float]] = {}  # device -> (tokens, stamp)
        self.max_devices = max_devices

    def take(
        self, device_id: str, limits: Limits, cost: float = 1.0, now: float | None = None
    ) -> float:
        """Take ``cost`` tokens; 0.0 when allowed, else how long until enough are there."""
        now = time.monotonic() if now is None else now
        tokens, stamp = self._buckets.get(device_id, (float(limits.burst), now))
        tokens = min(float(limits.burst), tokens + (now - stamp) * limits.rate_per_s)
        if tokens >= cost:
            self._remember(device_id, tokens - cost, now)
            return 0.0
        self._remember(device_id, tokens, now)
        return (cost - tokens) / limits.rate_per_s

    def _remember(self, device_id: str, tokens: float, now: float) -> None:
        if device_id not in self._buckets and len(self._buckets) >= self.max_devices:
            # Bounded memory: forget the oldest buckets (a forgotten bucket starts full).
            for key in list(self._buckets)[: self.max_devices // 10 or 1]:
                del self._buckets[key]
        self._buckets[device_id] = (tokens, now)


class RateLimited(Exception):
    """The device is over its rate limit; retry after ``retry_after_s`` seconds."""

    def __init__(self, device_id: str, retry_after_s: float) -> None:
        super().__init__(f"device {device_id!r} is over its rate limit")
        self.retry_after_s = retry_after_s


class HttpGuard:
    """What the HTTP ingest checks before it reads a body as a reading.

    ``mode="required"`` (the default of a deployment): a credential of the
    device in the path (401/403) and its token bucket (429); the tenant and
    site come from the registry. ``mode="none"`` (development only, chosen
    explicitly with IOTGW_AUTH_MODE=none): no checks at all.
    """

    def __init__(self, mode: str, registry_path: str, replay_window_s: float = 300.0) -> None:
        from .registry import RegistryWatcher

        self.mode = mode
        self.replay_window_s = replay_window_s
        self.registry = RegistryWatcher(registry_path) if mode == "required" else None
        self.limiter = RateLimiter()

    @property
    def enforcing(self) -> bool:
        """True unless authentication is switched off."""
        return self.registry is not None

    def check(self, device_id: str, headers: Mapping[str, str], body: bytes) -> Device | None:
        """The authenticated device (None when not enforcing); AuthError or RateLimited."""
        if self.registry is None:
            return None
        registry = self.registry.current()
        if registry.get(device_id) is None:
            # Onboarded a moment ago? Look at the file before refusing.
            self.registry.reload()
            registry = self.registry.current()
        who = authenticate(registry, device_id, headers, body, replay_window_s=self.replay_window_s)
        wait = self.limiter.take(device_id, who.device.limits)
        if wait > 0:
            raise RateLimited(device_id, wait)
        return who.device

    def status(self) -> dict[str, object]:
        """For /healthz: the mode, and the registry's state when enforcing."""
        if self.registry is None:
            return {
                "status": "off",
                "mode": "none",
                "warning": "AUTHENTICATION IS OFF (IOTGW_AUTH_MODE=none): any client may"
                " post as any device. Development only.",
            }
        return {
            "status": "failing" if self.registry.error else "ok",
            "mode": "required",
            "devices": len(self.registry.current().devices),
            **({"error": self.registry.error} if self.registry.error else {}),
        }
