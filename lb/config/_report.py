"""Collecting problems: the loader reports everything it finds, then fails once."""

from __future__ import annotations

import difflib
from collections.abc import Iterable

from lb.config._source import Where, render_path
from lb.config.errors import Problem

__all__ = ["Report", "did_you_mean", "fmt_number", "quote"]


class Report:
    """Errors and warnings found so far, in the order they were found."""

    def __init__(self) -> None:
        self.errors: list[Problem] = []
        self.warnings: list[Problem] = []
        self.files: dict[str, Where] = {}
        """Where each file name (a ``path`` field) or environment variable name (an ``env``
        field) was written, by dotted path: what they name is read after loading
        (:mod:`lb.files`), and its problems point here."""

    def error(self, where: Where, message: str) -> None:
        """Record a problem that makes the configuration unusable."""
        self.errors.append(where.problem(message))

    def warn(self, where: Where, message: str) -> None:
        """Record a problem that is legal but probably not what the user meant."""
        self.warnings.append(where.problem(message))

    def failed(self, where: Where) -> bool:
        """Whether an error was already recorded at ``where``: its value is then the default
        put in its place, and a check that reads it would only report a knock-on error."""
        path = render_path(where.path)
        return any(p.file == where.file and p.path == path for p in self.errors)


def did_you_mean(word: str, candidates: Iterable[str]) -> str:
    """``' (did you mean "weight"?)'`` for the closest candidate, or ``''``."""
    pool = list(candidates)
    by_case = {c.lower(): c for c in pool}
    match = by_case.get(word.lower())
    if match is None:
        close = difflib.get_close_matches(word, pool, n=1, cutoff=0.6)
        match = close[0] if close else None
    return f' (did you mean "{match}"?)' if match is not None else ""


def quote(value: object) -> str:
    """A value as it would be written in the file: strings quoted, numbers plain."""
    if isinstance(value, str):
        return f'"{value}"'
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, float):
        return fmt_number(value)
    return "null" if value is None else str(value)


def fmt_number(value: object) -> str:
    """``1.0`` -> ``1``, ``1.5`` -> ``1.5``, ``1e12`` -> ``1000000000000``: no float noise."""
    if isinstance(value, float) and value.is_integer():
        return str(int(value))
    return str(value)
