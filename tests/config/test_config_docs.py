"""docs/config.md carries the field tables generated from the model, and they are current."""

from __future__ import annotations

from pathlib import Path

import pytest

from lb.cli import main
from lb.config._reference import markdown_reference
from lb.config.loader import load_config_text

DOC = Path(__file__).resolve().parents[2] / "docs" / "config.md"


def test_field_tables_in_docs_match_the_model() -> None:
    text = DOC.read_text()
    generated = text.split("<!-- fields:begin -->\n", 1)[1].split("<!-- fields:end -->", 1)[0]
    assert generated == markdown_reference(), (
        "regenerate the tables: tunnel-lb check --explain-fields"
    )


def test_explain_fields_prints_the_tables(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["check", "--explain-fields"]) == 0
    assert capsys.readouterr().out == markdown_reference()


def test_check_without_files_exits_2(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["check"]) == 2
    assert capsys.readouterr().err == "tunnel-lb check: give at least one FILE\n"


def _yaml_blocks(text: str) -> list[tuple[int, str]]:
    """The ```yaml blocks of a Markdown text, with the line each starts on."""
    blocks, lines = [], text.splitlines()
    i = 0
    while i < len(lines):
        if lines[i].strip() == "```yaml":
            start = i + 1
            end = lines.index("```", start)
            blocks.append((start + 1, "\n".join(lines[start:end]) + "\n"))
            i = end
        i += 1
    return blocks


def test_complete_examples_in_the_docs_check_clean() -> None:
    """A block with load balancers is a whole configuration a reader may copy: it must load
    without a warning (fragments of one section are not configurations on their own)."""
    complete = [
        (line, b) for line, b in _yaml_blocks(DOC.read_text()) if "\nload_balancers:" in f"\n{b}"
    ]
    assert complete, "docs/config.md has no complete example"
    for line, block in complete:
        result = load_config_text(block, f"docs/config.md:{line}")
        assert result.warnings == [], [str(w) for w in result.warnings]


def test_check_usage_says_a_file_is_needed_without_explain_fields(
    capsys: pytest.CaptureFixture[str],
) -> None:
    with pytest.raises(SystemExit):
        main(["check", "--help"])
    usage = capsys.readouterr().out.split("\n\n", 1)[0]
    assert "[FILE ...]" not in usage.replace("FILE [FILE ...]", "")
    assert "FILE [FILE ...]" in usage
    assert "--explain-fields" in usage
