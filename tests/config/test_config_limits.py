"""Hostile configuration files: each is one problem naming its line, never an exception.

Deep nesting, alias bombs, huge numbers and huge files are cut off by the limits of
:mod:`lb.config._limits` before any of them costs more than reading the file once.  Without
the limits these inputs raise ``RecursionError`` or ``ValueError`` or run for minutes.
"""

from __future__ import annotations

import textwrap
from pathlib import Path

import pytest
from config_helpers import BASE
from hypothesis import given, settings
from hypothesis import strategies as st

from lb.config import ConfigError, load_config, load_config_text
from lb.config._limits import MAX_ALIAS_NODES, MAX_DEPTH, MAX_FILE_BYTES, MAX_NUMBER_CHARS


def bomb(depth: int, width: int = 9) -> str:
    """A "billion laughs" YAML: ``width ** depth`` strings from a few hundred bytes."""
    lines = ["a0: &a0 [" + ", ".join(['"lol"'] * width) + "]"]
    lines += [
        f"a{level}: &a{level} [" + ", ".join([f"*a{level - 1}"] * width) + "]"
        for level in range(1, depth)
    ]
    return "\n".join(lines) + "\n"


def merge_bomb(depth: int, width: int = 9) -> str:
    """The same with merge keys: every level merges ``width`` copies of the one below."""
    lines = ["m0: &m0 {" + ", ".join(f"k{i}: {i}" for i in range(width)) + "}"]
    for level in range(1, depth):
        merged = ", ".join([f"*m{level - 1}"] * width)
        lines.append(f"m{level}: &m{level} {{<<: [{merged}], own{level}: 1}}")
    return "\n".join(lines) + "\n"


def nested_flow(depth: int) -> str:
    return "a: " + "[" * depth + "]" * depth + "\n"


def nested_block(depth: int) -> str:
    return "".join(" " * i + f"k{i}:\n" for i in range(depth)) + " " * depth + "end\n"


def nested_json(depth: int) -> str:
    return '{"a": ' + "[" * depth + "]" * depth + "}\n"


def only_problem(text: str, filename: str) -> str:
    with pytest.raises(ConfigError) as info:
        load_config_text(text, filename)
    problems = info.value.problems
    assert len(problems) == 1, [str(p) for p in problems]
    return str(problems[0])


NINES = "9" * 5000
FIVES = "5" * 5000
HOSTILE = {
    "yaml-flow": (nested_flow(5000), "lb.yaml", "lb.yaml:1: nested deeper than 64"),
    "yaml-block": (nested_block(1000), "lb.yaml", "lb.yaml:65: nested deeper than 64"),
    "json-deep": (nested_json(5000), "lb.json", "lb.json:1: nested deeper than 64"),
    "json-int": ('{"a":\n' + NINES + "}", "lb.json", "lb.json:2: a number of 5000"),
    "json-float": ('{"a": 1.' + FIVES + "}", "lb.json", "lb.json:1: a number of 5002"),
    "yaml-int": (f"a: {NINES}\n", "lb.yaml", "lb.yaml:1: a number of 5000"),
    "yaml-float": (f"a: 1.{FIVES}\n", "lb.yaml", "lb.yaml:1: a number of 5002"),
    "bomb-5": (bomb(5), "lb.yaml", "lb.yaml:5: aliases repeat more than 10000"),
    "bomb-6": (bomb(6), "lb.yaml", "lb.yaml:5: aliases repeat more than 10000"),
    "bomb-40x2": (bomb(40, 2), "lb.yaml", "aliases repeat"),
    "merge-bomb": (merge_bomb(8), "lb.yaml", "aliases repeat"),
    "alias-depth": (
        "a: &a [" + "[" * 40 + "]" * 40 + "]\nb: &b [" + "[" * 30 + "*a" + "]" * 30 + "]\n",
        "lb.yaml",
        "lb.yaml:2: nested deeper than 64 levels once aliases are expanded",
    ),
}


@pytest.mark.parametrize(("text", "filename", "expected"), HOSTILE.values(), ids=HOSTILE)
def test_hostile_text_is_one_problem(text: str, filename: str, expected: str) -> None:
    assert expected in only_problem(text, filename)


