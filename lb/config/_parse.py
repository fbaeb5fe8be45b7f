"""The generic parser: builds the model's dataclasses from :class:`Node` trees.

It is driven entirely by the dataclasses themselves, so a field added to the model is loaded,
type-checked and range-checked without touching this module:

* the field's annotation (via :func:`typing.get_type_hints`) says what to accept;
* a field without a default is required; ``null`` on any field means "not set";
* metadata ``range`` / ``choices`` are checked on a scalar, or on each element of a list or
  each value of a mapping;
* metadata ``path`` marks a file name: a relative one is taken relative to the directory of
  the file it was written in (as nginx's ``include`` and our connector's configuration do), so
  a configuration means the same thing from any working directory;
* metadata ``path`` and ``env`` (an environment variable's name) record where the name was
  written (``Report.files``): what it names is read after loading, and its problems point
  there;
* keys that are not fields are errors with a did-you-mean, except the class's ``READ_ONLY``
  API fields, which are accepted and dropped.

Problems go to a :class:`Report` and parsing goes on, so every problem of a file is found in
one run.  A field that failed falls back to its default, so that the object still takes part
in the cross-object checks; only an object whose required field failed is left out (it comes
back as :data:`INVALID`).
"""

from __future__ import annotations

import dataclasses
import functools
import math
import os
import types
import typing
from collections.abc import Callable, Mapping
from typing import Any, TypeVar

from lb.config._report import Report, did_you_mean, fmt_number, quote
from lb.config._source import Node, Segment, render_path

__all__ = ["INVALID", "Parser", "describe_node"]

T = TypeVar("T")
Path = tuple[Segment, ...]


class _Invalid:
    """Marker for a value that failed to parse (its problem is already reported)."""

    def __repr__(self) -> str:
        return "INVALID"


INVALID: Any = _Invalid()
"""Returned in place of a value whose problems were reported."""

_SCALAR_NAMES = {str: "a string", int: "an integer", float: "a number", bool: "true or false"}


@functools.cache
def _hints(cls: type) -> dict[str, Any]:
    return typing.get_type_hints(cls)


def _has_default(f: dataclasses.Field[Any]) -> bool:
    return f.default is not dataclasses.MISSING or f.default_factory is not dataclasses.MISSING


def _describe_type(tp: Any) -> str:
    if tp in _SCALAR_NAMES:
        return _SCALAR_NAMES[tp]
    origin = typing.get_origin(tp)
    if origin is tuple:
        return "a list"
    return "a mapping"


def describe_node(node: Node) -> str:
    value = node.value
    if value is None:
        return "null"
    if isinstance(value, bool):
        return f"a boolean ({quote(value)})"
    if isinstance(value, int | float):
        return f"a number ({quote(value)})"
    if isinstance(value, str):
        return f"a string ({quote(value)})"
    if isinstance(value, list):
        return "a list"
    if isinstance(value, dict):
        return "a mapping"
    return f"a {type(value).__name__}"


