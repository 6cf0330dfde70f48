"""Every validation rule of the HTTP/MQTT contract, with the code it answers."""

from __future__ import annotations

import json

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from iotgw_core.validation import (
    ValidationFailure,
    check_device_id,
    decode_json,
    parse_reading,
    validate_reading,
)

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


@pytest.mark.parametrize(
    "device_id", ["", "x" * 65, "dev ice", "dev/1", "dév", "a.b", "dev-1\n", "\ndev-1"]
)
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
        (reading(metrics={"temp\n": 1}), "invalid_metric_key"),
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
        (reading(tags={"site\n": "x"}), "invalid_tag_key"),
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


def slow_path(body: bytes) -> object:
    """What the rule-by-rule path makes of a body: a Reading, or the code it refuses with."""
    try:
        return validate_reading(decode_json(body))
    except ValidationFailure as exc:
        return exc.code


# Values near every rule's edge, so both sides of each limit are drawn often.
_keys = st.one_of(
    st.sampled_from(["temp_c", "a", "t" * 32, "t" * 33, "Temp", "1a", "a\n", "a-b", "é"]),
    st.text(max_size=34),
)
_good_keys = st.from_regex(r"[a-z][a-z0-9_]{0,4}", fullmatch=True)
_numbers = st.one_of(
    st.integers(min_value=-(2**64), max_value=2**64),
    st.sampled_from([2**63, -(2**63), 2**63 - 1, -(2**63) - 1, 0, -0.0]),
    st.floats(allow_nan=False),
    st.booleans(),
    st.none(),
    st.text(max_size=3),
)
_scalars = st.one_of(st.none(), st.booleans(), st.integers(), st.floats(), st.text(max_size=70))
_values = st.recursive(
    _scalars,
    lambda inner: st.one_of(
        st.lists(inner, max_size=3), st.dictionaries(st.text(max_size=5), inner, max_size=3)
    ),
    max_leaves=8,
)


def _sized(sizes: st.SearchStrategy[int], values: st.SearchStrategy[object]) -> st.SearchStrategy:
    """Dictionaries of valid keys, of exactly a drawn size (limits are at 16 and 32)."""
    return sizes.flatmap(lambda n: st.dictionaries(_good_keys, values, min_size=n, max_size=n))


_fields = {
    "ts": st.one_of(
        st.none(), st.sampled_from(["2025-09-23T11:18:41Z", "2025-09-23T11:18:41", "x"]), _values
    ),
    "seq": st.one_of(
        st.none(),
        st.integers(min_value=-2, max_value=2**64),
        st.sampled_from([2**63 - 1, 2**63]),
        _values,
    ),
    "metrics": st.one_of(
        st.dictionaries(_keys, _numbers, max_size=3),
        _sized(st.integers(30, 34), st.floats() | st.integers()),
        _values,
    ),
    "tags": st.one_of(
        st.dictionaries(_keys, st.one_of(st.text(max_size=66), _values), max_size=3),
        _sized(st.integers(1, 2), st.integers(62, 66).map(lambda n: "é" * n)),
        _sized(st.integers(14, 18), st.text(max_size=2)),
        _values,
    ),
    "payload": st.one_of(st.none(), st.dictionaries(st.text(max_size=3), _values), _values),
    "extra": _values,
}


@st.composite
def _bodies(draw: st.DrawFn) -> object:
    """A valid reading with one to three fields drawn near (or over) their rule's edge."""
    if draw(st.integers(0, 9)) == 0:
        return draw(_values)  # not even an object, mostly
    body: dict[str, object] = {"metrics": {"temp_c": 21.5}}
    for name in draw(st.lists(st.sampled_from(sorted(_fields)), min_size=1, max_size=3)):
        body[name] = draw(_fields[name])
    return body


@settings(max_examples=600, deadline=None)
@given(_bodies())
def test_fast_path_decides_exactly_as_the_rules_do(obj: object) -> None:
    body = json.dumps(obj).encode()
    expected = slow_path(body)
    try:
        got: object = parse_reading(body)
    except ValidationFailure as exc:
        got = exc.code
    assert got == expected


@pytest.mark.parametrize(
    "body",
    [
        b'{"metrics":{"a":1,"a":"x"}}',  # a repeated key: the last one counts, on both paths
        b'{"metrics":{"a":"x","a":1}}',
        b'{"seq":1,"seq":-1,"metrics":{"a":1}}',
        b'{"metrics":{"a":1e308,"b":-1e308,"c":9223372036854775808}}',
        b'{"metrics":{"a":1},"tags":{"s":"\\u00e9\\u00e9"}}',
        b'{"metrics":{"\\u0061":1}}',
        b'{"metrics":{"a":1},"payload":null,"tags":null,"ts":null,"seq":null}',
        # every limit, on both sides
        *(reading(tags={f"t{i}": "x" for i in range(n)}) for n in (16, 17)),
        *(reading(metrics={f"m{i}": i for i in range(n)}) for n in (32, 33)),
        *(reading(tags={"site": "é" * n}) for n in (64, 65)),
        *(reading(seq=n) for n in (0, -1, 2**63 - 1, 2**63)),
        *(reading(metrics={"m": n}) for n in (2**63 - 1, 2**63, -(2**63), -(2**63) - 1)),
        b'{"metrics":{"m":1.7976931348623157e308,"n":-1.7976931348623157e308}}',
        b'{"metrics":{"m":1.8e308}}',
    ],
)
def test_fast_path_agrees_on_edge_bodies(body: bytes) -> None:
    try:
        got: object = parse_reading(body)
    except ValidationFailure as exc:
        got = exc.code
    assert got == slow_path(body)


def test_utc_now_is_the_current_millisecond_in_rfc_3339() -> None:
    import time
    from datetime import UTC, datetime

    from iotgw_core.validation import utc_now

    seconds = set()
    deadline = time.monotonic() + 1.2  # across a change of second, where the prefix is redone
    while time.monotonic() < deadline:
        before = time.time_ns() // 1_000_000  # whole milliseconds: no float rounding
        text = utc_now()
        after = time.time_ns() // 1_000_000
        stamp = datetime.strptime(text, "%Y-%m-%dT%H:%M:%S.%f%z")
        assert stamp.tzinfo == UTC and text.endswith("Z") and len(text) == 24, text
        assert before <= round(stamp.timestamp() * 1000) <= after, (text, before, after)
        seconds.add(text[:19])
    assert len(seconds) >= 2
