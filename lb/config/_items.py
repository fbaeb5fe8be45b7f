"""Parsed objects that still know where they were written, for the cross-object checks."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Generic, TypeVar

from lb.config._report import Report
from lb.config._source import Node, Segment, Where
from lb.config.model import (
    Datacenter,
    EngineSettings,
    LoadBalancer,
    Monitor,
    MonitorGroup,
    Pool,
    Tunnel,
)

__all__ = ["Item", "Parsed", "Seen"]

T = TypeVar("T")


@dataclass(frozen=True, slots=True)
class Item(Generic[T]):
    """A parsed ``value`` with the node it came from and its dotted path in that file."""

    value: T
    node: Node
    path: tuple[Segment, ...]

    def at(self, *sub: Segment) -> Where:
        """The place of a field inside this object: the line of its key when it is written,
        else the nearest enclosing line (a defaulted field points at its object)."""
        node, line = self.node, self.node.line
        for segment in sub:
            child = _child(node, segment)
            if child is None:
                break
            line = (
                node.key_lines.get(segment, child.line) if isinstance(segment, str) else child.line
            )
            node = child
        return Where(node.file, line or None, (*self.path, *sub))


def _child(node: Node, segment: Segment) -> Node | None:
    if isinstance(node.value, dict) and isinstance(segment, str):
        child: Node | None = node.value.get(segment)
        return child
    if isinstance(node.value, list) and isinstance(segment, int) and segment < len(node.value):
        child = node.value[segment]
        return child
    return None


@dataclass(slots=True)
class Parsed:
    """Every section after the generic parser, before cross-references are checked."""

    files: tuple[str, ...]
    engine: Item[EngineSettings]
    monitors: list[Item[Monitor]] = field(default_factory=list)
    monitor_groups: list[Item[MonitorGroup]] = field(default_factory=list)
    pools: list[Item[Pool]] = field(default_factory=list)
    load_balancers: list[Item[LoadBalancer]] = field(default_factory=list)
    tunnels: list[Item[Tunnel]] = field(default_factory=list)
    datacenters: dict[str, Item[Datacenter]] = field(default_factory=dict)
    connect_to: list[Item[str]] = field(default_factory=list)
    """One item per entry; the item's value is the target, the key is its path's last step."""
    broken: set[str] = field(default_factory=set)
    """Ids and names of objects that failed to parse: references to them are not reported."""


class Seen:
    """Finds duplicates: remembers where each key was first defined."""

    def __init__(self, report: Report) -> None:
        self._report = report
        self._first: dict[str, Where] = {}

    def add(
        self, key: str, where: Where, what: str, shown: str | None = None, note: str = ""
    ) -> bool:
        """Record ``key``; report ``duplicate <what>`` and return False if it was seen.

        ``shown`` is the spelling to print when ``key`` is normalised (lower-cased, say);
        ``note`` is appended to explain a rule that is not obvious.
        """
        first = self._first.setdefault(key, where)
        if first is where:
            return True
        place = f"{first.file}:{first.line}" if first.line else first.file
        message = f'duplicate {what} "{shown or key}" (first at {place}){note}'
        self._report.error(where, message)
        return False

    def __contains__(self, key: str) -> bool:
        return key in self._first
