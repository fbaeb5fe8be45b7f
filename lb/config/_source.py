"""Reading configuration text into trees of :class:`Node` that remember file and line.

Every problem the loader reports names a file, a line and a dotted path, so parsing cannot
throw the positions away the way ``yaml.safe_load`` or ``json.loads`` do.  YAML is composed
into PyYAML's node graph (which has marks) and converted here.  JSON is decoded by
:mod:`json` for its values (PyYAML reads YAML 1.1, where ``1e5`` is a string) and composed by
PyYAML only for the line numbers, walking both trees side by side.  A key repeated in a JSON
object is refused as in YAML (:mod:`json` would keep the last value without a word): the
decoder marks the objects that repeat a key, and the composed tree gives the lines.
"""

from __future__ import annotations

import errno
import json
import os
import re
import stat
from collections.abc import Mapping
from dataclasses import dataclass, field

import yaml

from lb.config._limits import (
    MAX_FILE_BYTES,
    LimitedYamlLoader,
    LimitError,
    scan_json,
    too_large,
)
from lb.config.errors import Problem

__all__ = ["Node", "Segment", "Where", "read_file", "read_text", "render_path"]

Segment = str | int
"""One step of a path into a document: a mapping key or a list index."""

_SIMPLE_KEY = re.compile(r"^[A-Za-z0-9_-]+$")
_MERGE_TAG = "tag:yaml.org,2002:merge"


def render_path(path: tuple[Segment, ...]) -> str:
    """``("pools", 1, "origins", 0, "weight")`` -> ``pools[1].origins[0].weight``.

    Keys that are not simple words (host names, ``host:port``) are quoted in brackets so the
    dots inside them cannot be mistaken for nesting.
    """
    out: list[str] = []
    for segment in path:
        if isinstance(segment, int):
            out.append(f"[{segment}]")
        elif _SIMPLE_KEY.match(segment):
            out.append(f".{segment}" if out else segment)
        else:
            out.append(f"[{json.dumps(segment)}]")
    return "".join(out)


@dataclass(frozen=True, slots=True)
class Where:
    """A place in the configuration that a problem can point at."""

    file: str
    line: int | None
    path: tuple[Segment, ...]

    def problem(self, message: str) -> Problem:
        """A :class:`Problem` at this place."""
        return Problem(file=self.file, line=self.line, path=render_path(self.path), message=message)


@dataclass(frozen=True, slots=True, eq=False)
class Node:
    """A parsed value with its position.

    ``value`` is a scalar, a ``list[Node]`` or a ``dict[str, Node]``.  ``text`` keeps the
    source text of an unquoted YAML scalar, so that ``expected_codes: 200`` or ``country: NO``
    can still be read as the strings the user typed.
    """

    value: object
    file: str
    line: int
    text: str | None = None
    key_lines: Mapping[str, int] = field(default_factory=dict)

    def at(self, path: tuple[Segment, ...]) -> Where:
        """This node's position, labelled with ``path``."""
        return Where(self.file, self.line or None, path)

    def key_at(self, key: str, path: tuple[Segment, ...]) -> Where:
        """The position of ``key`` in this mapping (its own line), labelled with ``path``.

        The file is the entry's own: a mapping merged from several files mixes them.
        """
        child = self.value.get(key) if isinstance(self.value, dict) else None
        file = child.file if isinstance(child, Node) else self.file
        return Where(file, self.key_lines.get(key, self.line) or None, path)

    def plain(self) -> object:
        """The value as plain Python data, positions dropped (for free-form fields)."""
        if isinstance(self.value, dict):
            return {k: v.plain() for k, v in self.value.items()}
        if isinstance(self.value, list):
            return [v.plain() for v in self.value]
        return self.value


