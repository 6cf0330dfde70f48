"""The instruction-count bench reads each endpoint's total from its callgrind dump."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.bench.bench_instr import _totals

pytestmark = pytest.mark.unit

HEAD = "# callgrind format\nversion: 1\ncreator: callgrind-3.19.0\npid: 31685\npart: 1\n\n"


def test_a_dump_gives_its_endpoint_and_total(tmp_path: Path) -> None:
    dump = tmp_path / "callgrind.31685.2"
    dump.write_text(
        HEAD + "desc: Timerange: Basic block 0 - 129761414\ndesc: Trigger: dump ingest\n\n"
        "positions: line\nevents: Ir\nsummary: 0\n\nfn=(1) main\n3 5\n\ntotals: 816234112\n"
    )
    assert _totals(dump) == ("ingest", 816234112)


def test_a_dump_not_asked_for_by_the_driver_is_refused(tmp_path: Path) -> None:
    dump = tmp_path / "callgrind.31685.4"
    dump.write_text(HEAD + "desc: Trigger: Program termination\n\nevents: Ir\ntotals: 12\n")
    with pytest.raises(RuntimeError, match="not a dump of an endpoint"):
        _totals(dump)
