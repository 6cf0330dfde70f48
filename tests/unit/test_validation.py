"""Every validation rule of the HTTP/MQTT contract, with the code it answers."""

from __future__ import annotations

import json

import pytest
from iotgw_core.validation import ValidationFailure, check_device_id, parse_reading

pytestmark = pytest.mark.unit


def reading(**fields: object) -> bytes:
    body: dict[str, object] = {"metrics": {"temp_c": 21.5}}
    body.update(fields)
    return json.dumps(body).encode()


def code_of(body: bytes) -> str:
    with pytest.raises(ValidationFailure) as info:
        parse_reading(body)
    return info.value.code


def test_reference_body_is_valid() -> None:
    r = parse_reading(
        b'{"ts":"2025-09-23T11:18:41Z","seq":42,"metrics":{"temp_c":21.5},'
        b'"tags":{"site":"AAL"},"payload":{"raw":"ok"}}'
    )
    assert (r.seq, r.metrics, r.tags, r.payload) == (
        42,
        {"temp_c": 21.5},
        {"site": "AAL"},
        {"raw": "ok"},
    )
    assert r.ts == "2025-09-23T11:18:41.000Z"


@pytest.mark.parametrize("device_id", ["device_1", "A-b_9", "x" * 64])
def test_device_id_accepted(device_id: str) -> None:
    check_device_id(device_id)


@pytest.mark.parametrize("device_id", ["", "x" * 65, "dev ice", "dev/1", "dév", "a.b"])
def test_device_id_refused(device_id: str) -> None:
    with pytest.raises(ValidationFailure) as info:
        check_device_id(device_id)
    assert info.value.code == "invalid_device_id"


@pytest.mark.parametrize(
    ("body", "code"),
    [
        (b"{not json", "invalid_json"),
        (b"", "invalid_json"),
        (b"[1,2]", "invalid_body"),
        (b'"text"', "invalid_body"),
        (reading(extra=1), "unknown_field"),
        (reading(metrics={f"m{i}": i for i in range(33)}), "too_many_metrics"),
        (reading(metrics={"Temp": 1}), "invalid_metric_key"),
        (reading(metrics={"1temp": 1}), "invalid_metric_key"),
        (reading(metrics={"t" * 33: 1}), "invalid_metric_key"),
        (reading(metrics={"temp": "21"}), "invalid_metric_value"),
        (reading(metrics={"temp": True}), "invalid_metric_value"),
        (reading(metrics={"temp": None}), "invalid_metric_value"),
        (reading(metrics={"temp": [1]}), "invalid_metric_value"),
        (b'{"metrics":{"temp":1e999}}', "non_finite_metric"),
        (b'{"metrics":{"temp":-1e999}}', "non_finite_metric"),
        (b'{"metrics":{"temp":NaN}}', "non_finite_metric"),
        (b'{"metrics":{"temp":Infinity}}', "non_finite_metric"),
        (b'{"metrics":{"temp":1}} trailing', "invalid_json"),
        (b"[" * 100_000, "invalid_json"),
        (reading(metrics=[1]), "invalid_metrics"),
        (reading(tags={f"t{i}": "x" for i in range(17)}), "too_many_tags"),
        (reading(tags={"Site": "x"}), "invalid_tag_key"),
        (reading(tags={"site": 1}), "invalid_tag_value"),
        (reading(tags={"site": "x" * 65}), "invalid_tag_value"),
        (reading(tags="AAL"), "invalid_tags"),
        (reading(payload=[1]), "invalid_payload"),
        (reading(payload="ok"), "invalid_payload"),
        (reading(seq=-1), "invalid_seq"),
        (reading(seq=1.5), "invalid_seq"),
        (reading(seq="1"), "invalid_seq"),
        (reading(seq=2**63), "invalid_seq"),
        (reading(seq=True), "invalid_seq"),
        (reading(ts="yesterday"), "invalid_ts"),
        (reading(ts="2025-09-23T11:18:41"), "invalid_ts"),
        (reading(ts=1695467921), "invalid_ts"),
        (b'{"tags":{"site":"AAL"}}', "empty_reading"),
        (b"{}", "empty_reading"),
    ],
)
def test_rule_broken_names_its_code(body: bytes, code: str) -> None:
    assert code_of(body) == code


def test_limits_are_inclusive() -> None:
    r = parse_reading(
        reading(
            metrics={f"m{i}": i for i in range(32)},
            tags={f"t{i}": "x" * 64 for i in range(16)},
            seq=2**63 - 1,
        )
    )
    assert len(r.metrics) == 32 and len(r.tags) == 16


def test_message_names_field_and_rule() -> None:
    with pytest.raises(ValidationFailure) as info:
        parse_reading(reading(metrics={f"m{i}": i for i in range(33)}))
    assert info.value.message == "metrics must have <= 32 keys"


def test_payload_only_reading_is_valid_and_ts_is_normalized_to_utc() -> None:
    r = parse_reading(b'{"payload":{"raw":"ok"},"ts":"2025-09-23T13:18:41.5+02:00"}')
    assert r.metrics == {} and r.ts == "2025-09-23T11:18:41.500Z"
