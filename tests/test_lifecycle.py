"""A signal at any moment of start-up stops `run`, `demo` and `connector` cleanly.

Each case starts the command as its own process (in a session of its own, so that every
process it starts can be found), sends SIGTERM or SIGINT at one moment of its start-up and
checks: exit status 0, no ``Traceback`` on stdout or stderr, no process of its session left,
and its temporary directory (``TMPDIR``) empty (the demo's holds a TLS private key).

The moments are events, not delays:

* ``first_code``: as soon as the process catches SIGTERM (``SigCgt`` in ``/proc``), i.e.
  the first moment our code runs.  Earlier, the interpreter is still starting and the
  kernel's default action applies: nothing was started yet, so nothing can be left over.
* ``children``: as soon as the process has started a child (a demo stand-in, a worker),
  before it is ready;
* ``banner``: at the first byte the demo prints (it prints once it is up);
* ``ready``: once it says it is ready (the demo's last banner line, ``run``'s ``ready``
  event, the connector's listening line).

Linux only (``/proc``); every wait is bounded.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path

import pytest
import trustme
from session_support import session
from stack_support import EU, one_pool_config

ROOT = Path(__file__).resolve().parent.parent

pytestmark = [
    pytest.mark.integration,
    pytest.mark.skipif(not Path("/proc/self/status").exists(), reason="needs Linux /proc"),
]

START_TIMEOUT = 30.0
STOP_TIMEOUT = 30.0


class Daemon:
    """One ``python -m lb ...`` process with its output collected line by line."""

    def __init__(self, args: list[str], tmp: Path) -> None:
        self.tmp = tmp / "tmp"
        self.tmp.mkdir()
        self.process = subprocess.Popen(
            [sys.executable, "-m", "lb", *args],
            cwd=ROOT,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            env={**os.environ, "TMPDIR": str(self.tmp)},
            start_new_session=True,
        )
        self.lines: dict[str, list[str]] = {"stdout": [], "stderr": []}
        self.changed = threading.Condition()
        self.readers = [
            threading.Thread(target=self._read, args=(name,), daemon=True)
            for name in ("stdout", "stderr")
        ]
        for reader in self.readers:
            reader.start()

    def _read(self, name: str) -> None:
        stream = getattr(self.process, name)
        for raw in stream:
            with self.changed:
                self.lines[name].append(raw.decode("utf-8", "replace"))
                self.changed.notify_all()
        with self.changed:
            self.changed.notify_all()

    def output(self) -> str:
        with self.changed:
            return "".join(self.lines["stdout"]) + "".join(self.lines["stderr"])

    def wait_for(self, what: str, check: Callable[[], bool], poll: float | None = None) -> None:
        """Until ``check()`` holds (re-checked on every line, or every ``poll`` seconds)."""
        deadline = time.monotonic() + START_TIMEOUT
        with self.changed:
            while not check():
                left = deadline - time.monotonic()
                if left <= 0 or self.process.poll() is not None:
                    pytest.fail(f"{what}: not seen; output:\n{self.output_unlocked()[-3000:]}")
                self.changed.wait(min(left, poll or left))

    def output_unlocked(self) -> str:
        return "".join(self.lines["stdout"]) + "".join(self.lines["stderr"])

    def kill_session(self) -> None:
        for pid in session(self.process.pid):
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        with contextlib.suppress(ProcessLookupError):
            os.kill(self.process.pid, signal.SIGKILL)
        self.process.wait(timeout=10)


def lb_children(pid: int) -> list[int]:
    """Processes of the session that are ``python -m lb ...`` (stand-ins, workers), not the
    short-lived helpers some libraries run (``ldconfig -p``)."""
    out = []
    for member in session(pid):
        try:
            command = Path(f"/proc/{member}/cmdline").read_bytes().split(b"\0")
        except OSError:
            continue
        if member != pid and command[1:3] == [b"-m", b"lb"]:
            out.append(member)
    return out


def catches_sigterm(pid: int) -> bool:
    try:
        status = Path(f"/proc/{pid}/status").read_text()
    except OSError:
        return False
    caught = next(line for line in status.splitlines() if line.startswith("SigCgt:"))
    return bool(int(caught.split()[1], 16) & (1 << (signal.SIGTERM - 1)))


def stop_at(daemon: Daemon, moment: str, ready: Callable[[Daemon], bool]) -> None:
    """Wait for ``moment`` (see the module docstring)."""
    pid = daemon.process.pid
    if moment == "first_code":
        daemon.wait_for(moment, lambda: catches_sigterm(pid), poll=0.001)
    elif moment == "children":
        daemon.wait_for(moment, lambda: bool(lb_children(pid)), poll=0.005)
    elif moment == "banner":
        daemon.wait_for(moment, lambda: bool(daemon.lines["stdout"]))
    else:
        daemon.wait_for(moment, lambda: ready(daemon))


def check_clean_exit(daemon: Daemon, signum: signal.Signals) -> None:
    try:
        daemon.process.send_signal(signum)
        code = daemon.process.wait(timeout=STOP_TIMEOUT)
        for reader in daemon.readers:
            reader.join(timeout=10)
        output = daemon.output()
        assert code == 0, output[-3000:]
        assert "Traceback" not in output, output[-3000:]
        assert session(daemon.process.pid) == [], "processes left running"
        assert list(daemon.tmp.iterdir()) == [], "temporary files left behind"
    finally:
        if daemon.process.returncode is None or session(daemon.process.pid):
            daemon.kill_session()
        for reader in daemon.readers:
            reader.join(timeout=10)
        for stream in (daemon.process.stdout, daemon.process.stderr):
            if stream is not None:
                stream.close()


def demo_ready(daemon: Daemon) -> bool:
    return any(line.startswith("  stop: ") for line in daemon.lines["stdout"])


def run_ready(daemon: Daemon) -> bool:
    return any('"event":"ready"' in line for line in daemon.lines["stderr"])


def connector_ready(daemon: Daemon) -> bool:
    return any(line.startswith("tunnel ") for line in daemon.lines["stdout"])


FREE = ["--listen", "127.0.0.1:0", "--admin", "127.0.0.1:0"]


@pytest.mark.parametrize(
    ("moment", "signum"),
    [
        ("first_code", signal.SIGINT),
        ("children", signal.SIGTERM),
        ("children", signal.SIGINT),
        ("banner", signal.SIGTERM),
        ("ready", signal.SIGINT),
        ("ready", signal.SIGTERM),
    ],
    ids=[
        "first_code-INT",
        "children-TERM",
        "children-INT",
        "banner-TERM",
        "ready-INT",
        "ready-TERM",
    ],
)
def test_demo_stops_cleanly_whenever_signalled(
    tmp_path: Path, moment: str, signum: signal.Signals
) -> None:
    daemon = Daemon(["demo", *FREE], tmp_path)
    try:
        stop_at(daemon, moment, demo_ready)  # "children": waits until stand-ins run
        if moment == "ready":
            # Stand-ins that must not outlive it.  Not asked again at "children": a stand-in
            # caught between fork and exec has no command line for a moment.
            assert lb_children(daemon.process.pid)
    finally:
        check_clean_exit(daemon, signum)


@pytest.mark.parametrize(
    ("moment", "signum"),
    [
        ("first_code", signal.SIGTERM),
        ("children", signal.SIGINT),
        ("ready", signal.SIGTERM),
    ],
    ids=["first_code-TERM", "children-INT", "ready-TERM"],
)
def test_run_with_workers_stops_cleanly_whenever_signalled(
    tmp_path: Path, moment: str, signum: signal.Signals
) -> None:
    config = tmp_path / "lb.json"
    config.write_text(one_pool_config(workers=2))
    daemon = Daemon(["run", str(config)], tmp_path)
    try:
        stop_at(daemon, moment, run_ready)
    finally:
        check_clean_exit(daemon, signum)


@pytest.mark.parametrize(
    ("moment", "signum"),
    [("first_code", signal.SIGINT), ("ready", signal.SIGTERM)],
    ids=["first_code-INT", "ready-TERM"],
)
def test_connector_stops_cleanly_whenever_signalled(
    tmp_path: Path, moment: str, signum: signal.Signals
) -> None:
    cert = tmp_path / "tunnel.pem"
    trustme.CA().issue_cert("app.example.com").private_key_and_cert_chain_pem.write_to_path(
        str(cert)
    )
    config = tmp_path / "connector.json"
    config.write_text(
        json.dumps(
            {
                "tunnel": EU,
                "listen": "127.0.0.1:0",
                "certificate": str(cert),
                "key": str(cert),
                "ingress": [{"service": "hello_world"}],
            }
        )
    )
    daemon = Daemon(["connector", str(config)], tmp_path)
    try:
        stop_at(daemon, moment, connector_ready)
    finally:
        check_clean_exit(daemon, signum)
