"""``tunnel-lb simulate``: outputs, exit status, failed expectations, progress bar."""

from __future__ import annotations

import io
import json
from pathlib import Path

import pytest
from sim_builders import write

from lb.cli import main
from lb.commands import simulate

REFERENCE = Path(__file__).resolve().parents[2] / "configs/scenarios/reference-two-datacenters.yaml"

FAILING = """\
config: lb.yaml
duration: 30
traffic:
  FRA: {rate: 50}
expect:
  - name: impossible share
    share: {endpoint: main/a, at_least: 1}
  - errors: {at_most: 0}
"""


def test_success_prints_the_summary_and_writes_every_output(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out_json, out_csv, out_png = tmp_path / "r.json", tmp_path / "csv", tmp_path / "r.png"
    code = main(
        [
            "simulate",
            str(REFERENCE),
            "--json",
            str(out_json),
            "--csv",
            str(out_csv),
            "--plot",
            str(out_png),
        ]
    )
    assert code == 0
    stdout = capsys.readouterr().out
    assert "dc1/tunnel-dc1" in stdout and "failover" in stdout and "ok   " in stdout
    data = json.loads(out_json.read_text())
    for key in (
        "seed",
        "duration",
        "requests",
        "errors",
        "by_pool",
        "by_endpoint",
        "windows",
        "transitions",
        "failovers",
        "affinity",
        "probes",
        "expectations",
    ):
        assert key in data
    assert set(data["windows"][0]) >= {"start", "end", "by_pool", "by_endpoint", "errors"}
    assert set(data["transitions"][0]) == {
        "at",
        "pool",
        "endpoint",
        "vantage",
        "from",
        "to",
        "reason",
    }
    assert set(data["failovers"][0]) >= {
        "pool",
        "endpoint",
        "failed_at",
        "detected_at",
        "drained_at",
    }
    assert set(data["expectations"][0]) >= {"name", "ok", "detail"}
    windows = (out_csv / "windows.csv").read_text().splitlines()
    assert windows[0].startswith("start,end,endpoint,requests,share")
    assert len((out_csv / "transitions.csv").read_text().splitlines()) == 1 + len(
        data["transitions"]
    )
    assert out_png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_failed_expectations_exit_1_with_measured_and_bound(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = write(tmp_path, FAILING)
    assert main(["simulate", str(path), "--quiet"]) == 1
    lines = capsys.readouterr().out.splitlines()
    assert len(lines) == 1  # --quiet: only the failures; the error bound holds
    assert lines[0].startswith("FAIL impossible share: measured 0.")
    assert "bound >= 1" in lines[0]


def test_invalid_scenario_exits_2_with_the_problems(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = write(tmp_path, FAILING.replace("duration: 30", "duration: -1"))
    assert main(["simulate", str(path)]) == 2
    err = capsys.readouterr().err
    assert f"{path}:2: duration: must be between" in err


def test_seed_option_overrides_the_file(tmp_path: Path) -> None:
    out = tmp_path / "r.json"
    assert main(["simulate", str(REFERENCE), "--quiet", "--seed", "42", "--json", str(out)]) == 0
    assert json.loads(out.read_text())["seed"] == 42


def test_progress_bar_appears_only_after_a_while(monkeypatch: pytest.MonkeyPatch) -> None:
    stream = io.StringIO()
    quiet = simulate.progress_bar(stream)
    quiet(0.5)
    assert stream.getvalue() == ""  # a short run draws nothing
    monkeypatch.setattr(simulate, "_SHOW_AFTER", 0.0)
    bar = simulate.progress_bar(stream)
    bar(0.5)
    assert "[###############...............]  50%" in stream.getvalue()
    bar(1.0)
    assert stream.getvalue().endswith("\r")


def test_an_output_that_cannot_be_written_is_one_error_line(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = write(tmp_path, FAILING.replace("duration: 30", "duration: 5"))
    target = tmp_path / "missing-directory" / "r.json"
    assert main(["simulate", str(path), "--quiet", "--json", str(target)]) == 2
    err = capsys.readouterr().err
    assert err == f"error: cannot write {target}: No such file or directory\n"