class Parser:
    """Parses nodes into values of annotated types, reporting problems to ``report``."""

    def __init__(self, report: Report) -> None:
        self.report = report

    # ----------------------------------------------------------------- dataclasses

    def dataclass(
        self, cls: type[T], node: Node, path: Path, preset: Mapping[str, object] | None = None
    ) -> T:
        """An instance of ``cls`` from a mapping node; ``preset`` fields come from elsewhere
        (the mapping key of a keyed section) and may not appear in the mapping itself."""
        if not isinstance(node.value, dict):
            return typing.cast(T, self._mismatch("a mapping", node, path))
        preset = preset or {}
        hints = _hints(typing.cast(type, cls))
        fields = {f.name: f for f in dataclasses.fields(cls) if f.name not in preset}  # type: ignore[arg-type]
        read_only: frozenset[str] = getattr(cls, "READ_ONLY", frozenset())
        kwargs: dict[str, object] = dict(preset)
        for key, child in node.value.items():
            f = fields.get(key)
            if f is None:
                if key not in read_only:
                    hint = did_you_mean(key, fields)
                    self.report.error(node.key_at(key, (*path, key)), f"unknown key{hint}")
                continue
            if child.value is None:
                continue  # null means "not set": the default, or missing if required
            value = self.value(hints[key], child, (*path, key), f.metadata)
            if value is not INVALID:
                kwargs[key] = value
        missing = [name for name, f in fields.items() if name not in kwargs and not _has_default(f)]
        for name in missing:
            if name not in node.value or node.value[name].value is None:
                self.report.error(node.at(path), f'missing required key "{name}"')
        if missing:
            return typing.cast(T, INVALID)
        return typing.cast(Callable[..., T], cls)(**kwargs)

    # ----------------------------------------------------------------- any type

    def value(self, tp: Any, node: Node, path: Path, meta: Mapping[str, Any]) -> Any:
        """``node`` parsed as ``tp``, with ``meta`` checks applied to its scalars."""
        if tp is Any:
            return node.plain()
        origin = typing.get_origin(tp)
        if origin in (types.UnionType, typing.Union):
            return self._optional(tp, node, path, meta)
        if dataclasses.is_dataclass(tp):
            return self.dataclass(typing.cast(type, tp), node, path)
        if origin is tuple:
            return self._tuple(typing.get_args(tp)[0], node, path, meta)
        if origin is Mapping:
            return self._mapping(typing.get_args(tp)[1], node, path, meta)
        return self._scalar(tp, node, path, meta)

    def _optional(self, tp: Any, node: Node, path: Path, meta: Mapping[str, Any]) -> Any:
        args = [a for a in typing.get_args(tp) if a is not type(None)]
        if len(args) != 1:  # pragma: no cover - the model only uses ``X | None``
            raise TypeError(f"unsupported union {tp}")
        return None if node.value is None else self.value(args[0], node, path, meta)

    def _tuple(self, item_tp: Any, node: Node, path: Path, meta: Mapping[str, Any]) -> Any:
        if not isinstance(node.value, list):
            return self._mismatch("a list", node, path)
        items = [self.value(item_tp, n, (*path, i), meta) for i, n in enumerate(node.value)]
        return INVALID if any(i is INVALID for i in items) else tuple(items)

    def _mapping(self, value_tp: Any, node: Node, path: Path, meta: Mapping[str, Any]) -> Any:
        if not isinstance(node.value, dict):
            return self._mismatch("a mapping", node, path)
        out: dict[str, Any] = {}
        for key, child in node.value.items():
            if value_tp == tuple[str, ...] and isinstance(child.value, str):
                child = Node([child], child.file, child.line)  # "Host: x" = "Host: [x]"
            out[key] = self.value(value_tp, child, (*path, key), meta)
        return INVALID if any(v is INVALID for v in out.values()) else out

    # ----------------------------------------------------------------- scalars

    def _scalar(self, tp: Any, node: Node, path: Path, meta: Mapping[str, Any]) -> Any:
        value = _coerce(tp, node)
        if value is INVALID:
            return self._mismatch(_describe_type(tp), node, path)
        message = _check_meta(value, meta)
        if message:
            self.report.error(node.at(path), message)
            return INVALID
        if (meta.get("path") or meta.get("env")) and value:
            self.report.files[render_path(path)] = node.at(path)
        if meta.get("path") and value:
            return os.path.join(os.path.dirname(node.file), value)  # value if it is absolute
        return value

    def _mismatch(self, expected: str, node: Node, path: Path) -> Any:
        self.report.error(node.at(path), f"expected {expected}, got {describe_node(node)}")
        return INVALID


def _coerce(tp: Any, node: Node) -> Any:
    """The node's value as ``tp``, or INVALID.

    ``bool`` is not accepted as a number; integers are accepted where a float is wanted; an
    unquoted YAML scalar is accepted as a string in its source spelling.
    """
    value = node.value
    if tp is bool:
        return value if isinstance(value, bool) else INVALID
    if isinstance(value, bool):
        return node.text if tp is str and node.text is not None else INVALID
    if tp is int:
        return value if isinstance(value, int) else INVALID
    if tp is float:
        ok = isinstance(value, int | float) and math.isfinite(value)
        return float(value) if ok else INVALID  # type: ignore[arg-type]
    if tp is str:
        if isinstance(value, str):
            return value
        return node.text if node.text is not None else INVALID
    raise TypeError(f"unsupported field type {tp!r}")  # pragma: no cover - model bug


def _check_meta(value: Any, meta: Mapping[str, Any]) -> str:
    """The message for a value outside the field's ``choices`` or ``range``, or ``''``."""
    choices = meta.get("choices")
    if choices is not None and value not in choices:
        listed = ", ".join(quote(c) for c in choices)
        return f"must be one of {listed}; got {quote(value)}{did_you_mean(str(value), choices)}"
    bounds = meta.get("range")
    if bounds is not None and not bounds[0] <= value <= bounds[1]:
        low, high = (fmt_number(b) for b in bounds)
        return f"must be between {low} and {high}, got {fmt_number(value)}"
    return ""