def test_a_file_over_the_size_limit_is_not_read(tmp_path: Path) -> None:
    path = tmp_path / "lb.yaml"
    with path.open("w") as f:
        f.write(BASE)
        f.write("# padding\n" * (MAX_FILE_BYTES // 10))
    with pytest.raises(ConfigError) as info:
        load_config([path])
    assert [str(p) for p in info.value.problems] == [
        f"{path}: the file is larger than 2 MiB, the limit"
    ]
    with pytest.raises(ConfigError):  # the same limit for text handed over in memory
        load_config_text(path.read_text(), "lb.yaml")


def test_a_fifo_without_a_writer_reads_as_empty_instead_of_hanging(tmp_path: Path) -> None:
    import os

    path = tmp_path / "lb.yaml"
    os.mkfifo(path)
    result = load_config([path])
    assert [str(w) for w in result.warnings] == [f"{path}: the file is empty"]


def test_limits_leave_real_configurations_alone() -> None:
    """1,500 pools sharing one origin through merge keys, and a long decimal, still load."""
    text = textwrap.dedent(
        """\
        monitors:
          - {id: m, type: https, interval: 60, header: {Host: [app.example.com]}}
        pools:
          - name: p0
            monitor: m
            origins:
              - &origin {name: o0, address: 10.0.0.1, weight: 0.500000000000000000000001}
        """
    )
    pools = "".join(
        f"  - name: p{i}\n    monitor: m\n    origins:\n"
        f"      - {{<<: *origin, name: o{i}, address: 10.0.{i // 250}.{i % 250 + 1}}}\n"
        for i in range(1, 1500)
    )
    text += (
        pools
        + "load_balancers:\n  - {name: app.example.com, default_pools: [p0], fallback_pool: p1}\n"
    )
    config = load_config_text(text, "lb.yaml").config
    assert len(config.pools) == 1500
    assert config.pools[-1].origins[0].weight == pytest.approx(0.5)


@settings(max_examples=40, deadline=None)
@given(
    depth=st.one_of(st.integers(1, 3000), st.integers(MAX_DEPTH - 3, MAX_DEPTH + 3)),
    form=st.sampled_from(["flow", "json"]),
)
def test_nesting_is_refused_exactly_over_the_limit(depth: int, form: str) -> None:
    text, name = (
        (nested_flow(depth), "lb.yaml") if form == "flow" else (nested_json(depth), "x.json")
    )
    levels = depth + 1  # the top-level mapping is a level too
    with pytest.raises(ConfigError) as info:
        load_config_text(text, name)
    messages = [p.message for p in info.value.problems]
    if levels > MAX_DEPTH:
        assert messages == [f"nested deeper than {MAX_DEPTH} levels"]
    else:  # read in full: `a` is not a configuration section
        assert messages == ["unknown key"]


@settings(max_examples=25, deadline=None)
@given(depth=st.integers(2, 12), width=st.integers(2, 12))
def test_alias_bombs_are_refused_exactly_when_they_expand_too_much(depth: int, width: int) -> None:
    size, repeated = 1 + width, 0  # nodes of the first list; nodes repeated by aliases
    for _ in range(1, depth):
        repeated += width * size
        size = 1 + width * size
    with pytest.raises(ConfigError) as info:
        load_config_text(bomb(depth, width), "lb.yaml")
    messages = [p.message for p in info.value.problems]
    if repeated > MAX_ALIAS_NODES:
        assert len(messages) == 1
        assert messages[0].startswith(f"aliases repeat more than {MAX_ALIAS_NODES} nodes")
    else:  # read in full; the keys are not configuration sections
        assert messages == ["unknown key"] * depth


@settings(max_examples=25, deadline=None)
@given(length=st.integers(1, 300))
def test_numbers_are_refused_by_length(length: int) -> None:
    text = '{"engine": {"drain_timeout": ' + "1" * length + "}}"
    try:
        load_config_text(text, "lb.json")
    except ConfigError as exc:
        [problem] = exc.problems
        assert (length > MAX_NUMBER_CHARS) == problem.message.startswith("a number of")
        assert length > 4  # 1111 seconds is in range; longer ones are not
