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
    out_json, out_csv = tmp_path / "r.json", tmp_path / "csv"
    code = main(["simulate", str(REFERENCE), "--json", str(out_json), "--csv", str(out_csv)])
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
    quiet = simulate.progress_bar(stream, terminal=True)
    quiet(0.5)
    assert stream.getvalue() == ""  # a short run draws nothing
    monkeypatch.setattr(simulate, "_SHOW_AFTER", 0.0)
    bar = simulate.progress_bar(stream, terminal=True)
    bar(0.5)
    assert "[###############...............]  50% eta" in stream.getvalue()
    bar(1.0)
    assert stream.getvalue().endswith("\r")


def test_progress_off_a_terminal_is_a_line_per_tenth_with_an_eta() -> None:
    stream = io.StringIO()
    now = [0.0]
    progress = simulate.progress_bar(stream, terminal=False, clock=lambda: now[0])
    for step in range(1, 101):
        now[0] = step * 0.1  # 10 s of wall time for the whole run
        progress(step / 100)
    lines = stream.getvalue().splitlines()
    assert "\r" not in stream.getvalue()
    # Shown from 2 s on (20 %), one line per tenth, none for the finished run.
    assert [line.split("%")[0] for line in lines] == [
        f"simulating: {p}" for p in range(20, 100, 10)
    ]
    assert lines[0] == "simulating: 20% (eta 8s)"


def test_plot_without_matplotlib_fails_before_the_run(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    def missing() -> None:
        raise simulate.PlotUnavailableError(
            "--plot needs matplotlib: pip install 'tunnel-lb[plot]'"
        )

    def never(*_: object, **__: object) -> None:
        raise AssertionError("the simulation ran although the plot could not be drawn")

    monkeypatch.setattr(simulate, "require_matplotlib", missing)
    monkeypatch.setattr(simulate, "run_scenario", never)
    assert main(["simulate", str(REFERENCE), "--plot", str(tmp_path / "r.png")]) == 2
    assert "--plot needs matplotlib" in capsys.readouterr().err
    assert not (tmp_path / "r.png").exists()


def test_plot_is_a_png(tmp_path: Path) -> None:
    # ImportError, not only ModuleNotFoundError: a broken install skips too (with its reason).
    pytest.importorskip(
        "matplotlib", reason="matplotlib (the plot extra) is not importable", exc_type=ImportError
    )
    out = tmp_path / "r.png"
    assert main(["simulate", str(REFERENCE), "--quiet", "--plot", str(out)]) == 0
    assert out.read_bytes().startswith(b"\x89PNG")


def test_an_output_that_cannot_be_written_is_one_error_line(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = write(tmp_path, FAILING.replace("duration: 30", "duration: 5"))
    target = tmp_path / "missing-directory" / "r.json"
    assert main(["simulate", str(path), "--quiet", "--json", str(target)]) == 2
    err = capsys.readouterr().err
    assert err == f"error: cannot write {target}: No such file or directory\n"
