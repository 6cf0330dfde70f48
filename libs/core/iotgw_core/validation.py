"""Validation of device input, shared by every ingest transport.

Each rule has a stable error ``code`` (the HTTP error body and the MQTT
quarantine both carry it) and a message that names the field and the rule.
"""

from __future__ import annotations

import json
import math
import re
import sys
import time
from datetime import UTC, datetime
from typing import Annotated, Any

import msgspec

# `\Z`, not `$`: `$` also matches before a trailing newline ("dev-1\n" would pass).
DEVICE_ID_RE = re.compile(r"^[A-Za-z0-9_-]{1,64}\Z")
KEY_RE = re.compile(r"^[a-z][a-z0-9_]{0,31}\Z")
MAX_METRICS = 32
MAX_TAGS = 16
MAX_TAG_VALUE_LEN = 64
MAX_SEQ = 2**63 - 1
BODY_FIELDS = frozenset({"ts", "seq", "metrics", "tags", "payload"})

_untyped_decoder = msgspec.json.Decoder()


class ValidationFailure(Exception):
    """Input broke a rule: ``code`` is machine-readable, ``message`` names field and rule."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message


class Reading(msgspec.Struct, frozen=True):
    """A validated reading, ready to be wrapped in an envelope."""

    ts: str | None
    seq: int | None
    metrics: dict[str, Any]
    tags: dict[str, str]
    payload: dict[str, Any] | None


def check_device_id(device_id: str) -> None:
    """Raise ``invalid_device_id`` unless ``device_id`` matches ``^[A-Za-z0-9_-]{1,64}$``."""
    if not DEVICE_ID_RE.match(device_id):
        raise ValidationFailure("invalid_device_id", "device_id must match ^[A-Za-z0-9_-]{1,64}$")


def decode_json(body: bytes) -> Any:
    """Decode JSON bytes, raising ``invalid_json`` for anything that is not JSON."""
    try:
        return _untyped_decoder.decode(body)
    except RecursionError:
        raise ValidationFailure("invalid_json", "body is nested too deeply") from None
    except msgspec.DecodeError as exc:
        error = exc
    # Python's parser also reads NaN, Infinity and out-of-range numbers: such a body
    # then fails the finiteness rule with its own code instead of a bare "not JSON".
    try:
        return json.loads(body)
    except (ValueError, RecursionError):
        raise ValidationFailure("invalid_json", f"body is not valid JSON: {error}") from None


# The fast path: one typed decode, in C, of a body that keeps every rule but the key
# pattern, then the keys against a set of keys already seen to match. Whatever it
# accepts, validate_reading accepts too, with the same result (a property test holds
# the two to that); whatever it refuses goes through validate_reading, which names
# the rule that is broken.
_Number = (
    Annotated[int, msgspec.Meta(ge=-(2**63), le=2**63 - 1)]
    | Annotated[float, msgspec.Meta(ge=-sys.float_info.max, le=sys.float_info.max)]
)


class _Body(msgspec.Struct, forbid_unknown_fields=True):
    ts: str | None = None
    seq: Annotated[int, msgspec.Meta(ge=0, le=MAX_SEQ)] | None = None
    metrics: Annotated[dict[str, _Number], msgspec.Meta(max_length=MAX_METRICS)] | None = None
    tags: (
        Annotated[
            dict[str, Annotated[str, msgspec.Meta(max_length=MAX_TAG_VALUE_LEN)]],
            msgspec.Meta(max_length=MAX_TAGS),
        ]
        | None
    ) = None
    payload: dict[str, Any] | None = None


_body_decoder = msgspec.json.Decoder(_Body)
# Keys that matched KEY_RE: a fleet uses a few dozen; bounded so junk cannot grow it.
_good_keys: set[str] = set()
_GOOD_KEYS_MAX = 4096


def _keys_match(keys: dict[str, Any]) -> bool:
    for key in keys:
        if key not in _good_keys:
            if not KEY_RE.match(key):
                return False
            if len(_good_keys) < _GOOD_KEYS_MAX:
                _good_keys.add(key)
    return True


def parse_reading(body: bytes) -> Reading:
    """Decode and validate one reading from JSON bytes."""
    try:
        fast = _body_decoder.decode(body)
    except (msgspec.DecodeError, RecursionError):
        return validate_reading(decode_json(body))
    metrics = fast.metrics or {}
    tags = fast.tags or {}
    if (not metrics and fast.payload is None) or not (_keys_match(metrics) and _keys_match(tags)):
        return validate_reading(decode_json(body))  # it names the broken rule
    return Reading(
        ts=None if fast.ts is None else _check_ts(fast.ts),
        seq=fast.seq,
        metrics=metrics,
        tags=tags,
        payload=fast.payload,
    )


def validate_reading(obj: Any) -> Reading:
    """Validate one decoded reading (a JSON object) against every rule of the contract."""
    if not isinstance(obj, dict):
        raise ValidationFailure("invalid_body", "body must be a JSON object")
    unknown = obj.keys() - BODY_FIELDS
    if unknown:
        name = sorted(unknown)[0]
        raise ValidationFailure(
            "unknown_field",
            f"unknown field {name!r}; allowed: ts, seq, metrics, tags, payload",
        )
    ts = _check_ts(obj.get("ts"))
    seq = _check_seq(obj.get("seq"))
    metrics = _check_metrics(obj.get("metrics"))
    tags = _check_tags(obj.get("tags"))
    payload = obj.get("payload")
    if payload is not None and not isinstance(payload, dict):
        raise ValidationFailure("invalid_payload", "payload must be a JSON object")
    if not metrics and payload is None:
        raise ValidationFailure("empty_reading", "a reading needs metrics or a payload")
    return Reading(ts=ts, seq=seq, metrics=metrics, tags=tags, payload=payload)


def _check_ts(value: Any) -> str | None:
    if value is None:
        return None
    if not isinstance(value, str) or len(value) > 40:
        raise ValidationFailure("invalid_ts", "ts must be an RFC 3339 timestamp string")
    try:
        parsed = datetime.fromisoformat(value)
    except ValueError:
        raise ValidationFailure(
            "invalid_ts", "ts must be an RFC 3339 timestamp, e.g. 2025-09-23T11:18:41Z"
        ) from None
    if parsed.tzinfo is None:
        raise ValidationFailure("invalid_ts", "ts must carry a time zone (Z or +hh:mm)")
    return format_timestamp(parsed)


def _check_seq(value: Any) -> int | None:
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value <= MAX_SEQ:
        raise ValidationFailure("invalid_seq", "seq must be an integer in 0..2^63-1")
    return value


def _check_metrics(value: Any) -> dict[str, Any]:
    if value is None:
        return {}
    if not isinstance(value, dict):
        raise ValidationFailure("invalid_metrics", "metrics must be a JSON object")
    if len(value) > MAX_METRICS:
        raise ValidationFailure("too_many_metrics", f"metrics must have <= {MAX_METRICS} keys")
    for key, number in value.items():
        if not KEY_RE.match(key):
            raise ValidationFailure(
                "invalid_metric_key", f"metric key {key[:40]!r} must match ^[a-z][a-z0-9_]{{0,31}}$"
            )
        if isinstance(number, bool) or not isinstance(number, int | float):
            raise ValidationFailure("invalid_metric_value", f"metrics.{key} must be a number")
        try:
            finite = math.isfinite(number)
        except OverflowError:
            finite = False
        if not finite or (isinstance(number, int) and abs(number) > 2**63):
            raise ValidationFailure("non_finite_metric", f"metrics.{key} must be a finite number")
    return value


def _check_tags(value: Any) -> dict[str, str]:
    if value is None:
        return {}
    if not isinstance(value, dict):
        raise ValidationFailure("invalid_tags", "tags must be a JSON object")
    if len(value) > MAX_TAGS:
        raise ValidationFailure("too_many_tags", f"tags must have <= {MAX_TAGS} keys")
    for key, text in value.items():
        if not KEY_RE.match(key):
            raise ValidationFailure(
                "invalid_tag_key", f"tag key {key[:40]!r} must match ^[a-z][a-z0-9_]{{0,31}}$"
            )
        if not isinstance(text, str) or len(text) > MAX_TAG_VALUE_LEN:
            raise ValidationFailure(
                "invalid_tag_value",
                f"tags.{key} must be a string of <= {MAX_TAG_VALUE_LEN} characters",
            )
    return value


_SECOND_FORMAT = "%Y-%m-%dT%H:%M:%S."  # then milliseconds and "Z"


def format_timestamp(moment: datetime) -> str:
    """Format an aware datetime as RFC 3339 UTC with millisecond precision and a ``Z``."""
    utc = moment.astimezone(UTC)
    return utc.strftime(_SECOND_FORMAT) + f"{utc.microsecond // 1000:03d}Z"


_now_ms = -1
_now_text = ""
_second = -1
_second_prefix = ""


def utc_now() -> str:
    """The current time as an RFC 3339 UTC timestamp (millisecond precision)."""
    return timestamp_ms(time.time_ns() // 1_000_000)


def timestamp_ms(ms: int) -> str:
    """Milliseconds since the epoch as an RFC 3339 UTC timestamp (``...T12:00:00.123Z``)."""
    global _now_ms, _now_text, _second, _second_prefix
    if ms != _now_ms:  # many readings arrive within one millisecond under load
        second, millis = divmod(ms, 1000)
        if second != _second:  # formatting a datetime costs ~20x the rest: once a second
            moment = datetime.fromtimestamp(second, UTC)
            _second, _second_prefix = second, moment.strftime(_SECOND_FORMAT)
        _now_ms, _now_text = ms, f"{_second_prefix}{millis:03d}Z"
    return _now_text
