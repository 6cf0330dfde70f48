"""Settings from the environment: ``IOTGW_<FIELD>`` variables, secrets from ``*_FILE``.

Each service declares one msgspec Struct; every field carries a description
(``Meta(description=...)``) from which docs/configuration.md is generated, and
a test keeps the two in step.
"""

from __future__ import annotations

import os
import socket
import typing
from collections.abc import Mapping
from pathlib import Path
from typing import Annotated, Any, Literal, TypeVar

import msgspec
from msgspec import Meta

PREFIX = "IOTGW_"
_CPU_LIST = r"^([0-9]+(-[0-9]+)?(,[0-9]+(-[0-9]+)?)*)?$"  # CPU numbers and ranges
T = TypeVar("T", bound=msgspec.Struct)


class SettingsError(Exception):
    """An environment variable could not be turned into a valid setting."""


def env_name(field: str) -> str:
    """The environment variable that sets ``field``."""
    return PREFIX + field.upper()


def load_settings(cls: type[T], environ: Mapping[str, str] | None = None) -> T:
    """Build ``cls`` from ``IOTGW_*`` variables; ``IOTGW_X_FILE`` reads ``x`` from a file."""
    env = os.environ if environ is None else environ
    raw: dict[str, Any] = {}
    for field in msgspec.structs.fields(cls):
        name = env_name(field.name)
        if name in env:
            raw[field.name] = env[name]
        elif name + "_FILE" in env:
            try:
                raw[field.name] = Path(env[name + "_FILE"]).read_text().strip()
            except OSError as exc:
                raise SettingsError(
                    f"{name}_FILE: cannot read {exc.filename}: {exc.strerror}"
                ) from None
    try:
        return msgspec.convert(raw, cls, strict=False)
    except msgspec.ValidationError as exc:
        where = str(exc).rsplit("`$.", 1)[-1].rstrip("`")
        raise SettingsError(f"{env_name(where)}: {exc}") from None


def describe(cls: type[msgspec.Struct]) -> list[tuple[str, str, str]]:
    """(variable, default, description) for every field of a settings struct."""
    rows = []
    hints = typing.get_type_hints(cls, include_extras=True)
    for field in msgspec.structs.fields(cls):
        description = ""
        for meta in getattr(hints.get(field.name), "__metadata__", ()):
            if isinstance(meta, Meta) and meta.description:
                description = meta.description
        if field.default_factory is not msgspec.NODEFAULT:
            default = "(computed)"
        elif field.default is msgspec.NODEFAULT:
            default = "(required)"
        else:
            default = str(field.default)
        rows.append((env_name(field.name), default, description))
    return rows


def markdown_table(cls: type[msgspec.Struct]) -> str:
    """A markdown table of a settings struct, as docs/configuration.md shows it."""
    lines = ["| variable | default | meaning |", "|---|---|---|"]
    for name, default, description in describe(cls):
        lines.append(f"| `{name}` | `{default}` | {description} |")
    return "\n".join(lines)


# A service's CPU placement (iotgw_core.process.pin_cpus), one pair of settings per
# service so that one environment can place each service differently.
LoopCpus = Annotated[
    str,
    Meta(
        pattern=_CPU_LIST,
        description="CPUs this service's event loop thread runs on, as `taskset -c` writes"
        " them (`0`, `2-3`); empty: wherever the kernel puts it. Its helper threads (and"
        " an ingest's spool writer process) run on the worker CPUs instead"
        " (docs/deploy-pi.md).",
    ),
]
WorkerCpus = Annotated[
    str,
    Meta(
        pattern=_CPU_LIST,
        description="CPUs of this service's helper threads (and an ingest's spool writer"
        " process); empty: every CPU the service may use (the loop's too).",
    ),
]


def _hostname() -> str:
    return socket.gethostname()


class CommonSettings(msgspec.Struct, kw_only=True, frozen=True):
    """Settings every service shares: identity, spool, stream."""

    gateway_id: Annotated[
        str, Meta(description="Gateway id written into every envelope; default: host name.")
    ] = msgspec.field(default_factory=_hostname)
    tenant: Annotated[
        str, Meta(description="Tenant of records whose device has no registry entry.")
    ] = "default"
    site: Annotated[
        str, Meta(description="Site of records whose device has no registry entry.")
    ] = "default"
    spool_path: Annotated[str, Meta(description="SQLite spool file (WAL mode).")] = (
        "var/spool/spool.db"
    )
    spool_writer: Annotated[
        Literal["process", "thread"],
        Meta(
            description="Where an ingest's group commit runs: a child process (no GIL shared"
            " with the event loop; with tracing off it also validates single HTTP readings"
            " and hands the commits to the stream; docs/spool.md) or a thread of the ingest"
            " process."
        ),
    ] = "process"
    spool_max_records: Annotated[
        int, Meta(ge=1, description="Spool budget in records (all states).")
    ] = 1_000_000
    spool_max_bytes: Annotated[
        int, Meta(ge=1, description="Spool budget in bytes of stored envelopes.")
    ] = 1 << 30
    spool_high_water: Annotated[
        float,
        Meta(gt=0, le=1, description="Fraction of the budget at which ingest refuses (503)."),
    ] = 0.9
    spool_low_water: Annotated[
        float,
        Meta(gt=0, le=1, description="Fraction of the budget below which ingest accepts again."),
    ] = 0.8
    acked_retention_s: Annotated[
        float,
        Meta(ge=0, description="Acked records (and their idempotency keys) kept this long."),
    ] = 86_400.0
    redis_url: Annotated[str, Meta(description="Redis holding the record stream.")] = (
        "redis://127.0.0.1:6379/0"
    )
    stream_key: Annotated[str, Meta(description="Redis Stream key of the record hand-off.")] = (
        "iotgw:records"
    )
    stream_group: Annotated[str, Meta(description="Consumer group of the forwarders.")] = (
        "forwarder"
    )
    handoff_linger_s: Annotated[
        float,
        Meta(
            ge=0,
            le=1,
            description="After a commit, an ingest waits this long for the next ones before"
            " handing the records to the stream, so that one XADD carries several commits"
            " (a record reaches the forwarder this much later; its sender is answered at"
            " once).",
        ),
    ] = 0.005
    log_level: Annotated[
        Literal["DEBUG", "INFO", "WARNING", "ERROR"], Meta(description="Log level.")
    ] = "INFO"
