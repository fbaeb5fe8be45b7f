"""``engine.state_file``: health that survives a restart, written and read atomically.

The document is :meth:`lb.engine.Engine.save_state`'s (pure); this module only moves it to and
from disk.  A write goes to a temporary file in the same directory, is flushed and fsynced, and
renamed over the old file (then the directory is fsynced), so a reader sees the old file or the
new one, never half of one.  A file that cannot be used (missing, unreadable, corrupt,
truncated, foreign, stale, for another configuration) is reported in one log line and ignored:
the process starts with unknown health as it would without the option, never fails.
"""

from __future__ import annotations

import json
import logging
import os
import tempfile
import time

import trio

from lb import logs
from lb.engine import Engine

__all__ = ["keep_state", "load_state", "write_state"]

_MAX_BYTES = 64 << 20
"""A larger file is not read (it cannot be ours: sessions are capped)."""


def write_state(engine: Engine, path: str, *, now: float) -> None:
    """Write the engine's state to ``path`` atomically (temp file, fsync, rename)."""
    data = json.dumps(engine.save_state(now=now, wall=time.time()), separators=(",", ":"))
    directory = os.path.dirname(os.path.abspath(path))
    fd, tmp = tempfile.mkstemp(prefix=".state-", dir=directory)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        os.unlink(tmp)
        raise
    dir_fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(dir_fd)
    finally:
        os.close(dir_fd)


def load_state(engine: Engine, path: str, *, now: float) -> bool:
    """Load ``path`` into ``engine`` if it is usable; one log line either way."""
    max_age = engine.config.engine.state_max_age
    try:
        with open(path, "rb") as f:
            raw = f.read(_MAX_BYTES + 1)
        if len(raw) > _MAX_BYTES:
            problem = "larger than 64 MiB"
        else:
            problem = engine.load_state(json.loads(raw), now=now, wall=time.time(), max_age=max_age)
    except FileNotFoundError:
        logs.event("state_file_absent", path=path)
        return False
    except (OSError, ValueError, RecursionError) as exc:  # JSON errors are ValueErrors
        problem = f"unreadable: {exc}"
    if problem:
        logs.event("state_file_ignored", logging.WARNING, path=path, reason=problem)
        return False
    logs.event("state_file_loaded", path=path)
    return True


async def keep_state(
    engine: Engine, path: str, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED
) -> None:
    """Write the state every ``engine.state_interval`` seconds, and once more when cancelled
    (shutdown).  A failed write is logged and retried at the next interval."""
    task_status.started()
    try:
        while True:
            await trio.sleep(engine.config.engine.state_interval)
            _write_logged(engine, path)
    finally:
        _write_logged(engine, path)


def _write_logged(engine: Engine, path: str) -> None:
    try:
        write_state(engine, path, now=trio.current_time())
    except OSError as exc:
        logs.event("state_file_write_failed", logging.WARNING, path=path, error=str(exc))
