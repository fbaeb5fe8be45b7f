"""Judging a response (R1, R2): table tests of the pure functions."""

from __future__ import annotations

import pytest

from monitors.judge import BODY_WINDOW, body_matches, codes_match, judge, valid_codes
from monitors.reasons import Reason


@pytest.mark.parametrize(
    ("expected", "status", "match"),
    [
        ("200", 200, True),
        ("200", 201, False),
        ("2xx", 200, True),
        ("2xx", 299, True),
        ("2XX", 204, True),
        ("2xx", 301, False),
        ("3xx", 301, True),
        ("5xx", 503, True),
        ("5xx", 404, False),
        (" 404 ", 404, True),
        ("404", 40, False),
        ("200,302", 302, True),
        ("200,302", 301, False),
        ("204, 3xx", 307, True),
    ],
)
def test_codes(expected: str, status: int, match: bool) -> None:
    assert codes_match(expected, status) is match


@pytest.mark.parametrize(
    ("expected", "valid"),
    [
        ("200", True),
        ("2xx", True),
        ("2XX", True),
        ("599", True),
        ("6xx", False),
        ("0xx", False),
        ("20", False),
        ("abc", False),
        ("200,201", True),
        ("200, 3xx", True),
        ("200,", False),
        ("200,6xx", False),
        ("099", False),
    ],
)
def test_valid_codes(expected: str, valid: bool) -> None:
    assert valid_codes(expected) is valid


@pytest.mark.parametrize(
    ("expected", "body", "match"),
    [
        ("", b"", True),
        ("", b"anything", True),
        ("healthy", b"I am HEALTHY", True),
        ("HeAlThY", b"healthy", True),
        ("healthy", b"unwell", False),
        ("needle", b"a" * (BODY_WINDOW - 6) + b"needle", True),
        ("needle", b"a" * (BODY_WINDOW - 5) + b"needle", False),
        ("needle", b"a" * BODY_WINDOW + b"needle", False),
        ("stra\u00dfe", b"STRASSE", True),
        ("caf\u00e9", "CAF\u00c9 ok".encode(), True),
    ],
)
def test_body(expected: str, body: bytes, match: bool) -> None:
    assert body_matches(expected, body) is match


@pytest.mark.parametrize(
    ("status", "body", "codes", "want", "reason"),
    [
        (200, b"ok", "200", "", None),
        (200, b"ok", "200", "OK", None),
        (500, b"ok", "200", "ok", Reason.RESPONSE_CODE_MISMATCH),
        (500, b"nope", "200", "ok", Reason.RESPONSE_CODE_MISMATCH),  # code is judged first
        (200, b"nope", "2xx", "ok", Reason.RESPONSE_BODY_MISMATCH),
        (301, b"", "200", "", Reason.RESPONSE_CODE_MISMATCH),
        (200, b"ok", "2yy", "", Reason.MONITOR_CONFIG_ERROR),
    ],
)
def test_judge(status: int, body: bytes, codes: str, want: str, reason: Reason | None) -> None:
    assert judge(status, body, expected_codes=codes, expected_body=want) is reason
