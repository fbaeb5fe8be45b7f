"""Loading configuration files into a validated :class:`~lb.config.model.Config`.

A configuration is one or more YAML or JSON files.  Each file is either our own format (a
mapping of sections, see ``docs/config.md``) or what Cloudflare's API returns: one object, a
list of objects, or a response envelope ``{"result": ..., "success": true, ...}``.  Files
merge: list sections concatenate; mapping sections merge key by key, and a key defined in two
files is an error, so nothing is overridden silently.  The only table that may be overridden
is the built-in list of data centers (``lb/data/datacenters.yaml``).

Every problem of every file is collected before failing, so one run of ``tunnel-lb check``
shows them all.
"""

from __future__ import annotations

import dataclasses
import functools
import os
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from importlib import resources
from typing import TypeVar

from lb.config._checks import build_config
from lb.config._items import Item, Parsed, Seen
from lb.config._parse import INVALID, Parser, describe_node
from lb.config._report import Report, did_you_mean
from lb.config._source import Node, Segment, Where, read_file, read_text
from lb.config.errors import ConfigError, Problem
from lb.config.kinds import CONFIG, wrong_kind
from lb.config.model import (
    Config,
    Datacenter,
    EngineSettings,
    LoadBalancer,
    Monitor,
    MonitorGroup,
    Pool,
    Tunnel,
)

__all__ = [
    "BUILTIN_DATACENTERS",
    "LoadResult",
    "load_config",
    "load_config_node",
    "load_config_text",
]

T = TypeVar("T")
Path = tuple[Segment, ...]

BUILTIN_DATACENTERS = "lb/data/datacenters.yaml"
"""The name problems in the built-in data center table are reported under."""

LIST_SECTIONS = ("monitors", "monitor_groups", "pools", "load_balancers")
MAPPING_SECTIONS = ("tunnels", "datacenters", "connect_to", "engine")
_ENVELOPE_KEYS = ("result", "success", "errors", "messages", "result_info")
_KIND_MARKERS = (
    ("pools", ("origins",)),
    ("load_balancers", ("default_pools",)),
    ("monitors", ("type", "expected_codes", "interval")),
    ("monitor_groups", ("members",)),
)
"""How a bare Cloudflare object is recognised: the first kind with one of its keys wins."""


@dataclass(frozen=True, slots=True)
class LoadResult:
    """A valid configuration and the warnings found while loading it."""

    config: Config
    warnings: list[Problem]
    files: Mapping[str, Where] = dataclasses.field(default_factory=dict)
    """Where each file name (or environment variable name) of the configuration was written,
    by dotted path (``engine.listen[0].certificate``, ``engine.admin_token_env``)."""

    def problem(self, path: str, message: str) -> Problem:
        """A problem with the file (or variable) named at ``path`` (or, for an object such as
        ``engine.listen[0]``, with the first file named inside it), at the line it was written
        on."""
        where = self.files.get(path) or next(
            (w for p, w in self.files.items() if p.startswith((f"{path}.", f"{path}["))), None
        )
        if where is None:
            file = self.config.source[0] if self.config.source else "<config>"
            return Problem(file=file, line=None, path=path, message=message)
        return Problem(file=where.file, line=where.line, path=path, message=message)


def load_config(paths: Sequence[str | os.PathLike[str]]) -> LoadResult:
    """Load, merge and validate ``paths``; raise :class:`ConfigError` with every problem."""
    report = Report()
    documents: list[tuple[str, Node | None]] = []
    for path in paths:
        node, problems = read_file(path)
        report.errors.extend(problems)
        documents.append((os.fspath(path), None if problems else node))
    return _load(documents, report)


def load_config_text(text: str, filename: str = "config.yaml") -> LoadResult:
    """Like :func:`load_config` for one in-memory document; ``.json`` names parse as JSON."""
    report = Report()
    node, problems = read_text(text, filename)
    report.errors.extend(problems)
    return _load([(filename, None if problems else node)], report)


def load_config_node(node: Node, filename: str) -> LoadResult:
    """Like :func:`load_config` for a document already read (a configuration embedded in
    another file, such as a simulation scenario); lines keep pointing into ``filename``."""
    return _load([(filename, node)], Report())


