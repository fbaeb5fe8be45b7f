"""Judging a response: pure functions of (status, first bytes of the body, the monitor's rules).

Kept free of I/O so that the real prober, the simulator and the tests share the exact rules:

* R2: ``expected_codes`` is one code (``"200"``) or a class (``"2xx"``, case-insensitive),
  or a comma-separated list of them (``"200,302"``, which Cloudflare's dashboard accepts);
  anything else is a monitor configuration error rather than a silent mismatch.
* R1: ``expected_body``, when non-empty, must occur case-insensitively in the first
  :data:`BODY_WINDOW` bytes; later bytes never count, even if the prober happened to read them.
* The status is judged before the body: a wrong code is a code mismatch whatever the body says.
"""

from __future__ import annotations

from monitors.reasons import Reason

__all__ = ["BODY_WINDOW", "body_matches", "codes_match", "judge", "valid_codes"]

BODY_WINDOW = 10 * 1024
"""How much of the body ``expected_body`` is searched in (R1; open question 2: 10 KB)."""


def valid_codes(expected: str) -> bool:
    """True for ``"NNN"`` (100..599), ``"Nxx"`` (N in 1..5) and comma-separated lists."""
    return all(_valid_code(part) for part in expected.split(","))


def _valid_code(expected: str) -> bool:
    e = expected.strip().lower()
    if len(e) != 3:
        return False
    if e[1:] == "xx":
        return e[0] in "12345"
    return e.isdigit() and 100 <= int(e) <= 599


def codes_match(expected: str, status: int) -> bool:
    """R2: ``status`` matches ``"NNN"`` exactly, or ``"Nxx"`` by its first digit; a list
    matches when one of its entries does."""
    return any(_code_matches(part, status) for part in expected.split(","))


def _code_matches(expected: str, status: int) -> bool:
    e = expected.strip().lower()
    if e.endswith("xx"):
        return len(e) == 3 and str(status)[:1] == e[0] and 100 <= status <= 599
    return e == str(status)


def body_matches(expected: str, body: bytes) -> bool:
    """R1: ``expected`` occurs case-insensitively in the first 10 KB of ``body``.

    The window is cut in bytes (what the wire carries) and decoded leniently, so a multi-byte
    character split at the edge of the window simply does not match.
    """
    if not expected:
        return True
    window = body[:BODY_WINDOW].decode("utf-8", "replace")
    return expected.casefold() in window.casefold()


def judge(status: int, body: bytes, *, expected_codes: str, expected_body: str) -> Reason | None:
    """None when the response passes, else the reason it fails (R1, R2)."""
    if not valid_codes(expected_codes):
        return Reason.MONITOR_CONFIG_ERROR
    if not codes_match(expected_codes, status):
        return Reason.RESPONSE_CODE_MISMATCH
    if not body_matches(expected_body, body):
        return Reason.RESPONSE_BODY_MISMATCH
    return None
