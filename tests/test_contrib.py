"""Files shipped for operators: the systemd unit parses, reloads with SIGHUP, stops with
SIGTERM and drains in time, and is hardened; the packaged quickstart and the LICENSE match."""

from __future__ import annotations

import shutil
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest

from lb.config.model import EngineSettings

ROOT = Path(__file__).resolve().parent.parent
UNIT = ROOT / "contrib" / "systemd" / "tunnel-lb.service"


def parse_unit(text: str) -> dict[str, dict[str, list[str]]]:
    """``[Section]`` -> key -> values (systemd allows a key more than once)."""
    sections: dict[str, dict[str, list[str]]] = {}
    current: dict[str, list[str]] | None = None
    for number, raw in enumerate(text.splitlines(), 1):
        line = raw.strip()
        if not line or line.startswith(("#", ";")):
            continue
        if line.startswith("[") and line.endswith("]"):
            current = sections.setdefault(line[1:-1], {})
            continue
        key, sep, value = line.partition("=")
        assert sep and current is not None and key.strip(), f"line {number}: {raw!r}"
        assert not value.endswith("\\"), f"line {number}: continuation lines are not used"
        current.setdefault(key.strip(), []).append(value.strip())
    return sections


def test_the_unit_reloads_with_sighup_stops_with_sigterm_and_is_hardened() -> None:
    unit = parse_unit(UNIT.read_text())
    assert set(unit) == {"Unit", "Service", "Install"}
    service = {key: values[-1] for key, values in unit["Service"].items()}
    assert " run " in service["ExecStart"] and service["ExecStart"].split()[0].endswith("tunnel-lb")
    assert service["ExecReload"] == "/bin/kill -HUP $MAINPID"
    assert service["KillSignal"] == "SIGTERM"
    assert float(service["TimeoutStopSec"]) > EngineSettings().drain_timeout  # the drain ends first
    assert service["RestartPreventExitStatus"] == "2"  # a config error or a busy port
    for key, value in {
        "NoNewPrivileges": "yes",
        "ProtectSystem": "strict",
        "ProtectHome": "yes",
        "PrivateTmp": "yes",
        "DynamicUser": "yes",
        "CapabilityBoundingSet": "CAP_NET_BIND_SERVICE",
        "RestrictAddressFamilies": "AF_INET AF_INET6 AF_UNIX",
    }.items():
        assert service.get(key) == value, key
    assert unit["Install"]["WantedBy"] == ["multi-user.target"]


def test_systemd_analyze_verifies_the_unit(tmp_path: Path) -> None:
    analyze = shutil.which("systemd-analyze")
    if analyze is None:
        pytest.skip("systemd-analyze is not installed: only the parser check ran")
    # The unit names /usr/local/bin/tunnel-lb; verify checks that commands exist, so point
    # them at the tunnel-lb of this environment.
    here = Path(sys.executable).parent / "tunnel-lb"
    text = UNIT.read_text().replace("/usr/local/bin/tunnel-lb", str(here))
    copy = tmp_path / "tunnel-lb.service"
    copy.write_text(text)
    done = subprocess.run(
        [analyze, "verify", str(copy)], capture_output=True, text=True, timeout=60, check=False
    )
    problems = [
        line
        for line in (done.stdout + done.stderr).splitlines()
        if "tunnel-lb.service" in line  # not warnings about the host's own units
    ]
    assert done.returncode == 0 and not problems, done.stdout + done.stderr


def test_the_packaged_quickstart_is_the_one_in_configs() -> None:
    packaged = ROOT / "lb" / "data" / "quickstart.yaml"
    assert packaged.read_text() == (ROOT / "configs" / "quickstart.yaml").read_text()


def test_the_license_file_matches_pyproject() -> None:
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    assert project["license"] == "MIT"
    assert (ROOT / "LICENSE").read_text().startswith("MIT License\n")
    assert "trustme>=1.1" in project["optional-dependencies"]["demo"]