def read_file(path: str | os.PathLike[str]) -> tuple[Node | None, list[Problem]]:
    """Read and parse one file; a missing or unreadable file is a problem, not an exception."""
    name = os.fspath(path)
    try:
        text = _read_bounded(path)
    except UnicodeDecodeError as exc:
        message = f"not UTF-8 text (byte {exc.start})"
        return None, [Problem(file=name, line=None, path="", message=message)]
    except LimitError as exc:
        return None, [Problem(file=name, line=None, path="", message=exc.message)]
    except OSError as exc:
        return None, [Problem(file=name, line=None, path="", message=_describe_os_error(exc))]
    return read_text(text, name)


def _read_bounded(path: str | os.PathLike[str]) -> str:
    """The UTF-8 text of ``path``, refusing more than :data:`MAX_FILE_BYTES`.

    A FIFO or a pipe (``<(command)``) is read too, but opened without blocking: a FIFO
    nobody writes to reads as empty instead of hanging the command.

    Raises:
        OSError: the file cannot be opened or read (see :func:`_describe_os_error`).
        UnicodeDecodeError: the content is not UTF-8.
        LimitError: the file is larger than :data:`MAX_FILE_BYTES`.
    """
    fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | getattr(os, "O_CLOEXEC", 0))
    with os.fdopen(fd, "rb") as f:
        if stat.S_ISDIR(os.fstat(fd).st_mode):
            raise IsADirectoryError(errno.EISDIR, os.strerror(errno.EISDIR), os.fspath(path))
        os.set_blocking(fd, True)
        data = f.read(MAX_FILE_BYTES + 1)
    if len(data) > MAX_FILE_BYTES:
        raise LimitError(too_large(), None)
    return data.decode("utf-8")


def _describe_os_error(exc: OSError) -> str:
    """``no such file``, ``is a directory``, ``cannot read: Permission denied``..."""
    if isinstance(exc, FileNotFoundError):
        return "no such file"
    if isinstance(exc, IsADirectoryError):
        return "is a directory, not a file"
    return f"cannot read: {exc.strerror or exc}"


def read_text(text: str, filename: str) -> tuple[Node | None, list[Problem]]:
    """Parse ``text``; JSON when ``filename`` ends in ``.json``, YAML otherwise.

    Returns ``(None, [])`` for an empty document and ``(None, problems)`` for a syntax error
    or a text beyond the limits of :mod:`lb.config._limits`.
    """
    if len(text.encode("utf-8", "surrogatepass")) > MAX_FILE_BYTES:
        return None, [Problem(file=filename, line=None, path="", message=too_large())]
    if filename.lower().endswith(".json"):
        return _read_json(text, filename)
    return _read_yaml(text, filename)


# --------------------------------------------------------------------------- YAML


def _read_yaml(text: str, filename: str) -> tuple[Node | None, list[Problem]]:
    problems: list[Problem] = []
    try:
        loader = LimitedYamlLoader(text)
    except yaml.reader.ReaderError as exc:  # raised while scanning for bad characters
        line = text.count("\n", 0, exc.position) + 1
        char = f" (U+{exc.character:04X})" if isinstance(exc.character, int) else ""
        message = f"not YAML text: {exc.reason}{char}"
        return None, [Problem(file=filename, line=line, path="", message=message)]
    try:
        root = loader.get_single_node()
        node = None if root is None else _YamlConverter(loader, filename, problems).convert(root)
    except LimitError as exc:
        return None, [Problem(file=filename, line=exc.line, path="", message=exc.message)]
    except yaml.MarkedYAMLError as exc:
        return None, [_syntax_problem(filename, exc)]
    except yaml.YAMLError as exc:  # pragma: no cover - PyYAML marks the errors it raises here
        return None, [Problem(file=filename, line=None, path="", message=f"YAML error: {exc}")]
    finally:
        loader.dispose()
    return (None if problems else node), problems


def _syntax_problem(filename: str, exc: yaml.MarkedYAMLError) -> Problem:
    mark = exc.problem_mark or exc.context_mark
    line = mark.line + 1 if mark is not None else None
    what = exc.problem or exc.context or "invalid YAML"
    return Problem(file=filename, line=line, path="", message=f"YAML syntax error: {what}")


