"""What the plot and the report show: fault windows, errors per endpoint, labels apart."""

from __future__ import annotations

import json
from pathlib import Path

from hypothesis import given
from hypothesis import strategies as st

from lb.cli import main
from lb.sim.plot import label_rows

SCENARIOS = Path(__file__).resolve().parents[2] / "configs/scenarios"


def _report(tmp_path: Path, name: str) -> dict[str, object]:
    out = tmp_path / "r.json"
    assert main(["simulate", str(SCENARIOS / name), "--quiet", "--json", str(out)]) == 0
    data: dict[str, object] = json.loads(out.read_text())
    return data


def test_fault_windows_run_from_at_to_recovery(tmp_path: Path) -> None:
    data = _report(tmp_path, "reference-two-datacenters.yaml")
    assert data["faults"] == [{"start": 40.0, "end": 100.0, "label": "blackhole tunnel dc1"}]


def test_windows_carry_errors_per_endpoint(tmp_path: Path) -> None:
    data = _report(tmp_path, "reference-two-datacenters.yaml")
    windows = data["windows"]
    assert isinstance(windows, list)
    failing = [w for w in windows if w["errors"]]
    assert failing, "the blackhole costs errors"
    for w in windows:
        per_endpoint = w["errors_by_endpoint"]
        assert sum(per_endpoint.values()) == w["errors"]
        assert set(per_endpoint) <= {"dc1/tunnel-dc1"}


def test_report_text_uses_one_time_format(tmp_path: Path, capsys: object) -> None:
    import re

    assert main(["simulate", str(SCENARIOS / "reference-two-datacenters.yaml")]) == 0
    out = capsys.readouterr().out  # type: ignore[attr-defined]
    times = re.findall(r"[+]?\d+(?:\.\d+)?s\b", out)
    assert times, out
    assert all(re.fullmatch(r"[+]?\d+\.\ds", t) for t in times), times


spans = st.lists(
    st.floats(min_value=0, max_value=1000, allow_nan=False).map(lambda x: (x, x + 12.0)),
    max_size=40,
)


@given(spans)
def test_labels_on_one_row_never_overlap(items: list[tuple[float, float]]) -> None:
    rows = label_rows(items)
    assert len(rows) == len(items)
    for i, (a, b) in enumerate(items):
        for j, (c, d) in enumerate(items):
            if i < j and rows[i] == rows[j]:
                assert b <= c or d <= a, (items[i], items[j])
