"""The bench's outbox counter: whole lines only, each counted once, across files."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.bench.clock import OutboxLines

pytestmark = pytest.mark.unit


def test_outbox_lines_counts_whole_lines_once_as_files_grow(tmp_path: Path) -> None:
    count = OutboxLines(tmp_path)
    assert count() == 0
    first = tmp_path / "outbox-0001.jsonl"
    first.write_bytes(b'{"a":1}\n{"a":2}\n{"a"')  # the sink is mid-write on the third
    assert count() == 2
    with first.open("ab") as f:
        f.write(b":3}\n")
    (tmp_path / "outbox-0002.jsonl").write_bytes(b'{"b":1}\n')  # rotated
    (tmp_path / "other.txt").write_bytes(b"not\nan\noutbox\n")
    assert count() == 4
    assert count() == 4  # nothing new: nothing more
