"""Bounds on what a configuration file may cost to read.

Configuration files come from other people and from automation, and a reload reads them
into a running process, so reading one must take bounded time and memory whatever it
holds.  Four limits do that (``docs/config.md`` states them for users):

* the file size (:data:`MAX_FILE_BYTES`), checked before parsing;
* the nesting depth (:data:`MAX_DEPTH`): PyYAML's composer, :mod:`json` and our own tree
  conversion recurse once per level, so a few thousand ``[`` would end in ``RecursionError``;
* the length of a number (:data:`MAX_NUMBER_CHARS`): Python refuses to convert integers of
  more than 4,300 digits, and nothing in a configuration needs more than a few dozen;
* alias expansion (:data:`MAX_ALIAS_NODES`): YAML aliases share nodes, so a few hundred bytes
  of nested aliases ("billion laughs") stand for billions of nodes once walked.

YAML is checked while PyYAML composes the node graph, before anything walks it: the composer
below records the size (nodes, counting what aliases repeat) and the height of every node it
builds, so an alias costs one dictionary lookup to account for.  JSON has no aliases; its
depth and numbers are checked by one scan of the text before :func:`json.loads` sees it.
Each violation is a :class:`LimitError` carrying the line, reported like any other problem.
"""

from __future__ import annotations

import re
from typing import Any

import yaml
from yaml.events import AliasEvent, MappingStartEvent, SequenceStartEvent
from yaml.nodes import MappingNode, Node, ScalarNode, SequenceNode

__all__ = [
    "MAX_ALIAS_NODES",
    "MAX_DEPTH",
    "MAX_FILE_BYTES",
    "MAX_NUMBER_CHARS",
    "LimitError",
    "LimitedYamlLoader",
    "scan_json",
    "too_large",
]

MAX_FILE_BYTES = 2 * 1024 * 1024
"""Largest configuration file read (2 MiB: about 10,000 pools in YAML)."""
MAX_DEPTH = 64
"""Deepest nesting of lists and mappings, a scalar not counting as a level (a real
configuration needs about ten)."""
MAX_NUMBER_CHARS = 64
"""Longest number, in characters."""
MAX_ALIAS_NODES = 10_000
"""How many nodes aliases and merge keys may repeat: this many, or as many as the file
itself holds when that is more (aliases may at most double the work of reading a file)."""

_INT_TAG = "tag:yaml.org,2002:int"
_FLOAT_TAG = "tag:yaml.org,2002:float"


class LimitError(Exception):
    """A file goes beyond one of the limits; ``line`` is 1-based, or None when unknown."""

    def __init__(self, message: str, line: int | None) -> None:
        super().__init__(message)
        self.message = message
        self.line = line


def _mebibytes(n: int) -> str:
    return f"{n / (1024 * 1024):g} MiB"


def too_large() -> str:
    """The message for a file over :data:`MAX_FILE_BYTES` (reading stops at the limit)."""
    return f"the file is larger than {_mebibytes(MAX_FILE_BYTES)}, the limit"


def _too_deep() -> str:
    return f"nested deeper than {MAX_DEPTH} levels"


def _long_number(length: int) -> str:
    return f"a number of {length} characters (at most {MAX_NUMBER_CHARS})"


class LimitedYamlLoader(yaml.SafeLoader):
    """PyYAML's safe loader with a composer that enforces the limits as it builds nodes.

    ``_size`` and ``_height`` are keyed by node identity; nodes live as long as the loader
    (the graph holds them), so identities are not reused while it is in use.
    """

    def __init__(self, stream: str) -> None:
        super().__init__(stream)
        self._depth = 0
        self._nodes = 0
        self._repeated = 0
        self._size: dict[int, int] = {}
        self._height: dict[int, int] = {}

    def compose_node(self, parent: Node | None, index: Any) -> Node | None:
        line = self._next_line()
        if self.check_event(AliasEvent):
            node = super().compose_node(parent, index)
            assert node is not None  # an alias always names a node
            # A collection still being composed (a recursive alias) counts as one level and
            # one node; the tree conversion reports the cycle.
            if self._depth + self._height.get(id(node), _height_of_unknown(node)) > MAX_DEPTH:
                raise LimitError(f"{_too_deep()} once aliases are expanded", line)
            self._repeated += self._size.get(id(node), 1)
            if self._repeated > max(MAX_ALIAS_NODES, self._nodes):
                raise LimitError(
                    f"aliases repeat more than {max(MAX_ALIAS_NODES, self._nodes)} nodes "
                    "(an alias bomb?)",
                    line,
                )
            return node
        if not self.check_event(SequenceStartEvent, MappingStartEvent):
            self._nodes += 1
            return super().compose_node(parent, index)
        self._depth += 1
        if self._depth > MAX_DEPTH:
            raise LimitError(_too_deep(), line)
        try:
            node = super().compose_node(parent, index)
        finally:
            self._depth -= 1
        self._nodes += 1
        if node is not None:
            self._account(node)
        return node

    def compose_scalar_node(self, anchor: Any) -> ScalarNode:
        node = super().compose_scalar_node(anchor)
        if node.tag in (_INT_TAG, _FLOAT_TAG) and len(node.value) > MAX_NUMBER_CHARS:
            raise LimitError(_long_number(len(node.value)), node.start_mark.line + 1)
        return node

    def _next_line(self) -> int | None:
        """The 1-based line where the next event starts."""
        event: yaml.Event = self.peek_event()  # type: ignore[no-untyped-call]
        return None if event.start_mark is None else event.start_mark.line + 1

    def _account(self, node: Node) -> None:
        """Record the size and height of a finished node from those of its children."""
        children: list[Node]
        if isinstance(node, SequenceNode):
            children = node.value
        elif isinstance(node, MappingNode):
            children = [child for pair in node.value for child in pair]
        else:
            return
        size, height = 1, 1
        for child in children:
            size += self._size.get(id(child), 1)
            height = max(height, self._height.get(id(child), _height_of_unknown(child)) + 1)
        self._size[id(node)] = size
        self._height[id(node)] = height


def _height_of_unknown(node: Node) -> int:
    """Levels of a node not (yet) accounted: a scalar is none, a collection at least one."""
    return 0 if isinstance(node, ScalarNode) else 1


# --------------------------------------------------------------------------- JSON

_JSON_TOKENS = re.compile(r'"(?:[^"\\]|\\.)*"|[\[\]{}]|-?[0-9][0-9.eE+-]*')


def scan_json(text: str) -> None:
    """Raise :class:`LimitError` for nesting deeper than :data:`MAX_DEPTH` or a number longer
    than :data:`MAX_NUMBER_CHARS`; syntax is left to :func:`json.loads`."""
    depth = 0
    for match in _JSON_TOKENS.finditer(text):
        token = match.group()
        first = token[0]
        if first == '"':
            continue
        if first in "[{":
            depth += 1
            if depth > MAX_DEPTH:
                raise LimitError(_too_deep(), text.count("\n", 0, match.start()) + 1)
        elif first in "]}":
            depth -= 1
        elif len(token) > MAX_NUMBER_CHARS:
            raise LimitError(_long_number(len(token)), text.count("\n", 0, match.start()) + 1)
