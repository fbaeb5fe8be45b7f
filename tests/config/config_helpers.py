"""Helpers for the configuration tests: load a text, get its problems as strings."""

from __future__ import annotations

import textwrap

from lb.config import ConfigError, LoadResult, load_config_text

__all__ = ["BASE", "T1", "T2", "errors", "load", "warnings"]

T1 = "6ff42ae2-765d-4adf-8112-31c55c1551ef"
T2 = "0f3e2d1c-4b5a-4c6d-8e7f-9a0b1c2d3e4f"

BASE = """\
monitors:
  - {id: m, type: https, interval: 60, header: {Host: [app.example.com]}}
pools:
  - {name: a, monitor: m, origins: [{name: o1, address: 10.0.0.1}]}
  - {name: b, monitor: m, origins: [{name: o1, address: 10.0.0.2}]}
load_balancers:
  - {name: app.example.com, proxied: true, default_pools: [a, b], fallback_pool: b}
"""
"""A valid configuration; one object per line, so problems have predictable lines (2-7)."""


def load(text: str, filename: str = "lb.yaml") -> LoadResult:
    """Load dedented ``text``; fail the test with the problems if it is invalid."""
    try:
        return load_config_text(textwrap.dedent(text), filename)
    except ConfigError as exc:  # pragma: no cover - shown only when a test fails
        raise AssertionError(f"unexpected errors:\n{exc}") from None


def errors(text: str, filename: str = "lb.yaml") -> list[str]:
    """The errors of dedented ``text`` as ``file:line: path: message`` strings ([] if valid)."""
    try:
        load_config_text(textwrap.dedent(text), filename)
    except ConfigError as exc:
        return [str(p) for p in exc.problems]
    return []


def warnings(text: str, filename: str = "lb.yaml") -> list[str]:
    """The warnings of a valid dedented ``text``."""
    return [str(p) for p in load(text, filename).warnings]
