"""The docs stand alone: the rule index is complete and true, and nothing cites a file that
does not ship with the project.

Code and tests name Cloudflare's behaviour by rule number (``R12``); ``docs/cloudflare-rules.md``
is where a reader looks a number up.  These checks keep that index from rotting: every rule has
one row, and the module and test a row names exist and mention the rule.
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
INDEX = ROOT / "docs" / "cloudflare-rules.md"
RULES = range(1, 51)
ROW = re.compile(r"^\| (R\d+) \|(.*)$", re.MULTILINE)
SHIPPED = ("README.md", "docs", "lb", "monitors", "steering", "bench", "configs", "scripts")
# Paths into the team's private notes, which users never have.
OUTSIDE = re.compile(r"\.\./shared|/work/|cloudflare-lb\.md|DESIGN\.md|perf-anchors|peers\.md")


def _rows() -> dict[str, str]:
    rows: dict[str, str] = {}
    for match in ROW.finditer(INDEX.read_text(encoding="utf-8")):
        rule, rest = match.groups()
        assert rule not in rows, f"{rule} has two rows"
        rows[rule] = rest
    return rows


def test_every_rule_has_exactly_one_row() -> None:
    assert sorted(_rows(), key=lambda r: int(r[1:])) == [f"R{n}" for n in RULES]


@pytest.mark.parametrize("rule", [f"R{n}" for n in RULES])
def test_named_files_exist_and_mention_the_rule(rule: str) -> None:
    cells = _rows()[rule].split("|")
    code, test = cells[1], cells[2]
    for path in re.findall(r"`([\w/.]+\.py)`", code + test):
        file = ROOT / path
        assert file.is_file(), f"{rule}: {path} does not exist"
        text = file.read_text(encoding="utf-8")
        assert re.search(rf"\b{rule}\b", text), f"{rule}: {path} does not mention it"


def test_nothing_cites_a_file_outside_the_project() -> None:
    offenders = []
    for top in SHIPPED:
        base = ROOT / top
        files = [base] if base.is_file() else sorted(p for p in base.rglob("*") if p.is_file())
        for file in files:
            if file.suffix not in {".py", ".md", ".yaml", ".yml", ".toml", ""}:
                continue
            try:
                text = file.read_text(encoding="utf-8")
            except UnicodeDecodeError:
                continue
            for number, line in enumerate(text.splitlines(), 1):
                if OUTSIDE.search(line):
                    offenders.append(f"{file.relative_to(ROOT)}:{number}: {line.strip()}")
    assert not offenders, "\n".join(offenders)