class _YamlConverter:
    """Turns PyYAML's composed node graph into :class:`Node` trees.

    Scalars are constructed by PyYAML's own safe constructor, so typing follows YAML 1.1 as
    users expect from PyYAML.  Mapping keys are always taken as their source text.  Each node
    is converted with its dotted path, so that the problems found here (a duplicate key) name
    it like every later problem does.
    """

    def __init__(self, loader: yaml.SafeLoader, filename: str, problems: list[Problem]) -> None:
        self._loader = loader
        self._file = filename
        self._problems = problems
        self._active: set[int] = set()

    def convert(self, node: yaml.Node, path: tuple[Segment, ...] = ()) -> Node:
        line = node.start_mark.line + 1
        if id(node) in self._active:
            self._error(line, path, "an alias refers to itself")
            return Node(None, self._file, line)
        self._active.add(id(node))
        try:
            if isinstance(node, yaml.MappingNode):
                return self._mapping(node, line, path)
            if isinstance(node, yaml.SequenceNode):
                items = [self.convert(item, (*path, i)) for i, item in enumerate(node.value)]
                return Node(items, self._file, line)
            return self._scalar(node, line)
        finally:
            self._active.discard(id(node))

    def _scalar(self, node: yaml.Node, line: int) -> Node:
        value = self._loader.construct_object(node, deep=True)
        plain = isinstance(node, yaml.ScalarNode) and node.style is None and value is not None
        return Node(value, self._file, line, text=str(node.value) if plain else None)

    def _mapping(self, node: yaml.MappingNode, line: int, path: tuple[Segment, ...]) -> Node:
        explicit = [(k, v) for k, v in node.value if k.tag != _MERGE_TAG]
        self._loader.flatten_mapping(node)
        merged = node.value[: len(node.value) - len(explicit)]
        items: dict[str, Node] = {}
        key_lines: dict[str, int] = {}
        for key_node, value_node in merged:
            key = self._key(key_node, path)
            if key is not None:
                items[key] = self.convert(value_node, (*path, key))
                key_lines[key] = key_node.start_mark.line + 1
        seen: set[str] = set()
        for key_node, value_node in explicit:
            key = self._key(key_node, path)
            if key is None:
                continue
            key_line = key_node.start_mark.line + 1
            if key in seen:
                self._problems.append(
                    _duplicate_key(Where(self._file, key_line, (*path, key)), key_lines[key])
                )
                continue
            seen.add(key)
            items[key] = self.convert(value_node, (*path, key))
            key_lines[key] = key_line
        return Node(items, self._file, line, key_lines=key_lines)

    def _key(self, node: yaml.Node, path: tuple[Segment, ...]) -> str | None:
        if isinstance(node, yaml.ScalarNode):
            return str(node.value)
        self._error(node.start_mark.line + 1, path, "mapping keys must be plain strings")
        return None

    def _error(self, line: int, path: tuple[Segment, ...], message: str) -> None:
        where = Where(self._file, line, path)
        self._problems.append(where.problem(message))


def _duplicate_key(where: Where, first: int | None) -> Problem:
    """A repeated mapping key, at the repetition, naming the line of the first occurrence
    (when known): one wording for YAML and JSON."""
    return where.problem(
        "duplicate key" if first is None else f"duplicate key (first at line {first})"
    )


# --------------------------------------------------------------------------- JSON


def _read_json(text: str, filename: str) -> tuple[Node | None, list[Problem]]:
    try:
        scan_json(text)
    except LimitError as exc:
        return None, [Problem(file=filename, line=exc.line, path="", message=exc.message)]
    try:
        data = json.loads(text, object_pairs_hook=_JsonObject.from_pairs) if text.strip() else None
    except json.JSONDecodeError as exc:
        problem = Problem(file=filename, line=exc.lineno, path="", message=f"JSON error: {exc.msg}")
        return None, [problem]
    if data is None:
        return None, []
    problems: list[Problem] = []
    node = _JsonConverter(filename, problems).convert(data, _compose_for_lines(text), 1, ())
    return (None if problems else node), problems


