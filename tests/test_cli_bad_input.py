"""Every command that reads a file, over a table of bad files: one line per problem, exit 2.

``lb.cli`` promises that no traceback reaches a user.  Each command is called in process
through :func:`lb.cli.main` (fast); a few cases also go through ``python -m lb`` to show the
real entry point keeps the promise.  The cases are what people and automation actually hand
over: a wrong path, a directory, a binary, broken YAML or JSON, an empty file, a FIFO nobody
writes to, a file of another of our formats, a file the user may not read, and hostile
content (deep nesting, an alias bomb).
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

import lb.logs
from lb.cli import main

ROOT = Path(__file__).resolve().parent.parent
SCENARIO = ROOT / "configs" / "scenarios" / "flapping.yaml"
CONFIG = ROOT / "configs" / "quickstart.yaml"
NOBODY = 65534

# command -> (argv before the file, argv after it, the kind of file it reads)
COMMANDS: dict[str, tuple[list[str], list[str], str]] = {
    "check": (["check"], [], "config"),
    "explain": (["explain"], ["--host", "app.localhost"], "config"),
    "probe": (["probe"], [], "config"),
    "run": (["run"], [], "config"),
    "demo": (["demo"], ["--duration", "1"], "config"),
    "simulate": (["simulate"], [], "scenario"),
    "connector": (["connector"], [], "connector"),
}

Maker = Callable[[Path, str], Path]
"""Makes the bad file in a directory, for a command reading a given kind of file."""


def _write(name: str, content: str | bytes) -> Maker:
    def make(directory: Path, kind: str) -> Path:
        path = directory / name
        if isinstance(content, bytes):
            path.write_bytes(content)
        else:
            path.write_text(content)
        return path

    return make


def _missing(directory: Path, kind: str) -> Path:
    return directory / "nowhere.yaml"


def _directory(directory: Path, kind: str) -> Path:
    path = directory / "lb.d"
    path.mkdir()
    return path


def _fifo(directory: Path, kind: str) -> Path:
    path = directory / "lb.yaml"
    os.mkfifo(path)
    return path


def _wrong_kind(directory: Path, kind: str) -> Path:
    """A file of another of our formats: a scenario for a configuration, else a config."""
    source = SCENARIO if kind == "config" else CONFIG
    return Path(shutil.copy(source, directory / "other.yaml"))


def _bomb(directory: Path, kind: str) -> Path:
    lines = ["a0: &a0 [" + ", ".join(['"lol"'] * 9) + "]"]
    lines += [f"a{i}: &a{i} [" + ", ".join([f"*a{i - 1}"] * 9) + "]" for i in range(1, 6)]
    path = directory / "bomb.yaml"
    path.write_text("\n".join(lines) + "\n")
    return path


EMPTY = {
    "config": "no load balancer is configured",
    "scenario": "the file is empty",
    "connector": "the file must be a mapping",
}
WRONG_KIND = {
    "config": "this looks like a simulation scenario, not a load balancer configuration",
    "scenario": "this looks like a load balancer configuration, not a simulation scenario",
    "connector": "this looks like a load balancer configuration, not a connector file",
}
# case -> (how to make the file, expected message: one string, or one per kind of file)
CASES: dict[str, tuple[Maker, str | dict[str, str]]] = {
    "missing": (_missing, "no such file"),
    "directory": (_directory, "is a directory, not a file"),
    "binary": (_write("lb.yaml", b"\x89PNG\r\n\x1a\n\x00\xff\xfe"), "not UTF-8 text (byte 0)"),
    "yaml-error": (_write("lb.yaml", "pools: [unclosed\n"), "YAML syntax error"),
    "json-error": (_write("lb.json", '{"pools": [}\n'), "JSON error"),
    "empty": (_write("lb.yaml", ""), EMPTY),
    "comments-only": (_write("lb.yaml", "# nothing yet\n"), EMPTY),
    "fifo-no-writer": (_fifo, EMPTY),
    "wrong-kind": (_wrong_kind, WRONG_KIND),
    "deep-nesting": (_write("lb.yaml", "a: " + "[" * 300 + "]" * 300 + "\n"), "nested deeper"),
    "alias-bomb": (_bomb, "aliases repeat more than 10000 nodes"),
    "huge": (_write("lb.yaml", "# padding\n" * 220_000), "the file is larger than 2 MiB"),
}


@pytest.fixture(autouse=True)
def _no_log_handler(monkeypatch: pytest.MonkeyPatch) -> None:
    """``run`` and ``demo`` install a stderr log handler; in process it would outlive the
    test's captured stderr."""
    monkeypatch.setattr(lb.logs, "configure", lambda *a, **k: None)


