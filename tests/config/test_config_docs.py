"""docs/config.md carries the field tables generated from the model, and they are current."""

from __future__ import annotations

from pathlib import Path

import pytest

from lb.cli import main
from lb.config._reference import markdown_reference

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