class _JsonObject(dict[str, object]):
    """A decoded JSON object that remembers the keys it repeats (``json.loads`` itself keeps
    the last value of a repeated key and says nothing)."""

    __slots__ = ("repeated",)

    def __init__(self) -> None:
        super().__init__()
        self.repeated: list[str] = []
        """Each repeated key, once per repetition, in the order of the text."""

    @classmethod
    def from_pairs(cls, pairs: list[tuple[str, object]]) -> _JsonObject:
        """The ``object_pairs_hook`` of :func:`json.loads`."""
        out = cls()
        for key, value in pairs:
            if key in out:
                out.repeated.append(key)
            out[key] = value
        return out


def _compose_for_lines(text: str) -> yaml.Node | None:
    """PyYAML's view of a JSON text, used only for line numbers.

    A literal tab in valid JSON can only be whitespace, so replacing tabs keeps every
    position and avoids PyYAML's refusal of tab indentation.  If PyYAML still cannot read it,
    positions fall back to line 1 rather than failing a valid file.
    """
    try:
        return yaml.compose(text.replace("\t", " "), Loader=yaml.SafeLoader)
    except yaml.YAMLError:
        return None


@dataclass(frozen=True, slots=True)
class _JsonConverter:
    """Pairs decoded JSON values with PyYAML nodes of the same shape to find their lines, and
    reports the keys a JSON object repeats (with the line of each occurrence when PyYAML
    could read the text)."""

    file: str
    problems: list[Problem]

    def convert(
        self, value: object, node: yaml.Node | None, line: int, path: tuple[Segment, ...]
    ) -> Node:
        """``value`` as a :class:`Node`; ``line`` is used when ``node`` is unknown."""
        if node is not None:
            line = node.start_mark.line + 1
        if isinstance(value, dict):
            return self._mapping(value, node, line, path)
        if isinstance(value, list):
            children = list(node.value) if isinstance(node, yaml.SequenceNode) else []
            children += [None] * (len(value) - len(children))
            items = [
                self.convert(v, n, line, (*path, i))
                for i, (v, n) in enumerate(zip(value, children, strict=False))
            ]
            return Node(items, self.file, line)
        return Node(value, self.file, line)

    def _mapping(
        self, value: dict[str, object], node: yaml.Node | None, line: int, path: tuple[Segment, ...]
    ) -> Node:
        keyed: dict[str, tuple[yaml.Node, yaml.Node]] = {}
        if isinstance(node, yaml.MappingNode):
            keyed = {str(k.value): (k, v) for k, v in node.value}
        if isinstance(value, _JsonObject) and value.repeated:
            self._repeated(value.repeated, node, line, path)
        items: dict[str, Node] = {}
        key_lines: dict[str, int] = {}
        for key, child in value.items():
            key_node, value_node = keyed.get(key, (None, None))
            key_lines[key] = key_node.start_mark.line + 1 if key_node is not None else line
            items[key] = self.convert(child, value_node, key_lines[key], (*path, key))
        return Node(items, self.file, line, key_lines=key_lines)

    def _repeated(
        self, repeated: list[str], node: yaml.Node | None, line: int, path: tuple[Segment, ...]
    ) -> None:
        """One problem per repetition, at its line, naming the line of the first one."""
        lines: dict[str, list[int]] = {}
        if isinstance(node, yaml.MappingNode):
            for key_node, _ in node.value:
                lines.setdefault(str(key_node.value), []).append(key_node.start_mark.line + 1)
        seen: dict[str, int] = {}
        for key in repeated:
            at = lines.get(key, [])
            n = seen[key] = seen.get(key, 0) + 1
            where = Where(self.file, at[n] if n < len(at) else line, (*path, key))
            self.problems.append(_duplicate_key(where, at[0] if at else None))