def _expected(message: str | dict[str, str], kind: str) -> str:
    return message if isinstance(message, str) else message[kind]


def check_output(code: int, out: str, err: str, path: Path, expected: str) -> None:
    """Exit 2; no traceback; exactly one error line, which names the file and says
    ``expected``; anything else on stderr is a warning or check's closing count."""
    assert "Traceback" not in out + err
    assert code == 2, (out, err)
    lines = [line for line in err.splitlines() if line.strip()]
    errors = [line for line in lines if not line.startswith("warning: ")]
    errors = [line for line in errors if not line.endswith(("0 warnings", "1 warning"))]
    assert len(errors) == 1, err
    assert str(path) in errors[0], err
    assert expected in errors[0], err


@pytest.mark.parametrize("case", CASES)
@pytest.mark.parametrize("command", COMMANDS)
def test_bad_file(
    command: str, case: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    before, after, kind = COMMANDS[command]
    make, message = CASES[case]
    if command == "demo" and case in ("empty", "comments-only", "fifo-no-writer"):
        message = "no tunnel endpoint is mapped by connect_to"  # the demo's own check
    path = make(tmp_path, kind)
    code = main([*before, str(path), *after])
    out, err = capsys.readouterr()
    check_output(code, out, err, path, _expected(message, kind))


@pytest.fixture
def unreadable() -> Iterator[Path]:
    """A file this process may not read: mode 000, read with the effective user ``nobody``
    when running as root (root reads anything), in a directory ``nobody`` may enter."""
    directory = Path(tempfile.mkdtemp(prefix="tunnel-lb-unreadable-"))
    try:
        directory.chmod(0o755)
        path = directory / "lb.yaml"
        path.write_text("pools: []\n")
        path.chmod(0)
        if os.geteuid() != 0:
            yield path
            return
        if not Path(tempfile.gettempdir()).stat().st_mode & 0o001:
            pytest.skip(f"{tempfile.gettempdir()} is not searchable by nobody")
        os.seteuid(NOBODY)
        try:
            yield path
        finally:
            os.seteuid(0)
    finally:
        shutil.rmtree(directory)


@pytest.mark.parametrize("command", COMMANDS)
def test_unreadable_file(
    command: str, unreadable: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    before, after, _ = COMMANDS[command]
    code = main([*before, str(unreadable), *after])
    out, err = capsys.readouterr()
    check_output(code, out, err, unreadable, "cannot read: Permission denied")


@pytest.mark.parametrize(("command", "case"), [("run", "binary"), ("connector", "yaml-error")])
def test_the_console_entry_point_prints_no_traceback(
    command: str, case: str, tmp_path: Path
) -> None:
    before, after, kind = COMMANDS[command]
    make, message = CASES[case]
    path = make(tmp_path, kind)
    proc = subprocess.run(
        [sys.executable, "-m", "lb", *before, str(path), *after],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    check_output(proc.returncode, proc.stdout, proc.stderr, path, _expected(message, kind))


BAD_OPTIONS = {
    "unknown-datacenter": (["--datacenter", "XXX"], "--datacenter 'XXX': unknown data center"),
    "close-datacenter": (["--datacenter", "FRAX"], 'unknown data center (did you mean "FRA"?)'),
    "client-ip": (["--client-ip", "notanip"], "--client-ip 'notanip': not an IP address"),
}


@pytest.mark.parametrize(("argv", "expected"), BAD_OPTIONS.values(), ids=BAD_OPTIONS)
def test_explain_rejects_bad_request_options(
    argv: list[str], expected: str, capsys: pytest.CaptureFixture[str]
) -> None:
    code = main(["explain", str(CONFIG), "--host", "app.localhost", *argv])
    out, err = capsys.readouterr()
    assert (code, out) == (2, "")
    assert err.count("\n") == 1 and err.startswith("error: ") and expected in err, err


def test_a_lowercase_datacenter_is_accepted(capsys: pytest.CaptureFixture[str]) -> None:
    geo = ROOT / "configs" / "geo.yaml"
    assert main(["explain", str(geo), "--host", "geo.localhost", "--datacenter", "sin"]) == 0
    assert "pool apac" in capsys.readouterr().out


def test_check_reports_a_configuration_without_load_balancers_unless_allowed(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = tmp_path / "monitors.yaml"
    path.write_text("monitors:\n  - {id: m, type: http}\n")
    assert main(["check", str(path)]) == 2
    err = capsys.readouterr().err
    assert err.splitlines()[0] == (
        f"{path}: load_balancers: no load balancer is configured: every request would be "
        "answered 404 (pass --allow-empty to accept that)"
    )
    assert main(["check", "--allow-empty", str(path)]) == 0
    assert capsys.readouterr().out.startswith(f"OK: {path}")


def test_an_unexpected_exception_is_one_line_unless_asked_for(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    import lb.commands.check

    def broken(args: object) -> int:
        raise ZeroDivisionError("a bug")

    monkeypatch.setattr(lb.commands.check, "run", broken)
    monkeypatch.delenv("TUNNEL_LB_TRACEBACK", raising=False)
    assert main(["check", "x.yaml"]) == 1
    assert capsys.readouterr().err == (
        "error: unexpected ZeroDivisionError: a bug (a bug; set TUNNEL_LB_TRACEBACK=1 to see "
        "where)\n"
    )
    monkeypatch.setenv("TUNNEL_LB_TRACEBACK", "1")
    with pytest.raises(ZeroDivisionError):
        main(["check", "x.yaml"])


def test_config_errors_inside_an_exception_group_are_printed_as_problems(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    import lb.commands.check
    from lb.config import ConfigError, Problem

    def fails(args: object) -> int:
        problem = Problem(file="lb.yaml", line=3, path="pools", message="bad")
        raise ExceptionGroup("from a nursery", [ConfigError([problem])])

    monkeypatch.setattr(lb.commands.check, "run", fails)
    assert main(["check", "x.yaml"]) == 2
    assert capsys.readouterr().err == "error: lb.yaml:3: pools: bad\n"


def test_a_closed_pipe_ends_quietly(tmp_path: Path) -> None:
    """``tunnel-lb check --json lb.yaml | head -1``: the reader leaves early."""
    pools = "".join(
        f"  - {{name: p{i}, origins: [{{name: o, address: 10.0.{i // 250}.{i % 250}}}]}}\n"
        for i in range(700)
    )
    path = tmp_path / "lb.yaml"
    path.write_text(
        f"pools:\n{pools}load_balancers:\n  - {{name: a.test, default_pools: [p0], "
        "fallback_pool: p1}\n"
    )  # the summary is larger than a pipe's buffer: the write fails wherever it is
    proc = subprocess.Popen(
        [sys.executable, "-m", "lb", "check", "--json", str(path)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    assert proc.stdout is not None
    proc.stdout.close()
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 141
    assert err == b""


def test_run_starts_without_load_balancers_only_when_allowed(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    import lb.commands.run

    served: list[object] = []

    async def serve_lb(paths: list[str], *, config: object, seed: int | None, **_: object) -> None:
        served.append(config)  # instead of listening

    monkeypatch.setattr(lb.commands.run, "serve_lb", serve_lb)
    path = tmp_path / "lb.yaml"
    path.write_text("# moved to lb.d/\n")
    assert main(["run", str(path)]) == 2
    assert "no load balancer is configured" in capsys.readouterr().err
    assert served == []
    assert main(["run", "--allow-empty", str(path)]) == 0
    assert len(served) == 1