def _load(documents: list[tuple[str, Node | None]], report: Report) -> LoadResult:
    files = tuple(name for name, _ in documents)
    sections = _Sections(report)
    for name, node in documents:
        if node is not None:
            sections.add_document(node)
        elif not any(p.file == name for p in report.errors):
            report.warn(Where(name, None, ()), "the file is empty")
    config = build_config(_parse(sections, files, report), report)
    order = {name: i for i, name in enumerate(files)}

    def sort(problems: list[Problem]) -> list[Problem]:
        return sorted(problems, key=lambda p: (order.get(p.file, len(order)), p.line or 0))

    if report.errors:
        raise ConfigError(sort(report.errors), sort(report.warnings))
    return LoadResult(config=config, warnings=sort(report.warnings), files=dict(report.files))


# --------------------------------------------------------------------------- file shapes


class _Sections:
    """Sorts the content of every document into sections, remembering each item's path."""

    def __init__(self, report: Report) -> None:
        self.report = report
        self.items: dict[str, list[tuple[Node, Path]]] = {s: [] for s in LIST_SECTIONS}
        self.mappings: dict[str, list[Node]] = {s: [] for s in MAPPING_SECTIONS}

    def add_document(self, node: Node) -> None:
        """A file's top level: our sections, an API envelope, one API object or a list."""
        other = wrong_kind(node, CONFIG)
        if other is not None:
            self.report.error(node.at(()), other)
            return
        value = node.value
        if isinstance(value, list):
            for i, child in enumerate(value):
                self._api_object(child, (i,))
        elif isinstance(value, dict) and "result" in value:
            self._envelope(node, value)
        elif isinstance(value, dict) and _kind(value) is not None:
            self._api_object(node, ())
        elif isinstance(value, dict):
            self._our_sections(value, node)
        else:
            message = (
                "the top level must be a mapping of sections (monitors, pools, load_balancers, "
                f"...) or Cloudflare API objects, got {describe_node(node)}"
            )
            self.report.error(node.at(()), message)

    def _api_object(self, node: Node, path: Path) -> None:
        kind = _kind(node.value) if isinstance(node.value, dict) else None
        if kind is None:
            message = (
                "cannot tell whether this is a monitor, a monitor group, a pool or a load "
                "balancer (a pool has `origins`, a load balancer `default_pools`, a monitor "
                "`type`, a monitor group `members`)"
            )
            self.report.error(node.at(path), message)
            return
        self.items[kind].append((node, path))

    def _envelope(self, node: Node, value: dict[str, Node]) -> None:
        """Cloudflare's response envelope; only ``result`` matters, and ``success`` must hold."""
        self._unknown_keys(node, value, _ENVELOPE_KEYS)
        success = value.get("success")
        if success is not None and success.value is False:
            errors = value["errors"].plain() if "errors" in value else []
            self.report.error(success.at(("success",)), f"the API call failed: {errors}")
        result = value["result"]
        if isinstance(result.value, list):
            for i, child in enumerate(result.value):
                self._api_object(child, ("result", i))
        elif isinstance(result.value, dict):
            self._api_object(result, ("result",))
        elif result.value is not None:
            got = describe_node(result)
            self.report.error(result.at(("result",)), f"expected a list or a mapping, got {got}")

    def _our_sections(self, value: dict[str, Node], node: Node) -> None:
        self._unknown_keys(node, value, (*LIST_SECTIONS, *MAPPING_SECTIONS))
        for key, child in value.items():
            if child.value is None or key not in (*LIST_SECTIONS, *MAPPING_SECTIONS):
                continue
            expected = list if key in LIST_SECTIONS else dict
            if not isinstance(child.value, expected):
                wanted = "a list" if expected is list else "a mapping"
                self.report.error(
                    child.at((key,)), f"expected {wanted}, got {describe_node(child)}"
                )
            elif isinstance(child.value, list):
                self.items[key].extend((item, (key, i)) for i, item in enumerate(child.value))
            else:
                self.mappings[key].append(child)

    def _unknown_keys(self, node: Node, value: dict[str, Node], known: Sequence[str]) -> None:
        for key in value:
            if key not in known:
                hint = did_you_mean(key, known)
                self.report.error(node.key_at(key, (key,)), f"unknown key{hint}")


def _kind(value: dict[str, Node]) -> str | None:
    for kind, markers in _KIND_MARKERS:
        if any(marker in value for marker in markers):
            return kind
    return None


