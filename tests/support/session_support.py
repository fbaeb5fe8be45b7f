"""Processes of a session (Linux ``/proc``): tests start a command with
``start_new_session=True`` and check that nothing it started outlives it."""

from __future__ import annotations

import os
from pathlib import Path

__all__ = ["session"]


def session(sid: int) -> list[int]:
    """Every live process of session ``sid``."""
    out = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            stat = Path(f"/proc/{entry}/stat").read_text()
        except OSError:
            continue
        fields = stat.rpartition(")")[2].split()
        if int(fields[3]) == sid:
            out.append(int(entry))
    return out
