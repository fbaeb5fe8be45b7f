"""The test setup itself: no test can bind a fixed port, here or in a process it starts, so
that two copies of the suite run side by side on one machine (tests/conftest.py)."""

from __future__ import annotations

import socket
import subprocess
import sys

import pytest
from fixed_ports import FixedPortError, ephemeral_range


def test_a_fixed_port_is_refused_in_the_test_process() -> None:
    low, _ = ephemeral_range()
    with socket.socket() as sock, pytest.raises(FixedPortError, match="fixed port"):
        sock.bind(("127.0.0.1", low - 1))  # refused before the kernel sees it


def test_port_zero_and_the_port_it_got_are_allowed() -> None:
    with socket.socket() as first:
        first.bind(("127.0.0.1", 0))
        port = first.getsockname()[1]
    with socket.socket() as again:
        again.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        again.bind(("127.0.0.1", port))


def test_a_fixed_port_is_refused_in_a_process_the_tests_start() -> None:
    code = "import socket; socket.socket().bind(('127.0.0.1', 8080))"
    done = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=30, check=False
    )
    assert done.returncode != 0
    assert "FixedPortError" in done.stderr
    assert "fixed port 127.0.0.1:8080" in done.stderr