# --------------------------------------------------------------------------- parsing


def _parse(sections: _Sections, files: tuple[str, ...], report: Report) -> Parsed:
    parser = Parser(report)
    merged = {name: _merge(name, nodes, report) for name, nodes in sections.mappings.items()}
    engine_node = merged["engine"] or Node({}, files[0] if files else "<none>", 0)
    engine = parser.dataclass(EngineSettings, engine_node, ("engine",))
    broken: set[str] = set()
    parsed = Parsed(
        files=files,
        engine=Item(EngineSettings() if engine is INVALID else engine, engine_node, ("engine",)),
        monitors=_parse_list(parser, Monitor, sections.items["monitors"], broken),
        monitor_groups=_parse_list(parser, MonitorGroup, sections.items["monitor_groups"], broken),
        pools=_parse_list(parser, Pool, sections.items["pools"], broken),
        load_balancers=_parse_list(parser, LoadBalancer, sections.items["load_balancers"], broken),
        broken=broken,
        tunnels=_parse_keyed(parser, Tunnel, "id", merged["tunnels"], "tunnels"),
        datacenters=dict(_builtin_datacenters()),
    )
    for item in _parse_keyed(parser, Datacenter, "code", merged["datacenters"], "datacenters"):
        parsed.datacenters[item.value.code] = item
    for _key, child, path in _entries(merged["connect_to"], "connect_to"):
        target = parser.value(str, child, path, {})
        if target is not INVALID:
            parsed.connect_to.append(Item(target, child, path))
    return parsed


def _merge(section: str, nodes: list[Node], report: Report) -> Node | None:
    """One mapping from a section's mappings in every file; a key in two files is an error."""
    if not nodes:
        return None
    items: dict[str, Node] = {}
    key_lines: dict[str, int] = {}
    seen = Seen(report)
    for node in nodes:
        assert isinstance(node.value, dict)
        for key, child in node.value.items():
            if seen.add(key, node.key_at(key, (section, key)), f"{section} entry"):
                items[key] = child
                key_lines[key] = node.key_lines.get(key, child.line)
    return Node(items, nodes[0].file, nodes[0].line, key_lines=key_lines)


def _parse_list(
    parser: Parser, cls: type[T], entries: list[tuple[Node, Path]], broken: set[str]
) -> list[Item[T]]:
    """Parse a list section; the ids and names of objects that failed go to ``broken``, so
    references to them are not reported a second time as unknown."""
    out: list[Item[T]] = []
    for node, path in entries:
        value = parser.dataclass(cls, node, path)
        if value is not INVALID:
            out.append(Item(value, node, path))
        elif isinstance(node.value, dict):
            names = (node.value.get(key) for key in ("id", "name"))
            broken.update(n.value for n in names if n is not None and isinstance(n.value, str))
    return out


def _entries(node: Node | None, section: str) -> Iterator[tuple[str, Node, Path]]:
    """The entries of a keyed section, each node moved to its key's line."""
    if node is None or not isinstance(node.value, dict):
        return
    for key, child in node.value.items():
        line = node.key_lines.get(key, child.line)
        yield key, dataclasses.replace(child, line=line), (section, key)


def _parse_keyed(
    parser: Parser, cls: type[T], key_field: str, node: Node | None, section: str
) -> list[Item[T]]:
    """A mapping section whose keys fill ``key_field`` (tunnel UUID, data center code)."""
    out: list[Item[T]] = []
    for key, child, path in _entries(node, section):
        value = parser.dataclass(cls, child, path, preset={key_field: key})
        if value is not INVALID:
            out.append(Item(value, child, path))
    return out


@functools.cache
def _builtin_datacenters() -> tuple[tuple[str, Item[Datacenter]], ...]:
    """The embedded data center table, parsed once; a problem in it is a packaging bug."""
    text = resources.files("lb").joinpath("data", "datacenters.yaml").read_text(encoding="utf-8")
    report = Report()
    node, problems = read_text(text, BUILTIN_DATACENTERS)
    items = _parse_keyed(Parser(report), Datacenter, "code", node, "datacenters")
    if problems or report.errors:
        raise RuntimeError("\n".join(str(p) for p in problems + report.errors))
    return tuple((item.value.code, item) for item in items)
