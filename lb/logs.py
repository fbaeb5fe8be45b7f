"""Structured log lines on stderr: one event per line, as JSON or as ``key=value`` text.

One line per health transition and per configuration event (and, optionally, per request),
so that operators can grep and ship them without a parser of our own.  Every line carries:

* ``time``: wall-clock time, RFC 3339 in UTC with milliseconds (what people and log
  shippers correlate on);
* ``mono``: the monotonic clock (``time.monotonic()``), which never jumps: the distance
  between two lines of one process is exact even when NTP steps the wall clock;
* ``level`` and ``event``: a snake_case name (``admin_listening``), then the event's fields.

``--log-format json`` (the default) prints one JSON object per line;
``--log-format text`` prints ``time mono=... level event key=value ...``, values quoted
only when they need it.  A record from a library (or any message that is not an event
name) becomes the event ``log`` with ``logger`` and ``message`` fields, so that every line
keeps the same shape.
"""

from __future__ import annotations

import argparse
import json
import logging
import re
import sys
import time
from datetime import UTC, datetime
from typing import Any

__all__ = [
    "FORMATS",
    "JsonFormatter",
    "TextFormatter",
    "add_arguments",
    "child_arguments",
    "configure",
    "configure_from",
    "event",
]

log = logging.getLogger("tunnel_lb")

FORMATS = ("json", "text")
LEVELS = ("debug", "info", "warning", "error")
_EVENT_NAME = re.compile(r"[a-z][a-z0-9_]*\Z")


def _rfc3339(created: float) -> str:
    """``2026-12-04T14:25:01.123Z``"""
    stamp = datetime.fromtimestamp(created, UTC)
    return stamp.strftime("%Y-%m-%dT%H:%M:%S.") + f"{stamp.microsecond // 1000:03d}Z"


def _fields(record: logging.LogRecord) -> dict[str, Any]:
    """The event name and fields of ``record`` (see the module docstring)."""
    message = record.getMessage()
    out: dict[str, Any] = {}
    if _EVENT_NAME.match(message) and not record.args:
        out["event"] = message
    else:
        out["event"] = "log"
        out["logger"] = record.name
        out["message"] = message
    fields = getattr(record, "fields", None)
    if isinstance(fields, dict):
        out.update(fields)
    if record.exc_info and record.exc_info[1] is not None:
        # One line, never a traceback: the exception's type and message (of the one
        # exception a trio nursery wrapped in a group, which says nothing of its own).
        exc = record.exc_info[1]
        while isinstance(exc, BaseExceptionGroup) and len(exc.exceptions) == 1:
            exc = exc.exceptions[0]
        out["error"] = f"{type(exc).__name__}: {exc}"
    return out


class _Stamp(logging.Filter):
    """Reads the monotonic clock when a record is made (``record.mono``)."""

    def filter(self, record: logging.LogRecord) -> bool:
        record.mono = time.monotonic()
        return True


def _mono(record: logging.LogRecord) -> float:
    return round(float(getattr(record, "mono", time.monotonic())), 3)


class JsonFormatter(logging.Formatter):
    """Render a record as one JSON object; ``extra={"fields": {...}}`` adds fields."""

    def format(self, record: logging.LogRecord) -> str:
        out: dict[str, Any] = {
            "time": _rfc3339(record.created),
            "mono": _mono(record),
            "level": record.levelname.lower(),
        }
        out.update(_fields(record))
        return json.dumps(out, default=str, separators=(",", ":"))


_BARE = re.compile(r"[A-Za-z0-9_.:/\[\]@+,-]+\Z")


def _text_value(value: Any) -> str:
    """A bare word when it is one (lists of words joined by commas), else JSON."""
    if isinstance(value, str):
        return value if _BARE.match(value) else json.dumps(value)
    if value is None or isinstance(value, bool | int | float):
        return json.dumps(value)
    if isinstance(value, list | tuple) and value:
        words = [_text_value(item) for item in value]
        if all(_BARE.match(word) and "," not in word for word in words):
            return ",".join(words)
    return json.dumps(value, default=str, separators=(",", ":"))


class TextFormatter(logging.Formatter):
    """``2026-12-04T14:25:01.123Z mono=812.042 info admin_listening addr=127.0.0.1:9100``"""

    def format(self, record: logging.LogRecord) -> str:
        fields = _fields(record)
        name = fields.pop("event")
        pairs = " ".join(f"{key}={_text_value(value)}" for key, value in fields.items())
        head = f"{_rfc3339(record.created)} mono={_mono(record):.3f} {record.levelname.lower()}"
        return f"{head} {name} {pairs}".rstrip()


def configure(level: int | str = logging.INFO, fmt: str = "json") -> None:
    """Send every record to stderr as one line in ``fmt`` (``json`` or ``text``).

    Called again, it changes the level and format of the same handler (never two lines
    per record).
    """
    if isinstance(level, str):
        level = logging.getLevelNamesMapping()[level.upper()]
    _settings[:] = [logging.getLevelName(level).lower(), fmt]
    formatter: logging.Formatter = TextFormatter() if fmt == "text" else JsonFormatter()
    root = logging.getLogger()
    handler = next((h for h in root.handlers if getattr(h, "_tunnel_lb", False)), None)
    if handler is None:
        handler = logging.StreamHandler(sys.stderr)
        handler._tunnel_lb = True  # type: ignore[attr-defined]
        handler.addFilter(_Stamp())
        root.addHandler(handler)
    handler.setFormatter(formatter)
    root.setLevel(level)
    logging.getLogger("httpx").setLevel(logging.WARNING)  # one line per request is noise here


_settings: list[str] = ["info", "json"]
"""The level and format :func:`configure` set last."""


def child_arguments() -> list[str]:
    """``--log-level`` and ``--log-format`` as configured here, for a child process of ours
    (a proxy worker) to log the same way."""
    level, fmt = _settings
    return ["--log-level", level if level in LEVELS else "info", "--log-format", fmt]


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """``--log-level`` and ``--log-format`` for the commands that log (run, demo, connector)."""
    parser.add_argument(
        "--log-level", choices=LEVELS, default="info", help="least severe level logged (info)"
    )
    parser.add_argument(
        "--log-format",
        choices=FORMATS,
        default="json",
        help="json: one object per line (default); text: key=value",
    )


def configure_from(args: argparse.Namespace, *, level: str | None = None) -> None:
    """:func:`configure` from the options of :func:`add_arguments` (``level`` overrides)."""
    configure(level or args.log_level, args.log_format)


def event(name: str, level: int = logging.INFO, **fields: Any) -> None:
    """Log one structured event."""
    log.log(level, name, extra={"fields": fields})
